#!/usr/bin/env bash
# Idle cost: a root evaluator (own PostgreSQL) and a proxy in front of it, each answering one request
# and then left alone. Reports, per process, the CPU it used and the context switches of all its
# threads (each a wake-up) per second over the idle window, read from /proc.
#   scripts/idle.sh [SECONDS, default 20]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
seconds=${1:-20}
dir=$(mktemp -d /tmp/pbflags-idle.XXXXXX)
cargo build --release --locked --workspace --bin pbflags-evaluator >&2
bin=$CARGO_TARGET_DIR/release
root_and_proxy "$dir" "$bin"
for port in "$root_port" "$proxy_port"; do
  curl -fsS -H 'content-type: application/json' -d '{"flagId":"notifications/2"}' \
    "http://127.0.0.1:$port/pbflags.v1.FlagEvaluatorService/Evaluate" >/dev/null
done
sleep 2 # let start-up work (first polls, connections) finish

python3 - "$seconds" "$root" "$proxy" <<'EOF'
import os, sys, time
seconds = float(sys.argv[1])
procs = {"root": int(sys.argv[2]), "proxy": int(sys.argv[3])}
tick = os.sysconf("SC_CLK_TCK")

def sample(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    switches = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except FileNotFoundError:
            pass
    return cpu, switches

before = {n: sample(p) for n, p in procs.items()}
t0 = time.monotonic()
time.sleep(seconds)
elapsed = time.monotonic() - t0
for n, p in procs.items():
    cpu, sw = sample(p)
    print(f"{n:5} idle {elapsed:.0f}s: CPU {100 * (cpu - before[n][0]) / elapsed:.2f}% of a core, "
          f"{(sw - before[n][1]) / elapsed:.0f} wake-ups/s (context switches, all threads)")
EOF
