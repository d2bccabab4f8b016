#!/usr/bin/env bash
# Serving speed measured with an independent load generator: h2load (Debian's nghttp2-client), not
# this project's own tool. A root evaluator on its own PostgreSQL, flags cached, at the product's
# default log level; then a proxy in front of it. For each shape: the saturated rate, h2load's mean
# and max request time, the server's CPU per request and both sides' CPU use; for the main shapes
# also the latency percentiles below saturation (see below).
#
# One core (the default): the server pinned to CPU 0 with one worker thread, h2load to CPU 1. A run
# whose generator used 90% or more of its core is marked GENERATOR-BOUND: its rate is a floor, not
# the server's saturation figure (the server's CPU per request still holds).
# PBFLAGS_BENCH_CORES=2: the server on CPUs 0-1 with two worker threads and h2load (two threads)
# on the same two CPUs; the CPU columns are then shares of both cores, and the rate is what the
# machine serves with its generator on it.
#
#   scripts/bench.sh [SECONDS per run, default 10]
# PBFLAGS_BENCH_BIN      serve with another evaluator binary (an A/B against the tree's build)
# PBFLAGS_BENCH_ONLY     an extended regular expression: only the shapes whose name matches
# PBFLAGS_BENCH_LOG_LEVEL  the servers' --log-level (default info, the product's default)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
seconds=${1:-10}
cores=${PBFLAGS_BENCH_CORES:-1}
only=${PBFLAGS_BENCH_ONLY:-.}
command -v h2load >/dev/null || { echo "bench.sh: needs h2load (apt install nghttp2-client)" >&2; exit 69; }
case $cores in
  1) server_cpus=0 gen_cpus=1 threads=1 ;;
  2) server_cpus=0,1 gen_cpus=0,1 threads=2 ;;
  *) echo "bench.sh: PBFLAGS_BENCH_CORES is 1 or 2, not $cores" >&2; exit 64 ;;
esac
dir=$(mktemp -d /tmp/pbflags-bench.XXXXXX)

cargo build --release --locked --workspace --bin pbflags-evaluator >&2
bin=$CARGO_TARGET_DIR/release
evaluator=${PBFLAGS_BENCH_BIN:-$bin/pbflags-evaluator}
measure_db "$dir" "$bin/pbflags-evaluator"
PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" flags set notifications/2 --value weekly --actor bench >/dev/null
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; _measure_cleanup' EXIT

# serve CPUS NAME [SERVE_ARGS…]: starts an evaluator pinned to CPUS on a free port; sets $pid and
# $base once it is ready.
serve() {
  local cpus=$1 name=$2 port
  shift 2
  port=$(free_port)
  # The root reads the database; a proxy (given --server) must not be told of one.
  local db=(env PBFLAGS_DATABASE="$url")
  [[ " $* " == *" --server "* ]] && db=(env -u PBFLAGS_DATABASE)
  "${db[@]}" taskset -c "$cpus" "$evaluator" serve --descriptors proto/example/descriptors.pb \
    --listen "127.0.0.1:$port" --log-level "${PBFLAGS_BENCH_LOG_LEVEL:-info}" "$@" >"$dir/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  base="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fsS "$base/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench.sh: $name did not become ready:" >&2
  cat "$dir/$name.log" >&2
  exit 1
}

# Request bodies: EvaluateRequest{flag_id: "notifications/2"} (field 1, length-delimited), as
# protobuf, gRPC-framed protobuf and Connect JSON; BulkEvaluate of the four example flags, and of
# 100 ids (the four repeated, as pbflags-load's --bulk does).
python3 - "$dir" <<'EOF'
import struct, sys
d = sys.argv[1]
def field(n, b): return bytes([n << 3 | 2, len(b)]) + b
def grpc(m): return b"\0" + struct.pack(">I", len(m)) + m
evaluate = field(1, b"notifications/2")
bulk4 = b"".join(field(1, f"notifications/{i}".encode()) for i in range(1, 5))
bulk100 = b"".join(field(1, f"notifications/{i % 4 + 1}".encode()) for i in range(100))
open(f"{d}/evaluate.pb", "wb").write(evaluate)
open(f"{d}/evaluate.grpc", "wb").write(grpc(evaluate))
open(f"{d}/bulk4.grpc", "wb").write(grpc(bulk4))
open(f"{d}/bulk100.grpc", "wb").write(grpc(bulk100))
open(f"{d}/evaluate.json", "w").write('{"flagId":"notifications/2"}')
EOF

hz=$(getconf CLK_TCK)

# h2load_on NAME PATH BODY [ARGS…]: runs h2load against $base on the generator's CPUs; its output
# goes to $dir/h2load.out, its own CPU seconds (the kernel's accounting of a finished child) to
# $gen_cpu, the wall time to $elapsed and the server's CPU ticks to $server_ticks.
h2load_on() {
  local name=$1 path=$2 body=$3 s0 t0
  shift 3
  s0=$(cpu_ticks "$pid")
  t0=$(date +%s.%N)
  gen_cpu=$(taskset -c "$gen_cpus" python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    rc = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)
sys.exit(rc)' "$dir/h2load.out" h2load -t "$threads" -d "$dir/$body" "$@" \
    "$base/pbflags.v1.FlagEvaluatorService/$path") \
    || { echo "h2load failed for $name:" >&2; cat "$dir/h2load.out" >&2; return 1; }
  elapsed=$(echo "$(date +%s.%N) - $t0" | bc -l)
  server_ticks=$(($(cpu_ticks "$pid") - s0))
  local failed
  failed=$(awk '/^requests:/ {print $10}' "$dir/h2load.out")
  [ "$failed" = 0 ] || { echo "$name: $failed requests failed" >&2; cat "$dir/h2load.out" >&2; return 1; }
}

printf '%-50s %9s %9s %9s %8s %7s %7s\n' shape "req/s" mean max "µs/req" server h2load
# run NAME PATH BODY [ARGS…]: one saturated run; sets $rate.
run() {
  local name=$1 path=$2 body=$3
  shift 3
  rate=0
  [[ $name =~ $only ]] || return 0
  h2load_on "$name" "$path" "$body" -D "$seconds" "$@"
  local line
  line=$(awk -v name="$name" -v s="$server_ticks" -v g="$gen_cpu" -v hz="$hz" -v el="$elapsed" \
    -v cores="$cores" '
    /^requests:/ { done_ = $8 }
    /^finished in/ { rate = $4 }
    /^time for request:/ { max = $5; mean = $6 }
    END {
      gen = 100 * g / el / cores
      printf "%-50s %9.0f %9s %9s %8.1f %6.0f%% %6.0f%%%s\n", name, rate, mean, max,
        1e6 * s / hz / done_, 100 * s / hz / el / cores, gen,
        (cores == 1 && gen >= 90 ? "  GENERATOR-BOUND" : "")
    }' "$dir/h2load.out")
  echo "$line"
  rate=$(awk '/^finished in/ {printf "%.0f", $4}' "$dir/h2load.out")
}

# below ARGS…: after a saturated run, the same shape closed loop with fewer requests in flight
# (ARGS: h2load's -c and -m), to see the latency below saturation. Prints the rate achieved and its
# share of the saturated rate, latency percentiles from every request's time in h2load's
# --log-file, and both sides' CPU use. (A paced run would be better but cannot be made here:
# h2load's --rps releases each connection's requests in bursts every 10 ms, whose queue it would
# measure rather than the server, and its timing script, smooth at microsecond offsets, costs it
# 90% of its core at 100k requests/s, which then delays the requests it times.)
below() {
  local name=$last_name
  [[ $name =~ $only ]] || return 0
  rm -f "$dir/requests.log"
  h2load_on "$name below saturation" "$last_path" "$last_body" -D "$seconds" \
    --log-file "$dir/requests.log" "${last_args[@]}" "$@"
  python3 - "$dir/requests.log" "$rate" "$elapsed" "$server_ticks" "$hz" "$cores" "$gen_cpu" "$*" <<'EOF2'
import sys
log, in_flight = sys.argv[1], sys.argv[8]
rate, elapsed, ticks, hz, cores, gen = (float(a) for a in sys.argv[2:8])
t = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
share = f" ({100 * len(t) / elapsed / rate:.0f}% of the saturated rate)" if rate else ""
def p(q): return t[min(len(t) - 1, int(q * len(t)))] / 1000
print(f"  {in_flight}: {len(t) / elapsed:7.0f} req/s{share}   p50 {p(0.50):.3f} ms   "
      f"p99 {p(0.99):.3f} ms   p99.9 {p(0.999):.3f} ms   max {t[-1] / 1000:.3f} ms   "
      f"server {100 * ticks / hz / elapsed / cores:.0f}%   h2load {100 * gen / elapsed / cores:.0f}%")
EOF2
}
# shape NAME PATH BODY HEADER_ARGS… -- LOAD_ARGS…: a saturated run, remembered for below().
shape() {
  local name=$1 path=$2 body=$3 a
  shift 3
  last_name=$name last_path=$path last_body=$body last_args=()
  local load=()
  for a in "$@"; do
    if [ "$a" = -- ]; then last_args=("${load[@]}") load=(); else load+=("$a"); fi
  done
  run "$name" "$path" "$body" "${last_args[@]}" "${load[@]}"
}

grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
json=(-H 'content-type: application/json')
proto=(-H 'content-type: application/proto')
# The shapes measured against one server (the root, then the proxy): saturated, and below
# saturation for the three a deployment's tail latency depends on.
shapes() { # LABEL
  local l=$1
  shape "$l gRPC Evaluate, 4 conn × 64 streams" Evaluate evaluate.grpc "${grpc[@]}" -- -c 4 -m 64
  below -c 4 -m 4
  shape "$l gRPC Evaluate, client accepts gzip" Evaluate evaluate.grpc "${grpc[@]}" \
    -H 'grpc-accept-encoding: gzip' -- -c 4 -m 64
  shape "$l gRPC BulkEvaluate (4 flags)" BulkEvaluate bulk4.grpc "${grpc[@]}" -- -c 4 -m 64
  shape "$l gRPC BulkEvaluate (100 flags)" BulkEvaluate bulk100.grpc "${grpc[@]}" -- -c 4 -m 16
  shape "$l Connect proto Evaluate, HTTP/2" Evaluate evaluate.pb "${proto[@]}" -- -c 4 -m 64
  shape "$l Connect proto Evaluate, HTTP/1.1, 32 conn" Evaluate evaluate.pb "${proto[@]}" --h1 -- -c 32
  below -c 8
  shape "$l Connect JSON Evaluate, HTTP/1.1, 32 conn" Evaluate evaluate.json "${json[@]}" --h1 -- -c 32
  below -c 8
  shape "$l Connect JSON Evaluate, HTTP/1.1, accepts gzip" Evaluate evaluate.json "${json[@]}" \
    -H 'accept-encoding: gzip' --h1 -- -c 32
}
warm() { curl -fsS "${json[@]}" -d @"$dir/evaluate.json" "$base/pbflags.v1.FlagEvaluatorService/Evaluate" >/dev/null; }
# h2load counts any HTTP 200 as a success; gRPC errors travel in trailers. The server's own count
# by code tells whether every call was answered ok. (Calls in flight when h2load closes its
# connections at the end of a run count as "canceled": the client left, nothing failed.)
not_ok() {
  curl -fsS "$base/metrics" | awk '/^pbflags_rpc_requests_total/ && !/code="ok"/ {
      match($0, /code="[^"]*"/); n[substr($0, RSTART + 6, RLENGTH - 7)] += $2 }
    END { s = ""; for (c in n) s = s sprintf("%s%s %d", s == "" ? "" : ", ", c, n[c]); print s == "" ? "none" : s }'
}

echo "server: $cores core(s) ($server_cpus), h2load on CPUs $gen_cpus, log level ${PBFLAGS_BENCH_LOG_LEVEL:-info}"
serve "$server_cpus" root --worker-threads "$threads"
root=$pid root_base=$base
echo "root RSS idle: $(rss "$root")"
warm
shapes root
echo "root: calls not answered ok, by code (server's count): $(not_ok); RSS after the runs: $(rss "$root")"

# The proxy in the server's place, its root (idle once the proxy has cached the flags) on the
# generator's CPUs.
kill -TERM "$root"
wait "$root" 2>/dev/null || true
serve "$gen_cpus" root --worker-threads 1
root_base=$base
serve "$server_cpus" proxy --worker-threads "$threads" --server "$root_base"
warm
shapes proxy
echo "proxy: calls not answered ok, by code (server's count): $(not_ok); RSS after the runs: $(rss "$pid")"
