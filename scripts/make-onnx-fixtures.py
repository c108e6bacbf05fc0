#!/usr/bin/env python3
"""Writes the random-init ONNX test fixtures of medgen's model-backed curation operators into
tests/fixtures/onnx/, with the same input/output signatures as the real models (which cannot be
obtained from any package registry here):

  aesthetic_random.onnx   curate.aesthetic: [N,3,224,224] CLIP-normalised RGB -> [N,1].
                          A ViT-L/14-shaped stand-in: 14x14/14 patch embedding (Conv), token mean,
                          L2 normalisation, then a LAION-style MLP head (Gemm-ReLU-Gemm) + 5.0.
  dover_random.onnx       curate.technical_quality (dover_model): [1,3,8,224,224] fragments -> [1,1].
                          A DOVER-shaped stand-in: one 32x32 fragment-patch 3-D Conv, mean, Gemm.

and, for each, `<name>.expected.json`: the outputs of the ONNX reference evaluator (onnx.reference,
pure Python) on a fixed input x[n,c,h,w(,t)] = sin(0.01*h + 0.02*w + 0.3*c + 0.5*n (+ 0.7*t)), so
the Rust tests check ONNX Runtime's results through medgen's plumbing without running Python.

Weights come from Python's `random` with fixed seeds: running this again writes identical files.
Needs only the `onnx` package (and numpy, which it depends on):  .cache/ortenv/bin/pip install onnx
Usage:  .cache/ortenv/bin/python scripts/make-onnx-fixtures.py
"""

import json
import os
import random

import onnx
from onnx import TensorProto, helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")


def rand_tensor(name, dims, scale, rng):
    n = 1
    for d in dims:
        n *= d
    vals = [rng.uniform(-scale, scale) for _ in range(n)]
    return helper.make_tensor(name, TensorProto.FLOAT, dims, vals)


def const(name, dims, vals):
    return helper.make_tensor(name, TensorProto.FLOAT, dims, vals)


def aesthetic():
    rng = random.Random(1234)
    d, h = 32, 16
    nodes = [
        helper.make_node("Conv", ["x", "patch_w", "patch_b"], ["tok"], kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("ReduceMean", ["tok", "axes23"], ["emb"], keepdims=0),
        helper.make_node("ReduceL2", ["emb", "axes1"], ["norm"], keepdims=1),
        helper.make_node("Div", ["emb", "norm"], ["unit"]),
        helper.make_node("Gemm", ["unit", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["raw"], transB=1),
        helper.make_node("Add", ["raw", "centre"], ["score"]),
    ]
    inits = [
        rand_tensor("patch_w", [d, 3, 14, 14], 0.05, rng),
        rand_tensor("patch_b", [d], 0.05, rng),
        helper.make_tensor("axes23", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
        rand_tensor("w1", [h, d], 0.5, rng),
        rand_tensor("b1", [h], 0.1, rng),
        rand_tensor("w2", [1, h], 0.5, rng),
        rand_tensor("b2", [1], 0.1, rng),
        const("centre", [1], [5.0]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])
    graph = helper.make_graph(nodes, "aesthetic_random", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="medgen fixtures")


def dover():
    rng = random.Random(5678)
    c = 8
    nodes = [
        helper.make_node("Conv", ["video", "frag_w", "frag_b"], ["f"], kernel_shape=[1, 32, 32], strides=[1, 32, 32]),
        helper.make_node("Relu", ["f"], ["a"]),
        helper.make_node("ReduceMean", ["a", "axes234"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "w", "b"], ["technical"], transB=1),
    ]
    inits = [
        rand_tensor("frag_w", [c, 3, 1, 32, 32], 0.02, rng),
        rand_tensor("frag_b", [c], 0.05, rng),
        helper.make_tensor("axes234", TensorProto.INT64, [3], [2, 3, 4]),
        rand_tensor("w", [1, c], 0.5, rng),
        rand_tensor("b", [1], 0.1, rng),
    ]
    x = helper.make_tensor_value_info("video", TensorProto.FLOAT, [1, 3, 8, 224, 224])
    y = helper.make_tensor_value_info("technical", TensorProto.FLOAT, [1, 1])
    graph = helper.make_graph(nodes, "dover_random", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="medgen fixtures")


def probe_input(shape):
    """x[n,c,(t,)h,w] = sin(0.01*h + 0.02*w + 0.3*c + 0.5*n + 0.7*t)."""
    import numpy as np  # a dependency of onnx, used only to feed the reference evaluator

    idx = np.indices(shape)
    n, c = idx[0], idx[1]
    h, w = idx[-2], idx[-1]
    t = idx[2] if len(shape) == 5 else 0
    return np.sin(0.01 * h + 0.02 * w + 0.3 * c + 0.5 * n + 0.7 * t).astype(np.float32)


def write(name, model, shape):
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    from onnx.reference import ReferenceEvaluator

    x = probe_input(shape)
    (y,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})
    expected = {
        "input_shape": list(shape),
        "input": "sin(0.01*h + 0.02*w + 0.3*c + 0.5*n + 0.7*t)",
        "output_shape": list(y.shape),
        "output": [float(v) for v in y.reshape(-1)],
    }
    with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes): {name} -> {expected['output']}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write("aesthetic_random", aesthetic(), (2, 3, 224, 224))
    write("dover_random", dover(), (1, 3, 8, 224, 224))
