//! Wan 3D rotary position embedding (WAN_SPEC §1.4).
//!
//! Per head of width `hd`, the channels split into a frame part of `d_t = hd − 2·d_h` channels
//! and height/width parts of `d_h = d_w = 2·⌊hd/6⌋` channels each (hd = 128 → 44/42/42;
//! hd = 32 → 12/10/10). Each part rotates adjacent (interleaved) channel pairs
//! `(x[2j], x[2j+1])` by `pos·θ_j` with `θ_j = theta^(−2j/width)`, the denominator being that
//! axis' own width; `pos` is the token's post-patch grid index along the axis. Tables are built
//! in f64 and rounded to the compute type when applied.
//!
//! The rotation is orthogonal, so the backward pass is the rotation by the negated angle.

use rayon::prelude::*;

use super::{compute_dtype, dispatch, expect_rank, out_dtype};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Positions per axis supported by the Wan models (`rope_max_seq_len`).
pub const ROPE_MAX_SEQ_LEN: usize = 1024;

/// Precomputed 3D RoPE tables for one latent grid.
#[derive(Debug, Clone)]
pub struct Rope3d {
    head_dim: usize,
    grid: [usize; 3],
    pairs: [usize; 3],
    /// Per axis: `cos[pos·pairs + j]`.
    cos: [Vec<f64>; 3],
    /// Per axis: `sin[pos·pairs + j]`.
    sin: [Vec<f64>; 3],
    /// The f32 tables uploaded once per device (shared by clones: every block of a forward pass and
    /// the backward pass rotate with the same tables).
    #[cfg(feature = "cuda")]
    device_tables: std::sync::Arc<std::sync::Mutex<Vec<(crate::tensor::Device, Tensor)>>>,
}

impl Rope3d {
    /// Real channel widths `[d_t, d_h, d_w]` of the three axes for a head width.
    pub fn axis_widths(head_dim: usize) -> [usize; 3] {
        let dh = 2 * (head_dim / 6);
        [head_dim - 2 * dh, dh, dh]
    }

    /// Tables for a post-patch grid `[F', H', W']` (token `n = f·H'·W' + h·W' + w`).
    pub fn new(head_dim: usize, grid: [usize; 3], theta: f64) -> Result<Rope3d> {
        const OP: &str = "rope3d";
        if head_dim < 6 || !head_dim.is_multiple_of(2) {
            return Err(Error::arg(OP, format!("head_dim {head_dim} must be even and ≥ 6")));
        }
        if grid.iter().any(|&g| g > ROPE_MAX_SEQ_LEN) {
            return Err(Error::arg(OP, format!("grid {grid:?} exceeds {ROPE_MAX_SEQ_LEN} positions per axis")));
        }
        let widths = Rope3d::axis_widths(head_dim);
        let pairs = widths.map(|w| w / 2);
        let mut cos: [Vec<f64>; 3] = Default::default();
        let mut sin: [Vec<f64>; 3] = Default::default();
        for a in 0..3 {
            let freqs: Vec<f64> = (0..pairs[a]).map(|j| theta.powf(-((2 * j) as f64) / widths[a] as f64)).collect();
            for p in 0..grid[a] {
                for &f in &freqs {
                    let (s, c) = (p as f64 * f).sin_cos();
                    cos[a].push(c);
                    sin[a].push(s);
                }
            }
        }
        Ok(Rope3d {
            head_dim,
            grid,
            pairs,
            cos,
            sin,
            #[cfg(feature = "cuda")]
            device_tables: Default::default(),
        })
    }

    /// Number of tokens `F'·H'·W'`.
    pub fn seq_len(&self) -> usize {
        self.grid.iter().product()
    }

    /// Head width the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The grid `[F', H', W']`.
    pub fn grid(&self) -> [usize; 3] {
        self.grid
    }

    /// The tables rounded to f32 in the layout of `kernels/cuda/rope.cu`:
    /// `[cos_t | sin_t | cos_h | sin_h | cos_w | sin_w]` (each `grid[a] × pairs[a]`, row = position).
    #[cfg(feature = "cuda")]
    fn tables_f32(&self) -> Vec<f32> {
        let mut t = Vec::new();
        for a in 0..3 {
            t.extend(self.cos[a].iter().map(|&v| v as f32));
            t.extend(self.sin[a].iter().map(|&v| v as f32));
        }
        t
    }

    /// Rotated channel pairs per axis `[d_t/2, d_h/2, d_w/2]`.
    pub fn pairs(&self) -> [usize; 3] {
        self.pairs
    }

    /// [`tables_f32`](Self::tables_f32) as a tensor on `device`, uploaded on first use.
    #[cfg(feature = "cuda")]
    pub(crate) fn device_tables(&self, device: crate::tensor::Device) -> Result<Tensor> {
        let mut cache = self.device_tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = cache.iter().find(|(d, _)| *d == device) {
            return Ok(t.clone());
        }
        let tab = self.tables_f32();
        let n = tab.len();
        let t = Tensor::from_vec(tab, &[n])?.to_device(device)?;
        cache.push((device, t.clone()));
        Ok(t)
    }

    /// `(cos, sin)` of every pair of token `n`, in the compute type.
    fn token_row<T: Float>(&self, n: usize, cos: &mut [T], sin: &mut [T]) {
        let [_, gh, gw] = self.grid;
        let pos = [n / (gh * gw), (n / gw) % gh, n % gw];
        let mut k = 0;
        for a in 0..3 {
            let np = self.pairs[a];
            let base = pos[a] * np;
            for j in 0..np {
                cos[k] = T::from_f64(self.cos[a][base + j]);
                sin[k] = T::from_f64(self.sin[a][base + j]);
                k += 1;
            }
        }
    }
}

fn check(x: &Tensor, rope: &Rope3d, op: &'static str) -> Result<(usize, usize, usize)> {
    expect_rank(x, 4, op)?;
    let s = x.shape();
    if s[1] != rope.seq_len() || s[3] != rope.head_dim {
        return Err(Error::shape(
            op,
            format!(
                "x {s:?} ([B, L, H, hd]) vs RoPE tables for L = {} (grid {:?}), hd = {}",
                rope.seq_len(),
                rope.grid,
                rope.head_dim
            ),
        ));
    }
    Ok((s[0], s[1], s[2]))
}

fn rotate(x: &Tensor, rope: &Rope3d, sign: f64, op: &'static str, out_dt: crate::DType) -> Result<Tensor> {
    let (_b, l, h) = check(x, rope, op)?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(&[x], op)? {
        return crate::cuda::ops::rope(
            x,
            rope,
            sign as f32,
            if out_dt == crate::DType::F64 { crate::DType::F32 } else { out_dt },
        );
    }
    let hd = rope.head_dim;
    let ct = compute_dtype(&[x]);
    dispatch!(ct, T => {
        let xd = x.cpu_data::<T>(op)?;
        let mut y = vec![T::ZERO; xd.len()];
        let sg = T::from_f64(sign);
        let row = h * hd;
        y.par_chunks_mut(row.max(1)).zip(xd.par_chunks(row.max(1))).enumerate().for_each(|(r, (yr, xr))| {
            let n = r % l;
            let mut c = vec![T::ZERO; hd / 2];
            let mut s = vec![T::ZERO; hd / 2];
            rope.token_row(n, &mut c, &mut s);
            for hh in 0..h {
                let (xo, yo) = (&xr[hh * hd..(hh + 1) * hd], &mut yr[hh * hd..(hh + 1) * hd]);
                for j in 0..hd / 2 {
                    let (a, b) = (xo[2 * j], xo[2 * j + 1]);
                    let sn = sg * s[j];
                    yo[2 * j] = a * c[j] - b * sn;
                    yo[2 * j + 1] = a * sn + b * c[j];
                }
            }
        });
        Ok(Tensor::from_compute(y, x.shape(), out_dt))
    })
}

/// Applies the rotation to `x [B, L, H, hd]` (q or k after the RMS norm):
/// `out[2j] = x[2j]·cos − x[2j+1]·sin`, `out[2j+1] = x[2j]·sin + x[2j+1]·cos`.
pub fn rope_apply(x: &Tensor, rope: &Rope3d) -> Result<Tensor> {
    rotate(x, rope, 1.0, "rope_apply", out_dtype(&[x]))
}

/// Backward of [`rope_apply`]: rotation by the negated angle,
/// `dx[2j] = dy[2j]·cos + dy[2j+1]·sin`, `dx[2j+1] = −dy[2j]·sin + dy[2j+1]·cos`.
pub fn rope_backward(dy: &Tensor, rope: &Rope3d) -> Result<Tensor> {
    rotate(dy, rope, -1.0, "rope_backward", compute_dtype(&[dy]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_widths() {
        assert_eq!(Rope3d::axis_widths(128), [44, 42, 42]);
        assert_eq!(Rope3d::axis_widths(32), [12, 10, 10]);
        assert_eq!(Rope3d::axis_widths(12), [4, 4, 4]);
    }

    #[test]
    fn angles_follow_the_spec() {
        // hd = 32: pairs 6/5/5. Token (f=2, h=1, w=3) on a 3×4×5 grid.
        let r = Rope3d::new(32, [3, 4, 5], 10000.0).unwrap();
        let n = 2 * 20 + 5 + 3;
        let mut c = vec![0f64; 16];
        let mut s = vec![0f64; 16];
        r.token_row(n, &mut c, &mut s);
        for j in 0..6 {
            let th = 10000f64.powf(-(2.0 * j as f64) / 12.0);
            assert!((c[j] - (2.0 * th).cos()).abs() < 1e-15);
        }
        for j in 0..5 {
            let th = 10000f64.powf(-(2.0 * j as f64) / 10.0);
            assert!((s[6 + j] - (1.0 * th).sin()).abs() < 1e-15);
            assert!((s[11 + j] - (3.0 * th).sin()).abs() < 1e-15);
        }
        assert!(Rope3d::new(32, [1025, 1, 1], 1e4).is_err());
        assert!(Rope3d::new(7, [1, 1, 1], 1e4).is_err());
    }
}
