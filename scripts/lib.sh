# Shared by the project's scripts: one cargo target directory outside the checkout, so every tier,
# every clone and CI reuse one build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pbflags/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Incremental state is kept per checkout path: every fresh clone (CI) would add gigabytes of it to
# the shared target directory for no gain in a one-off build.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# step NAME: starts a named step; the previous one's duration is printed, and step_timings prints all.
step_log=()
_end_step() { [ -z "${_step:-}" ] || step_log+=("$(printf '%5ds  %s' $((SECONDS - _step_start)) "$_step")"); _step=; }
step() {
  _end_step
  _step=$*; _step_start=$SECONDS
  printf '\n==> [%(%H:%M:%S)T +%ds] %s\n' -1 "$SECONDS" "$*" >&2
}
# within MINUTES CMD...: runs CMD, failing the run with a clear message if it takes longer (a hung
# tier must not use up the CI budget silently).
within() {
  local minutes=$1 rc=0
  shift
  timeout --kill-after=60 "${minutes}m" "$@" || rc=$?
  if [ "$rc" = 124 ]; then
    printf '\n!!! step "%s" exceeded its %s-minute limit: %s\n' "${_step:-?}" "$minutes" "$*" >&2
  fi
  return "$rc"
}
# Test and tool executables of earlier checkouts (each clone links its own, ~200 MB apiece) that
# nothing ran or rebuilt for two days; cargo relinks any that is needed again.
prune_stale_executables() {
  local d
  for d in "$CARGO_TARGET_DIR/debug/deps" "$CARGO_TARGET_DIR/release/deps"; do
    [ -d "$d" ] || continue
    # Test and binary executables (no extension) are hundreds of MB each with debug info; every
    # rebuild leaves a new one beside the old. Keep the newest of each name, and none untouched
    # for more than two days.
    find "$d" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %f\n' 2>/dev/null |
      sort -rn | awk '{ n = $2; sub(/-[0-9a-f]+$/, "", n); if (seen[n]++) print $2 }' |
      while read -r f; do rm -f "$d/$f"; done
    find "$d" -maxdepth 1 -type f -perm -u+x ! -name '*.so' -atime +2 -mtime +2 -delete 2>/dev/null
  done
  return 0
}
step_timings() {
  _end_step
  printf '\nstep timings (total %ds):\n' "$SECONDS" >&2
  printf '  %s\n' "${step_log[@]}" >&2
}

# The release binaries of both shipped crates in one cargo invocation over the whole workspace:
# features resolve as for any other workspace build (scripts/load.sh's too), so the main job, the
# images and a later build of either find them fresh. Run from a test, cargo would
# inherit what cargo test sets (CARGO_PKG_*, LD_LIBRARY_PATH, RUSTUP_TOOLCHAIN, …) and judge the
# binaries stale against a build from a shell: that is dropped.
release_build() {
  local clean=(env) v
  for v in $(compgen -e); do
    case $v in CARGO | CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_BIN_EXE_* | CARGO_CRATE_NAME | CARGO_PRIMARY_PACKAGE | \
      LD_LIBRARY_PATH | RUSTUP_TOOLCHAIN* | RUST_RECURSION_COUNT | OUT_DIR) clean+=(-u "$v") ;; esac
  done
  "${clean[@]}" cargo build --release --locked --workspace \
    --bin pbflags-evaluator --bin pbflags-operator >&2
}

# A throwaway CA and a localhost certificate signed by it (ECDSA P-256, valid one day) in DIR:
# ca.crt, tls.crt, tls.key. For TLS tests and load runs.
test_certs() {
  local d=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=pbflags-test-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/san.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
    -extfile "$d/san.ext" -out "$d/tls.crt" 2>/dev/null
}

# measure_db DIR EVALUATOR: for the measuring scripts, a throwaway PostgreSQL in DIR/pg, migrated
# and synced with the example descriptors by EVALUATOR; sets $url and $server (empty). On exit the
# server (if $server names one), PostgreSQL and DIR are removed.
measure_db() {
  _measure_dir=$1
  url=$(scripts/pg.sh start "$1/pg")
  server=""
  trap _measure_cleanup EXIT
  PBFLAGS_DATABASE=$url "$2" migrate >/dev/null
  PBFLAGS_DATABASE=$url "$2" sync --descriptors proto/example/descriptors.pb >/dev/null
}
_measure_cleanup() {
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null
  wait 2>/dev/null || true
  scripts/pg.sh stop "$_measure_dir/pg"
  rm -rf "$_measure_dir"
}

# cpu_ticks PID: the process's user and system CPU time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# rss PID: the process's resident memory, in MiB.
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }

# A free loopback TCP port (the kernel's pick; free unless another process takes it first).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A root evaluator on its own PostgreSQL (in DIR) and a proxy in front of it, on free loopback
# ports, both ready, with the example descriptors synced; SERVE_ARGS go to both. Run from the
# repository root. Sets url, root, proxy (process ids), root_port, proxy_port; on exit stops both by
# process id, stops PostgreSQL and removes DIR.
#   root_and_proxy DIR BIN_DIR [SERVE_ARGS…]
root_and_proxy() {
  local dir=$1 bin=$2 port
  shift 2
  _rp_dir=$dir
  _rp_pids=()
  trap _stop_root_and_proxy EXIT
  url=$(scripts/pg.sh start "$dir/pg")
  PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" migrate >/dev/null
  PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" sync --descriptors proto/example/descriptors.pb >/dev/null
  root_port=$(free_port)
  proxy_port=$(free_port)
  local common=(--descriptors proto/example/descriptors.pb --log-level warn "$@")
  PBFLAGS_DATABASE=$url "$bin/pbflags-evaluator" serve "${common[@]}" --listen "127.0.0.1:$root_port" \
    >"$dir/root.log" 2>&1 &
  root=$!
  _rp_pids+=("$root")
  "$bin/pbflags-evaluator" serve "${common[@]}" --listen "127.0.0.1:$proxy_port" \
    --server "http://127.0.0.1:$root_port" >"$dir/proxy.log" 2>&1 &
  proxy=$!
  _rp_pids+=("$proxy")
  for port in "$root_port" "$proxy_port"; do
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

_stop_root_and_proxy() {
  local p
  for p in "${_rp_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg.sh stop "$_rp_dir/pg"
  rm -rf "$_rp_dir"
}

# The path of a Go-built tool (the last element of PACKAGE), installed from the Go module proxy on
# first use and cached outside the repository (PBFLAGS_GO_TOOLS, default ~/.cache/pbflags/go-tools,
# in NAME-VERSION).
#   go_tool NAME PACKAGE VERSION   e.g. go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform v0.8.0
go_tool() {
  local name=$1 package=$2 version=$3
  local dir=${PBFLAGS_GO_TOOLS:-$HOME/.cache/pbflags/go-tools}/$name-$version
  local bin=$dir/${package##*/}
  if [ ! -x "$bin" ]; then
    mkdir -p "$dir"
    GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false" GOBIN="$dir" \
      go install "$package@$version" >&2
  fi
  echo "$bin"
}
