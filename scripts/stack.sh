#!/usr/bin/env bash
# The main job: a local root + proxy evaluator stack on a self-provisioned PostgreSQL.
#
#   scripts/stack.sh          start it, show it working, keep serving until Ctrl-C
#   scripts/stack.sh --once   start it, show it working, stop (used by the test command)
#
# PostgreSQL data lives in $PBFLAGS_STACK_DIR (default ~/.cache/pbflags/stack). The root listens on
# 127.0.0.1:${PBFLAGS_ROOT_PORT:-9201}, the proxy on 127.0.0.1:${PBFLAGS_PROXY_PORT:-9202}.
# Everything started here is stopped by process id on exit.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
once=0; [ "${1:-}" = "--once" ] && once=1
dir=${PBFLAGS_STACK_DIR:-$HOME/.cache/pbflags/stack}
root_port=${PBFLAGS_ROOT_PORT:-9201}
proxy_port=${PBFLAGS_PROXY_PORT:-9202}
mkdir -p "$dir/logs"

step "building pbflags-evaluator (release; with the operator, so the images reuse the build)"
release_build
bin=$CARGO_TARGET_DIR/release/pbflags-evaluator
descriptors=proto/example/descriptors.pb

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/pg.sh stop "$dir/pg"
}
trap cleanup EXIT

step "PostgreSQL"
PBFLAGS_DATABASE=$(scripts/pg.sh start "$dir/pg")
export PBFLAGS_DATABASE
echo "database: $PBFLAGS_DATABASE"

step "migrate and sync the example descriptors"
"$bin" descriptors --descriptors "$descriptors"
"$bin" migrate
"$bin" sync --descriptors "$descriptors"

wait_ready() { # name port
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become ready; log:" >&2; tail -n 20 "$dir/logs/$1.log" >&2; return 1
}

step "root evaluator on 127.0.0.1:$root_port, proxy on 127.0.0.1:$proxy_port"
"$bin" serve --descriptors "$descriptors" --listen "127.0.0.1:$root_port" --kill-ttl 1s \
  >"$dir/logs/root.log" 2>&1 &
pids+=($!)
wait_ready root "$root_port"
env -u PBFLAGS_DATABASE "$bin" serve --descriptors "$descriptors" --listen "127.0.0.1:$proxy_port" \
  --server "http://127.0.0.1:$root_port" --kill-ttl 1s --flag-ttl 2s --override-ttl 2s \
  >"$dir/logs/proxy.log" 2>&1 &
pids+=($!)
wait_ready proxy "$proxy_port"

evaluate() { # port flag [entity]
  curl -fsS -H 'content-type: application/json' \
    -d "{\"flagId\":\"$2\",\"entityId\":\"${3:-}\"}" \
    "http://127.0.0.1:$1/pbflags.v1.FlagEvaluatorService/Evaluate"
  echo
}

step "evaluate through the proxy (Connect JSON)"
"$bin" flags set notifications/2 --value weekly --actor stack >/dev/null
"$bin" flags override set notifications/1 user-7 --value false --actor stack >/dev/null
sleep 2.5
evaluate "$proxy_port" notifications/2
evaluate "$proxy_port" notifications/1 user-7
evaluate "$proxy_port" notifications/4

step "kill notifications/2 and watch it take effect"
"$bin" flags kill notifications/2 --actor stack
sleep 2.5
evaluate "$proxy_port" notifications/2
curl -fsS "http://127.0.0.1:$proxy_port/healthz"

if [ $once = 1 ]; then
  step "stack works; stopping (--once)"
  exit 0
fi
step "serving; logs in $dir/logs; Ctrl-C to stop"
wait "${pids[@]}"
