//! Small pixel helpers for frames that do not come out of GStreamer (DICOM) and for checks:
//! resizing, cropping, colour conversion, PSNR.

/// One 8-bit channel of an image in memory: sample `(x, y)` is `data[y * stride + x * step + offset]`
/// (a plane, one channel of packed pixels, or one half of interleaved chroma).
#[derive(Clone, Copy, Debug)]
pub struct PlaneRef<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub step: usize,
    pub offset: usize,
}

/// Box-average `src` (`sw × sh` samples) to `dw × dh`, writing output sample `(x, y)` to
/// `out[(y * dw + x) * out_step + out_offset]`, rounded to nearest. Output pixel `i` averages the
/// source samples `[i·s/d, max((i+1)·s/d, i·s/d + 1))` on each axis (the boxes of
/// `curate::imgproc::area_resize`), so upscaling repeats samples. One pass over the source rows
/// (column sums per output row, then box sums). Returns false (and writes nothing) when `src` or `out` is too short.
#[allow(clippy::too_many_arguments)]
pub fn shrink_plane(
    src: &PlaneRef,
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    out: &mut [u8],
    out_step: usize,
    out_offset: usize,
) -> bool {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || src.step == 0 {
        return false;
    }
    let last = (sh - 1) * src.stride + src.offset + (sw - 1) * src.step;
    if last >= src.data.len() || (dw * dh - 1) * out_step + out_offset >= out.len() {
        return false;
    }
    let span = |i: usize, s: usize, d: usize| {
        let a = (i * s / d).min(s - 1);
        (a, ((i + 1) * s / d).max(a + 1).min(s))
    };
    let xs: Vec<(usize, usize)> = (0..dw).map(|i| span(i, sw, dw)).collect();
    // Per output row: sum the box's source rows column by column (contiguous, vectorises), then
    // each output pixel sums its columns.
    let mut cols = vec![0u32; sw];
    for oy in 0..dh {
        let (y0, y1) = span(oy, sh, dh);
        cols.fill(0);
        for y in y0..y1 {
            let row = &src.data[y * src.stride + src.offset..];
            if src.step == 1 {
                for (c, &v) in cols.iter_mut().zip(&row[..sw]) {
                    *c += v as u32;
                }
            } else {
                for (x, c) in cols.iter_mut().enumerate() {
                    *c += row[x * src.step] as u32;
                }
            }
        }
        let rows = (y1 - y0) as u32;
        for (ox, &(x0, x1)) in xs.iter().enumerate() {
            let n = rows * (x1 - x0) as u32;
            let sum: u32 = cols[x0..x1].iter().sum();
            out[(oy * dw + ox) * out_step + out_offset] = ((sum + n / 2) / n) as u8;
        }
    }
    true
}

/// Resize packed 8-bit pixels (`channels` per pixel) from `sw × sh` to `dw × dh` with a separable
/// triangle (bilinear) filter whose support widens when shrinking, so downscaling averages
/// (no aliasing) and upscaling interpolates.
pub fn resize(src: &[u8], sw: u32, sh: u32, channels: usize, dw: u32, dh: u32) -> Vec<u8> {
    let (sw, sh, dw, dh) = (sw as usize, sh as usize, dw as usize, dh as usize);
    if sw == dw && sh == dh {
        return src.to_vec();
    }
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return vec![0; dw * dh * channels];
    }
    let wx = weights(sw, dw);
    let wy = weights(sh, dh);
    // Horizontal pass into f32 rows, then vertical.
    let mut tmp = vec![0f32; dw * sh * channels];
    for y in 0..sh {
        let row = &src[y * sw * channels..(y + 1) * sw * channels];
        let out = &mut tmp[y * dw * channels..(y + 1) * dw * channels];
        for (x, (first, ws)) in wx.iter().enumerate() {
            for c in 0..channels {
                let mut acc = 0f32;
                for (i, w) in ws.iter().enumerate() {
                    acc += w * row[(first + i) * channels + c] as f32;
                }
                out[x * channels + c] = acc;
            }
        }
    }
    let mut dst = vec![0u8; dw * dh * channels];
    let stride = dw * channels;
    for (y, (first, ws)) in wy.iter().enumerate() {
        let out = &mut dst[y * stride..(y + 1) * stride];
        for (k, o) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (i, w) in ws.iter().enumerate() {
                acc += w * tmp[(first + i) * stride + k];
            }
            *o = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
    dst
}

/// Per output index: the first source index and the normalised weights from there on.
fn weights(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = src as f64 / dst as f64;
    let support = scale.max(1.0);
    (0..dst)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(src);
            let mut ws: Vec<f32> = (lo..hi)
                .map(|j| {
                    let d = ((j as f64 + 0.5) - centre).abs() / support;
                    (1.0 - d).max(0.0) as f32
                })
                .collect();
            let sum: f32 = ws.iter().sum();
            if sum > 0.0 {
                ws.iter_mut().for_each(|w| *w /= sum);
                (lo, ws)
            } else {
                let j = (centre as usize).min(src - 1);
                (j, vec![1.0])
            }
        })
        .collect()
}

/// The `cw × ch` rectangle at `(x, y)` of a `w`-wide packed image.
pub fn crop(src: &[u8], w: u32, channels: usize, x: u32, y: u32, cw: u32, ch: u32) -> Vec<u8> {
    let (w, x, y, cw, ch) = (w as usize, x as usize, y as usize, cw as usize, ch as usize);
    let mut out = Vec::with_capacity(cw * ch * channels);
    for row in y..y + ch {
        let start = (row * w + x) * channels;
        out.extend_from_slice(&src[start..start + cw * channels]);
    }
    out
}

/// Copy rows out of a padded buffer (`stride` bytes per row) into packed rows.
pub fn unpad(src: &[u8], row_bytes: usize, stride: usize, rows: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(row_bytes * rows);
    for r in 0..rows {
        out.extend_from_slice(&src[r * stride..r * stride + row_bytes]);
    }
    out
}

/// BT.601 luma of packed RGB.
pub fn rgb_to_gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3).map(|p| ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32 + 128) >> 8) as u8).collect()
}

/// Gray to packed RGB.
pub fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    gray.iter().flat_map(|&v| [v, v, v]).collect()
}

/// Full-range YCbCr (DICOM `YBR_FULL`) to RGB, in place on packed triplets.
pub fn ybr_full_to_rgb(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let (y, cb, cr) = (p[0] as f32, p[1] as f32 - 128.0, p[2] as f32 - 128.0);
        p[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
        p[1] = (y - 0.344_136 * cb - 0.714_136 * cr).round().clamp(0.0, 255.0) as u8;
        p[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
    }
}

/// Peak signal-to-noise ratio of two equally sized 8-bit images, in dB (infinite when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let se: u64 = a.iter().zip(b).map(|(&x, &y)| (x as i64 - y as i64).pow(2) as u64).sum();
    if se == 0 {
        return f64::INFINITY;
    }
    let mse = se as f64 / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_flat_images_flat_and_averages() {
        let src = vec![100u8; 10 * 6 * 3];
        let out = resize(&src, 10, 6, 3, 4, 2);
        assert_eq!(out.len(), 4 * 2 * 3);
        assert!(out.iter().all(|&v| v == 100));
        // a 2x1 black/white image shrunk to 1x1 is mid-grey
        let out = resize(&[0, 255], 2, 1, 1, 1, 1);
        assert!((out[0] as i32 - 128).abs() <= 1);
        // upscaling interpolates monotonically
        let out = resize(&[0, 255], 2, 1, 1, 8, 1);
        assert!(out.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(resize(&[1, 2, 3, 4], 2, 2, 1, 2, 2), vec![1, 2, 3, 4]);
    }

    #[test]
    fn crop_gray_psnr() {
        let img: Vec<u8> = (0..16).collect();
        assert_eq!(crop(&img, 4, 1, 1, 1, 2, 2), vec![5, 6, 9, 10]);
        assert_eq!(rgb_to_gray(&[255, 255, 255, 0, 0, 0]), vec![255, 0]);
        assert_eq!(psnr(&img, &img), f64::INFINITY);
        let mut other = img.clone();
        other[0] = 10;
        assert!(psnr(&img, &other) > 20.0);
        let mut px = [128u8, 128, 128];
        ybr_full_to_rgb(&mut px);
        assert_eq!(px, [128, 128, 128]);
        assert_eq!(unpad(&[1, 2, 0, 3, 4, 0], 2, 3, 2), vec![1, 2, 3, 4]);
    }
}
