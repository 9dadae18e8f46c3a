#!/usr/bin/env bash
# Measures what a program that embeds hexec pays to build: the crates in its dependency tree,
# the crates compiled and the clean release build time, for each feature set given (default:
# the three the README's table shows). Each build goes into its own empty target directory,
# one after the other; run it on an otherwise idle machine (wall time follows the load).
#
#   scripts/hello-build.sh                       # the README's three rows
#   scripts/hello-build.sh "features = [\"gpu\"]" # any `hexec = { ... }` tail
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ $# -eq 0 ]; then
    set -- 'default-features = false' \
        'default-features = false, features = ["gpu", "hwloc"]' \
        ''
fi
mkdir -p "$work/hello/src"
cat > "$work/hello/src/main.rs" <<'RS'
use hexec::{kernels::builtin, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().build()?;
    let x = rt.data(vec![1.0f32; 1 << 20]);
    let y = rt.data(vec![0.0f32; 1 << 20]);
    let s = rt.data(vec![0.0f32; 1]);
    let mut g = rt.graph();
    g.task(&builtin::axpy()).read(x).read_write(y).param(2.0).add();
    g.task(&builtin::sum()).read(y).write(s).add();
    rt.run(&g)?;
    println!("{}", rt.read(s)?[0]);
    Ok(())
}
RS
printf '| dependency | crates in the tree | crates compiled | clean release build |\n|---|---:|---:|---:|\n'
for features in "$@"; do
    spec="{ path = \"$root\"${features:+, $features} }"
    cat > "$work/hello/Cargo.toml" <<TOML
[package]
name = "hello"
version = "0.1.0"
edition = "2021"

[dependencies]
hexec = $spec

[workspace]
TOML
    (cd "$work/hello" && cargo fetch -q)
    tree=$(cd "$work/hello" && cargo tree -e normal --prefix none | sort -u | wc -l)
    rm -rf "$work/target"
    start=$(date +%s)
    log=$(cd "$work/hello" && CARGO_TARGET_DIR="$work/target" cargo build --release 2>&1)
    secs=$(( $(date +%s) - start ))
    compiled=$(grep -c '^ *Compiling ' <<<"$log" || true)
    printf '| `%s` | %s | %s | %s s |\n' "${features:-default features}" "$tree" "$compiled" "$secs"
done
