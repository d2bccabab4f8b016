#!/usr/bin/env bash
# Interop with real clients: a Go program using connect-go (code generated from proto/ by protoc,
# protoc-gen-go and protoc-gen-connect-go) calls every RPC over Connect (proto and JSON), gRPC and
# gRPC-Web against a root evaluator and a proxy in front of it, in cleartext and over TLS (a root and
# a proxy with certificates from a throwaway CA, the proxy calling its root over https); curl checks
# Connect JSON.
# Installs protoc and openssl (Debian packages) if missing; Go tools are cached outside the repository.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/scripts/lib.sh"
export GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false"
tools=${PBFLAGS_GO_TOOLS:-$HOME/.cache/pbflags/go-tools}
mkdir -p "$tools"

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Plugin versions follow the module's go.mod, so the generated code matches the runtime it uses.
(cd "$here" && GOBIN="$tools" go install google.golang.org/protobuf/cmd/protoc-gen-go \
  && GOBIN="$tools" go install connectrpc.com/connect/cmd/protoc-gen-connect-go)
rm -rf "$here/gen"
PATH="$tools:$PATH" protoc -I "$repo/proto" \
  --go_out="$here" --go_opt=module=github.com/SpotlightGOV/pbflags \
  --connect-go_out="$here" --connect-go_opt=module=github.com/SpotlightGOV/pbflags \
  pbflags/options.proto pbflags/v1/types.proto pbflags/v1/evaluator.proto pbflags/v1/changes.proto \
  pbflags/v1/admin.proto
(cd "$here" && go build -o "$tools/interop" .)

cargo build --locked -p pbflags-evaluator --bin pbflags-evaluator
bin=$CARGO_TARGET_DIR/debug/pbflags-evaluator
dir=$(mktemp -d /tmp/pbflags-interop.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$repo/scripts/pg.sh" stop "$dir/pg"; rm -rf "$dir"
}
trap cleanup EXIT
export PBFLAGS_DATABASE; PBFLAGS_DATABASE=$("$repo/scripts/pg.sh" start "$dir/pg")
"$bin" migrate >/dev/null
"$bin" sync --descriptors "$repo/proto/example/descriptors.pb" >/dev/null
"$bin" flags set notifications/2 --value weekly --actor interop >/dev/null
"$bin" flags kill notifications/3 --actor interop >/dev/null
"$bin" flags override set notifications/1 user-100 --value false --actor interop >/dev/null

root=127.0.0.1:${PBFLAGS_INTEROP_ROOT_PORT:-$(free_port)}
admin=127.0.0.1:$(free_port)
admin_token=interop-editor-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
echo "interop editor $admin_token" >"$dir/tokens"
proxy=127.0.0.1:${PBFLAGS_INTEROP_PROXY_PORT:-$(free_port)}
"$bin" serve --descriptors "$repo/proto/example/descriptors.pb" --listen "$root" --log-level warn \
  --admin-listen "$admin" --admin-token-file "$dir/tokens" >"$dir/root.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS "http://$root/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
env -u PBFLAGS_DATABASE "$bin" serve --descriptors "$repo/proto/example/descriptors.pb" --listen "$proxy" \
  --server "http://$root" --log-level warn >"$dir/proxy.log" 2>&1 &
pids+=($!)
# TLS: a CA and a localhost certificate, a TLS root and a TLS proxy of it over https.
test_certs "$dir"
tls_root=localhost:${PBFLAGS_INTEROP_TLS_ROOT_PORT:-$(free_port)}
tls_proxy=localhost:${PBFLAGS_INTEROP_TLS_PROXY_PORT:-$(free_port)}
tls=(--tls-cert "$dir/tls.crt" --tls-key "$dir/tls.key")
"$bin" serve --descriptors "$repo/proto/example/descriptors.pb" --listen "127.0.0.1:${tls_root#*:}" \
  "${tls[@]}" --log-level warn >"$dir/tls-root.log" 2>&1 &
pids+=($!)
env -u PBFLAGS_DATABASE "$bin" serve --descriptors "$repo/proto/example/descriptors.pb" \
  --listen "127.0.0.1:${tls_proxy#*:}" "${tls[@]}" --server "https://$tls_root" --upstream-ca "$dir/ca.crt" \
  --log-level warn >"$dir/tls-proxy.log" 2>&1 &
pids+=($!)
for url in "http://$root" "http://$proxy" "https://$tls_root" "https://$tls_proxy"; do
  for _ in $(seq 1 100); do curl -fsS --cacert "$dir/ca.crt" "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 1.5 # a kill-set poll on each after start

failed=0
for url in "http://$root" "http://$proxy" "https://$tls_root" "https://$tls_proxy"; do
  for protocol in connect-proto connect-json grpc grpc-web; do
    "$tools/interop" -url "$url" -cacert "$dir/ca.crt" -protocol "$protocol" || failed=1
  done
  out=$(curl -fsS --cacert "$dir/ca.crt" -H 'content-type: application/json' -d '{"flagId":"notifications/2"}' \
    "$url/pbflags.v1.FlagEvaluatorService/Evaluate")
  if [ "$out" = '{"flagId":"notifications/2","value":{"stringValue":"weekly"},"source":"EVALUATION_SOURCE_GLOBAL"}' ]; then
    echo "ok   curl Connect JSON against $url"
  else
    echo "FAIL curl Connect JSON against $url: $out"; failed=1
  fi
done
# connect-go's generated FlagAdminService client, every RPC, over every protocol.
for protocol in connect-proto connect-json grpc grpc-web; do
  "$tools/interop" -url "http://$admin" -protocol "$protocol" -admin-token "$admin_token" || failed=1
done
exit $failed
