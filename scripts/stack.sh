#!/usr/bin/env bash
# The main job: a local evaluator stack on a self-provisioned PostgreSQL.
#
# Starts PostgreSQL (data in $PBFLAGS_STACK_DIR, default ~/.cache/pbflags/stack), applies migrations,
# syncs the example descriptors and shows the flags. Ctrl-C (or the end of the run) stops what it
# started, by process id.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
dir=${PBFLAGS_STACK_DIR:-$HOME/.cache/pbflags/stack}
mkdir -p "$dir"

step "building pbflags-evaluator (release)"
cargo build --release --locked -p pbflags-evaluator
bin=$CARGO_TARGET_DIR/release/pbflags-evaluator
descriptors=proto/example/descriptors.pb

step "PostgreSQL"
PBFLAGS_DATABASE=$(scripts/pg.sh start "$dir/pg")
export PBFLAGS_DATABASE
trap 'scripts/pg.sh stop "$dir/pg"' EXIT
echo "database: $PBFLAGS_DATABASE"

step "migrate and sync the example descriptors"
"$bin" descriptors --descriptors "$descriptors"
"$bin" migrate
"$bin" sync --descriptors "$descriptors"

step "flags"
"$bin" flags set notifications/2 --value weekly --actor stack
"$bin" flags list
