#!/usr/bin/env bash
# The cold path: Evaluate of a user-layer flag for a new entity each call, so every call misses the
# override cache and queries PostgreSQL; and a new undeclared flag id each call. A root on its own
# PostgreSQL (pinned to CPU 0 with PostgreSQL), pbflags-load pinned to CPU 1, paced well below
# saturation, so the latencies are those of one query each, not of a queue. Given two evaluator
# binaries it alternates them round by round (A/B against the same database).
#   scripts/coldpath.sh [SECONDS per run, default 10] [ROUNDS, default 2] [BINARY_A [BINARY_B]]
# PBFLAGS_COLD_RATE sets the request rate (default 200/s).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
seconds=${1:-10}
rate=${PBFLAGS_COLD_RATE:-200}
rounds=${2:-2}
cargo build --release --locked --workspace --bin pbflags-evaluator --bin pbflags-load >&2
bins=("${3:-$CARGO_TARGET_DIR/release/pbflags-evaluator}")
[ -n "${4:-}" ] && bins+=("$4")
load=$CARGO_TARGET_DIR/release/pbflags-load
dir=$(mktemp -d /tmp/pbflags-coldpath.XXXXXX)
measure_db "$dir" "${bins[0]}"
port=$(free_port)
base="http://127.0.0.1:$port"

run() { # label, pbflags-load arguments…
  local label=$1
  shift
  local out
  out=$(taskset -c 1 "$load" --url "$base" --duration "${seconds}s" "$@")
  printf '  %-52s %s\n' "$label" "$(sed -E 's/.*(p50 [^,]*, p99 [^,]*, p999 [^,]*, errors [0-9]+).*/\1/' <<<"$out")"
}

for round in $(seq 1 "$rounds"); do
  for b in "${bins[@]}"; do
    PBFLAGS_DATABASE=$url taskset -c 0 "$b" serve --descriptors proto/example/descriptors.pb \
      --listen "127.0.0.1:$port" --log-level warn --worker-threads 1 >"$dir/server.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do curl -fsS "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "round $round, $b:"
    run "override miss → PostgreSQL, Connect proto, $rate/s" --protocol connect \
      --flags notifications/1 --unique-entity-bytes 24 --rate "$rate" --concurrency 1 --connections 1
    run "override miss → PostgreSQL, gRPC, $rate/s" --protocol grpc \
      --flags notifications/1 --unique-entity-bytes 24 --rate "$rate" --concurrency 1 --connections 1
    run "new undeclared flag id each call, gRPC, $rate/s" --protocol grpc \
      --unique-flag-bytes 24 --rate "$rate" --concurrency 1 --connections 1
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
    server=""
  done
done
