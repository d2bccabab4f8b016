#!/usr/bin/env bash
# Load test on loopback: a root evaluator on its own PostgreSQL, pinned to CPU 0, driven by
# pbflags-load pinned to CPU 1. Prints throughput and latency percentiles per protocol and RPC, and
# the server's RSS idle and under load; then Evaluate again over TLS.
#   scripts/load.sh [duration, default 10s]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
duration=${1:-10s}
dir=$(mktemp -d /tmp/pbflags-load.XXXXXX)
port=${PBFLAGS_LOAD_PORT:-$(free_port)}

cargo build --release --locked --workspace --bin pbflags-evaluator --bin pbflags-load
bin=$CARGO_TARGET_DIR/release
url=$(scripts/pg.sh start "$dir/pg")
server=""
cleanup() { [ -n "$server" ] && kill -TERM "$server" 2>/dev/null; wait 2>/dev/null; scripts/pg.sh stop "$dir/pg"; rm -rf "$dir"; }
trap cleanup EXIT
PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" migrate >/dev/null
PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" sync --descriptors proto/example/descriptors.pb >/dev/null
PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" flags set notifications/2 --value weekly --actor load >/dev/null

# A throwaway CA and a certificate for the TLS runs at the end.
test_certs "$dir"

serve() {
  PBFLAGS_DATABASE=$url taskset -c 0 "$bin/pbflags-evaluator" serve --descriptors proto/example/descriptors.pb \
    --listen "127.0.0.1:$port" --log-level warn "$@" >"$dir/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -fsS --cacert "$dir/ca.crt" "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
base="http://127.0.0.1:$port"
serve
echo "server RSS idle: $(rss "$server")"
# Server CPU use during a run tells a server-bound run (about 100% of its one core) from a
# client-bound one; CPU per request is the server's cost whichever side limits throughput.
load() {
  local t0 s0 out; t0=$(cpu_ticks "$server"); s0=$(date +%s.%N)
  out=$(taskset -c 1 "$bin/pbflags-load" --url "$base" --cacert "$dir/ca.crt" --duration "$duration" "$@")
  echo "$out"
  awk -v t="$(( $(cpu_ticks "$server") - t0 ))" -v s0="$s0" -v s1="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" \
    -v sent="$(echo "$out" | sed -E 's/.*sent ([0-9]+).*/\1/')" \
    'BEGIN { printf "  server CPU: %.0f%% of one core, %.1f us per request\n", 100 * t / hz / (s1 - s0), 1e6 * t / hz / sent }'
}
load --protocol grpc --rpc evaluate
echo "server RSS after gRPC Evaluate load: $(rss "$server")"
load --protocol connect --rpc evaluate --concurrency 32 --connections 32
load --protocol grpc --rpc bulk --concurrency 16
load --protocol connect --rpc bulk --concurrency 16 --connections 16
echo "server RSS under load (after all runs): $(rss "$server")"

# The same server over TLS (a throwaway CA; ALPN h2 for gRPC, http/1.1 for Connect).
kill -TERM "$server"; wait "$server" 2>/dev/null || true
base="https://127.0.0.1:$port"
serve --tls-cert "$dir/tls.crt" --tls-key "$dir/tls.key"
echo "TLS:"
load --protocol grpc --rpc evaluate
load --protocol connect --rpc evaluate --concurrency 32 --connections 32
