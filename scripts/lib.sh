# Shared by the project's scripts: one cargo target directory outside the checkout, so every tier,
# every clone and CI reuse one build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/pbflags/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

step() { printf '\n==> %s\n' "$*" >&2; }
