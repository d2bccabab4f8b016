#!/usr/bin/env bash
# The chart's rendered manifests checked with kubeconform (built from Go modules, cached outside the
# repository) in strict mode, for the main value combinations, against JSON schemas made from the
# running control plane's own OpenAPI v3 (no schema download: this machine reaches no schema site).
# Needs a running control plane (e2e/controlplane/start.sh); CRDs the control plane lacks (the Prometheus
# Operator's ServiceMonitor and PodMonitor) are reported as skipped, not passed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/scripts/lib.sh"
kubeconform=$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform v0.8.0)
# The running control plane (e2e/controlplane/start.sh writes its settings to its run directory).
if [ -z "${E2E_CP_BIN:-}" ]; then
  env_file=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}/env
  [ -f "$env_file" ] || { echo "kubeconform/run.sh: no control plane; start one: e2e/controlplane/start.sh C" >&2; exit 69; }
  # shellcheck disable=SC1090 # written by start.sh
  . "$env_file"
fi
helm=${E2E_CP_BIN:?}/helm
kubectl=$E2E_CP_BIN/kubectl

# The FlagEvaluator CRD as this checkout has it, so the control plane serves its schema.
"$kubectl" apply --server-side --force-conflicts -f "$repo/crds/flagevaluators.pbflags.dev.yaml" >/dev/null
"$kubectl" wait --for=condition=Established crd/flagevaluators.pbflags.dev --timeout=60s >/dev/null

work=$(mktemp -d /tmp/pbflags-kubeconform.XXXXXX)
trap 'rm -rf "$work"' EXIT
# One schema file per kind, named as kubeconform looks them up: <kind>-<group>-<version>.json.
for gv in api/v1 apis/apps/v1 apis/policy/v1 apis/rbac.authorization.k8s.io/v1 \
  apis/apiextensions.k8s.io/v1 apis/networking.k8s.io/v1 apis/autoscaling/v2 apis/pbflags.dev/v1alpha1; do
  "$kubectl" get --raw "/openapi/v3/$gv" >"$work/openapi.json"
  python3 "$here/schemas.py" "$work/openapi.json" "$work/schemas"
done
version_of() { "$kubectl" version -o json | python3 -c 'import json,sys; v=json.load(sys.stdin)["serverVersion"]; print(v["major"]+"."+v["minor"].rstrip("+")+".0")'; }
kube_version=$(version_of)

rc=0
for values in "" \
  "--set replicaCount=2 --set podLabels.team=a --set extraArgs={--log-level=debug} --set extraEnv[0].name=A --set extraEnv[0].value=b" \
  "--set rbac.watchNamespaces={team-a,team-b} --set crds.keep=false" \
  "--set networkPolicy.enabled=true --set networkPolicy.egressCidrs={10.0.0.0/8} --set metrics.serviceMonitor.enabled=true --set metrics.evaluatorPodMonitor.enabled=true" \
  "--set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; do
  echo "== values: ${values:-(defaults)}"
  # shellcheck disable=SC2086 # the values are separate arguments
  "$helm" template pbflags "$repo/charts/pbflags-operator" --namespace pbflags-system \
    --kube-version "$kube_version" $values >"$work/rendered.yaml"
  "$kubeconform" -strict -summary -output text \
    -schema-location "$work/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -skip ServiceMonitor,PodMonitor "$work/rendered.yaml" || rc=1
done
# The example FlagEvaluator against the CRD's schema, as the control plane serves it.
echo "== charts/pbflags-operator/examples/flagevaluator.yaml"
"$kubeconform" -strict -summary -output text \
  -schema-location "$work/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  "$repo/charts/pbflags-operator/examples/flagevaluator.yaml" || rc=1
exit $rc
