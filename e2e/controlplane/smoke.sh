#!/usr/bin/env bash
# Proves each tier of the local control plane works: CRUD, server-side apply, watch, CRDs (tier A);
# Deployments → ReplicaSets → Pods and garbage collection (tier B); scheduling and kwok's Running,
# Ready pods and an Available Deployment (tier C); and helm installing a chart.
# Starts tier C if needed (reusing a running one). Prints "N passed, M failed".
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/start.sh" C || exit 1
# shellcheck disable=SC1091
. "${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}/env"

ns=smoke-$$
passed=0 failed=0
check() { # description cmd...
  local what=$1; shift
  if out=$("$@" 2>&1); then passed=$((passed + 1)); echo "ok   $what"
  else failed=$((failed + 1)); echo "FAIL $what"; echo "$out" | tail -n 10 | sed 's/^/     /'; fi
}
k() { kubectl --request-timeout=20s "$@"; }
until_ok() { # seconds cmd...: retries cmd every 0.5 s
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.5; done
}

check "server version is the pinned one" bash -c "kubectl version -o json | grep -q '\"gitVersion\": \"$(. "$here/versions.env"; echo "$K8S_VERSION")\"'"
check "namespace create" k create namespace "$ns"
check "CRUD: create a ConfigMap" k -n "$ns" create configmap crud --from-literal=a=1
check "CRUD: read it back" bash -c "kubectl -n $ns get configmap crud -o jsonpath='{.data.a}' | grep -qx 1"
check "CRUD: update it" k -n "$ns" patch configmap crud --type merge -p '{"data":{"a":"2"}}'
check "CRUD: delete it" k -n "$ns" delete configmap crud
check "server-side apply with a field manager" bash -c "
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: $ns}\ndata: {k: v}\n' |
  kubectl apply --server-side --field-manager=smoke -f - &&
  kubectl -n $ns get configmap ssa -o jsonpath='{.metadata.managedFields[0].manager}' | grep -qx smoke"
check "watch delivers an event" bash -c "
  (timeout 15 kubectl -n $ns get configmaps --watch-only -o name > '$E2E_CP_RUN/watch.out' &) ;
  sleep 2; kubectl -n $ns create configmap watched >/dev/null;
  for i in \$(seq 1 40); do grep -q configmap/watched '$E2E_CP_RUN/watch.out' && exit 0; sleep 0.25; done; exit 1"
check "CRD install and Established" bash -c "
  kubectl apply -f '$here/testdata/smoke-crd.yaml' >/dev/null &&
  kubectl wait --for=condition=Established crd/widgets.smoke.pbflags.dev --timeout=30s"
check "custom resource CRUD" bash -c "
  printf 'apiVersion: smoke.pbflags.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: $ns}\nspec: {size: 3}\n' | kubectl apply -f - &&
  kubectl -n $ns get widget w -o jsonpath='{.spec.size}' | grep -qx 3"
check "garbage collection of an owned object" bash -c "
  kubectl -n $ns create configmap owner >/dev/null &&
  uid=\$(kubectl -n $ns get configmap owner -o jsonpath='{.metadata.uid}') &&
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  namespace: $ns\n  ownerReferences:\n  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: '\$uid'}\n' | kubectl apply -f - >/dev/null &&
  kubectl -n $ns delete configmap owner >/dev/null &&
  for i in \$(seq 1 60); do kubectl -n $ns get configmap child >/dev/null 2>&1 || exit 0; sleep 0.5; done; exit 1"
check "Deployment creates a ReplicaSet and Pods" bash -c "
  kubectl -n $ns create deployment web --image=example.invalid/web:1 --replicas=2 >/dev/null &&
  for i in \$(seq 1 60); do [ \$(kubectl -n $ns get pods -l app=web -o name | wc -l) -eq 2 ] && exit 0; sleep 0.5; done; exit 1"
check "Deployment becomes Available with kwok" k -n "$ns" wait deploy/web --for=condition=Available --timeout=90s
# Pod addresses come from kwok's range on tier C (loopback, 127.244.0.0/16), the bridge's on tier D.
check "pods are Running with a pod IP" bash -c "
  kubectl -n $ns get pods -l app=web -o jsonpath='{range .items[*]}{.status.phase} {.status.podIP}{\"\n\"}{end}' |
  awk '\$1 != \"Running\" || \$2 !~ /^(10|127)\\.244\\./ { bad=1 } END { exit bad }'"
check "deleting the Deployment removes its pods" bash -c "
  kubectl -n $ns delete deployment web >/dev/null &&
  for i in \$(seq 1 120); do [ -z \"\$(kubectl -n $ns get pods -l app=web -o name)\" ] && exit 0; sleep 0.5; done; exit 1"
check "helm installs a chart" bash -c "
  helm install smoke '$here/testdata/smoke-chart' -n $ns --set greeting=hi --wait --timeout 60s >/dev/null &&
  kubectl -n $ns get configmap smoke-smoke -o jsonpath='{.data.greeting}' | grep -qx hi &&
  helm uninstall smoke -n $ns >/dev/null && ! kubectl -n $ns get configmap smoke-smoke >/dev/null 2>&1"
check "namespace deletion completes" k delete namespace "$ns" --wait --timeout=90s
kubectl delete crd widgets.smoke.pbflags.dev >/dev/null 2>&1

echo "controlplane smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
