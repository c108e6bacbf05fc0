#!/usr/bin/env python3
"""Reference values for eval.vbench's preprocessing (operators/src/eval/vbench), made with torchvision.

VBench feeds its backbones frames resized by torchvision on uint8 tensors (bilinear for DINO and the
imaging-quality rule, bicubic + CenterCrop for CLIP, antialias=False). This writes random uint8 images and
torchvision's results for up- and down-scaling to
operators/tests/fixtures/vbench/resize_reference.safetensors (values 0-255 stored as float32).

Environment: .cache/torchenv (scripts/make-fixtures.sh) plus torchvision==0.29.2 installed with --no-deps
(its py3-none wheel works with torch 2.15). CPU only, deterministic.

Usage: .cache/torchenv/bin/python scripts/make-vbench-fixture.py
"""
import os
import torch
import torchvision
from torchvision.transforms import CenterCrop, InterpolationMode, Resize
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "operators/tests/fixtures/vbench/resize_reference.safetensors")


def main():
    g = torch.Generator().manual_seed(7)
    out = {}
    cases = {"up": ((3, 20, 30), (37, 53)), "down": ((3, 40, 64), (23, 29))}
    for name, ((c, h, w), size) in cases.items():
        img = torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)
        out[f"{name}.input"] = img.float()
        out[f"{name}.bilinear"] = Resize(size, antialias=False)(img).float()
        out[f"{name}.bicubic"] = Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=False)(img).float()
    # CLIP's transform on a non-square frame: shorter side to 24, then the centre 24x24.
    img = torch.randint(0, 256, (3, 18, 31), generator=g, dtype=torch.uint8)
    out["clip.input"] = img.float()
    out["clip.output"] = CenterCrop(24)(Resize(24, interpolation=InterpolationMode.BICUBIC, antialias=False)(img)).float()
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata=meta)
    print("wrote", OUT, meta)


if __name__ == "__main__":
    main()
