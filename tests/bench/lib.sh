# Shared by the benchmark scripts: logging, timing, and directories. Source it, don't run it.
# Sets: repo (and cds there); defines log, die, since, abs_dir, resolve_abi.

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
