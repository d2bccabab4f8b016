#!/usr/bin/env bash
# Runs every test tier. Installs or builds what the tiers need (cached outside the repository).
#   scripts/test.sh            all tiers
#   scripts/test.sh --quick    formatting, lints and unit/in-process tests only
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"

step "formatting"
cargo fmt --all --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

[ "${1:-}" = "--quick" ] && exit 0
