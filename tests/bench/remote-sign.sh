#!/usr/bin/env bash
# Benchmark: the 4,023-module corpus signed through `kforge serve` over loopback mutual TLS
# (`kforge sign --remote`) versus local `kforge sign`, in one run, outputs checked byte-identical.
#
# Usage: tests/bench/remote-sign.sh      (BENCH_DIR, KFORGE as in sign-corpus.sh; JOBS = remote workers)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work=$(abs_dir "${BENCH_DIR:-target/bench/sign-corpus}")
KFORGE=${KFORGE:-target/release/kforge}
[[ -x $KFORGE ]] || cargo build --release --locked -p kforge
KFORGE=$(realpath "$KFORGE")
JOBS=${JOBS:-16}

# The stripped corpus of Debian's current linux-image-<ABI>-amd64-unsigned (shared with sign-corpus.sh).
pristine=$(BENCH_DIR="$work" KFORGE="$KFORGE" PREPARE_ONLY=1 tests/bench/sign-corpus.sh)
modules=$(find "$pristine" -name '*.ko' | wc -l)
mb=$(find "$pristine" -name '*.ko' -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s / 1e6 }')

run=$(mktemp -d "$work/remote.XXXXXX")
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$run"
}
trap cleanup EXIT

# A CA, a server certificate for 127.0.0.1, a client certificate, and the signing key.
pki() {
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 2 -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -keyout "$run/ca.key" -out "$run/ca.pem" 2>/dev/null
    local name ext
    for name in server client; do
        if [[ $name == server ]]; then
            ext="basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1"
        else
            ext="basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth"
        fi
        openssl req -new -nodes -newkey rsa:2048 -subj "/CN=bench-$name" -keyout "$run/$name.key" -out "$run/$name.csr" 2>/dev/null
        printf "$ext\n" >"$run/$name.ext"
        openssl x509 -req -sha256 -days 2 -in "$run/$name.csr" -CA "$run/ca.pem" -CAkey "$run/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -extfile "$run/$name.ext" -out "$run/$name.pem" 2>/dev/null
    done
    openssl req -new -nodes -x509 -newkey rsa:2048 -sha256 -days 2 -subj /CN=bench-signing \
        -keyout "$run/sign.key" -out "$run/sign.pem" 2>/dev/null
}
pki
cat >"$run/kforge.toml" <<TOML
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
audit_log = "$run/audit.jsonl"
[tls]
cert = "$run/server.pem"
key = "$run/server.key"
client_ca = "$run/ca.pem"
[[keys]]
name = "bench"
key = "$run/sign.key"
cert = "$run/sign.pem"
allow = ["cn:bench-client"]
TOML

"$KFORGE" serve --config "$run/kforge.toml" >"$run/serve.out" 2>"$run/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$run/serve.out" 2>/dev/null && break; sleep 0.05; done
addr=$(sed -n 's/^kforge serves the signer and the builder on //p' "$run/serve.out")
[[ -n $addr ]] || { cat "$run/serve.err" >&2; die "kforge serve did not start"; }
log "service on https://$addr"

cp -a "$pristine" "$run/local"
cp -a "$pristine" "$run/remote"
find "$run/local" "$run/remote" -type f -exec cat {} + >/dev/null
sync

log "local kforge sign"
t0=$EPOCHREALTIME
"$KFORGE" sign --key "$run/sign.key" --cert "$run/sign.pem" "$run/local" >"$run/local.out"
t_local=$(since "$t0")
log "$(cat "$run/local.out")"
sync

log "kforge sign --remote (mutual TLS, $JOBS workers)"
t0=$EPOCHREALTIME
"$KFORGE" sign -j "$JOBS" --remote "https://$addr" --ca "$run/ca.pem" --client-cert "$run/client.pem" \
    --client-key "$run/client.key" --key-name bench "$run/remote" >"$run/remote.out"
t_remote=$(since "$t0")
log "$(cat "$run/remote.out")"
server_rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$server_pid/status")

diffs=$(diff -r -q "$run/local" "$run/remote" || true)
[[ -z $diffs ]] || { head -n 20 <<<"$diffs" >&2; die "remote and local outputs differ"; }
audited=$(grep -c '"result":"signed"' "$run/audit.jsonl")
((audited == modules)) || die "audit log has $audited signatures for $modules modules"

p50=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' "$run/remote.out")
p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' "$run/remote.out")
pct=$(awk -v l="$t_local" -v r="$t_remote" 'BEGIN { printf "%.0f", 100 * l / r }')
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
cat <<EOF

Corpus: $modules modules, $mb MB (stripped linux-image-*-unsigned); machine: $cpu, nproc = $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg).
Remote: kforge serve with mutual TLS on loopback, client with $JOBS workers, one long-lived stream per worker, audit fsync'd per group.

| mode | wall s | throughput MB/s | per-module p50 | per-module p99 | server peak RSS | byte-identical | audit lines |
| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |
| local \`kforge sign\` | $t_local | $(awk -v m="$mb" -v t="$t_local" 'BEGIN { printf "%.0f", m / t }') | | | | | |
| \`kforge sign --remote\` | $t_remote | $(awk -v m="$mb" -v t="$t_remote" 'BEGIN { printf "%.0f", m / t }') | ${p50} ms | ${p99} ms | ${server_rss} MB | yes | $audited |

Remote throughput: ${pct}% of local.
EOF
