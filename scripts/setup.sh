#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine for the tests and the demo: Mesa's lavapipe (a CPU
# Vulkan driver, so the wgpu backend runs without a GPU), SmolLM2-135M and Gemma 3 270M.
# Idempotent; needs root (or sudo) only when packages are missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing mesa-vulkan-drivers libvulkan1 (lavapipe) ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

"$root/scripts/fetch-model.sh"
"$root/scripts/fetch-model.sh" gemma3-270m
