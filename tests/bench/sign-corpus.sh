#!/usr/bin/env bash
# Benchmark: kforge vs Debian's scripts/sign-file over every module of the
# current Debian kernel (linux-image-<ABI>-unsigned), checking that kforge's
# output is byte-identical to sign-file's.
#
# Usage: tests/bench/sign-corpus.sh
# Environment:
#   BENCH_DIR  work dir (default target/bench/sign-corpus, relative to the repo root);
#              the downloaded .deb and the stripped corpus are kept there for reuse
#   KFORGE     kforge binary (default target/release/kforge; built if missing)
#   BUILD      if set, rebuild kforge (cargo build --release --locked -p kforge) first
#   SIGN_FILE  sign-file binary (default: the linux-kbuild matching the ABI)
#   PREPARE_ONLY  if set, stop once the stripped corpus is ready (other benchmarks use it)
set -euo pipefail

run_start=$EPOCHREALTIME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

work=$(abs_dir "${BENCH_DIR:-target/bench/sign-corpus}")
KFORGE=${KFORGE:-target/release/kforge}
jobs=$(nproc)

# --- 1. Resolve the current kernel ABI from linux-headers-amd64's dependency ---
resolve_abi
log "kernel ABI $abi -> package $pkg"

# sign-file from the linux-kbuild of the same major.minor (e.g. 6.1).
SIGN_FILE=${SIGN_FILE:-/usr/lib/linux-kbuild-$kver/scripts/sign-file}
[[ -x $SIGN_FILE ]] || die "sign-file not found at $SIGN_FILE (install linux-kbuild-$kver)"

# --- Tools: /usr/bin/time and kforge ---
if [[ ! -x /usr/bin/time ]]; then
    log "installing package time"
    apt-get install -y -qq time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
fi
if [[ -n ${BUILD:-} || ! -x $KFORGE ]]; then
    log "building kforge (release)"
    cargo build --release --locked -p kforge
fi
[[ -x $KFORGE ]] || die "kforge binary not found at $KFORGE"
KFORGE=$(realpath "$KFORGE")

# Clean up the per-run copies and keys, on success and on failure.
keys=$(mktemp -d "$work/keys.XXXXXX")
cleanup() { rm -rf "$work/sf" "$work/kf" "$keys" "$work/extract.tmp" "$work/pristine.tmp"; }
trap cleanup EXIT

# --- 2. Download the package (reuse a previous download) ---
deb=$(ls "$work/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb ]]; then
    log "downloading $pkg"
    (cd "$work" && apt-get download "$pkg") ||
        { log "download failed; running apt-get update"; apt-get update -qq; (cd "$work" && apt-get download "$pkg"); }
    deb=$(ls "$work/${pkg}"_*.deb | head -n1)
fi
log "using $(basename "$deb")"

# --- 2+3. Extract, decompress and strip the Debian signatures into a pristine corpus ---
pristine="$work/pristine-$abi"
stamp="$pristine.stamp"
if [[ ! -f $stamp || $(cat "$stamp") != "$(basename "$deb")" ]]; then
    log "extracting and stripping signatures into $pristine"
    rm -rf "$pristine" "$stamp" "$work/extract.tmp" "$work/pristine.tmp"
    dpkg-deb -x "$deb" "$work/extract.tmp"
    [[ -d $work/extract.tmp/lib/modules/$abi ]] || die "no lib/modules/$abi in $deb"
    mv "$work/extract.tmp/lib/modules/$abi" "$work/pristine.tmp"
    rm -rf "$work/extract.tmp"
    # Compressed modules -> plain .ko, so both tools see the same input.
    find "$work/pristine.tmp" -name '*.ko.xz' -exec xz -d {} +
    find "$work/pristine.tmp" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    find "$work/pristine.tmp" -name '*.ko.gz' -exec gzip -d {} +
    # Keep modules only (drop modules.order, modules.builtin, ...).
    find "$work/pristine.tmp" ! -type d ! -name '*.ko' -delete
    python3 - "$work/pristine.tmp" <<'EOF'
# Remove every appended module signature: [CMS][12-byte struct, be32 sig_len last][magic].
import os, struct, sys
MAGIC = b"~Module signature appended~\n"
stripped = unsigned = 0
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        if not name.endswith(".ko"):
            continue
        path = os.path.join(root, name)
        with open(path, "rb") as f:
            data = f.read()
        n = 0
        while data.endswith(MAGIC):
            (sig_len,) = struct.unpack(">I", data[-len(MAGIC) - 4:-len(MAGIC)])
            cut = sig_len + 12 + len(MAGIC)
            if cut > len(data):
                sys.exit(f"{path}: sig_len {sig_len} larger than the file")
            data = data[:-cut]
            n += 1
        if n:
            stripped += 1
            with open(path, "wb") as f:
                f.write(data)
        else:
            unsigned += 1
print(f"stripped signatures from {stripped} modules ({unsigned} were unsigned)", file=sys.stderr)
EOF
    mv "$work/pristine.tmp" "$pristine"
    basename "$deb" >"$stamp"
fi
modules=$(find "$pristine" -name '*.ko' | wc -l)
bytes=$(find "$pristine" -name '*.ko' -printf '%s\n' | awk '{ s += $1 } END { print s }')
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')
((modules > 0)) || die "no modules in $pristine"
log "corpus: $modules modules, $mb MB"
if [[ -n ${PREPARE_ONLY:-} ]]; then
    echo "$pristine"
    exit 0
fi

# --- 4. Keys, once per run ---
for bits in 2048 4096; do
    openssl req -new -nodes -x509 -newkey "rsa:$bits" -sha256 -days 36500 -subj '/CN=bench' \
        -keyout "$keys/k$bits.pem" -out "$keys/c$bits.pem" 2>/dev/null
done

# --- 5. One configuration: fresh copies, sign-file, kforge, compare ---
rows=()
bench() {
    local bits=$1 hash=$2 key="$keys/k$1.pem" cert="$keys/c$1.pem"
    log "RSA-$bits/$hash: copying the corpus"
    rm -rf "$work/sf" "$work/kf"
    cp -a "$pristine" "$work/sf"
    cp -a "$pristine" "$work/kf"
    # Both copies are in page cache now; read them once anyway, and flush the
    # copies' dirty pages so writeback does not land inside either timing.
    find "$work/sf" "$work/kf" -type f -exec cat {} + >/dev/null
    sync

    log "RSA-$bits/$hash: sign-file (xargs -P$jobs)"
    local t0=$EPOCHREALTIME
    (cd "$work" && find sf -name '*.ko' -print0 | xargs -0 -P"$jobs" -n 1 "$SIGN_FILE" "$hash" "$key" "$cert") ||
        die "sign-file failed (RSA-$bits/$hash)"
    local t_sf
    t_sf=$(since "$t0")
    sync

    log "RSA-$bits/$hash: kforge"
    local out="$keys/kforge-$bits.out" err="$keys/kforge-$bits.err" tm="$keys/kforge-$bits.time"
    t0=$EPOCHREALTIME
    if ! (cd "$work" && /usr/bin/time -f '%e %M' -o "$tm" "$KFORGE" sign --key "$key" --cert "$cert" --hash "$hash" kf/ \
        >"$out" 2>"$err"); then
        cat "$out" >&2
        printf -- '--- kforge stderr (verbatim) ---\n' >&2
        cat "$err" >&2
        die "kforge failed (RSA-$bits/$hash)"
    fi
    local t_kf
    t_kf=$(since "$t0")
    log "kforge: $(cat "$out")"
    if [[ -s $err ]]; then printf -- '--- kforge stderr ---\n' >&2; cat "$err" >&2; fi
    local rss_mb
    rss_mb=$(awk '{ printf "%.0f", $2 / 1024 }' "$tm")
    sync

    # Every module must be byte-identical to sign-file's.
    local diffs
    diffs=$(cd "$work" && diff -r -q sf kf || true)
    if [[ -n $diffs ]]; then
        printf '%s\n' "$diffs" | head -n 50 >&2
        die "RSA-$bits/$hash: $(wc -l <<<"$diffs") files differ between sign-file and kforge"
    fi
    # And signed (sign-file did its job, so the tree is not the pristine one).
    local last
    last=$(find "$work/kf" -name '*.ko' -print0 | xargs -0 -n 1 tail -c 28 | grep -c 'Module signature appended' || true)
    ((last == modules)) || die "RSA-$bits/$hash: only $last of $modules modules end with a signature"

    local ratio
    ratio=$(awk -v a="$t_sf" -v b="$t_kf" 'BEGIN { printf "%.1f", a / b }')
    printf 'RSA-%s/%s: %s modules, %s MB, sign-file %s s, kforge %s s, ratio %sx, kforge peak RSS %s MB, byte-identical: yes\n' \
        "$bits" "$hash" "$modules" "$mb" "$t_sf" "$t_kf" "$ratio" "$rss_mb"
    rows+=("| RSA-$bits / $hash | $modules | $mb | $t_sf | $t_kf | ${ratio}× | $rss_mb | yes |")
    rm -rf "$work/sf" "$work/kf"
}

bench 2048 sha256
bench 4096 sha512

# --- 6. Markdown table for the README's Performance section ---
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
cat <<EOF

Corpus: every module of Debian's \`$pkg\` ($(basename "$deb" .deb | cut -d_ -f2)), Debian signatures stripped.
Machine: $cpu, nproc = $jobs; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg).
sign-file run as \`xargs -P$jobs -n 1\`; kforge with its default of one thread per core.

| key / hash | modules | corpus MB | sign-file s | kforge s | speed-up | kforge peak RSS MB | byte-identical |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
EOF
printf '%s\n' "${rows[@]}"
echo
log "whole run: $(since "$run_start") s"
