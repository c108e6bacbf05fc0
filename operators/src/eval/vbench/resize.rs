//! Image resizing exactly as PyTorch and torchvision do it on `uint8` tensors, so that frames reach
//! a backbone with the numbers VBench's transforms give it.
//!
//! * bilinear (`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`): source
//!   coordinate `(o + 0.5)·in/out − 0.5`, clamped at 0;
//! * bicubic (same, `mode="bicubic"`): Keys' kernel with `A = −0.75`, source coordinate not clamped,
//!   neighbour indices clamped to the image;
//! * torchvision then clamps to [0, 255] (bicubic) and rounds half to even back to `uint8`.
//!
//! Frames are planar here (`[3, H, W]`, `f32` holding integer values 0–255).

/// A planar image: `c` planes of `h × w`.
#[derive(Clone, Debug, PartialEq)]
pub struct Planar {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub d: Vec<f32>,
}

impl Planar {
    /// From interleaved RGB8.
    pub fn from_rgb(rgb: &[u8], w: usize, h: usize) -> Planar {
        let mut d = vec![0f32; 3 * h * w];
        for (i, p) in rgb.chunks_exact(3).take(h * w).enumerate() {
            for c in 0..3 {
                d[c * h * w + i] = p[c] as f32;
            }
        }
        Planar { c: 3, h, w, d }
    }

    /// The centre `size × size` crop, placed as torchvision's `CenterCrop` places it.
    pub fn center_crop(&self, size: usize) -> Planar {
        let top = ((self.h as f64 - size as f64) / 2.0).round_ties_even().max(0.0) as usize;
        let left = ((self.w as f64 - size as f64) / 2.0).round_ties_even().max(0.0) as usize;
        let mut d = Vec::with_capacity(self.c * size * size);
        for c in 0..self.c {
            for y in 0..size.min(self.h) {
                let row = c * self.h * self.w + (top + y) * self.w + left;
                d.extend_from_slice(&self.d[row..row + size.min(self.w)]);
            }
        }
        Planar { c: self.c, h: size.min(self.h), w: size.min(self.w), d }
    }
}

/// torchvision's output size for `Resize(size)` with an int: the shorter side becomes `size`, the
/// longer `int(size · long / short)`.
pub fn shorter_side_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

fn bilinear_taps(o: usize, n_in: usize, n_out: usize) -> [(usize, f32); 2] {
    let scale = n_in as f32 / n_out as f32;
    let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(n_in - 1);
    let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
    let l = src - i0 as f32;
    [(i0, 1.0 - l), (i1, l)]
}

fn cubic_taps(o: usize, n_in: usize, n_out: usize) -> [(usize, f32); 4] {
    const A: f32 = -0.75;
    let scale = n_in as f32 / n_out as f32;
    let src = (o as f32 + 0.5) * scale - 0.5;
    // PyTorch's `guard_index_and_lambda` and `get_cubic_upsample_coefficients`, term for term (the
    // last weight takes `(1 - t) + 1`, which can differ from `2 - t` in the last bit), with the fused
    // multiply-adds PyTorch's AVX2 build contracts the polynomials into (fewer off-by-one ties).
    let f = src.floor().min((n_in - 1) as f32);
    let t = (src - f).clamp(0.0, 1.0);
    let c1 = |x: f32| ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0);
    let c2 = |x: f32| A.mul_add(x, -5.0 * A).mul_add(x, 8.0 * A).mul_add(x, -4.0 * A);
    let t2 = 1.0 - t;
    let w = [c2(t + 1.0), c1(t), c1(t2), c2(t2 + 1.0)];
    let idx = |k: i64| (f as i64 + k).clamp(0, n_in as i64 - 1) as usize;
    [(idx(-1), w[0]), (idx(0), w[1]), (idx(1), w[2]), (idx(2), w[3])]
}

/// Resizes to `oh × ow` (separable: rows then columns, as PyTorch's kernels accumulate), then
/// clamps (bicubic) and rounds back to integer values as torchvision does for `uint8` input.
pub fn resize_u8(img: &Planar, oh: usize, ow: usize, bicubic: bool) -> Planar {
    if (oh, ow) == (img.h, img.w) {
        return img.clone();
    }
    let taps = |o: usize, n_in: usize, n_out: usize| -> Vec<(usize, f32)> {
        if bicubic { cubic_taps(o, n_in, n_out).to_vec() } else { bilinear_taps(o, n_in, n_out).to_vec() }
    };
    let ys: Vec<Vec<(usize, f32)>> = (0..oh).map(|o| taps(o, img.h, oh)).collect();
    let xs: Vec<Vec<(usize, f32)>> = (0..ow).map(|o| taps(o, img.w, ow)).collect();
    let mut d = vec![0f32; img.c * oh * ow];
    for c in 0..img.c {
        let src = &img.d[c * img.h * img.w..(c + 1) * img.h * img.w];
        for (oy, ty) in ys.iter().enumerate() {
            for (ox, tx) in xs.iter().enumerate() {
                let mut acc = 0f32;
                for &(y, wy) in ty {
                    let mut row = 0f32;
                    for &(x, wx) in tx {
                        row += wx * src[y * img.w + x];
                    }
                    acc += wy * row;
                }
                let v = if bicubic { acc.clamp(0.0, 255.0) } else { acc };
                d[c * oh * ow + oy * ow + ox] = v.round_ties_even().clamp(0.0, 255.0);
            }
        }
    }
    Planar { c: img.c, h: oh, w: ow, d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_crops_and_identity() {
        assert_eq!(shorter_side_size(64, 96, 224), (224, 336));
        assert_eq!(shorter_side_size(100, 30, 224), (746, 224));
        let p = Planar { c: 1, h: 4, w: 5, d: (0..20).map(|v| v as f32).collect() };
        let c = p.center_crop(2);
        // top = round(1.0) = 1, left = round(1.5) = 2 (ties to even).
        assert_eq!(c.d, vec![7.0, 8.0, 12.0, 13.0]);
        assert_eq!(resize_u8(&p, 4, 5, true), p);
    }

    /// torchvision's own results (scripts/make-vbench-fixture.py): bilinear values all equal; bicubic
    /// ones equal but for rare rounding ties, where PyTorch's compiled kernel (fused multiply-adds) may
    /// land on the other side of .5 — at most one step, at most 1 value in 1000.
    #[test]
    fn resizes_and_crops_equal_torchvision() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vbench/resize_reference.safetensors");
        let fx = medgen_kernels::io::safetensors::Checkpoint::open_file(&path).unwrap();
        let get = |n: &str| {
            let t = fx.load(n).unwrap();
            let s = t.shape().to_vec();
            Planar { c: s[0], h: s[1], w: s[2], d: t.to_vec_f32().unwrap() }
        };
        for case in ["up", "down"] {
            let x = get(&format!("{case}.input"));
            for (mode, bicubic) in [("bilinear", false), ("bicubic", true)] {
                let want = get(&format!("{case}.{mode}"));
                let got = resize_u8(&x, want.h, want.w, bicubic);
                let bad = got.d.iter().zip(&want.d).filter(|(a, b)| a != b).count();
                let worst = got.d.iter().zip(&want.d).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let allowed = if bicubic { want.d.len() / 1000 } else { 0 };
                assert!(
                    bad <= allowed && worst <= 1.0,
                    "{case} {mode}: {bad} of {} values differ (max {worst})",
                    want.d.len()
                );
            }
        }
        let x = get("clip.input");
        let (oh, ow) = shorter_side_size(x.h, x.w, 24);
        let got = resize_u8(&x, oh, ow, true).center_crop(24);
        let want = get("clip.output");
        assert_eq!((got.h, got.w), (want.h, want.w));
        assert!(got.d.iter().zip(&want.d).all(|(a, b)| (a - b).abs() <= 1.0));
        assert!(got.d.iter().zip(&want.d).filter(|(a, b)| a != b).count() <= 1);
    }

    #[test]
    fn bilinear_and_bicubic_upscale_like_pytorch() {
        // torch: F.interpolate(tensor([[[[0., 100.]]]]), size=(1, 4), mode="bilinear") = [0, 25, 75, 100].
        let p = Planar { c: 1, h: 1, w: 2, d: vec![0.0, 100.0] };
        assert_eq!(resize_u8(&p, 1, 4, false).d, vec![0.0, 25.0, 75.0, 100.0]);
        // torch bicubic (A = -0.75, border-clamped taps): [-10.5469, 22.6562, 77.3438, 110.5469];
        // torchvision clamps to [0, 255] and rounds.
        assert_eq!(resize_u8(&p, 1, 4, true).d, vec![0.0, 23.0, 77.0, 111.0]);
    }
}
