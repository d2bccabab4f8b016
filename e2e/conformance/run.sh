#!/usr/bin/env bash
# The Connect conformance suite (connectrpc.com/conformance, the suite every Connect implementation
# is held to), both ways:
# - server mode: the reference client calls pbflags-conformance (e2e/src/bin), which serves the
#   suite's ConformanceService through the same Connect, gRPC and gRPC-Web code, connection
#   handling and TLS as the evaluator. Cases: server.yaml (unary; HTTP/1.1 and HTTP/2; TLS and
#   cleartext; proto and JSON; identity and gzip).
# - client mode: the proxy's upstream client (Connect, binary protobuf, HTTP/1.1, TLS or not) calls
#   the reference server. Cases: client.yaml.
# Cases known to fail are listed, with the reason, in known-failing-<mode>.txt (the run fails if one
# of them passes). The runner is built from Go modules and cached outside the repository.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/scripts/lib.sh"
export GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false"
version=v1.0.7
runner=$(go_tool conformance connectrpc.com/conformance/cmd/connectconformance "$version")
# The suite's protos, from the module cache (downloaded if missing).
protos=$(go mod download -json "connectrpc.com/conformance@$version" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/proto

cargo build --locked -p pbflags-e2e --bin pbflags-conformance
rc=0
for mode in server client; do
  known=()
  if grep -qv '^\s*\(#\|$\)' "$here/known-failing-$mode.txt" 2>/dev/null; then
    known=(--known-failing "@$here/known-failing-$mode.txt")
  fi
  args=(client)
  [ "$mode" = server ] && args=(server --protos "$protos")
  log=$(mktemp /tmp/pbflags-conformance.XXXXXX)
  echo "== $mode mode"
  "$runner" --mode "$mode" --conf "$here/$mode.yaml" "${known[@]}" \
    -- "$CARGO_TARGET_DIR/debug/pbflags-conformance" "${args[@]}" >"$log" 2>&1 || rc=1
  grep -E '^(FAILED|Total cases|[0-9]+ passed)' "$log" | tail -40
  rm -f "$log"
done
exit $rc
