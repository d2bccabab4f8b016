#!/usr/bin/env bash
# Memory under hostile ids: a root evaluator (own PostgreSQL) and a proxy in front of it, each
# driven directly with N unique maximum-size entity ids (override lookups of a user-layer flag),
# then N unique maximum-size undeclared flag ids. Prints each process's RSS idle, its peak (VmHWM)
# after each phase, and the cache bytes it reports, against the configured --cache-max-bytes.
# (A proxy's calls reach the root as state RPCs, which the root does not cache, as in v0.6.)
#   scripts/memory.sh [N, default 100000] [cache bytes, default 67108864]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
n=${1:-100000}
budget=${2:-67108864}
dir=$(mktemp -d /tmp/pbflags-memory.XXXXXX)
cargo build --release --locked --workspace --bin pbflags-evaluator --bin pbflags-load >&2
bin=$CARGO_TARGET_DIR/release
root_and_proxy "$dir" "$bin" --cache-max-bytes "$budget" --max-entity-id-bytes 1024 --max-flag-id-bytes 256

mib() { awk -v k="$2" '$1 == k":" {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
cache_bytes() { curl -fsS "http://127.0.0.1:$1/metrics" | awk '$1 == "pbflags_cache_bytes" {printf "%.1f MiB", $2/1048576}'; }
report() {
  printf '  %-5s RSS %s, peak %s, cache %s\n' root "$(mib "$root" VmRSS)" "$(mib "$root" VmHWM)" "$(cache_bytes "$root_port")"
  printf '  %-5s RSS %s, peak %s, cache %s\n' proxy "$(mib "$proxy" VmRSS)" "$(mib "$proxy" VmHWM)" "$(cache_bytes "$proxy_port")"
}
printf 'budget --cache-max-bytes %s (%.0f MiB)\nidle:\n' "$budget" "$(echo "$budget / 1048576" | bc -l)"
report
drive() { # port, load arguments
  local port=$1
  shift
  "$bin/pbflags-load" --url "http://127.0.0.1:$port" --protocol grpc --rpc evaluate \
    --concurrency 32 --connections 4 --requests "$n" --duration 600s "$@"
}
for target in root proxy; do
  port=$root_port
  [ "$target" = proxy ] && port=$proxy_port
  echo "$target: $n Evaluate calls, each with its own 1024-byte entity id (user-layer flag: override lookups):"
  drive "$port" --flags notifications/1 --unique-entity-bytes 1024
  report
  echo "$target: $n Evaluate calls, each with its own 256-byte undeclared flag id:"
  drive "$port" --unique-flag-bytes 256
  report
done
