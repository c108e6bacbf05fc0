//! Global (camera) motion between two frames, by dense parametric image alignment, and the
//! classification of a clip's camera motion from it (used by `curate.camera_motion`).
//!
//! # Estimation
//!
//! The motion between frames `a` and `b` is a similarity transform about the frame's centre,
//! `x_b = (1+z)·x − r·y + tx`, `y_b = r·x + (1+z)·y + ty` (zoom `z`, small rotation `r`,
//! translation `t`), found by Lucas–Kanade alignment over *every* pixel (dense) on a Gaussian
//! pyramid, coarse to fine: Gauss–Newton steps on the brightness-constancy residual
//! `b(W(x)) − a(x)`, with Tukey-biweight reweighting of the residuals (IRLS) so that moving objects
//! in front of a still or moving camera do not drag the estimate. Translations come back in
//! fractions of the frame's width and height.
//!
//! # Classification
//!
//! From the per-pair motions of a clip, converted to rates per second: the median pan rate
//! (horizontal, widths/s, positive when the camera turns right — the picture moves left), tilt
//! rate (heights/s, positive when the camera turns down), zoom rate (relative scale change per
//! second, positive zooming in), and the jitter — the RMS of successive differences of the
//! translation rates over √2 (hand-held shake is fast back-and-forth motion; a steady pan has none).
//! A clip is `shaky` when the jitter exceeds `shaky_jitter`; otherwise each of pan, tilt and zoom
//! counts when its rate exceeds `min_rate`: none → `static`, exactly one → `pan`, `tilt` or
//! `zoom`, several → `mixed`.

use serde::{Deserialize, Serialize};

/// The motion between two frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMotion {
    /// Translation of the picture, fractions of the width (positive: content moves right).
    pub tx: f64,
    /// Translation of the picture, fractions of the height (positive: content moves down).
    pub ty: f64,
    /// Relative scale change (positive: content grows, the camera zooms in).
    pub zoom: f64,
    /// Rotation, radians (small-angle).
    pub rot: f64,
    /// Mean absolute residual after alignment (0–255 grey levels).
    pub residual: f64,
}

/// A grey image as f32.
#[derive(Clone, Debug)]
struct Plane {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> f32 {
        self.px[y * self.w + x]
    }

    /// Bilinear sample; `None` outside the image.
    fn sample(&self, x: f64, y: f64) -> Option<f32> {
        if !(x >= 0.0 && y >= 0.0 && x <= (self.w - 1) as f64 && y <= (self.h - 1) as f64) {
            return None;
        }
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.w - 1), (y0 + 1).min(self.h - 1));
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        let top = self.at(x0, y0) * (1.0 - fx) + self.at(x1, y0) * fx;
        let bottom = self.at(x0, y1) * (1.0 - fx) + self.at(x1, y1) * fx;
        Some(top * (1.0 - fy) + bottom * fy)
    }

    /// 1-2-1 blur then every other pixel.
    fn half(&self) -> Plane {
        let (w, h) = (self.w, self.h);
        let mut tmp = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let l = self.at(x.saturating_sub(1), y);
                let r = self.at((x + 1).min(w - 1), y);
                tmp[y * w + x] = 0.25 * l + 0.5 * self.at(x, y) + 0.25 * r;
            }
        }
        let (nw, nh) = (w.div_ceil(2), h.div_ceil(2));
        let mut px = vec![0f32; nw * nh];
        for y in 0..nh {
            for x in 0..nw {
                let (sx, sy) = (2 * x, 2 * y);
                let u = tmp[sy.saturating_sub(1) * w + sx];
                let d = tmp[(sy + 1).min(h - 1) * w + sx];
                px[y * nw + x] = 0.25 * u + 0.5 * tmp[sy * w + sx] + 0.25 * d;
            }
        }
        Plane { w: nw, h: nh, px }
    }
}

/// Pyramid levels: halve until the smaller side would drop under this.
const MIN_LEVEL_SIDE: usize = 16;
/// Gauss–Newton iterations per pyramid level.
const ITERATIONS: usize = 12;
/// Tukey biweight constant, in units of the residuals' robust deviation.
const TUKEY_C: f64 = 4.685;

fn pyramid(p: Plane) -> Vec<Plane> {
    let mut levels = vec![p];
    while levels.last().is_some_and(|l| l.w.min(l.h) / 2 >= MIN_LEVEL_SIDE) {
        let next = levels.last().map(Plane::half).expect("non-empty");
        levels.push(next);
    }
    levels
}

/// Solves the 4×4 system `m·x = v` (Gaussian elimination with partial pivoting).
#[allow(clippy::needless_range_loop)] // rows and columns of one matrix, indexed as in the formulas
fn solve4(mut m: [[f64; 4]; 4], mut v: [f64; 4]) -> Option<[f64; 4]> {
    for c in 0..4 {
        let p = (c..4).max_by(|a, b| m[*a][c].abs().total_cmp(&m[*b][c].abs()))?;
        if m[p][c].abs() < 1e-12 {
            return None;
        }
        m.swap(c, p);
        v.swap(c, p);
        for r in c + 1..4 {
            let f = m[r][c] / m[c][c];
            for k in c..4 {
                m[r][k] -= f * m[c][k];
            }
            v[r] -= f * v[c];
        }
    }
    let mut x = [0f64; 4];
    for c in (0..4).rev() {
        let s: f64 = (c + 1..4).map(|k| m[c][k] * x[k]).sum();
        x[c] = (v[c] - s) / m[c][c];
    }
    Some(x)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Aligns one pyramid level: refines `p = [z, r, tx, ty]` (pixels of this level, centred
/// coordinates) so that `b(W(x; p)) ≈ a(x)`. Returns the mean absolute residual.
#[allow(clippy::needless_range_loop)] // the normal equations, indexed as in the formulas
fn align_level(a: &Plane, b: &Plane, p: &mut [f64; 4]) -> f64 {
    let (cx, cy) = ((a.w - 1) as f64 / 2.0, (a.h - 1) as f64 / 2.0);
    // Gradients of `a` (central differences), used as the gradient of the warped `b`
    // (they agree at convergence; cheaper and steadier than differentiating the warp).
    let grad = |x: usize, y: usize| -> (f64, f64) {
        let gx = (a.at((x + 1).min(a.w - 1), y) - a.at(x.saturating_sub(1), y)) as f64 * 0.5;
        let gy = (a.at(x, (y + 1).min(a.h - 1)) - a.at(x, y.saturating_sub(1))) as f64 * 0.5;
        (gx, gy)
    };
    let mut residual = 0.0;
    for _ in 0..ITERATIONS {
        let [z, r, tx, ty] = *p;
        let mut res = Vec::with_capacity(a.w * a.h);
        for y in 1..a.h - 1 {
            for x in 1..a.w - 1 {
                let (xc, yc) = (x as f64 - cx, y as f64 - cy);
                let (wx, wy) = ((1.0 + z) * xc - r * yc + tx + cx, r * xc + (1.0 + z) * yc + ty + cy);
                if let Some(v) = b.sample(wx, wy) {
                    res.push((x, y, v as f64 - a.at(x, y) as f64));
                }
            }
        }
        if res.len() < 16 {
            break;
        }
        let mut abs: Vec<f64> = res.iter().map(|r| r.2.abs()).collect();
        residual = abs.iter().sum::<f64>() / abs.len() as f64;
        // Robust scale: 1.4826 × the median absolute residual (floored: noise-free synthetic
        // frames would otherwise reject everything once aligned).
        let scale = (1.4826 * median(&mut abs)).max(2.0);
        let c = TUKEY_C * scale;
        let mut m = [[0f64; 4]; 4];
        let mut v = [0f64; 4];
        for &(x, y, e) in &res {
            if e.abs() >= c {
                continue;
            }
            let u = 1.0 - (e / c).powi(2);
            let wgt = u * u;
            let (gx, gy) = grad(x, y);
            let (xc, yc) = (x as f64 - cx, y as f64 - cy);
            let j = [gx * xc + gy * yc, -gx * yc + gy * xc, gx, gy];
            for i in 0..4 {
                v[i] -= wgt * j[i] * e;
                for k in 0..4 {
                    m[i][k] += wgt * j[i] * j[k];
                }
            }
        }
        let Some(d) = solve4(m, v) else { break };
        for i in 0..4 {
            p[i] += d[i];
        }
        if d[2].abs() < 1e-3 && d[3].abs() < 1e-3 && d[0].abs() < 1e-5 && d[1].abs() < 1e-5 {
            break;
        }
    }
    residual
}

/// The global motion from grey frame `a` to grey frame `b` (same size, `w × h`, at least 16×16).
pub fn pair_motion(a: &[u8], b: &[u8], w: usize, h: usize) -> Option<PairMotion> {
    if w < MIN_LEVEL_SIDE || h < MIN_LEVEL_SIDE || a.len() < w * h || b.len() < w * h {
        return None;
    }
    let plane = |px: &[u8]| Plane { w, h, px: px[..w * h].iter().map(|v| *v as f32).collect() };
    let (pa, pb) = (pyramid(plane(a)), pyramid(plane(b)));
    let mut p = [0f64; 4];
    let mut residual = 0.0;
    for level in (0..pa.len()).rev() {
        residual = align_level(&pa[level], &pb[level], &mut p);
        if level > 0 {
            // Translations double at the next finer level; zoom and rotation do not change.
            let (fx, fy) = (pa[level - 1].w as f64 / pa[level].w as f64, pa[level - 1].h as f64 / pa[level].h as f64);
            p[2] *= fx;
            p[3] *= fy;
        }
    }
    Some(PairMotion { tx: p[2] / w as f64, ty: p[3] / h as f64, zoom: p[0], rot: p[1], residual })
}

/// Camera motion classes.
pub const CLASSES: [&str; 6] = ["static", "pan", "tilt", "zoom", "shaky", "mixed"];

/// A clip's motion summary (rates per second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClipMotion {
    /// Median camera pan rate, widths per second (positive: the camera turns right).
    pub pan: f64,
    /// Median camera tilt rate, heights per second (positive: the camera turns down).
    pub tilt: f64,
    /// Median zoom rate, relative scale per second (positive: zooming in).
    pub zoom: f64,
    /// High-pass RMS of the translation rates (widths/heights per second).
    pub jitter: f64,
    /// Pairs measured.
    pub pairs: usize,
}

/// Summarises per-pair motions measured `dt` seconds apart (each with its own interval).
pub fn summarize(pairs: &[(PairMotion, f64)]) -> ClipMotion {
    let rates: Vec<(f64, f64, f64)> = pairs
        .iter()
        .filter(|(_, dt)| *dt > 0.0)
        .map(|(m, dt)| (-m.tx / dt, -m.ty / dt, (1.0 + m.zoom).max(1e-6).ln() / dt))
        .collect();
    if rates.is_empty() {
        return ClipMotion::default();
    }
    let mut px: Vec<f64> = rates.iter().map(|r| r.0).collect();
    let mut py: Vec<f64> = rates.iter().map(|r| r.1).collect();
    let mut pz: Vec<f64> = rates.iter().map(|r| r.2).collect();
    // Jitter: the high-pass part of the translation rates — RMS of successive differences over
    // √2, which is the rates' deviation for independent shakes and 0 for a steady pan.
    let n = rates.len();
    let sq: f64 = rates.windows(2).map(|w| (w[1].0 - w[0].0).powi(2) + (w[1].1 - w[0].1).powi(2)).sum();
    let jitter = if n > 1 { (sq / (2.0 * (n - 1) as f64)).sqrt() } else { 0.0 };
    ClipMotion { pan: median(&mut px), tilt: median(&mut py), zoom: median(&mut pz), jitter, pairs: n }
}

/// The class of a clip's motion (see the module docs).
pub fn classify(m: &ClipMotion, min_rate: f64, shaky_jitter: f64) -> &'static str {
    if m.jitter > shaky_jitter {
        return "shaky";
    }
    let moving = [m.pan.abs() > min_rate, m.tilt.abs() > min_rate, m.zoom.abs() > min_rate];
    match moving {
        [false, false, false] => "static",
        [true, false, false] => "pan",
        [false, true, false] => "tilt",
        [false, false, true] => "zoom",
        _ => "mixed",
    }
}

/// Renders test views of a smooth random "world" through a moving camera: the window centred at
/// `(cx, cy)` (fractions of the world) with width `span` (fraction of the world's width),
/// sampled to `w × h` grey. For tests and synthetic videos.
#[allow(clippy::too_many_arguments)]
pub fn world_view(world: &[u8], ww: usize, wh: usize, cx: f64, cy: f64, span: f64, w: usize, h: usize) -> Vec<u8> {
    let plane = Plane { w: ww, h: wh, px: world.iter().map(|v| *v as f32).collect() };
    let sw = span * ww as f64;
    let sh = sw * h as f64 / w as f64;
    let (x0, y0) = (cx * ww as f64 - sw / 2.0, cy * wh as f64 - sh / 2.0);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x0 + (x as f64 + 0.5) * sw / w as f64, y0 + (y as f64 + 0.5) * sh / h as f64);
            out.push(plane.sample(sx.clamp(0.0, (ww - 1) as f64), sy.clamp(0.0, (wh - 1) as f64)).unwrap_or(0.0) as u8);
        }
    }
    out
}

/// A smooth random grey world (`w × h`) with detail at several scales, for [`world_view`].
pub fn random_world(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut acc = vec![0f64; w * h];
    for (cell, amp) in [(64usize, 1.0f64), (24, 0.6), (8, 0.35)] {
        let (gw, gh) = (w / cell + 2, h / cell + 2);
        let grid: Vec<f64> = (0..gw * gh).map(|_| next()).collect();
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f64 / cell as f64, y as f64 / cell as f64);
                let (ix, iy) = (fx as usize, fy as usize);
                let (tx, ty) = (fx - ix as f64, fy - iy as f64);
                let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
                let g = |i: usize, j: usize| grid[j * gw + i];
                let top = g(ix, iy) * (1.0 - sx) + g(ix + 1, iy) * sx;
                let bottom = g(ix, iy + 1) * (1.0 - sx) + g(ix + 1, iy + 1) * sx;
                acc[y * w + x] += amp * (top * (1.0 - sy) + bottom * sy);
            }
        }
    }
    let (lo, hi) = acc.iter().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    acc.iter().map(|v| (20.0 + 215.0 * (v - lo) / (hi - lo).max(1e-9)) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 160;
    const H: usize = 90;

    fn world() -> (Vec<u8>, usize, usize) {
        (random_world(960, 720, 7), 960, 720)
    }

    #[test]
    fn translations_zooms_and_still_pairs_are_measured() {
        let (wd, ww, wh) = world();
        let a = world_view(&wd, ww, wh, 0.5, 0.5, 0.4, W, H);
        // Camera moves right by 2% of the world = 5% of the view: content moves left.
        let b = world_view(&wd, ww, wh, 0.52, 0.5, 0.4, W, H);
        let m = pair_motion(&a, &b, W, H).unwrap();
        assert!((m.tx + 0.05).abs() < 0.005 && m.ty.abs() < 0.005 && m.zoom.abs() < 0.005, "{m:?}");
        // Camera moves down by 1% of the world height.
        let b = world_view(&wd, ww, wh, 0.5, 0.51, 0.4, W, H);
        let m = pair_motion(&a, &b, W, H).unwrap();
        let want = -0.01 * wh as f64 / (0.4 * ww as f64 * H as f64 / W as f64);
        assert!((m.ty - want).abs() < 0.005 && m.tx.abs() < 0.005, "{m:?} want ty {want}");
        // Zoom in: the window shrinks by 4% → content grows by 1/0.96.
        let b = world_view(&wd, ww, wh, 0.5, 0.5, 0.4 * 0.96, W, H);
        let m = pair_motion(&a, &b, W, H).unwrap();
        assert!((m.zoom - (1.0 / 0.96 - 1.0)).abs() < 0.006 && m.tx.abs() < 0.005, "{m:?}");
        let m = pair_motion(&a, &a, W, H).unwrap();
        assert!(m.tx.abs() < 1e-4 && m.zoom.abs() < 1e-4, "{m:?}");
        assert!(pair_motion(&a, &b, 8, 8).is_none());
    }

    #[test]
    fn a_moving_object_on_a_still_background_is_not_camera_motion() {
        let (wd, ww, wh) = world();
        let a = world_view(&wd, ww, wh, 0.5, 0.5, 0.4, W, H);
        let mut b = a.clone();
        // A bright 30×30 square that moves 12 px between the frames.
        let square = |img: &mut Vec<u8>, x0: usize| {
            for y in 30..60 {
                for x in x0..x0 + 30 {
                    img[y * W + x] = 250;
                }
            }
        };
        let mut a2 = a.clone();
        square(&mut a2, 40);
        square(&mut b, 52);
        let m = pair_motion(&a2, &b, W, H).unwrap();
        assert!(m.tx.abs() < 0.004 && m.ty.abs() < 0.004, "{m:?}");
    }

    #[test]
    fn classes_from_rates() {
        let pm = |tx: f64, ty: f64, zoom: f64| (PairMotion { tx, ty, zoom, ..Default::default() }, 0.2);
        let steady: Vec<_> = (0..20).map(|_| pm(-0.02, 0.0, 0.0)).collect();
        let s = summarize(&steady);
        assert!((s.pan - 0.1).abs() < 1e-9 && s.jitter < 1e-9, "{s:?}");
        assert_eq!(classify(&s, 0.02, 0.05), "pan");
        let tilt: Vec<_> = (0..20).map(|_| pm(0.0, 0.01, 0.0)).collect();
        assert_eq!(classify(&summarize(&tilt), 0.02, 0.05), "tilt");
        let zoom: Vec<_> = (0..20).map(|_| pm(0.0, 0.0, 0.02)).collect();
        assert_eq!(classify(&summarize(&zoom), 0.02, 0.05), "zoom");
        let both: Vec<_> = (0..20).map(|_| pm(-0.02, 0.02, 0.0)).collect();
        assert_eq!(classify(&summarize(&both), 0.02, 0.05), "mixed");
        let still: Vec<_> = (0..20).map(|_| pm(0.0005, 0.0, 0.0)).collect();
        assert_eq!(classify(&summarize(&still), 0.02, 0.05), "static");
        let shake: Vec<_> = (0..20).map(|i| pm(if i % 2 == 0 { 0.02 } else { -0.02 }, 0.0, 0.0)).collect();
        let s = summarize(&shake);
        assert!(s.jitter > 0.1, "{s:?}");
        assert_eq!(classify(&s, 0.02, 0.05), "shaky");
        assert_eq!(summarize(&[]).pairs, 0);
    }
}
