#!/usr/bin/env bash
# Second command of the README: install what is missing, run the whole test suite, then the
# lint gates (fmt, clippy, doc).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
# Mesa's Vulkan WSI complains on every device open when this is unset.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
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
# The park/wake protocol under the loom model checker (src/runtime/sleep.rs built on loom's
# primitives; its own target directory, since --cfg loom changes every unit's flags).
echo "model check: the park/wake protocol under loom"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p hexec-loom-tests --release --locked -- --test-threads 1

# The checks a reviewer runs: formatting, lints (every target, every feature, warnings
# denied) and the docs (broken links and the like are errors).
echo "lint gates: cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The lean library (no CLI, no hwloc) must keep building too, and the runtime an embedding
# program is told to take (README, "Using hexec as a library").
cargo clippy --workspace --all-targets --no-default-features --locked -- -D warnings
cargo clippy --workspace --all-targets --no-default-features --features gpu,hwloc --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
