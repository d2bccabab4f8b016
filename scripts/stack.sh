#!/usr/bin/env bash
# The main job: builds the evaluator and runs it on the example descriptors.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

step "building pbflags-evaluator (release)"
cargo build --release --locked -p pbflags-evaluator
bin=$CARGO_TARGET_DIR/release/pbflags-evaluator

step "flags in proto/example/descriptors.pb"
"$bin" descriptors --descriptors proto/example/descriptors.pb
