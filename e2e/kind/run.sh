#!/usr/bin/env bash
# The end-to-end tests on a kind cluster, for a machine with Docker, kind, helm and kubectl.
# (The project's CI machines have no Docker engine; there the same tests run against the local
# control plane in e2e/controlplane.)
#
#   e2e/kind/run.sh            create the cluster, build and load both images, helm install, test
#   e2e/kind/run.sh --delete   delete the cluster afterwards
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
cluster=${KIND_CLUSTER:-pbflags-e2e}
tag=${PBFLAGS_IMAGE_TAG:-e2e}

kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
docker build -f evaluator/Dockerfile -t "pbflags-evaluator:$tag" .
docker build -f operator/Dockerfile -t "pbflags-operator:$tag" .
kind load docker-image --name "$cluster" "pbflags-evaluator:$tag" "pbflags-operator:$tag"

kubeconfig=$(mktemp)
kind get kubeconfig --name "$cluster" > "$kubeconfig"
export KUBECONFIG=$kubeconfig
helm upgrade --install pbflags charts/pbflags-operator -n pbflags-system --create-namespace --wait \
  --set image.repository=pbflags-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set evaluatorImage="pbflags-evaluator:$tag"

# The shared tests: same code as on the local control plane, with the chart's operator.
export PBFLAGS_E2E_KUBECONFIG=$kubeconfig PBFLAGS_E2E_EXTERNAL_OPERATOR=1
# The tier D tests (user_path, node) use the local node itself: its containerd, its bridge address.
cargo test --workspace --locked --test controlplane --test cluster --test chart_templates --test chart

[ "${1:-}" = "--delete" ] && kind delete cluster --name "$cluster"
exit 0
