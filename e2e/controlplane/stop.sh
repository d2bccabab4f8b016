#!/usr/bin/env bash
# Stops the control plane started by start.sh: by recorded process id, newest component first.
#
#   stop.sh           stop it
#   stop.sh --check   stop it, then list what tier D's node left on the host (processes, mounts,
#                     network namespaces, veths, the bridge, nftables tables, cgroups, changed
#                     sysctls); exit 1 if anything is left
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
[ -d "$RUN/pids" ] || exit 0
COMPONENT=stop
# shellcheck source=lib.sh
. "$here/lib.sh"
snapshot=
if [ "${1:-}" = --check ] && [ -d "$RUN/node/host-before" ]; then
  snapshot=$(mktemp -d)
  "$here/node.sh" snapshot "$snapshot"
fi
# Tier D's node first: its processes, pods, mounts, network and host settings.
"$here/node.sh" stop
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$name"; done
rm -rf "$RUN"
if [ -n "$snapshot" ]; then
  left=$("$here/node.sh" leftovers "$snapshot")
  rm -rf "$snapshot"
  if [ -n "$left" ]; then
    echo "stop.sh: the node left this behind:" >&2; echo "$left" >&2; exit 1
  fi
  echo "stop.sh: nothing of the node is left on the host" >&2
fi
