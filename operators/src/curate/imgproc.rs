//! Native image processing for the curation stages: Gaussian blur, Sobel gradients, the Canny edge
//! detector, an axis-aligned Hough line transform, area resizing, the visual descriptor the
//! segmenter compares frames with, and the DCT perceptual hash the deduplicator uses.
//!
//! Everything works on packed 8-bit pixels (rows of `width * channels` bytes, no padding), the
//! layout [`crate::video::Frame`] delivers. Nothing here panics on odd sizes: empty or tiny
//! images give empty results.

/// An 8-bit gray image, rows packed top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl GrayImage {
    /// An image over `data`; `None` when `data` is not `width * height` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Option<GrayImage> {
        (data.len() == width * height).then_some(GrayImage { width, height, data })
    }

    /// A `width × height` image of one value.
    pub fn filled(width: usize, height: usize, value: u8) -> GrayImage {
        GrayImage { width, height, data: vec![value; width * height] }
    }

    /// Pixel at `(x, y)`; callers keep coordinates in range.
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.width + x]
    }

    /// One row.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.width..(y + 1) * self.width]
    }
}

/// A binary edge map, as [`canny`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeMap {
    pub width: usize,
    pub height: usize,
    /// `true` where an edge pixel is.
    pub edges: Vec<bool>,
}

impl EdgeMap {
    /// Number of edge pixels.
    pub fn count(&self) -> usize {
        self.edges.iter().filter(|e| **e).count()
    }
}

/// 5-tap binomial Gaussian (σ ≈ 1) applied separably, edges replicated; output in f32.
pub fn gaussian_blur(img: &GrayImage) -> Vec<f32> {
    const K: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = img.row(y);
        let out = &mut tmp[y * w..(y + 1) * w];
        for (x, o) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (k, kv) in K.iter().enumerate() {
                acc += kv * row[clamp(x as isize + k as isize - 2, w)] as f32;
            }
            *o = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for (k, kv) in K.iter().enumerate() {
            let src = clamp(y as isize + k as isize - 2, h);
            let (src_row, dst_row) = (&tmp[src * w..(src + 1) * w], &mut out[y * w..(y + 1) * w]);
            for (d, s) in dst_row.iter_mut().zip(src_row) {
                *d += kv * s;
            }
        }
    }
    out
}

/// Sobel gradients `(gx, gy)` of an f32 image, edges replicated.
pub fn sobel(src: &[f32], w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gx = vec![0f32; w * h];
    let mut gy = vec![0f32; w * h];
    if w == 0 || h == 0 || src.len() != w * h {
        return (gx, gy);
    }
    for y in 0..h {
        let (ym, yp) = (y.saturating_sub(1), (y + 1).min(h - 1));
        let (rm, r0, rp) = (&src[ym * w..(ym + 1) * w], &src[y * w..(y + 1) * w], &src[yp * w..(yp + 1) * w]);
        for x in 0..w {
            let (xm, xp) = (x.saturating_sub(1), (x + 1).min(w - 1));
            gx[y * w + x] = (rm[xp] + 2.0 * r0[xp] + rp[xp]) - (rm[xm] + 2.0 * r0[xm] + rp[xm]);
            gy[y * w + x] = (rp[xm] + 2.0 * rp[x] + rp[xp]) - (rm[xm] + 2.0 * rm[x] + rm[xp]);
        }
    }
    (gx, gy)
}

/// The Canny edge detector: Gaussian blur, Sobel gradients (L2 magnitude), non-maximum
/// suppression along the quantised gradient direction, then hysteresis — pixels at or above
/// `high` seed edges that grow through 8-connected pixels at or above `low`. Pixels on the image
/// border are never edges.
pub fn canny(img: &GrayImage, low: f32, high: f32) -> EdgeMap {
    let (w, h) = (img.width, img.height);
    let mut edges = vec![false; w * h];
    if w < 3 || h < 3 {
        return EdgeMap { width: w, height: h, edges };
    }
    let blurred = gaussian_blur(img);
    let (gx, gy) = sobel(&blurred, w, h);
    let mag: Vec<f32> = gx.iter().zip(&gy).map(|(a, b)| (a * a + b * b).sqrt()).collect();
    // tan(22.5°) and tan(67.5°): the borders between the four direction sectors.
    const T1: f32 = 0.414_213_57;
    const T2: f32 = 2.414_213_6;
    // 0: not an edge candidate, 1: weak, 2: strong.
    let mut class = vec![0u8; w * h];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            let m = mag[i];
            if m < low || m <= 0.0 {
                continue;
            }
            let (ax, ay) = (gx[i].abs(), gy[i].abs());
            // Neighbours along the gradient direction.
            let (a, b) = if ay <= T1 * ax {
                (mag[i - 1], mag[i + 1])
            } else if ay >= T2 * ax {
                (mag[i - w], mag[i + w])
            } else if (gx[i] > 0.0) == (gy[i] > 0.0) {
                // Gradient along +x+y (image rows grow downwards): the diagonal ↘.
                (mag[i - w - 1], mag[i + w + 1])
            } else {
                (mag[i - w + 1], mag[i + w - 1])
            };
            // Ties are broken towards the first neighbour so a plateau two pixels wide keeps one.
            if m > a && m >= b {
                class[i] = if m >= high { 2 } else { 1 };
            }
        }
    }
    let mut stack: Vec<usize> = Vec::new();
    for (i, c) in class.iter().enumerate() {
        if *c == 2 {
            edges[i] = true;
            stack.push(i);
        }
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if nx <= 0 || ny <= 0 || nx >= w as isize - 1 || ny >= h as isize - 1 {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if class[j] == 1 && !edges[j] {
                    edges[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    EdgeMap { width: w, height: h, edges }
}

/// A line found by the Hough transform: the points `(x, y)` with `x cos θ + y sin θ = rho`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HoughLine {
    pub rho: f64,
    /// Angle of the line's normal, degrees: 0 for vertical lines, 90 for horizontal ones.
    pub theta_deg: f64,
    pub votes: u32,
}

/// Near-horizontal and near-vertical lines of an edge map, by the standard (ρ, θ) Hough transform
/// restricted to normals within `tolerance_deg` of the axes (sampled every `step_deg`), with 1-pixel
/// ρ bins. A bin's support is its votes plus its stronger ρ neighbour's (a one-pixel line whose edge
/// pixels fall on both sides of a boundary splits over two bins); a line is the best bin within
/// ±2 ρ bins over all angles of its family (most support, then most votes of its own, then
/// nearest the axis), its ρ the vote-weighted mean of the two bins.
/// Horizontal lines need at least `min_votes_h` votes, vertical ones `min_votes_v`. Each list is
/// sorted by votes, most first.
pub fn hough_axis_lines(
    edges: &EdgeMap,
    tolerance_deg: f64,
    step_deg: f64,
    min_votes_h: u32,
    min_votes_v: u32,
) -> (Vec<HoughLine>, Vec<HoughLine>) {
    let (w, h) = (edges.width, edges.height);
    if w == 0 || h == 0 || edges.edges.len() != w * h || step_deg.is_nan() || step_deg <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    let steps = (tolerance_deg.max(0.0) / step_deg).floor() as i64;
    let offsets: Vec<f64> = (-steps..=steps).map(|k| k as f64 * step_deg).collect();
    let diag = ((w * w + h * h) as f64).sqrt().ceil() as i64;
    let bins = (2 * diag + 1) as usize;
    let points: Vec<(f64, f64)> =
        edges.edges.iter().enumerate().filter(|(_, e)| **e).map(|(i, _)| ((i % w) as f64, (i / w) as f64)).collect();
    let run = |base: f64, min_votes: u32| -> Vec<HoughLine> {
        let thetas: Vec<f64> = offsets.iter().map(|o| base + o).collect();
        let trig: Vec<(f64, f64)> = thetas.iter().map(|t| (t.to_radians().cos(), t.to_radians().sin())).collect();
        let mut acc = vec![0u32; thetas.len() * bins];
        for &(x, y) in &points {
            for (ti, (c, s)) in trig.iter().enumerate() {
                let rho = (x * c + y * s).round() as i64 + diag;
                if (0..bins as i64).contains(&rho) {
                    acc[ti * bins + rho as usize] += 1;
                }
            }
        }
        // Support of each bin: itself plus its stronger ρ neighbour (a one-pixel-wide line can
        // split its votes over two neighbouring bins: edge pixels on either side of a boundary).
        let nt = thetas.len();
        let mut support = vec![0u32; nt * bins];
        let mut centre = vec![0f64; nt * bins];
        for ti in 0..nt {
            let row = &acc[ti * bins..(ti + 1) * bins];
            for r in 0..bins {
                let v = row[r];
                if v == 0 {
                    continue;
                }
                let below = if r > 0 { row[r - 1] } else { 0 };
                let above = if r + 1 < bins { row[r + 1] } else { 0 };
                let (nb, nb_rho) = if above > below { (above, r as f64 + 1.0) } else { (below, r as f64 - 1.0) };
                support[ti * bins + r] = v + nb;
                centre[ti * bins + r] = (r as f64 * v as f64 + nb_rho * nb as f64) / (v + nb) as f64;
            }
        }
        // Peaks: the best bin within ±2 ρ bins over every angle of the family, so one line is
        // reported once, at its best angle. Best: most support, then most votes in the bin itself
        // (a line is concentrated at its true angle, spread at the others), then the angle nearest
        // the axis, then the earlier bin.
        let key = |t: usize, r: usize| {
            let off = (t as i64 - steps).unsigned_abs();
            (
                support[t * bins + r],
                acc[t * bins + r],
                std::cmp::Reverse(off),
                std::cmp::Reverse(t),
                std::cmp::Reverse(r),
            )
        };
        let mut lines = Vec::new();
        for ti in 0..nt {
            for r in 0..bins {
                let v = support[ti * bins + r];
                if acc[ti * bins + r] == 0 || v < min_votes.max(1) {
                    continue;
                }
                let own = key(ti, r);
                let beaten = (0..nt).any(|t2| {
                    (r.saturating_sub(2)..(r + 3).min(bins)).any(|r2| (t2, r2) != (ti, r) && key(t2, r2) > own)
                });
                if !beaten {
                    lines.push(HoughLine { rho: centre[ti * bins + r] - diag as f64, theta_deg: thetas[ti], votes: v });
                }
            }
        }
        lines.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.rho.total_cmp(&b.rho)));
        lines
    };
    (run(90.0, min_votes_h), run(0.0, min_votes_v))
}

/// Box-average resize of one 8-bit channel, `sw × sh` → `dw × dh`; every output pixel is the mean
/// of the source pixels whose centres fall in its box (at least one). Output in f32.
pub fn area_resize(
    src: &[u8],
    sw: usize,
    sh: usize,
    channels: usize,
    channel: usize,
    dw: usize,
    dh: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; dw * dh];
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || src.len() < sw * sh * channels || channel >= channels {
        return out;
    }
    let span = |i: usize, s: usize, d: usize| {
        let a = i * s / d;
        let b = ((i + 1) * s / d).max(a + 1).min(s);
        (a.min(s - 1), b)
    };
    for oy in 0..dh {
        let (y0, y1) = span(oy, sh, dh);
        for ox in 0..dw {
            let (x0, x1) = span(ox, sw, dw);
            let mut sum = 0u32;
            for y in y0..y1 {
                let row = &src[(y * sw) * channels..(y * sw + sw) * channels];
                for x in x0..x1 {
                    sum += row[x * channels + channel] as u32;
                }
            }
            out[oy * dw + ox] = sum as f32 / ((y1 - y0) * (x1 - x0)) as f32;
        }
    }
    out
}

/// BT.601 luma of packed RGB as one channel.
pub use crate::video::image::rgb_to_gray as luma;

/// Side of the gray thumbnail in a [`Descriptor`].
pub const THUMB: usize = 8;
/// Levels per channel of the colour histogram in a [`Descriptor`] (4 → 64 bins).
pub const HIST_LEVELS: usize = 4;
const HIST_BINS: usize = HIST_LEVELS * HIST_LEVELS * HIST_LEVELS;

/// The built-in visual descriptor of a frame, compared by [`similarity`]:
///
/// * a joint RGB colour histogram with 4 levels per channel (64 bins), normalised to sum 1 —
///   insensitive to motion and framing;
/// * a 16×16 gray thumbnail (box-averaged luma), mean-removed and scaled to unit norm — sensitive
///   to layout, insensitive to brightness and contrast.
#[derive(Clone, Debug, PartialEq)]
pub struct Descriptor {
    pub hist: [f32; HIST_BINS],
    pub thumb: [f32; THUMB * THUMB],
    /// Mean luma of the thumbnail (0–255).
    pub mean: f32,
    /// Standard deviation of the thumbnail's luma; below 2 the frame is flat (no layout).
    pub std: f32,
}

impl Descriptor {
    /// Whether the frame has no layout to compare (a flat colour, e.g. a black frame).
    pub fn flat(&self) -> bool {
        self.std < 2.0
    }
}

/// The [`Descriptor`] of a packed RGB frame.
pub fn describe_rgb(rgb: &[u8], w: usize, h: usize) -> Descriptor {
    let mut hist = [0f32; HIST_BINS];
    let n = (w * h).min(rgb.len() / 3);
    let q = 256 / HIST_LEVELS;
    for p in rgb[..n * 3].chunks_exact(3) {
        let (r, g, b) = (p[0] as usize / q, p[1] as usize / q, p[2] as usize / q);
        hist[(r * HIST_LEVELS + g) * HIST_LEVELS + b] += 1.0;
    }
    if n > 0 {
        hist.iter_mut().for_each(|v| *v /= n as f32);
    }
    let gray = if n == w * h { luma(&rgb[..n * 3]) } else { Vec::new() };
    let small = area_resize(&gray, w, h, 1, 0, THUMB, THUMB);
    let mean = small.iter().sum::<f32>() / small.len() as f32;
    let mut thumb = [0f32; THUMB * THUMB];
    let mut ss = 0f32;
    for (t, v) in thumb.iter_mut().zip(&small) {
        *t = v - mean;
        ss += *t * *t;
    }
    let std = (ss / small.len() as f32).sqrt();
    let norm = ss.sqrt();
    if norm > 0.0 {
        thumb.iter_mut().for_each(|t| *t /= norm);
    }
    Descriptor { hist, thumb, mean, std }
}

/// Thumbnail standard deviation (luma levels) from which layout correlation is fully trusted.
pub const STRUCTURE_STD: f32 = 8.0;

/// Similarity of two frames in [0, 1]: the mean of the colour histograms' intersection and a
/// layout term. The layout term is the thumbnails' correlation (clamped at 0), trusted in
/// proportion to how much structure the flatter of the two has (`min(std) / 8`, capped at 1); the
/// rest of the weight compares mean brightness (`1 - |Δmean| / 32`, clamped). So two black frames
/// are alike, a black frame and a bright one are not, and nearly flat frames (a plain background
/// with a small moving object) are compared by brightness rather than by the object's position.
pub fn similarity(a: &Descriptor, b: &Descriptor) -> f64 {
    let inter: f32 = a.hist.iter().zip(&b.hist).map(|(x, y)| x.min(*y)).sum();
    let corr = a.thumb.iter().zip(&b.thumb).map(|(x, y)| x * y).sum::<f32>().clamp(0.0, 1.0);
    let brightness = (1.0 - (a.mean - b.mean).abs() / 32.0).clamp(0.0, 1.0);
    let trust = (a.std.min(b.std) / STRUCTURE_STD).clamp(0.0, 1.0);
    let layout = trust * corr + (1.0 - trust) * brightness;
    (0.5 * inter.clamp(0.0, 1.0) as f64 + 0.5 * layout as f64).clamp(0.0, 1.0)
}

/// Side of the image the perceptual hash is computed on.
pub const PHASH_SIZE: usize = 32;

/// The 64-bit DCT perceptual hash of one channel of packed pixels: box-average to 32×32, 2-D
/// DCT-II, keep the 8×8 lowest frequencies, set bit `8u + v` where coefficient (u, v) exceeds the
/// median of the 63 non-DC ones. `None` when the image is flat (no structure to hash). Uniform
/// brightness changes leave it unchanged; re-encoding flips a few bits.
pub fn phash(px: &[u8], w: usize, h: usize, channels: usize) -> Option<u64> {
    let small = area_resize(px, w, h, channels, 0, PHASH_SIZE, PHASH_SIZE);
    phash_of_32(&small)
}

/// [`phash`] of an already reduced 32×32 f32 image.
pub fn phash_of_32(img: &[f32]) -> Option<u64> {
    const N: usize = PHASH_SIZE;
    if img.len() != N * N {
        return None;
    }
    let mean = img.iter().sum::<f32>() / (N * N) as f32;
    let var = img.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / (N * N) as f32;
    if var.sqrt() < 1.0 {
        return None;
    }
    let mut cos = [[0f32; N]; 8];
    for (u, row) in cos.iter_mut().enumerate() {
        for (x, c) in row.iter_mut().enumerate() {
            *c = (std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * N) as f64).cos() as f32;
        }
    }
    // Rows: tmp[y][u] = Σx img[y][x] cos(u, x); then columns.
    let mut tmp = [[0f32; 8]; N];
    for (y, t) in tmp.iter_mut().enumerate() {
        let row = &img[y * N..(y + 1) * N];
        for (u, tu) in t.iter_mut().enumerate() {
            *tu = row.iter().zip(&cos[u]).map(|(a, b)| a * b).sum();
        }
    }
    let mut coef = [0f32; 64];
    for v in 0..8 {
        for u in 0..8 {
            coef[v * 8 + u] = (0..N).map(|y| tmp[y][u] * cos[v][y]).sum();
        }
    }
    let mut ac: Vec<f32> = coef[1..].to_vec();
    ac.sort_by(f32::total_cmp);
    let median = (ac[31] + ac[30]) / 2.0;
    let mut hash = 0u64;
    for (i, c) in coef.iter().enumerate() {
        if *c > median {
            hash |= 1 << i;
        }
    }
    Some(hash)
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` gray image: `inner` inside the rectangle `[x0, x1) × [y0, y1)`, `outer` elsewhere.
    fn boxed(w: usize, h: usize, (x0, y0, x1, y1): (usize, usize, usize, usize), inner: u8, outer: u8) -> GrayImage {
        let mut img = GrayImage::filled(w, h, outer);
        for y in y0..y1 {
            for x in x0..x1 {
                img.data[y * w + x] = inner;
            }
        }
        img
    }

    #[test]
    fn canny_finds_a_thin_closed_contour_and_nothing_on_flat_images() {
        let img = boxed(64, 48, (16, 12, 48, 36), 200, 20);
        let e = canny(&img, 30.0, 80.0);
        // Edges hug the rectangle's outline, one pixel thick.
        let on_row = |y: usize| (0..64).filter(|x| e.edges[y * 64 + x]).count();
        let rows: Vec<usize> = (0..48).filter(|y| on_row(*y) > 20).collect();
        assert_eq!(rows.len(), 2, "exactly two long horizontal edges, got rows {rows:?}");
        assert!(rows[0].abs_diff(12) <= 1 && rows[1].abs_diff(35) <= 1, "{rows:?}");
        for y in 0..48 {
            for x in 0..64 {
                if e.edges[y * 64 + x] {
                    let near_x = x.abs_diff(16) <= 1 || x.abs_diff(47) <= 1;
                    let near_y = y.abs_diff(12) <= 1 || y.abs_diff(35) <= 1;
                    assert!(near_x || near_y, "stray edge at ({x}, {y})");
                }
            }
        }
        assert_eq!(canny(&GrayImage::filled(64, 48, 90), 30.0, 80.0).count(), 0);
        // Weak steps below the low threshold give nothing; tiny images give nothing.
        assert_eq!(canny(&boxed(64, 48, (16, 12, 48, 36), 24, 20), 30.0, 80.0).count(), 0);
        assert_eq!(canny(&GrayImage::filled(2, 2, 0), 1.0, 2.0).count(), 0);
    }

    #[test]
    fn canny_hysteresis_extends_strong_edges_through_weak_ones() {
        // A step whose contrast fades from strong (left) to weak (right).
        let (w, h) = (80, 40);
        let mut img = GrayImage::filled(w, h, 0);
        for y in 20..h {
            for x in 0..w {
                img.data[y * w + x] = (160.0 - x as f32 * 1.5) as u8;
            }
        }
        let strong_only = canny(&img, 300.0, 300.0).count();
        let with_weak = canny(&img, 40.0, 300.0).count();
        assert!(with_weak > strong_only && strong_only > 0, "{strong_only} {with_weak}");
    }

    #[test]
    fn hough_finds_axis_lines_at_their_positions() {
        let (w, h) = (100, 60);
        let mut edges = EdgeMap { width: w, height: h, edges: vec![false; w * h] };
        for x in 5..95 {
            edges.edges[17 * w + x] = true; // horizontal line y = 17
        }
        for y in 3..57 {
            edges.edges[y * w + 71] = true; // vertical line x = 71
        }
        edges.edges[40 * w + 40] = true; // noise
        let (hor, ver) = hough_axis_lines(&edges, 2.0, 0.5, 50, 30);
        assert_eq!(hor.len(), 1, "{hor:?}");
        // (The crossing vertical line adds a vote next to the horizontal one and vice versa.)
        assert!((hor[0].rho - 17.0).abs() < 0.05 && hor[0].theta_deg == 90.0 && hor[0].votes >= 90, "{hor:?}");
        assert_eq!(ver.len(), 1, "{ver:?}");
        assert!((ver[0].rho - 71.0).abs() < 0.05 && ver[0].theta_deg == 0.0 && ver[0].votes >= 54, "{ver:?}");
        // A line whose edge pixels alternate between two neighbouring columns is one line.
        let mut edges = EdgeMap { width: w, height: h, edges: vec![false; w * h] };
        for y in 0..60 {
            edges.edges[y * w + 40 + y % 2] = true;
        }
        let (_, ver) = hough_axis_lines(&edges, 2.0, 0.5, 50, 50);
        assert_eq!(ver.len(), 1, "{ver:?}");
        assert_eq!((ver[0].rho, ver[0].votes), (40.5, 60));
        // A slanted line (about 1°) is found near its angle too.
        let mut edges = EdgeMap { width: w, height: h, edges: vec![false; w * h] };
        for x in 0..100 {
            let y = 30 + (x as f64 * 1f64.to_radians().tan()).round() as usize;
            edges.edges[y * w + x] = true;
        }
        let (hor, _) = hough_axis_lines(&edges, 2.0, 0.5, 60, 30);
        assert!(!hor.is_empty());
        assert!((hor[0].theta_deg - 91.0).abs() <= 0.5, "{hor:?}");
        // Degenerate inputs.
        let empty = EdgeMap { width: 0, height: 0, edges: vec![] };
        assert_eq!(hough_axis_lines(&empty, 2.0, 0.5, 1, 1), (vec![], vec![]));
    }

    #[test]
    fn canny_then_hough_on_a_letterboxed_frame() {
        let (w, h) = (160, 120);
        let img = boxed(w, h, (0, 20, w, 100), 150, 0);
        let e = canny(&img, 30.0, 80.0);
        let (hor, ver) = hough_axis_lines(&e, 2.0, 0.5, (w as f64 * 0.6) as u32, (h as f64 * 0.6) as u32);
        let rhos: Vec<f64> = hor.iter().map(|l| l.rho).collect();
        assert_eq!(rhos.len(), 2, "{hor:?}");
        assert!(
            rhos.iter().any(|r| (r - 20.0).abs() <= 1.0) && rhos.iter().any(|r| (r - 99.0).abs() <= 1.0),
            "{rhos:?}"
        );
        assert!(ver.is_empty(), "{ver:?}");
    }

    #[test]
    fn area_resize_averages_boxes() {
        let src: Vec<u8> = vec![0, 100, 200, 250];
        assert_eq!(area_resize(&src, 2, 2, 1, 0, 1, 1), vec![137.5]);
        assert_eq!(area_resize(&src, 2, 2, 1, 0, 2, 2), vec![0.0, 100.0, 200.0, 250.0]);
        // upscaling repeats, channels are picked
        let rgb = vec![10, 20, 30];
        assert_eq!(area_resize(&rgb, 1, 1, 3, 1, 2, 2), vec![20.0; 4]);
        assert_eq!(area_resize(&[], 0, 0, 1, 0, 2, 2), vec![0.0; 4]);
    }

    /// A textured RGB test picture: two sinusoids and a bright rectangle, brightness `shift`,
    /// optionally mirrored left to right.
    fn picture(w: usize, h: usize, shift: f32, mirror: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let xx = if mirror { (w - 1 - x) as f32 } else { x as f32 };
                let yy = y as f32;
                let mut l = 110.0 + 50.0 * (xx / 7.0 + yy / 11.0).sin() + 30.0 * (xx / 5.0 - yy / 3.0).cos();
                if (w / 5..w / 2).contains(&(xx as usize)) && (h / 4..h / 2).contains(&y) {
                    l += 50.0;
                }
                let l = (l + shift).clamp(0.0, 255.0);
                v.extend_from_slice(&[l as u8, (l * 0.8) as u8, (255.0 - l) as u8]);
            }
        }
        v
    }

    fn checker(w: usize, h: usize, cell: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let c: [u8; 3] = if (x / cell + y / cell).is_multiple_of(2) { [230, 120, 40] } else { [40, 60, 200] };
                v.extend_from_slice(&c);
            }
        }
        v
    }

    #[test]
    fn descriptor_similarity_separates_content() {
        let a = describe_rgb(&picture(64, 36, 0.0, false), 64, 36);
        let b = describe_rgb(&picture(64, 36, 4.0, false), 64, 36);
        let c = describe_rgb(&checker(64, 36, 8), 64, 36);
        assert!(similarity(&a, &a) > 0.999);
        assert!(similarity(&a, &b) > 0.85, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) < 0.3, "{}", similarity(&a, &c));
        let black = describe_rgb(&vec![0u8; 64 * 36 * 3], 64, 36);
        let grey = describe_rgb(&vec![128u8; 64 * 36 * 3], 64, 36);
        assert!(black.flat() && !a.flat());
        assert!(similarity(&black, &black) > 0.999);
        assert!(similarity(&black, &grey) < 0.01);
        assert!(similarity(&black, &a) < 0.3);
        assert_eq!(similarity(&a, &c), similarity(&c, &a));
    }

    #[test]
    fn phash_is_robust_to_brightness_and_separates_images() {
        let (w, h) = (96, 64);
        let gray = |shift: f32, mirror: bool| luma(&picture(w, h, shift, mirror));
        let a = phash(&gray(0.0, false), w, h, 1).unwrap();
        let brighter = phash(&gray(12.0, false), w, h, 1).unwrap();
        let mirrored = phash(&gray(0.0, true), w, h, 1).unwrap();
        let other = phash(&luma(&checker(w, h, 12)), w, h, 1).unwrap();
        assert!(hamming(a, brighter) <= 3, "{}", hamming(a, brighter));
        assert!(hamming(a, mirrored) >= 12, "{}", hamming(a, mirrored));
        assert!(hamming(a, other) >= 12, "{}", hamming(a, other));
        assert_eq!(phash(&vec![77u8; w * h], w, h, 1), None);
        assert_eq!(hamming(0b1011, 0b0001), 2);
        // RGB input hashes its first channel.
        assert!(phash(&picture(w, h, 0.0, false), w, h, 3).is_some());
    }
}
