#!/usr/bin/env bash
# Runs every test tier. Installs or builds what the tiers need (cached outside the repository).
#   scripts/test.sh            all tiers
#   scripts/test.sh --quick    formatting, lints and unit/in-process tests only
#   PBFLAGS_TEST_NODE=0 scripts/test.sh   all tiers but D (the real node)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

prune_stale_executables

step "formatting"
cargo fmt --all --check

step "clippy (warnings are errors)"
within 30 cargo clippy --workspace --all-targets --locked -- -D warnings

cleanup=()
trap 'rc=$?; step_timings; for c in "${cleanup[@]}"; do eval "$c"; done; exit $rc' EXIT

step "throwaway PostgreSQL for the database tests"
pg_dir=$(mktemp -d /tmp/pbflags-test-pg.XXXXXX)
PBFLAGS_TEST_PG_URL=$(scripts/pg.sh start "$pg_dir")
export PBFLAGS_TEST_PG_URL
cleanup+=("scripts/pg.sh stop '$pg_dir'; rm -rf '$pg_dir'")

# Every cargo test below selects the whole workspace and picks test targets by name, so features
# resolve the same way each time and the tiers share one build. Test target names are unique across
# the workspace; the ones that need a browser, a cluster (or helm) are named here, every other one
# is quick.
own_step_tests=(browser chart_templates controlplane cluster chart user_path node)
all_tests=$(ls ./*/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//' | sort)
dups=$(uniq -d <<<"$all_tests")
[ -z "$dups" ] || { echo "test target names must be unique across the workspace: $dups" >&2; exit 1; }
quick_tests=()
for t in $all_tests; do
  [[ " ${own_step_tests[*]} " == *" $t "* ]] || quick_tests+=(--test "$t")
done
tests() { within "$1" cargo test --workspace --locked "${@:2}"; }

step "unit, in-process and PostgreSQL tests; reconcile decisions against a fake API server"
tests 30 --lib --bins "${quick_tests[@]}"

[ "${1:-}" = "--quick" ] && exit 0

step "the admin web UI in headless Chromium through ChromeDriver (Debian's chromium, chromium-driver)"
browser_debs=()
for p in chromium chromium-driver; do dpkg -s "$p" >/dev/null 2>&1 || browser_debs+=("$p"); done
if [ ${#browser_debs[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive within 10 apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive within 10 apt-get install -y -qq "${browser_debs[@]}" >&2
fi
tests 10 --test browser

step "fuzzing: descriptor parsing, request decoding on every protocol, the YAML configuration (30 s each)"
within 30 scripts/fuzz.sh 30

step "the main job: root + proxy stack on its own PostgreSQL (scripts/stack.sh --once)"
stack_dir=$(mktemp -d /tmp/pbflags-test-stack.XXXXXX)
cleanup+=("rm -rf '$stack_dir'")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PBFLAGS_STACK_DIR=$stack_dir PBFLAGS_ROOT_PORT=$(free_port) PBFLAGS_PROXY_PORT=$(free_port) \
  within 25 scripts/stack.sh --once

step "fault soak: 60 s of paced load through proxy → root → PostgreSQL while both are frozen, stopped and killed"
within 10 scripts/soak.sh 60

step "interop: connect-go over Connect, gRPC and gRPC-Web against a root and a proxy, cleartext and TLS; curl"
within 20 e2e/interop/run.sh

step "Connect conformance suite: the server (unary Connect, gRPC, gRPC-Web; HTTP/1.1, HTTP/2; TLS; proto, JSON; gzip) and the upstream client"
within 15 e2e/conformance/run.sh

step "local Kubernetes control plane (built from Go modules; cached after the first build)"
cp_run=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
# A control plane the developer already runs is reused and left running; one started here is stopped.
if ! { [ -f "$cp_run/pids/kube-apiserver" ] && kill -0 "$(cat "$cp_run/pids/kube-apiserver")" 2>/dev/null; }; then
  cleanup+=("e2e/controlplane/stop.sh")
fi
within 45 e2e/controlplane/build.sh
step "the Helm chart without a cluster: lint, rendered templates, values schema"
tests 10 --test chart_templates
step "control plane tier C: start, smoke, e2e library tests"
within 5 e2e/controlplane/start.sh C
within 5 e2e/controlplane/smoke.sh
tests 15 --test controlplane
step "the operator against the control plane"
tests 25 --test cluster
step "the Helm chart on the control plane: dry run, install with least privilege, uninstall"
tests 15 --test chart
step "the chart's rendered manifests with kubeconform (strict; schemas from the control plane's OpenAPI)"
within 10 e2e/kubeconform/run.sh

[ "${PBFLAGS_TEST_NODE:-1}" = 0 ] && exit 0

step "tier D: a real node (kubelet, containerd, runc, CNI bridge, kube-proxy, CoreDNS); images built without Docker"
# Tier D replaces a running tier C: both use the same run directory and ports.
cleanup+=("e2e/controlplane/stop.sh")
within 30 e2e/images/build.sh evaluator >/dev/null
within 10 e2e/images/build.sh operator >/dev/null
within 10 e2e/controlplane/start.sh D
step "the README's path and day-two operations on the real node"
tests 25 --test user_path --test node -- --test-threads=1
step "stopping the real node leaves nothing on the host"
within 5 e2e/controlplane/stop.sh --check
