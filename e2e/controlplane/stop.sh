#!/usr/bin/env bash
# Stops the control plane started by start.sh: by recorded process id, newest component first.
set -uo pipefail
RUN=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
[ -d "$RUN/pids" ] || exit 0
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f=$RUN/pids/$name
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
rm -rf "$RUN"
