#!/usr/bin/env bash
# Runs every test tier. Installs or builds what the tiers need (cached outside the repository).
#   scripts/test.sh            all tiers
#   scripts/test.sh --quick    formatting, lints and unit/in-process tests only
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

step "formatting"
cargo fmt --all --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and in-process tests"
cargo test --workspace --locked --exclude pbflags-e2e

[ "${1:-}" = "--quick" ] && exit 0

step "local Kubernetes control plane (built from Go modules; cached after the first build)"
cp_run=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
if [ -f "$cp_run/pids/kube-apiserver" ] && kill -0 "$(cat "$cp_run/pids/kube-apiserver")" 2>/dev/null; then
  cp_started_here=0
else
  cp_started_here=1
  trap '[ $cp_started_here = 1 ] && e2e/controlplane/stop.sh' EXIT
fi
e2e/controlplane/build.sh
e2e/controlplane/start.sh C
e2e/controlplane/smoke.sh
cargo test --locked -p pbflags-e2e
