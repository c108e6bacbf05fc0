//! Bitwise determinism of the CPU reductions: every op whose backward (or forward) sums many
//! elements in parallel is run 20 times on ≥ 1M elements in rayon pools of 2 and of 4 threads and
//! must give the same bits every time, and the same bits in both pools and in a 1-thread pool (the
//! reductions group by input size only, and gemm partitions its output, never the sum over `k`).
//! Then a tiny DiT is trained 3 + 3 steps with a save/resume in between, at sizes where its sums
//! span more than 64k elements, the two halves in different pool sizes: the losses and gradient
//! norms must match the uninterrupted run bit for bit.

use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use medgen_kernels::ops::conv::{Conv3dParams, conv3d_backward};
use medgen_kernels::ops::elementwise::{modulate_backward, sum_to_shape};
use medgen_kernels::ops::linear::{linear_backward, matmul, matmul_backward};
use medgen_kernels::ops::loss::mse_loss;
use medgen_kernels::ops::norm::{layer_norm_backward, rms_norm_backward, rms_norm_channel_backward};
use medgen_kernels::optim::grad_norm;
use medgen_kernels::train::{FlowMatchingConfig, FlowMatchingTrainer, TrainExample};
use medgen_kernels::{DType, Rng, Tensor};

/// Repetitions per pool size.
const RUNS: usize = 20;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

/// The bits of every element of every tensor, in order.
fn bits(ts: &[&Tensor]) -> Vec<u64> {
    ts.iter().flat_map(|t| t.to_vec_f64().unwrap()).map(f64::to_bits).collect()
}

/// Runs `f` [`RUNS`] times in a pool of 2 and in a pool of 4 threads and asserts that the runs
/// in each pool give the same bits (run-to-run determinism), then that both pools and a 1-thread
/// pool give the same bits (independence of the thread count).
fn check(name: &str, f: impl Fn() -> Vec<u64> + Sync + Send) {
    let t0 = std::time::Instant::now();
    let mut firsts = Vec::new();
    for threads in [2, 4] {
        let p = pool(threads);
        let first = p.install(&f);
        assert!(!first.is_empty(), "{name}: no output");
        for run in 1..RUNS {
            let got = p.install(&f);
            let diff = got.iter().zip(&first).filter(|(a, b)| a != b).count();
            assert!(
                diff == 0 && got.len() == first.len(),
                "{name}: in a {threads}-thread pool, run {run} differs from run 0 in {diff} of {} values",
                first.len()
            );
        }
        firsts.push((threads, first));
    }
    firsts.push((1, pool(1).install(&f)));
    let (_, reference) = &firsts[0];
    for (threads, got) in &firsts[1..] {
        let diff = got.iter().zip(reference).filter(|(a, b)| a != b).count();
        assert!(diff == 0, "{name}: the {threads}-thread pool differs from the 2-thread pool in {diff} values");
    }
    println!("{name}: {} values bitwise identical over 2×{RUNS} + 1 runs ({:.2?})", reference.len(), t0.elapsed());
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, DType::F32, &mut Rng::new(seed))
}

#[test]
fn sum_to_shape_is_deterministic() {
    let g = randn(&[16, 256, 256], 1);
    for target in [&[1, 1, 256][..], &[16, 1, 256], &[1, 256, 1], &[]] {
        check(&format!("sum_to_shape {:?} -> {target:?}", g.shape()), || bits(&[&sum_to_shape(&g, target).unwrap()]));
    }
}

#[test]
fn linear_and_modulate_backward_are_deterministic() {
    let (x, w, dy) = (randn(&[8192, 64], 2), randn(&[128, 64], 3), randn(&[8192, 128], 4));
    check("linear_backward (dx, dW, db) [8192, 128]", || {
        let g = linear_backward(&x, &w, true, &dy, true).unwrap();
        bits(&[g.dx.as_ref().unwrap(), g.dw.as_ref().unwrap(), g.db.as_ref().unwrap()])
    });
    let (x, sh, sc, dy) =
        (randn(&[2, 4096, 128], 5), randn(&[2, 1, 128], 6), randn(&[2, 1, 128], 7), randn(&[2, 4096, 128], 8));
    check("modulate_backward [2, 4096, 128]", || {
        let g = modulate_backward(&x, &sh, &sc, &dy).unwrap();
        bits(&[&g.dx, &g.dshift, &g.dscale])
    });
}

#[test]
fn norm_backwards_are_deterministic() {
    let (x, w, dy) = (randn(&[8192, 128], 9), randn(&[128], 10), randn(&[8192, 128], 11));
    check("layer_norm_backward [8192, 128]", || {
        let g = layer_norm_backward(&x, Some(&w), true, 1e-6, &dy).unwrap();
        bits(&[&g.dx, g.dweight.as_ref().unwrap(), g.dbias.as_ref().unwrap()])
    });
    check("rms_norm_backward [8192, 128]", || {
        let g = rms_norm_backward(&x, &w, 1e-6, &dy).unwrap();
        bits(&[&g.dx, g.dweight.as_ref().unwrap()])
    });
    let (x, gamma, dy) = (randn(&[1, 64, 4, 64, 64], 12), randn(&[64, 1, 1, 1], 13), randn(&[1, 64, 4, 64, 64], 14));
    check("rms_norm_channel_backward [1, 64, 4, 64, 64]", || {
        let g = rms_norm_channel_backward(&x, &gamma, &dy).unwrap();
        bits(&[&g.dx, g.dweight.as_ref().unwrap()])
    });
}

#[test]
fn conv3d_backward_is_deterministic() {
    let x = randn(&[1, 16, 4, 128, 128], 15);
    let w = randn(&[64, 16, 1, 2, 2], 16);
    let dy = randn(&[1, 64, 4, 64, 64], 17);
    let p = Conv3dParams::new([1, 2, 2], [0, 0, 0]);
    check("conv3d_backward (dx, dW, db) dy [1, 64, 4, 64, 64]", || {
        let g = conv3d_backward(&x, &w, true, &dy, &p, true).unwrap();
        bits(&[g.dx.as_ref().unwrap(), &g.dw, g.db.as_ref().unwrap()])
    });
}

#[test]
fn loss_and_grad_norm_are_deterministic() {
    let (a, b) = (randn(&[1 << 20], 18), randn(&[1 << 20], 19));
    check("mse_loss [1M]", || vec![mse_loss(&a, &b).unwrap().to_bits()]);
    let gs = [randn(&[1 << 20], 20).to_dtype(DType::F64).unwrap(), randn(&[3000], 21).to_dtype(DType::F64).unwrap()];
    check("grad_norm [1M + 3000]", || vec![grad_norm(&gs).unwrap().to_bits()]);
}

/// gemm (through matmul, which hands large single products to gemm's own rayon parallelism)
/// splits the output among threads and keeps the sum over `k` sequential, so its bits do not
/// depend on the thread count.
#[test]
fn gemm_is_independent_of_the_thread_count() {
    let (a, b) = (randn(&[1, 384, 512], 22), randn(&[512, 448], 23));
    let dc = randn(&[1, 384, 448], 24);
    check("matmul + matmul_backward 384×512·512×448", || {
        let c = matmul(&a, &b).unwrap();
        let (da, db) = matmul_backward(&a, &b, &dc).unwrap();
        bits(&[&c, &da, &db])
    });
}

/// 2 layers, 2 heads × 32, 16 latent channels, ffn 128: a [16, 4, 32, 36] latent is 1152 tokens,
/// so the loss sums 73,728 elements, bias/norm/modulation gradients 73,728 (dim 64) and 147,456
/// (ffn) elements per tensor.
fn resume_config() -> WanDitConfig {
    WanDitConfig {
        num_attention_heads: 2,
        attention_head_dim: 32,
        in_channels: 16,
        out_channels: Some(16),
        text_dim: 16,
        freq_dim: 16,
        ffn_dim: 128,
        num_layers: 2,
        ..WanDitConfig::default()
    }
}

#[test]
fn dit_resume_is_bitwise_at_size() {
    let base = WanDit::init(resume_config(), &mut Rng::new(31), DType::F32).unwrap();
    let mut rng = Rng::new(32);
    let ex = vec![TrainExample {
        latent: Tensor::randn(&[16, 4, 32, 36], 1.0, DType::F32, &mut rng),
        context: Tensor::randn(&[6, 16], 1.0, DType::F32, &mut rng),
    }];
    let cfg = FlowMatchingConfig { lr: 1e-3, caption_dropout: 0.0, recompute_blocks: false, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let t0 = std::time::Instant::now();
    // the uninterrupted run, in a 4-thread pool, saving after step 3
    let full = pool(4).install(|| {
        let mut a = FlowMatchingTrainer::new(base.clone(), cfg).unwrap();
        let mut out = Vec::new();
        for i in 0..6 {
            if i == 3 {
                a.save(&ck).unwrap();
            }
            out.push(a.step(&ex).unwrap());
        }
        out
    });
    // the resumed run, in a 2-thread pool
    let resumed = pool(2).install(|| {
        let mut b = FlowMatchingTrainer::resume(base, &ck).unwrap();
        assert_eq!(b.step_count(), 3);
        (0..3).map(|_| b.step(&ex).unwrap()).collect::<Vec<_>>()
    });
    for (got, want) in resumed.iter().zip(&full[3..]) {
        assert_eq!(got.step, want.step);
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "step {}: loss {} vs {}", got.step, got.loss, want.loss);
        assert_eq!(got.grad_norm.to_bits(), want.grad_norm.to_bits(), "step {}: grad norm", got.step);
    }
    println!(
        "resume at size: losses {:?}, grad norms {:?} ({:.2?} for 9 steps)",
        full.iter().map(|s| s.loss).collect::<Vec<_>>(),
        full.iter().map(|s| s.grad_norm).collect::<Vec<_>>(),
        t0.elapsed()
    );
}
