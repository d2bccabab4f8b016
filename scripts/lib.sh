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
