# Shared by the benchmark scripts: logging, timing, and directories. Source it, don't run it.
# Sets: repo (and cds there); defines log, die, since, abs_dir.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# Seconds elapsed since a saved $EPOCHREALTIME.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# Creates a directory if needed and prints its absolute path.
abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
