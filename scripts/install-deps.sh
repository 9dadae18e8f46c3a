#!/usr/bin/env bash
# Installs the system packages hexec builds against, if any are missing (Debian/Ubuntu), and
# the extra packages named as arguments (the benchmark scripts' references).
# Safe to run repeatedly: it does nothing when everything is present.
set -euo pipefail

# hwloc for the topology; Mesa's lavapipe (a conformant Vulkan device running on the CPU)
# and the Vulkan loader so that GPU paths run on machines without a GPU.
packages=(pkg-config libhwloc-dev libudev-dev mesa-vulkan-drivers libvulkan1 "$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  if ! command -v apt-get >/dev/null; then
    echo "error: apt-get not found; install these packages with your system's package manager: ${missing[*]}" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (1.85 or newer) from https://rustup.rs" >&2
  exit 1
fi
