#!/usr/bin/env bash
# The real node of tier D: containerd (Debian) with runc (Debian), CNI plugins, kubelet and kube-proxy
# (built from the pinned Kubernetes module), and CoreDNS as a host process behind the kube-dns Service.
# Called by start.sh and stop.sh; not meant to be run by hand.
#
#   node.sh prepare    record the host state stop.sh restores, create the node's bridge (before the API
#                      server, which listens on the bridge's address so pods can reach it)
#   node.sh start      start containerd, import the sandbox image, start kubelet, kube-proxy and CoreDNS
#   node.sh import TAR BASE-NAME   import an OCI image tar built by e2e/images/build.sh
#   node.sh stop       stop all of it and restore the host: no process, mount, network namespace, veth,
#                      bridge, nftables table, cgroup or sysctl change is left behind
#   node.sh snapshot DIR   copy the host state recorded by prepare to DIR (stop removes the run directory)
#   node.sh leftovers DIR  print what of the node is still on the host, judged against the state in DIR
#                          (empty after stop)
#
# Everything lives on a bridge and in network namespaces the node creates: pods get addresses in
# $POD_CIDR on $BRIDGE, Services in 10.96.0.0/16, and no route or NAT leads from them to the outside.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=${E2E_CP_RUN:-/tmp/pbflags-e2e-cp}
N=$RUN/node
BRIDGE=pbfe2e0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
DNS_IP=10.96.0.10
NODE_NAME=pbflags-node-0
CGROUP_ROOT=pbflags-e2e
SANDBOX_IMAGE=docker.io/library/nodetool:1
HOST_DIRS="/var/lib/cni /run/netns /run/containerd /var/log/containers /var/log/pods"
SYSCTLS="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory kernel.panic kernel.panic_on_oops"
COMPONENT=node
# shellcheck source=lib.sh
. "$here/lib.sh"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ctr_() { ctr --address "$N/containerd/containerd.sock" -n k8s.io "$@"; }
cgroup_dirs() { for h in /sys/fs/cgroup/*/; do [ -d "$h$CGROUP_ROOT" ] && echo "$h$CGROUP_ROOT"; done; return 0; }

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  command -v nft >/dev/null || missing+=(nftables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v umoci >/dev/null || missing+=(umoci)
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

prepare() {
  install_packages
  mkdir -p "$N/host-before"
  for s in $SYSCTLS; do sysctl -n "$s" >"$N/host-before/$s" 2>/dev/null || true; done
  nft list tables 2>/dev/null | sort >"$N/host-before/nft-tables"
  # Host directories the runtime, CNI and kubelet create when missing; stop removes those it created.
  local d
  for d in $HOST_DIRS; do [ -e "$d" ] && echo "$d"; done >"$N/host-before/dirs"
  if ip link show "$BRIDGE" >/dev/null 2>&1; then log "bridge $BRIDGE exists: stop the other node first"; exit 1; fi
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  # Replies from a pod behind a Service on the same bridge must pass conntrack to be un-NATed.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  for h in /sys/fs/cgroup/*/; do [ "$h" = /sys/fs/cgroup/unified/ ] || mkdir -p "$h$CGROUP_ROOT"; done
  # A new cpuset cgroup starts with no CPUs and no memory nodes: give it its parent's.
  local c=/sys/fs/cgroup/cpuset
  if [ -d "$c/$CGROUP_ROOT" ]; then
    cat "$c/cpuset.cpus" >"$c/$CGROUP_ROOT/cpuset.cpus"
    cat "$c/cpuset.mems" >"$c/$CGROUP_ROOT/cpuset.mems"
  fi
}

start() {
  local BIN CACHE P=$RUN/pki
  BIN=$("$here/build.sh" --print-bin)
  CACHE=$(dirname "$BIN")
  mkdir -p "$N"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,coredns}

  # --- containerd: its own root, state and sockets; CRI with runc (cgroupfs), CNI from the cache.
  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$N/containerd/containerd.sock"
[ttrpc]
  address = "$N/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's oom_score_adj of -998 would fail every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CACHE/cni"
    conf_dir = "$N/cni/net.d"
EOF
  cat >"$N/cni/net.d/10-pbflags-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pbflags-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
  log "starting containerd $(containerd --version | awk '{print $3}') with runc $(runc --version | awk 'NR==1{print $3}')"
  launch containerd containerd --config "$N/containerd/config.toml"
  wait_for containerd 30 ctr_ version
  import "$("$here/../images/build.sh" nodetool)" docker.io/library/nodetool >/dev/null

  # --- kubelet: a node identity from the cluster CA, webhook authn/authz, everything under $N.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
    -keyout "$P/kubelet.key" -out "$P/kubelet.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$P/client.ext"
  openssl x509 -req -in "$P/kubelet.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 \
    -extfile "$P/client.ext" -out "$P/kubelet.crt" 2>/dev/null
  APISERVER_URL=$E2E_CP_APISERVER kubeconfig "$N/kubelet.kubeconfig" kubelet \
    --client-certificate="$P/kubelet.crt" --client-key="$P/kubelet.key" --embed-certs=true
  local kubelet_port healthz_port
  kubelet_port=$(free_port); healthz_port=$(free_port)
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This kernel mounts cgroup v1 hierarchies.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$N/containerd/containerd.sock
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
podCIDR: $POD_CIDR
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: /dev/null
failSwapOn: false
podLogsDir: $N/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
EOF
  log "starting kubelet on $NODE_IP:$kubelet_port (node $NODE_NAME)"
  launch kubelet "$BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" \
    --root-dir="$N/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  local deadline=$((SECONDS + 90))
  until kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1; do
    if ! alive kubelet || [ $SECONDS -ge $deadline ]; then
      log "node not Ready; kubelet log:"; tail -n 40 "$RUN/logs/kubelet.log" >&2; return 1
    fi
    sleep 1
  done

  # --- kube-proxy (nftables mode) for ClusterIP Services.
  local proxy_health proxy_metrics
  proxy_health=$(free_port); proxy_metrics=$(free_port)
  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $RUN/admin.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$proxy_health
metricsBindAddress: 127.0.0.1:$proxy_metrics
# Leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0}
EOF
  log "starting kube-proxy (nftables)"
  launch kube-proxy "$BIN/kube-proxy" --config="$N/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 curl -fsS "http://127.0.0.1:$proxy_health/healthz"

  # --- CoreDNS on the node's address, behind the kube-dns Service (a selector-less Service and its
  # EndpointSlice: the way a pod reaches anything that runs beside the cluster).
  local dns_port dns_health dns_ready
  dns_port=$(free_port); dns_health=$(free_port); dns_ready=$(free_port)
  cat >"$N/coredns/Corefile" <<EOF
.:$dns_port {
    bind $NODE_IP
    errors
    health 127.0.0.1:$dns_health
    ready 127.0.0.1:$dns_ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $RUN/admin.kubeconfig e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  log "starting CoreDNS on $NODE_IP:$dns_port"
  launch coredns "$BIN/coredns" -conf "$N/coredns/Corefile"
  wait_for coredns 60 curl -fsS "http://127.0.0.1:$dns_ready/ready"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: $dns_port}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: $dns_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: pbflags-e2e}
addressType: IPv4
ports:
- {name: dns, port: $dns_port, protocol: UDP}
- {name: dns-tcp, port: $dns_port, protocol: TCP}
endpoints:
- addresses: [$NODE_IP]
EOF
}

# import TAR BASE-NAME: the image is named BASE-NAME:<tag recorded in the layout>.
import() {
  ctr_ images import --base-name "$2" "$1" >&2
  ctr_ images ls -q | grep "^$2:" >&2
}

stop() {
  [ -d "$N" ] || return 0
  stop_pid coredns
  stop_pid kube-proxy
  [ -f "$N/kube-proxy.yaml" ] && "$("$here/build.sh" --print-bin)/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop_pid kubelet
  # Every pod sandbox and container goes with its shim, removed through containerd itself.
  local ids="" all=""
  if alive containerd; then
    all=$(ctr_ containers ls -q 2>/dev/null || true)
    ids=$(ctr_ tasks ls -q 2>/dev/null || true)
    for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do
      for _ in $(seq 1 50); do ctr_ tasks ls -q 2>/dev/null | grep -qx "$id" || break; ctr_ tasks delete "$id" >/dev/null 2>&1 || sleep 0.1; done
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # Shims outlive containerd by design; each is ours if its command line names our socket.
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $N/containerd/containerd.sock" || true); do
    kill -9 "$p" 2>/dev/null || true
  done
  # Container processes left by a node that was killed rather than stopped: every process in the
  # node's cgroup.
  local d pass
  for pass in 1 2 3; do
    for d in $(cgroup_dirs); do
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    sleep 0.2
  done
  # Pod network namespaces: each one whose veth peers sit on our bridge.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    if ip netns exec "$ns" ip -o addr 2>/dev/null | grep -q " ${POD_CIDR%.*}\."; then
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$v" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # Mounts under the run directory (pod volumes, the kubelet's root, overlay snapshots), deepest first.
  awk -v r="$N" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  # runc's state, and containerd's default run directory, when nothing else of containerd runs.
  pgrep -x containerd >/dev/null || rm -rf /run/containerd
  for d in $(cgroup_dirs); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  if [ -f "$N/host-before/nft-tables" ]; then
    comm -13 "$N/host-before/nft-tables" <(nft list tables 2>/dev/null | sort) | while read -r _ fam name; do
      nft delete table "$fam" "$name" 2>/dev/null || true
    done
  fi
  conntrack -D -s "$POD_CIDR" >/dev/null 2>&1 || true
  conntrack -D -d "$POD_CIDR" >/dev/null 2>&1 || true
  find /var/log/containers -maxdepth 1 -lname "$N/*" -delete 2>/dev/null || true
  # CNI's result cache of the sandboxes that were not torn down through CNI.
  for id in $all; do rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true; done
  for d in $HOST_DIRS; do
    grep -qxF "$d" "$N/host-before/dirs" 2>/dev/null || find "$d" -depth -type d -empty -delete 2>/dev/null || true
  done
  for s in $SYSCTLS; do
    [ -s "$N/host-before/$s" ] && sysctl -qw "$s=$(cat "$N/host-before/$s")" 2>/dev/null || true
  done
}

# What of the node is left on the host: processes, mounts, namespaces, links, tables, cgroups, sysctls.
leftovers() {
  local b=$1
  pgrep -af "$N/|$BRIDGE|kubelet --config|kube-proxy --config|coredns -conf" | grep -v "node.sh leftovers" || true
  grep -F " $N" /proc/self/mountinfo | awk '{print "mount " $5}' || true
  ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print "veth " $2}'
  ip link show "$BRIDGE" >/dev/null 2>&1 && echo "bridge $BRIDGE"
  ip -o addr 2>/dev/null | grep -F " ${NODE_IP}/" | awk '{print "address on " $2}'
  ip netns list 2>/dev/null | awk '/^cni-/{print "netns " $1}'
  if [ -f "$b/nft-tables" ]; then
    comm -13 "$b/nft-tables" <(nft list tables 2>/dev/null | sort) | sed 's/^/nft /'
  fi
  for d in $(cgroup_dirs); do echo "cgroup $d"; done
  for d in $HOST_DIRS; do [ -e "$d" ] && ! grep -qxF "$d" "$b/dirs" && echo "directory $d"; done
  for s in $SYSCTLS; do
    [ -s "$b/$s" ] && [ "$(sysctl -n "$s" 2>/dev/null)" != "$(cat "$b/$s")" ] && echo "sysctl $s=$(sysctl -n "$s")"
  done
  return 0
}

case "${1:-}" in
prepare) prepare ;;
start) start ;;
import) import "$2" "$3" ;;
stop) stop ;;
snapshot) cp -r "$N/host-before/." "$2" ;;
leftovers) leftovers "$2" ;;
*) echo "usage: node.sh prepare|start|import TAR BASE-NAME|stop|snapshot DIR|leftovers DIR" >&2; exit 64 ;;
esac
