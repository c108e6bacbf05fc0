#!/usr/bin/env bash
# Every GPU check of issues #6/#7/#8 in one run, for the GPU machine (see scripts/gpu/prepare.sh, which
# builds what this runs into .cache/gpu/). Writes its numbers under $OUT (default ./gpu-out) and a summary
# to $OUT/summary.txt. Each step has its own time limit, so one slow step cannot starve the others; a step
# that fails is reported and the next one runs.
#
#   bash scripts/gpu/check.sh            # all steps (~8 min on an H100/H200)
#   STEPS="parity verify" bash scripts/gpu/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BIN=.cache/gpu
STEPS=${STEPS:-"env parity verify bench torch lora"}
LAYERS=${LAYERS:-2}
export MEDGEN_CUDA_CACHE="$OUT/ptx-cache"
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

# NVRTC 13.0 of the machine's own toolkit (a newer NVRTC makes PTX that driver 580 cannot load).
if [ -z "${MEDGEN_NVRTC_DIR:-}" ]; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then export MEDGEN_NVRTC_DIR=$d; break; fi
  done
fi
if [ -z "${MEDGEN_NVRTC_DIR:-}" ]; then
  lib=$(ldconfig -p | awk '/libnvrtc\.so/ {print $NF; exit}')
  [ -n "$lib" ] && export MEDGEN_NVRTC_DIR=$(dirname "$lib")
fi
[ -n "${MEDGEN_NVRTC_DIR:-}" ] && export LD_LIBRARY_PATH="$MEDGEN_NVRTC_DIR:${LD_LIBRARY_PATH:-}"

step() { # name limit command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  say "[$name] rc=$rc in $(( $(date +%s) - t0 )) s (log: $OUT/$name.log)"
  return $rc
}

for s in $STEPS; do
  case $s in
  env)
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      ldconfig -p | grep -E 'libcuda\.so|libnvrtc\.so|libcublas\.so|libcublasLt\.so' | head
      echo "MEDGEN_NVRTC_DIR=${MEDGEN_NVRTC_DIR:-unset}"; python3 --version
      python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
    } > "$OUT/env.txt" 2>&1
    say "[env] $(head -1 "$OUT/env.txt")"
    ;;
  parity)
    # Every CUDA op against the CPU op (f32 and bf16, strided views), the optimiser, and the 2-layer
    # DiT at 1.3B width (forward and every gradient).
    step parity 300 "$BIN/cuda_fallback" --test-threads 1 --nocapture
    grep -E 'FAILED|panicked' "$OUT/parity.log" | head -20 | tee -a "$summary"
    grep -E '^test result:' "$OUT/parity.log" | tee -a "$summary"
    grep -c 'GPU parity not run' "$OUT/parity.log" | sed 's/^/[parity] tests that found no device: /' | tee -a "$summary"
    ;;
  verify)
    step verify-f32 300 "$BIN/medgen" verify --device cuda kernels/tests/fixtures
    grep -E 'FAIL|cannot verify' "$OUT/verify-f32.log" | head -20 | tee -a "$summary"
    tail -1 "$OUT/verify-f32.log" | tee -a "$summary"
    # bf16: the DiT and umT5 in bf16 (verify keeps the VAE in f32 as the Wan pipelines do, and says so).
    step verify-bf16 300 "$BIN/medgen" verify --device cuda --dtype bf16 kernels/tests/fixtures
    grep -E 'FAIL|cannot verify' "$OUT/verify-bf16.log" | head -20 | tee -a "$summary"
    tail -1 "$OUT/verify-bf16.log" | tee -a "$summary"
    ;;
  bench)
    # 1.3B width at 480×832×81 (32,760 tokens), bf16, LAYERS blocks (the per-block cost scales to 30).
    step bench-ours 420 "$BIN/medgen" bench dit --device cuda --config wan-1.3b --layers "$LAYERS" --frames 81 \
      --size 480x832 --dtype bf16 --repeats 2 --json "$OUT/bench-ours.json"
    grep -E '^linear bias/GELU epilogues' "$OUT/bench-ours.log" | tee -a "$summary"
    tail -6 "$OUT/bench-ours.log" | tee -a "$summary"
    ;;
  torch)
    if ! python3 -c 'import diffusers' 2>/dev/null; then
      # With its dependencies; else (numpy is not carried, or another Python than the wheels were resolved
      # for) package by package, keeping what the machine has.
      if ! python3 -m pip install -q --no-index --find-links "$BIN/wheels" --target "$OUT/pydeps" diffusers \
        > "$OUT/pip.log" 2>&1; then
        for pkg in diffusers huggingface_hub httpx2 httpcore2 h11 anyio click filelock fsspec hf_xet packaging pyyaml \
          tqdm typing_extensions importlib_metadata zipp regex requests urllib3 idna certifi charset_normalizer \
          safetensors lazy_importer truststore pillow; do
          python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${pkg/pillow/PIL}'.replace('-', '_')) is None)" \
            2>/dev/null && continue
          python3 -m pip install -q --no-index --no-deps --find-links "$BIN/wheels" --target "$OUT/pydeps" "$pkg" \
            >> "$OUT/pip.log" 2>&1 || echo "no wheel of $pkg for this Python" >> "$OUT/pip.log"
        done
      fi
      export PYTHONPATH="$OUT/pydeps:${PYTHONPATH:-}"
    fi
    PYTHONPATH="$OUT/pydeps:${PYTHONPATH:-}" python3 -c 'import diffusers' 2>>"$OUT/pip.log" ||
      say "[torch] diffusers does not import (see $OUT/pip.log)"
    step bench-torch 420 python3 scripts/bench/dit_torch.py --device cuda --config wan-1.3b --layers "$LAYERS" \
      --frames 81 --size 480x832 --dtype bf16 --repeats 2 --json "$OUT/bench-torch.json"
    tail -4 "$OUT/bench-torch.log" | tee -a "$summary"
    if [ -f "$OUT/bench-ours.json" ] && [ -f "$OUT/bench-torch.json" ]; then
      python3 - "$OUT/bench-ours.json" "$OUT/bench-torch.json" <<'PY' | tee -a "$summary"
import json, sys
ours, torch = (json.load(open(p)) for p in sys.argv[1:3])
t = {p["name"]: p for p in torch["phases"]}
print(f"medgen / PyTorch on {torch.get('device_name')} ({ours['config']}, {ours['layers']} layers, {ours['tokens']} tokens, {ours['dtype']}):")
for p in ours["phases"]:
    q = t.get(p["name"])
    if q:
        mem = ""
        if p.get("peak_bytes") and q.get("peak_bytes"):
            mem = f"  peak {p['peak_bytes'] / 2**30:.1f} vs {q['peak_bytes'] / 2**30:.1f} GiB"
        print(f"  {p['name']:<28} {p['median_s']:.4f} s vs {q['median_s']:.4f} s  ratio {p['median_s'] / q['median_s']:.2f}{mem}")
PY
    fi
    ;;
  lora)
    # #8's memory plan: a LoRA (rank 32) training step with block recomputation, base frozen (no base dW);
    # its peak memory scales to 30 layers as weights + per-block activations.
    step bench-lora 300 "$BIN/medgen" bench dit --device cuda --config wan-1.3b --layers "$LAYERS" --frames 81 \
      --size 480x832 --dtype bf16 --repeats 2 --lora 32 --recompute --json "$OUT/bench-lora.json"
    tail -6 "$OUT/bench-lora.log" | tee -a "$summary"
    ;;
  *) say "unknown step $s" ;;
  esac
done
say "done; numbers in $OUT"
