#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine without Rust into .gpu/ (ignored by
# git): a stripped release hexec, the GPU test binary, the shared libraries both load that such
# an image may lack (hwloc, udev), and the overhead bench's Dask graphs. Also puts Debian's
# Vulkan loader and libglvnd packages in .gl/ (the NVIDIA ICD does not load without libglvnd).
# Both folders travel with the device call (carry: .gpu, .gl).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
rm -rf .gpu && mkdir -p .gpu/lib
cargo build --release --locked
strip -o .gpu/hexec "$target/release/hexec"
tests="$(cargo test --release --locked --test gpu --no-run --message-format=json 2> /dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("name") == "gpu": print(m["executable"])')"
strip -o .gpu/gpu-tests "$tests"
for lib in libhwloc.so.15 libudev.so.1; do
  cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}')" .gpu/lib/
done
packages=(libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0)
missing=()
for p in "${packages[@]}"; do
  ls .gl/"${p}"_*.deb > /dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mkdir -p .gl /tmp/apt-amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/apt-amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download "${missing[@]}")
fi
# The Dask graphs of the overhead bench.
mkdir -p .gpu/dask
cp ../shared/workloads/dask/tree-15.json.gz ../shared/workloads/dask/merge-10000.json.gz .gpu/dask/
du -sh .gpu .gl
