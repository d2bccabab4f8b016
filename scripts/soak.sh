#!/usr/bin/env bash
# Fault soak: a paced load through proxy → root → PostgreSQL while PostgreSQL and the root are
# frozen, stopped, killed and restarted. Fails unless every RPC succeeded and every answer equals
# the one given before the faults; prints latency percentiles inside and outside the fault windows.
#   scripts/soak.sh [SECONDS, default 60] [RATE, default 300 requests/s]
# The fault schedule needs at least 50 s; the last seconds run fault-free.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
seconds=${1:-60}
rate=${2:-300}
[ "$seconds" -ge 50 ] || { echo "soak.sh: at least 50 seconds" >&2; exit 64; }
dir=$(mktemp -d /tmp/pbflags-soak.XXXXXX)

cargo build --release --locked --workspace --bin pbflags-evaluator --bin pbflags-load >&2
bin=$CARGO_TARGET_DIR/release
descriptors=proto/example/descriptors.pb
root="" proxy="" load=""
pg_pids() { # the postmaster and its children, by process id
  local pm
  pm=$(head -n 1 "$dir/pg/data/postmaster.pid" 2>/dev/null) || return 0
  echo "$pm" $(pgrep -P "$pm" || true)
}
cleanup() {
  # Nothing may stay frozen: continue everything before stopping it.
  kill -CONT $(pg_pids) ${root:+"$root"} 2>/dev/null || true
  for p in $load $proxy $root; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg.sh stop "$dir/pg"
  rm -rf "$dir"
}
trap cleanup EXIT

url=$(scripts/pg.sh start "$dir/pg")
export PBFLAGS_DATABASE=$url
"$bin/pbflags-evaluator" migrate >/dev/null
"$bin/pbflags-evaluator" sync --descriptors "$descriptors" >/dev/null
"$bin/pbflags-evaluator" flags set notifications/2 --value weekly --actor soak >/dev/null
"$bin/pbflags-evaluator" flags override set notifications/1 user-7 --value false --actor soak >/dev/null
"$bin/pbflags-evaluator" flags kill notifications/3 --actor soak >/dev/null

root_port=$(free_port)
proxy_port=$(free_port)
ttls=(--kill-ttl 1s --flag-ttl 2s --override-ttl 2s --log-level warn)
start_root() {
  "$bin/pbflags-evaluator" serve --descriptors "$descriptors" --listen "127.0.0.1:$root_port" \
    "${ttls[@]}" >>"$dir/root.log" 2>&1 &
  root=$!
}
wait_ready() { # port
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "soak.sh: 127.0.0.1:$1 did not become ready" >&2; cat "$dir"/*.log >&2; return 1
}
start_root
wait_ready "$root_port"
env -u PBFLAGS_DATABASE "$bin/pbflags-evaluator" serve --descriptors "$descriptors" \
  --listen "127.0.0.1:$proxy_port" --server "http://127.0.0.1:$root_port" "${ttls[@]}" \
  >"$dir/proxy.log" 2>&1 &
proxy=$!
wait_ready "$proxy_port"

# The answers the faults must not change, checked once by value.
answer() { # flag entity
  curl -fsS -H 'content-type: application/json' -d "{\"flagId\":\"$1\",\"entityId\":\"$2\"}" \
    "http://127.0.0.1:$proxy_port/pbflags.v1.FlagEvaluatorService/Evaluate"
}
sleep 1.5 # one kill-set poll
answer notifications/2 user-7 | grep -q '"stringValue":"weekly"'
answer notifications/1 user-7 | grep -q '"source":"EVALUATION_SOURCE_OVERRIDE"'
answer notifications/3 user-7 | grep -q '"source":"EVALUATION_SOURCE_KILLED"'

now_ms() { date +%s%3N; }
faults=$dir/faults
fault() { # name seconds on-command off-command
  local start
  start=$(now_ms)
  eval "$3"
  sleep "$2"
  eval "$4"
  echo "$start $(now_ms) $1" >>"$faults"
}
"$bin/pbflags-load" --url "http://127.0.0.1:$proxy_port" --protocol grpc --rpc evaluate \
  --flags notifications/1,notifications/2,notifications/3,notifications/4 --entity user-7 \
  --concurrency 16 --connections 2 --rate "$rate" --duration "${seconds}s" \
  --check-stable --record "$dir/requests.csv" >"$dir/load.out" &
load=$!
sleep 6
fault "PostgreSQL frozen (SIGSTOP)" 4 'kill -STOP $(pg_pids)' 'kill -CONT $(pg_pids)'
sleep 4
fault "PostgreSQL stopped" 4 'scripts/pg.sh stop "$dir/pg"' 'scripts/pg.sh start "$dir/pg" >/dev/null'
sleep 4
fault "root frozen (SIGSTOP)" 4 'kill -STOP $root' 'kill -CONT $root'
sleep 4
fault "root killed (SIGKILL), restarted" 3 'kill -KILL $root; wait $root 2>/dev/null || true' 'start_root'
sleep 4
fault "PostgreSQL stopped and root frozen" 4 \
  'scripts/pg.sh stop "$dir/pg"; kill -STOP $root' 'kill -CONT $root; scripts/pg.sh start "$dir/pg" >/dev/null'
wait "$load"
load=""
cat "$dir/load.out"
python3 - "$dir/requests.csv" "$faults" <<'PY'
import sys
rows = [tuple(map(int, l.split(","))) for l in open(sys.argv[1]) if l.strip()]
windows = [(int(a), int(b), n) for a, b, n in (l.split(" ", 2) for l in open(sys.argv[2]).read().splitlines())]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))] / 1000 if xs else float("nan")
def line(name, rs):
    lat = [r[1] for r in rs if r[2]]
    failed = sum(1 for r in rs if not r[2])
    wrong = sum(1 for r in rs if not r[3])
    print(f"  {name:<40} {len(rs):>6} requests, {failed} failed, {wrong} wrong, "
          f"p50 {pct(lat, .5):.2f} ms, p99 {pct(lat, .99):.2f} ms, max {pct(lat, 1):.2f} ms")
    return failed, wrong
print("latency by phase (requests started inside each window):")
bad = [0, 0]
for a, b, n in windows:
    f, w = line(n, [r for r in rows if a <= r[0] < b])
inside = [r for r in rows if any(a <= r[0] < b for a, b, _ in windows)]
outside = [r for r in rows if not any(a <= r[0] < b for a, b, _ in windows)]
line("all fault windows", inside)
line("outside the fault windows", outside)
failed, wrong = line("whole run", rows)
if failed or wrong:
    sys.exit(f"soak FAILED: {failed} failed and {wrong} wrong answers")
print("soak passed: 0 failed RPCs, 0 wrong answers")
PY
