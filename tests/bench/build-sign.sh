#!/usr/bin/env bash
# Benchmark: build + sign of a KMM module image, `kforge build-sign` against the KMM 1.x sequence on
# the same BuildKit, same run, for two BuildKits ("paths") and two module sets.
#
# Paths (PATH_MODE):
#   engine     the private Docker engine (Debian's docker.io 20.10, BuildKit 0.8 embedded):
#     A. kforge build-sign --buildkit docker://<private socket>: builds into the engine's store under a
#        private name, reads the image back, signs the modules in-process, pushes once;
#     B. KMM 1.x, each step with Debian's /usr/bin/docker CLI (DOCKER_BUILDKIT=1, --network none):
#        docker build of the Dockerfile, docker push of <image>:<tag>-<namespace>_<module>_kmm_unsigned
#        (KMM's name), docker build of KMM's signing Dockerfile, docker push of the signed image.
#   buildkitd  the in-cluster path: one private standalone buildkitd, the pinned one that
#        tests/peers/build.sh builds (BUILDKIT_VERSION of tests/peers/versions.env, OCI worker with
#        Debian's runc, as tests/support/buildkitd.rs starts it):
#     A. kforge build-sign --buildkit unix://<its socket>: BuildKit pushes the unsigned build by
#        digest (no tag), kforge signs in-process and pushes the signed image once, to the tag;
#     B. KMM 1.x with the pinned buildctl: `buildctl build --frontend dockerfile.v0 --local context=…
#        --local dockerfile=… --opt build-arg:… --opt force-network-mode=none --output
#        type=image,name=<…_kmm_unsigned>,push=true`, then `buildctl build` of KMM's signing
#        Dockerfile with `--secret id=key,src=… --secret id=cert,src=…`, pushed to the signed tag.
#   KMM's signing Dockerfile is its internal/sign/pod template: FROM the unsigned image, a stage FROM
#   the signer image (here the DTK: linux-kbuild's sign-file, libssl3) that, for each of filesToSign,
#   COPYs the file in and RUNs sign-file sha256 on it with the key and certificate mounted at
#   /run/secrets/{key,cert}/ (BuildKit secrets; KMM mounts Secrets into its pod), then FROM the unsigned
#   image again with one COPY per signed file. The one engine/daemon stands in for KMM's pods (so the
#   signing build finds the unsigned image and the DTK already there: in KMM's favour).
#
# Module sets (MODULE_SET):
#   hello  dockerfiles/kmm-module.Dockerfile, context tests/modules/kforge_hello (one module);
#   tree   TREE_MODULES (default 200) small distinct modules written by tests/bench/gen-module-tree.sh,
#          built by tests/bench/kmm-module-tree.Dockerfile (kmm-module.Dockerfile with make -j$(nproc)),
#          all installed under /opt/lib/modules/<kernel>/; KMM's filesToSign lists every one of them
#          (one COPY + one RUN sign-file per file, as the template does), kforge signs its default
#          selection (every module under /opt/lib/modules).
#   engine × tree is off by default: KMM's template needs two layers per file in the signing stage and
#   Docker 20.10's overlay2 store allows 125, so the emulated KMM fails ("max depth exceeded") at about
#   the 63rd file; ENGINE_TREE=1 runs it anyway (kforge measured, KMM's failure reported).
#
# Base images and registry: the cached OCI layouts <cache>/dtk-<ABI>/ (tag dtk) and
# <cache>/runtime-bookworm/ (tag runtime) (<cache> = $KFORGE_TEST_CACHE, else
# $XDG_CACHE_HOME/kforge-tests, else ~/.cache/kforge-tests; not built here: run tests/bench/build.sh
# or the Rust tests once), pushed to a throwaway local Distribution registry (Debian's
# docker-registry) whose access log counts each run's pushes: manifest PUTs (and how many went to a
# tag rather than a digest), blob uploads, cross-repository mounts, and bytes uploaded (sizes of the
# uploaded blobs and manifests, read from the registry's storage).
#
# For each path × module set: WARMUP untimed cold runs of each tool, then REPEAT measured repetitions,
# alternating which tool goes first:
#   cold: before each tool its BuildKit is emptied (engine: images removed and BuildKit cache pruned;
#         buildkitd: `buildctl prune --all`): both pull the bases, compile, sign, push;
#   warm: right after, the same again to a new tag, everything cached (kforge with --force; the KMM
#         sequence simply re-run).
# Finally the cold-1 signed images of each tool are pulled back: every module must verify against the
# certificate (kforge verify) and have vermagic = the ABI; KMM's unsigned module must not verify.
# Targets (the issue's): faster than the KMM sequence in every run, >= 3x warm, one image push.
#
# Usage: tests/bench/build-sign.sh
# Environment: PATH_MODE engine|buildkitd|both (default both), MODULE_SET hello|tree|both (default
#   both), TREE_MODULES (default 200), ENGINE_TREE=1 (also engine × tree), REPEAT (default 3),
#   WARMUP (default 1), BENCH_DIR (default target/bench/build-sign), KFORGE (a kforge binary used as
#   is; by default `cargo build --release -p kforge` and a copy of target/release/kforge, so that a
#   concurrent rebuild does not swap it mid-run), KEEP (keep the engine's and buildkitd's data, the
#   registry and the pulled images).
# Duration on the 2-core machine, defaults (engine × hello, buildkitd × hello, buildkitd × tree): about
#   30 minutes (32 measured while other builds shared the cores), 25 of them in buildkitd × tree: 8
#   cold builds of 200 modules (90-150 s each) and 4 cold KMM signing builds of 200 files (60-115 s
#   each). PATH_MODE=engine MODULE_SET=hello is the former benchmark (about 4 minutes).
# The first push to each repository uploads the runtime base layer (buildkitd does not mount it from
# bench/kmod); the warm-up runs absorb that, so with WARMUP=0 run 1's bytes include it.
set -euo pipefail
shopt -s inherit_errexit

run_start=$EPOCHREALTIME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

W=$(abs_dir "${BENCH_DIR:-target/bench/build-sign}")
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1}
PATH_MODE=${PATH_MODE:-both}
MODULE_SET=${MODULE_SET:-both}
TREE_MODULES=${TREE_MODULES:-200}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, not $REPEAT"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number, not $WARMUP"
[[ $TREE_MODULES =~ ^[1-9][0-9]*$ ]] || die "TREE_MODULES must be a positive integer, not $TREE_MODULES"
case $PATH_MODE in
engine | buildkitd) paths=("$PATH_MODE") ;;
both) paths=(engine buildkitd) ;;
*) die "PATH_MODE must be engine, buildkitd or both, not $PATH_MODE" ;;
esac
case $MODULE_SET in
hello | tree) sets=("$MODULE_SET") ;;
both) sets=(hello tree) ;;
*) die "MODULE_SET must be hello, tree or both, not $MODULE_SET" ;;
esac
combos=()
for p in "${paths[@]}"; do
    for s in "${sets[@]}"; do
        if [[ $p == engine && $s == tree && ${ENGINE_TREE:-} != 1 ]]; then
            log "skipping engine × tree (KMM's sign template exceeds overlay2's 125 layers there; ENGINE_TREE=1 runs it)"
            continue
        fi
        combos+=("$p:$s")
    done
done
((${#combos[@]})) || die "nothing to run (PATH_MODE=$PATH_MODE MODULE_SET=$MODULE_SET; engine × tree needs ENGINE_TREE=1)"
uses() { [[ " ${combos[*]} " == *" $1"* ]]; } # uses engine: / uses buildkitd:

DOCKER=/usr/bin/docker
cache=${KFORGE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kforge-tests}
ns=bench

since3() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
sum() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.3f", s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
load1() { cut -d' ' -f1 /proc/loadavg; }
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }

for c in docker-registry skopeo umoci jq curl openssl modinfo python3; do
    command -v "$c" >/dev/null || die "$c missing (Debian: docker-registry skopeo umoci jq curl openssl kmod python3)"
done
if uses engine:; then
    for c in /usr/sbin/dockerd $DOCKER; do [[ -x $c ]] || die "$c missing (Debian: docker.io)"; done
fi
if uses buildkitd:; then
    find_buildkit
    [[ -x /usr/sbin/runc ]] || die "/usr/sbin/runc missing (Debian: runc)"
    [[ $(id -u) == 0 ]] || die "the buildkitd path needs root (buildkitd's OCI worker runs runc)"
fi
resolve_abi
log "kernel ABI $abi; runs: ${combos[*]}; REPEAT=$REPEAT WARMUP=$WARMUP"
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

reg_pid= dockerd_pid= buildkitd_pid=
cleanup() {
    set +e
    stop_buildkitd
    stop_dockerd_and_registry
    [[ -n ${KEEP:-} ]] || rm -rf "$W/pull"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$W/docker-data" "$W/docker-exec" "$W/buildkitd" "$W/registry" "$W/pull" "$W/logs" "$W/keys" "$W/sign" "$W/tree" "$W/dockerfile-"*
mkdir -p "$W/logs" "$W/docker-config" "$W/keys" "$W/sign/context"
export DOCKER_CONFIG=$W/docker-config
unset BUILDKIT_HOST DOCKER_HOST

# --- Key and certificate (PEM for sign-file, DER for kforge) ---
openssl req -new -nodes -x509 -newkey rsa:2048 -subj /CN=bench -days 30 \
    -keyout "$W/keys/key.pem" -out "$W/keys/cert.pem" 2>/dev/null
openssl x509 -in "$W/keys/cert.pem" -outform DER -out "$W/keys/cert.der"

# --- The module tree (only when a tree run is asked for) ---
if [[ " ${combos[*]} " == *":tree "* || " ${combos[*]} " == *":tree" ]]; then
    mapfile -t tree_modules < <("$repo/tests/bench/gen-module-tree.sh" "$W/tree" "$TREE_MODULES")
    ((${#tree_modules[@]} == TREE_MODULES)) || die "gen-module-tree.sh wrote ${#tree_modules[@]} modules, not $TREE_MODULES"
    log "module tree: $TREE_MODULES modules in $W/tree"
fi

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

reglines() { wc -l <"$W/logs/registry.log"; }
blob_size() { stat -c %s "$W/registry/docker/registry/v2/blobs/sha256/${1:0:2}/$1/data" 2>/dev/null || echo 0; }
# pushes REPO FROM: what was pushed to bench/REPO in the access log after line FROM, as
# "manifests tagged uploads mounts bytes": manifest PUTs, those to a tag (not a digest), completed
# blob uploads (PUT …/blobs/uploads/…?digest=), cross-repository mounts (POST …?mount= answered 201),
# and the bytes uploaded (every uploaded blob's and manifest's size, from the registry's storage).
pushes() {
    local repo=$1 from=$2 m=0 t=0 u=0 n=0 bytes=0 kind ref hex
    while read -r kind ref; do
        case $kind in
        B) u=$((u + 1)) bytes=$((bytes + $(blob_size "$ref"))) ;;
        N) n=$((n + 1)) ;;
        M)
            m=$((m + 1))
            if [[ $ref == sha256:* ]]; then
                hex=${ref#sha256:}
            else
                t=$((t + 1))
                hex=$(cut -d: -f2 "$W/registry/docker/registry/v2/repositories/bench/$repo/_manifests/tags/$ref/current/link" 2>/dev/null || true)
            fi
            [[ -n $hex ]] && bytes=$((bytes + $(blob_size "$hex")))
            ;;
        esac
    done < <(tail -n +"$((from + 1))" "$W/logs/registry.log" | awk -v r="/v2/bench/$repo/" '
        !/" 20[0-9] / { next }
        index($0, "\"PUT " r "manifests/") {
            s = substr($0, index($0, "\"PUT " r "manifests/") + length("\"PUT " r "manifests/")); sub(/ .*/, "", s); print "M", s; next }
        index($0, "\"PUT " r "blobs/uploads/") && match($0, /digest=sha256(%3A|:)[0-9a-f]+/) {
            s = substr($0, RSTART, RLENGTH); sub(/.*(%3A|:)/, "", s); print "B", s; next }
        index($0, "\"POST " r "blobs/uploads/?") && index($0, "mount=") && / 201 / { print "N", "-" }')
    printf '%d %d %d %d %d' "$m" "$t" "$u" "$n" "$bytes"
}

# --- BuildKits (started on first use) ---
engine_version= engine_up= bk_up=
cache_records() { dk system df --format '{{.Type}} {{.TotalCount}}' | awk '$1 == "Build" { print $3 }'; }
reset_engine() {
    dk ps -aq | xargs -r "$DOCKER" -H "unix://$W/docker.sock" rm -f >/dev/null
    dk image ls -aq | sort -u | xargs -r "$DOCKER" -H "unix://$W/docker.sock" image rm -f >/dev/null
    dk builder prune -af >/dev/null
    dk system prune -af >/dev/null
    [[ $(dk image ls -aq | wc -l) == 0 && $(cache_records) == 0 ]] || die "engine not empty after pruning"
    sync
}
reset_buildkitd() {
    bk prune --all >/dev/null || die "buildctl prune --all failed"
    [[ $(bk du | awk '/^Total:/ { print $2 }') == 0B ]] || die "buildkitd's cache not empty after pruning: $(bk du | tail -3)"
    sync
}
reset() { if [[ $path == engine ]]; then reset_engine; else reset_buildkitd; fi; }
bring_up() {
    if [[ $path == engine && -z $engine_up ]]; then
        start_dockerd
        engine_version=$(dk version -f '{{.Server.Version}}')
        engine_up=1
    elif [[ $path == buildkitd && -z $bk_up ]]; then
        start_buildkitd
        bk_up=1
    fi
}

# --- A module set: sets set_dockerfile, set_context, module, mods (module names) ---
select_set() {
    case $1 in
    hello) set_dockerfile=$repo/dockerfiles/kmm-module.Dockerfile set_context=$repo/tests/modules/kforge_hello module=kforge_hello mods=(kforge_hello) ;;
    tree) set_dockerfile=$repo/tests/bench/kmm-module-tree.Dockerfile set_context=$W/tree module=kforge_tree mods=("${tree_modules[@]}") ;;
    esac
    # buildctl gets a directory holding exactly that Dockerfile (as kforge sends only the file).
    mkdir -p "$W/dockerfile-$1"
    cp "$set_dockerfile" "$W/dockerfile-$1/Dockerfile"
}

# kforge's phases from the timestamps of its log lines (RUST_LOG=info,kforge_builder=debug) (best
# effort, "?" if absent): build (solving → reading back, or → signing on buildkitd, where it includes
# BuildKit's push by digest), read-back (engine only, → signing), sign + push (→ pushed), other (the
# rest of the process's time: start-up, DTK_AUTO, exit).
kf_phases() {
    awk -v total="$2" '
        function t(s) { split(substr(s, 12, 15), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        / INFO solving /                                && !s { s = t($1) }
        / DEBUG reading the unsigned image /            && !r { r = t($1) }
        / DEBUG signing the modules /                   && !g { g = t($1) }
        / DEBUG pushed /                                && !p { p = t($1) }
        END {
            if (!(s && g && p)) { print "? ? ? ?"; exit }
            if (r) printf "%.3f %.3f %.3f %.3f", r - s, g - r, p - g, total - (p - s)
            else printf "%.3f - %.3f %.3f", g - s, p - g, total - (p - s) }' "$1"
}

# --- A. kforge build-sign TAG NAME [--force]: sets t_total, kf_push, kf_ph ---
kforge_run() {
    local tag=$1 name=$2 t0 l0 out left url
    shift 2
    if [[ $path == engine ]]; then url=docker://$W/docker.sock; else url=unix://$W/buildkitd/buildkitd.sock; fi
    l0=$(reglines)
    t0=$EPOCHREALTIME
    if ! RUST_LOG=info,kforge_builder=debug "$KFORGE" build-sign --buildkit "$url" -f "$set_dockerfile" --context "$set_context" \
        --kernel "$abi" --module-name "$module" --namespace "$ns" --build-arg "RUNTIME_IMAGE=$runtime" \
        --dtk-template "$dtk_template" --key "$W/keys/key.pem" --cert "$W/keys/cert.der" \
        --to "$reg/bench/$kf_repo:\${KERNEL_FULL_VERSION}-$tag" --progress plain "$@" \
        </dev/null >"$W/logs/$name.out" 2>"$W/logs/$name.err"; then
        printf -- '--- kforge stdout ---\n' >&2; cat "$W/logs/$name.out" >&2
        printf -- '--- kforge stderr (last 60 lines; all in %s) ---\n' "$W/logs/$name.err" >&2; tail -n 60 "$W/logs/$name.err" >&2
        [[ $path == buildkitd ]] && { printf -- '--- buildkitd log (last 20 lines) ---\n' >&2; tail -n 20 "$W/logs/buildkitd.log" >&2; }
        die "kforge build-sign --to $kf_repo:$abi-$tag $* ($path, $modset) failed"
    fi
    t_total=$(since3 "$t0")
    out=$(cat "$W/logs/$name.out")
    [[ $out =~ ^$reg/bench/$kf_repo@sha256:[0-9a-f]{64}$ ]] || die "kforge build-sign printed '$out'"
    grep -qF "DTK_AUTO = $dtk " "$W/logs/$name.err" ||
        die "kforge resolved another DTK_AUTO: $(grep DTK_AUTO "$W/logs/$name.err" || echo none)"
    grep -qE "DEBUG pushed ${#mods[@]} signed file" "$W/logs/$name.err" ||
        die "kforge did not sign ${#mods[@]} module(s): $(grep -E 'DEBUG pushed' "$W/logs/$name.err" || echo 'no "pushed" line')"
    kf_push=$(pushes "$kf_repo" "$l0")
    kf_ph=$(kf_phases "$W/logs/$name.err" "$t_total")
    if [[ $path == engine ]]; then
        # The private name kforge builds to in the engine should be gone once it has read the image.
        left=$(dk image ls --format '{{.Repository}}:{{.Tag}}' | grep -c '^kforge-unsigned/' || true)
        ((left == 0)) || log "ODD: $left kforge-unsigned/* image(s) left in the engine after $name"
    fi
}

# --- B. KMM 1.x: TAG NAME; sets t_b1 t_p1 t_b2 t_p2 t_total, kmm_push; returns 1 (kmm_err set) if a step fails ---
step() { # step LOG CMD…: runs it, logs to LOG; on failure sets kmm_err and returns 1; sets t_step
    local log=$1 t0
    shift
    t0=$EPOCHREALTIME
    if ! "$@" </dev/null >"$log" 2>&1; then
        # The first error, without BuildKit's vertex number and snapshot id, and the Dockerfile step it hit.
        kmm_err="$(basename "$log"): $( (grep -m1 -E 'ERROR|error:' "$log" || tail -n1 "$log") | sed -E 's/^#[0-9]+ //; s/failed to prepare [a-z0-9]+: //')"
        kmm_err+=$(grep -m1 -oE '^ > \[[^]]+\]' "$log" | sed 's/^ > / at step /' || true)
        tail -n 30 "$log" >&2
        log "KMM step failed: $* (log: $log)"
        return 1
    fi
    t_step=$(since3 "$t0")
}
# Time of the "exporting to image" vertex (export + push) in buildctl's plain progress, s.
bk_export_time() {
    awk '/^#[0-9]+ exporting to image$/ { id = $1 } id && $1 == id && $2 == "DONE" { sub(/s$/, "", $3); v = $3 } END { print (v == "" ? "?" : v) }' "$1"
}
kmm_sign_dockerfile() { # kmm_sign_dockerfile UNSIGNED: KMM's internal/sign/pod template
    local f
    printf 'FROM %s AS source\n\nFROM %s AS signimage\nRUN mkdir -p /tmp/signroot\n' "$1" "$dtk"
    for f in "${files_to_sign[@]}"; do
        printf 'COPY --from=source %s /tmp/signroot%s\n' "$f" "$f"
        printf 'RUN --mount=type=secret,id=key,target=/run/secrets/key/key.pem --mount=type=secret,id=cert,target=/run/secrets/cert/cert.pem /usr/lib/linux-kbuild-%s/scripts/sign-file sha256 /run/secrets/key/key.pem /run/secrets/cert/cert.pem /tmp/signroot%s\n' "$kver" "$f"
    done
    printf '\nFROM source\n'
    for f in "${files_to_sign[@]}"; do printf 'COPY --from=signimage /tmp/signroot%s %s\n' "$f" "$f"; done
}
kmm_run() {
    local tag=$1 name=$2 signed unsigned l0 df a
    signed=$reg/bench/$kmm_repo:$abi-$tag
    unsigned=$signed-${ns}_${module}_kmm_unsigned
    df=$W/sign/$combo_id/Dockerfile.$tag
    mkdir -p "$W/sign/$combo_id"
    kmm_sign_dockerfile "$unsigned" >"$df"
    l0=$(reglines)
    kmm_err=
    if [[ $path == engine ]]; then
        a=()
        for a1 in "${kmm_build_args[@]}"; do a+=(--build-arg "$a1"); done
        step "$W/logs/$name.build1" env DOCKER_BUILDKIT=1 "$DOCKER" -H "unix://$W/docker.sock" build --network none \
            --progress plain -f "$set_dockerfile" "${a[@]}" -t "$unsigned" "$set_context" || return 1
        t_b1=$t_step
        step "$W/logs/$name.push1" dk push "$unsigned" || return 1
        t_p1=$t_step
        step "$W/logs/$name.build2" env DOCKER_BUILDKIT=1 "$DOCKER" -H "unix://$W/docker.sock" build --network none \
            --progress plain -f "$df" --secret "id=key,src=$W/keys/key.pem" --secret "id=cert,src=$W/keys/cert.pem" \
            -t "$signed" "$W/sign/context" || return 1
        t_b2=$t_step
        step "$W/logs/$name.push2" dk push "$signed" || return 1
        t_p2=$t_step
        t_total=$(sum "$t_b1" "$t_p1" "$t_b2" "$t_p2")
        kmm_steps="$t_b1 + $t_p1 + $t_b2 + $t_p2"
    else
        a=()
        for a1 in "${kmm_build_args[@]}"; do a+=(--opt "build-arg:$a1"); done
        step "$W/logs/$name.build1" bk build --progress plain --frontend dockerfile.v0 \
            --local "context=$set_context" --local "dockerfile=$W/dockerfile-$modset" --opt force-network-mode=none "${a[@]}" \
            --output "type=image,name=$unsigned,push=true" || return 1
        t_b1=$t_step t_p1=$(bk_export_time "$W/logs/$name.build1")
        step "$W/logs/$name.build2" bk build --progress plain --frontend dockerfile.v0 \
            --local "context=$W/sign/context" --local "dockerfile=$W/sign/$combo_id" --opt "filename=Dockerfile.$tag" \
            --opt force-network-mode=none --secret "id=key,src=$W/keys/key.pem" --secret "id=cert,src=$W/keys/cert.pem" \
            --output "type=image,name=$signed,push=true" || return 1
        t_b2=$t_step t_p2=$(bk_export_time "$W/logs/$name.build2")
        t_total=$(sum "$t_b1" "$t_b2")
        kmm_steps="$t_b1 [$t_p1] + $t_b2 [$t_p2]"
    fi
    kmm_push=$(pushes "$kmm_repo" "$l0")
}

# --- Runs of one path × module set ---
run_kforge() {
    local i=$1
    reset
    log "$combo_id run $i: kforge cold (load $(load1))"
    kforge_run "cold-$i" "$combo_id-kforge-cold-$i"
    kc[i]=$t_total kcp[i]=$kf_push kcf[i]=$kf_ph
    log "$combo_id run $i: kforge cold ${kc[i]} s (phases: $kf_ph); pushes (manifests tagged uploads mounts bytes): $kf_push"
    kforge_run "warm-$i" "$combo_id-kforge-warm-$i" --force
    kw[i]=$t_total kwp[i]=$kf_push kwf[i]=$kf_ph
    log "$combo_id run $i: kforge warm ${kw[i]} s (phases: $kf_ph); pushes: $kf_push"
}
run_kmm() {
    local i=$1
    if [[ -n $kmm_failed ]]; then log "$combo_id run $i: KMM skipped (failed before: $kmm_failed)"; return; fi
    reset
    log "$combo_id run $i: KMM cold (load $(load1))"
    if ! kmm_run "cold-$i" "$combo_id-kmm-cold-$i"; then
        [[ -n $kmm_may_fail ]] || die "KMM sequence ($combo_id, cold-$i) failed: $kmm_err"
        kmm_failed=$kmm_err
        return
    fi
    mc[i]=$t_total mcp[i]=$kmm_push mcs[i]=$kmm_steps
    log "$combo_id run $i: KMM cold ${mc[i]} s (${mcs[i]}); pushes: $kmm_push"
    kmm_run "warm-$i" "$combo_id-kmm-warm-$i" || die "KMM sequence ($combo_id, warm-$i) failed: $kmm_err"
    mw[i]=$t_total mwp[i]=$kmm_push mws[i]=$kmm_steps
    log "$combo_id run $i: KMM warm ${mw[i]} s (${mws[i]}); pushes: $kmm_push"
}

# check WHO REF SIGNED(yes|no): pulls REF; every module of the set is there with vermagic = the ABI,
# and verifies (yes) or, for the first one, does not (no). Prints a summary line.
check() {
    local who=$1 ref=$2 want=$3 dir m ko vermagic raw shared n
    dir=$W/pull/$combo_id-$who
    rm -rf "$dir" "$W/pull/oci"
    mkdir -p "$W/pull"
    skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$W/pull/oci:$who"
    umoci unpack --image "$W/pull/oci:$who" "$dir" >/dev/null
    n=$(find "$dir/rootfs/opt/lib/modules/$abi" -name '*.ko' | wc -l)
    ((n == ${#mods[@]})) || die "$ref: $n modules under /opt/lib/modules/$abi, not ${#mods[@]}"
    for m in "${mods[@]}"; do
        ko=$dir/rootfs/opt/lib/modules/$abi/$m.ko
        [[ -f $ko ]] || die "$ref: no $ko"
        vermagic=$(modinfo -F vermagic "$ko")
        [[ $vermagic == "$abi "* ]] || die "$ref: $m vermagic '$vermagic' is not for $abi"
    done
    if [[ $want == yes ]]; then
        "$KFORGE" verify --cert "$W/keys/cert.der" "$dir/rootfs/opt/lib/modules/$abi" >"$W/logs/verify-$combo_id-$who.log" 2>&1 ||
            die "$ref: not every module verifies: $(tail -n 5 "$W/logs/verify-$combo_id-$who.log")"
    elif "$KFORGE" verify --cert "$W/keys/cert.der" "$dir/rootfs/opt/lib/modules/$abi/${mods[0]}.ko" >"$W/logs/verify-$combo_id-$who.log" 2>&1; then
        die "$ref: the unsigned module verifies: $(cat "$W/logs/verify-$combo_id-$who.log")"
    fi
    raw=$(skopeo inspect --raw --tls-verify=false "docker://$ref")
    shared=no
    jq -e --arg d "$runtime_base" '.layers[0].digest == $d' <<<"$raw" >/dev/null && shared=yes
    printf '%s: %s module(s) %s, %s layers (%s), %s MB, base layer = RUNTIME_IMAGE'"'"'s: %s, vermagic %s, signer %s\n' "$ref" \
        "$n" "$([[ $want == yes ]] && echo "all verify" || echo "unsigned")" "$(jq '.layers | length' <<<"$raw")" \
        "$(jq -r '[.layers[].mediaType | sub("^application/vnd\\."; "")] | unique | join(", ")' <<<"$raw")" \
        "$(jq '[.layers[].size] | add / 1e6 * 10 | round / 10' <<<"$raw")" "$shared" \
        "${vermagic%% *}" "$(modinfo -F signer "$dir/rootfs/opt/lib/modules/$abi/${mods[0]}.ko" | head -n1)"
}

M() { median "$@"; }
# col N RECORDS…: the distinct values of field N, joined by "/".
col() { local n=$1; shift; printf '%s\n' "$@" | awk -v n="$n" '{ print $n }' | sort -nu | paste -sd/; }
# colmb N RECORDS…: the median of field N, in MB.
colmb() { local n=$1; shift; mb "$(median $(printf '%s\n' "$@" | awk -v n="$n" '{ print $n }'))"; }
# phase medians of "a b c d" records (fields may be "-" or "?")
phase_medians() {
    local out=() k v
    for k in 1 2 3 4; do
        v=$(printf '%s\n' "$@" | awk -v k="$k" '{ print $k }')
        if grep -qvE '^[0-9.]+$' <<<"$v"; then out+=("$(head -n1 <<<"$v")"); else out+=("$(median $v)"); fi
    done
    echo "${out[*]}"
}
fmt_phases() { # "b r s o" → "b + r + s + o" (engine) or "b + s + o" (buildkitd: no read-back)
    local b r s o
    read -r b r s o <<<"$1"
    if [[ $r == - ]]; then echo "$b + $s + $o"; else echo "$b + $r + $s + $o"; fi
}
kmm_step_medians() { # medians of each number in "x + y + z + w" or "x [y] + z [w]" records
    local n k out=() first=$1
    n=$(grep -oE '[0-9.?]+' <<<"$first" | wc -l)
    for ((k = 1; k <= n; k++)); do out+=("$(M $(printf '%s\n' "$@" | while read -r l; do grep -oE '[0-9.?]+' <<<"$l" | sed -n "${k}p"; done))"); done
    if [[ $first == *"["* ]]; then echo "${out[0]} [${out[1]}] + ${out[2]} [${out[3]}]"; else echo "${out[*]}" | sed 's/ / + /g'; fi
}

summary_rows=() detail=() checks_all=() verdicts=()
for combo in "${combos[@]}"; do
    path=${combo%%:*} modset=${combo#*:}
    combo_id=$path-$modset
    kf_repo=kforge-$combo_id kmm_repo=kmm-$combo_id
    select_set "$modset"
    files_to_sign=()
    for m in "${mods[@]}"; do files_to_sign+=("/opt/lib/modules/$abi/$m.ko"); done
    kmm_build_args=("DTK_AUTO=$dtk" "RUNTIME_IMAGE=$runtime" "KERNEL_VERSION=$abi" "KERNEL_FULL_VERSION=$abi"
        "MOD_NAME=$module" "MOD_NAMESPACE=$ns")
    kmm_may_fail= kmm_failed=
    [[ $path == engine && $modset == tree ]] && kmm_may_fail=1
    bring_up
    combo_start=$EPOCHREALTIME
    log "=== $path × $modset (${#mods[@]} module(s)): bench/$kf_repo, bench/$kmm_repo ==="
    unset kc kw kcp kwp kcf kwf mc mw mcp mwp mcs mws
    declare -a kc kw kcp kwp kcf kwf mc mw mcp mwp mcs mws
    for ((i = 1; i <= WARMUP; i++)); do
        log "$combo_id warm-up $i: kforge, then KMM (untimed, cold)"
        reset
        kforge_run "warmup-$i" "$combo_id-kforge-warmup-$i"
        if [[ -z $kmm_failed ]]; then
            reset
            if ! kmm_run "warmup-$i" "$combo_id-kmm-warmup-$i"; then
                [[ -n $kmm_may_fail ]] || die "KMM sequence ($combo_id, warmup-$i) failed: $kmm_err"
                kmm_failed=$kmm_err
            fi
        fi
    done
    rows=()
    for ((i = 1; i <= REPEAT; i++)); do
        if ((i % 2)); then order="kforge, KMM"; run_kforge "$i"; run_kmm "$i"
        else order="KMM, kforge"; run_kmm "$i"; run_kforge "$i"; fi
        if [[ -n $kmm_failed ]]; then
            rows+=("| $i | $order | ${kc[i]} ($(fmt_phases "${kcf[i]}")) | fails | | ${kw[i]} ($(fmt_phases "${kwf[i]}")) | fails | |")
        else
            rows+=("| $i | $order | ${kc[i]} ($(fmt_phases "${kcf[i]}")) | ${mc[i]} (${mcs[i]}) | $(ratio "${mc[i]}" "${kc[i]}") | ${kw[i]} ($(fmt_phases "${kwf[i]}")) | ${mw[i]} (${mws[i]}) | $(ratio "${mw[i]}" "${kw[i]}") |")
        fi
    done

    # Tags in each repository: kforge's only the signed ones (the unsigned build, pushed by digest on
    # buildkitd, has none); KMM's also the _kmm_unsigned ones.
    kf_tags=$(curl -sf "http://$reg/v2/bench/$kf_repo/tags/list" | jq -r '.tags | sort | join(" ")')
    want_kf=() want_kmm=()
    for ((i = 1; i <= WARMUP; i++)); do want_kf+=("$abi-warmup-$i"); want_kmm+=("$abi-warmup-$i" "$abi-warmup-$i-${ns}_${module}_kmm_unsigned"); done
    for ((i = 1; i <= REPEAT; i++)); do
        for t in cold warm; do want_kf+=("$abi-$t-$i"); want_kmm+=("$abi-$t-$i" "$abi-$t-$i-${ns}_${module}_kmm_unsigned"); done
    done
    [[ $kf_tags == "$(printf '%s\n' "${want_kf[@]}" | sort | paste -sd' ')" ]] || die "bench/$kf_repo tags: $kf_tags"
    if [[ -z $kmm_failed ]]; then
        kmm_tags=$(curl -sf "http://$reg/v2/bench/$kmm_repo/tags/list" | jq -r '.tags | sort | join(" ")')
        [[ $kmm_tags == "$(printf '%s\n' "${want_kmm[@]}" | sort | paste -sd' ')" ]] || die "bench/$kmm_repo tags: $kmm_tags"
    fi

    runtime_base=$(skopeo inspect --raw --tls-verify=false "docker://$runtime" | jq -r '.layers[0].digest')
    checks=$(check kforge "$reg/bench/$kf_repo:$abi-cold-1" yes)
    same=
    if [[ -z $kmm_failed ]]; then
        checks+=$'\n'$(check kmm "$reg/bench/$kmm_repo:$abi-cold-1" yes)
        checks+=$'\n'$(check kmm-unsigned "$reg/bench/$kmm_repo:$abi-cold-1-${ns}_${module}_kmm_unsigned" no)
        same=0
        for m in "${mods[@]}"; do
            cmp -s "$W/pull/$combo_id-kforge/rootfs/opt/lib/modules/$abi/$m.ko" "$W/pull/$combo_id-kmm/rootfs/opt/lib/modules/$abi/$m.ko" && same=$((same + 1))
        done
        checks+=$'\n'"signed modules byte-identical between kforge's and KMM's cold-1 images: $same of ${#mods[@]}"
    fi
    [[ -n ${KEEP:-} ]] || rm -rf "$W/pull"
    checks_all+=("$path × $modset:" "$(sed 's/^/  /' <<<"$checks")")

    # Figures.
    mk=$(M "${kc[@]}") wk=$(M "${kw[@]}")
    kfc=$(fmt_phases "$(phase_medians "${kcf[@]}")") kfw=$(fmt_phases "$(phase_medians "${kwf[@]}")")
    if [[ $path == engine ]]; then phase_note="build + read-back + sign/push + other"; kmm_note="build + push + build signed + push"
    else phase_note="build incl. push by digest + sign/push + other"; kmm_note="buildctl build [export+push] + buildctl build signed [export+push]"; fi
    detail+=("" "#### $path × $modset (${#mods[@]} module(s)); kforge: total ($phase_note); KMM: total ($kmm_note); s" ""
        "| run | order | kforge cold | KMM cold | ratio | kforge warm | KMM warm | ratio |"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |" "${rows[@]}")
    for mode in cold warm; do
        if [[ $mode == cold ]]; then kt=("${kc[@]}") kp=("${kcp[@]}") km=$mk kf=$kfc; else kt=("${kw[@]}") kp=("${kwp[@]}") km=$wk kf=$kfw; fi
        if [[ -n $kmm_failed ]]; then
            summary_rows+=("| $path | $modset | $mode | $km ($kf) | fails: $kmm_failed | | | $(colmb 5 "${kp[@]}") / – | $(col 1 "${kp[@]}") ($(col 2 "${kp[@]}") tagged) / – | KMM fails |")
            continue
        fi
        if [[ $mode == cold ]]; then mt=("${mc[@]}") mp=("${mcp[@]}") ms=("${mcs[@]}"); else mt=("${mw[@]}") mp=("${mwp[@]}") ms=("${mws[@]}"); fi
        mm=$(M "${mt[@]}")
        r=$(ratio "$mm" "$km")
        per_run=() faster=0
        for ((i = 1; i <= REPEAT; i++)); do
            per_run+=("$(ratio "${mt[i - 1]}" "${kt[i - 1]}")")
            awk -v a="${mt[i - 1]}" -v b="${kt[i - 1]}" 'BEGIN { exit !(a > b) }' && faster=$((faster + 1))
        done
        v="faster in $faster/$REPEAT runs: $( ((faster == REPEAT)) && echo PASS || echo MISS)"
        [[ $mode == warm ]] && v+=$(awk -v s="$r" 'BEGIN { print (s >= 3 ? "; ≥ 3×: PASS" : "; ≥ 3×: MISS") }')
        summary_rows+=("| $path | $modset | $mode | $km ($kf) | $mm ($(kmm_step_medians "${ms[@]}")) | **${r}×** | $(printf '%s\n' "${per_run[@]}" | sort -g | paste -sd' ') | $(colmb 5 "${kp[@]}") / $(colmb 5 "${mp[@]}") | $(col 1 "${kp[@]}") ($(col 2 "${kp[@]}") tagged) / $(col 1 "${mp[@]}") ($(col 2 "${mp[@]}") tagged) | $v |")
        verdicts+=("$path × $modset $mode: KMM $mm s / kforge $km s = ${r}×; $v; blobs uploaded+mounted per run: kforge $(col 3 "${kp[@]}")+$(col 4 "${kp[@]}"), KMM $(col 3 "${mp[@]}")+$(col 4 "${mp[@]}")")
    done
    log "=== $path × $modset done in $(since "$combo_start") s ==="
done

# --- Report ---
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$repo" diff --quiet HEAD 2>/dev/null || rev="$rev + uncommitted changes"

echo
echo "kforge: $("$KFORGE" --version) ($KFORGE, commit $rev)"
uses engine: && echo "Engine: Docker $engine_version (dockerd + BuildKit embedded), CLI $("$DOCKER" --version | sed 's/^Docker version //'), DOCKER_BUILDKIT=1, --network none"
uses buildkitd: && echo "buildkitd: $("$BUILDKITD" --version | awk '{ print $3 }') (pinned, OCI worker, $(/usr/sbin/runc --version | head -n1)), buildctl --opt force-network-mode=none"
cat <<EOF
Registry: Distribution $(docker-registry --version 2>/dev/null | awk '{ print $3 }') on $reg (access log: manifest PUTs, blob uploads, bytes = sizes of uploaded blobs and manifests)
Modules: hello = dockerfiles/kmm-module.Dockerfile + tests/modules/kforge_hello; tree = tests/bench/kmm-module-tree.Dockerfile + $TREE_MODULES modules from tests/bench/gen-module-tree.sh
  kernel $abi, namespace $ns; DTK_AUTO=$dtk (kforge: --dtk-template; KMM: passed explicitly), RUNTIME_IMAGE=$runtime
  signing: RSA-2048, sha256; KMM: DTK's /usr/lib/linux-kbuild-$kver/scripts/sign-file in KMM's sign template (one COPY + RUN per file)
$(printf '%s\n' "${checks_all[@]}" | sed 's/^/checked: /')
Machine: $cpu, nproc = $(nproc); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
Cold = after $WARMUP untimed cold run(s) of each tool, BuildKit emptied before each tool. Warm = again right after, new tag (kforge --force). $REPEAT repetitions, alternating order.
$(printf '%s\n' "${detail[@]}")

#### Summary (medians; s; bytes pushed = MB uploaded per run; pushes = manifest PUTs per run (of which to a tag))

| path | modules | run | kforge (phases) | KMM sequence (steps) | KMM / kforge | per run | MB pushed kforge / KMM | pushes kforge / KMM | target |
| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- |
$(printf '%s\n' "${summary_rows[@]}")

$(printf '%s\n' "${verdicts[@]}")
EOF
echo
log "whole run: $(since "$run_start") s (logs in $W/logs)"
