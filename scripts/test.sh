#!/usr/bin/env bash
# Second command of the README: install what is missing and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
# Mesa's Vulkan WSI complains on every device open when this is unset.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d)"
fi
echo "note: GPU tests ask for software adapters explicitly (RuntimeBuilder::software_gpus, --software-gpus): on a machine without a GPU they run on Mesa's lavapipe"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)"
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi
# nextest does not run doc tests; they are part of the suite.
cargo test --workspace --locked --doc
