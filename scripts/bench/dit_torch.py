#!/usr/bin/env python3
"""The PyTorch side of `medgen bench dit`: diffusers' WanTransformer3DModel (SDPA attention) on random
weights, timed the way medgen times its own DiT, so the two JSON reports compare phase by phase.

Phases (each: one warm-up run, then --repeats timed runs bracketed by CUDA events; the median counts):
  forward                      model(x, t, context) under torch.no_grad()
  forward+backward             model(...) with gradients, MSE against a random target, loss.backward()
  sampling step (CFG, UniPC)   two no-grad forwards (context, zeros), guidance 5, one UniPC update

bf16 mirrors medgen's bf16 model: weights in bf16 except the modules diffusers keeps in fp32
(`_keep_in_fp32_modules`: time embedder, scale/shift tables, norms). Peak memory is
torch.cuda.max_memory_allocated() over each phase (medgen reports its tensors' peak likewise).

Usage (the GPU machine has torch; diffusers is a pure-Python wheel, see scripts/gpu/prepare.sh):
  python3 scripts/bench/dit_torch.py --config wan-1.3b --frames 81 --size 480x832 --dtype bf16 --json torch.json
"""

import argparse
import json
import statistics
import sys
import time

PRESETS = {
    "wan-1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "wan-14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
}
BASE = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)


def load_config(name):
    if name in PRESETS:
        return {**BASE, **PRESETS[name]}
    with open(name) as f:
        raw = json.load(f)
    return {**BASE, **{k: v for k, v in raw.items() if k in BASE or k in ("num_attention_heads", "ffn_dim", "num_layers")}}


def forward_flops(cfg, tokens, text_len):
    """The same count as WanDitConfig::forward_flops (multiply-add = 2; linears and attention products)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = cfg["ffn_dim"]
    l, lt = float(tokens), float(text_len)

    def lin(rows, i, o):
        return 2.0 * rows * i * o

    block = (4 * lin(l, d, d) + 4.0 * l * l * d + 2 * lin(l, d, d) + 2 * lin(lt, d, d) + 4.0 * l * lt * d
             + lin(l, d, f) + lin(l, f, d))
    pv = 1
    for p in cfg["patch_size"]:
        pv *= p
    outside = (lin(l, cfg["in_channels"] * pv, d) + lin(lt, cfg["text_dim"], d) + lin(lt, d, d)
               + lin(1, cfg["freq_dim"], d) + lin(1, d, d) + lin(1, d, 6 * d) + lin(l, d, cfg["out_channels"] * pv))
    return cfg["num_layers"] * block + outside


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan-1.3b")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--size", default="480x832")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    cfg = load_config(a.config)
    if a.layers:
        cfg["num_layers"] = a.layers
    h, w = (int(v) for v in a.size.lower().split("x"))
    lat = [cfg["in_channels"], 1 + (a.frames - 1) // 4, h // 8, w // 8]
    tokens = lat[1] // cfg["patch_size"][0] * (lat[2] // cfg["patch_size"][1]) * (lat[3] // cfg["patch_size"][2])
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)

    def log(msg):
        print(f"[torch] {msg}", file=sys.stderr, flush=True)

    log(f"building WanTransformer3DModel {cfg}")
    model = WanTransformer3DModel(**cfg)
    model.to(dev, dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, p in model.named_parameters():
        if keep & set(name.split(".")):
            p.data = p.data.float()
    if a.recompute:
        model.enable_gradient_checkpointing()
    params = sum(p.numel() for p in model.parameters())
    weights_bytes = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None

    x = torch.randn(1, *lat, device=dev, dtype=dtype)
    target = torch.randn(1, *lat, device=dev, dtype=torch.float32)
    ctx = torch.randn(1, 512, cfg["text_dim"], device=dev, dtype=dtype)
    uncond = torch.zeros_like(ctx)
    t = torch.tensor([500.0], device=dev)
    fwd = forward_flops(cfg, tokens, 512)

    def timed(name, flops, fn):
        log(f"{name}: warm-up")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        fn()
        runs = []
        for r in range(max(1, a.repeats)):
            if dev.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(dev)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize(dev)
                sec = s.elapsed_time(e) / 1000.0
            else:
                t0 = time.perf_counter()
                fn()
                sec = time.perf_counter() - t0
            log(f"{name}: run {r + 1} {sec:.3f} s")
            runs.append(sec)
        med = statistics.median(runs)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        return dict(name=name, median_s=med, runs_s=runs, flops=flops, tflops=flops / med / 1e12, peak_bytes=peak)

    phases = []

    def forward():
        with torch.no_grad():
            model(x, t, ctx, return_dict=False)

    phases.append(timed("forward", fwd, forward))
    if not a.no_train:
        def train():
            model.zero_grad(set_to_none=True)
            out = model(x, t, ctx, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()

        phases.append(timed("forward+backward", fwd * (4.0 if a.recompute else 3.0), train))
        model.zero_grad(set_to_none=True)

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                    num_train_timesteps=1000)
    sched.set_timesteps(50, device=dev)
    state = {"x": x.float(), "i": 0}

    def step():
        with torch.no_grad():
            ts = sched.timesteps[state["i"]]
            xi = state["x"].to(dtype)
            tt = ts.expand(1).to(dev)
            v_c = model(xi, tt, ctx, return_dict=False)[0].float()
            v_u = model(xi, tt, uncond, return_dict=False)[0].float()
            v = v_u + 5.0 * (v_c - v_u)
            state["x"] = sched.step(v, ts, state["x"], return_dict=False)[0]
            state["i"] += 1

    phases.append(timed("sampling step (CFG, UniPC)", 2 * fwd, step))

    report = dict(
        config=a.config, parameters=params, layers=cfg["num_layers"], device=str(dev),
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, dtype=a.dtype,
        video=[a.frames, h, w], latent=lat, tokens=tokens, text_len=512, recompute=a.recompute,
        weights_bytes=weights_bytes, phases=phases, torch=torch.__version__,
    )
    for p in phases:
        peak = f"{p['peak_bytes'] / 2**30:.2f} GiB" if p["peak_bytes"] is not None else "-"
        print(f"{p['name']:<28}  {p['median_s']:>10.4f} s  {p['tflops']:>8.2f} TFLOP/s  peak {peak}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
        log(f"wrote {a.json}")


if __name__ == "__main__":
    main()
