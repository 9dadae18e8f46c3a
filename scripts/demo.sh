#!/usr/bin/env bash
# First command of the README: install what is missing, build, show the machine and run the
# demo job on every core.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d)"
fi
./target/release/hexec info
echo
./target/release/hexec demo "$@"
