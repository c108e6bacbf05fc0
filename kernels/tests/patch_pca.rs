//! Patch-PCA codec: eigen solver, streaming statistics, shapes, reconstruction quality, save/load.

use std::time::Instant;

use medgen_kernels::codec::{CovarianceStats, PatchGeometry, PatchPca, psnr, symmetric_eigen};
use medgen_kernels::{DType, Device, Error, Rng, Tensor};

/// Symmetric `Q·diag(λ)·Qᵀ` with `Q` a product of `reflections` random Householder reflectors,
/// built in O(reflections·n²). Returns the matrix and `Q` (row-major; column i = eigenvector i).
fn known_spectrum(lambda: &[f64], reflections: usize, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let n = lambda.len();
    let mut a = vec![0.0; n * n];
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = lambda[i];
        q[i * n + i] = 1.0;
    }
    for _ in 0..reflections {
        let v = rng.normal_vec(n);
        let tau = 2.0 / v.iter().map(|x| x * x).sum::<f64>();
        // A ← H·A·H with H = I − τ·v·vᵀ (A symmetric): p = τ·A·v, w = p − (τ/2)(vᵀp)·v, A −= v·wᵀ + w·vᵀ.
        let p: Vec<f64> = (0..n).map(|i| tau * (0..n).map(|j| a[i * n + j] * v[j]).sum::<f64>()).collect();
        let k = 0.5 * tau * v.iter().zip(&p).map(|(x, y)| x * y).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(p, v)| p - k * v).collect();
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] -= v[i] * w[j] + w[i] * v[j];
            }
        }
        // Q ← H·Q
        let u: Vec<f64> = (0..n).map(|j| (0..n).map(|i| v[i] * q[i * n + j]).sum::<f64>()).collect();
        for i in 0..n {
            for j in 0..n {
                q[i * n + j] -= tau * v[i] * u[j];
            }
        }
    }
    // Exact symmetry (rounding leaves ~1e-16 asymmetry).
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
    (a, q)
}

fn check_eigen(n: usize, reflections: usize, seed: u64) -> (f64, f64, f64) {
    let mut rng = Rng::new(seed);
    // Distinct, well-separated positive spectrum (SPD), unsorted on purpose.
    let mut lambda: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 + 0.3 * rng.uniform()).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        lambda.swap(i, j);
    }
    let (a, q) = known_spectrum(&lambda, reflections, &mut rng);
    let t0 = Instant::now();
    let eig = symmetric_eigen(&a, n).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| lambda[j].total_cmp(&lambda[i]));
    let mut max_rel = 0f64;
    let mut max_vec = 0f64;
    for (r, &i) in order.iter().enumerate() {
        max_rel = max_rel.max((eig.values[r] - lambda[i]).abs() / lambda[i]);
        let got = &eig.vectors[r * n..(r + 1) * n];
        let dot: f64 = (0..n).map(|k| got[k] * q[k * n + i]).sum();
        let sign = dot.signum();
        for k in 0..n {
            max_vec = max_vec.max((got[k] - sign * q[k * n + i]).abs());
        }
    }
    (max_rel, max_vec, secs)
}

#[test]
fn eigen_solver_recovers_known_spectrum() {
    for (n, refl) in [(1, 1), (2, 2), (3, 3), (40, 40), (120, 120)] {
        let (rel, vec, _) = check_eigen(n, refl, 7 + n as u64);
        println!("n={n}: eigenvalue max rel err {rel:.2e}, eigenvector max abs err {vec:.2e}");
        assert!(rel < 1e-9, "n={n}: eigenvalue rel error {rel}");
        assert!(vec < 1e-9, "n={n}: eigenvector error {vec}");
    }
}

#[test]
fn eigen_solver_768_dims() {
    let (rel, vec, secs) = check_eigen(768, 24, 3);
    println!("n=768: eigenvalue max rel err {rel:.2e}, eigenvector max abs err {vec:.2e}, solve {secs:.2} s");
    assert!(rel < 1e-9, "eigenvalue rel error {rel}");
    assert!(vec < 1e-8, "eigenvector error {vec}");
}

#[test]
fn eigen_solver_rejects_bad_input() {
    assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(symmetric_eigen(&[1.0, 2.0, 0.0, 1.0], 2).is_err());
    assert!(symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_err());
    // Repeated eigenvalues and a zero matrix still decompose.
    let eig = symmetric_eigen(&[0.0; 9], 3).unwrap();
    assert_eq!(eig.values, vec![0.0; 3]);
    let eig = symmetric_eigen(&[2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 5.0], 3).unwrap();
    assert_eq!(eig.values, vec![5.0, 2.0, 2.0]);
    assert_eq!(&eig.vectors[..3], &[0.0, 0.0, 1.0]);
}

/// Smooth synthetic video `[3, t, h, w]`: moving colour gradients plus drifting Gaussian blobs.
fn smooth_video(t: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let blobs: Vec<[f64; 7]> = (0..12)
        .map(|_| {
            [
                rng.uniform_range(0.0, w as f64),
                rng.uniform_range(0.0, h as f64),
                rng.uniform_range(-2.0, 2.0),
                rng.uniform_range(-2.0, 2.0),
                rng.uniform_range(2.5, 8.0),
                rng.uniform_range(-0.8, 0.8),
                rng.uniform_range(0.0, 3.0),
            ]
        })
        .collect();
    let mut v = vec![0f32; 3 * t * h * w];
    for c in 0..3 {
        for f in 0..t {
            for y in 0..h {
                for x in 0..w {
                    let (xf, yf, ff) = (x as f64 / w as f64, y as f64 / h as f64, f as f64);
                    let mut val = 0.4 * (5.0 * xf - 1.0 + 0.3 * ff).sin() * (1.0 + 0.2 * c as f64)
                        + 0.3 * (7.0 * yf + 0.4 * ff + c as f64).cos();
                    for b in &blobs {
                        let (bx, by) = (b[0] + b[2] * ff, b[1] + b[3] * ff);
                        let d2 = (x as f64 - bx).powi(2) + (y as f64 - by).powi(2);
                        val += b[5] * (1.0 + 0.3 * (b[6] + c as f64).sin()) * (-d2 / (2.0 * b[4] * b[4])).exp();
                    }
                    v[((c * t + f) * h + y) * w + x] = val.clamp(-1.0, 1.0) as f32;
                }
            }
        }
    }
    Tensor::from_vec(v, &[3, t, h, w]).unwrap()
}

fn noise_video(t: usize, h: usize, w: usize, seed: u64) -> Tensor {
    Tensor::rand_uniform(&[3, t, h, w], -1.0, 1.0, DType::F32, &mut Rng::new(seed))
}

fn fitted(video: &Tensor, geom: PatchGeometry) -> PatchPca {
    let mut stats = CovarianceStats::new(geom);
    stats.add_video(video, 1).unwrap();
    PatchPca::fit(&stats).unwrap()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn stats_merge_equals_single_pass_and_bytes_roundtrip() {
    let geom = PatchGeometry { channels: 4, t: 2, s: 4 };
    let (a, b) = (smooth_video(5, 16, 24, 1), noise_video(9, 16, 24, 2));
    let mut single = CovarianceStats::new(geom);
    single.add_video(&a, 1).unwrap();
    single.add_video(&b, 1).unwrap();
    let mut sa = CovarianceStats::new(geom);
    sa.add_video(&a, 1).unwrap();
    let mut sb = CovarianceStats::new(geom);
    sb.add_video(&b, 1).unwrap();
    sa.merge(&sb).unwrap();
    assert_eq!(sa.count(), single.count());
    assert_eq!(single.count(), 3 * 4 * 6 + 5 * 4 * 6);

    let (x, y) = (single.to_bytes(), sa.to_bytes());
    let decode = |b: &[u8]| -> Vec<f64> {
        b[32..b.len() - 8].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let rel = max_rel_diff(&decode(&x), &decode(&y));
    println!("merge vs single pass: max rel diff {rel:.2e}");
    assert!(rel < 1e-12, "merge differs from single pass by {rel}");

    // Bytes roundtrip is exact.
    let back = CovarianceStats::from_bytes(&x).unwrap();
    assert_eq!(back.to_bytes(), x);
    assert_eq!(back.geometry(), geom);
    assert_eq!(back.count(), single.count());
    // Fits from the original and the roundtripped stats agree bit for bit.
    assert_eq!(PatchPca::fit(&single).unwrap().codec_id(), PatchPca::fit(&back).unwrap().codec_id());

    // Truncation, trailing bytes, corruption, bad magic: typed errors.
    for bad in [&x[..x.len() - 1], &x[..20], &[][..]] {
        assert!(matches!(CovarianceStats::from_bytes(bad), Err(Error::InvalidArgument { .. })));
    }
    let mut longer = x.clone();
    longer.push(0);
    assert!(CovarianceStats::from_bytes(&longer).is_err());
    let mut flipped = x.clone();
    flipped[100] ^= 1;
    assert!(CovarianceStats::from_bytes(&flipped).unwrap_err().to_string().contains("checksum"));
    let mut magic = x.clone();
    magic[0] = b'X';
    assert!(CovarianceStats::from_bytes(&magic).is_err());

    // Merging different geometries fails; stride subsamples.
    let mut other = CovarianceStats::new(PatchGeometry::default());
    assert!(other.merge(&single).is_err());
    let mut strided = CovarianceStats::new(geom);
    strided.add_video(&b, 5).unwrap();
    assert_eq!(strided.count(), (5 * 4 * 6usize).div_ceil(5) as u64);
    assert!(strided.add_video(&b, 0).is_err());
}

#[test]
fn fit_rejects_too_few_patches_and_constant_data() {
    let geom = PatchGeometry::default();
    let mut stats = CovarianceStats::new(geom);
    assert!(PatchPca::fit(&stats).is_err());
    // 1 latent frame of 2x2 patches = 4 patches < 17.
    stats.add_video(&noise_video(1, 16, 16, 3), 1).unwrap();
    let err = PatchPca::fit(&stats).unwrap_err().to_string();
    assert!(err.contains("too few"), "{err}");
    // Constant video: zero covariance.
    let mut stats = CovarianceStats::new(geom);
    stats.add_video(&Tensor::full(&[3, 9, 32, 32], 0.25, DType::F32, Device::Cpu).unwrap(), 1).unwrap();
    let err = PatchPca::fit(&stats).unwrap_err().to_string();
    assert!(err.contains("degenerate"), "{err}");
    // Invalid geometry is an error, not a panic.
    let bad = PatchGeometry { channels: 0, t: 4, s: 8 };
    assert!(CovarianceStats::new(bad).add_video(&noise_video(1, 8, 8, 1), 1).is_err());
}

#[test]
fn encode_decode_shapes_and_errors() {
    let geom = PatchGeometry::default();
    let pca = fitted(&smooth_video(9, 32, 48, 4), geom);
    for t in [1, 5, 9] {
        let video = smooth_video(t, 32, 48, 5);
        let z = pca.encode(&video).unwrap();
        assert_eq!(z.shape(), &[16, 1 + (t - 1) / 4, 4, 6]);
        let back = pca.decode(&z).unwrap();
        assert_eq!(back.shape(), &[3, t, 32, 48]);
        let v = back.to_vec_f32().unwrap();
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    }
    for shape in [[3, 4, 32, 48], [3, 5, 30, 48], [3, 5, 32, 44], [1, 5, 32, 48], [3, 0, 32, 48]] {
        let video = Tensor::zeros(&shape, DType::F32, Device::Cpu).unwrap();
        let err = pca.encode(&video).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { op: "PatchPca::encode", .. }), "{shape:?}: {err}");
    }
    assert!(pca.encode(&Tensor::zeros(&[3, 5, 32], DType::F32, Device::Cpu).unwrap()).is_err());
    for shape in [[15, 2, 4, 6], [16, 0, 4, 6]] {
        assert!(pca.decode(&Tensor::zeros(&shape, DType::F32, Device::Cpu).unwrap()).is_err());
    }
    let nan = Tensor::full(&[3, 1, 32, 48], f64::NAN, DType::F32, Device::Cpu).unwrap();
    assert!(pca.encode(&nan).is_err());
    assert!(psnr(&nan, &smooth_video(5, 32, 48, 1)).is_err());
}

#[test]
fn frame_zero_is_encoded_alone() {
    // Latent frame 0 depends on video frame 0 only; latent frame 1 on frames 1..=4.
    let geom = PatchGeometry { channels: 8, t: 4, s: 8 };
    let pca = fitted(&smooth_video(9, 32, 32, 6), geom);
    let video = smooth_video(5, 32, 32, 7);
    let mut changed = video.to_vec_f32().unwrap();
    let (t, hw) = (5, 32 * 32);
    for c in 0..3 {
        for f in 1..t {
            for i in 0..hw {
                changed[(c * t + f) * hw + i] *= -0.5;
            }
        }
    }
    let changed = Tensor::from_vec(changed, &[3, 5, 32, 32]).unwrap();
    let (za, zb) = (pca.encode(&video).unwrap(), pca.encode(&changed).unwrap());
    let first = |z: &Tensor, lt: usize| z.narrow(1, lt, 1).unwrap().to_vec_f32().unwrap();
    assert_eq!(first(&za, 0), first(&zb, 0));
    assert_ne!(first(&za, 1), first(&zb, 1));
}

#[test]
fn reconstruction_quality_smooth_vs_noise() {
    let geom = PatchGeometry::default();
    let video = smooth_video(9, 64, 64, 11);
    let mut stats = CovarianceStats::new(geom);
    stats.add_video(&video, 1).unwrap();
    let t0 = Instant::now();
    let pca = PatchPca::fit(&stats).unwrap();
    let fit_secs = t0.elapsed().as_secs_f64();
    let smooth_psnr = psnr(&video, &pca.decode(&pca.encode(&video).unwrap()).unwrap()).unwrap();
    // Unit-variance latents on the fitted data.
    let z = pca.encode(&video).unwrap().to_vec_f64().unwrap();
    let per = z.len() / 16;
    let var0 = z[..per].iter().map(|x| x * x).sum::<f64>() / per as f64;

    // Held out: another smooth video of the same family, not seen by the fit (reported, loosely checked).
    let other = smooth_video(9, 64, 64, 13);
    let held_out_psnr = psnr(&other, &pca.decode(&pca.encode(&other).unwrap()).unwrap()).unwrap();

    let noise = noise_video(9, 64, 64, 12);
    let noise_pca = fitted(&noise, geom);
    let noise_psnr = psnr(&noise, &noise_pca.decode(&noise_pca.encode(&noise).unwrap()).unwrap()).unwrap();
    println!(
        "fit (768 dims, {} patches): {fit_secs:.2} s; smooth PSNR {smooth_psnr:.2} dB (explained {:.4}), \
         noise PSNR {noise_psnr:.2} dB (explained {:.4}); held-out smooth PSNR {held_out_psnr:.2} dB; \
         channel-0 latent variance {var0:.3}",
        stats.count(),
        pca.explained_variance(),
        noise_pca.explained_variance()
    );
    assert!(smooth_psnr > 25.0, "smooth PSNR {smooth_psnr}");
    assert!(noise_psnr < smooth_psnr - 10.0, "noise PSNR {noise_psnr} not well below {smooth_psnr}");
    assert!(held_out_psnr > noise_psnr + 5.0, "held-out PSNR {held_out_psnr}");
    assert!(pca.explained_variance() > noise_pca.explained_variance());
    assert!((0.8..1.2).contains(&var0), "latent variance {var0}");
    assert_eq!(psnr(&video, &video).unwrap(), f64::INFINITY);
    assert!(psnr(&video, &noise_video(5, 64, 64, 1)).is_err());
}

#[test]
fn save_load_roundtrip_and_codec_id() {
    let dir = tempfile::tempdir().unwrap();
    let geom = PatchGeometry { channels: 8, t: 4, s: 8 };
    let video = smooth_video(5, 32, 32, 21);
    let pca = fitted(&video, geom);
    let path = dir.path().join("codec.safetensors");
    pca.save(&path).unwrap();
    let loaded = PatchPca::load(&path).unwrap();
    assert_eq!(loaded.geometry(), geom);
    assert_eq!(loaded.codec_id(), pca.codec_id());
    assert!(pca.codec_id().starts_with("patch_pca-") && pca.codec_id().len() == "patch_pca-".len() + 16);
    assert_eq!(loaded.explained_variance(), pca.explained_variance());
    let test = smooth_video(9, 32, 32, 22);
    assert_eq!(pca.encode(&test).unwrap().to_vec_f32().unwrap(), loaded.encode(&test).unwrap().to_vec_f32().unwrap());
    // Same data → same id (deterministic fit); different data → different id.
    assert_eq!(fitted(&video, geom).codec_id(), pca.codec_id());
    assert_ne!(fitted(&smooth_video(5, 32, 32, 23), geom).codec_id(), pca.codec_id());
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Garbage and truncated files are typed errors.
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert!(PatchPca::load(&bad).is_err());
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    assert!(PatchPca::load(&bad).is_err());
    assert!(matches!(PatchPca::load(&dir.path().join("missing")), Err(Error::Io { .. })));
    // A file with other tensors (no codec metadata) is rejected.
    let t = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    medgen_kernels::io::safetensors::save(&bad, &[("mean", &t)], None).unwrap();
    assert!(PatchPca::load(&bad).unwrap_err().to_string().contains("metadata"));
    // A tampered tensor value is caught by the stored codec id.
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2; // inside `basis`, by far the largest tensor
    tampered[mid] ^= 0x10;
    std::fs::write(&bad, &tampered).unwrap();
    assert!(PatchPca::load(&bad).is_err());
}

#[test]
fn fit_time_full_rank_768() {
    // 2·16·32 = 1024 noise patches > 768 dims: a full-rank covariance, the solver's worst case.
    let mut stats = CovarianceStats::new(PatchGeometry::default());
    let t0 = Instant::now();
    stats.add_video(&noise_video(5, 128, 256, 31), 1).unwrap();
    let stats_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let pca = PatchPca::fit(&stats).unwrap();
    let fit_secs = t0.elapsed().as_secs_f64();
    println!(
        "full-rank fit: stats of {} patches {stats_secs:.2} s, fit {fit_secs:.2} s, explained {:.4}",
        stats.count(),
        pca.explained_variance()
    );
    // White noise has no preferred directions: the top 16 of 768 sample eigenvalues explain more than
    // 16/768 only through sampling spread (Marchenko–Pastur edge ≈ 3.5× the mean at 1024/768 samples).
    let ev = pca.explained_variance();
    assert!(ev > 16.0 / 768.0 && ev < 0.15, "{ev}");
}
