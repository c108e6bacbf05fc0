#!/usr/bin/env python3
"""Writes LoRA files in the two non-diffusers layouts diffusers' Wan loader converts — musubi-tuner /
kohya (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.lora_up.weight`, `.alpha`) and original Wan
names (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`, plus zero norm `.diff` /
`.diff_b` keys that diffusers drops) — loads each into the committed tiny base model through
`WanPipeline.load_lora_weights`, and records diffusers' outputs for kernels/tests/lora_diffusers.rs,
which merges the same files with medgen's loader and must match.

Reads  kernels/tests/fixtures/lora/lora_tiny_base.safetensors (see scripts/check-lora-diffusers.py)
Writes kernels/tests/fixtures/lora/lora_tiny_musubi.safetensors, lora_tiny_wanorig.safetensors,
       lora_tiny_wanbias.safetensors (original Wan names with non-zero `.diff_b` bias deltas, as
       CausVid-style LoRAs ship), lora_tiny_peftbias.safetensors (PEFT layout with `lora_B.bias` and
       `lora_alpha` ≠ r in its metadata) and lora_tiny_formats_diffusers.safetensors (FIXTURES.md
       format, model "wan_dit_lora_formats": in.x_t, in.timestep, in.context; out.velocity_base,
       out.velocity_musubi, out.velocity_wanorig, out.velocity_wanbias, out.velocity_peftbias)

Random adapters: rank 4, B = 0.2·randn, a different alpha per module (so a loader that ignored the
per-module alphas fails). Fails on any loading warning. Run with the pinned venv of scripts/make-fixtures.sh:
  .cache/torchenv/bin/python scripts/make-lora-formats-fixture.py
"""

import importlib.util
import json
import logging
import os
import sys
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DIR = os.path.join(REPO, "kernels/tests/fixtures/lora")
BASE = "lora_tiny_base.safetensors"
OUT = "lora_tiny_formats_diffusers.safetensors"
SEED = 7101
RANK = 4


def make_fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make-fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    mf = make_fixtures_module()
    mf.setup()
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    base_path = os.path.join(DIR, BASE)
    with safe_open(base_path, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    base_sd = load_file(base_path)
    g = mf.gen(SEED)

    # Original Wan module → (out, in) of the diffusers weight it adapts.
    pairs = {"self_attn": "attn1", "cross_attn": "attn2"}
    proj = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
    modules = {}
    for i in range(cfg["num_layers"]):
        for orig, diff in pairs.items():
            for o, c in proj.items():
                modules[f"blocks.{i}.{orig}.{o}"] = base_sd[f"blocks.{i}.{diff}.{c}.weight"].shape
        modules[f"blocks.{i}.ffn.0"] = base_sd[f"blocks.{i}.ffn.net.0.proj.weight"].shape
        modules[f"blocks.{i}.ffn.2"] = base_sd[f"blocks.{i}.ffn.net.2.weight"].shape

    def adapters(g=g):
        out = {}
        for k, (o, i) in sorted(modules.items()):
            a = mf.randn(g, RANK, i) / i ** 0.5
            b = 0.2 * mf.randn(g, o, RANK)
            alpha = torch.tensor(float(1 + torch.randint(1, 12, (1,), generator=g).item()))
            out[k] = (a, b, alpha)
        return out

    musubi = {}
    for k, (a, b, alpha) in adapters().items():
        name = "lora_unet_" + k.replace(".", "_")
        musubi[f"{name}.lora_down.weight"] = a.contiguous()
        musubi[f"{name}.lora_up.weight"] = b.contiguous()
        musubi[f"{name}.alpha"] = alpha
    wanorig = {}
    for k, (a, b, alpha) in adapters().items():
        wanorig[f"diffusion_model.{k}.lora_down.weight"] = a.contiguous()
        wanorig[f"diffusion_model.{k}.lora_up.weight"] = b.contiguous()
        wanorig[f"diffusion_model.{k}.alpha"] = alpha
    for i in range(cfg["num_layers"]):
        d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        wanorig[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(d)
        wanorig[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros(d)
    files = {"musubi": "lora_tiny_musubi.safetensors", "wanorig": "lora_tiny_wanorig.safetensors"}
    save_file(musubi, os.path.join(DIR, files["musubi"]), metadata={"format": "pt"})
    save_file(wanorig, os.path.join(DIR, files["wanorig"]), metadata={"format": "pt"})

    # Bias deltas, from a generator of their own: the files and inputs above stay as they were.
    gb = mf.gen(SEED + 1)
    wanbias = {}
    for k, (a, b, alpha) in adapters(gb).items():
        wanbias[f"diffusion_model.{k}.lora_down.weight"] = a.contiguous()
        wanbias[f"diffusion_model.{k}.lora_up.weight"] = b.contiguous()
        wanbias[f"diffusion_model.{k}.alpha"] = alpha
        wanbias[f"diffusion_model.{k}.diff_b"] = 0.3 * mf.randn(gb, b.shape[0])
    to_diffusers = {"self_attn": "attn1", "cross_attn": "attn2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    peftbias = {}
    targets = []
    for k, (a, b, _) in adapters(gb).items():
        blk, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        if rest.startswith("ffn"):
            name = f"blocks.{blk}.{to_diffusers[rest]}"
        else:
            attn, o = rest.split(".")
            name = f"blocks.{blk}.{to_diffusers[attn]}.{proj[o]}"
        targets.append(name)
        peftbias[f"transformer.{name}.lora_A.weight"] = a.contiguous()
        peftbias[f"transformer.{name}.lora_B.weight"] = b.contiguous()
        peftbias[f"transformer.{name}.lora_B.bias"] = 0.3 * mf.randn(gb, b.shape[0])
    peft_meta = {"r": RANK, "lora_alpha": 6, "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
                 "use_rslora": False, "use_dora": False, "init_lora_weights": True, "lora_bias": True}
    peft_meta = {f"transformer.{k}": v for k, v in peft_meta.items()}
    files["wanbias"] = "lora_tiny_wanbias.safetensors"
    files["peftbias"] = "lora_tiny_peftbias.safetensors"
    save_file(wanbias, os.path.join(DIR, files["wanbias"]), metadata={"format": "pt"})
    save_file(peftbias, os.path.join(DIR, files["peftbias"]),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(peft_meta)})

    model = WanTransformer3DModel(**cfg).float().eval()
    model.load_state_dict(base_sd, strict=True)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=model)
    x_t = mf.randn(g, 2, cfg["in_channels"], 3, 8, 8)
    timestep = torch.tensor([900.0, 250.0])
    context = mf.randn(g, 2, 8, cfg["text_dim"])
    context[1, 5:] = 0.0

    def forward():
        with torch.no_grad():
            return pipe.transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=context,
                                    return_dict=False)[0]

    tensors = {"in.x_t": x_t, "in.timestep": timestep, "in.context": context, "out.velocity_base": forward()}
    for kind, name in files.items():
        caught_logs = []

        class Collect(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.WARNING:
                    caught_logs.append(record.getMessage())

        h = Collect()
        logging.getLogger("diffusers").addHandler(h)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(DIR, weight_name=name, adapter_name=kind)
        logging.getLogger("diffusers").removeHandler(h)
        problems = caught_logs + [str(w.message) for w in caught]
        if problems:
            sys.exit(f"loading {name} warned: {problems}")
        v = forward()
        effect = (v - tensors["out.velocity_base"]).abs().max().item()
        print(f"  {name}: {len(pipe.get_list_adapters()['transformer'])} adapter(s); effect max abs {effect:.3e}")
        if effect < 1e-2:
            sys.exit(f"{name}: the adapters barely change the output ({effect:e})")
        tensors[f"out.velocity_{kind}"] = v
        pipe.unload_lora_weights()
    back = (forward() - tensors["out.velocity_base"]).abs().max().item()
    if back > 1e-6:
        sys.exit(f"unloading did not restore the base output ({back:e})")
    mf.save(DIR, OUT, tensors, "wan_dit_lora_formats", mf.clean_config(model.config), layout="diffusers",
            extra_meta={"seed": str(SEED), "base_file": BASE, "base_sha256": mf.sha256(base_path),
                        "files": files, "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}})
    print("make-lora-formats-fixture: OK")


if __name__ == "__main__":
    main()
