#!/usr/bin/env python3
"""Checks that diffusers' Wan pipeline loads a LoRA file written by medgen, and records diffusers' outputs
for the Rust side (kernels/tests/lora_diffusers.rs) to compare its own merge against.

Reads (committed, written by our Rust code: `cargo test -p medgen-kernels --test lora_diffusers -- --ignored
write_lora_fixture`):
  kernels/tests/fixtures/lora/lora_tiny_base.safetensors   tiny WanTransformer3DModel weights, diffusers names,
                                                            constructor kwargs as JSON in the `config` metadata
  kernels/tests/fixtures/lora/lora_tiny_ours.safetensors   LoraWeights::save output (rank 4, alpha 8, 26 modules)
Writes:
  kernels/tests/fixtures/lora/lora_tiny_diffusers.safetensors  (shared design FIXTURES.md format, model
      "wan_dit_lora"): in.x_t, in.timestep, in.context; out.velocity_base (no LoRA), out.velocity_lora (LoRA
      loaded by WanPipeline.load_lora_weights, PEFT layers unmerged)

Fails (exit 1, nothing written) when: diffusers or PEFT logs a warning or raises a warning while loading; the
adapted modules are not exactly the file's `target_modules`; a PEFT layer's r / alpha / scaling is not 4 / 8 / 2;
the adapter tensors PEFT holds differ from the file's; the LoRA output differs from a hand merge
W + (alpha/r)·B·A or from `pipe.fuse_lora()`; unloading does not restore the base output; the adapters do not
change the output. Run through scripts/make-fixtures.sh (pinned venv with peft).
"""

import argparse
import copy
import importlib.util
import json
import logging
import os
import sys
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BASE = "lora_tiny_base.safetensors"
OURS = "lora_tiny_ours.safetensors"
OUT = "lora_tiny_diffusers.safetensors"
PREFIX = "transformer."
ADAPTER = "medgen"
SEED = 7003


def make_fixtures_module():
    """scripts/make-fixtures.py (hyphenated name) as a module, for its canonical fixture writer."""
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make-fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def fail(msg):
    sys.exit(f"check-lora-diffusers: FAIL: {msg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(REPO, "kernels/tests/fixtures/lora"))
    args = ap.parse_args()
    mf = make_fixtures_module()
    mf.setup()

    import diffusers
    import peft
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}")
    base_path, lora_path = os.path.join(args.dir, BASE), os.path.join(args.dir, OURS)
    with safe_open(base_path, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    with safe_open(lora_path, "pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    if raw is None:
        fail(f"{OURS} has no lora_adapter_metadata: diffusers would assume alpha = r")
    lora_meta = json.loads(raw)
    lora_sd = load_file(lora_path)
    targets = lora_meta[PREFIX + "target_modules"]
    rank, alpha = lora_meta[PREFIX + "r"], lora_meta[PREFIX + "lora_alpha"]
    scale = alpha / rank
    print(f"  our file: {len(lora_sd)} tensors, {len(targets)} target modules, r {rank}, alpha {alpha}")

    model = WanTransformer3DModel(**cfg).float().eval()
    model.load_state_dict(load_file(base_path), strict=True)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=model)

    # Inputs: B = 2, latent [4, 3, 8, 8] (48 tokens), t = 900 / 250, context 8 tokens of which row 1 has 5.
    g = mf.gen(SEED)
    x_t = mf.randn(g, 2, cfg["in_channels"], 3, 8, 8)
    timestep = torch.tensor([900.0, 250.0])
    context = mf.randn(g, 2, 8, cfg["text_dim"])
    context[1, 5:] = 0.0

    def forward(m=None):
        with torch.no_grad():
            return (m or pipe.transformer)(hidden_states=x_t, timestep=timestep, encoder_hidden_states=context,
                                           return_dict=False)[0]

    v_base = forward()
    base_copy = copy.deepcopy(pipe.transformer)

    # ---- load through the pipeline-level loader, failing on any warning
    handler = Collect()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "")]
    for lg in loggers:
        lg.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.load_lora_weights(args.dir, weight_name=OURS, adapter_name=ADAPTER)
    for lg in loggers:
        lg.removeHandler(handler)
    problems = handler.records + [f"{w.category.__name__}: {w.message}" for w in caught]
    if problems:
        fail("loading our LoRA file warned:\n  " + "\n  ".join(problems))
    print("  pipe.load_lora_weights: no warnings")

    # ---- what PEFT built is exactly what the file says
    adapters = pipe.get_list_adapters()
    if adapters != {"transformer": [ADAPTER]}:
        fail(f"adapters {adapters}")
    layers = {n: m for n, m in pipe.transformer.named_modules() if isinstance(m, LoraLayer)}
    if sorted(layers) != sorted(targets):
        fail(f"adapted modules {sorted(layers)} != target_modules {sorted(targets)}")
    for n, m in layers.items():
        got = (m.r[ADAPTER], m.lora_alpha[ADAPTER], m.scaling[ADAPTER])
        if got != (rank, alpha, scale):
            fail(f"{n}: PEFT r/alpha/scaling {got}, file says {(rank, alpha, scale)}")
    held = get_peft_model_state_dict(pipe.transformer, adapter_name=ADAPTER)
    want = {k.removeprefix(PREFIX): v for k, v in lora_sd.items()}
    if sorted(held) != sorted(want):
        fail(f"PEFT holds {sorted(set(held) ^ set(want))} differently from the file")
    for k, v in want.items():
        if not torch.equal(held[k], v):
            fail(f"{k}: PEFT's tensor differs from the file's")
    print(f"  {len(layers)} LoRA layers, r {rank}, alpha {alpha}, scaling {scale}; tensors identical to the file")

    v_lora = forward()
    effect = (v_lora - v_base).abs().max().item()

    # ---- cross-checks: a hand merge W + s·B·A, diffusers' fuse_lora, unload
    with torch.no_grad():
        params = dict(base_copy.named_parameters())
        for mod in targets:
            a, b = lora_sd[f"{PREFIX}{mod}.lora_A.weight"], lora_sd[f"{PREFIX}{mod}.lora_B.weight"]
            params[f"{mod}.weight"].add_(scale * (b @ a))
    hand = (forward(base_copy) - v_lora).abs().max().item()
    pipe.fuse_lora(adapter_names=[ADAPTER], lora_scale=1.0)
    fused = (forward() - v_lora).abs().max().item()
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    unloaded = (forward() - v_base).abs().max().item()
    print(f"  LoRA effect max abs {effect:.3e} (max |v| {v_lora.abs().max().item():.3f}); hand merge vs PEFT "
          f"{hand:.2e}; fuse_lora vs PEFT {fused:.2e}; unloaded vs base {unloaded:.2e}")
    if effect < 1e-2:
        fail(f"the adapters barely change the output ({effect:e})")
    if hand > 1e-5 or fused > 1e-5 or unloaded > 1e-5:
        fail("hand merge / fuse_lora / unload disagree with the PEFT forward")

    tensors = {"in.x_t": x_t, "in.timestep": timestep, "in.context": context,
               "out.velocity_base": v_base, "out.velocity_lora": v_lora}
    mf.save(args.dir, OUT, tensors, "wan_dit_lora", mf.clean_config(model.config), layout="diffusers",
            extra_meta={"seed": str(SEED), "base_file": BASE, "base_sha256": mf.sha256(base_path),
                        "lora_file": OURS, "lora_sha256": mf.sha256(lora_path),
                        "loader": f"WanPipeline.load_lora_weights(dir, weight_name={OURS!r}, adapter_name={ADAPTER!r})",
                        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                     "peft": peft.__version__},
                        "lora_effect_max_abs": f"{effect:.6e}", "hand_merge_max_abs": f"{hand:.3e}"})
    print("check-lora-diffusers: OK")


if __name__ == "__main__":
    main()
