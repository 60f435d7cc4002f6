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
