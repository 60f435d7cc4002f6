#!/usr/bin/env bash
# Benchmark: signing the modules inside a container image, two ways, in one run.
#
#   A. kforge sign-image: pulls the unsigned image, signs every *.ko under
#      /opt/lib/modules, pushes one new layer on top of the unsigned image.
#   B. The KMM 1.x way: a Dockerfile build through the Docker engine's BuildKit
#      (Debian's docker.io, 20.10 with BuildKit 0.8) that copies the modules out
#      of the unsigned image, runs Debian's scripts/sign-file on each, copies the
#      signed files back as a new layer on top of the unsigned image, then
#      `docker push`.
#
# Both push to a throwaway local Distribution registry (Debian's docker-registry).
# Then both signed images are pulled back with skopeo + umoci, the signed module
# trees are compared byte for byte, and `kforge verify` checks kforge's.
#
# The corpus is every module of Debian's linux-image-<ABI>-amd64-unsigned with
# Debian's signatures stripped, prepared exactly as tests/bench/sign-corpus.sh
# does (and shared with it: the .deb and the pristine corpus are reused).
#
# Usage: tests/bench/sign-image.sh
# Environment:
#   BENCH_DIR   work dir (default target/bench/sign-image, relative to the repo root);
#               keeps base.tar (the signer base image) and the unsigned OCI layout
#   CORPUS_DIR  where the .deb and the pristine corpus live (default
#               target/bench/sign-corpus, shared with sign-corpus.sh)
#   KFORGE      kforge binary (default target/release/kforge; built if missing)
#   BUILD       if set, rebuild kforge (cargo build --release --locked -p kforge) first
#   KEEP        if set, keep the docker data root and the unpacked images (debugging)
set -euo pipefail

run_start=$EPOCHREALTIME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

W=$(abs_dir "${BENCH_DIR:-target/bench/sign-image}")
corpus_dir=$(abs_dir "${CORPUS_DIR:-target/bench/sign-corpus}")
KFORGE=${KFORGE:-target/release/kforge}
jobs=$(nproc)
# Debian's docker CLI (20.10), matching its engine; /usr/local/bin may hold another one.
DOCKER=/usr/bin/docker

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# --- Tools (Debian packages) ---
need_pkgs=()
[[ -x /usr/sbin/dockerd && -x $DOCKER ]] || need_pkgs+=(docker.io)
command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
command -v umoci >/dev/null || need_pkgs+=(umoci)
command -v skopeo >/dev/null || need_pkgs+=(skopeo)
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; }
fi

# --- 1. Resolve the current kernel ABI (as sign-corpus.sh does) ---
resolve_abi
log "kernel ABI $abi -> package $pkg, signer linux-kbuild-$kver"

# --- kforge ---
if [[ -n ${BUILD:-} || ! -x $KFORGE ]]; then
    log "building kforge (release)"
    cargo build --release --locked -p kforge
fi
[[ -x $KFORGE ]] || die "kforge binary not found at $KFORGE"
KFORGE=$(realpath "$KFORGE")

# --- 2. The pristine corpus: prepared (and cached) by sign-corpus.sh ---
pristine=$(BENCH_DIR="$corpus_dir" KFORGE="$KFORGE" PREPARE_ONLY=1 "$repo/tests/bench/sign-corpus.sh")
[[ -d $pristine ]] || die "sign-corpus.sh did not prepare the corpus"
deb_name=$(cat "$pristine.stamp")
modules=$(find "$pristine" -name '*.ko' | wc -l)
corpus_bytes=$(find "$pristine" -name '*.ko' -printf '%s\n' | awk '{ s += $1 } END { print s }')
((modules > 0)) || die "no modules in $pristine"
log "corpus: $modules modules, $(mb "$corpus_bytes") MB"

# --- Cleanup: services we started, and what is large; keep cached inputs ---
reg_pid=
dockerd_pid=
sampler_pid=
cleanup() {
    set +e
    [[ -n $sampler_pid ]] && kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null
    stop_dockerd_and_registry
    [[ -n ${KEEP:-} ]] || rm -rf "$W/pull" "$W/rf-kforge" "$W/rf-kmm" "$W/ctx" "$W/keys" "$W/unsigned-oci.tmp" \
        "$W/bundle.tmp" "$W/kforge-tmp"
    rm -f "$W/sampling"
}
trap cleanup EXIT

rm -rf "$W/docker-data" "$W/docker-exec" "$W/registry" "$W/pull" "$W/rf-kforge" "$W/rf-kmm" "$W/ctx" "$W/keys" \
    "$W/kforge-tmp"
mkdir -p "$W/keys" "$W/ctx" "$W/logs" "$W/kforge-tmp"

# --- 3. Key and certificate (RSA-2048, PEM), used by both methods ---
openssl req -new -nodes -x509 -newkey rsa:2048 -sha256 -days 36500 -subj '/CN=kforge bench' \
    -keyout "$W/keys/key.pem" -out "$W/keys/cert.pem" 2>/dev/null
key=$W/keys/key.pem
cert=$W/keys/cert.pem

# --- 4. Throwaway registry on a free loopback port ---
start_registry
blobs_dir=$W/registry/docker/registry/v2/blobs
blob_bytes() { if [[ -d $blobs_dir ]]; then du -sb "$blobs_dir" | cut -f1; else echo 0; fi; }

# --- 5. The unsigned image: one layer with the corpus under /opt/lib/modules/<ABI> (cached) ---
oci=$W/unsigned-oci
oci_stamp="$oci.stamp"
if [[ ! -f $oci_stamp || $(cat "$oci_stamp") != "$deb_name" ]]; then
    log "building the unsigned OCI layout with umoci"
    rm -rf "$oci" "$oci_stamp" "$W/unsigned-oci.tmp" "$W/bundle.tmp"
    umoci init --layout "$W/unsigned-oci.tmp"
    umoci new --image "$W/unsigned-oci.tmp:unsigned"
    umoci unpack --image "$W/unsigned-oci.tmp:unsigned" "$W/bundle.tmp" >/dev/null
    mkdir -p "$W/bundle.tmp/rootfs/opt/lib/modules"
    cp -a "$pristine" "$W/bundle.tmp/rootfs/opt/lib/modules/$abi"
    umoci repack --image "$W/unsigned-oci.tmp:unsigned" "$W/bundle.tmp"
    rm -rf "$W/bundle.tmp"
    mv "$W/unsigned-oci.tmp" "$oci"
    echo "$deb_name" >"$oci_stamp"
fi
log "pushing the unsigned image to $reg/bench/modules:unsigned"
skopeo copy -q --dest-tls-verify=false "oci:$oci:unsigned" "docker://$reg/bench/modules:unsigned"
unsigned_raw=$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench/modules:unsigned")
unsigned_layer=$(jq -r '.layers[0].digest' <<<"$unsigned_raw")
unsigned_layer_size=$(jq -r '.layers[0].size' <<<"$unsigned_raw")
log "unsigned image: $(jq '.layers | length' <<<"$unsigned_raw") layer, $unsigned_layer ($(mb "$unsigned_layer_size") MB compressed)"

# --- 6. The signer base image (Debian bookworm + linux-kbuild-<kver>'s sign-file), cached ---
base_tar=$W/base.tar
if [[ ! -f $base_tar || $(cat "$base_tar.stamp" 2>/dev/null) != "linux-kbuild-$kver" ]]; then
    log "building the signer base with mmdebstrap"
    rm -f "$base_tar" "$base_tar.stamp" "$W/base.tmp.tar"
    # The output name must end in .tar, or mmdebstrap writes a directory.
    mmdebstrap --variant=minbase --include="linux-kbuild-$kver,libssl3,findutils" bookworm "$W/base.tmp.tar" \
        "deb http://deb.debian.org/debian bookworm main" >"$W/logs/mmdebstrap.log" 2>&1 ||
        { tail -20 "$W/logs/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    mv "$W/base.tmp.tar" "$base_tar"
    echo "linux-kbuild-$kver" >"$base_tar.stamp"
fi
# (grep -q on a pipe would SIGPIPE tar under pipefail)
grep -q "usr/lib/linux-kbuild-$kver/scripts/sign-file\$" < <(tar -tf "$base_tar") ||
    die "$base_tar has no usr/lib/linux-kbuild-$kver/scripts/sign-file"

# --- 7. Debian's Docker engine, private socket and dirs ---
start_dockerd
containerd_pid=$(pgrep -P "$dockerd_pid" -x containerd | head -n1 || true)
log "dockerd pid $dockerd_pid, its containerd pid ${containerd_pid:-none}"
log "importing the signer base as $reg/bench/signer-base:latest"
dk import "$base_tar" "$reg/bench/signer-base:latest" >/dev/null

# --- A. kforge sign-image ---
sync
load_a=$(cut -d' ' -f1 /proc/loadavg)
log "A. kforge sign-image (load average $load_a)"
before=$(blob_bytes)
t0=$EPOCHREALTIME
if ! KFORGE_PROGRESS=1 /usr/bin/time -f '%e %M %U %S' -o "$W/logs/kforge.time" \
    "$KFORGE" sign-image --key "$key" --cert "$cert" \
    --from "$reg/bench/modules:unsigned" --to "$reg/bench/modules:signed-kforge" --insecure \
    --work-dir "$W/kforge-tmp" >"$W/logs/kforge.out" 2>"$W/logs/kforge.err"; then
    printf -- '--- kforge stdout ---\n' >&2; cat "$W/logs/kforge.out" >&2
    printf -- '--- kforge stderr (verbatim) ---\n' >&2; cat "$W/logs/kforge.err" >&2
    die "kforge sign-image failed"
fi
t_kf=$(since "$t0")
after=$(blob_bytes)
up_kf=$((after - before))
rss_kf=$(awk '{ print $2 }' "$W/logs/kforge.time")
cpu_kf=$(awk '{ printf "%.1f", $3 + $4 }' "$W/logs/kforge.time")
log "kforge: digest $(cat "$W/logs/kforge.out")"
printf -- '--- kforge stderr (verbatim, without its %s "  signed <path>" lines; full log in %s) ---\n' \
    "$(grep -c '^  signed ' "$W/logs/kforge.err" || true)" "$W/logs/kforge.err" >&2
grep -v '^  signed ' "$W/logs/kforge.err" >&2 || true
printf -- '---\n' >&2

# --- B. The KMM 1.x way: Dockerfile build through BuildKit + docker push ---
cp "$key" "$cert" "$W/ctx/"
cat >"$W/ctx/Dockerfile" <<EOF
FROM $reg/bench/signer-base AS builder
COPY --from=$reg/bench/modules:unsigned /opt/lib/modules /opt/lib/modules
COPY key.pem cert.pem /keys/
RUN find /opt/lib/modules -name '*.ko' -print0 | xargs -0 -n1 -P\$(nproc) /usr/lib/linux-kbuild-$kver/scripts/sign-file sha256 /keys/key.pem /keys/cert.pem

FROM $reg/bench/modules:unsigned
COPY --from=builder /opt/lib/modules /opt/lib/modules
EOF

vm() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Sum of VmRSS (kB) over a process and all its descendants.
tree_rss() {
    ps -e -o pid=,ppid=,rss= | awk -v root="$1" '
        { par[$1] = $2; rss[$1] = $3 }
        END {
            for (p in par) {
                q = p; n = 0
                while (q != root && q > 1 && n < 64) { q = par[q]; n++ }
                if (q == root) s += rss[p]
            }
            print s + 0
        }'
}
# Sample the engine's process tree (dockerd, containerd, runc, the RUN step's
# processes) every 0.2 s; remember the peak and the memory cgroup of a sign-file.
sampler() {
    local peak=0 cur pid cg
    : >"$W/logs/signfile.cgroup"
    while [[ -e $W/sampling ]]; do
        cur=$(tree_rss "$dockerd_pid")
        ((cur > peak)) && peak=$cur && echo "$peak" >"$W/logs/tree.peak"
        if [[ ! -s $W/logs/signfile.cgroup ]]; then
            pid=$(pgrep -x sign-file | head -n1 || true)
            if [[ -n $pid ]]; then
                cg=$(awk -F: '$2 == "memory" { print $3 }' "/proc/$pid/cgroup" 2>/dev/null || true)
                [[ -n $cg ]] && echo "$cg" >"$W/logs/signfile.cgroup"
            fi
        fi
        sleep 0.2
    done
}

# CPU seconds (user + system, self + reaped children) of a process, from /proc/PID/stat.
cpu_s() {
    local tck
    tck=$(getconf CLK_TCK)
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v t="$tck" '{ printf "%.2f", ($12 + $13 + $14 + $15) / t }' || echo 0
}
sync
load_b=$(cut -d' ' -f1 /proc/loadavg)
log "B. KMM way: docker build (BuildKit) + docker push (load average $load_b)"
cpu_d0=$(cpu_s "$dockerd_pid")
cpu_c0=$( [[ -n $containerd_pid ]] && cpu_s "$containerd_pid" || echo 0)
hwm_d0=$(vm "$dockerd_pid" VmHWM)
hwm_c0=$( [[ -n $containerd_pid ]] && vm "$containerd_pid" VmHWM || echo 0)
rss_d0=$(vm "$dockerd_pid" VmRSS)
# Reset the peak-RSS counters (clear_refs 5) so VmHWM afterwards is the peak of build+push.
echo 5 >"/proc/$dockerd_pid/clear_refs" 2>/dev/null || true
[[ -n $containerd_pid ]] && { echo 5 >"/proc/$containerd_pid/clear_refs" 2>/dev/null || true; }
echo 0 >"$W/logs/tree.peak"
touch "$W/sampling"
sampler &
sampler_pid=$!

before=$(blob_bytes)
t0=$EPOCHREALTIME
if ! DOCKER_BUILDKIT=1 dk build --network none --progress plain -t "$reg/bench/modules:signed-kmm" "$W/ctx" \
    >"$W/logs/build.log" 2>&1; then
    tail -40 "$W/logs/build.log" >&2
    die "docker build failed (full log: $W/logs/build.log)"
fi
t_build=$(since "$t0")
hwm_build=$(vm "$dockerd_pid" VmHWM)
t1=$EPOCHREALTIME
if ! dk push "$reg/bench/modules:signed-kmm" >"$W/logs/push.log" 2>&1; then
    tail -20 "$W/logs/push.log" >&2
    die "docker push failed"
fi
t_push=$(since "$t1")
t_kmm=$(since "$t0")
after=$(blob_bytes)
up_kmm=$((after - before))
rm -f "$W/sampling"
wait "$sampler_pid" || true
sampler_pid=
hwm_d1=$(vm "$dockerd_pid" VmHWM)
cpu_d1=$(cpu_s "$dockerd_pid")
cpu_c1=$( [[ -n $containerd_pid ]] && cpu_s "$containerd_pid" || echo 0)
cpu_kmm=$(awk -v a="$cpu_d0" -v b="$cpu_d1" -v c="$cpu_c0" -v d="$cpu_c1" 'BEGIN { printf "%.1f", (b - a) + (d - c) }')
# BuildKit's own step timings (plain progress: "#N [stage n/m] ..." then "#N DONE 1.2s").
steps=$(awk '
    /^#[0-9]+ \[/ || /^#[0-9]+ exporting to image/ { id = $1; sub(/^#[0-9]+ /, ""); if (!(id in name)) name[id] = substr($0, 1, 70) }
    /^#[0-9]+ DONE / { done[$1] = $3 }
    END { for (id in name) if ((id in done) && done[id] + 0 >= 0.1) { n = substr(id, 2); printf "%d\t%s\t%s\n", n, done[id], name[id] } }
' "$W/logs/build.log" | sort -n | cut -f2- | awk -F'\t' '{ printf "    %7s  %s\n", $1, $2 }')
hwm_c1=$( [[ -n $containerd_pid ]] && vm "$containerd_pid" VmHWM || echo 0)
tree_peak=$(cat "$W/logs/tree.peak")
kmm_digest=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$W/logs/push.log" | cut -d' ' -f2 || true)
log "KMM way: build $t_build s, push $t_push s, digest ${kmm_digest:-?}"
# The RUN step's cgroup is gone by now; its parent keeps the peak of its children
# (memory.max_usage_in_bytes counts page cache too).
cg_note="not found"
cg=$(cat "$W/logs/signfile.cgroup" 2>/dev/null || true)
if [[ -n $cg ]]; then
    parent=/sys/fs/cgroup/memory$(dirname "$cg")
    if [[ -r $parent/memory.max_usage_in_bytes ]]; then
        cg_note="$(dirname "$cg"): max_usage $(mb "$(cat "$parent/memory.max_usage_in_bytes")") MB (incl. page cache)"
    else
        cg_note="$cg (parent not readable at $parent)"
    fi
fi
data_root_bytes=$(du -sb "$W/docker-data" 2>/dev/null | cut -f1 || echo 0)

# --- Verify: pull both back, compare the module trees, kforge verify ---
log "verifying: pulling both signed images back"
mkdir -p "$W/pull"
skopeo copy -q --src-tls-verify=false "docker://$reg/bench/modules:signed-kforge" "oci:$W/pull:kforge"
skopeo copy -q --src-tls-verify=false "docker://$reg/bench/modules:signed-kmm" "oci:$W/pull:kmm"
umoci unpack --image "$W/pull:kforge" "$W/rf-kforge" >/dev/null
umoci unpack --image "$W/pull:kmm" "$W/rf-kmm" >/dev/null
kf_raw=$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench/modules:signed-kforge")
kmm_raw=$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench/modules:signed-kmm")
layers() { jq -r '.layers[] | "\(.digest) \(.size)"' <<<"$1"; }
describe() {
    local raw=$1 n l0 sz0 szn
    n=$(jq '.layers | length' <<<"$raw")
    l0=$(jq -r '.layers[0].digest' <<<"$raw")
    szn=$(jq -r '.layers[-1].size' <<<"$raw")
    if [[ $l0 == "$unsigned_layer" ]]; then sz0="unsigned layer reused as is"; else sz0="base layer re-encoded: $l0"; fi
    printf '%s layers (%s); top layer %s MB compressed; %s' "$n" "$(jq -r '.mediaType // "no mediaType field"' <<<"$raw")" "$(mb "$szn")" "$sz0"
}
log "kforge image: $(describe "$kf_raw")"
log "KMM image:    $(describe "$kmm_raw")"

n_kf=$(find "$W/rf-kforge/rootfs/opt/lib/modules" -name '*.ko' | wc -l)
n_kmm=$(find "$W/rf-kmm/rootfs/opt/lib/modules" -name '*.ko' | wc -l)
((n_kf == modules)) || die "kforge image has $n_kf modules, expected $modules"
((n_kmm == modules)) || die "KMM image has $n_kmm modules, expected $modules"
diffs=$(diff -r -q "$W/rf-kforge/rootfs/opt/lib/modules" "$W/rf-kmm/rootfs/opt/lib/modules" || true)
if [[ -n $diffs ]]; then
    printf '%s\n' "$diffs" | head -n 50 >&2
    die "$(wc -l <<<"$diffs") differences between the kforge and KMM module trees"
fi
identical=yes
# Signed, once: every module ends with the magic, and differs from the pristine one.
signed=$(find "$W/rf-kforge/rootfs/opt/lib/modules" -name '*.ko' -print0 | xargs -0 -n 1 tail -c 28 |
    grep -c 'Module signature appended' || true)
((signed == modules)) || die "only $signed of $modules modules end with a signature"
same_as_pristine=$(diff -r -q "$pristine" "$W/rf-kforge/rootfs/opt/lib/modules/$abi" | grep -c differ || true)
((same_as_pristine == modules)) || die "only $same_as_pristine of $modules modules changed by signing"
verify_out=$("$KFORGE" verify -q --cert "$cert" "$W/rf-kforge/rootfs/opt/lib/modules" 2>&1) ||
    { printf '%s\n' "$verify_out" >&2; die "kforge verify failed on the kforge image"; }
log "kforge verify (kforge image): $verify_out"
grep -q "^$modules verified, 0 failed" <<<"$verify_out" || die "unexpected verify output: $verify_out"

# --- Report ---
ratio=$(awk -v a="$t_kmm" -v b="$t_kf" 'BEGIN { printf "%.1f", a / b }')
kf_summary=$(grep -E '^signed ' "$W/logs/kforge.err" | tail -n1 || true)
blob_lines() { grep -cE "^ *blob sha256:[0-9a-f]+ $1" "$W/logs/kforge.err" || true; }
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
kmm_mem_mb=$(kb_mb "$((hwm_d1 + hwm_c1))")
cat <<EOF

Image: $modules modules of Debian's \`$pkg\` ($(basename "$deb_name" .deb | cut -d_ -f2)), Debian signatures stripped, $(mb "$corpus_bytes") MB,
one layer under /opt/lib/modules/$abi ($(mb "$unsigned_layer_size") MB gzip). RSA-2048 / SHA-256. Registry: Distribution $(docker-registry --version 2>/dev/null | awk '{ print $3 }') on $reg.
Machine: $cpu, nproc = $jobs; 1-min load average before A: $load_a, before B: $load_b; at the end: $(cut -d' ' -f1-3 /proc/loadavg).
kforge: $kf_summary
  blobs: $(blob_lines present) present, $(blob_lines mounted) mounted, $(blob_lines uploaded) uploaded; image: $(describe "$kf_raw")
KMM way: Docker $(dk version -f '{{.Server.Version}}' 2>/dev/null || echo '?') (BuildKit embedded), sign-file from linux-kbuild-$kver via \`xargs -P\$(nproc)\`;
  image: $(describe "$kmm_raw"); docker data root after the build: $(mb "$data_root_bytes") MB
  BuildKit steps (s):
$steps
Memory, KMM way: dockerd VmHWM $(kb_mb "$hwm_d0") MB before (VmRSS $(kb_mb "$rss_d0") MB), reset, then $(kb_mb "$hwm_build") MB after the build, $(kb_mb "$hwm_d1") MB after the push;
  containerd VmHWM $(kb_mb "$hwm_c0") -> $(kb_mb "$hwm_c1") MB; sampled peak RSS of dockerd's whole process tree (incl. RUN step) $(kb_mb "$tree_peak") MB;
  RUN step cgroup: $cg_note.
Verification: both images pulled back (skopeo + umoci): $modules modules each, byte-identical: $identical; kforge verify: $verify_out

| method | wall s | build s | push s | CPU s | uploaded MB (registry growth) | peak memory MB | what the memory figure is |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
| kforge sign-image | $t_kf | – | – | $cpu_kf | $(mb "$up_kf") | $(kb_mb "$rss_kf") | max RSS of the kforge process |
| KMM 1.x (BuildKit build + docker push) | $t_kmm | $t_build | $t_push | $cpu_kmm | $(mb "$up_kmm") | $kmm_mem_mb | dockerd + containerd VmHWM during build+push (sampled RSS of dockerd's whole process tree incl. the RUN step: $(kb_mb "$tree_peak")) |

KMM wall / kforge wall: ${ratio}×; CPU s: kforge = user + sys of the process; KMM = user + sys of dockerd and containerd, with their reaped children (runc, the RUN step's sign-file processes).
EOF
echo
log "whole run: $(since "$run_start") s"
