#!/usr/bin/env bash
# Change propagation: how long a committed change takes to be answered by every tier. A root (own
# PostgreSQL), a proxy of it and a proxy of that proxy (over gRPC) serve; CHANGES changes are made
# with the CLI (a new state value, a kill or an unkill, a new override for an entity whose "no
# override" is cached) while a client polls each tier over Connect JSON until it answers with the
# change. Reports p50/p99/max per kind and tier, and the CPU each evaluator used.
#
# Run twice: with changes pushed (PostgreSQL LISTEN, the change stream; TTLs of an hour, so nothing
# else can bring a change) and without (--change-notifications=false; TTLs of 10 s for states and
# overrides and 5 s for kills, v0.6's defaults being 5 min and 30 s, which the times scale with).
# The clock starts when the CLI has returned (its transaction is committed).
#   scripts/propagation.sh [CHANGES, default 30] [push|ttl|both, default both]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
changes=${1:-30}
modes=${2:-both}
[ "$modes" = both ] && modes="push ttl"
release_build >&2
bin=$CARGO_TARGET_DIR/release

run() {
  local mode=$1 dir args edge_port edge
  dir=$(mktemp -d /tmp/pbflags-propagation.XXXXXX)
  case $mode in
    push) args=(--kill-ttl 1h --flag-ttl 1h --override-ttl 1h) ;;
    ttl) args=(--change-notifications=false --kill-ttl 5s --flag-ttl 10s --override-ttl 10s --jitter-percent 0) ;;
  esac
  root_and_proxy "$dir" "$bin" "${args[@]}"
  edge_port=$(free_port)
  "$bin/pbflags-evaluator" serve --descriptors proto/example/descriptors.pb --log-level warn "${args[@]}" \
    --listen "127.0.0.1:$edge_port" --server "http://127.0.0.1:$proxy_port" --upstream-protocol grpc \
    >"$dir/edge.log" 2>&1 &
  edge=$!
  _rp_pids+=("$edge")
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$edge_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1 # the proxies subscribe to their upstreams
  PBFLAGS_DATABASE=$url python3 - "$mode" "$changes" "$bin/pbflags-evaluator" \
    "root=$root_port:$root" "proxy=$proxy_port:$proxy" "edge=$edge_port:$edge" <<'EOF'
import http.client, json, os, subprocess, sys, time

mode, n, cli = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tiers = []
for spec in sys.argv[4:]:
    name, rest = spec.split("=")
    port, pid = rest.split(":")
    tiers.append((name, int(port), int(pid)))
conns = {name: http.client.HTTPConnection("127.0.0.1", port) for name, port, _ in tiers}
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def evaluate(tier, flag, entity=""):
    c = conns[tier]
    c.request("POST", "/pbflags.v1.FlagEvaluatorService/Evaluate",
              body=json.dumps({"flagId": flag, "entityId": entity}),
              headers={"content-type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, body
    return body

def flags(*args):
    subprocess.run([cli, "flags", "--actor", "propagation", *args], check=True,
                   stdout=subprocess.DEVNULL)

samples = {}  # (kind, tier) -> [seconds]
cpu_before = {name: cpu(pid) for name, _, pid in tiers}
started = time.monotonic()
killed = False
for i in range(n):
    kind = ("state", "kill", "override")[i % 3]
    entity = ""
    if kind == "state":
        flag, value = "notifications/2", f"v{i}"
        args = ["set", flag, "--value", value]
        seen = lambda b: b.get("value", {}).get("stringValue") == value
    elif kind == "kill":
        flag, killed = "notifications/3", not killed
        args = ["kill" if killed else "unkill", flag]
        want = killed
        seen = lambda b: (b.get("source") == "EVALUATION_SOURCE_KILLED") == want
    else:
        flag, entity = "notifications/1", f"user-{i}"
        args = ["override", "set", flag, entity, "--value", "false"]
        seen = lambda b: b.get("source") == "EVALUATION_SOURCE_OVERRIDE"
    for name, _, _ in tiers:  # every tier has the old answer cached
        assert not seen(evaluate(name, flag, entity)), (kind, name)
    flags(*args)
    t0 = time.monotonic()
    pending = [name for name, _, _ in tiers]
    while pending:
        for name in list(pending):
            if seen(evaluate(name, flag, entity)):
                samples.setdefault((kind, name), []).append(time.monotonic() - t0)
                pending.remove(name)
        if time.monotonic() - t0 > 120:
            sys.exit(f"{kind} change {i} not visible on {pending} after 120 s")
elapsed = time.monotonic() - started

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

print(f"\n## {mode}: {n} changes in {elapsed:.1f} s")
print("| change | tier | n | p50 | p99 | max |")
print("|---|---|---|---|---|---|")
for kind in ("state", "kill", "override"):
    for name, _, _ in tiers:
        xs = samples.get((kind, name), [])
        if xs:
            print(f"| {kind} | {name} | {len(xs)} | {pct(xs, 50)*1000:.1f} ms | {pct(xs, 99)*1000:.1f} ms | {max(xs)*1000:.1f} ms |")
print("\nCPU over the run (polling included):", ", ".join(
    f"{name} {cpu(pid) - cpu_before[name]:.2f} s" for name, _, pid in tiers))
EOF
}

for mode in $modes; do
  (run "$mode")
done
