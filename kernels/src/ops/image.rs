//! 2-D image ops on `[N, C, H, W]` tensors, forward only, CPU: convolution (on the conv3d GEMM
//! path), transposed convolution, per-channel PReLU, sigmoid, bilinear resizing by a scale factor
//! and backward warping by an optical flow. RIFE's IFNet ([`crate::nets::rife`]) is built from them.
//!
//! [`conv2d`] keeps [`conv3d`]'s dtype rules (promoted inputs); the others compute in `f32` and
//! return `f32` tensors. Device tensors are refused ([`Error::NotOnDevice`](crate::Error)) by all
//! but [`conv2d`].

use rayon::prelude::*;

use super::conv::{Conv3dParams, conv3d};
use super::expect_rank;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The `[N, C, H, W]` dims of `x`.
fn nchw(x: &Tensor, op: &'static str) -> Result<[usize; 4]> {
    if x.rank() != 4 {
        return Err(Error::rank(op, "4 ([N, C, H, W])", x.shape()));
    }
    let s = x.shape();
    Ok([s[0], s[1], s[2], s[3]])
}

/// 2-D convolution `x [N, Cin, H, W] ⊛ w [Cout, Cin, kh, kw] (+ b [Cout])` with the same stride
/// and zero padding on both axes → `[N, Cout, (H + 2p − kh)/s + 1, (W + 2p − kw)/s + 1]`
/// (PyTorch's `Conv2d` with dilation 1 and groups 1): the `kt = 1` case of [`conv3d`].
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    const OP: &str = "conv2d";
    conv2d_asym(x, w, b, stride, [[padding; 2]; 2], OP)
}

/// [`conv2d`] with padding `[[top, bottom], [left, right]]`.
fn conv2d_asym(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: [[usize; 2]; 2],
    op: &'static str,
) -> Result<Tensor> {
    nchw(x, op)?;
    if w.rank() != 4 {
        return Err(Error::rank(op, "4 ([Cout, Cin, kh, kw])", w.shape()));
    }
    let p = Conv3dParams { stride: [1, stride, stride], padding: [[0, 0], padding[0], padding[1]] };
    conv3d(&x.unsqueeze(2)?, &w.unsqueeze(2)?, b, &p)?.squeeze(2)
}

/// Transposed 2-D convolution (PyTorch's `ConvTranspose2d` with dilation 1, groups 1 and no
/// output padding): `x [N, Cin, H, W]`, `w [Cin, Cout, kh, kw]` (PyTorch's layout), `b [Cout]`
/// → `[N, Cout, (H − 1)·s − 2p + kh, (W − 1)·s − 2p + kw]`; `padding < k` on each axis.
///
/// Computed without the zeros of the usual "dilate the input" formulation: the outputs
/// `o = m·s + r` of one phase `r < s` (per axis) are `Σ_d x[m + d] · w[r + p − d·s]` over the
/// offsets `d` that hit the kernel — an ordinary convolution of `x` with the kernel taps of that
/// phase (reversed). Each of the `s²` phases is one [`conv2d`] (for RIFE's 4×4 stride-2 heads:
/// four 2×2 convolutions), whose outputs are then interleaved.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    const OP: &str = "conv_transpose2d";
    let [n, cin, h, wd] = nchw(x, OP)?;
    expect_rank(w, 4, OP)?;
    let ws = w.shape();
    let (cout, kh, kw) = (ws[1], ws[2], ws[3]);
    if ws[0] != cin {
        return Err(Error::shape(OP, format!("input {:?} vs weight {ws:?} ([Cin, Cout, kh, kw])", x.shape())));
    }
    if let Some(b) = b
        && b.shape() != [cout]
    {
        return Err(Error::shape(OP, format!("bias {:?} for {cout} outputs", b.shape())));
    }
    if stride == 0 {
        return Err(Error::arg(OP, "stride 0"));
    }
    if kh == 0 || kw == 0 || padding >= kh || padding >= kw {
        return Err(Error::arg(OP, format!("padding {padding} must be below the kernel size {kh}×{kw}")));
    }
    if h == 0 || wd == 0 {
        return Err(Error::shape(OP, format!("empty input {:?}", x.shape())));
    }
    let (oh, ow) = ((h - 1) * stride + kh - 2 * padding, (wd - 1) * stride + kw - 2 * padding);
    let xf = x.to_dtype(DType::F32)?;
    let wsrc = w.cpu_data::<f32>(OP)?;
    let bias = b.map(|b| b.to_vec_f32()).transpose()?;
    let mut out = vec![0f32; n * cout * oh * ow];
    if let Some(bias) = &bias {
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(nc, p)| p.fill(bias[nc % cout]));
    }
    let axis = |r: usize, len: usize, k: usize, o: usize| Phase::new(r, stride, padding, len, k, o);
    for ry in 0..stride.min(oh) {
        let py = axis(ry, h, kh, oh);
        for rx in 0..stride.min(ow) {
            let px = axis(rx, wd, kw, ow);
            if py.k == 0 || px.k == 0 {
                continue; // no kernel tap lands on this phase: bias only
            }
            // Kernel [Cout, Cin, ky, kx]: tap (iy, ix) is offset d = d_lo + i, w index r + p − d·s.
            let mut wp = vec![0f32; cout * cin * py.k * px.k];
            for co in 0..cout {
                for ci in 0..cin {
                    for iy in 0..py.k {
                        let ty = py.tap(iy, ry, stride, padding);
                        for ix in 0..px.k {
                            let tx = px.tap(ix, rx, stride, padding);
                            wp[((co * cin + ci) * py.k + iy) * px.k + ix] =
                                wsrc[((ci * cout + co) * kh + ty) * kw + tx];
                        }
                    }
                }
            }
            let wp = Tensor::from_vec(wp, &[cout, cin, py.k, px.k])?;
            let y = conv2d_asym(&xf, &wp, None, 1, [py.pad, px.pad], OP)?;
            let (yh, yw) = (y.shape()[2], y.shape()[3]);
            let yd = y.cpu_data::<f32>(OP)?;
            out.par_chunks_mut(oh * ow).enumerate().for_each(|(nc, dst)| {
                let src = &yd[nc * yh * yw..(nc + 1) * yh * yw];
                for m_y in 0..py.rows {
                    let (srow, drow) = ((m_y + py.skip) * yw, (m_y * stride + ry) * ow);
                    for m_x in 0..px.rows {
                        dst[drow + m_x * stride + rx] += src[srow + m_x + px.skip];
                    }
                }
            });
        }
    }
    Tensor::from_vec(out, &[n, cout, oh, ow])
}

/// One phase `r` of [`conv_transpose2d`] along one axis.
struct Phase {
    /// Lowest input offset `d` whose tap `r + p − d·s` is inside the kernel.
    d_lo: isize,
    /// Number of taps (offsets `d_lo..d_lo + k`).
    k: usize,
    /// Zero padding `[before, after]` of the phase's convolution.
    pad: [usize; 2],
    /// Leading convolution outputs to skip (when `d_lo > 0`).
    skip: usize,
    /// Outputs `o = m·s + r` of this phase (`m < rows`).
    rows: usize,
}

impl Phase {
    fn new(r: usize, s: usize, p: usize, len: usize, k: usize, out: usize) -> Phase {
        let (si, rp) = (s as isize, (r + p) as isize);
        // d·s ∈ (r + p − k, r + p].
        let d_lo = (rp - k as isize + 1 + si - 1).div_euclid(si);
        let d_hi = rp.div_euclid(si);
        let taps = (d_hi - d_lo + 1).max(0) as usize;
        let rows = (out - r).div_ceil(s);
        let before = (-d_lo).max(0) as usize;
        let skip = (d_lo + before as isize) as usize;
        // The convolution yields len + before + after − taps + 1 ≥ skip + rows outputs.
        let after = (skip + rows + taps).saturating_sub(1 + len + before);
        Phase { d_lo, k: taps, pad: [before, after], skip, rows }
    }

    /// Kernel index of tap `i`.
    fn tap(&self, i: usize, r: usize, s: usize, p: usize) -> usize {
        ((r + p) as isize - (self.d_lo + i as isize) * s as isize) as usize
    }
}

/// Per-channel PReLU: `x` where positive, `a[c]·x` otherwise; `x [N, C, ...]`, `alpha [C]` (or
/// `[1]`, shared by all channels, as `nn.PReLU()` defaults to).
pub fn prelu(x: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    const OP: &str = "prelu";
    if x.rank() < 2 {
        return Err(Error::rank(OP, "at least 2 ([N, C, ...])", x.shape()));
    }
    let c = x.shape()[1];
    let a = alpha.cpu_data::<f32>(OP)?;
    if alpha.rank() != 1 || (a.len() != c && a.len() != 1) {
        return Err(Error::shape(OP, format!("alpha {:?} for {c} channels", alpha.shape())));
    }
    let plane: usize = x.shape()[2..].iter().product();
    let mut d = x.cpu_data::<f32>(OP)?.into_owned();
    if plane > 0 {
        d.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
            let a = if a.len() == 1 { a[0] } else { a[i % c] };
            for v in p {
                if *v < 0.0 {
                    *v *= a;
                }
            }
        });
    }
    Tensor::from_vec(d, x.shape())
}

/// Logistic sigmoid `1 / (1 + e^−x)`, elementwise.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    let mut d = x.cpu_data::<f32>("sigmoid")?.into_owned();
    d.par_iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
    Tensor::from_vec(d, x.shape())
}

/// Source indices and weight of one output coordinate of [`resize_bilinear`].
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    l: f32,
}

fn taps(out: usize, len: usize, inv: f32) -> Vec<Tap> {
    (0..out)
        .map(|o| {
            let src = (inv * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(len - 1);
            let i1 = if i0 < len - 1 { i0 + 1 } else { i0 };
            Tap { i0, i1, l: (src - i0 as f32).clamp(0.0, 1.0) }
        })
        .collect()
}

/// Bilinear resize of `x [N, C, H, W]` by a scale factor, as PyTorch's
/// `F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False,
/// recompute_scale_factor=False)`: output `⌊H·f⌋ × ⌊W·f⌋`; output pixel `o` samples source
/// coordinate `(o + ½)/f − ½` (clamped at 0; the last pixel repeats past the edge). `f = 1` is
/// the identity. Errors when `f` is not positive and finite or the output would be empty.
pub fn resize_bilinear(x: &Tensor, f: f64) -> Result<Tensor> {
    const OP: &str = "resize_bilinear";
    let [n, c, h, w] = nchw(x, OP)?;
    if !(f > 0.0 && f.is_finite()) {
        return Err(Error::arg(OP, format!("scale factor {f} must be positive and finite")));
    }
    let (oh, ow) = ((h as f64 * f).floor() as usize, (w as f64 * f).floor() as usize);
    if oh == 0 || ow == 0 {
        return Err(Error::arg(OP, format!("scale factor {f} shrinks {h}×{w} to nothing")));
    }
    let src = x.cpu_data::<f32>(OP)?;
    // PyTorch: the coordinate scale is 1/f computed in double, then rounded to float.
    let inv = (1.0 / f) as f32;
    let (ys, xs) = (taps(oh, h, inv), taps(ow, w, inv));
    let mut out = vec![0f32; n * c * oh * ow];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(pi, dst)| {
        let s = &src[pi * h * w..(pi + 1) * h * w];
        for (row, ty) in dst.chunks_mut(ow).zip(&ys) {
            let (r0, r1) = (&s[ty.i0 * w..(ty.i0 + 1) * w], &s[ty.i1 * w..(ty.i1 + 1) * w]);
            for (v, tx) in row.iter_mut().zip(&xs) {
                let top = (1.0 - tx.l) * r0[tx.i0] + tx.l * r0[tx.i1];
                let bot = (1.0 - tx.l) * r1[tx.i0] + tx.l * r1[tx.i1];
                *v = (1.0 - ty.l) * top + ty.l * bot;
            }
        }
    });
    Tensor::from_vec(out, &[n, c, oh, ow])
}

/// Backward warp of `img [N, C, H, W]` by `flow [N, 2, H, W]` (x then y displacement, pixels):
/// output pixel `(x, y)` samples `img` bilinearly at `(x + flow_x, y + flow_y)`, coordinates
/// clamped to the image (border padding). This is RIFE's `warplayer.warp` — `grid_sample`
/// (bilinear, `padding_mode="border"`, `align_corners=True`) on the grid `linspace(−1, 1) +
/// flow / ((size − 1)/2)` — without the round trip through normalised coordinates.
pub fn warp(img: &Tensor, flow: &Tensor) -> Result<Tensor> {
    const OP: &str = "warp";
    let [n, c, h, w] = nchw(img, OP)?;
    let fs = nchw(flow, OP)?;
    if fs != [n, 2, h, w] {
        return Err(Error::shape(
            OP,
            format!("flow {:?} for image {:?} (want [N, 2, H, W])", flow.shape(), img.shape()),
        ));
    }
    let src = img.cpu_data::<f32>(OP)?;
    let fl = flow.cpu_data::<f32>(OP)?;
    let hw = h * w;
    let mut out = vec![0f32; n * c * hw];
    if hw == 0 {
        return Tensor::from_vec(out, img.shape());
    }
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    out.par_chunks_mut(hw).enumerate().for_each(|(pi, dst)| {
        let b = pi / c;
        let s = &src[pi * hw..(pi + 1) * hw];
        let (fx, fy) = (&fl[2 * b * hw..(2 * b + 1) * hw], &fl[(2 * b + 1) * hw..(2 * b + 2) * hw]);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                // NaN flows clamp to 0 (`clamp` keeps NaN, `max`/`min` drop it).
                let sx = (x as f32 + fx[i]).max(0.0).min(xmax);
                let sy = (y as f32 + fy[i]).max(0.0).min(ymax);
                let (x0, y0) = (sx as usize, sy as usize);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let (lx, ly) = (sx - x0 as f32, sy - y0 as f32);
                let top = (1.0 - lx) * s[y0 * w + x0] + lx * s[y0 * w + x1];
                let bot = (1.0 - lx) * s[y1 * w + x0] + lx * s[y1 * w + x1];
                dst[i] = (1.0 - ly) * top + ly * bot;
            }
        }
    });
    Tensor::from_vec(out, img.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn t(d: Vec<f32>, s: &[usize]) -> Tensor {
        Tensor::from_vec(d, s).unwrap()
    }

    fn rand(s: &[usize], seed: u64) -> Tensor {
        Tensor::rand_uniform(s, -1.0, 1.0, DType::F32, &mut Rng::new(seed))
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Direct scatter definition of ConvTranspose2d: out[o] += x[i]·w[t] with o = i·s − p + t.
    fn naive_conv_transpose(x: &Tensor, w: &Tensor, b: &[f32], s: usize, p: usize) -> (Vec<f32>, [usize; 4]) {
        let ([n, cin, h, wd], ws) = (nchw(x, "t").unwrap(), w.shape().to_vec());
        let (cout, kh, kw) = (ws[1], ws[2], ws[3]);
        let (oh, ow) = ((h - 1) * s + kh - 2 * p, (wd - 1) * s + kw - 2 * p);
        let (xd, wv) = (x.to_vec_f32().unwrap(), w.to_vec_f32().unwrap());
        let mut out = vec![0f32; n * cout * oh * ow];
        for bi in 0..n {
            for co in 0..cout {
                for v in &mut out[(bi * cout + co) * oh * ow..(bi * cout + co + 1) * oh * ow] {
                    *v = b[co];
                }
                for ci in 0..cin {
                    for iy in 0..h {
                        for ix in 0..wd {
                            for ty in 0..kh {
                                for tx in 0..kw {
                                    let (oy, ox) =
                                        ((iy * s + ty) as isize - p as isize, (ix * s + tx) as isize - p as isize);
                                    if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                        continue;
                                    }
                                    out[((bi * cout + co) * oh + oy as usize) * ow + ox as usize] += xd
                                        [((bi * cin + ci) * h + iy) * wd + ix]
                                        * wv[((ci * cout + co) * kh + ty) * kw + tx];
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, [n, cout, oh, ow])
    }

    #[test]
    fn conv_transpose_matches_the_scatter_definition() {
        // RIFE's (k 4, s 2, p 1) plus odd strides, paddings and non-square kernels.
        for (i, &(k, s, p, h, w)) in [
            (4, 2, 1, 3, 5),
            (4, 2, 0, 2, 3),
            (3, 1, 1, 4, 4),
            (3, 2, 1, 3, 4),
            (5, 3, 2, 2, 3),
            (2, 3, 0, 3, 2),
            (2, 3, 1, 3, 2),
            (1, 1, 0, 2, 2),
        ]
        .iter()
        .enumerate()
        {
            let x = rand(&[2, 3, h, w], 10 + i as u64);
            let wt = rand(&[3, 2, k, k], 20 + i as u64);
            let b = vec![0.25f32, -0.5];
            let bt = t(b.clone(), &[2]);
            let y = conv_transpose2d(&x, &wt, Some(&bt), s, p).unwrap();
            let (want, shape) = naive_conv_transpose(&x, &wt, &b, s, p);
            assert_eq!(y.shape(), shape, "k{k} s{s} p{p}");
            let err = max_diff(&y.to_vec_f32().unwrap(), &want);
            assert!(err < 1e-5, "k{k} s{s} p{p}: {err}");
        }
        // A 1×1 input through (4, 2, 1) gives the kernel's centre 2×2.
        let k: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let y = conv_transpose2d(&t(vec![2.0], &[1, 1, 1, 1]), &t(k, &[1, 1, 4, 4]), None, 2, 1).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), vec![10.0, 12.0, 18.0, 20.0]);
    }

    #[test]
    fn conv_transpose_and_conv2d_reject_bad_shapes() {
        let x = rand(&[1, 3, 4, 4], 1);
        assert!(conv_transpose2d(&x, &rand(&[2, 3, 4, 4], 2), None, 2, 1).is_err());
        assert!(conv_transpose2d(&x, &rand(&[3, 2, 4, 4], 2), None, 2, 4).is_err());
        assert!(conv_transpose2d(&x, &rand(&[3, 2, 4, 4], 2), None, 0, 1).is_err());
        assert!(conv_transpose2d(&x, &rand(&[3, 2, 4, 4], 2), Some(&t(vec![0.0], &[1])), 2, 1).is_err());
        assert!(conv2d(&x, &rand(&[2, 2, 3, 3], 2), None, 1, 1).is_err());
        assert!(conv2d(&rand(&[3, 4, 4], 1), &rand(&[2, 3, 3, 3], 2), None, 1, 1).is_err());
    }

    #[test]
    fn conv2d_strided_matches_a_direct_sum() {
        let (x, w) = (rand(&[1, 2, 5, 6], 3), rand(&[3, 2, 3, 3], 4));
        let b = t(vec![0.1, 0.2, 0.3], &[3]);
        let y = conv2d(&x, &w, Some(&b), 2, 1).unwrap();
        assert_eq!(y.shape(), [1, 3, 3, 3]);
        let (xd, wd, yd) = (x.to_vec_f32().unwrap(), w.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
        for co in 0..3 {
            for oy in 0..3 {
                for ox in 0..3 {
                    let mut s = 0.1 * (co + 1) as f32;
                    for ci in 0..2 {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                                if (0..5).contains(&iy) && (0..6).contains(&ix) {
                                    s += xd[(ci * 5 + iy as usize) * 6 + ix as usize]
                                        * wd[((co * 2 + ci) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                    }
                    let got = yd[(co * 3 + oy) * 3 + ox];
                    assert!((got - s).abs() < 1e-5, "{co} {oy} {ox}: {got} vs {s}");
                }
            }
        }
    }

    #[test]
    fn prelu_per_channel_and_shared_and_sigmoid() {
        let x = t(vec![-1.0, 2.0, -3.0, 4.0], &[1, 2, 1, 2]);
        let y = prelu(&x, &t(vec![0.5, 0.25], &[2])).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), vec![-0.5, 2.0, -0.75, 4.0]);
        let y = prelu(&x, &t(vec![0.1], &[1])).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), vec![-0.1, 2.0, -0.3, 4.0]);
        assert!(prelu(&x, &t(vec![0.1, 0.2, 0.3], &[3])).is_err());
        let s = sigmoid(&t(vec![0.0, 100.0, -100.0, 2.0], &[4])).unwrap().to_vec_f32().unwrap();
        assert_eq!(&s[..3], &[0.5, 1.0, 0.0]);
        assert!((s[3] - 0.880_797_1).abs() < 1e-6);
    }

    #[test]
    fn resize_matches_pytorch_half_double_and_quarter() {
        // 4 → 2 with f = 0.5: sources 0.5 and 2.5.
        let x = t(vec![0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0], &[1, 1, 2, 4]);
        let y = resize_bilinear(&x, 0.5).unwrap();
        assert_eq!(y.shape(), [1, 1, 1, 2]);
        assert_eq!(y.to_vec_f32().unwrap(), vec![0.5, 2.5]);
        // 2 → 4 with f = 2: sources −0.25 → 0, 0.25, 0.75, 1.25 → the edge repeats.
        let z = resize_bilinear(&t(vec![0.0, 4.0], &[1, 1, 1, 2]), 2.0).unwrap();
        assert_eq!(z.shape(), [1, 1, 2, 4]);
        assert_eq!(z.to_vec_f32().unwrap(), vec![0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);
        // 8 → 2 with f = 0.25: sources 1.5 and 5.5 (F.interpolate gives [1.5, 5.5] on arange(8)).
        let r: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let q = resize_bilinear(&t(r.repeat(4), &[1, 1, 4, 8]), 0.25).unwrap();
        assert_eq!(q.shape(), [1, 1, 1, 2]);
        assert_eq!(q.to_vec_f32().unwrap(), vec![1.5, 5.5]);
        // f = 1 is the identity; 5 × 0.5 floors to 2 (not recomputed): sources 0.5, 2.5.
        assert_eq!(resize_bilinear(&t(r.clone(), &[1, 2, 2, 2]), 1.0).unwrap().to_vec_f32().unwrap(), r);
        let o = resize_bilinear(&t(vec![0.0, 1.0, 2.0, 3.0, 4.0], &[1, 1, 1, 5]), 0.5);
        assert!(o.is_err(), "1 row × 0.5 is empty");
        let o = resize_bilinear(&t([0.0, 1.0, 2.0, 3.0, 4.0].repeat(2), &[1, 1, 2, 5]), 0.5).unwrap();
        assert_eq!(o.to_vec_f32().unwrap(), vec![0.5, 2.5]);
        assert!(resize_bilinear(&x, 0.0).is_err());
        assert!(resize_bilinear(&x, f64::NAN).is_err());
    }

    #[test]
    fn warp_shifts_with_border_padding_per_batch() {
        let img = t(vec![1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0], &[2, 1, 1, 4]);
        let flow =
            t(vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -0.5, -0.5, -0.5, -0.5, 3.0, 0.0, 0.0, 0.0], &[2, 2, 1, 4]);
        let y = warp(&img, &flow).unwrap().to_vec_f32().unwrap();
        assert_eq!(y, vec![2.0, 3.0, 4.0, 4.0, 10.0, 15.0, 25.0, 35.0]);
        // Vertical flow on a 2×2 image; out of range clamps to the border.
        let img = t(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
        let flow = t(vec![0.0, 0.0, 0.0, 0.0, 0.5, 9.0, -9.0, 0.25], &[1, 2, 2, 2]);
        assert_eq!(warp(&img, &flow).unwrap().to_vec_f32().unwrap(), vec![2.0, 4.0, 1.0, 4.0]);
        assert!(warp(&img, &t(vec![0.0; 4], &[1, 1, 2, 2])).is_err());
    }
}
