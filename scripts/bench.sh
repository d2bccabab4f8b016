#!/usr/bin/env bash
# Serving speed measured with an independent load generator: h2load (Debian's nghttp2-client), not
# this project's own tool. A root evaluator on its own PostgreSQL, pinned to CPU 0 with one worker
# thread, flags cached; h2load pinned to CPU 1. For each shape it reports the rate, h2load's mean
# and max request time, the server's CPU per request, and both sides' CPU use. A run whose generator
# used 90% or more of its core is marked GENERATOR-BOUND: its rate is a floor, not the server's
# saturation figure.
#   scripts/bench.sh [SECONDS per run, default 10]
# PBFLAGS_BENCH_BIN serves with another evaluator binary (an A/B against the tree's build).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
seconds=${1:-10}
command -v h2load >/dev/null || { echo "bench.sh: needs h2load (apt install nghttp2-client)" >&2; exit 69; }
dir=$(mktemp -d /tmp/pbflags-bench.XXXXXX)

cargo build --release --locked --workspace --bin pbflags-evaluator >&2
bin=$CARGO_TARGET_DIR/release
measure_db "$dir" "$bin/pbflags-evaluator"
PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" flags set notifications/2 --value weekly --actor bench >/dev/null

port=$(free_port)
PBFLAGS_DATABASE=$url taskset -c 0 "${PBFLAGS_BENCH_BIN:-$bin/pbflags-evaluator}" serve --descriptors proto/example/descriptors.pb \
  --listen "127.0.0.1:$port" --worker-threads 1 --log-level warn >"$dir/server.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -fsS "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# Request bodies: EvaluateRequest{flag_id: "notifications/2"} (field 1, length-delimited), as
# protobuf, gRPC-framed protobuf and Connect JSON; BulkEvaluate of the four example flags.
python3 - "$dir" <<'EOF'
import struct, sys
d = sys.argv[1]
def field(n, b): return bytes([n << 3 | 2, len(b)]) + b
evaluate = field(1, b"notifications/2")
bulk = b"".join(field(1, f"notifications/{i}".encode()) for i in range(1, 5))
open(f"{d}/evaluate.pb", "wb").write(evaluate)
open(f"{d}/evaluate.grpc", "wb").write(b"\0" + struct.pack(">I", len(evaluate)) + evaluate)
open(f"{d}/bulk.grpc", "wb").write(b"\0" + struct.pack(">I", len(bulk)) + bulk)
open(f"{d}/evaluate.json", "w").write('{"flagId":"notifications/2"}')
EOF
# Warm the caches.
curl -fsS -H 'content-type: application/json' -d @"$dir/evaluate.json" \
  "$base/pbflags.v1.FlagEvaluatorService/Evaluate" >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-44s %10s %10s %10s %12s %8s %8s\n' shape "req/s" "mean" "max" "server µs/req" "server" "h2load"
run() { # name, path, body file, h2load arguments…
  local name=$1 path=$2 body=$3
  shift 3
  local s0 t0 out gen_cpu elapsed
  s0=$(ticks "$server")
  t0=$(date +%s.%N)
  # h2load's own CPU time, exactly, from the kernel's accounting of a finished child.
  gen_cpu=$(taskset -c 1 python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    rc = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)
sys.exit(rc)' "$dir/h2load.out" h2load -D "$seconds" -d "$dir/$body" "$@" \
    "$base/pbflags.v1.FlagEvaluatorService/$path") \
    || { echo "h2load failed for $name:" >&2; cat "$dir/h2load.out" >&2; return 1; }
  elapsed=$(echo "$(date +%s.%N) - $t0" | bc -l)
  out=$(cat "$dir/h2load.out")
  local done_ rate mean max failed
  done_=$(echo "$out" | awk '/^requests:/ {print $8}')
  failed=$(echo "$out" | awk '/^requests:/ {print $10}')
  rate=$(echo "$out" | awk '/^finished in/ {print $4}')
  mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
  max=$(echo "$out" | awk '/^time for request:/ {print $5}')
  [ "$failed" = 0 ] || { echo "$name: $failed requests failed" >&2; echo "$out" >&2; return 1; }
  awk -v name="$name" -v rate="$rate" -v mean="$mean" -v max="$max" -v done_="$done_" \
    -v s="$(( $(ticks "$server") - s0 ))" -v g="$gen_cpu" -v hz="$hz" -v el="$elapsed" \
    'BEGIN {
      gen = 100 * g / el
      printf "%-44s %10.0f %10s %10s %12.1f %7.0f%% %7.0f%%%s\n", name, rate, mean, max,
        1e6 * s / hz / done_, 100 * s / hz / el, gen, (gen >= 90 ? "  GENERATOR-BOUND" : "")
    }'
}
grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
run "gRPC Evaluate, 4 conn × 64 streams" Evaluate evaluate.grpc "${grpc[@]}" -c 4 -m 64
run "gRPC Evaluate, client accepts gzip" Evaluate evaluate.grpc "${grpc[@]}" \
  -H 'grpc-accept-encoding: gzip' -c 4 -m 64
run "gRPC BulkEvaluate (4 flags)" BulkEvaluate bulk.grpc "${grpc[@]}" -c 4 -m 64
run "Connect proto Evaluate, HTTP/2" Evaluate evaluate.pb -H 'content-type: application/proto' -c 4 -m 64
run "Connect JSON Evaluate, HTTP/1.1, 32 conn" Evaluate evaluate.json \
  -H 'content-type: application/json' --h1 -c 32
run "Connect JSON Evaluate, HTTP/1.1, accepts gzip" Evaluate evaluate.json \
  -H 'content-type: application/json' -H 'accept-encoding: gzip' --h1 -c 32
# h2load counts any HTTP 200 as a success; gRPC errors travel in trailers. The server's own count
# tells whether every call was answered ok.
not_ok=$(curl -fsS "$base/metrics" | awk '/^pbflags_rpc_requests_total/ && !/code="ok"/ {n += $2} END {print n + 0}')
echo "calls answered with an error code (server's count): $not_ok"
echo "server RSS after the runs: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$server/status")"
