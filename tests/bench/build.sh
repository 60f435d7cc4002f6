#!/usr/bin/env bash
# Benchmark: building a KMM module image, `kforge build` against `docker build` + `docker push`,
# on the same private Docker engine (Debian's docker.io, 20.10 with BuildKit embedded), same run.
#
#   A. kforge build --buildkit docker://<private socket>: drives the engine's BuildKit over gRPC
#      (Dockerfile frontend, the Dockerfile and context as LLB inputs, secrets and credentials through
#      a session), exports into the engine (moby exporter) and has the engine push the result.
#   B. DOCKER_BUILDKIT=1 docker build --network none -t … then docker push (Debian's /usr/bin/docker
#      CLI, 20.10, matching the engine), timed separately and together.
#
# Both build dockerfiles/kmm-module.Dockerfile with the context tests/modules/kforge_hello and KMM's
# build arguments (DTK_AUTO, RUNTIME_IMAGE, KERNEL_FULL_VERSION, MOD_NAME) and push to a throwaway
# local Distribution registry (Debian's docker-registry), which also serves the two base images:
#   - a Driver-Toolkit-like image: bookworm minbase + gcc, make, kmod, libc6-dev, linux-headers-<ABI>;
#   - a small runtime image: bookworm minbase + kmod.
# Both are the OCI layouts the Rust tests cache (tests/support/dtk.rs): <cache>/dtk-<ABI>/ (tag dtk)
# and <cache>/runtime-bookworm/ (tag runtime), <cache> being $KFORGE_TEST_CACHE, else
# $XDG_CACHE_HOME/kforge-tests, else ~/.cache/kforge-tests. If missing, they are built here the way
# dtk.rs builds them (mmdebstrap + umoci, under the same lock file), so the tests reuse them.
#
# After WARMUP untimed cold builds of each tool, measured REPEAT times, alternating which tool goes
# first (odd runs kforge first, even runs docker first):
#   cold: before each tool's cold build the engine is emptied (all images removed, BuildKit cache
#         pruned), so both pull the two bases, unpack them and compile the module;
#   warm: right after its cold build, each tool builds again with everything cached, to a new tag
#         (kforge with --force);
# then kforge's "target exists" path (no --force, the tag is there: nothing is built), and two
# concurrent identical `kforge build --force` processes, cold and warm, against one alone: separate
# clients share solves only through BuildKit's own deduplication of identical vertices. (Sharing a
# solve between identical requests inside one `kforge serve` is measured by the Rust test suite.)
# Finally one image of each tool is pulled back and checked (module present, vermagic, modules.dep).
#
# Usage: tests/bench/build.sh
# Environment:
#   REPEAT      cold/warm repetitions per tool (default 3)
#   WARMUP      untimed cold builds of each tool before the timed ones (default 1)
#   BENCH_DIR   work dir (default target/bench/build, relative to the repo root)
#   KFORGE      kforge binary to use as is; by default `cargo build --release -p kforge` is run and
#               target/release/kforge used
#   KEEP        if set, keep the docker data root, the registry and the unpacked images (debugging)
set -euo pipefail

run_start=$EPOCHREALTIME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

W=$(abs_dir "${BENCH_DIR:-target/bench/build}")
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not $REPEAT"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number, not $WARMUP"
# Debian's docker CLI (20.10), matching its engine; /usr/local/bin may hold another one.
DOCKER=/usr/bin/docker
cache=${KFORGE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kforge-tests}
dockerfile=$repo/dockerfiles/kmm-module.Dockerfile
context=$repo/tests/modules/kforge_hello
[[ -f $dockerfile ]] || die "no $dockerfile"
[[ -d $context ]] || die "no $context"

# Seconds since a saved $EPOCHREALTIME, to the millisecond (warm builds take well under a second).
since3() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# --- Tools (Debian packages) ---
need_pkgs=()
[[ -x /usr/sbin/dockerd && -x $DOCKER ]] || need_pkgs+=(docker.io)
command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
command -v umoci >/dev/null || need_pkgs+=(umoci)
command -v skopeo >/dev/null || need_pkgs+=(skopeo)
command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
command -v modinfo >/dev/null || need_pkgs+=(kmod)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; }
fi

# --- The kernel ABI the module is built for ---
resolve_abi
log "kernel ABI $abi"

# --- kforge ---
if [[ -z ${KFORGE:-} ]]; then
    log "building kforge (cargo build --release -p kforge)"
    cargo build --release -p kforge
    KFORGE=target/release/kforge
fi
[[ -x $KFORGE ]] || die "kforge binary not found at $KFORGE"
KFORGE=$(realpath "$KFORGE")
"$KFORGE" build --help >/dev/null 2>&1 || die "$KFORGE has no build subcommand (stale binary?)"

# --- Cleanup: services and builds we started, and what is large; keep cached inputs ---
reg_pid=
dockerd_pid=
bg_pids=()
cleanup() {
    set +e
    for p in "${bg_pids[@]}"; do
        kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    stop_dockerd_and_registry
    [[ -n ${KEEP:-} ]] || rm -rf "$W/pull" "$W/rf-kforge" "$W/rf-docker"
}
trap cleanup EXIT

rm -rf "$W/docker-data" "$W/docker-exec" "$W/registry" "$W/pull" "$W/rf-kforge" "$W/rf-docker" "$W/logs"
mkdir -p "$W/logs" "$W/docker-config"
# A private, empty client config for kforge and the docker CLI: no credentials from the host.
export DOCKER_CONFIG=$W/docker-config
unset BUILDKIT_HOST DOCKER_HOST

# --- 1. The base images as OCI layouts, cached like tests/support/dtk.rs does ---
# ensure_layout NAME PACKAGES TAG LABEL: <cache>/NAME, built unless complete (index.json), under the
# lock <cache>/NAME.lock, staged in <cache>/.NAME-XXXXXX and renamed into place.
ensure_layout() {
    local name=$1 include=$2 tag=$3 label=$4 layout=$cache/$1 stage lockfd t0
    [[ -f $layout/index.json ]] && return
    mkdir -p "$cache"
    exec {lockfd}>"$cache/$name.lock"
    flock "$lockfd"
    if [[ ! -f $layout/index.json ]]; then
        rm -rf "$cache/.$name-"*
        rm -rf "$layout"
        t0=$EPOCHREALTIME
        log "building $name ($include) with mmdebstrap into $layout (cached)"
        stage=$(mktemp -d "$cache/.$name-XXXXXX")
        local args=(--variant=minbase "--include=$include" '--aptopt=Acquire::Retries "3"')
        local pattern
        for pattern in '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*'; do
            args+=("--dpkgopt=path-exclude=$pattern")
        done
        # The output name must end in .tar, or mmdebstrap writes a directory.
        mmdebstrap "${args[@]}" bookworm "$stage/rootfs.tar" \
            "deb http://deb.debian.org/debian bookworm main" \
            "deb http://deb.debian.org/debian bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main" \
            </dev/null >"$W/logs/mmdebstrap-$name.log" 2>&1 ||
            { tail -30 "$W/logs/mmdebstrap-$name.log" >&2; die "mmdebstrap --include=$include failed"; }
        local image=$stage/oci:$tag
        umoci init --layout "$stage/oci"
        umoci new --image "$image"
        umoci raw add-layer --image "$image" --history.created_by "mmdebstrap --variant=minbase --include=$include bookworm" \
            "$stage/rootfs.tar"
        rm -f "$stage/rootfs.tar"
        umoci config --image "$image" --no-history --os linux --architecture amd64 \
            --config.env 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --config.cmd /bin/bash --config.workingdir / --config.label "$label"
        umoci gc --layout "$stage/oci"
        mv "$stage/oci" "$layout"
        rm -rf "$stage"
        log "built $name in $(since "$t0") s"
    fi
    exec {lockfd}>&-
}
ensure_layout "dtk-$abi" "gcc,make,kmod,libc6-dev,linux-headers-$abi" dtk "kforge.test.abi=$abi"
ensure_layout runtime-bookworm kmod runtime kforge.test.image=runtime
dtk_layout=$cache/dtk-$abi
runtime_layout=$cache/runtime-bookworm

# --- 2. Throwaway registry on a free loopback port ---
start_registry

dtk=$reg/bench/dtk:$abi
runtime=$reg/bench/kmod:bookworm
t0=$EPOCHREALTIME
skopeo copy -q --dest-tls-verify=false "oci:$dtk_layout:dtk" "docker://$dtk"
skopeo copy -q --dest-tls-verify=false "oci:$runtime_layout:runtime" "docker://$runtime"
t_fixtures=$(since "$t0")
dtk_raw=$(skopeo inspect --raw --tls-verify=false "docker://$dtk")
runtime_raw=$(skopeo inspect --raw --tls-verify=false "docker://$runtime")
dtk_size=$(jq '[.layers[].size] | add' <<<"$dtk_raw")
runtime_size=$(jq '[.layers[].size] | add' <<<"$runtime_raw")
log "pushed $dtk ($(mb "$dtk_size") MB compressed) and $runtime ($(mb "$runtime_size") MB) in $t_fixtures s"

# --- 3. Debian's Docker engine, private socket and dirs ---
start_dockerd
engine_version=$(dk version -f '{{.Server.Version}}')
log "dockerd $engine_version, pid $dockerd_pid"

# Empties the engine: no containers, no images, no BuildKit cache; checks that it is empty.
reset_engine() {
    local left cache_count
    dk ps -aq | xargs -r "$DOCKER" -H "unix://$W/docker.sock" rm -f >/dev/null
    dk image ls -aq | sort -u | xargs -r "$DOCKER" -H "unix://$W/docker.sock" image rm -f >/dev/null
    dk builder prune -af >/dev/null
    dk system prune -af >/dev/null
    left=$(dk image ls -aq | wc -l)
    cache_count=$(cache_records)
    [[ $left == 0 && ${cache_count:-0} == 0 ]] ||
        die "engine not empty after pruning: $left images, ${cache_count:-?} build cache records"
    sync
}

# How many build cache records the engine holds.
cache_records() { dk system df --format '{{.Type}} {{.TotalCount}}' | awk '$1 == "Build" { print $3 }'; }

build_args=(--build-arg "DTK_AUTO=$dtk" --build-arg "RUNTIME_IMAGE=$runtime"
    --build-arg "KERNEL_FULL_VERSION=$abi" --build-arg MOD_NAME=kforge_hello)

# kforge_build TAG LOGNAME [extra args…]: runs kforge build; stdout (the digest reference) to
# logs/LOGNAME.out, progress to logs/LOGNAME.err; dies with the output if it fails.
kforge_cmd() {
    local tag=$1
    shift
    "$KFORGE" build --buildkit "docker://$W/docker.sock" -f "$dockerfile" --context "$context" "${build_args[@]}" \
        --to "$reg/bench/kforge:$tag" --progress plain "$@" </dev/null
}
kforge_build() {
    local tag=$1 name=$2
    shift 2
    if ! kforge_cmd "$tag" "$@" >"$W/logs/$name.out" 2>"$W/logs/$name.err"; then
        printf -- '--- kforge stdout ---\n' >&2; cat "$W/logs/$name.out" >&2
        printf -- '--- kforge stderr (verbatim) ---\n' >&2; cat "$W/logs/$name.err" >&2
        printf -- '--- dockerd log (last lines) ---\n' >&2; tail -20 "$W/logs/dockerd.log" >&2
        die "kforge build --to $reg/bench/kforge:$tag $* failed"
    fi
    grep -qE "^$reg/bench/kforge@sha256:[0-9a-f]{64}\$" "$W/logs/$name.out" ||
        die "kforge build printed no digest reference: $(cat "$W/logs/$name.out")"
}
# docker_build TAG LOGNAME: sets t_build, t_push (and writes logs/LOGNAME.build, LOGNAME.push).
docker_build() {
    local tag=$1 name=$2 t0 t1
    t0=$EPOCHREALTIME
    if ! DOCKER_BUILDKIT=1 dk build --network none --progress plain -f "$dockerfile" "${build_args[@]}" \
        -t "$reg/bench/docker:$tag" "$context" </dev/null >"$W/logs/$name.build" 2>&1; then
        tail -40 "$W/logs/$name.build" >&2
        die "docker build failed (full log: $W/logs/$name.build)"
    fi
    t_build=$(since3 "$t0")
    t1=$EPOCHREALTIME
    if ! dk push "$reg/bench/docker:$tag" </dev/null >"$W/logs/$name.push" 2>&1; then
        tail -20 "$W/logs/$name.push" >&2
        die "docker push failed"
    fi
    t_push=$(since3 "$t1")
}
# How BuildKit's plain progress says the steps went: "N run, M cached".
steps_of() {
    local run cached
    run=$(grep -cE '^#[0-9]+ DONE ' "$1" || true)
    cached=$(grep -cE '^#[0-9]+ CACHED$' "$1" || true)
    printf '%s DONE, %s CACHED' "$run" "$cached"
}

# --- 4. Cold and warm, REPEAT times, alternating the order ---
kf_cold=() kf_warm=() d_cold=() d_cold_b=() d_cold_p=() d_warm=() d_warm_b=() d_warm_p=()
rows=()
run_kforge() {
    local i=$1 t0
    reset_engine
    log "run $i: kforge cold (load $(load1))"
    t0=$EPOCHREALTIME
    kforge_build "cold-$i" "kforge-cold-$i"
    kf_cold[i]=$(since3 "$t0")
    log "run $i: kforge cold ${kf_cold[i]} s ($(steps_of "$W/logs/kforge-cold-$i.err"))"
    t0=$EPOCHREALTIME
    kforge_build "warm-$i" "kforge-warm-$i" --force
    kf_warm[i]=$(since3 "$t0")
    log "run $i: kforge warm ${kf_warm[i]} s ($(steps_of "$W/logs/kforge-warm-$i.err"))"
    ((i == 1)) && records_single=$(cache_records)
    return 0
}
run_docker() {
    local i=$1
    reset_engine
    log "run $i: docker cold (load $(load1))"
    docker_build "cold-$i" "docker-cold-$i"
    d_cold_b[i]=$t_build d_cold_p[i]=$t_push d_cold[i]=$(add "$t_build" "$t_push")
    log "run $i: docker cold ${d_cold[i]} s (build $t_build + push $t_push; $(steps_of "$W/logs/docker-cold-$i.build"))"
    docker_build "warm-$i" "docker-warm-$i"
    d_warm_b[i]=$t_build d_warm_p[i]=$t_push d_warm[i]=$(add "$t_build" "$t_push")
    log "run $i: docker warm ${d_warm[i]} s (build $t_build + push $t_push; $(steps_of "$W/logs/docker-warm-$i.build"))"
}
# Untimed first: the first build on a fresh engine (and the first reads of the registry's blobs) is
# slower, and would always penalise the tool that goes first in run 1.
for ((i = 1; i <= WARMUP; i++)); do
    reset_engine
    log "warm-up $i: kforge, then docker (untimed)"
    kforge_build "warmup-$i" "kforge-warmup-$i"
    reset_engine
    docker_build "warmup-$i" "docker-warmup-$i"
done
for ((i = 1; i <= REPEAT; i++)); do
    if ((i % 2)); then
        order="kforge, docker"
        run_kforge "$i"
        run_docker "$i"
    else
        order="docker, kforge"
        run_docker "$i"
        run_kforge "$i"
    fi
    rows+=("| $i | $order | ${kf_cold[i]} | ${d_cold[i]} (${d_cold_b[i]} + ${d_cold_p[i]}) | ${kf_warm[i]} | ${d_warm[i]} (${d_warm_b[i]} + ${d_warm_p[i]}) |")
done

# --- 5. kforge's "target exists" path: no --force, the tag is there, nothing is built ---
kf_skip=()
want=$(cat "$W/logs/kforge-cold-1.out")
for ((i = 1; i <= REPEAT; i++)); do
    t0=$EPOCHREALTIME
    kforge_build cold-1 "kforge-skip-$i"
    kf_skip[i]=$(since3 "$t0")
    grep -q 'not rebuilt' "$W/logs/kforge-skip-$i.err" ||
        die "kforge build to an existing tag did not say 'not rebuilt': $(cat "$W/logs/kforge-skip-$i.err")"
    [[ $(cat "$W/logs/kforge-skip-$i.out") == "$want" ]] ||
        die "skip path printed $(cat "$W/logs/kforge-skip-$i.out"), expected $want"
done
log "kforge skip path: ${kf_skip[*]} s"

# --- 6. Two concurrent identical kforge builds (separate processes), cold then warm ---
# concurrent NAME: two `kforge build --force` to the same tag at once; sets t_pair, t_a, t_b.
concurrent() {
    local name=$1 t0 pa pb rc=0
    t0=$EPOCHREALTIME
    ( s=$EPOCHREALTIME; kforge_cmd "$name" --force >"$W/logs/$name-a.out" 2>"$W/logs/$name-a.err" && r=0 || r=$?
      since3 "$s" >"$W/logs/$name-a.time"; exit "$r" ) &
    pa=$!
    ( s=$EPOCHREALTIME; kforge_cmd "$name" --force >"$W/logs/$name-b.out" 2>"$W/logs/$name-b.err" && r=0 || r=$?
      since3 "$s" >"$W/logs/$name-b.time"; exit "$r" ) &
    pb=$!
    bg_pids+=("$pa" "$pb")
    wait "$pa" || rc=$?
    wait "$pb" || rc=$((rc ? rc : $?))
    t_pair=$(since3 "$t0")
    bg_pids=()
    if ((rc)); then
        for x in a b; do
            printf -- '--- kforge %s stdout ---\n' "$x" >&2; cat "$W/logs/$name-$x.out" >&2
            printf -- '--- kforge %s stderr (verbatim) ---\n' "$x" >&2; cat "$W/logs/$name-$x.err" >&2
        done
        die "concurrent kforge builds ($name) failed"
    fi
    t_a=$(cat "$W/logs/$name-a.time") t_b=$(cat "$W/logs/$name-b.time")
    same_digest=no
    [[ $(cat "$W/logs/$name-a.out") == "$(cat "$W/logs/$name-b.out")" ]] && same_digest=yes
}
reset_engine
log "two concurrent identical cold kforge builds (load $(load1))"
concurrent conc-cold
c_cold=($t_pair $t_a $t_b $same_digest)
# Did the compiler run in both? Both clients show the shared vertex; count its make output lines.
cc_a=$(grep -c 'CC \[M\]' "$W/logs/conc-cold-a.err" || true)
cc_b=$(grep -c 'CC \[M\]' "$W/logs/conc-cold-b.err" || true)
log "concurrent cold: pair $t_pair s (a $t_a, b $t_b), same digest: $same_digest"
concurrent conc-warm
c_warm=($t_pair $t_a $t_b $same_digest)
log "concurrent warm: pair $t_pair s (a $t_a, b $t_b), same digest: $same_digest"
records_pair=$(cache_records)

# --- 7. Check one result of each tool: module, vermagic, modules.dep, labels ---
log "verifying: pulling bench/kforge:cold-1 and bench/docker:cold-1 back"
mkdir -p "$W/pull"
check_image() {
    local who=$1 ref=$2 rootfs ko vermagic labels
    skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$W/pull:$who"
    umoci unpack --image "$W/pull:$who" "$W/rf-$who" >/dev/null
    rootfs=$W/rf-$who/rootfs
    ko=$rootfs/opt/lib/modules/$abi/kforge_hello.ko
    [[ -f $ko ]] || die "$ref: no $ko"
    vermagic=$(modinfo -F vermagic "$ko")
    [[ $vermagic == "$abi "* ]] || die "$ref: vermagic '$vermagic' is not for $abi"
    grep -q '^kforge_hello.ko:' "$rootfs/opt/lib/modules/$abi/modules.dep" || die "$ref: modules.dep lacks kforge_hello.ko"
    labels=$(skopeo inspect --config --tls-verify=false "docker://$ref" | jq -c '.config.Labels')
    [[ $(jq -r '."io.kforge.module"' <<<"$labels") == kforge_hello && $(jq -r '."io.kforge.kernel"' <<<"$labels") == "$abi" ]] ||
        die "$ref: labels $labels"
    printf '%s layers, %s MB compressed' "$(skopeo inspect --raw --tls-verify=false "docker://$ref" | jq '.layers | length')" \
        "$(mb "$(skopeo inspect --raw --tls-verify=false "docker://$ref" | jq '[.layers[].size] | add')")"
}
img_kf=$(check_image kforge "$reg/bench/kforge:cold-1")
img_d=$(check_image docker "$reg/bench/docker:cold-1")
log "kforge image: $img_kf; docker image: $img_d"

# --- Report ---
m_kf_cold=$(median "${kf_cold[@]}")
m_d_cold=$(median "${d_cold[@]}")
m_d_cold_b=$(median "${d_cold_b[@]}")
m_d_cold_p=$(median "${d_cold_p[@]}")
m_kf_warm=$(median "${kf_warm[@]}")
m_d_warm=$(median "${d_warm[@]}")
m_d_warm_b=$(median "${d_warm_b[@]}")
m_d_warm_p=$(median "${d_warm_p[@]}")
m_skip=$(median "${kf_skip[@]}")
overhead=$(awk -v k="$m_kf_cold" -v d="$m_d_cold" 'BEGIN { printf "%+.1f", (k / d - 1) * 100 }')
warm_diff=$(awk -v k="$m_kf_warm" -v d="$m_d_warm" 'BEGIN { printf "%+.3f", k - d }')
cold_verdict=$(awk -v o="$overhead" 'BEGIN { print (o <= 10 ? "PASS" : "MISS") }')
warm_verdict=$(awk -v d="$warm_diff" 'BEGIN { print (d <= 0.3 ? "PASS" : "MISS") }')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$repo" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"
join() { local IFS=' '; echo "$*"; }

cat <<EOF

kforge: $("$KFORGE" --version) ($KFORGE, commit $rev)
Engine: Docker $engine_version (dockerd + BuildKit embedded), CLI $("$DOCKER" --version | sed 's/^Docker version //'), DOCKER_BUILDKIT=1
Registry: Distribution $(docker-registry --version 2>/dev/null | awk '{ print $3 }') on $reg
Build: dockerfiles/kmm-module.Dockerfile, context tests/modules/kforge_hello, KERNEL_FULL_VERSION=$abi
  DTK_AUTO=$dtk ($(mb "$dtk_size") MB compressed), RUNTIME_IMAGE=$runtime ($(mb "$runtime_size") MB)
  results: kforge $img_kf; docker $img_d; both checked (module, vermagic, modules.dep, labels)
Machine: $cpu, nproc = $(nproc); 1-min load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
Cold = after $WARMUP untimed cold build(s) of each tool, engine emptied before each tool (images removed, BuildKit cache pruned): pull both bases, compile, push.
Warm = the same build again right after, new tag, everything cached (kforge --force).
docker figures are build + push (s).

| run | order | kforge cold | docker cold (build + push) | kforge warm | docker warm (build + push) |
| ---: | --- | ---: | ---: | ---: | ---: |
$(printf '%s\n' "${rows[@]}")
| median | | $m_kf_cold | $m_d_cold (medians $m_d_cold_b, $m_d_cold_p) | $m_kf_warm | $m_d_warm (medians $m_d_warm_b, $m_d_warm_p) |

cold: kforge $m_kf_cold s vs docker build + push $m_d_cold s: overhead ${overhead}% (target <= 10%): $cold_verdict
warm: kforge $m_kf_warm s vs docker build + push $m_d_warm s: difference ${warm_diff} s (target <= 0.3 s): $warm_verdict
kforge "target exists" (no --force, nothing built): median $m_skip s ($(join "${kf_skip[@]}"))
two concurrent identical kforge build --force (separate processes, same tag):
  cold: both done in ${c_cold[0]} s (each ${c_cold[1]} s, ${c_cold[2]} s) vs one cold build $m_kf_cold s (median): $(ratio "${c_cold[0]}" "$m_kf_cold")x; same digest: ${c_cold[3]}; compiler lines in their progress: $cc_a, $cc_b
  warm: both done in ${c_warm[0]} s (each ${c_warm[1]} s, ${c_warm[2]} s) vs one warm build $m_kf_warm s (median): $(ratio "${c_warm[0]}" "$m_kf_warm")x; same digest: ${c_warm[3]}
  BuildKit cache records: ${records_pair:-?} after the two pairs (cold + warm), ${records_single:-?} after one cold + one warm build (run 1)
  (sharing one solve between identical requests inside one kforge serve is measured by the Rust test suite)
EOF
echo
log "whole run: $(since "$run_start") s (logs in $W/logs)"
