# Shared by the benchmark scripts: logging, timing, and directories. Source it, don't run it.
# Sets: repo (and cds there); defines log, die, since, abs_dir, resolve_abi, and, for scripts that set W
# and DOCKER, start_registry, start_dockerd, dk and stop_dockerd_and_registry.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# Seconds elapsed since a saved $EPOCHREALTIME.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# Creates a directory if needed and prints its absolute path.
abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

# Sets abi (e.g. 6.1.0-56-amd64: whatever linux-headers-amd64 depends on today, never hard-coded),
# pkg (linux-image-<abi>-unsigned) and kver (6.1, for linux-kbuild-<kver>).
resolve_abi() {
    local deps
    deps=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null || true)
    [[ -n $deps ]] || deps=$(apt-cache depends linux-headers-amd64 2>/dev/null || true)
    if [[ -z $deps ]]; then
        apt-get update -qq
        deps=$(apt-cache depends linux-headers-amd64)
    fi
    abi=$(grep -oE 'linux-headers-[0-9][^ ,()]*-amd64' <<<"$deps" | head -n1 | sed 's/^linux-headers-//')
    [[ -n $abi ]] || die "cannot resolve the kernel ABI from: $deps"
    pkg="linux-image-$abi-unsigned"
    kver=$(cut -d. -f1,2 <<<"$abi")
}

# Starts Debian's docker-registry on a free loopback port, storage under $W/registry, log in
# $W/logs/registry.log; sets reg (127.0.0.1:PORT) and reg_pid. With ACCESS_LOG=1 the access log is
# kept (build-sign.sh counts pushes from it).
start_registry() {
    local port access_disabled=true
    [[ ${ACCESS_LOG:-} == 1 ]] && access_disabled=false
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    reg=127.0.0.1:$port
    cat >"$W/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: $access_disabled
storage:
  filesystem:
    rootdirectory: $W/registry
  delete:
    enabled: true
http:
  addr: $reg
YML
    docker-registry serve "$W/registry.yml" >"$W/logs/registry.log" 2>&1 &
    reg_pid=$!
    for _ in $(seq 100); do
        curl -sf "http://$reg/v2/" >/dev/null && break
        kill -0 "$reg_pid" 2>/dev/null || { cat "$W/logs/registry.log" >&2; die "registry exited"; }
        sleep 0.1
    done
    curl -sf "http://$reg/v2/" >/dev/null || die "registry not answering on $reg"
    log "registry on $reg"
}

# The private engine's CLI ($DOCKER: Debian's docker 20.10, matching the engine).
dk() { "$DOCKER" -H "unix://$W/docker.sock" "$@"; }

# Starts Debian's dockerd with its own socket, data and exec roots and pidfile under $W, no bridge and
# no iptables rules, log in $W/logs/dockerd.log; waits until it answers; sets dockerd_pid.
start_dockerd() {
    log "starting dockerd ($(/usr/sbin/dockerd --version))"
    /usr/sbin/dockerd --host "unix://$W/docker.sock" --data-root "$W/docker-data" --exec-root "$W/docker-exec" \
        --pidfile "$W/docker.pid" --bridge=none --iptables=false --ip6tables=false >"$W/logs/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        dk info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { tail -30 "$W/logs/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    dk info >/dev/null 2>&1 || { tail -30 "$W/logs/dockerd.log" >&2; die "dockerd did not come up"; }
}

# For EXIT traps (turns errexit off): stops the dockerd and registry started above (dockerd by its
# pidfile, even from an earlier run), unmounts what a dying engine left and, unless KEEP is set,
# removes their data.
stop_dockerd_and_registry() {
    set +e
    local pid=${dockerd_pid:-}
    [[ -f $W/docker.pid ]] && pid=$(cat "$W/docker.pid")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    if [[ -n ${reg_pid:-} ]] && kill -0 "$reg_pid" 2>/dev/null; then
        kill "$reg_pid"; wait "$reg_pid" 2>/dev/null
    fi
    if [[ -z ${KEEP:-} ]]; then
        findmnt -rn -o TARGET | grep -E "^$W/docker-(data|exec)" | sort -r | xargs -r -n1 umount -l
        rm -rf "$W/docker-data" "$W/docker-exec" "$W/registry"
    fi
    rm -f "$W/docker.sock" "$W/docker.pid"
}

# --- Standalone buildkitd (for scripts that set W and have started the registry: uses $reg) ---
# The pinned buildkitd and buildctl that tests/peers/build.sh builds into
# <cache>/bin/buildkit-<BUILDKIT_VERSION of tests/peers/versions.env>/; sets BUILDKITD, BUILDCTL and
# buildkit_version, or dies naming tests/peers/build.sh.
find_buildkit() {
    local cache bin
    cache=${KFORGE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kforge-tests}
    buildkit_version=$(. "$repo/tests/peers/versions.env" && echo "${BUILDKIT_VERSION:-}")
    [[ -n $buildkit_version ]] || die "no BUILDKIT_VERSION in tests/peers/versions.env"
    bin=$cache/bin/buildkit-$buildkit_version
    BUILDKITD=$bin/buildkitd BUILDCTL=$bin/buildctl
    [[ -x $BUILDKITD && -x $BUILDCTL ]] ||
        die "no buildkitd/buildctl $buildkit_version in $bin: run tests/peers/build.sh first (it builds the pinned peers into the test cache)"
}

# buildctl against the private buildkitd.
bk() { "$BUILDCTL" --addr "unix://$W/buildkitd/buildkitd.sock" "$@"; }

# Starts the pinned buildkitd as tests/support/buildkitd.rs does: the OCI worker with Debian's runc
# (no containerd), state in $W/buildkitd/state, socket $W/buildkitd/buildkitd.sock, the registry
# $reg marked plain HTTP; log in $W/logs/buildkitd.log; waits until `buildctl debug workers`
# answers; sets buildkitd_pid. Needs root (runc) and find_buildkit.
start_buildkitd() {
    [[ $(id -u) == 0 ]] || die "buildkitd's OCI worker needs root"
    [[ -x /usr/sbin/runc ]] || die "/usr/sbin/runc missing (Debian: runc)"
    [[ -n ${BUILDKITD:-} ]] || find_buildkit
    local root=$W/buildkitd
    ((${#root} + 16 < 108)) || die "$root is too long for a unix socket path: set BENCH_DIR to a shorter directory"
    mkdir -p "$root"
    cat >"$root/buildkitd.toml" <<TOML
[worker.oci]
  enabled = true
  binary = "/usr/sbin/runc"

[worker.containerd]
  enabled = false

[registry."$reg"]
  http = true
TOML
    log "starting buildkitd $buildkit_version ($BUILDKITD)"
    env -u BUILDKIT_HOST -u DOCKER_CONFIG "$BUILDKITD" --config "$root/buildkitd.toml" --root "$root/state" \
        --addr "unix://$root/buildkitd.sock" </dev/null >"$W/logs/buildkitd.log" 2>&1 &
    buildkitd_pid=$!
    echo "$buildkitd_pid" >"$root/buildkitd.pid"
    for _ in $(seq 300); do
        [[ -S $root/buildkitd.sock ]] && bk debug workers >/dev/null 2>&1 && return 0
        kill -0 "$buildkitd_pid" 2>/dev/null || { tail -30 "$W/logs/buildkitd.log" >&2; die "buildkitd exited during start-up"; }
        sleep 0.2
    done
    tail -30 "$W/logs/buildkitd.log" >&2
    die "buildkitd did not answer within 60 s"
}

# For EXIT traps (turns errexit off): stops the buildkitd started above (by its pidfile, even from an
# earlier run: SIGTERM, SIGKILL after 20 s), SIGKILLs processes left naming its state directory (runc
# containers of an interrupted step), lazily unmounts what is mounted under it and, unless KEEP is
# set, removes it.
stop_buildkitd() {
    set +e
    local root=$W/buildkitd pid=${buildkitd_pid:-} left
    [[ -f $root/buildkitd.pid ]] && pid=$(cat "$root/buildkitd.pid")
    # Only a buildkitd of this state directory (a stale pidfile's number may belong to another process now).
    if [[ -n $pid ]] && [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *"--root $root/state"* ]]; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "buildkitd $pid did not stop within 20 s: killing it"; kill -9 "$pid"; }
        wait "$pid" 2>/dev/null
    fi
    if [[ -d $root ]]; then
        for left in /proc/[0-9]*; do
            pid=${left#/proc/}
            [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
            [[ $(tr '\0' ' ' 2>/dev/null <"$left/cmdline") == *"$root/state"* ]] || continue
            log "killing process $pid left behind in $root/state"
            kill -9 "$pid"
        done
        findmnt -rn -o TARGET | grep -F -- "$root/" | sort -r | xargs -r -n1 umount -l
        [[ -n ${KEEP:-} ]] || rm -rf "$root"
    fi
    rm -f "$root/buildkitd.sock" "$root/buildkitd.pid"
}
