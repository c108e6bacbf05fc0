#!/usr/bin/env bash
# Installs what medgen needs on a fresh Debian/Ubuntu machine, idempotently:
#   - GStreamer development set and plugins (apt), for the `video` feature;
#   - ONNX Runtime from the PyPI wheel into .cache/ortenv (Debian has no package); medgen finds the
#     library there by itself, ORT_DYLIB_PATH overrides;
#   - NVRTC from the PyPI wheel into .cache/cudaenv, for compiling the CUDA kernels in tests without a GPU.
# Safe to run again: it installs only what is missing. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-base-apps gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x
  chromium chromium-driver  # chromium renders the HTML report (screenshot test); chromedriver drives
                            # it in the `medgen review` page test
  g++)  # builds the host emulation of the tensor-core CUDA kernels (kernels/tests/cuda_emu.rs)
ORT_VERSION=1.31.1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing ${#missing[@]} system packages: ${missing[*]}"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  log "system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust 1.92 or newer (https://rustup.rs) and run this again" >&2
  exit 1
fi

ORT_ENV=.cache/ortenv
if ! ls "$ORT_ENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
  log "installing ONNX Runtime $ORT_VERSION (PyPI wheel) into $ORT_ENV"
  python3 -m venv "$ORT_ENV"
  "$ORT_ENV/bin/pip" install -q --disable-pip-version-check "onnxruntime==$ORT_VERSION"
else
  log "ONNX Runtime present in $ORT_ENV"
fi

# NVRTC from PyPI (no GPU or driver needed): kernels/tests/cuda_nvrtc.rs compiles every kernels/cuda/*.cu with
# it. 13.0 matches the GPU machine's CUDA 13.0 driver (newer NVRTC emits PTX that driver cannot load).
# Tests find it in .cache/cudaenv; MEDGEN_NVRTC_DIR overrides.
NVRTC_VERSION=13.0.88
CUDA_ENV=.cache/cudaenv
if ! ls "$CUDA_ENV"/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13 >/dev/null 2>&1 \
  || ! "$CUDA_ENV/bin/pip" show nvidia-cuda-nvrtc 2>/dev/null | grep -qx "Version: $NVRTC_VERSION"; then
  log "installing NVRTC $NVRTC_VERSION (PyPI wheel nvidia-cuda-nvrtc) into $CUDA_ENV"
  [ -x "$CUDA_ENV/bin/pip" ] || python3 -m venv "$CUDA_ENV"
  "$CUDA_ENV/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvrtc==$NVRTC_VERSION"
else
  log "NVRTC $NVRTC_VERSION present in $CUDA_ENV"
fi
