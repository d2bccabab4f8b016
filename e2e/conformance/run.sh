#!/usr/bin/env bash
# The Connect conformance suite (connectrpc.com/conformance, the suite every Connect implementation
# is held to) against the evaluator's serving stack: `connectconformance --mode server` drives
# pbflags-conformance (e2e/src/bin), which serves the suite's ConformanceService through the same
# Connect, gRPC and gRPC-Web code, connection handling and TLS as the evaluator. Cases: server.yaml
# (unary; HTTP/1.1 and HTTP/2; TLS and cleartext; proto and JSON; identity and gzip). Cases that are
# known to fail are listed, with the reason, in known-failing.txt (the run fails if one passes).
# The runner is built from Go modules and cached outside the repository.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/scripts/lib.sh"
export GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false"
version=v1.0.7
tools=${PBFLAGS_GO_TOOLS:-$HOME/.cache/pbflags/go-tools}/conformance-$version
if [ ! -x "$tools/connectconformance" ]; then
  mkdir -p "$tools"
  GOBIN="$tools" go install "connectrpc.com/conformance/cmd/connectconformance@$version"
fi
# The suite's protos, from the module cache (downloaded if missing).
protos=$(go mod download -json "connectrpc.com/conformance@$version" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/proto

cargo build --locked -p pbflags-e2e --bin pbflags-conformance
known=()
if grep -qv '^\s*\(#\|$\)' "$here/known-failing.txt" 2>/dev/null; then
  known=(--known-failing "@$here/known-failing.txt")
fi
log=$(mktemp /tmp/pbflags-conformance.XXXXXX)
set +e
"$tools/connectconformance" --mode server --conf "$here/server.yaml" "${known[@]}" \
  -- "$CARGO_TARGET_DIR/debug/pbflags-conformance" --protos "$protos" >"$log" 2>&1
rc=$?
set -e
grep -E '^(FAILED|INFO|Total cases|[0-9]+ passed)' "$log" | tail -40
rm -f "$log"
exit $rc
