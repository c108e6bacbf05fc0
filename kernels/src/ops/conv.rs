//! 3-D convolution as gather (im2col) + GEMM, forward and backward.
//!
//! Used for the DiT patch embedding (kernel = stride = (1,2,2)) and the Wan VAE's causal 3×3×3
//! convolutions (asymmetric time padding: two zero frames in front, none behind); a 2-D
//! convolution is the `kt = 1` case applied to every frame.
//!
//! Internally the input is moved to channels-last `[B, T, H, W, C]` so that every kernel tap
//! gathers a contiguous run of channels. The output is produced in tiles of output rows, each
//! tile a GEMM `out[P, Cout] = patches[P, K·Cin] · Wf[K·Cin, Cout]` with a bounded patch buffer
//! (about [`PATCH_TILE_ELEMS`] elements per worker), so memory stays bounded for video-sized
//! inputs. The backward pass computes `dW` the same way (per-worker partial sums) and `dx` as a
//! gather over the output gradient (`dx[P, Cin] = dy_patches[P, K·Cout] · Wt[K·Cout, Cin]`),
//! which needs no scatter and so no synchronisation.

use rayon::prelude::*;

use super::{compute_dtype, dispatch, expect_rank, out_dtype};
use crate::cpu::{MatRef, gemm, reduce_blocks, reduce_parts, sum_rows};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Target size of one worker's patch buffer, in elements.
pub const PATCH_TILE_ELEMS: usize = 1 << 20;

/// Stride and per-side zero padding of a 3-D convolution (axes t, h, w).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dParams {
    /// Stride per axis (t, h, w); each ≥ 1.
    pub stride: [usize; 3],
    /// Zero padding `[before, after]` per axis (t, h, w).
    pub padding: [[usize; 2]; 3],
}

impl Conv3dParams {
    /// Symmetric padding `p` on both sides of each axis.
    pub fn new(stride: [usize; 3], padding: [usize; 3]) -> Self {
        Conv3dParams { stride, padding: padding.map(|p| [p, p]) }
    }

    /// The Wan VAE `CausalConv3d` for a declared padding `(pt, ph, pw)`: `2·pt` zero frames in
    /// front and none behind; `ph`, `pw` on both sides spatially.
    pub fn causal(stride: [usize; 3], declared_padding: [usize; 3]) -> Self {
        let [pt, ph, pw] = declared_padding;
        Conv3dParams { stride, padding: [[2 * pt, 0], [ph, ph], [pw, pw]] }
    }
}

#[derive(Clone, Copy)]
struct Geo {
    b: usize,
    cin: usize,
    cout: usize,
    inp: [usize; 3],
    k: [usize; 3],
    out: [usize; 3],
    stride: [usize; 3],
    pad0: [usize; 3],
}

impl Geo {
    fn taps(&self) -> usize {
        self.k.iter().product()
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> crate::cuda::ops::ConvShape {
        crate::cuda::ops::ConvShape {
            b: self.b,
            cin: self.cin,
            cout: self.cout,
            inp: self.inp,
            k: self.k,
            stride: self.stride,
            pad0: self.pad0,
            out: self.out,
        }
    }
}

fn geometry(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv3dParams, op: &'static str) -> Result<Geo> {
    expect_rank(x, 5, op)?;
    expect_rank(w, 5, op)?;
    let (xs, ws) = (x.shape(), w.shape());
    if xs[1] != ws[1] {
        return Err(Error::shape(op, format!("input {xs:?} ([B,Cin,T,H,W]) vs weight {ws:?} ([Cout,Cin,kt,kh,kw])")));
    }
    if let Some(b) = b
        && b.shape() != [ws[0]]
    {
        return Err(Error::shape(op, format!("bias {:?} for {} outputs", b.shape(), ws[0])));
    }
    if p.stride.contains(&0) {
        return Err(Error::arg(op, format!("stride {:?} has a zero", p.stride)));
    }
    let mut out = [0; 3];
    for a in 0..3 {
        let padded = xs[2 + a] + p.padding[a][0] + p.padding[a][1];
        let k = ws[2 + a];
        if k == 0 || padded < k {
            return Err(Error::shape(op, format!("axis {a}: padded input {padded} smaller than kernel {k}")));
        }
        out[a] = (padded - k) / p.stride[a] + 1;
    }
    Ok(Geo {
        b: xs[0],
        cin: xs[1],
        cout: ws[0],
        inp: [xs[2], xs[3], xs[4]],
        k: [ws[2], ws[3], ws[4]],
        out,
        stride: p.stride,
        pad0: [p.padding[0][0], p.padding[1][0], p.padding[2][0]],
    })
}

/// Channels-last copy `[B, C, T, H, W]` → `[B, T, H, W, C]` in the compute type.
fn channels_last<T: Float>(x: &Tensor, op: &'static str) -> Result<Vec<T>> {
    Ok(x.permute(&[0, 2, 3, 4, 1])?.cpu_data::<T>(op)?.into_owned())
}

/// Index of input coordinate `o·s + k − p` along an axis, if inside `[0, n)`.
#[inline]
fn in_coord(o: usize, k: usize, s: usize, p: usize, n: usize) -> Option<usize> {
    let v = (o * s + k).checked_sub(p)?;
    (v < n).then_some(v)
}

/// Fills `patch` (length K·Cin) for output position (b, to, ho, wo).
#[inline]
fn gather_patch<T: Float>(xcl: &[T], g: &Geo, b: usize, o: [usize; 3], patch: &mut [T]) {
    let [ti, hi, wi] = g.inp;
    let mut kidx = 0;
    for dt in 0..g.k[0] {
        let t = in_coord(o[0], dt, g.stride[0], g.pad0[0], ti);
        for dh in 0..g.k[1] {
            let h = in_coord(o[1], dh, g.stride[1], g.pad0[1], hi);
            for dw in 0..g.k[2] {
                let w = in_coord(o[2], dw, g.stride[2], g.pad0[2], wi);
                let dst = &mut patch[kidx * g.cin..(kidx + 1) * g.cin];
                match (t, h, w) {
                    (Some(t), Some(h), Some(w)) => {
                        let src = (((b * ti + t) * hi + h) * wi + w) * g.cin;
                        dst.copy_from_slice(&xcl[src..src + g.cin]);
                    }
                    _ => dst.fill(T::ZERO),
                }
                kidx += 1;
            }
        }
    }
}

/// Output rows (b, to, ho) per tile.
fn rows_per_tile(row_len: usize, patch_len: usize) -> usize {
    (PATCH_TILE_ELEMS / (row_len * patch_len).max(1)).max(1)
}

/// Decomposes a global output row index into (b, to, ho).
#[inline]
fn split_row(r: usize, out: [usize; 3]) -> (usize, usize, usize) {
    (r / (out[0] * out[1]), (r / out[1]) % out[0], r % out[1])
}

/// Builds the patch matrix of output rows `r0..r0+n` into `patches` ([n·Wo, K·Cin]).
fn build_patches<T: Float>(xcl: &[T], g: &Geo, r0: usize, n: usize, patches: &mut [T]) {
    let kc = g.taps() * g.cin;
    let wo = g.out[2];
    for r in 0..n {
        let (b, to, ho) = split_row(r0 + r, g.out);
        for w in 0..wo {
            let p = (r * wo + w) * kc;
            gather_patch(xcl, g, b, [to, ho, w], &mut patches[p..p + kc]);
        }
    }
}

/// 3-D convolution `x [B, Cin, T, H, W] ⊛ w [Cout, Cin, kt, kh, kw] (+ b [Cout])`
/// → `[B, Cout, To, Ho, Wo]` with `To = (T + pad_t − kt)/st + 1` etc.
pub fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv3dParams) -> Result<Tensor> {
    const OP: &str = "conv3d";
    let g = geometry(x, w, b, p, OP)?;
    let mut ins = vec![x, w];
    ins.extend(b);
    #[cfg(feature = "cuda")]
    if super::on_cuda(&ins, OP)? {
        return crate::cuda::ops::conv3d(x, w, b, g.cuda());
    }
    let (ct, ot) = (compute_dtype(&ins), out_dtype(&ins));
    dispatch!(ct, T => {
        let xcl = channels_last::<T>(x, OP)?;
        let wd = w.cpu_data::<T>(OP)?;
        let (k, kc) = (g.taps(), g.taps() * g.cin);
        // Wf[(kidx·Cin + ci), co] = w[co, ci, kidx]
        let mut wf = vec![T::ZERO; kc * g.cout];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for kk in 0..k {
                    wf[(kk * g.cin + ci) * g.cout + co] = wd[(co * g.cin + ci) * k + kk];
                }
            }
        }
        let bias = b.map(|b| b.cpu_data::<T>(OP)).transpose()?;
        let [to, ho, wo] = g.out;
        let rows = g.b * to * ho;
        let row_len = wo * g.cout;
        let tile = rows_per_tile(wo, kc);
        let mut ycl = vec![T::ZERO; rows * row_len];
        if row_len > 0 {
            ycl.par_chunks_mut(tile * row_len).enumerate().for_each(|(ti, yt)| {
                let n = yt.len() / row_len;
                let mut patches = vec![T::ZERO; n * wo * kc];
                build_patches(&xcl, &g, ti * tile, n, &mut patches);
                gemm(n * wo, g.cout, kc, yt, g.cout, 1, false, MatRef::rows(&patches, kc), MatRef::rows(&wf, g.cout), T::ONE, false);
                if let Some(bias) = &bias {
                    for row in yt.chunks_mut(g.cout) {
                        for (v, &bb) in row.iter_mut().zip(bias.iter()) {
                            *v += bb;
                        }
                    }
                }
            });
        }
        Ok(Tensor::from_compute(ycl, &[g.b, to, ho, wo, g.cout], ot).permute(&[0, 4, 1, 2, 3])?.contiguous())
    })
}

/// Gradients of [`conv3d`].
#[derive(Debug, Clone)]
pub struct Conv3dGrads {
    /// `dL/dx` when requested.
    pub dx: Option<Tensor>,
    /// `dL/dw`, `[Cout, Cin, kt, kh, kw]`.
    pub dw: Tensor,
    /// `dL/db` when the conv has a bias.
    pub db: Option<Tensor>,
}

/// Backward of [`conv3d`] given the forward inputs and `dy [B, Cout, To, Ho, Wo]`.
pub fn conv3d_backward(
    x: &Tensor,
    w: &Tensor,
    has_bias: bool,
    dy: &Tensor,
    p: &Conv3dParams,
    need_dx: bool,
) -> Result<Conv3dGrads> {
    const OP: &str = "conv3d_backward";
    let g = geometry(x, w, None, p, OP)?;
    let [to, ho, wo] = g.out;
    if dy.shape() != [g.b, g.cout, to, ho, wo] {
        return Err(Error::shape(OP, format!("dy {:?} for output {:?}", dy.shape(), [g.b, g.cout, to, ho, wo])));
    }
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x, w, dy], OP)? {
        let (dx, dw, db) = crate::cuda::ops::conv3d_backward(x, w, has_bias, dy, g.cuda())?;
        return Ok(Conv3dGrads { dx: need_dx.then_some(dx), dw, db });
    }
    let ct = compute_dtype(&[x, w, dy]);
    dispatch!(ct, T => {
        let xcl = channels_last::<T>(x, OP)?;
        let gcl = channels_last::<T>(dy, OP)?;
        let wd = w.cpu_data::<T>(OP)?;
        let (k, kc) = (g.taps(), g.taps() * g.cin);
        let db = has_bias.then(|| Tensor::from_compute(sum_rows(&gcl, g.cout), &[g.cout], ct));
        // dWf[K·Cin, Cout] = Σ_tiles patchesᵀ · dy_tile
        let rows = g.b * to * ho;
        let tile = rows_per_tile(wo, kc);
        let ntiles = rows.div_ceil(tile);
        // Tiles in fixed groups, each group accumulated in tile order, the groups added in order
        // ([`reduce_blocks`]): the bits do not depend on the thread count. Few groups (a wide
        // dW) hand the parallelism to gemm instead, whose bits do not depend on it either.
        let width = kc * g.cout;
        let par_gemm = reduce_parts(ntiles, width, 1) < rayon::current_num_threads();
        let dwf = reduce_blocks(ntiles, width, 1, |range, acc: &mut [T]| {
            for ti in range {
                let r0 = ti * tile;
                let n = tile.min(rows - r0);
                let mut patches = vec![T::ZERO; n * wo * kc];
                build_patches(&xcl, &g, r0, n, &mut patches);
                let gt = &gcl[r0 * wo * g.cout..(r0 + n) * wo * g.cout];
                gemm(kc, g.cout, n * wo, acc, g.cout, 1, true, MatRef::rows_t(&patches, kc), MatRef::rows(gt, g.cout), T::ONE, par_gemm);
            }
        });
        let mut dw = vec![T::ZERO; g.cout * kc];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for kk in 0..k {
                    dw[(co * g.cin + ci) * k + kk] = dwf[(kk * g.cin + ci) * g.cout + co];
                }
            }
        }
        let dx = if need_dx { Some(input_grad::<T>(&gcl, &wd, &g, ct)?) } else { None };
        Ok(Conv3dGrads { dx, dw: Tensor::from_compute(dw, w.shape(), ct), db })
    })
}

/// `dx` by gathering output-gradient patches: for input position `i` and tap `k`, the output
/// position `o` with `o·s + k − p = i` (if integral and in range) contributes `dy[o]·w[:, :, k]`.
fn input_grad<T: Float>(gcl: &[T], wd: &[T], g: &Geo, ct: crate::DType) -> Result<Tensor> {
    let k = g.taps();
    let kco = k * g.cout;
    // Wt[(kidx·Cout + co), ci] = w[co, ci, kidx]
    let mut wt = vec![T::ZERO; kco * g.cin];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for kk in 0..k {
                wt[(kk * g.cout + co) * g.cin + ci] = wd[(co * g.cin + ci) * k + kk];
            }
        }
    }
    let [ti, hi, wi] = g.inp;
    let [to, ho, wo] = g.out;
    let rows = g.b * ti * hi;
    let row_len = wi * g.cin;
    let tile = rows_per_tile(wi, kco);
    // Output coordinate for input coordinate i and tap kk along one axis.
    let out_coord = |i: usize, kk: usize, a: usize, n: usize| -> Option<usize> {
        let v = (i + g.pad0[a]).checked_sub(kk)?;
        (v % g.stride[a] == 0 && v / g.stride[a] < n).then(|| v / g.stride[a])
    };
    let mut dxcl = vec![T::ZERO; rows * row_len];
    if row_len > 0 {
        dxcl.par_chunks_mut(tile * row_len).enumerate().for_each(|(tix, dxt)| {
            let n = dxt.len() / row_len;
            let mut patches = vec![T::ZERO; n * wi * kco];
            for r in 0..n {
                let gr = tix * tile + r;
                let (b, t, h) = (gr / (ti * hi), (gr / hi) % ti, gr % hi);
                for w in 0..wi {
                    let patch = &mut patches[(r * wi + w) * kco..(r * wi + w + 1) * kco];
                    let mut kidx = 0;
                    for dt in 0..g.k[0] {
                        let ot = out_coord(t, dt, 0, to);
                        for dh in 0..g.k[1] {
                            let oh = out_coord(h, dh, 1, ho);
                            for dw in 0..g.k[2] {
                                let ow = out_coord(w, dw, 2, wo);
                                let dst = &mut patch[kidx * g.cout..(kidx + 1) * g.cout];
                                match (ot, oh, ow) {
                                    (Some(a), Some(c), Some(e)) => {
                                        let src = (((b * to + a) * ho + c) * wo + e) * g.cout;
                                        dst.copy_from_slice(&gcl[src..src + g.cout]);
                                    }
                                    _ => dst.fill(T::ZERO),
                                }
                                kidx += 1;
                            }
                        }
                    }
                }
            }
            gemm(
                n * wi,
                g.cin,
                kco,
                dxt,
                g.cin,
                1,
                false,
                MatRef::rows(&patches, kco),
                MatRef::rows(&wt, g.cin),
                T::ONE,
                false,
            );
        });
    }
    Ok(Tensor::from_compute(dxcl, &[g.b, ti, hi, wi, g.cin], ct).permute(&[0, 4, 1, 2, 3])?.contiguous())
}

/// Average pooling of `x [B, C, T, H, W]` over non-overlapping `kernel` windows (stride =
/// kernel, no padding, trailing remainders dropped as PyTorch's `AvgPool3d(kernel)` does) →
/// `[B, C, T/kt, H/kh, W/kw]`. Forward only (TransNetV2 inference; no trained net uses it).
pub fn avg_pool3d(x: &Tensor, kernel: [usize; 3]) -> Result<Tensor> {
    const OP: &str = "avg_pool3d";
    expect_rank(x, 5, OP)?;
    if kernel.contains(&0) {
        return Err(Error::arg(OP, format!("kernel {kernel:?} has a zero")));
    }
    let s = x.shape();
    let (bc, [ti, hi, wi]) = (s[0] * s[1], [s[2], s[3], s[4]]);
    let [kt, kh, kw] = kernel;
    let [to, ho, wo] = [ti / kt, hi / kh, wi / kw];
    let (ct, ot) = (compute_dtype(&[x]), out_dtype(&[x]));
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(OP)?;
        let inv = T::from_f64(1.0 / (kt * kh * kw) as f64);
        let mut y = vec![T::ZERO; bc * to * ho * wo];
        let plane = to * ho * wo;
        if plane > 0 {
            y.par_chunks_mut(plane).enumerate().for_each(|(c, yc)| {
                let xc = &xd[c * ti * hi * wi..(c + 1) * ti * hi * wi];
                for t in 0..to {
                    for h in 0..ho {
                        for w in 0..wo {
                            let mut acc = T::ZERO;
                            for dt in 0..kt {
                                for dh in 0..kh {
                                    let row = ((t * kt + dt) * hi + h * kh + dh) * wi + w * kw;
                                    for dw in 0..kw {
                                        acc += xc[row + dw];
                                    }
                                }
                            }
                            yc[(t * ho + h) * wo + w] = acc * inv;
                        }
                    }
                }
            });
        }
        Ok(Tensor::from_compute(y, &[s[0], s[1], to, ho, wo], ot))
    })
}
