#!/usr/bin/env bash
# First command of the README: install what is missing, build, show the machine and run the
# demo job on every core.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked
# Where cargo put it (CARGO_TARGET_DIR when set).
hexec="${CARGO_TARGET_DIR:-target}/release/hexec"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
# The main job: A·x = b by tiled Cholesky on every core and every hardware GPU.
"$hexec" info
echo
"$hexec" demo "$@"
# Software GPUs (Mesa's lavapipe runs on the CPU cores) are not used unless asked for: on a
# machine without a hardware GPU, a small second solve asks for lavapipe so that the GPU
# paths run too, and says so (at a GPU's speed it is not: it shares the same cores).
info_json="$("$hexec" info --json)"
if [ "$#" -eq 0 ] && grep -q '"hardware_gpus": 0' <<<"$info_json" && grep -q '"software": true' <<<"$info_json"; then
  echo
  echo "no hardware GPU here: a small solve on the software GPU (--software-gpus) runs the GPU paths"
  "$hexec" demo --software-gpus --n 1536 --tile 256
fi
