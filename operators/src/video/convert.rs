//! YUV → RGB8 / gray conversion of decoded frames, straight from the decoder's mapped planes into
//! the frame's buffer (one pass, no intermediate copy).
//!
//! Fixed-point arithmetic in 16-bit lanes with the stream's matrix (BT.601, BT.709, BT.2020) and
//! range (limited 16–235 or full); chroma is taken from the nearest sample. Every product is one
//! rounding high-half multiply of 16-bit values (`pmulhrsw`) and the sums carry 6 fraction bits, so
//! a 256-bit register converts 16 pixels at once (the AVX2 loop takes 32 pixels of one or two rows
//! per step, the chroma terms computed once per chroma sample for both rows of a 4:2:0 pair). The
//! scalar formula ([`px`]) performs the very same integer steps, so every path gives identical
//! bytes. Against the exact real-valued conversion every value is within one level (about 0.4% of
//! the values of a real frame differ by one).
//! The hot entry points are compiled three times (AVX2, SSE4.1, baseline) and picked at run
//! time, which makes 1080p conversion several times cheaper than GStreamer 1.22's `videoconvert`
//! to packed RGB. Output buffers are written once, never zeroed first.

use std::mem::MaybeUninit;

/// How chroma is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Planar 4:2:0 (I420; YV12 with U and V swapped by the caller).
    P420,
    /// Planar 4:2:2 (Y42B).
    P422,
    /// Planar 4:4:4 (Y444).
    P444,
    /// Semi-planar 4:2:0, interleaved U,V (NV12).
    Nv12,
    /// Semi-planar 4:2:0, interleaved V,U (NV21).
    Nv21,
}

/// Planes of one frame.
#[derive(Clone, Copy, Debug)]
pub struct Planes<'a> {
    pub layout: Layout,
    pub y: &'a [u8],
    pub y_stride: usize,
    /// U plane, or the interleaved chroma plane for NV12/NV21.
    pub u: &'a [u8],
    /// V plane (unused for NV12/NV21).
    pub v: &'a [u8],
    pub c_stride: usize,
}

/// Colour conversion coefficients for [`mulhrs`]: the luma gain in Q14 (it multiplies
/// `(y - y_off) << 7`), the chroma gains in Q13 (they multiply `(c - 128) << 8`); every product is
/// then in Q6 (64ths of an output level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coeffs {
    y_off: i16,
    cy: i16,
    crv: i16,
    cgu: i16,
    cgv: i16,
    cbu: i16,
}

/// Colour matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matrix {
    Bt601,
    Bt709,
    Bt2020,
}

impl Coeffs {
    /// Coefficients for a matrix and range.
    pub fn new(matrix: Matrix, full_range: bool) -> Coeffs {
        let (kr, kb) = match matrix {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
            Matrix::Bt2020 => (0.2627, 0.0593),
        };
        let kg = 1.0 - kr - kb;
        let (ys, cs, y_off) = if full_range { (1.0, 1.0, 0) } else { (255.0 / 219.0, 255.0 / 224.0, 16) };
        // Luma gains are ≤ 255/219 < 2 (Q14 fits i16); chroma gains are < 2.2 (BT.2020 limited
        // range: 2.14), well inside Q13's limit of 4.
        let q = |v: f64, bits: i32| (v * f64::from(1 << bits)).round() as i16;
        Coeffs {
            y_off,
            cy: q(ys, 14),
            crv: q(2.0 * (1.0 - kr) * cs, 13),
            cgu: q(2.0 * kb * (1.0 - kb) / kg * cs, 13),
            cgv: q(2.0 * kr * (1.0 - kr) / kg * cs, 13),
            cbu: q(2.0 * (1.0 - kb) * cs, 13),
        }
    }

    /// The luma term in Q6 with the final rounding half (32) folded in.
    #[inline(always)]
    fn luma(&self, y: u8) -> i32 {
        mulhrs((y as i16 - self.y_off) << 7, self.cy) + 32
    }

    /// The chroma terms in Q6 for R, G (subtracted) and B of one chroma sample.
    #[inline(always)]
    fn chroma(&self, u: u8, v: u8) -> (i32, i32, i32) {
        let (d, e) = ((u as i16 - 128) << 8, (v as i16 - 128) << 8);
        (mulhrs(e, self.crv), mulhrs(d, self.cgu) + mulhrs(e, self.cgv), mulhrs(d, self.cbu))
    }
}

/// `pmulhrsw`: the rounded high half of a 16 × 16-bit product, `(a·b + 2¹⁴) >> 15`.
#[inline(always)]
fn mulhrs(a: i16, b: i16) -> i32 {
    (a as i32 * b as i32 + 0x4000) >> 15
}

/// A Q6 sum to an output byte. (The vector path adds with 16-bit saturation, which only ever
/// triggers above 255·64, where both clamp to 255.)
#[inline(always)]
fn level(q6: i32) -> u8 {
    (q6 >> 6).clamp(0, 255) as u8
}

/// One pixel's R, G, B from its luma term and its chroma sample's terms ([`Coeffs::chroma`]).
#[inline(always)]
fn put(out: &mut [MaybeUninit<u8>], l: i32, (r, g, b): (i32, i32, i32)) {
    out[0].write(level(l + r));
    out[1].write(level(l - g));
    out[2].write(level(l + b));
}

#[inline(always)]
fn px(c: &Coeffs, y: u8, u: u8, v: u8, out: &mut [MaybeUninit<u8>]) {
    put(out, c.luma(y), c.chroma(u, v));
}

/// One row with one chroma sample per two pixels; chroma samples `STEP` bytes apart.
#[inline(always)]
fn row_pairs<const STEP: usize>(c: &Coeffs, y: &[u8], u: &[u8], v: &[u8], out: &mut [MaybeUninit<u8>]) {
    let pairs = y.len() / 2;
    let chroma = u.iter().step_by(STEP).zip(v.iter().step_by(STEP));
    for ((o, yy), (uu, vv)) in out.chunks_exact_mut(6).zip(y.chunks_exact(2)).zip(chroma).take(pairs) {
        let terms = c.chroma(*uu, *vv);
        let (o0, o1) = o.split_at_mut(3);
        put(o0, c.luma(yy[0]), terms);
        put(o1, c.luma(yy[1]), terms);
    }
    if y.len() % 2 == 1 {
        let (k, last) = (pairs * STEP, y.len() - 1);
        px(c, y[last], u[k], v[k], &mut out[last * 3..last * 3 + 3]);
    }
}

/// One row with a chroma sample per pixel.
#[inline(always)]
fn row_444(c: &Coeffs, y: &[u8], u: &[u8], v: &[u8], out: &mut [MaybeUninit<u8>]) {
    for (((o, yy), uu), vv) in out.chunks_exact_mut(3).zip(y).zip(u).zip(v) {
        px(c, *yy, *uu, *vv, o);
    }
}

/// Convert the `w × h` rectangle at `(x0, y0)` into packed RGB (`out.len() == w*h*3`).
/// `AVX2`: the caller runs with AVX2 enabled (planar 4:2:0 / 4:2:2 rows then take [`rows_avx2`]).
#[inline(always)]
fn convert_rect<const AVX2: bool>(
    p: &Planes,
    c: &Coeffs,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    out: &mut [MaybeUninit<u8>],
) {
    // Pairs need an even start column; an odd one takes the slow path for its first pixel.
    let mut row = 0;
    while row < h {
        let sy = y0 + row;
        // Two 4:2:0 rows share a chroma row: the vector path converts both with one chroma pass
        // (and is the only path that takes a second row).
        let rows = if cfg!(target_arch = "x86_64")
            && AVX2
            && p.layout == Layout::P420
            && sy.is_multiple_of(2)
            && row + 1 < h
        {
            2
        } else {
            1
        };
        let luma = |sy: usize| &p.y[sy * p.y_stride + x0..sy * p.y_stride + x0 + w];
        let (o0, o1) = out[row * w * 3..(row + rows) * w * 3].split_at_mut(w * 3);
        match p.layout {
            Layout::P444 => {
                let (u, v) = (&p.u[sy * p.c_stride + x0..], &p.v[sy * p.c_stride + x0..]);
                row_444(c, luma(sy), &u[..w], &v[..w], o0);
            }
            Layout::P420 | Layout::P422 | Layout::Nv12 | Layout::Nv21 => {
                let cy = if p.layout == Layout::P422 { sy } else { sy / 2 };
                let (base, step, uo, vo) = match p.layout {
                    Layout::Nv12 => (cy * p.c_stride, 2, 0, 1),
                    Layout::Nv21 => (cy * p.c_stride, 2, 1, 0),
                    _ => (cy * p.c_stride, 1, 0, 0),
                };
                let (ub, vb) = match p.layout {
                    Layout::Nv12 | Layout::Nv21 => (p.u, p.u),
                    _ => (p.u, p.v),
                };
                let (y0r, y1r) = (luma(sy), if rows == 2 { luma(sy + 1) } else { &[][..] });
                let mut xs = 0;
                if x0 % 2 == 1 {
                    let k = x0 / 2;
                    let (u, v) = (ub[base + k * step + uo], vb[base + k * step + vo]);
                    px(c, y0r[0], u, v, &mut o0[..3]);
                    if rows == 2 {
                        px(c, y1r[0], u, v, &mut o1[..3]);
                    }
                    xs = 1;
                }
                let k0 = (x0 + xs) / 2;
                let n = w - xs;
                let cn = n.div_ceil(2);
                let us = &ub[base + k0 * step + uo..base + (k0 + cn - 1) * step + uo + 1];
                let vs = &vb[base + k0 * step + vo..base + (k0 + cn - 1) * step + vo + 1];
                let (o0, o1) = (&mut o0[xs * 3..], o1.get_mut(xs * 3..).unwrap_or_default());
                let (y0r, y1r) = (&y0r[xs..], y1r.get(xs..).unwrap_or_default());
                if step == 1 && AVX2 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 is only set by `convert_avx2`, which runs after AVX2 was detected.
                    unsafe {
                        if rows == 2 {
                            rows_avx2::<2>(c, [y0r, y1r], us, vs, [o0, o1])
                        } else {
                            rows_avx2::<1>(c, [y0r], us, vs, [o0])
                        }
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    row_pairs::<1>(c, y0r, us, vs, o0);
                } else if step == 1 {
                    row_pairs::<1>(c, y0r, us, vs, o0);
                } else {
                    row_pairs::<2>(c, y0r, us, vs, o0);
                }
            }
        }
        row += rows;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convert_avx2(p: &Planes, c: &Coeffs, x0: usize, y0: usize, w: usize, h: usize, out: &mut [MaybeUninit<u8>]) {
    convert_rect::<true>(p, c, x0, y0, w, h, out)
}

/// `pshufb` masks that gather byte `chunk*16 + j` of packed RGB (pixel `(chunk*16 + j) / 3`) from
/// the 16-pixel plane of channel `ch`; other bytes are zeroed (0x80).
const fn rgb_mask(chunk: usize, ch: usize) -> [i8; 16] {
    let mut m = [-128i8; 16];
    let mut j = 0;
    while j < 16 {
        let b = chunk * 16 + j;
        if b % 3 == ch {
            m[j] = (b / 3) as i8;
        }
        j += 1;
    }
    m
}

const RGB_MASKS: [[[i8; 16]; 3]; 3] = [
    [rgb_mask(0, 0), rgb_mask(0, 1), rgb_mask(0, 2)],
    [rgb_mask(1, 0), rgb_mask(1, 1), rgb_mask(1, 2)],
    [rgb_mask(2, 0), rgb_mask(2, 1), rgb_mask(2, 2)],
];

/// [`row_pairs`] for `R` rows (1, or 2 of 4:2:0) that share one row of planar chroma (one sample
/// per two pixels, adjacent bytes), 32 pixels per step with AVX2. The chroma terms are computed
/// once per step for all rows. The integer steps are the scalar formula's in 16-bit lanes
/// (`pmulhrsw` is [`mulhrs`]), so the result is bit-identical; saturating packs do the clamp.
///
/// Lane layout: byte unpacks work within 128-bit lanes, so the low/high i16 halves hold pixels
/// {0–7, 16–23} and {8–15, 24–31}, and packing them back gives R, G, B registers with pixels 0–15
/// in the low lane and 16–31 in the high one. Output bytes 16k..16k+16 (k < 3) come from pixels
/// 0–15 and bytes 48+16k.. from the same positions of pixels 16–31, so one in-lane `pshufb` per
/// channel serves both, and nine shuffles interleave 96 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rows_avx2<const R: usize>(c: &Coeffs, ys: [&[u8]; R], u: &[u8], v: &[u8], mut outs: [&mut [MaybeUninit<u8>]; R]) {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let len = ys[0].len();
    let n = len / STEP * STEP;
    // The vector steps read y[..len] of every row, u[..len/2], v[..len/2] and write out[..3·len]
    // of every row (an odd last pixel goes scalar).
    let fits = ys.iter().all(|y| y.len() == len) && outs.iter().all(|o| o.len() >= 3 * len);
    if n == 0 || u.len() < len / 2 || v.len() < len / 2 || !fits {
        for (y, out) in ys.iter().zip(outs.iter_mut()) {
            row_pairs::<1>(c, y, u, v, out);
        }
        return;
    }
    let zero = _mm256_setzero_si256();
    let cy = _mm256_set1_epi16(c.cy);
    let y_off = _mm256_set1_epi16(c.y_off);
    let half = _mm256_set1_epi16(32);
    let c128 = _mm256_set1_epi16(128);
    let (crv, cgu, cgv, cbu) =
        (_mm256_set1_epi16(c.crv), _mm256_set1_epi16(c.cgu), _mm256_set1_epi16(c.cgv), _mm256_set1_epi16(c.cbu));
    // SAFETY: each mask is a 16-byte array; the same mask serves both lanes.
    let masks: [[__m256i; 3]; 3] = std::array::from_fn(|k| {
        std::array::from_fn(|ch| unsafe {
            _mm256_broadcastsi128_si256(_mm_loadu_si128(RGB_MASKS[k][ch].as_ptr() as *const __m128i))
        })
    });
    // One channel's Q6 sums (low and high halves) → 32 saturated bytes, lanes as described above.
    let bytes = |lo: __m256i, hi: __m256i| _mm256_packus_epi16(_mm256_srai_epi16::<6>(lo), _mm256_srai_epi16::<6>(hi));
    // A chroma term per sample (samples 0–7 | 8–15) → per pixel, in the luma halves' order.
    let spread = |t: __m256i| (_mm256_unpacklo_epi16(t, t), _mm256_unpackhi_epi16(t, t));
    // Q6 luma plus the rounding half, for pixels {0–7, 16–23} and {8–15, 24–31}.
    let luma = |yh: __m256i| {
        _mm256_add_epi16(_mm256_mulhrs_epi16(_mm256_slli_epi16::<7>(_mm256_sub_epi16(yh, y_off)), cy), half)
    };
    // One step: pixels i..i+32 of every row (i even, i + 32 <= len).
    let mut step = |i: usize| {
        // SAFETY: i/2 + 16 <= len/2 <= u.len(), v.len() (checked above).
        let (ub, vb) = unsafe {
            (
                _mm_loadu_si128(u.as_ptr().add(i / 2) as *const __m128i),
                _mm_loadu_si128(v.as_ptr().add(i / 2) as *const __m128i),
            )
        };
        // The chroma terms once per sample (both pixels of a pair share them).
        let d = _mm256_slli_epi16::<8>(_mm256_sub_epi16(_mm256_cvtepu8_epi16(ub), c128));
        let e = _mm256_slli_epi16::<8>(_mm256_sub_epi16(_mm256_cvtepu8_epi16(vb), c128));
        let (tr0, tr1) = spread(_mm256_mulhrs_epi16(e, crv));
        let (tg0, tg1) = spread(_mm256_add_epi16(_mm256_mulhrs_epi16(d, cgu), _mm256_mulhrs_epi16(e, cgv)));
        let (tb0, tb1) = spread(_mm256_mulhrs_epi16(d, cbu));
        for (y, out) in ys.iter().zip(outs.iter_mut()) {
            // SAFETY: i + 32 <= len = y.len().
            let yb = unsafe { _mm256_loadu_si256(y.as_ptr().add(i) as *const __m256i) };
            let (l0, l1) = (luma(_mm256_unpacklo_epi8(yb, zero)), luma(_mm256_unpackhi_epi8(yb, zero)));
            let (r0, r1) = (_mm256_adds_epi16(l0, tr0), _mm256_adds_epi16(l1, tr1));
            let (g0, g1) = (_mm256_subs_epi16(l0, tg0), _mm256_subs_epi16(l1, tg1));
            let (b0, b1) = (_mm256_adds_epi16(l0, tb0), _mm256_adds_epi16(l1, tb1));
            let planes = [bytes(r0, r1), bytes(g0, g1), bytes(b0, b1)];
            for (k, m) in masks.iter().enumerate() {
                let px = _mm256_or_si256(
                    _mm256_or_si256(_mm256_shuffle_epi8(planes[0], m[0]), _mm256_shuffle_epi8(planes[1], m[1])),
                    _mm256_shuffle_epi8(planes[2], m[2]),
                );
                // SAFETY: 3i + 48 + 16k + 16 <= 3i + 96 <= 3·len <= out.len() (checked above).
                unsafe {
                    let o = out.as_mut_ptr().add(3 * i + 16 * k);
                    _mm_storeu_si128(o as *mut __m128i, _mm256_castsi256_si128(px));
                    _mm_storeu_si128(o.add(48) as *mut __m128i, _mm256_extracti128_si256::<1>(px));
                }
            }
        }
    };
    for i in (0..n).step_by(STEP) {
        step(i);
    }
    // The last pixels: one more step ending at the row's end (or one before it, to start on a
    // chroma pair), over pixels already written, which it writes again with the same values.
    let mut done = n;
    if len > n {
        let i = (len - STEP) & !1;
        step(i);
        done = i + STEP;
    }
    for (y, out) in ys.iter().zip(outs.iter_mut()) {
        row_pairs::<1>(c, &y[done..], &u[done / 2..], &v[done / 2..], &mut out[3 * done..]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn convert_sse41(p: &Planes, c: &Coeffs, x0: usize, y0: usize, w: usize, h: usize, out: &mut [MaybeUninit<u8>]) {
    convert_rect::<false>(p, c, x0, y0, w, h, out)
}

/// Whether a rectangle fits the planes (so the conversion cannot index out of bounds).
/// Whether the `w × h` rectangle at `(x0, y0)` lies inside the planes.
pub fn fits(p: &Planes, x0: usize, y0: usize, w: usize, h: usize) -> bool {
    if w == 0 || h == 0 {
        return true;
    }
    let (ly, lx) = (y0 + h - 1, x0 + w);
    // A row may not run into the next one.
    let y_ok = lx <= p.y_stride && ly * p.y_stride + lx <= p.y.len();
    let c_ok = match p.layout {
        Layout::P444 => ly * p.c_stride + lx <= p.u.len() && ly * p.c_stride + lx <= p.v.len(),
        Layout::P422 => ly * p.c_stride + lx.div_ceil(2) <= p.u.len() && ly * p.c_stride + lx.div_ceil(2) <= p.v.len(),
        Layout::P420 => {
            (ly / 2) * p.c_stride + lx.div_ceil(2) <= p.u.len() && (ly / 2) * p.c_stride + lx.div_ceil(2) <= p.v.len()
        }
        Layout::Nv12 | Layout::Nv21 => (ly / 2) * p.c_stride + 2 * lx.div_ceil(2) <= p.u.len(),
    };
    y_ok && c_ok
}

/// Convert the `w × h` rectangle at `(x0, y0)` of `p` into packed RGB8. Returns `None` when the
/// rectangle does not fit the planes.
pub fn to_rgb(p: &Planes, c: &Coeffs, x0: usize, y0: usize, w: usize, h: usize) -> Option<Vec<u8>> {
    to_rgb_into(p, c, x0, y0, w, h, Vec::new())
}

/// [`to_rgb`] into `out`, whose contents are dropped and whose allocation is reused when it is
/// large enough (a recycled frame buffer). Returns `None` when the rectangle does not fit.
pub fn to_rgb_into(
    p: &Planes,
    c: &Coeffs,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    mut out: Vec<u8>,
) -> Option<Vec<u8>> {
    if !fits(p, x0, y0, w, h) {
        return None;
    }
    let len = w * h * 3;
    out.clear();
    out.reserve_exact(len);
    let dst = &mut out.spare_capacity_mut()[..len];
    #[cfg(target_arch = "x86_64")]
    let done = if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked here); the function is otherwise safe.
        unsafe { convert_avx2(p, c, x0, y0, w, h, dst) };
        true
    } else if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU supports SSE4.1 (checked here).
        unsafe { convert_sse41(p, c, x0, y0, w, h, dst) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        convert_rect::<false>(p, c, x0, y0, w, h, dst);
    }
    // SAFETY: every row of the rectangle wrote its `3w` bytes (`convert_rect` covers every pixel
    // of every row: pairs, the odd first and last pixel, or 4:4:4 pixels).
    unsafe { out.set_len(len) };
    Some(out)
}

#[inline(always)]
fn expand_rows(p: &Planes, x0: usize, y0: usize, w: usize, h: usize, out: &mut [u8]) {
    for row in 0..h {
        let src = &p.y[(y0 + row) * p.y_stride + x0..(y0 + row) * p.y_stride + x0 + w];
        for (o, &v) in out[row * w..(row + 1) * w].iter_mut().zip(src) {
            // (v - 16) * 255 / 219, rounded, in 16-bit fixed point
            *o = (((v as i32 - 16) * 76309 + 32768) >> 16).clamp(0, 255) as u8;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn expand_avx2(p: &Planes, x0: usize, y0: usize, w: usize, h: usize, out: &mut [u8]) {
    expand_rows(p, x0, y0, w, h, out)
}

/// The luma of the `w × h` rectangle at `(x0, y0)`, expanded to 0–255 unless it is full range
/// already (gray frames). Returns `None` when the rectangle does not fit the plane.
pub fn to_gray(p: &Planes, full_range: bool, x0: usize, y0: usize, w: usize, h: usize) -> Option<Vec<u8>> {
    to_gray_into(p, full_range, x0, y0, w, h, Vec::new())
}

/// [`to_gray`] into `out`, whose contents are dropped and whose allocation is reused when it is
/// large enough. Returns `None` when the rectangle does not fit the plane.
pub fn to_gray_into(
    p: &Planes,
    full_range: bool,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    mut out: Vec<u8>,
) -> Option<Vec<u8>> {
    if h > 0 && w > 0 && (y0 + h - 1) * p.y_stride + x0 + w > p.y.len() {
        return None;
    }
    out.clear();
    if full_range {
        out.reserve_exact(w * h);
        for row in y0..y0 + h {
            out.extend_from_slice(&p.y[row * p.y_stride + x0..row * p.y_stride + x0 + w]);
        }
        return Some(out);
    }
    out.resize(w * h, 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { expand_avx2(p, x0, y0, w, h, &mut out) };
            return Some(out);
        }
    }
    expand_rows(p, x0, y0, w, h, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes<'a>(y: &'a [u8], u: &'a [u8], v: &'a [u8], w: usize, layout: Layout) -> Planes<'a> {
        let c_stride = match layout {
            Layout::P444 => w,
            Layout::Nv12 | Layout::Nv21 => 2 * w.div_ceil(2),
            _ => w.div_ceil(2),
        };
        Planes { layout, y, y_stride: w, u, v, c_stride }
    }

    #[test]
    fn grey_levels_and_primaries() {
        let c = Coeffs::new(Matrix::Bt709, false);
        // limited-range black and white
        let (w, h) = (4, 2);
        let y = [16u8; 8];
        let uv = [128u8; 2];
        let rgb = to_rgb(&planes(&y, &uv, &uv, w, Layout::P420), &c, 0, 0, w, h).unwrap();
        assert!(rgb.iter().all(|&v| v == 0));
        let y = [235u8; 8];
        let rgb = to_rgb(&planes(&y, &uv, &uv, w, Layout::P420), &c, 0, 0, w, h).unwrap();
        assert!(rgb.iter().all(|&v| v == 255));
        // BT.601 full-range pure red: Y=76, U=85, V=255
        let c = Coeffs::new(Matrix::Bt601, true);
        let rgb = to_rgb(&planes(&[76, 76], &[85], &[255], 2, Layout::P420), &c, 0, 0, 2, 1).unwrap();
        assert!(rgb[0] > 250 && rgb[1] < 5 && rgb[2] < 5, "{rgb:?}");
    }

    #[test]
    fn fixed_point_is_within_one_level_of_the_exact_conversion() {
        // Every (Y, U, V) on a coarse grid plus its neighbours, each matrix and range: the 16-bit
        // arithmetic may round differently from the real-valued formula, by one level at most.
        for matrix in [Matrix::Bt601, Matrix::Bt709, Matrix::Bt2020] {
            let (kr, kb) = match matrix {
                Matrix::Bt601 => (0.299, 0.114),
                Matrix::Bt709 => (0.2126, 0.0722),
                Matrix::Bt2020 => (0.2627, 0.0593),
            };
            let kg = 1.0 - kr - kb;
            for full in [false, true] {
                let c = Coeffs::new(matrix, full);
                let (ys, cs, yo) = if full { (1.0, 1.0, 0.0) } else { (255.0 / 219.0, 255.0 / 224.0, 16.0) };
                let (mut values, mut off) = (0usize, 0usize);
                let grid = (0..=255u32).step_by(5).chain([1, 2, 127, 128, 129, 254]);
                let grid: Vec<u8> = grid.map(|v| v as u8).collect();
                for &y in &grid {
                    for &u in &grid {
                        for &v in &grid {
                            let l = ys * (y as f64 - yo);
                            let (d, e) = (cs * (u as f64 - 128.0), cs * (v as f64 - 128.0));
                            let exact = [
                                l + 2.0 * (1.0 - kr) * e,
                                l - 2.0 * kb * (1.0 - kb) / kg * d - 2.0 * kr * (1.0 - kr) / kg * e,
                                l + 2.0 * (1.0 - kb) * d,
                            ];
                            let mut o = [MaybeUninit::new(0u8); 3];
                            px(&c, y, u, v, &mut o);
                            for (got, want) in o.iter().zip(exact) {
                                let want = want.round().clamp(0.0, 255.0);
                                let diff = (unsafe { got.assume_init() } as f64 - want).abs();
                                assert!(diff <= 1.0, "{matrix:?} full {full} yuv {y} {u} {v}: {diff}");
                                values += 1;
                                off += (diff > 0.0) as usize;
                            }
                        }
                    }
                }
                assert!(off * 50 < values, "{matrix:?} full {full}: {off} of {values} values off by one");
            }
        }
    }

    #[test]
    fn simd_paths_equal_the_scalar_formula() {
        // Widths around the 16-pixel vector step, odd crops, both ranges, every planar layout.
        let mut seed = 0x9E37_79B9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 24) as u8
        };
        for w in [1usize, 2, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100] {
            let h = 4;
            let y: Vec<u8> = (0..w * h).map(|_| next()).collect();
            let u: Vec<u8> = (0..w * h).map(|_| next()).collect();
            let v: Vec<u8> = (0..w * h).map(|_| next()).collect();
            for layout in [Layout::P420, Layout::P422, Layout::P444] {
                for full in [false, true] {
                    let c = Coeffs::new(Matrix::Bt709, full);
                    let p = planes(&y, &u, &v, w, layout);
                    // Odd first columns, and row spans that start or end inside a 4:2:0 row pair.
                    for (x0, y0, ch) in [(0, 0, h), (1.min(w - 1), 0, h), (0, 1, h - 1), (1.min(w - 1), 0, h - 1)] {
                        let cw = w - x0;
                        let got = to_rgb(&p, &c, x0, y0, cw, ch).unwrap();
                        let mut want = vec![MaybeUninit::new(0u8); cw * ch * 3];
                        convert_rect::<false>(&p, &c, x0, y0, cw, ch, &mut want);
                        let want: Vec<u8> = want.iter().map(|b| unsafe { b.assume_init() }).collect();
                        assert_eq!(got, want, "w {w} x0 {x0} y0 {y0} h {ch} {layout:?} full {full}");
                    }
                }
            }
        }
    }

    #[test]
    fn layouts_agree_and_odd_rectangles_work() {
        let (w, h) = (7usize, 5usize);
        let y: Vec<u8> = (0..w * h).map(|i| (i * 37 % 200 + 20) as u8).collect();
        let cw = w.div_ceil(2);
        let ch = h.div_ceil(2);
        let u: Vec<u8> = (0..cw * ch).map(|i| (i * 53 % 180 + 40) as u8).collect();
        let v: Vec<u8> = (0..cw * ch).map(|i| (i * 71 % 160 + 50) as u8).collect();
        let nv: Vec<u8> = u.iter().zip(&v).flat_map(|(a, b)| [*a, *b]).collect();
        let c = Coeffs::new(Matrix::Bt601, false);
        let a = to_rgb(&planes(&y, &u, &v, w, Layout::P420), &c, 0, 0, w, h).unwrap();
        let b = to_rgb(&planes(&y, &nv, &[], w, Layout::Nv12), &c, 0, 0, w, h).unwrap();
        assert_eq!(a, b);
        // the generic per-pixel formula gives the same as the pair loop
        for row in 0..h {
            for x in 0..w {
                let mut o = [MaybeUninit::new(0u8); 3];
                px(&c, y[row * w + x], u[(row / 2) * cw + x / 2], v[(row / 2) * cw + x / 2], &mut o);
                let o = o.map(|b| unsafe { b.assume_init() });
                assert_eq!(&a[(row * w + x) * 3..(row * w + x) * 3 + 3], &o, "({x}, {row})");
            }
        }
        // a crop at an odd column equals the same pixels of the full conversion
        let crop = to_rgb(&planes(&y, &u, &v, w, Layout::P420), &c, 1, 1, 5, 3).unwrap();
        for row in 0..3 {
            assert_eq!(&crop[row * 15..(row + 1) * 15], &a[((row + 1) * w + 1) * 3..((row + 1) * w + 6) * 3]);
        }
        // out of bounds is refused, not a panic
        assert!(to_rgb(&planes(&y, &u, &v, w, Layout::P420), &c, 3, 0, 5, 1).is_none());
        let g = to_gray(&planes(&y, &u, &v, w, Layout::P420), true, 0, 0, w, h).unwrap();
        assert_eq!(g, y);
        let g = to_gray(&planes(&[16, 235, 126, 0], &u, &v, 4, Layout::P420), false, 0, 0, 4, 1).unwrap();
        assert_eq!(g, vec![0, 255, 128, 0]);
    }
}
