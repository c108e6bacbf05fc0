//! Finite-difference gradient checks (f64, central differences) for every op's backward pass,
//! plus f32/f64 and tiled/naive consistency checks.
//!
//! Each check builds a scalar `L = Σ g ⊙ f(inputs)` with a random upstream gradient `g`, computes
//! the analytic gradients with the op's backward function, and compares them element by element
//! with `(L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h`, `h = 1e-5`. The error metric is
//! `|num − ana| / (1 + |num|)`; every check prints its maximum (run with `--nocapture`).

use medgen_kernels::ops::activation::*;
use medgen_kernels::ops::attention::*;
use medgen_kernels::ops::conv::*;
use medgen_kernels::ops::elementwise::*;
use medgen_kernels::ops::linear::*;
use medgen_kernels::ops::loss::*;
use medgen_kernels::ops::norm::*;
use medgen_kernels::ops::rope::*;
use medgen_kernels::ops::shape::*;
use medgen_kernels::{DType, Rng, Tensor};

const H: f64 = 1e-5;
const TOL: f64 = 1e-7;

fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F64, rng)
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    assert_eq!(x.len(), y.len());
    x.iter().zip(&y).map(|(p, q)| p * q).sum()
}

/// Compares `analytic[k] = (input index, gradient)` with central differences of
/// `L(inputs) = Σ g ⊙ f(inputs)`; returns the max error and asserts it is below `TOL`.
fn fd_check(
    name: &str,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Tensor,
    g: &Tensor,
    analytic: &[(usize, Tensor)],
) -> f64 {
    let mut worst = 0.0f64;
    for (i, ana) in analytic {
        assert_eq!(ana.shape(), inputs[*i].shape(), "{name}: gradient shape of input {i}");
        let ana = ana.to_vec_f64().unwrap();
        let base = inputs[*i].to_vec_f64().unwrap();
        for e in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[e] += delta;
                let mut ins = inputs.to_vec();
                ins[*i] = Tensor::from_f64_slice(&v, inputs[*i].shape(), DType::F64).unwrap();
                dot(&f(&ins), g)
            };
            let num = (eval(H) - eval(-H)) / (2.0 * H);
            let err = (num - ana[e]).abs() / (1.0 + num.abs());
            assert!(err < TOL, "{name}: input {i} element {e}: numeric {num} vs analytic {}", ana[e]);
            worst = worst.max(err);
        }
    }
    println!("FD {name:<34} max err {worst:.2e}");
    worst
}

#[test]
fn fd_linear() {
    let mut rng = Rng::new(1);
    let ins = vec![rand(&[2, 3, 5], &mut rng), rand(&[4, 5], &mut rng), rand(&[4], &mut rng)];
    let g = rand(&[2, 3, 4], &mut rng);
    let gr = linear_backward(&ins[0], &ins[1], true, &g, true).unwrap();
    fd_check(
        "linear",
        &ins,
        |t| linear(&t[0], &t[1], Some(&t[2])).unwrap(),
        &g,
        &[(0, gr.dx.unwrap()), (1, gr.dw.unwrap()), (2, gr.db.unwrap())],
    );
}

#[test]
fn fd_matmul() {
    let mut rng = Rng::new(2);
    let ins = vec![rand(&[2, 3, 4], &mut rng), rand(&[2, 4, 5], &mut rng)];
    let g = rand(&[2, 3, 5], &mut rng);
    let (da, db) = matmul_backward(&ins[0], &ins[1], &g).unwrap();
    fd_check("bmm", &ins, |t| matmul(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, db)]);
    let ins = vec![rand(&[2, 3, 4], &mut rng), rand(&[4, 5], &mut rng)];
    let (da, db) = matmul_backward(&ins[0], &ins[1], &g).unwrap();
    fd_check("matmul (shared rhs)", &ins, |t| matmul(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, db)]);
}

fn conv_case(name: &str, x: &[usize], w: &[usize], p: Conv3dParams, seed: u64) {
    let mut rng = Rng::new(seed);
    let ins = vec![rand(x, &mut rng), rand(w, &mut rng), rand(&[w[0]], &mut rng)];
    let y = conv3d(&ins[0], &ins[1], Some(&ins[2]), &p).unwrap();
    let g = rand(y.shape(), &mut rng);
    let gr = conv3d_backward(&ins[0], &ins[1], true, &g, &p, true).unwrap();
    fd_check(
        name,
        &ins,
        |t| conv3d(&t[0], &t[1], Some(&t[2]), &p).unwrap(),
        &g,
        &[(0, gr.dx.unwrap()), (1, gr.dw), (2, gr.db.unwrap())],
    );
}

#[test]
fn fd_conv3d() {
    // DiT patch embedding: kernel = stride = (1,2,2)
    conv_case(
        "conv3d patch-embed k=s=(1,2,2)",
        &[2, 3, 2, 4, 6],
        &[5, 3, 1, 2, 2],
        Conv3dParams::new([1, 2, 2], [0, 0, 0]),
        3,
    );
    // VAE causal 3×3×3 conv: two leading zero frames
    conv_case("conv3d causal 3x3x3", &[1, 2, 3, 4, 5], &[3, 2, 3, 3, 3], Conv3dParams::causal([1, 1, 1], [1, 1, 1]), 4);
    // strided with asymmetric padding (VAE downsample-like)
    let p = Conv3dParams { stride: [2, 2, 2], padding: [[0, 0], [0, 1], [0, 1]] };
    conv_case("conv3d stride 2, pad (0,1)", &[1, 2, 5, 5, 4], &[2, 2, 3, 3, 3], p, 5);
}

#[test]
fn conv3d_matches_direct_sum() {
    let mut rng = Rng::new(6);
    let x = rand(&[1, 2, 3, 4, 5], &mut rng);
    let w = rand(&[3, 2, 3, 3, 3], &mut rng);
    let p = Conv3dParams::causal([1, 1, 1], [1, 1, 1]);
    let y = conv3d(&x, &w, None, &p).unwrap();
    assert_eq!(y.shape(), &[1, 3, 3, 4, 5]);
    let (xv, wv, yv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
    for co in 0..3 {
        for t in 0..3 {
            for h in 0..4 {
                for ww in 0..5 {
                    let mut s = 0.0;
                    for ci in 0..2 {
                        for dt in 0..3 {
                            for dh in 0..3 {
                                for dw in 0..3 {
                                    let (ti, hi, wi) = (
                                        t as isize + dt as isize - 2,
                                        h as isize + dh as isize - 1,
                                        ww as isize + dw as isize - 1,
                                    );
                                    if ti < 0 || hi < 0 || wi < 0 || hi >= 4 || wi >= 5 {
                                        continue;
                                    }
                                    let xi = ((ci * 3 + ti as usize) * 4 + hi as usize) * 5 + wi as usize;
                                    s += xv[xi] * wv[(((co * 2 + ci) * 3 + dt) * 3 + dh) * 3 + dw];
                                }
                            }
                        }
                    }
                    let got = yv[((co * 3 + t) * 4 + h) * 5 + ww];
                    assert!((got - s).abs() < 1e-12, "{got} vs {s}");
                }
            }
        }
    }
    // bad shapes are errors, not panics
    assert!(conv3d(&x, &rand(&[3, 4, 3, 3, 3], &mut rng), None, &p).is_err());
    assert!(conv3d(&x, &w, None, &Conv3dParams::new([0, 1, 1], [0, 0, 0])).is_err());
    assert!(conv3d(&x, &rand(&[3, 2, 9, 1, 1], &mut rng), None, &Conv3dParams::new([1, 1, 1], [0, 0, 0])).is_err());
}

#[test]
fn fd_layer_norm() {
    let mut rng = Rng::new(7);
    let ins = vec![rand(&[2, 3, 8], &mut rng), rand(&[8], &mut rng), rand(&[8], &mut rng)];
    let g = rand(&[2, 3, 8], &mut rng);
    let gr = layer_norm_backward(&ins[0], Some(&ins[1]), true, 1e-6, &g).unwrap();
    fd_check(
        "layer_norm affine",
        &ins,
        |t| layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-6).unwrap(),
        &g,
        &[(0, gr.dx), (1, gr.dweight.unwrap()), (2, gr.dbias.unwrap())],
    );
    let gr = layer_norm_backward(&ins[0], None, false, 1e-6, &g).unwrap();
    assert!(gr.dweight.is_none() && gr.dbias.is_none());
    fd_check("layer_norm no affine", &ins, |t| layer_norm(&t[0], None, None, 1e-6).unwrap(), &g, &[(0, gr.dx)]);
}

#[test]
fn fd_rms_norm() {
    let mut rng = Rng::new(8);
    let ins = vec![rand(&[2, 3, 8], &mut rng), rand(&[8], &mut rng)];
    let g = rand(&[2, 3, 8], &mut rng);
    let gr = rms_norm_backward(&ins[0], &ins[1], 1e-6, &g).unwrap();
    fd_check(
        "rms_norm (last dim)",
        &ins,
        |t| rms_norm(&t[0], &t[1], 1e-6).unwrap(),
        &g,
        &[(0, gr.dx), (1, gr.dweight.unwrap())],
    );
}

#[test]
fn fd_rms_norm_channel() {
    let mut rng = Rng::new(9);
    let ins = vec![rand(&[2, 4, 2, 3, 3], &mut rng), rand(&[4, 1, 1, 1], &mut rng)];
    let g = rand(&[2, 4, 2, 3, 3], &mut rng);
    let gr = rms_norm_channel_backward(&ins[0], &ins[1], &g).unwrap();
    fd_check(
        "rms_norm_channel (VAE)",
        &ins,
        |t| rms_norm_channel(&t[0], &t[1]).unwrap(),
        &g,
        &[(0, gr.dx), (1, gr.dweight.unwrap())],
    );
    // forward formula and the zero-norm clamp
    let mut v = ins[0].to_vec_f64().unwrap();
    for c in 0..4 {
        v[c * 18] = 0.0; // batch 0, position 0, every channel
    }
    let x = Tensor::from_f64_slice(&v, &[2, 4, 2, 3, 3], DType::F64).unwrap();
    let y = rms_norm_channel(&x, &ins[1]).unwrap().to_vec_f64().unwrap();
    let gam = ins[1].to_vec_f64().unwrap();
    for c in 0..4 {
        assert_eq!(y[c * 18], 0.0);
    }
    let n: f64 = (0..4).map(|c| v[c * 18 + 5].powi(2)).sum::<f64>().sqrt();
    for c in 0..4 {
        let want = v[c * 18 + 5] / n * 2.0 * gam[c];
        assert!((y[c * 18 + 5] - want).abs() < 1e-14);
    }
    let dx = rms_norm_channel_backward(&x, &ins[1], &g).unwrap().dx.to_vec_f64().unwrap();
    assert!(dx.iter().all(|v| v.is_finite()));
}

#[test]
fn fd_rope_unequal_split() {
    // hd = 32 → 12/10/10 channels; grid 3×4×5 so all three axes differ
    let mut rng = Rng::new(10);
    let rope = Rope3d::new(32, [3, 4, 5], 10000.0).unwrap();
    let ins = vec![rand(&[1, 60, 2, 32], &mut rng)];
    let g = rand(&[1, 60, 2, 32], &mut rng);
    let dx = rope_backward(&g, &rope).unwrap();
    fd_check("rope3d hd=32 (12/10/10)", &ins, |t| rope_apply(&t[0], &rope).unwrap(), &g, &[(0, dx)]);
    // norm preservation per pair and the first token is the identity
    let y = rope_apply(&ins[0], &rope).unwrap();
    let (xv, yv) = (ins[0].to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
    assert!(xv[..64].iter().zip(&yv[..64]).all(|(a, b)| (a - b).abs() < 1e-15));
    for p in 0..xv.len() / 2 {
        let a = xv[2 * p].hypot(xv[2 * p + 1]);
        let b = yv[2 * p].hypot(yv[2 * p + 1]);
        assert!((a - b).abs() < 1e-12);
    }
    // token (f=1, h=2, w=3): pair 0 (frame axis, θ=1) rotates by 1 rad; pair 6 (height, θ=1) by 2; pair 11 (width) by 3
    let n = 20 + 2 * 5 + 3;
    for (pair, ang) in [(0usize, 1.0f64), (6, 2.0), (11, 3.0)] {
        let o = n * 64 + 2 * pair;
        let (a, b) = (xv[o], xv[o + 1]);
        assert!((yv[o] - (a * ang.cos() - b * ang.sin())).abs() < 1e-12);
        assert!((yv[o + 1] - (a * ang.sin() + b * ang.cos())).abs() < 1e-12);
    }
    assert!(rope_apply(&rand(&[1, 59, 2, 32], &mut rng), &rope).is_err());
}

fn attention_case(name: &str, qs: &[usize], ks: &[usize], tiles: AttentionTiles, seed: u64) {
    let mut rng = Rng::new(seed);
    let ins = vec![rand(qs, &mut rng), rand(ks, &mut rng), rand(ks, &mut rng)];
    let fwd = attention_tiled(&ins[0], &ins[1], &ins[2], None, tiles).unwrap();
    let naive = attention_naive(&ins[0], &ins[1], &ins[2], None).unwrap();
    assert!(fwd.out.max_abs_diff(&naive).unwrap() < 1e-12, "{name}: tiled vs naive forward");
    let dflt = attention(&ins[0], &ins[1], &ins[2], None).unwrap();
    assert!(fwd.out.max_abs_diff(&dflt.out).unwrap() < 1e-12);
    assert!(fwd.lse.max_abs_diff(&dflt.lse).unwrap() < 1e-12);
    let g = rand(qs, &mut rng);
    let gr = attention_backward_tiled(&ins[0], &ins[1], &ins[2], &fwd.out, &fwd.lse, &g, None, tiles).unwrap();
    let gd = attention_backward(&ins[0], &ins[1], &ins[2], &fwd.out, &fwd.lse, &g, None).unwrap();
    assert!(gr.dk.max_abs_diff(&gd.dk).unwrap() < 1e-12, "{name}: gradients independent of tiles");
    fd_check(
        name,
        &ins,
        |t| attention_tiled(&t[0], &t[1], &t[2], None, tiles).unwrap().out,
        &g,
        &[(0, gr.dq), (1, gr.dk), (2, gr.dv)],
    );
}

#[test]
fn fd_self_attention_multi_tile() {
    // 70 tokens in tiles of 16 queries × 32 keys: 5 query tiles and 3 key tiles, both ragged
    let tiles = AttentionTiles { block_q: 16, block_k: 32 };
    attention_case("self-attention L=70 H=2 d=4 (tiled)", &[1, 70, 2, 4], &[1, 70, 2, 4], tiles, 11);
}

#[test]
fn fd_cross_attention() {
    // different key length, batch 2, 3 query tiles × 3 key tiles
    let tiles = AttentionTiles { block_q: 4, block_k: 32 };
    attention_case("cross-attention Lq=9 Lk=75 (tiled)", &[2, 9, 2, 8], &[2, 75, 2, 8], tiles, 12);
}

#[test]
fn attention_f32_and_bf16_paths() {
    let mut rng = Rng::new(13);
    let q = rand(&[1, 200, 2, 16], &mut rng);
    let k = rand(&[1, 300, 2, 16], &mut rng);
    let v = rand(&[1, 300, 2, 16], &mut rng);
    let want = attention_naive(&q, &k, &v, None).unwrap();
    let f = |t: &Tensor, d| t.to_dtype(d).unwrap();
    let o32 = attention(&f(&q, DType::F32), &f(&k, DType::F32), &f(&v, DType::F32), None).unwrap();
    assert_eq!(o32.out.dtype(), DType::F32);
    assert!(o32.out.max_abs_diff(&want).unwrap() < 2e-5);
    let o16 = attention(&f(&q, DType::BF16), &f(&k, DType::BF16), &f(&v, DType::BF16), None).unwrap();
    assert_eq!(o16.out.dtype(), DType::BF16);
    assert!(o16.out.max_abs_diff(&want).unwrap() < 5e-2);
    // shape errors
    assert!(attention(&q, &k, &rand(&[1, 299, 2, 16], &mut rng), None).is_err());
    assert!(attention(&q, &rand(&[1, 300, 3, 16], &mut rng), &rand(&[1, 300, 3, 16], &mut rng), None).is_err());
}

#[test]
fn fd_activations() {
    let mut rng = Rng::new(14);
    let ins = vec![Tensor::randn(&[3, 7], 2.0, DType::F64, &mut rng)];
    let g = rand(&[3, 7], &mut rng);
    fd_check("gelu_tanh", &ins, |t| gelu_tanh(&t[0]).unwrap(), &g, &[(0, gelu_tanh_backward(&ins[0], &g).unwrap())]);
    fd_check("silu", &ins, |t| silu(&t[0]).unwrap(), &g, &[(0, silu_backward(&ins[0], &g).unwrap())]);
    fd_check("gelu_erf", &ins, |t| gelu_erf(&t[0]).unwrap(), &g, &[(0, gelu_erf_backward(&ins[0], &g).unwrap())]);
    let y = softmax(&ins[0]).unwrap();
    fd_check("softmax (last dim)", &ins, |t| softmax(&t[0]).unwrap(), &g, &[(0, softmax_backward(&y, &g).unwrap())]);
    // clamp: FD is valid away from the kinks (|x| = 1)
    assert!(ins[0].to_vec_f64().unwrap().iter().all(|v| (v.abs() - 1.0).abs() > 1e-3));
    let dc = clamp_backward(&ins[0], -1.0, 1.0, &g).unwrap();
    fd_check("clamp [-1, 1]", &ins, |t| clamp(&t[0], -1.0, 1.0).unwrap(), &g, &[(0, dc)]);
    assert!(clamp(&ins[0], 1.0, -1.0).is_err());
    // spot values
    let x = Tensor::from_vec(vec![1.0f64, -0.5], &[2]).unwrap();
    let gv = gelu_tanh(&x).unwrap().to_vec_f64().unwrap();
    let gt = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
    assert!((gv[0] - gt(1.0)).abs() < 1e-15 && (gv[1] - gt(-0.5)).abs() < 1e-15);
    // exact GELU: x·Φ(x) with Φ(1) = 0.841344746068543, Φ(−0.5) = 0.308537538725987 (tables)
    let ge = gelu_erf(&x).unwrap().to_vec_f64().unwrap();
    assert!((ge[0] - 0.841_344_746_068_543).abs() < 1e-14, "{}", ge[0]);
    assert!((ge[1] + 0.5 * 0.308_537_538_725_987).abs() < 1e-14, "{}", ge[1]);
    let ge32 = gelu_erf(&x.to_dtype(DType::F32).unwrap()).unwrap().to_vec_f64().unwrap();
    assert!((ge32[0] - ge[0]).abs() < 1e-6 && (ge32[1] - ge[1]).abs() < 1e-6);
}

#[test]
fn fd_elementwise_broadcast() {
    let mut rng = Rng::new(15);
    let ins = vec![rand(&[2, 3, 4], &mut rng), rand(&[3, 1], &mut rng)];
    let g = rand(&[2, 3, 4], &mut rng);
    let (da, db) = add_backward(&g, ins[0].shape(), ins[1].shape()).unwrap();
    fd_check("add (broadcast)", &ins, |t| add(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, db)]);
    let (da, db) = sub_backward(&g, ins[0].shape(), ins[1].shape()).unwrap();
    fd_check("sub (broadcast)", &ins, |t| sub(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, db)]);
    let (da, db) = mul_backward(&ins[0], &ins[1], &g).unwrap();
    fd_check("mul (broadcast)", &ins, |t| mul(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, db)]);
    // gated residual x + a·gate with gate [B,1,D]
    let ins = vec![rand(&[2, 5, 6], &mut rng), rand(&[2, 1, 6], &mut rng)];
    let g = rand(&[2, 5, 6], &mut rng);
    let (da, dgate) = mul_backward(&ins[0], &ins[1], &g).unwrap();
    fd_check("mul (gate [B,1,D])", &ins, |t| mul(&t[0], &t[1]).unwrap(), &g, &[(0, da), (1, dgate)]);
}

#[test]
fn fd_modulate() {
    let mut rng = Rng::new(16);
    let ins = vec![rand(&[2, 5, 6], &mut rng), rand(&[2, 1, 6], &mut rng), rand(&[2, 6], &mut rng)];
    let g = rand(&[2, 5, 6], &mut rng);
    let gr = modulate_backward(&ins[0], &ins[1], &ins[2], &g).unwrap();
    fd_check(
        "modulate x(1+scale)+shift",
        &ins,
        |t| modulate(&t[0], &t[1], &t[2]).unwrap(),
        &g,
        &[(0, gr.dx), (1, gr.dshift), (2, gr.dscale)],
    );
    assert!(modulate(&ins[0], &rand(&[2, 5], &mut rng), &ins[2]).is_err());
}

#[test]
fn fd_mse() {
    let mut rng = Rng::new(17);
    let ins = vec![rand(&[3, 4], &mut rng), rand(&[3, 4], &mut rng)];
    let g = Tensor::scalar(0.7, DType::F64);
    let d = mse_loss_backward(&ins[0], &ins[1], 0.7).unwrap();
    let dt = medgen_kernels::ops::elementwise::scale(&d, -1.0).unwrap();
    fd_check("mse_loss", &ins, |t| Tensor::scalar(mse_loss(&t[0], &t[1]).unwrap(), DType::F64), &g, &[(0, d), (1, dt)]);
}

#[test]
fn f32_matches_f64() {
    // every op's f32 path against its f64 path on the same data
    let mut rng = Rng::new(18);
    let x = rand(&[2, 6, 8], &mut rng);
    let w = rand(&[8], &mut rng);
    let lw = rand(&[5, 8], &mut rng);
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let pairs = [
        (
            layer_norm(&x, Some(&w), Some(&w), 1e-6).unwrap(),
            layer_norm(&f(&x), Some(&f(&w)), Some(&f(&w)), 1e-6).unwrap(),
        ),
        (rms_norm(&x, &w, 1e-6).unwrap(), rms_norm(&f(&x), &f(&w), 1e-6).unwrap()),
        (linear(&x, &lw, None).unwrap(), linear(&f(&x), &f(&lw), None).unwrap()),
        (gelu_tanh(&x).unwrap(), gelu_tanh(&f(&x)).unwrap()),
        (silu(&x).unwrap(), silu(&f(&x)).unwrap()),
        (softmax(&x).unwrap(), softmax(&f(&x)).unwrap()),
    ];
    for (a, b) in pairs {
        assert_eq!(b.dtype(), DType::F32);
        assert!(a.max_abs_diff(&b).unwrap() < 1e-5);
    }
    // mixed dtypes promote; bf16 stays bf16
    let y = linear(&x.to_dtype(DType::BF16).unwrap(), &f(&lw), None).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    let y = linear(&x.to_dtype(DType::BF16).unwrap(), &lw.to_dtype(DType::BF16).unwrap(), None).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let gr = linear_backward(&x.to_dtype(DType::BF16).unwrap(), &lw.to_dtype(DType::BF16).unwrap(), false, &y, true)
        .unwrap();
    assert_eq!(gr.dw.as_ref().unwrap().dtype(), DType::F32, "gradients come back in the compute dtype");
    // strided (non-contiguous) inputs are handled
    let xt = x.transpose(1, 2).unwrap();
    let a = gelu_tanh(&xt).unwrap();
    let b = gelu_tanh(&xt.contiguous()).unwrap();
    assert_eq!(a.max_abs_diff(&b).unwrap(), 0.0);
}

#[test]
fn fd_cat_upsample_embedding() {
    let mut rng = Rng::new(19);
    // cat along the time axis of [B, C, T, H, W] (the VAE cache pattern)
    let ins = vec![rand(&[2, 3, 2, 2, 2], &mut rng), rand(&[2, 3, 1, 2, 2], &mut rng)];
    let g = rand(&[2, 3, 3, 2, 2], &mut rng);
    let parts = cat_backward(&g, 2, &[2, 1]).unwrap();
    fd_check(
        "cat (dim 2)",
        &ins,
        |t| cat(&[&t[0], &t[1]], 2).unwrap(),
        &g,
        &[(0, parts[0].clone()), (1, parts[1].clone())],
    );
    let c = cat(&[&ins[0], &ins[1]], 2).unwrap();
    assert_eq!(c.narrow(2, 2, 1).unwrap().max_abs_diff(&ins[1]).unwrap(), 0.0);
    assert!(cat(&[&ins[0], &rand(&[2, 4, 1, 2, 2], &mut rng)], 2).is_err());

    // nearest ×2 upsampling of the last two dims
    let ins = vec![rand(&[2, 3, 3, 4], &mut rng)];
    let g = rand(&[2, 3, 6, 8], &mut rng);
    let dx = upsample_nearest_backward(&g, [2, 2]).unwrap();
    fd_check("upsample_nearest x2", &ins, |t| upsample_nearest(&t[0], [2, 2]).unwrap(), &g, &[(0, dx)]);
    let y = upsample_nearest(&ins[0], [2, 2]).unwrap().to_vec_f64().unwrap();
    let x = ins[0].to_vec_f64().unwrap();
    assert_eq!(y[8 + 3], x[1]); // row 1, col 3 ← row 0, col 1

    // embedding lookup with a repeated id
    let ids = [3usize, 0, 3, 1];
    let ins = vec![rand(&[5, 4], &mut rng)];
    let g = rand(&[2, 2, 4], &mut rng);
    let dt = embedding_backward(&ids, &[2, 2], &ins[0], &g).unwrap();
    fd_check("embedding", &ins, |t| embedding(&ids, &[2, 2], &t[0]).unwrap(), &g, &[(0, dt)]);
    assert!(embedding(&[5], &[1], &ins[0]).is_err());
}

#[test]
fn timestep_sinusoid() {
    let e = timestep_embedding(&[999.0, 321.5], 256, DType::F64).unwrap();
    assert_eq!(e.shape(), &[2, 256]);
    let v = e.to_vec_f64().unwrap();
    // cos first, then sin; ω_i = 10000^(-i/128)
    for i in [0usize, 1, 77, 127] {
        let w = 10000f64.powf(-(i as f64) / 128.0);
        assert!((v[i] - (999.0 * w).cos()).abs() < 1e-12);
        assert!((v[128 + i] - (999.0 * w).sin()).abs() < 1e-12);
        assert!((v[256 + i] - (321.5 * w).cos()).abs() < 1e-12);
    }
    assert!(timestep_embedding(&[1.0], 3, DType::F32).is_err());
}

/// A Wan self-attention sub-layer built from the ops (projections → RMSNorm across heads →
/// head split (a view) → 3D RoPE → attention → merge → output projection), differentiated by
/// chaining the backward functions by hand. Checks that the ops compose through reshapes.
#[test]
fn fd_composed_self_attention_sublayer() {
    const EPS: f64 = 1e-6;
    let (b, heads, hd) = (2usize, 2usize, 8usize);
    let d = heads * hd;
    let rope = Rope3d::new(hd, [2, 2, 3], 10000.0).unwrap();
    let l = rope.seq_len();
    let mut rng = Rng::new(20);
    // x, wq, bq, gq, wk, bk, gk, wv, bv, wo, bo
    let mut ins = vec![rand(&[b, l, d], &mut rng)];
    for _ in 0..2 {
        ins.push(Tensor::randn(&[d, d], 0.3, DType::F64, &mut rng));
        ins.push(rand(&[d], &mut rng));
        ins.push(Tensor::randn(&[d], 0.2, DType::F64, &mut rng));
    }
    for _ in 0..2 {
        ins.push(Tensor::randn(&[d, d], 0.3, DType::F64, &mut rng));
        ins.push(rand(&[d], &mut rng));
    }
    let heads_view = |t: &Tensor| t.reshape(&[b, l, heads, hd]).unwrap();
    struct Saved {
        ql: Tensor,
        kl: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        o: Tensor,
        lse: Tensor,
    }
    let forward = |t: &[Tensor]| -> (Tensor, Saved) {
        let ql = linear(&t[0], &t[1], Some(&t[2])).unwrap();
        let kl = linear(&t[0], &t[4], Some(&t[5])).unwrap();
        let q = rope_apply(&heads_view(&rms_norm(&ql, &t[3], EPS).unwrap()), &rope).unwrap();
        let k = rope_apply(&heads_view(&rms_norm(&kl, &t[6], EPS).unwrap()), &rope).unwrap();
        let v = heads_view(&linear(&t[0], &t[7], Some(&t[8])).unwrap());
        let a = attention(&q, &k, &v, None).unwrap();
        let merged = a.out.reshape(&[b, l, d]).unwrap();
        let y = linear(&merged, &t[9], Some(&t[10])).unwrap();
        (y, Saved { ql, kl, q, k, v, o: a.out, lse: a.lse })
    };
    let (y, s) = forward(&ins);
    let g = rand(y.shape(), &mut rng);
    // backward, in reverse order
    let merged = s.o.reshape(&[b, l, d]).unwrap();
    let out_g = linear_backward(&merged, &ins[9], true, &g, true).unwrap();
    let d_o = heads_view(&out_g.dx.unwrap());
    let ag = attention_backward(&s.q, &s.k, &s.v, &s.o, &s.lse, &d_o, None).unwrap();
    let flat = |t: &Tensor| t.reshape(&[b, l, d]).unwrap();
    let qn = rms_norm_backward(&s.ql, &ins[3], EPS, &flat(&rope_backward(&ag.dq, &rope).unwrap())).unwrap();
    let kn = rms_norm_backward(&s.kl, &ins[6], EPS, &flat(&rope_backward(&ag.dk, &rope).unwrap())).unwrap();
    let qg = linear_backward(&ins[0], &ins[1], true, &qn.dx, true).unwrap();
    let kg = linear_backward(&ins[0], &ins[4], true, &kn.dx, true).unwrap();
    let vg = linear_backward(&ins[0], &ins[7], true, &flat(&ag.dv), true).unwrap();
    let dx = add(&add(&qg.dx.unwrap(), &kg.dx.unwrap()).unwrap(), &vg.dx.unwrap()).unwrap();
    fd_check(
        "composed self-attn sub-layer",
        &ins,
        |t| forward(t).0,
        &g,
        &[
            (0, dx),
            (1, qg.dw.unwrap()),
            (3, qn.dweight.unwrap()),
            (5, kg.db.unwrap()),
            (6, kn.dweight.unwrap()),
            (8, vg.db.unwrap()),
            (9, out_g.dw.unwrap()),
            (10, out_g.db.unwrap()),
        ],
    );
}
