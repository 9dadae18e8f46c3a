#!/usr/bin/env bash
# First command of the README: install what is missing, build, show the machine and run the
# demo job on every core.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked
./target/release/hexec info
echo
./target/release/hexec demo "$@"
