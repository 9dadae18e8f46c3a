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
# Software GPUs (Mesa's lavapipe runs on the CPU cores) are not used unless asked for; on a
# machine without a hardware GPU the demo asks, so that the GPU paths run, and says so.
software=()
info_json="$("$hexec" info --json)"
if grep -q '"hardware_gpus": 0' <<<"$info_json" && grep -q '"software": true' <<<"$info_json"; then
  echo "no hardware GPU here: asking for the software one (--software-gpus) so that the GPU paths run"
  software=(--software-gpus)
fi
"$hexec" info "${software[@]}"
echo
"$hexec" demo "${software[@]}" "$@"
