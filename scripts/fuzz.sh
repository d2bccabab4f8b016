#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer on the stable toolchain, no sanitizer): builds the
# targets in fuzz/ and runs each for SECONDS (default 30), starting from the committed seed corpus
# plus what earlier runs found (kept in ~/.cache/pbflags/fuzz, outside the checkout). Prints each
# target's executions; a crash fails the run and leaves its input in ~/.cache/pbflags/fuzz/artifacts.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: descriptors requests config
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo/fuzz"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(descriptors requests config)

tools=$HOME/.cache/pbflags/tools/cargo-fuzz
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --version 0.13.2 --root "$tools" >&2
fi
export PATH=$tools/bin:$PATH
work=$HOME/.cache/pbflags/fuzz
mkdir -p "$work/artifacts"
cargo fuzz build -s none --fuzz-dir . >&2
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t"
  log=$(mktemp)
  if cargo fuzz run -s none --fuzz-dir . "$t" "$work/corpus/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t-" >"$log" 2>&1; then
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1)
    printf 'fuzz %-12s %s executions in %ss, %s, corpus %s inputs, no crash\n' "$t" "$runs" "$seconds" "$cov" \
      "$(ls "$work/corpus/$t" | wc -l)"
  else
    status=1
    echo "fuzz $t FAILED:" >&2
    grep -v '^ *[0-9]*: \|^ *at ' "$log" | tail -n 30 >&2
  fi
  rm -f "$log"
done
exit "$status"
