#!/usr/bin/env bash
# Benchmark: build + sign of a KMM module image, `kforge build-sign` against the KMM 1.x sequence
# emulated on the same private Docker engine (Debian's docker.io, 20.10, BuildKit embedded), same run.
#
#   A. kforge build-sign --buildkit docker://<private socket> --dtk-template …: resolves DTK_AUTO,
#      builds dockerfiles/kmm-module.Dockerfile through the engine's BuildKit into the engine's store
#      under a private name, reads the image back, signs the modules in-process, pushes once.
#   B. KMM 1.x, each step with Debian's /usr/bin/docker CLI (DOCKER_BUILDKIT=1, --network none):
#      1. docker build of the same Dockerfile, context and build arguments (KMM's KERNEL_VERSION,
#         KERNEL_FULL_VERSION, MOD_NAME, MOD_NAMESPACE, and DTK_AUTO = the digest kforge resolves),
#         tagged <image>:<tag>-<namespace>_<module>_kmm_unsigned as KMM names it;
#      2. docker push of that unsigned image;
#      3. docker build of KMM's signing Dockerfile (internal/sign/pod's template): FROM the unsigned
#         image, a stage FROM the signer image (here the DTK: linux-kbuild's sign-file, libssl3) that
#         copies each file to sign in and runs sign-file sha256 on it with the key and certificate
#         mounted at /run/secrets/{key,cert}/ (BuildKit secrets; KMM mounts Secrets into its pod),
#         then FROM the unsigned image again with the signed files copied over;
#      4. docker push of the signed image.
#      KMM runs these in pods; the one engine stands in for them (so step 3 finds the unsigned image
#      and the DTK in the engine's store, where a sign pod elsewhere would pull them: in KMM's favour).
#
# Base images, registry and engine as in tests/bench/build.sh: the cached OCI layouts
# <cache>/dtk-<ABI>/ (tag dtk) and <cache>/runtime-bookworm/ (tag runtime) (<cache> =
# $KFORGE_TEST_CACHE, else $XDG_CACHE_HOME/kforge-tests, else ~/.cache/kforge-tests; not built here:
# run tests/bench/build.sh or the Rust tests once), pushed to a throwaway local Distribution registry
# (Debian's docker-registry) whose access log counts the pushes (manifest PUTs, blob uploads).
#
# After WARMUP untimed cold runs of each tool, measured REPEAT times, alternating which goes first:
#   cold: before each tool the engine is emptied (images removed, BuildKit cache pruned): both pull
#         the bases, compile, sign, push;
#   warm: right after, the same again to a new tag, everything cached (kforge with --force).
# Finally the cold-1 signed image of each tool is pulled back: the module must verify against the
# certificate (kforge verify) and have vermagic = the ABI; KMM's unsigned module must not verify.
#
# Usage: tests/bench/build-sign.sh
# Environment: REPEAT (default 3), WARMUP (default 1), BENCH_DIR (default target/bench/build-sign),
#   KFORGE (a kforge binary used as is; by default `cargo build --release -p kforge` and a copy of
#   target/release/kforge, so that a concurrent rebuild does not swap it mid-run), KEEP (keep the
#   engine's data, the registry and the pulled images).
set -euo pipefail

run_start=$EPOCHREALTIME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

W=$(abs_dir "${BENCH_DIR:-target/bench/build-sign}")
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not $REPEAT"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number, not $WARMUP"
DOCKER=/usr/bin/docker
cache=${KFORGE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kforge-tests}
dockerfile=$repo/dockerfiles/kmm-module.Dockerfile
context=$repo/tests/modules/kforge_hello
module=kforge_hello ns=bench

since3() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
sum() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.3f", s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
load1() { cut -d' ' -f1 /proc/loadavg; }

for c in /usr/sbin/dockerd $DOCKER docker-registry skopeo umoci jq curl openssl modinfo; do
    command -v "$c" >/dev/null || die "$c missing (Debian: docker.io docker-registry skopeo umoci jq curl openssl kmod)"
done
resolve_abi
log "kernel ABI $abi"
dtk_layout=$cache/dtk-$abi runtime_layout=$cache/runtime-bookworm
[[ -f $dtk_layout/index.json && -f $runtime_layout/index.json ]] ||
    die "no cached base layouts in $cache (dtk-$abi, runtime-bookworm): run tests/bench/build.sh once"

mkdir -p "$W/bin"
if [[ -z ${KFORGE:-} ]]; then
    log "building kforge (cargo build --release -p kforge)"
    cargo build --release -p kforge
    cp target/release/kforge "$W/bin/kforge"
    KFORGE=$W/bin/kforge
fi
KFORGE=$(realpath "$KFORGE")
"$KFORGE" build-sign --help >/dev/null 2>&1 || die "$KFORGE has no build-sign subcommand (stale binary?)"

reg_pid= dockerd_pid=
cleanup() {
    set +e
    stop_dockerd_and_registry
    [[ -n ${KEEP:-} ]] || rm -rf "$W/pull"
}
trap cleanup EXIT
rm -rf "$W/docker-data" "$W/docker-exec" "$W/registry" "$W/pull" "$W/logs" "$W/keys" "$W/sign"
mkdir -p "$W/logs" "$W/docker-config" "$W/keys" "$W/sign/context"
export DOCKER_CONFIG=$W/docker-config
unset BUILDKIT_HOST DOCKER_HOST

# --- Key and certificate (PEM for sign-file, DER for kforge) ---
openssl req -new -nodes -x509 -newkey rsa:2048 -subj /CN=bench -days 30 \
    -keyout "$W/keys/key.pem" -out "$W/keys/cert.pem" 2>/dev/null
openssl x509 -in "$W/keys/cert.pem" -outform DER -out "$W/keys/cert.der"

# --- Registry (access log on: it counts the pushes), bases pushed to it ---
ACCESS_LOG=1 start_registry
dtk_tag=$reg/bench/dtk:$abi runtime=$reg/bench/kmod:bookworm
skopeo copy -q --dest-tls-verify=false "oci:$dtk_layout:dtk" "docker://$dtk_tag"
skopeo copy -q --dest-tls-verify=false "oci:$runtime_layout:runtime" "docker://$runtime"
dtk_template="$reg/bench/dtk:\${KERNEL_FULL_VERSION}"
dtk=$("$KFORGE" dtk resolve "$abi" --dtk-template "$dtk_template" 2>"$W/logs/dtk-resolve.err") ||
    die "kforge dtk resolve failed: $(cat "$W/logs/dtk-resolve.err")"
[[ $dtk == "$reg/bench/dtk@sha256:"* ]] || die "kforge dtk resolve printed '$dtk'"
log "registry on $reg; DTK_AUTO = $dtk"

# Manifest PUTs and completed blob uploads (PUT …/blobs/uploads/…, or POST …?mount=… answered 201)
# to bench/REPO in the access log after line FROM: "manifests blobs".
pushes() {
    tail -n +"$(($2 + 1))" "$W/logs/registry.log" | awk -v r="/v2/bench/$1/" '
        index($0, "\"PUT " r "manifests/")                   { m++ }
        index($0, "\"PUT " r "blobs/uploads/")                { b++ }
        index($0, "\"POST " r "blobs/uploads/?") && / 201 /  { b++ }
        END { printf "%d %d", m, b }'
}
reglines() { wc -l <"$W/logs/registry.log"; }

# --- Engine ---
start_dockerd
engine_version=$(dk version -f '{{.Server.Version}}')
cache_records() { dk system df --format '{{.Type}} {{.TotalCount}}' | awk '$1 == "Build" { print $3 }'; }
reset_engine() {
    dk ps -aq | xargs -r "$DOCKER" -H "unix://$W/docker.sock" rm -f >/dev/null
    dk image ls -aq | sort -u | xargs -r "$DOCKER" -H "unix://$W/docker.sock" image rm -f >/dev/null
    dk builder prune -af >/dev/null
    dk system prune -af >/dev/null
    [[ $(dk image ls -aq | wc -l) == 0 && $(cache_records) == 0 ]] || die "engine not empty after pruning"
    sync
}

# kforge's phases from the timestamps of its log lines (RUST_LOG=info,kforge_builder=debug) (best effort, "?" if absent): build (solving →
# reading back), read-back (→ signing), sign + push (→ pushed), other (the rest of the process's time).
kf_phases() {
    awk -v total="$2" '
        function t(s) { split(substr(s, 12, 15), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        / INFO solving /                                && !s { s = t($1) }
        / DEBUG reading the unsigned image /            && !r { r = t($1) }
        / DEBUG signing the modules /                   && !g { g = t($1) }
        / DEBUG pushed /                                && !p { p = t($1) }
        END { if (s && r && g && p) printf "%.3f %.3f %.3f %.3f", r - s, g - r, p - g, total - (p - s); else print "? ? ? ?" }' "$1"
}

# --- A. kforge build-sign TAG NAME [--force]: sets t_total, kf_push ("manifests blobs"), kf_ph ---
kforge_run() {
    local tag=$1 name=$2 t0 l0 out left
    shift 2
    l0=$(reglines)
    t0=$EPOCHREALTIME
    if ! RUST_LOG=info,kforge_builder=debug "$KFORGE" build-sign --buildkit "docker://$W/docker.sock" -f "$dockerfile" --context "$context" \
        --kernel "$abi" --module-name "$module" --namespace "$ns" --build-arg "RUNTIME_IMAGE=$runtime" \
        --dtk-template "$dtk_template" --key "$W/keys/key.pem" --cert "$W/keys/cert.der" \
        --to "$reg/bench/kforge:\${KERNEL_FULL_VERSION}-$tag" --progress plain "$@" \
        </dev/null >"$W/logs/$name.out" 2>"$W/logs/$name.err"; then
        printf -- '--- kforge stdout ---\n' >&2; cat "$W/logs/$name.out" >&2
        printf -- '--- kforge stderr (verbatim) ---\n' >&2; cat "$W/logs/$name.err" >&2
        die "kforge build-sign --to …:$abi-$tag $* failed"
    fi
    t_total=$(since3 "$t0")
    out=$(cat "$W/logs/$name.out")
    [[ $out =~ ^$reg/bench/kforge@sha256:[0-9a-f]{64}$ ]] || die "kforge build-sign printed '$out'"
    grep -qF "DTK_AUTO = $dtk " "$W/logs/$name.err" ||
        die "kforge resolved another DTK_AUTO: $(grep DTK_AUTO "$W/logs/$name.err" || echo none)"
    kf_push=$(pushes kforge "$l0")
    kf_ph=$(kf_phases "$W/logs/$name.err" "$t_total")
    # The private name kforge builds to in the engine should be gone once it has read the image.
    left=$(dk image ls --format '{{.Repository}}:{{.Tag}}' | grep -c '^kforge-unsigned/' || true)
    ((left == 0)) || log "ODD: $left kforge-unsigned/* image(s) left in the engine after $name"
}

# --- B. KMM 1.x: TAG NAME; sets t_b1 t_p1 t_b2 t_p2 t_total, kmm_push ---
kmm_build_args=(--build-arg "DTK_AUTO=$dtk" --build-arg "RUNTIME_IMAGE=$runtime" --build-arg "KERNEL_VERSION=$abi"
    --build-arg "KERNEL_FULL_VERSION=$abi" --build-arg "MOD_NAME=$module" --build-arg "MOD_NAMESPACE=$ns")
files_to_sign=("/opt/lib/modules/$abi/$module.ko")
step() { # step LOG CMD…: runs it, logs to LOG, dies with the tail on failure; sets t_step
    local log=$1 t0
    shift
    t0=$EPOCHREALTIME
    "$@" </dev/null >"$log" 2>&1 || { tail -40 "$log" >&2; die "$* failed (log: $log)"; }
    t_step=$(since3 "$t0")
}
kmm_run() {
    local tag=$1 name=$2 signed unsigned l0 f df
    signed=$reg/bench/kmm:$abi-$tag
    unsigned=$signed-${ns}_${module}_kmm_unsigned
    df=$W/sign/Dockerfile.$tag
    {   # KMM's internal/sign/pod template, with the DTK's sign-file and BuildKit secrets for the mounts.
        printf 'FROM %s AS source\n\nFROM %s AS signimage\nRUN mkdir -p /tmp/signroot\n' "$unsigned" "$dtk"
        for f in "${files_to_sign[@]}"; do
            printf 'COPY --from=source %s /tmp/signroot%s\n' "$f" "$f"
            printf 'RUN --mount=type=secret,id=key,target=/run/secrets/key/key.pem --mount=type=secret,id=cert,target=/run/secrets/cert/cert.pem /usr/lib/linux-kbuild-%s/scripts/sign-file sha256 /run/secrets/key/key.pem /run/secrets/cert/cert.pem /tmp/signroot%s\n' "$kver" "$f"
        done
        printf '\nFROM source\n'
        for f in "${files_to_sign[@]}"; do printf 'COPY --from=signimage /tmp/signroot%s %s\n' "$f" "$f"; done
    } >"$df"
    l0=$(reglines)
    step "$W/logs/$name.build1" env DOCKER_BUILDKIT=1 "$DOCKER" -H "unix://$W/docker.sock" build --network none \
        --progress plain -f "$dockerfile" "${kmm_build_args[@]}" -t "$unsigned" "$context"
    t_b1=$t_step
    step "$W/logs/$name.push1" dk push "$unsigned"
    t_p1=$t_step
    step "$W/logs/$name.build2" env DOCKER_BUILDKIT=1 "$DOCKER" -H "unix://$W/docker.sock" build --network none \
        --progress plain -f "$df" --secret "id=key,src=$W/keys/key.pem" --secret "id=cert,src=$W/keys/cert.pem" \
        -t "$signed" "$W/sign/context"
    t_b2=$t_step
    step "$W/logs/$name.push2" dk push "$signed"
    t_p2=$t_step
    t_total=$(sum "$t_b1" "$t_p1" "$t_b2" "$t_p2")
    kmm_push=$(pushes kmm "$l0")
}

# --- Runs ---
declare -a kc kw kcp kwp mc mw mcp mwp mcs mws rows
run_kforge() {
    local i=$1
    reset_engine
    log "run $i: kforge cold (load $(load1))"
    kforge_run "cold-$i" "kforge-cold-$i"
    kc[i]=$t_total kcp[i]=$kf_push
    read -r F1c[i] F2c[i] F3c[i] F4c[i] <<<"$kf_ph"
    log "run $i: kforge cold ${kc[i]} s (build, read-back, sign + push, other: $kf_ph); pushes (manifests blobs): $kf_push"
    kforge_run "warm-$i" "kforge-warm-$i" --force
    kw[i]=$t_total kwp[i]=$kf_push
    read -r F1w[i] F2w[i] F3w[i] F4w[i] <<<"$kf_ph"
    log "run $i: kforge warm ${kw[i]} s (build, read-back, sign + push, other: $kf_ph); pushes: $kf_push"
}
run_kmm() {
    local i=$1
    reset_engine
    log "run $i: KMM cold (load $(load1))"
    kmm_run "cold-$i" "kmm-cold-$i"
    mc[i]=$t_total mcp[i]=$kmm_push mcs[i]="$t_b1 + $t_p1 + $t_b2 + $t_p2"
    log "run $i: KMM cold ${mc[i]} s (${mcs[i]}); pushes: $kmm_push"
    kmm_run "warm-$i" "kmm-warm-$i"
    mw[i]=$t_total mwp[i]=$kmm_push mws[i]="$t_b1 + $t_p1 + $t_b2 + $t_p2"
    log "run $i: KMM warm ${mw[i]} s (${mws[i]}); pushes: $kmm_push"
}
declare -a B1c P1c B2c P2c B1w P1w B2w P2w F1c F2c F3c F4c F1w F2w F3w F4w
for ((i = 1; i <= WARMUP; i++)); do
    log "warm-up $i: kforge, then KMM (untimed)"
    reset_engine
    kforge_run "warmup-$i" "kforge-warmup-$i"
    reset_engine
    kmm_run "warmup-$i" "kmm-warmup-$i"
done
for ((i = 1; i <= REPEAT; i++)); do
    if ((i % 2)); then order="kforge, KMM"; run_kforge "$i"; run_kmm "$i"
    else order="KMM, kforge"; run_kmm "$i"; run_kforge "$i"; fi
    read -r B1c[i] _ P1c[i] _ B2c[i] _ P2c[i] <<<"${mcs[i]}"
    read -r B1w[i] _ P1w[i] _ B2w[i] _ P2w[i] <<<"${mws[i]}"
    rows+=("| $i | $order | ${kc[i]} (${F1c[i]} + ${F2c[i]} + ${F3c[i]} + ${F4c[i]}) | ${mc[i]} (${mcs[i]}) | ${kw[i]} (${F1w[i]} + ${F2w[i]} + ${F3w[i]} + ${F4w[i]}) | ${mw[i]} (${mws[i]}) |")
done

# --- Checks: tags in each repository, and the signed modules ---
kf_tags=$(curl -sf "http://$reg/v2/bench/kforge/tags/list" | jq -r '.tags | sort | join(" ")')
kmm_tags=$(curl -sf "http://$reg/v2/bench/kmm/tags/list" | jq -r '.tags | sort | join(" ")')
want_kf=() want_kmm=()
for ((i = 1; i <= WARMUP; i++)); do want_kf+=("$abi-warmup-$i"); want_kmm+=("$abi-warmup-$i" "$abi-warmup-$i-${ns}_${module}_kmm_unsigned"); done
for ((i = 1; i <= REPEAT; i++)); do
    for t in cold warm; do want_kf+=("$abi-$t-$i"); want_kmm+=("$abi-$t-$i" "$abi-$t-$i-${ns}_${module}_kmm_unsigned"); done
done
[[ $kf_tags == "$(printf '%s\n' "${want_kf[@]}" | sort | paste -sd' ')" ]] || die "bench/kforge tags: $kf_tags"
[[ $kmm_tags == "$(printf '%s\n' "${want_kmm[@]}" | sort | paste -sd' ')" ]] || die "bench/kmm tags: $kmm_tags"
n_runs=$((WARMUP + 2 * REPEAT))
log "tags: bench/kforge ${#want_kf[@]} for $n_runs runs, bench/kmm ${#want_kmm[@]} for $n_runs runs"

mkdir -p "$W/pull"
runtime_base=$(skopeo inspect --raw --tls-verify=false "docker://$runtime" | jq -r '.layers[0].digest')
# check WHO REF SIGNED(yes|no): pulls REF, checks the module's vermagic and whether it verifies.
check() {
    local who=$1 ref=$2 want=$3 ko vermagic raw shared
    skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$W/pull/oci:$who"
    umoci unpack --image "$W/pull/oci:$who" "$W/pull/$who" >/dev/null
    ko=$W/pull/$who/rootfs/opt/lib/modules/$abi/$module.ko
    [[ -f $ko ]] || die "$ref: no $ko"
    vermagic=$(modinfo -F vermagic "$ko")
    [[ $vermagic == "$abi "* ]] || die "$ref: vermagic '$vermagic' is not for $abi"
    if "$KFORGE" verify --cert "$W/keys/cert.der" "$ko" >"$W/logs/verify-$who.log" 2>&1; then
        [[ $want == yes ]] || die "$ref: the unsigned module verifies: $(cat "$W/logs/verify-$who.log")"
    else
        [[ $want == no ]] || die "$ref: the module does not verify: $(cat "$W/logs/verify-$who.log")"
    fi
    raw=$(skopeo inspect --raw --tls-verify=false "docker://$ref")
    shared=no
    jq -e --arg d "$runtime_base" '.layers[0].digest == $d' <<<"$raw" >/dev/null && shared=yes
    printf '%s: %s layers (%s), %s MB, base layer = RUNTIME_IMAGE'"'"'s: %s, vermagic %s, signer %s\n' "$ref" \
        "$(jq '.layers | length' <<<"$raw")" "$(jq -r '[.layers[].mediaType | sub("^application/vnd\\."; "")] | unique | join(", ")' <<<"$raw")" \
        "$(jq '[.layers[].size] | add / 1e6 * 10 | round / 10' <<<"$raw")" "$shared" \
        "${vermagic%% *}" "$(modinfo -F signer "$ko" | head -n1)"
}
checks=$(check kforge "$reg/bench/kforge:$abi-cold-1" yes
    check kmm "$reg/bench/kmm:$abi-cold-1" yes
    check kmm-unsigned "$reg/bench/kmm:$abi-cold-1-${ns}_${module}_kmm_unsigned" no)

# --- Report ---
M() { median "$@"; }
mk=$(M "${kc[@]}") mm=$(M "${mc[@]}") wk=$(M "${kw[@]}") wm=$(M "${mw[@]}")
sc=$(ratio "$mm" "$mk") sw=$(ratio "$wm" "$wk")
verdict() { awk -v s="$1" 'BEGIN { print (s >= 2 ? "PASS" : "MISS") }'; }
# Pushes per run: manifests PUT (images pushed) and blobs uploaded, over all timed runs.
col() { local n=$1; shift; printf '%s\n' "$@" | awk -v n="$n" '{ print $n }' | sort -nu | paste -sd/; }
kf_m=$(col 1 "${kcp[@]}" "${kwp[@]}") kmm_m=$(col 1 "${mcp[@]}" "${mwp[@]}")
push_verdict=$([[ $kf_m == 1 && $kmm_m == 2 ]] && echo PASS || echo MISS)
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$repo" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"

cat <<EOF

kforge: $("$KFORGE" --version) ($KFORGE, commit $rev)
Engine: Docker $engine_version (dockerd + BuildKit embedded), CLI $("$DOCKER" --version | sed 's/^Docker version //'), DOCKER_BUILDKIT=1, --network none
Registry: Distribution $(docker-registry --version 2>/dev/null | awk '{ print $3 }') on $reg
Build: dockerfiles/kmm-module.Dockerfile, context tests/modules/kforge_hello, kernel $abi, module $module, namespace $ns
  DTK_AUTO=$dtk (kforge: --dtk-template; KMM: passed explicitly), RUNTIME_IMAGE=$runtime
  signing: RSA-2048, sha256; KMM: DTK's /usr/lib/linux-kbuild-$kver/scripts/sign-file in KMM's sign template
$(sed 's/^/  checked: /' <<<"$checks")
Machine: $cpu, nproc = $(nproc); 1-min load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
Cold = after $WARMUP untimed cold run(s) of each tool, engine emptied before each tool. Warm = again right after, new tag (kforge --force).
kforge figures: total (build in the engine + read-back from the engine + sign and push + other: start-up, DTK_AUTO, exit), s.
KMM figures: total (build unsigned + push unsigned + build signed + push signed), s.

| run | order | kforge cold | KMM cold | kforge warm | KMM warm |
| ---: | --- | ---: | ---: | ---: | ---: |
$(printf '%s\n' "${rows[@]}")
| median | | $mk ($(M "${F1c[@]}") + $(M "${F2c[@]}") + $(M "${F3c[@]}") + $(M "${F4c[@]}")) | $mm ($(M "${B1c[@]}") + $(M "${P1c[@]}") + $(M "${B2c[@]}") + $(M "${P2c[@]}")) | $wk ($(M "${F1w[@]}") + $(M "${F2w[@]}") + $(M "${F3w[@]}") + $(M "${F4w[@]}")) | $wm ($(M "${B1w[@]}") + $(M "${P1w[@]}") + $(M "${B2w[@]}") + $(M "${P2w[@]}")) |

cold: KMM $mm s / kforge $mk s = ${sc}x (target >= 2x): $(verdict "$sc")
warm: KMM $wm s / kforge $wk s = ${sw}x (target >= 2x): $(verdict "$sw")
pushes per run (registry access log; timed runs): manifests PUT: kforge $kf_m, KMM $kmm_m
  blobs uploaded per run: kforge cold $(col 2 "${kcp[@]}"), warm $(col 2 "${kwp[@]}"); KMM cold $(col 2 "${mcp[@]}"), warm $(col 2 "${mwp[@]}")
  tags: bench/kforge holds only the signed tags (${#want_kf[@]} for $n_runs runs); bench/kmm the signed and the _kmm_unsigned ones (${#want_kmm[@]})
  one image push instead of two: $push_verdict
EOF
echo
log "whole run: $(since "$run_start") s (logs in $W/logs)"
