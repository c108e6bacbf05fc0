//! Patch-PCA latent codec with Wan's latent geometry.
//!
//! # Geometry
//!
//! A video is a `[3, T, H, W]` tensor (RGB, channel-first, values in `[-1, 1]`, like the Wan VAE
//! input without its batch dimension) with `T = 1 + t·k` and `H`, `W` multiples of `s`
//! ([`PatchGeometry`]; Wan's is `t = 4`, `s = 8`, 16 latent channels). Its latent is
//! `[channels, 1 + k, H/s, W/s]`. As in Wan's causal VAE, latent frame 0 stands for video frame 0
//! alone and latent frame `i ≥ 1` for video frames `t·(i−1)+1 ..= t·i`.
//!
//! A *patch* is the `3 × t × s × s` block of video values behind one latent position, flattened
//! in **(channel, time, y, x)** order: element `((c·t + dt)·s + dy)·s + dx` is channel `c`, the
//! `dt`-th frame of the group, row `dy` and column `dx` of the `s × s` tile. Latent frame 0's
//! patch is video frame 0 repeated `t` times in time; decoding it gives `t` frames whose mean is
//! the reconstructed frame 0.
//!
//! # Codec
//!
//! With `μ` the mean patch, `b_c` the `c`-th principal direction (unit vector) and `σ_c` its
//! scale, a patch `x` encodes to `z_c = b_c·(x − μ) / σ_c` and decodes to
//! `clamp(μ + Σ_c z_c σ_c b_c, −1, 1)`. `σ_c = √λ_c` (the component's eigenvalue), so latents of
//! the fitted data have unit variance per channel; eigenvalues below `1e-6·λ₁` are floored at
//! `1e-6·λ₁` for the scale, so directions the data never used cannot blow latents up.
//!
//! # Fitting
//!
//! [`CovarianceStats`] holds the streaming sufficient statistics (patch count, `Σx`, `Σxxᵀ` in
//! `f64`); stats of different shards [`merge`](CovarianceStats::merge) and travel as compact
//! bytes ([`to_bytes`](CovarianceStats::to_bytes)). [`PatchPca::fit`] forms the covariance and
//! takes its top eigenvectors from [`symmetric_eigen`] (Householder tridiagonalisation followed
//! by implicit QL with Wilkinson shifts, all in `f64`). Eigenvectors are sorted by decreasing
//! eigenvalue and signed so that their largest-magnitude entry is positive, so fits are
//! reproducible.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::cpu::{MatRef, gemm};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::safetensors::{SafeTensorsFile, save as save_safetensors};
use crate::tensor::Tensor;

// ------------------------------------------------------------------------------------------------
// geometry

/// Latent geometry of a patch codec: `channels` latent channels per `3 × t × s × s` video patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatchGeometry {
    /// Latent channels (principal components kept).
    pub channels: usize,
    /// Temporal compression: video frames per latent frame (after frame 0).
    pub t: usize,
    /// Spatial compression: the patch is `s × s` pixels.
    pub s: usize,
}

impl Default for PatchGeometry {
    /// Wan2.1's VAE geometry: 16 channels, ×4 in time, ×8 in space.
    fn default() -> Self {
        PatchGeometry { channels: 16, t: 4, s: 8 }
    }
}

/// Upper bound on the patch dimension, so that garbage geometry (from bytes or metadata) cannot
/// request absurd allocations. Wan's geometry has 768.
const MAX_DIM: usize = 1 << 14;

impl PatchGeometry {
    /// Values per patch: `3·t·s·s`.
    pub fn dim(&self) -> usize {
        3 * self.t * self.s * self.s
    }

    /// Checks that every size is positive, the patch dimension is at most 16384 and there are
    /// no more channels than patch values.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.t == 0 || self.s == 0 {
            return Err(Error::arg("PatchGeometry", format!("all sizes must be positive, got {self:?}")));
        }
        let dim = self.t.checked_mul(self.s).and_then(|v| v.checked_mul(self.s)).and_then(|v| v.checked_mul(3));
        match dim {
            Some(d) if d <= MAX_DIM => {}
            _ => return Err(Error::arg("PatchGeometry", format!("patch dimension 3·t·s² too large for {self:?}"))),
        }
        if self.channels > self.dim() {
            return Err(Error::arg(
                "PatchGeometry",
                format!("{} channels exceed the patch dimension {} of {self:?}", self.channels, self.dim()),
            ));
        }
        Ok(())
    }

    /// The latent shape `[channels, 1 + k, H/s, W/s]` of a `[3, 1 + t·k, H, W]` video shape, or a
    /// shape error saying what is wrong.
    pub fn latent_shape(&self, video_shape: &[usize]) -> Result<[usize; 4]> {
        self.validate()?;
        let op = "PatchGeometry::latent_shape";
        if video_shape.len() != 4 {
            return Err(Error::rank(op, "4 ([3, T, H, W])", video_shape));
        }
        let (c, t, h, w) = (video_shape[0], video_shape[1], video_shape[2], video_shape[3]);
        if c != 3 {
            return Err(Error::shape(op, format!("video must have 3 (RGB) channels, shape {video_shape:?}")));
        }
        if t == 0 || (t - 1) % self.t != 0 {
            return Err(Error::shape(
                op,
                format!("video frame count must be 1 + {}·k, got {t} (shape {video_shape:?})", self.t),
            ));
        }
        if h == 0 || w == 0 || h % self.s != 0 || w % self.s != 0 {
            return Err(Error::shape(
                op,
                format!("video height and width must be positive multiples of {}, shape {video_shape:?}", self.s),
            ));
        }
        Ok([self.channels, 1 + (t - 1) / self.t, h / self.s, w / self.s])
    }

    /// The video shape `[3, 1 + t·(L − 1), Hl·s, Wl·s]` a `[channels, L, Hl, Wl]` latent decodes to.
    pub fn video_shape(&self, latent_shape: &[usize]) -> Result<[usize; 4]> {
        self.validate()?;
        let op = "PatchGeometry::video_shape";
        if latent_shape.len() != 4 {
            return Err(Error::rank(op, "4 ([C, L, H/s, W/s])", latent_shape));
        }
        let (c, l, h, w) = (latent_shape[0], latent_shape[1], latent_shape[2], latent_shape[3]);
        if c != self.channels {
            return Err(Error::shape(
                op,
                format!("latent must have {} channels, shape {latent_shape:?}", self.channels),
            ));
        }
        if l == 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                op,
                format!("latent frames, height and width must be positive: {latent_shape:?}"),
            ));
        }
        Ok([3, 1 + self.t * (l - 1), h * self.s, w * self.s])
    }

    /// Video frame behind time step `dt` of latent frame `lt`.
    fn frame(&self, lt: usize, dt: usize) -> usize {
        if lt == 0 { 0 } else { (lt - 1) * self.t + 1 + dt }
    }
}

/// A video's dimensions and data in `f32`, validated against a geometry.
struct VideoData {
    data: Vec<f32>,
    /// Frames, height, width.
    t: usize,
    h: usize,
    w: usize,
    /// Latent frames and patch grid.
    lt: usize,
    hp: usize,
    wp: usize,
}

impl VideoData {
    fn new(geom: &PatchGeometry, video: &Tensor, op: &'static str) -> Result<VideoData> {
        let [_, lt, hp, wp] = geom.latent_shape(video.shape()).map_err(|e| retag(e, op))?;
        let data = video.to_vec_f32()?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(op, format!("video has a non-finite value {} at flat index {i}", data[i])));
        }
        let s = video.shape();
        Ok(VideoData { data, t: s[1], h: s[2], w: s[3], lt, hp, wp })
    }

    fn patches_per_frame(&self) -> usize {
        self.hp * self.wp
    }

    /// Copies patch (`lt`, `py`, `px`) into `out` (length `geom.dim()`), in (c, t, y, x) order.
    fn gather<T: Copy + From<f32>>(&self, g: &PatchGeometry, lt: usize, py: usize, px: usize, out: &mut [T]) {
        let s = g.s;
        let mut o = 0;
        for c in 0..3 {
            for dt in 0..g.t {
                let f = g.frame(lt, dt);
                for dy in 0..s {
                    let start = ((c * self.t + f) * self.h + py * s + dy) * self.w + px * s;
                    for (dst, &src) in out[o..o + s].iter_mut().zip(&self.data[start..start + s]) {
                        *dst = T::from(src);
                    }
                    o += s;
                }
            }
        }
    }
}

/// Re-labels a shape error from the geometry helpers with the public operation's name.
fn retag(e: Error, op: &'static str) -> Error {
    match e {
        Error::ShapeMismatch { msg, .. } => Error::ShapeMismatch { op, msg },
        Error::RankMismatch { expected, got, .. } => Error::RankMismatch { op, expected, got },
        Error::InvalidArgument { msg, .. } => Error::InvalidArgument { op, msg },
        other => other,
    }
}

// ------------------------------------------------------------------------------------------------
// streaming statistics

/// Streaming sufficient statistics of a set of patches: the count, `Σx` and `Σxxᵀ` (`f64`).
///
/// Adding videos and merging shards are exact up to `f64` rounding of the sums, so a dataflow can
/// reduce statistics in any grouping; the result differs from a single pass only by summation
/// order (≈1e-15 relative).
#[derive(Clone)]
pub struct CovarianceStats {
    geom: PatchGeometry,
    count: u64,
    sum: Vec<f64>,
    /// Full symmetric `dim × dim` matrix, row-major.
    cross: Vec<f64>,
}

impl fmt::Debug for CovarianceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CovarianceStats").field("geometry", &self.geom).field("count", &self.count).finish()
    }
}

/// Patches gathered per GEMM block in [`CovarianceStats::add_video`].
const STATS_BLOCK: usize = 512;

const STATS_MAGIC: &[u8; 8] = b"MGPCACS\0";
const STATS_VERSION: u32 = 1;
/// Magic, version, channels, t, s, count.
const STATS_HEADER: usize = 8 + 4 + 4 * 3 + 8;

impl CovarianceStats {
    /// Empty statistics for `geom`. The geometry is validated when videos are added (an invalid one
    /// gives an empty, zero-dimensional accumulator here rather than a panic).
    pub fn new(geom: PatchGeometry) -> Self {
        let dim = if geom.validate().is_ok() { geom.dim() } else { 0 };
        CovarianceStats { geom, count: 0, sum: vec![0.0; dim], cross: vec![0.0; dim * dim] }
    }

    /// Adds the patches of one video (every `stride`-th patch in raster order over (t, y, x); stride >= 1).
    ///
    /// Patches are numbered `(lt·(H/s) + py)·(W/s) + px` over latent frames `lt`, patch rows `py`
    /// and patch columns `px`; those whose number is a multiple of `stride` are added. The video must
    /// have the shape [`PatchGeometry::latent_shape`] accepts and finite values.
    pub fn add_video(&mut self, video: &Tensor, stride: usize) -> Result<()> {
        let op = "CovarianceStats::add_video";
        if stride == 0 {
            return Err(Error::arg(op, "stride must be at least 1"));
        }
        let g = self.geom;
        g.validate().map_err(|e| retag(e, op))?;
        let v = VideoData::new(&g, video, op)?;
        let dim = g.dim();
        let per_frame = v.patches_per_frame();
        let total = v.lt * per_frame;
        let selected: Vec<usize> = (0..total).step_by(stride).collect();
        let mut block = vec![0f64; STATS_BLOCK.min(selected.len().max(1)) * dim];
        for ids in selected.chunks(STATS_BLOCK) {
            let rows = ids.len();
            let p = &mut block[..rows * dim];
            p.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(out, &id)| {
                let (lt, rest) = (id / per_frame, id % per_frame);
                v.gather(&g, lt, rest / v.wp, rest % v.wp, out);
            });
            for row in p.chunks_exact(dim) {
                for (s, &x) in self.sum.iter_mut().zip(row) {
                    *s += x;
                }
            }
            // cross += Pᵀ·P
            gemm(
                dim,
                dim,
                rows,
                &mut self.cross,
                dim,
                1,
                true,
                MatRef::rows_t(p, dim),
                MatRef::rows(p, dim),
                1.0,
                true,
            );
        }
        self.count += selected.len() as u64;
        Ok(())
    }

    /// Adds another accumulator's statistics to this one; the geometries must match.
    pub fn merge(&mut self, other: &CovarianceStats) -> Result<()> {
        if self.geom != other.geom {
            return Err(Error::arg(
                "CovarianceStats::merge",
                format!("geometry mismatch: {:?} vs {:?}", self.geom, other.geom),
            ));
        }
        self.count += other.count;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.cross.par_iter_mut().zip(other.cross.par_iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Number of patches added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The geometry the statistics were collected for.
    pub fn geometry(&self) -> PatchGeometry {
        self.geom
    }

    /// Compact little-endian serialisation (version 1):
    ///
    /// `b"MGPCACS\0"`, `u32` version, `u32` channels, t, s, `u64` count, `f64 sum[dim]`, the upper
    /// triangle of `Σxxᵀ` row by row (`f64`, `dim·(dim+1)/2` values), and a `u64` FNV-1a checksum of
    /// everything before it. 2.4 MB for Wan's geometry.
    pub fn to_bytes(&self) -> Vec<u8> {
        let dim = self.sum.len();
        let mut b = Vec::with_capacity(STATS_HEADER + 8 * (dim + dim * (dim + 1) / 2) + 8);
        b.extend_from_slice(STATS_MAGIC);
        b.extend_from_slice(&STATS_VERSION.to_le_bytes());
        for v in [self.geom.channels, self.geom.t, self.geom.s] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        b.extend_from_slice(&self.count.to_le_bytes());
        for v in &self.sum {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for i in 0..dim {
            for v in &self.cross[i * dim + i..(i + 1) * dim] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        let h = fnv1a64(FNV_OFFSET, &b);
        b.extend_from_slice(&h.to_le_bytes());
        b
    }

    /// Parses [`to_bytes`](Self::to_bytes) output. Wrong magic, unknown version, invalid geometry,
    /// wrong length (truncation) and checksum mismatches are [`Error::InvalidArgument`]s.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let op = "CovarianceStats::from_bytes";
        if b.len() < STATS_HEADER {
            return Err(Error::arg(op, format!("truncated: {} bytes, the header alone is {STATS_HEADER}", b.len())));
        }
        if &b[..8] != STATS_MAGIC {
            return Err(Error::arg(op, "not patch-PCA covariance statistics (bad magic)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != STATS_VERSION {
            return Err(Error::arg(op, format!("unsupported version {version} (this build reads {STATS_VERSION})")));
        }
        let geom = PatchGeometry { channels: u32_at(12) as usize, t: u32_at(16) as usize, s: u32_at(20) as usize };
        geom.validate().map_err(|e| retag(e, op))?;
        let count = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        let dim = geom.dim();
        let expected = STATS_HEADER + 8 * (dim + dim * (dim + 1) / 2) + 8;
        if b.len() != expected {
            return Err(Error::arg(
                op,
                format!("length {} bytes, expected {expected} for {geom:?} (truncated or trailing data)", b.len()),
            ));
        }
        let body = &b[..expected - 8];
        let stored = u64::from_le_bytes(b[expected - 8..].try_into().expect("8 bytes"));
        if fnv1a64(FNV_OFFSET, body) != stored {
            return Err(Error::arg(op, "checksum mismatch (corrupt data)"));
        }
        let mut vals = body[STATS_HEADER..].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")));
        let sum: Vec<f64> = vals.by_ref().take(dim).collect();
        let mut cross = vec![0.0; dim * dim];
        for i in 0..dim {
            for j in i..dim {
                let v = vals.next().expect("length checked above");
                cross[i * dim + j] = v;
                cross[j * dim + i] = v;
            }
        }
        Ok(CovarianceStats { geom, count, sum, cross })
    }
}

// ------------------------------------------------------------------------------------------------
// symmetric eigen solver

/// Eigen-decomposition of a symmetric matrix: `values` in decreasing order and `vectors` row-major
/// `n × n`, row `i` the unit eigenvector of `values[i]` (signed so its largest-magnitude entry is
/// positive).
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// Eigenvectors as rows, in the order of `values`.
    pub vectors: Vec<f64>,
}

/// Iteration cap per eigenvalue of the implicit QL phase (convergence takes 1–3 on average).
const QL_MAX_ITER: usize = 100;

/// Eigen-decomposition of the symmetric `n × n` row-major matrix `a` in `f64`.
///
/// Householder reduction to tridiagonal form (accumulating the orthogonal factor), then implicit
/// QL iterations with Wilkinson shifts on the tridiagonal matrix. `O(n³)`: about a second for
/// `n = 768`. Only the upper triangle's symmetric counterpart is assumed equal: a matrix that is
/// not symmetric (beyond 1e-9 relative), non-finite input or a wrong length is an error.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen> {
    let op = "symmetric_eigen";
    if a.len() != n * n {
        return Err(Error::shape(op, format!("{} values for a {n}×{n} matrix", a.len())));
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(op, format!("non-finite entry {} at ({}, {})", a[i], i / n, i % n)));
    }
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    for i in 0..n {
        for j in i + 1..n {
            if (a[i * n + j] - a[j * n + i]).abs() > 1e-9 * scale {
                return Err(Error::arg(op, format!("matrix is not symmetric at ({i}, {j})")));
            }
        }
    }
    if n == 0 {
        return Ok(SymmetricEigen { values: vec![], vectors: vec![] });
    }
    let mut work = a.to_vec();
    let (mut d, mut e, mut z) = tridiagonalize(&mut work, n);
    tridiagonal_ql(&mut d, &mut e, &mut z, n)?;
    // Column j of z is the eigenvector of d[j]; sort decreasing and fix signs.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]).then(i.cmp(&j)));
    let values = order.iter().map(|&j| d[j]).collect();
    let mut vectors = vec![0.0; n * n];
    for (r, &j) in order.iter().enumerate() {
        let row = &mut vectors[r * n..(r + 1) * n];
        for k in 0..n {
            row[k] = z[k * n + j];
        }
        fix_sign(row);
    }
    Ok(SymmetricEigen { values, vectors })
}

/// Flips `v` so that its largest-magnitude entry (the first, on ties) is positive.
fn fix_sign(v: &mut [f64]) {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[best].abs() {
            best = i;
        }
    }
    if v.get(best).is_some_and(|x| *x < 0.0) {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

/// Rows of an `n`-column matrix below which row loops run single-threaded.
const PAR_ROWS: usize = 64;

/// Reduces symmetric `a` (destroyed) to tridiagonal `T = Qᵀ A Q`. Returns the diagonal `d`, the
/// sub-diagonal `e` (`e[i]` couples `d[i]` and `d[i+1]`, `e[n-1] = 0`) and `Q` row-major.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0; n];
    // Reflector k is I − τ·v·vᵀ acting on indices k+1..n.
    let mut reflectors: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n.saturating_sub(2));
    for k in 0..n.saturating_sub(2) {
        let off = k + 1;
        let m = n - off;
        // Column k below the diagonal equals row k right of it (symmetry is maintained).
        let x = &a[k * n + off..(k + 1) * n];
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            reflectors.push((Vec::new(), 0.0));
            continue;
        }
        let alpha = if x[0] >= 0.0 { -norm } else { norm };
        let mut v = x.to_vec();
        v[0] -= alpha;
        let tau = 2.0 / v.iter().map(|t| t * t).sum::<f64>();
        e[k] = alpha;
        // p = τ·B·v with B the trailing block a[off.., off..].
        let trailing = &mut a[off * n..];
        let p: Vec<f64> = if m >= PAR_ROWS {
            trailing.par_chunks(n).map(|row| tau * dot(&row[off..], &v)).collect()
        } else {
            trailing.chunks(n).map(|row| tau * dot(&row[off..], &v)).collect()
        };
        let kk = 0.5 * tau * dot(&v, &p);
        let w: Vec<f64> = p.iter().zip(&v).map(|(p, v)| p - kk * v).collect();
        // B ← B − v·wᵀ − w·vᵀ
        let update = |(i, row): (usize, &mut [f64])| {
            let (vi, wi) = (v[i], w[i]);
            for ((b, &vj), &wj) in row[off..].iter_mut().zip(&v).zip(&w) {
                *b -= vi * wj + wi * vj;
            }
        };
        if m >= PAR_ROWS {
            trailing.par_chunks_mut(n).enumerate().for_each(update);
        } else {
            trailing.chunks_mut(n).enumerate().for_each(update);
        }
        reflectors.push((v, tau));
    }
    if n >= 2 {
        e[n - 2] = a[(n - 2) * n + n - 1];
    }
    let d: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();

    // Q = H₀·H₁·…, accumulated from the right end so each step touches only the trailing block.
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        q[i * n + i] = 1.0;
    }
    for (k, (v, tau)) in reflectors.iter().enumerate().rev() {
        if *tau == 0.0 {
            continue;
        }
        let off = k + 1;
        let m = n - off;
        // wᵀ = vᵀ·Q[off.., off..]
        let mut w = vec![0.0; m];
        for (i, &vi) in v.iter().enumerate() {
            let row = &q[(off + i) * n + off..(off + i + 1) * n];
            for (wj, &qj) in w.iter_mut().zip(row) {
                *wj += vi * qj;
            }
        }
        let update = |(i, row): (usize, &mut [f64])| {
            let f = tau * v[i];
            for (qj, &wj) in row[off..].iter_mut().zip(&w) {
                *qj -= f * wj;
            }
        };
        if m >= PAR_ROWS {
            q[off * n..].par_chunks_mut(n).enumerate().for_each(update);
        } else {
            q[off * n..].chunks_mut(n).enumerate().for_each(update);
        }
    }
    (d, e, q)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Implicit QL with Wilkinson shifts on the symmetric tridiagonal (`d`, `e`), applying every
/// rotation to the columns of `z` (row-major `n × n`). On return `d` holds the eigenvalues and
/// column `j` of `z` the eigenvector of `d[j]` (of `zᵀ·T·z` for the input `z`).
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64], z: &mut [f64], n: usize) -> Result<()> {
    let mut rotations: Vec<(usize, f64, f64)> = Vec::with_capacity(n);
    // Off-diagonals below eps·‖T‖ are at the rounding level of the reduction already; treating them
    // as zero keeps rank-deficient matrices (clusters of eigenvalues ≈ 0 with e ≈ d ≈ 1e-17) from
    // iterating forever on noise.
    let norm = (0..n).fold(0f64, |m, i| m.max(d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 }));
    let abs_tol = f64::EPSILON * norm;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            // The first negligible off-diagonal at or after l bounds the unreduced block l..=m.
            let mut m = l;
            while m + 1 < n && e[m].abs() > f64::EPSILON * (d[m].abs() + d[m + 1].abs()) && e[m].abs() > abs_tol {
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > QL_MAX_ITER {
                return Err(Error::arg(
                    "symmetric_eigen",
                    format!("QL iteration did not converge for eigenvalue {l} in {QL_MAX_ITER} steps"),
                ));
            }
            // Wilkinson shift from the leading 2×2 block, expressed relative to d[m].
            let g0 = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let r0 = g0.hypot(1.0);
            let mut g = d[m] - d[l] + e[l] / (g0 + r0.copysign(g0));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            rotations.clear();
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                let r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the matrix split; retry on the smaller block.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                let r2 = (d[i] - g) * s + 2.0 * c * b;
                p = s * r2;
                d[i + 1] = g + p;
                g = c * r2 - b;
                rotations.push((i, c, s));
            }
            let apply = |row: &mut [f64]| {
                for &(i, c, s) in &rotations {
                    let f = row[i + 1];
                    row[i + 1] = s * row[i] + c * f;
                    row[i] = c * row[i] - s * f;
                }
            };
            if n >= PAR_ROWS {
                z.par_chunks_mut(n).for_each(apply);
            } else {
                z.chunks_mut(n).for_each(apply);
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// the codec

/// A fitted patch-PCA codec: mean patch, `channels × dim` orthonormal basis, per-channel scale.
///
/// See the [module documentation](self) for the geometry and the formulas.
#[derive(Clone)]
pub struct PatchPca {
    geom: PatchGeometry,
    /// Mean patch, `dim`.
    mean: Vec<f32>,
    /// Principal directions as rows, `channels × dim`, orthonormal.
    basis: Vec<f32>,
    /// Per-channel scale `σ_c` (latent = projection / σ_c).
    scale: Vec<f32>,
    /// Eigenvalues of the kept components, largest first.
    eigenvalues: Vec<f64>,
    /// Trace of the covariance (total patch variance).
    total_variance: f64,
    /// Patches the fit saw.
    count: u64,
}

impl fmt::Debug for PatchPca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatchPca")
            .field("geometry", &self.geom)
            .field("count", &self.count)
            .field("explained_variance", &self.explained_variance())
            .field("codec_id", &self.codec_id())
            .finish()
    }
}

/// Relative floor (to the largest eigenvalue) of the eigenvalues used for the latent scale.
const SCALE_FLOOR: f64 = 1e-6;

/// Patches per parallel work item in encode/decode.
const CODEC_CHUNK: usize = 256;

const FORMAT_NAME: &str = "medgen.patch_pca";
const FORMAT_VERSION: &str = "1";

impl PatchPca {
    /// Fits from stats: top-`channels` eigenvectors of the covariance. Error (typed, clear) if count is too
    /// small (fewer patches than channels + 1) or the covariance is degenerate in a way that makes no basis.
    ///
    /// The covariance is the population covariance `Σxxᵀ/n − μμᵀ`. Degenerate means non-finite, or
    /// zero total variance (every patch identical), which leaves no principal direction at all.
    /// A covariance of rank below `channels` still fits: the extra directions are an arbitrary
    /// (but deterministic) orthonormal completion with floored scale.
    pub fn fit(stats: &CovarianceStats) -> Result<PatchPca> {
        let op = "PatchPca::fit";
        let g = stats.geom;
        g.validate().map_err(|e| retag(e, op))?;
        let (dim, ch) = (g.dim(), g.channels);
        if stats.count < ch as u64 + 1 {
            return Err(Error::arg(
                op,
                format!("{} patches are too few to fit {ch} components; need at least {}", stats.count, ch + 1),
            ));
        }
        let n = stats.count as f64;
        let mean: Vec<f64> = stats.sum.iter().map(|s| s / n).collect();
        let mut cov = vec![0.0; dim * dim];
        for i in 0..dim {
            for j in 0..dim {
                // Symmetrise: GEMM sums the two triangles in different orders.
                let c = 0.5 * (stats.cross[i * dim + j] + stats.cross[j * dim + i]);
                cov[i * dim + j] = c / n - mean[i] * mean[j];
            }
        }
        if let Some(i) = cov.iter().chain(&mean).position(|v| !v.is_finite()) {
            return Err(Error::arg(op, format!("covariance has a non-finite entry (flat index {i})")));
        }
        let total_variance: f64 = (0..dim).map(|i| cov[i * dim + i].max(0.0)).sum();
        if total_variance <= 0.0 {
            return Err(Error::arg(
                op,
                format!("degenerate covariance: all {} patches are identical (zero variance)", stats.count),
            ));
        }
        let eig = symmetric_eigen(&cov, dim).map_err(|e| retag(e, op))?;
        let top = eig.values[0];
        if top <= 0.0 {
            return Err(Error::arg(op, "degenerate covariance: no positive eigenvalue"));
        }
        let eigenvalues: Vec<f64> = eig.values[..ch].iter().map(|v| v.max(0.0)).collect();
        let scale: Vec<f32> = eigenvalues.iter().map(|v| v.max(SCALE_FLOOR * top).sqrt() as f32).collect();
        let basis: Vec<f32> = eig.vectors[..ch * dim].iter().map(|v| *v as f32).collect();
        let mean: Vec<f32> = mean.iter().map(|v| *v as f32).collect();
        Ok(PatchPca { geom: g, mean, basis, scale, eigenvalues, total_variance, count: stats.count })
    }

    /// The codec's geometry.
    pub fn geometry(&self) -> PatchGeometry {
        self.geom
    }

    /// Fraction of the total patch variance the kept components explain (0..1).
    pub fn explained_variance(&self) -> f64 {
        (self.eigenvalues.iter().sum::<f64>() / self.total_variance).clamp(0.0, 1.0)
    }

    /// Eigenvalues (patch-space variances) of the kept components, largest first.
    pub fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }

    /// Per-channel latent scale `σ_c`.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// The mean patch (`dim` values, (c, t, y, x) order).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The basis, `channels × dim` row-major, orthonormal rows.
    pub fn basis(&self) -> &[f32] {
        &self.basis
    }

    /// Number of patches the codec was fitted on.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Encodes `[3, 1 + t·k, H, W]` → `[channels, 1 + k, H/s, W/s]` (`f32`); shape errors typed.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let op = "PatchPca::encode";
        let g = self.geom;
        let v = VideoData::new(&g, video, op)?;
        let (dim, ch) = (g.dim(), g.channels);
        let per_frame = v.patches_per_frame();
        let mut latent = vec![0f32; ch * v.lt * per_frame];
        for lt in 0..v.lt {
            let ids: Vec<usize> = (0..per_frame).collect();
            let chunks: Vec<Vec<f32>> = ids
                .par_chunks(CODEC_CHUNK)
                .map(|ids| {
                    let rows = ids.len();
                    let mut p = vec![0f32; rows * dim];
                    for (out, &id) in p.chunks_exact_mut(dim).zip(ids) {
                        v.gather(&g, lt, id / v.wp, id % v.wp, out);
                        for (x, m) in out.iter_mut().zip(&self.mean) {
                            *x -= m;
                        }
                    }
                    let mut zc = vec![0f32; rows * ch];
                    gemm(
                        rows,
                        ch,
                        dim,
                        &mut zc,
                        ch,
                        1,
                        false,
                        MatRef::rows(&p, dim),
                        MatRef::rows_t(&self.basis, dim),
                        1.0,
                        false,
                    );
                    zc
                })
                .collect();
            for (chunk_idx, zc) in chunks.iter().enumerate() {
                for (r, zrow) in zc.chunks_exact(ch).enumerate() {
                    let id = chunk_idx * CODEC_CHUNK + r;
                    for c in 0..ch {
                        latent[(c * v.lt + lt) * per_frame + id] = zrow[c] / self.scale[c];
                    }
                }
            }
        }
        Tensor::from_vec(latent, &[ch, v.lt, v.hp, v.wp])
    }

    /// Decodes `[channels, L, Hl, Wl]` → `[3, 1 + t·(L−1), Hl·s, Wl·s]` (`f32`, clamped to
    /// `[-1, 1]`); frame 0 is the mean of the `t` frames latent frame 0 decodes to.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let op = "PatchPca::decode";
        let g = self.geom;
        let [_, tv, h, w] = g.video_shape(latent.shape()).map_err(|e| retag(e, op))?;
        let (dim, ch, s) = (g.dim(), g.channels, g.s);
        let (lt_n, hp, wp) = (latent.shape()[1], latent.shape()[2], latent.shape()[3]);
        let z = latent.to_vec_f32()?;
        if let Some(i) = z.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(op, format!("latent has a non-finite value {} at flat index {i}", z[i])));
        }
        let per_frame = hp * wp;
        let mut video = vec![0f32; 3 * tv * h * w];
        let ids: Vec<usize> = (0..per_frame).collect();
        for lt in 0..lt_n {
            let chunks: Vec<Vec<f32>> = ids
                .par_chunks(CODEC_CHUNK)
                .map(|ids| {
                    let rows = ids.len();
                    let mut zs = vec![0f32; rows * ch];
                    for (zrow, &id) in zs.chunks_exact_mut(ch).zip(ids) {
                        for c in 0..ch {
                            zrow[c] = z[(c * lt_n + lt) * per_frame + id] * self.scale[c];
                        }
                    }
                    let mut x = vec![0f32; rows * dim];
                    for row in x.chunks_exact_mut(dim) {
                        row.copy_from_slice(&self.mean);
                    }
                    gemm(
                        rows,
                        dim,
                        ch,
                        &mut x,
                        dim,
                        1,
                        true,
                        MatRef::rows(&zs, ch),
                        MatRef::rows(&self.basis, dim),
                        1.0,
                        false,
                    );
                    x
                })
                .collect();
            let frames = if lt == 0 { 1 } else { g.t };
            let inv_t = 1.0 / g.t as f32;
            for (chunk_idx, x) in chunks.iter().enumerate() {
                for (r, patch) in x.chunks_exact(dim).enumerate() {
                    let id = chunk_idx * CODEC_CHUNK + r;
                    let (py, px) = (id / wp, id % wp);
                    for c in 0..3 {
                        for dt in 0..frames {
                            let f = g.frame(lt, dt);
                            for dy in 0..s {
                                let dst = ((c * tv + f) * h + py * s + dy) * w + px * s;
                                let out = &mut video[dst..dst + s];
                                if lt == 0 {
                                    // Mean over the t decoded copies of frame 0.
                                    for (o, dx) in out.iter_mut().zip(0..s) {
                                        let mut acc = 0f32;
                                        for k in 0..g.t {
                                            acc += patch[((c * g.t + k) * s + dy) * s + dx];
                                        }
                                        *o = (acc * inv_t).clamp(-1.0, 1.0);
                                    }
                                } else {
                                    let src = ((c * g.t + dt) * s + dy) * s;
                                    for (o, &p) in out.iter_mut().zip(&patch[src..src + s]) {
                                        *o = p.clamp(-1.0, 1.0);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_vec(video, &[3, tv, h, w])
    }

    /// Saves as safetensors (`mean` `[dim]` f32, `basis` `[channels, dim]` f32, `scale`
    /// `[channels]` f32, `eigenvalues` `[channels]` f64) with the format, version, geometry, patch
    /// count, total variance and codec id in the metadata. Atomic: written to a temporary file in
    /// the same directory, fsynced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (dim, ch) = (self.geom.dim(), self.geom.channels);
        let mean = Tensor::from_vec(self.mean.clone(), &[dim])?;
        let basis = Tensor::from_vec(self.basis.clone(), &[ch, dim])?;
        let scale = Tensor::from_vec(self.scale.clone(), &[ch])?;
        let eig = Tensor::from_vec(self.eigenvalues.clone(), &[ch])?;
        let meta: HashMap<String, String> = [
            ("format", FORMAT_NAME.to_string()),
            ("version", FORMAT_VERSION.to_string()),
            ("channels", ch.to_string()),
            ("t", self.geom.t.to_string()),
            ("s", self.geom.s.to_string()),
            ("count", self.count.to_string()),
            // `{:?}` of an f64 round-trips exactly.
            ("total_variance", format!("{:?}", self.total_variance)),
            ("codec_id", self.codec_id()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let file_name = path.file_name().ok_or_else(|| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tmp_name.push(format!(".tmp-{}-{serial}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        let result = (|| {
            save_safetensors(
                &tmp,
                &[("mean", &mean), ("basis", &basis), ("scale", &scale), ("eigenvalues", &eig)],
                Some(meta),
            )?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io(path))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Some(dir) = path.parent() {
            let dir: PathBuf = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() };
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Loads a file written by [`save`](Self::save), validating the format metadata, geometry,
    /// tensor shapes and dtypes, finiteness, positive scales, an orthonormal basis (to 1e-4) and the
    /// stored codec id (which detects edited tensors). Problems are [`Error::SafeTensors`] naming the key.
    pub fn load(path: &Path) -> Result<PatchPca> {
        let file = SafeTensorsFile::open(path)?;
        let bad = |msg: String| Error::SafeTensors { path: path.to_path_buf(), msg };
        let meta = file.user_metadata().ok_or_else(|| bad("no __metadata__: not a patch-PCA codec".into()))?;
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata key {k:?} missing")));
        if get("format")? != FORMAT_NAME {
            return Err(bad(format!("metadata format is {:?}, expected {FORMAT_NAME:?}", get("format")?)));
        }
        if get("version")? != FORMAT_VERSION {
            return Err(bad(format!("unsupported version {:?} (this build reads {FORMAT_VERSION})", get("version")?)));
        }
        let num = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.parse().map_err(|_| bad(format!("metadata {k:?} = {v:?} is not a non-negative integer")))
        };
        let geom = PatchGeometry { channels: num("channels")?, t: num("t")?, s: num("s")? };
        geom.validate().map_err(|e| bad(format!("metadata geometry: {e}")))?;
        let count: u64 = get("count")?.parse().map_err(|_| bad("metadata \"count\" is not an integer".into()))?;
        let total_variance: f64 =
            get("total_variance")?.parse().map_err(|_| bad("metadata \"total_variance\" is not a number".into()))?;
        if !(total_variance.is_finite() && total_variance > 0.0) {
            return Err(bad(format!("metadata total_variance {total_variance} must be positive")));
        }
        let (dim, ch) = (geom.dim(), geom.channels);
        let tensor = |name: &str, shape: &[usize], dtype: DType| -> Result<Tensor> {
            let (got, got_dtype) = file.describe(name)?;
            if got != shape {
                return Err(bad(format!("tensor {name:?} has shape {got:?}, expected {shape:?} for {geom:?}")));
            }
            if got_dtype != dtype {
                return Err(bad(format!("tensor {name:?} has dtype {got_dtype:?}, expected {dtype:?}")));
            }
            file.load(name)
        };
        let mean = tensor("mean", &[dim], DType::F32)?.to_vec::<f32>()?;
        let basis = tensor("basis", &[ch, dim], DType::F32)?.to_vec::<f32>()?;
        let scale = tensor("scale", &[ch], DType::F32)?.to_vec::<f32>()?;
        let eigenvalues = tensor("eigenvalues", &[ch], DType::F64)?.to_vec::<f64>()?;
        if mean.iter().chain(&basis).any(|v| !v.is_finite()) {
            return Err(bad("tensor \"mean\" or \"basis\" has non-finite values".into()));
        }
        if scale.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(bad("tensor \"scale\" must be finite and positive".into()));
        }
        if eigenvalues.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(bad("tensor \"eigenvalues\" must be finite and non-negative".into()));
        }
        for i in 0..ch {
            for j in i..ch {
                let d: f64 = (0..dim).map(|k| basis[i * dim + k] as f64 * basis[j * dim + k] as f64).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                if (d - want).abs() > 1e-4 {
                    return Err(bad(format!("tensor \"basis\" rows are not orthonormal: row {i}·row {j} = {d}")));
                }
            }
        }
        let pca = PatchPca { geom, mean, basis, scale, eigenvalues, total_variance, count };
        let id = pca.codec_id();
        if get("codec_id")? != &id {
            return Err(bad(format!(
                "metadata codec_id {:?} does not match the stored tensors ({id}): file edited or corrupt",
                get("codec_id")?
            )));
        }
        Ok(pca)
    }

    /// Stable id of the fitted codec: "patch_pca-" + 16 hex chars of a hash of geometry+mean+basis+scale bytes.
    ///
    /// The hash is FNV-1a 64 over the geometry (`u32` little-endian channels, t, s) followed by the
    /// little-endian `f32` bytes of the mean, basis and scale.
    pub fn codec_id(&self) -> String {
        let mut h = FNV_OFFSET;
        for v in [self.geom.channels, self.geom.t, self.geom.s] {
            h = fnv1a64(h, &(v as u32).to_le_bytes());
        }
        for v in self.mean.iter().chain(&self.basis).chain(&self.scale) {
            h = fnv1a64(h, &v.to_le_bytes());
        }
        format!("patch_pca-{h:016x}")
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 continuing from state `h`.
fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// PSNR in dB of two videos in [-1,1] (peak-to-peak 2.0); +inf when identical; shape mismatch is an error.
///
/// `10·log10(2² / MSE)`, the MSE over every element in `f64`.
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::shape("psnr", format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    if a.numel() == 0 {
        return Err(Error::arg("psnr", "empty tensors"));
    }
    let (x, y) = (a.to_vec_f64()?, b.to_vec_f64()?);
    let mse = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / x.len() as f64;
    if mse.is_nan() {
        return Err(Error::arg("psnr", "non-finite values"));
    }
    if mse == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (4.0 / mse).log10())
}
