#!/usr/bin/env bash
# `hexec bench linalg` with every reference column: installs StarPU's examples and OpenBLAS
# (Debian packages) and a Python with numpy and SciPy from PyPI (a virtual environment under
# the target directory), builds hexec and runs the benchmark. Arguments go to the benchmark,
# e.g. `./scripts/bench-linalg.sh --sizes 2048,4096,8192 --reps 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh starpu-examples libopenblas0 python3-venv

target="${CARGO_TARGET_DIR:-target}"
venv="$target/bench-venv"
if ! "$venv/bin/python" -c 'import numpy, scipy' 2>/dev/null; then
  echo "making $venv with numpy and SciPy (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy scipy
fi

cargo build --release --locked
"$target/release/hexec" bench linalg --gpus none --python "$venv/bin/python" "$@"
