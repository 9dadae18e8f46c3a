#!/usr/bin/env bash
# The device check for a session that has a machine with a real GPU: what Vulkan sees, then
# hexec's topology, the per-device bench and the GPU tests. Writes everything to $OUT (or
# ./gpu-check-out) so that it can be recorded in docs/gpu-runs.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
{
  echo "== nvidia-smi"; nvidia-smi 2>&1 | head -20
  echo "== vulkan ICDs"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1
  echo "== libvulkan"; ldconfig -p | grep -i vulkan
  echo "== vulkaninfo"; vulkaninfo --summary 2>&1 | grep -E "deviceName|driverName|apiVersion|deviceType" | head -20
} > "$out/env.txt" 2>&1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo build --release --locked > "$out/build.txt" 2>&1 || { echo "build failed"; tail -30 "$out/build.txt"; exit 1; }
"${CARGO_TARGET_DIR:-target}/release/hexec" info > "$out/info.txt" 2>&1
"${CARGO_TARGET_DIR:-target}/release/hexec" bench gpu --reps 5 > "$out/bench-gpu.md" 2>&1
"${CARGO_TARGET_DIR:-target}/release/hexec" bench gpu --reps 5 --json > "$out/bench-gpu.json" 2>&1
cargo test --release --locked --test gpu > "$out/tests-gpu.txt" 2>&1
cat "$out/env.txt" "$out/info.txt" "$out/bench-gpu.md"; tail -5 "$out/tests-gpu.txt"
