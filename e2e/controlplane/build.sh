#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok, helm,
# kubectl) and the real node's pieces (kubelet, kube-proxy, CoreDNS, CNI plugins, nodetool) from Go modules
# at the versions pinned in versions.env, into a cache outside the repository.
#
#   build.sh           build what is missing (a second run with a matching stamp takes well under a second)
#   build.sh --init    (re)generate gomod/*/go.mod and go.sum from versions.env, then build
#   build.sh --print-bin   print the binary directory and exit
#
# Cache: ${E2E_CP_CACHE:-$HOME/.cache/pbflags-e2e-controlplane}/<key>/bin, key derived from versions.env + go version.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

export GOTOOLCHAIN=local
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0

gover=$(go env GOVERSION)
key=$(printf '%s\n%s\n' "$(cat "$here/versions.env")" "$gover" | sha256sum | cut -c1-16)
cache=${E2E_CP_CACHE:-$HOME/.cache/pbflags-e2e-controlplane}/$key
BIN=$cache/bin
if [ "${1:-}" = "--print-bin" ]; then echo "$BIN"; exit 0; fi

init=0
[ "${1:-}" = "--init" ] && init=1

log() { printf '[controlplane/build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

stamp=$cache/stamp
stamp_of() {
  { cat "$here/versions.env" "$here"/gomod/*/go.sum "$here"/gomod/coredns/main.go "$here"/nodetool/* 2>/dev/null || true; } |
    sha256sum | cut -c1-16
}
want_stamp=$(stamp_of)
if [ $init = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  log "up to date: $BIN"
  exit 0
fi
mkdir -p "$BIN"

# --- Kubernetes: k8s.io/kubernetes pins its staging modules to v0.0.0 with ./staging replaces, which a
# consumer cannot see; each staging module is published as v0.<minor>.<patch>, so pin every one of them.
k8s_init() {
  local dir=$here/gomod/k8s modfile sver mods
  modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  sver="v0.${K8S_VERSION#v1.}"
  mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/.*#\1#p' "$modfile")
  [ -n "$mods" ] || { log "no staging replaces found in $modfile"; exit 1; }
  rm -f "$dir/go.mod" "$dir/go.sum"
  (cd "$dir"
    go mod init e2e.local/controlplane/k8s >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$K8S_VERSION"
    for m in $mods; do go mod edit -replace="$m=$m@$sver"; done
    go mod edit -tool=k8s.io/kubernetes/cmd/kube-apiserver \
      -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
      -tool=k8s.io/kubernetes/cmd/kube-scheduler \
      -tool=k8s.io/kubernetes/cmd/kubelet -tool=k8s.io/kubernetes/cmd/kube-proxy \
      -tool=k8s.io/kubernetes/cmd/kubectl
    go mod tidy)
}

# etcd, kwok and helm each get their own module so their dependency graphs are resolved apart.
tool_init() { # dir module@version
  local dir=$here/gomod/$1
  mkdir -p "$dir"
  rm -f "$dir/go.mod" "$dir/go.sum"
  (cd "$dir" && go mod init "e2e.local/controlplane/$1" >/dev/null 2>&1 && go get -tool "$2" && go mod tidy)
}

if [ $init = 1 ] || [ ! -f "$here/gomod/k8s/go.mod" ]; then
  log "generating go.mod files"
  k8s_init
  tool_init etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  tool_init kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  tool_init helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  # CoreDNS: our own main.go (only the plugins cluster DNS needs) against the pinned module.
  (cd "$here/gomod/coredns" && rm -f go.sum && go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION" && go mod tidy)
  tool_init cni "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION"
  (cd "$here/gomod/cni" && go mod edit -tool=github.com/containernetworking/plugins/plugins/ipam/host-local \
    -tool=github.com/containernetworking/plugins/plugins/main/loopback \
    -tool=github.com/containernetworking/plugins/plugins/meta/portmap && go mod tidy)
  want_stamp=$(stamp_of)
fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldf="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  # A fixed build date keeps the link step cacheable; a correct version keeps emulation-version checks happy.
  ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
done

start=$SECONDS
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl $K8S_VERSION"
# One go build for all six shares their compiled packages.
(cd "$here/gomod/k8s" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldf" -o "$BIN/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
log "building etcd $ETCD_VERSION"
(cd "$here/gomod/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
log "building kwok $KWOK_VERSION"
(cd "$here/gomod/kwok" && go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok)
log "building helm $HELM_VERSION"
(cd "$here/gomod/helm" && go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm)
log "building CoreDNS $COREDNS_VERSION, CNI plugins $CNI_PLUGINS_VERSION, nodetool"
(cd "$here/gomod/coredns" && go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" .)
mkdir -p "$cache/cni"
(cd "$here/gomod/cni" && go build -trimpath -ldflags "-s -w" -o "$cache/cni/" \
  github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/ipam/host-local \
  github.com/containernetworking/plugins/plugins/main/loopback github.com/containernetworking/plugins/plugins/meta/portmap)
(cd "$here/nodetool" && go build -trimpath -ldflags "-s -w" -o "$BIN/nodetool" .)

# kwok ships no built-in stages; take the "fast" node and pod stages from the module itself.
kwok_dir=$(cd "$here/gomod/kwok" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  cat "$kwok_dir/kustomize/stage/$f"; echo '---'
done > "$cache/kwok-stages.yaml"

echo "$want_stamp" > "$stamp"
log "done in $((SECONDS - start))s: $BIN ($(du -sh "$BIN" | cut -f1))"
