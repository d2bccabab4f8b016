#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback from the binaries build.sh made.
#
#   start.sh [A|B|C|D] A = etcd + kube-apiserver
#                      B = A + kube-controller-manager (Deployments → Pods, garbage collection)
#                      C = B + kube-scheduler + kwok (fake node; pods Running and Ready)   [default C]
#                      D = B + kube-scheduler + a real node (node.sh: containerd, runc, CNI bridge,
#                          kubelet, kube-proxy, CoreDNS): pods run the images e2e/images/build.sh makes.
#                          The API server listens on the node's bridge address so pods reach it.
#
# A running control plane of the same tier is reused, and any tier serves A and B. Everything lives in $E2E_CP_RUN
# (default /tmp/pbflags-e2e-cp): pki/, logs/, pids/, etcd data, kubeconfigs, and env (source it for
# KUBECONFIG and the ports). Ports: $E2E_CP_PORT_BASE (default 26443) + 0..5. Stop with stop.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tier=${1:-C}
case "$tier" in A|B|C|D) ;; *) echo "usage: start.sh [A|B|C|D]" >&2; exit 64 ;; esac

RUN=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
base=${E2E_CP_PORT_BASE:-26443}
APISERVER_PORT=$base ETCD_PORT=$((base + 1)) ETCD_PEER_PORT=$((base + 2))
KCM_PORT=$((base + 3)) SCHED_PORT=$((base + 4)) KWOK_PORT=$((base + 5))
COMPONENT=start
# shellcheck source=lib.sh
. "$here/lib.sh"

"$here/build.sh"
BIN=$("$here/build.sh" --print-bin)
CACHE=$(dirname "$BIN")

rank() { case "$1" in A) echo 1 ;; B) echo 2 ;; C | D) echo 3 ;; *) echo 0 ;; esac; }
# A running tier serves a request for the same tier, or for A or B (which every tier includes).
serves() { [ "$1" = "$2" ] || [ "$(rank "$2")" -le 2 ] && [ "$(rank "$1")" -ge "$(rank "$2")" ]; }

if [ -f "$RUN/env" ] && alive kube-apiserver; then
  # shellcheck disable=SC1091
  running=$(. "$RUN/env"; echo "$E2E_CP_TIER")
  if serves "$running" "$tier"; then
    log "reusing tier $running control plane in $RUN"
    exit 0
  fi
  log "tier $running is running; stopping it to start tier $tier"
  "$here/stop.sh"
fi

# A control plane that was killed rather than stopped (its API server is gone) may have left a node
# behind: stop.sh cleans whatever remains before the run directory goes.
[ -d "$RUN" ] && "$here/stop.sh"
rm -rf "$RUN"
mkdir -p "$RUN"/{pki,logs,pids}
P=$RUN/pki
start_ts=$SECONDS
# The kubectl built at the pinned version, not whatever the machine has.
export PATH=$BIN:$PATH
# Tier D: the API server listens on the node's bridge address (made here, before it starts), where pods
# reach it through the kubernetes Service; other tiers stay on loopback.
HOST=127.0.0.1
if [ "$tier" = D ]; then
  trap '[ $? = 0 ] || { log "start failed; stopping what started"; "$here/stop.sh"; }' EXIT
  "$here/node.sh" prepare
  HOST=10.244.0.1
fi

# --- PKI: one CA for serving and client certificates, a service-account key pair, static tokens.
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pbflags-e2e-ca" \
  -keyout "$P/ca.key" -out "$P/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$P/apiserver.key" -out "$P/apiserver.csr" 2>/dev/null
cat > "$P/apiserver.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:10.244.0.1
EOF
openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 \
  -extfile "$P/apiserver.ext" -out "$P/apiserver.crt" 2>/dev/null
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
declare -A TOK
for u in admin kcm scheduler kwok; do TOK[$u]=$(openssl rand -hex 24); done
cat > "$P/tokens.csv" <<EOF
${TOK[admin]},e2e-admin,uid-admin,system:masters
${TOK[kcm]},system:kube-controller-manager,uid-kcm,system:masters
${TOK[scheduler]},system:kube-scheduler,uid-sched,system:masters
${TOK[kwok]},kwok,uid-kwok,system:masters
EOF
chmod 600 "$P"/*.key "$P/tokens.csv"

APISERVER_URL=https://$HOST:$APISERVER_PORT
for u in admin kcm scheduler kwok; do kubeconfig "$RUN/$u.kubeconfig" "$u" --token="${TOK[$u]}"; done
KC=$RUN/admin.kubeconfig

# --- tier A
log "starting etcd on 127.0.0.1:$ETCD_PORT"
launch etcd "$BIN/etcd" --name=e2e --data-dir="$RUN/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls="" \
  --unsafe-no-fsync=true --auto-compaction-retention=1 --quota-backend-bytes=2147483648 --log-level=warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
  -keyout "$P/apiserver-kubelet.key" -out "$P/apiserver-kubelet.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >"$P/client.ext"
openssl x509 -req -in "$P/apiserver-kubelet.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 \
  -extfile "$P/client.ext" -out "$P/apiserver-kubelet.crt" 2>/dev/null
if [ "$tier" = D ]; then
  # The kubernetes Service gets the API server's endpoint; the kubelet is reached at the node's address.
  node_flags=(--endpoint-reconciler-type=lease --kubelet-preferred-address-types=InternalIP)
else
  node_flags=(--endpoint-reconciler-type=none)
fi
log "starting kube-apiserver on https://$HOST:$APISERVER_PORT"
launch kube-apiserver "$BIN/kube-apiserver" "${node_flags[@]}" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$HOST" --advertise-address="$HOST" --secure-port="$APISERVER_PORT" \
  --cert-dir="$P" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --kubelet-client-certificate="$P/apiserver-kubelet.crt" --kubelet-client-key="$P/apiserver-kubelet.key" \
  --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
  --enable-priority-and-fairness=false --profiling=false --v=1
wait_for kube-apiserver 90 curl -fsS --cacert "$P/ca.crt" -H "Authorization: Bearer ${TOK[admin]}" \
  "https://$HOST:$APISERVER_PORT/readyz"

if [ "$(rank "$tier")" -ge 2 ]; then
  log "starting kube-controller-manager"
  launch kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$RUN/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --authentication-kubeconfig="$RUN/kcm.kubeconfig" --authorization-kubeconfig="$RUN/kcm.kubeconfig" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
    --leader-elect=false --controllers='*' \
    --root-ca-file="$P/ca.crt" --service-account-private-key-file="$P/sa.key" \
    --use-service-account-credentials=false --kube-api-qps=100 --kube-api-burst=200 --v=1
  wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
fi

if [ "$(rank "$tier")" -ge 3 ]; then
  log "starting kube-scheduler"
  launch kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/scheduler.kubeconfig" --leader-elect=false \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics
  wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz"
fi

if [ "$tier" = D ]; then
  KUBECONFIG=$KC E2E_CP_APISERVER=https://$HOST:$APISERVER_PORT "$here/node.sh" start
fi

if [ "$tier" = C ]; then
  log "starting kwok and its fake node"
  # Pod addresses from a loopback range: the operator's probe of a fake pod (which runs nothing)
  # is refused at once instead of waiting out a timeout on an unrouted address.
  launch kwok "$BIN/kwok" --kubeconfig="$RUN/kwok.kubeconfig" --config="$CACHE/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --cidr=127.244.0.0/16 --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$KWOK_PORT"
  wait_for kwok 60 curl -fsS "http://127.0.0.1:$KWOK_PORT/healthz"
  kubectl --kubeconfig "$KC" apply -f "$here/manifests/fake-node.yaml" >/dev/null
  deadline=$((SECONDS + 60))
  until kubectl --kubeconfig "$KC" wait --for=condition=Ready node/kwok-node-0 --timeout=5s >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "fake node not Ready"; tail -n 30 "$RUN/logs/kwok.log" >&2; exit 1; }
  done
fi

cat > "$RUN/env" <<EOF
export E2E_CP_TIER=$tier
export E2E_CP_RUN=$RUN
export E2E_CP_BIN=$BIN
export KUBECONFIG=$KC
export E2E_CP_APISERVER=https://$HOST:$APISERVER_PORT
export PATH=$BIN:\$PATH
EOF
log "tier $tier ready in $((SECONDS - start_ts))s; source $RUN/env"
