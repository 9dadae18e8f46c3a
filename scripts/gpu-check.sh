#!/usr/bin/env bash
# The device check for a session that has a machine with a real GPU: what Vulkan sees, hexec's
# topology, the GPU tests, the per-device bench beside PyTorch's cuBLAS/cuSOLVER anchors, the
# Cholesky demo on the GPU and on the CPUs, the CPU linear algebra bench and the per-task
# overhead. Writes one file per step to ./gpu-check-out (or $CHECK_DIR) for docs/gpu-runs.md, and
# when $OUT is set (the device tool brings back at most 8 files), keeps $OUT/gpu-check.tar.gz
# up to date with them after every step, so that a run stopped part way still brings them back.
#
# Two ways to run it:
# - where cargo is installed: it builds hexec and the GPU test binary itself;
# - where it is not (the lent GPU machine has no Rust): `scripts/gpu-pack.sh` here first puts a
#   stripped release `hexec`, the GPU test binary and the shared libraries they need in .gpu/,
#   and this script uses them (carry .gpu and .gl, the Vulkan loader's .deb, with the call).
#
# Every step has its own time limit, so that one stuck step cannot use up the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${CHECK_DIR:-gpu-check-out}"
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"

# The Vulkan loader and libglvnd (the NVIDIA ICD loads through it), when .gl holds them
# (Debian's libvulkan1, libglvnd0, libegl1, libgl1, libglx0, libgles2, libopengl0).
# Unpacked into / as the device machine's notes advise for these packages (needs root there).
if ls .gl/*.deb > /dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" / || echo "could not unpack $f (root?)"; done
  ldconfig
fi
# The NVIDIA driver's ICD where the loader does not look by itself.
if ! ls /usr/share/vulkan/icd.d/*nvidia* > /dev/null 2>&1 && ! ls /etc/vulkan/icd.d/*nvidia* > /dev/null 2>&1 &&
  [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi

{
  echo "== date"; date -u
  echo "== cpu"; lscpu | grep -E "Model name|^CPU\(s\)|Thread|NUMA node\(s\)"
  echo "== nvidia-smi"; timeout 30 nvidia-smi 2>&1 | head -20
  echo "== vulkan ICDs"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
  echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  echo "== libvulkan"; ldconfig -p | grep -i vulkan
  echo "== vulkaninfo"; timeout 30 vulkaninfo --summary 2>&1 | grep -E "deviceName|driverName|apiVersion|deviceType" | head -20
} > "$out/env.txt" 2>&1

if [ -x .gpu/hexec ]; then
  hexec=.gpu/hexec
  export DASK_DIR="${DASK_DIR:-.gpu/dask}"
  gpu_tests=.gpu/gpu-tests
  export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  target="${CARGO_TARGET_DIR:-target}"
  cargo build --release --locked > "$out/build.txt" 2>&1 || { echo "build failed"; tail -30 "$out/build.txt"; exit 1; }
  hexec="$target/release/hexec"
  gpu_tests="$(cargo test --release --locked --test gpu --no-run --message-format=json 2> /dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("name") == "gpu": print(m["executable"])')"
fi

# What the Vulkan loader finds and refuses (the NVIDIA ICD needs libglvnd's libraries too).
VK_LOADER_DEBUG=error,warn,driver timeout 30 "$hexec" info > "$out/loader.txt" 2>&1

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit into $out/NAME, says how it ended.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$out/$name" 2>&1
  local rc=$?
  echo "step $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
  # Written aside, then renamed: a run stopped mid-write still brings the last whole archive.
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/.gpu-check.tar.gz.part" -C "$out" . && mv -f "$OUT/.gpu-check.tar.gz.part" "$OUT/gpu-check.tar.gz"
  fi
}

step info.txt 30 "$hexec" info
if [ -n "${GPU_REQUIRED:-}" ] && grep -q "gpus: none found" "$out/info.txt"; then
  echo "no GPU found (GPU_REQUIRED is set): what the Vulkan loader said:"
  grep -i -E "error|warn|driver|icd" "$out/loader.txt" | head -40
  exit 1
fi
step tests-gpu.txt 120 "$gpu_tests" --test-threads 4
step bench-gpu.md 90 "$hexec" bench gpu --reps 5
step anchors.md 90 python3 scripts/gpu-anchors.py
step demo-all.txt 60 "$hexec" demo
step demo-cpus.txt 60 "$hexec" demo --gpus none
step demo-gpu-large.txt 90 "$hexec" demo --n 24576 --tile 1024
step linalg.md 120 "$hexec" bench linalg --sizes 4096,8192 --ops cholesky --python python3
step demo-heft.txt 45 "$hexec" demo --policy heft
step demo-heteroprio.txt 45 "$hexec" demo --policy heteroprio
# The same factorisation as a graph file, run cold (no model: the first run of a process),
# then warm (the model the first run measured), both traced, then on the CPUs alone.
graph="$(mktemp -d)/cholesky-16x512.json"
"$hexec" gen cholesky --tiles 16 --tile-size 512 -o "$graph"
step run-cold.txt 60 "$hexec" run "$graph" --model "$out/model.json" --trace "$out/trace-cold.json"
step run-warm.txt 60 "$hexec" run "$graph" --model "$out/model.json" --trace "$out/trace-warm.json"
step run-cpus.txt 60 "$hexec" run "$graph" --gpus none
step overhead.md 60 "$hexec" bench overhead --no-large --dask-dir "${DASK_DIR:-../shared/workloads/dask}"

echo "== summary"
cat "$out/steps.txt"
grep -E "^test result|FAILED|panicked" "$out/tests-gpu.txt" | head -20
cat "$out/info.txt" | head -30
cat "$out/bench-gpu.md" "$out/anchors.md"
for f in run-cold run-warm run-cpus; do echo "== $f"; grep -E "tasks:|gpu0|check" "$out/$f.txt" | head -4; done
for f in demo-all demo-cpus demo-gpu-large demo-heft demo-heteroprio; do echo "== $f"; grep -E "^machine|^factor|^  (cpu|gpu)|result" "$out/$f.txt" | head -8; done
cat "$out/linalg.md"
tail -15 "$out/overhead.md"
