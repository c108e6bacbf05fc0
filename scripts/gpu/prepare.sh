#!/usr/bin/env bash
# Builds what scripts/gpu/check.sh runs on the GPU machine (which has no Rust toolchain, no network and
# no GStreamer) into .cache/gpu/, a git-ignored folder that travels with the work tree:
#   .cache/gpu/medgen          release binary without the `video` feature (needs only libc; CUDA is loaded at run time)
#   .cache/gpu/cuda_fallback   the kernels' GPU parity tests (every CUDA op against the CPU op, the 2-layer 1.3B-width DiT)
#   .cache/gpu/wheels/         diffusers and the pure-Python packages it imports, for scripts/bench/dit_torch.py
# Idempotent; takes ~10 minutes on 2 cores (two release builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.cache/gpu
mkdir -p "$out/wheels"

echo "[prepare] medgen (release, --no-default-features --features cuda)"
cargo build --release --locked -p medgen --no-default-features --features cuda
cp target/release/medgen "$out/medgen"
strip "$out/medgen"

echo "[prepare] kernels GPU parity tests (release)"
exe=$(cargo test --release --locked -p medgen-kernels --test cuda_fallback --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_fallback":
        print(m["executable"])')
[ -n "$exe" ] || { echo "could not find the cuda_fallback test binary" >&2; exit 1; }
cp "$exe" "$out/cuda_fallback"
strip "$out/cuda_fallback"

echo "[prepare] diffusers wheels (pure Python; torch comes with the GPU image)"
if [ ! -f "$out/wheels/.done" ]; then
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
  # Everything diffusers imports, resolved for Python 3.12, less numpy (16 MB; torch images have it: the run
  # carries at most 64 MiB) ...
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 "${plat[@]}" -d "$out/wheels" diffusers==0.42.1
  rm -f "$out"/wheels/numpy-*.whl
  # ... and the compiled ones for the other Pythons a torch image may have.
  for py in 3.10 3.11 3.13; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" "${plat[@]}" -d "$out/wheels" \
      regex charset_normalizer pyyaml || echo "[prepare] some wheels for Python $py are missing"
  done
  touch "$out/wheels/.done"
fi
du -sh "$out"/* "$out" | sed 's/^/[prepare] /'
echo "[prepare] carry .cache/gpu with the run; then: bash scripts/gpu/check.sh"
