//! Without a CUDA driver the backend reports a clean `Error::NoCuda` and nothing panics; with a device, every
//! CUDA op is checked against the CPU op on random inputs, forward and backward (GPU parity, issue #8).
//! Without a device, `gpu_parity_tests_pass_under_cpu_emulation` runs the parity tests again in a child process
//! against the CPU stand-in for the CUDA driver and cuBLAS (kernels/cuda/emu/fake_cuda.cpp).

use medgen_kernels::ops::{activation, attention, conv, elementwise, linear, loss, norm, rope, shape};
use medgen_kernels::{DType, Device, Error, Rng, Tensor, cuda};

#[path = "support/cuda_emulation.rs"]
mod support;

/// Set in the child process that runs the parity tests under emulation.
const EMULATED_CHILD: &str = "MEDGEN_TEST_EMULATED_CHILD";

/// The first CUDA device, or `None` (with the reason printed) on a machine without one.
fn gpu() -> Option<Device> {
    match cuda::available() {
        Ok(devs) if !devs.is_empty() => {
            println!("CUDA devices: {devs:?}");
            Some(Device::Cuda(0))
        }
        Ok(_) => None,
        Err(e) => {
            println!("{e}");
            println!("no CUDA device: GPU parity not run");
            None
        }
    }
}

/// The `gpu_parity_*` tests of this file, run in a child process of this test binary whose CUDA driver and
/// cuBLAS are the CPU emulation: every launch, argument struct, buffer size and GEMM operand convention of
/// the ops goes through the same Rust code as on a GPU, and a buffer overrun faults. Skipped where a real
/// device ran them already. The 1.3B-width test is left out (two minutes under emulation, and the tiny-model
/// fixtures of tests/cuda_emulated.rs take the same code paths).
#[test]
fn gpu_parity_tests_pass_under_cpu_emulation() {
    if std::env::var_os(EMULATED_CHILD).is_some() {
        return;
    }
    if cuda::available().is_ok_and(|d| !d.is_empty()) {
        println!("a CUDA device is present: the parity tests ran on it");
        return;
    }
    let emu = support::Emulation::build();
    let exe = std::env::current_exe().expect("the test binary");
    let out = emu
        .command(exe)
        .env(EMULATED_CHILD, "1")
        // A few KiB of im2col columns at a time: the convolutions run in several chunks.
        .env("MEDGEN_CUDA_IM2COL_BYTES", "4096")
        .args(["gpu_parity_", "--skip", "under_cpu_emulation", "--nocapture", "--test-threads", "2"])
        .output()
        .expect("run the parity tests under emulation");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "parity tests failed under emulation:\n{stdout}\n{stderr}");
    assert!(stdout.contains("medgen CPU emulation"), "the child did not see the emulated device:\n{stdout}");
    // The harness's summary line (per-test lines can interleave with the tests' own output under --nocapture).
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. ")?.split_once(" passed")?.0.parse::<usize>().ok());
    assert_eq!(passed, Some(8), "expected the 8 gpu_parity tests to pass:\n{stdout}");
}

#[test]
fn no_driver_is_a_clean_error_and_nothing_panics() {
    let r = std::panic::catch_unwind(|| {
        let avail = cuda::available();
        let t = Tensor::from_vec(vec![1f32, 2., 3.], &[3]).unwrap();
        (avail, t.to_device(Device::Cuda(0)).map(|_| ()), Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).map(|_| ()))
    });
    let (avail, moved, zeros) = r.expect("CUDA detection must not panic");
    match avail {
        Ok(devs) => {
            assert!(!devs.is_empty());
            assert!(moved.is_ok() && zeros.is_ok());
        }
        Err(Error::NoCuda { reason }) => {
            println!("{reason}");
            assert!(reason.contains("running on CPU") || reason.contains("CUDA device"), "{reason}");
            assert!(matches!(moved, Err(Error::NoCuda { .. }) | Err(Error::NoBackend { .. })), "{moved:?}");
            assert!(matches!(zeros, Err(Error::NoCuda { .. }) | Err(Error::NoBackend { .. })), "{zeros:?}");
            assert!(!cuda::is_available());
            // The CPU path is unaffected.
            let y = activation::silu(&Tensor::from_vec(vec![0f32, 1.], &[2]).unwrap()).unwrap();
            assert!((y.to_vec_f32().unwrap()[1] - 0.731_058_6).abs() < 1e-6);
        }
        Err(e) => panic!("expected NoCuda, got {e}"),
    }
}

#[test]
fn tensors_stay_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tensor>();
}

// ------------------------------------------------------------------------------------------------
// GPU parity (runs only with a device)

fn rand(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 1.0, dtype, rng)
}

fn dev(t: &Tensor, d: Device) -> Tensor {
    t.to_device(d).unwrap()
}

/// Asserts `|gpu − cpu| ≤ atol + rtol·max|cpu|` and prints the error.
fn close(name: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.shape(), cpu.shape(), "{name}: shape");
    let g = gpu.to_vec_f64().unwrap();
    let c = cpu.to_vec_f64().unwrap();
    let scale = c.iter().fold(0f64, |a, &b| a.max(b.abs())).max(1e-6);
    let err = g.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    println!("{name}: max abs err {err:.3e}, rel {:.3e}", err / scale);
    assert!(err <= tol * scale, "{name}: max abs err {err} > {tol}·{scale}");
}

fn tol(dt: DType) -> f64 {
    if dt == DType::BF16 { 2e-2 } else { 2e-5 }
}

#[test]
fn gpu_parity_elementwise_and_activations() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(1);
    for dt in [DType::F32, DType::BF16] {
        let a = rand(&[3, 5, 7], dt, &mut rng);
        let b = rand(&[5, 1], dt, &mut rng);
        let dy = rand(&[3, 5, 7], DType::F32, &mut rng);
        let (ga, gb, gdy) = (dev(&a, d), dev(&b, d), dev(&dy, d));
        close("add", &elementwise::add(&ga, &gb).unwrap(), &elementwise::add(&a, &b).unwrap(), tol(dt));
        close("mul", &elementwise::mul(&ga, &gb).unwrap(), &elementwise::mul(&a, &b).unwrap(), tol(dt));
        close(
            "sub(view)",
            &elementwise::sub(&ga.transpose(1, 2).unwrap(), &ga.transpose(1, 2).unwrap()).unwrap(),
            &elementwise::sub(&a.transpose(1, 2).unwrap(), &a.transpose(1, 2).unwrap()).unwrap(),
            tol(dt),
        );
        close("scale", &elementwise::scale(&ga, 0.3).unwrap(), &elementwise::scale(&a, 0.3).unwrap(), tol(dt));
        close("silu", &activation::silu(&ga).unwrap(), &activation::silu(&a).unwrap(), tol(dt));
        close(
            "silu_bwd",
            &activation::silu_backward(&ga, &gdy).unwrap(),
            &activation::silu_backward(&a, &dy).unwrap(),
            1e-5,
        );
        close("gelu", &activation::gelu_tanh(&ga).unwrap(), &activation::gelu_tanh(&a).unwrap(), tol(dt));
        close(
            "gelu_bwd",
            &activation::gelu_tanh_backward(&ga, &gdy).unwrap(),
            &activation::gelu_tanh_backward(&a, &dy).unwrap(),
            1e-5,
        );
        // Written over a device dy nothing else holds (f32 dy: the in-place path).
        close(
            "gelu_bwd(owned)",
            &activation::gelu_tanh_backward_owned(&ga, dev(&dy, d)).unwrap(),
            &activation::gelu_tanh_backward(&a, &dy).unwrap(),
            1e-5,
        );
        close("softmax", &activation::softmax(&ga).unwrap(), &activation::softmax(&a).unwrap(), tol(dt));
        let y = activation::softmax(&a).unwrap();
        close(
            "softmax_bwd",
            &activation::softmax_backward(&dev(&y, d), &gdy).unwrap(),
            &activation::softmax_backward(&y, &dy).unwrap(),
            1e-5,
        );
        close("to_dtype", &ga.to_dtype(DType::F32).unwrap(), &a.to_dtype(DType::F32).unwrap(), 0.0);
        // modulation
        let x = rand(&[2, 9, 16], dt, &mut rng);
        let (sh, sc) = (rand(&[2, 1, 16], dt, &mut rng), rand(&[2, 16], dt, &mut rng));
        let g = rand(&[2, 9, 16], DType::F32, &mut rng);
        let (gx, gsh, gsc, gg) = (dev(&x, d), dev(&sh, d), dev(&sc, d), dev(&g, d));
        close(
            "modulate",
            &elementwise::modulate(&gx, &gsh, &gsc).unwrap(),
            &elementwise::modulate(&x, &sh, &sc).unwrap(),
            tol(dt),
        );
        let (mg, mc) = (
            elementwise::modulate_backward(&gx, &gsh, &gsc, &gg).unwrap(),
            elementwise::modulate_backward(&x, &sh, &sc, &g).unwrap(),
        );
        close("modulate dx", &mg.dx, &mc.dx, 1e-5);
        close("modulate dshift", &mg.dshift, &mc.dshift, 1e-5);
        close("modulate dscale", &mg.dscale, &mc.dscale, 1e-5);
        // loss
        let (p, t) = (rand(&[4, 33], dt, &mut rng), rand(&[4, 33], dt, &mut rng));
        let (lg, lc) = (loss::mse_loss(&dev(&p, d), &dev(&t, d)).unwrap(), loss::mse_loss(&p, &t).unwrap());
        println!("mse: gpu {lg} cpu {lc}");
        assert!((lg - lc).abs() <= 1e-6 * lc.abs().max(1.0));
        close(
            "mse_bwd",
            &loss::mse_loss_backward(&dev(&p, d), &dev(&t, d), 0.5).unwrap(),
            &loss::mse_loss_backward(&p, &t, 0.5).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn gpu_parity_linear_norms_rope() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(2);
    for dt in [DType::F32, DType::BF16] {
        let tl = if dt == DType::BF16 { 3e-2 } else { 1e-4 };
        let x = rand(&[2, 7, 24], dt, &mut rng);
        let w = rand(&[40, 24], dt, &mut rng);
        let b = rand(&[40], dt, &mut rng);
        let dy = rand(&[2, 7, 40], DType::F32, &mut rng);
        let (gx, gw, gb, gdy) = (dev(&x, d), dev(&w, d), dev(&b, d), dev(&dy, d));
        close("linear", &linear::linear(&gx, &gw, Some(&gb)).unwrap(), &linear::linear(&x, &w, Some(&b)).unwrap(), tl);
        let (lg, lc) = (
            linear::linear_backward(&gx, &gw, true, &gdy, true).unwrap(),
            linear::linear_backward(&x, &w, true, &dy, true).unwrap(),
        );
        close("linear dx", lg.dx.as_ref().unwrap(), lc.dx.as_ref().unwrap(), tl);
        close("linear dw", lg.dw.as_ref().unwrap(), lc.dw.as_ref().unwrap(), tl);
        close("linear db", lg.db.as_ref().unwrap(), lc.db.as_ref().unwrap(), 1e-5);
        // norms
        let (nw, nb) = (rand(&[24], dt, &mut rng), rand(&[24], dt, &mut rng));
        let g = rand(&[2, 7, 24], DType::F32, &mut rng);
        let (gnw, gnb, gg) = (dev(&nw, d), dev(&nb, d), dev(&g, d));
        close(
            "layer_norm",
            &norm::layer_norm(&gx, Some(&gnw), Some(&gnb), 1e-6).unwrap(),
            &norm::layer_norm(&x, Some(&nw), Some(&nb), 1e-6).unwrap(),
            tol(dt),
        );
        close(
            "layer_norm(plain)",
            &norm::layer_norm(&gx, None, None, 1e-6).unwrap(),
            &norm::layer_norm(&x, None, None, 1e-6).unwrap(),
            tol(dt),
        );
        let (ng, nc) = (
            norm::layer_norm_backward(&gx, Some(&gnw), true, 1e-6, &gg).unwrap(),
            norm::layer_norm_backward(&x, Some(&nw), true, 1e-6, &g).unwrap(),
        );
        close("layer_norm dx", &ng.dx, &nc.dx, 1e-4);
        close("layer_norm dw", ng.dweight.as_ref().unwrap(), nc.dweight.as_ref().unwrap(), 1e-4);
        close("layer_norm db", ng.dbias.as_ref().unwrap(), nc.dbias.as_ref().unwrap(), 1e-5);
        close("rms_norm", &norm::rms_norm(&gx, &gnw, 1e-6).unwrap(), &norm::rms_norm(&x, &nw, 1e-6).unwrap(), tol(dt));
        let (rg, rc) = (
            norm::rms_norm_backward(&gx, &gnw, 1e-6, &gg).unwrap(),
            norm::rms_norm_backward(&x, &nw, 1e-6, &g).unwrap(),
        );
        close("rms_norm dx", &rg.dx, &rc.dx, 1e-4);
        close("rms_norm dw", rg.dweight.as_ref().unwrap(), rc.dweight.as_ref().unwrap(), 1e-4);
        let xc = rand(&[2, 6, 3, 4, 5], dt, &mut rng);
        let gam = rand(&[6, 1, 1, 1], dt, &mut rng);
        let gc = rand(&[2, 6, 3, 4, 5], DType::F32, &mut rng);
        close(
            "rms_norm_channel",
            &norm::rms_norm_channel(&dev(&xc, d), &dev(&gam, d)).unwrap(),
            &norm::rms_norm_channel(&xc, &gam).unwrap(),
            tol(dt),
        );
        let (cg, cc) = (
            norm::rms_norm_channel_backward(&dev(&xc, d), &dev(&gam, d), &dev(&gc, d)).unwrap(),
            norm::rms_norm_channel_backward(&xc, &gam, &gc).unwrap(),
        );
        close("rms_norm_channel dx", &cg.dx, &cc.dx, 1e-4);
        close("rms_norm_channel dgamma", cg.dweight.as_ref().unwrap(), cc.dweight.as_ref().unwrap(), 1e-4);
        // RoPE: hd = 32 on a 3x4x5 grid
        let r = rope::Rope3d::new(32, [3, 4, 5], 10000.0).unwrap();
        let q = rand(&[2, 60, 3, 32], dt, &mut rng);
        let gq = rand(&[2, 60, 3, 32], DType::F32, &mut rng);
        close("rope", &rope::rope_apply(&dev(&q, d), &r).unwrap(), &rope::rope_apply(&q, &r).unwrap(), tol(dt));
        close(
            "rope_bwd",
            &rope::rope_backward(&dev(&gq, d), &r).unwrap(),
            &rope::rope_backward(&gq, &r).unwrap(),
            1e-5,
        );
    }
}

/// Linear layers with a bias and the fused linear + GELU run as one cuBLASLt GEMM with the bias / GELU in its
/// epilogue; a bias too poorly aligned for the epilogue takes the unfused path. Both agree with the CPU, and the counters say which path ran.
#[test]
fn gpu_parity_fused_linear_epilogues() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(12);
    let stats = cuda::thread_gemm_stats;
    for dt in [DType::F32, DType::BF16] {
        let tl = if dt == DType::BF16 { 3e-2 } else { 1e-4 };
        // Rows 1.. of x: its device address is 96 or 48 bytes past the allocation's (not 256-aligned).
        let xs = rand(&[13, 24], dt, &mut rng);
        let x = xs.narrow(0, 1, 12).unwrap().reshape(&[3, 4, 24]).unwrap();
        let w = rand(&[40, 24], dt, &mut rng);
        let b = rand(&[40], dt, &mut rng);
        let (gx, gw, gb) =
            (dev(&xs, d).narrow(0, 1, 12).unwrap().reshape(&[3, 4, 24]).unwrap(), dev(&w, d), dev(&b, d));
        let s0 = stats();
        close(
            "linear+bias",
            &linear::linear(&gx, &gw, Some(&gb)).unwrap(),
            &linear::linear(&x, &w, Some(&b)).unwrap(),
            tl,
        );
        let cpu_gelu = |bias: Option<&Tensor>| activation::gelu_tanh(&linear::linear(&x, &w, bias).unwrap()).unwrap();
        close("linear_gelu_tanh", &linear::linear_gelu_tanh(&gx, &gw, Some(&gb)).unwrap(), &cpu_gelu(Some(&b)), tl);
        close("linear_gelu_tanh(no bias)", &linear::linear_gelu_tanh(&gx, &gw, None).unwrap(), &cpu_gelu(None), tl);
        let s1 = stats();
        assert_eq!((s1.fused - s0.fused, s1.unfused - s0.unfused), (3, 0), "{dt:?}: three fused GEMMs expected");

        // A bias in another dtype (converted to the output's, exactly: the output is the wider one): fused.
        let other = if dt == DType::BF16 { DType::F32 } else { DType::BF16 };
        let (bo, gbo) = (b.to_dtype(other).unwrap(), gb.to_dtype(other).unwrap());
        close(
            "linear_gelu_tanh(bias dtype)",
            &linear::linear_gelu_tanh(&gx, &gw, Some(&gbo)).unwrap(),
            &cpu_gelu(Some(&bo)),
            tl,
        );
        // A bias one element into its buffer (4 or 2 bytes, below the epilogue's 16): the unfused path.
        let bs = rand(&[41], dt, &mut rng);
        let bv = bs.narrow(0, 1, 40).unwrap();
        let gbv = dev(&bs, d).narrow(0, 1, 40).unwrap();
        close(
            "linear+offset bias",
            &linear::linear(&gx, &gw, Some(&gbv)).unwrap(),
            &linear::linear(&x, &w, Some(&bv)).unwrap(),
            tl,
        );
        let s2 = stats();
        assert_eq!((s2.fused - s1.fused, s2.unfused - s1.unfused), (1, 1), "{dt:?}: fused/unfused GEMMs");
    }
    // cuBLASLt's GELU epilogue must be the tanh form: a grid of pre-activations over [-4, 4] (x·1 + 0), where
    // it and the erf form differ by up to 4.7e-4, checked to 2e-6 of the largest output.
    let grid: Vec<f32> = (0..161).map(|i| -4.0 + i as f32 * 0.05).collect();
    let x = Tensor::from_vec(grid, &[161, 1]).unwrap();
    let (w, b) = (Tensor::from_vec(vec![1f32], &[1, 1]).unwrap(), Tensor::from_vec(vec![0f32], &[1]).unwrap());
    let s0 = stats();
    close(
        "linear_gelu_tanh(grid)",
        &linear::linear_gelu_tanh(&dev(&x, d), &dev(&w, d), Some(&dev(&b, d))).unwrap(),
        &activation::gelu_tanh(&x).unwrap(),
        2e-6,
    );
    assert_eq!(stats().fused - s0.fused, 1, "the grid GEMM ran fused");
    println!("fused epilogue GEMMs: {:?}", cuda::gemm_stats());
}

#[test]
fn gpu_parity_attention_conv_optim() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(3);
    for dt in [DType::F32, DType::BF16] {
        let tl = if dt == DType::BF16 { 3e-2 } else { 1e-4 };
        // bf16 with head dim 64 or 128 runs the tensor-core kernels (attention_tc.cu), the rest the general ones.
        // Head dim 384 (the Wan VAE's single-head attention) runs the `_wide` general kernels.
        for (lq, lk, hd) in [(100, 100, 32), (70, 37, 128), (5, 300, 16), (130, 77, 64), (1, 200, 128), (37, 50, 384)] {
            let q = rand(&[2, lq, 3, hd], dt, &mut rng);
            let k = rand(&[2, lk, 3, hd], dt, &mut rng);
            let v = rand(&[2, lk, 3, hd], dt, &mut rng);
            let go = rand(&[2, lq, 3, hd], DType::F32, &mut rng);
            let c = attention::attention(&q, &k, &v, None).unwrap();
            let g = attention::attention(&dev(&q, d), &dev(&k, d), &dev(&v, d), None).unwrap();
            close(&format!("attention {lq}x{lk} d{hd}"), &g.out, &c.out, tl);
            close("attention lse", &g.lse, &c.lse, 1e-4);
            let cb = attention::attention_backward(&q, &k, &v, &c.out, &c.lse, &go, None).unwrap();
            let gb = attention::attention_backward(
                &dev(&q, d),
                &dev(&k, d),
                &dev(&v, d),
                &g.out,
                &g.lse,
                &dev(&go, d),
                None,
            )
            .unwrap();
            close("attention dq", &gb.dq, &cb.dq, tl);
            close("attention dk", &gb.dk, &cb.dk, tl);
            close("attention dv", &gb.dv, &cb.dv, tl);
        }
        // conv3d: patch embedding (k = s = (1,2,2)) and a causal 3x3x3
        for (p, ks) in [
            (conv::Conv3dParams::new([1, 2, 2], [0, 0, 0]), [1, 2, 2]),
            (conv::Conv3dParams::causal([1, 1, 1], [1, 1, 1]), [3, 3, 3]),
        ] {
            let x = rand(&[2, 4, 3, 6, 8], dt, &mut rng);
            let w = rand(&[5, 4, ks[0], ks[1], ks[2]], dt, &mut rng);
            let b = rand(&[5], dt, &mut rng);
            let yc = conv::conv3d(&x, &w, Some(&b), &p).unwrap();
            let yg = conv::conv3d(&dev(&x, d), &dev(&w, d), Some(&dev(&b, d)), &p).unwrap();
            close("conv3d", &yg, &yc, tl);
            let dy = rand(yc.shape(), DType::F32, &mut rng);
            let gc = conv::conv3d_backward(&x, &w, true, &dy, &p, true).unwrap();
            let gg = conv::conv3d_backward(&dev(&x, d), &dev(&w, d), true, &dev(&dy, d), &p, true).unwrap();
            close("conv3d dx", gg.dx.as_ref().unwrap(), gc.dx.as_ref().unwrap(), tl);
            close("conv3d dw", &gg.dw, &gc.dw, tl);
            close("conv3d db", gg.db.as_ref().unwrap(), gc.db.as_ref().unwrap(), 1e-5);
        }
    }
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_parity_adamw_and_clipping() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(4);
    // AdamW + clipping vs the CPU optimiser
    let cfg = medgen_kernels::optim::AdamWConfig { lr: 1e-2, ..Default::default() };
    let mut opt = medgen_kernels::optim::AdamW::new(cfg).unwrap();
    let mut p = vec![rand(&[300], DType::F32, &mut rng)];
    let gp = vec![dev(&p[0], d)];
    let (m, v) =
        (vec![Tensor::zeros(&[300], DType::F32, d).unwrap()], vec![Tensor::zeros(&[300], DType::F32, d).unwrap()]);
    for step in 1..=3 {
        let g = vec![rand(&[300], DType::F32, &mut rng)];
        let gg = vec![dev(&g[0], d)];
        let (nc, ng) = (medgen_kernels::optim::grad_norm(&g).unwrap(), cuda::grad_norm(&gg).unwrap());
        assert!((nc - ng).abs() < 1e-9 * nc, "grad norm {nc} vs {ng}");
        opt.step(&mut p, &g).unwrap();
        cuda::adamw_step(&gp, &gg, &m, &v, &cfg, step).unwrap();
        close("adamw", &gp[0], &p[0], 1e-6);
    }
    let g = vec![dev(&rand(&[300], DType::F32, &mut rng), d)];
    let before = cuda::clip_grad_norm(&g, 1.0).unwrap();
    let after = cuda::grad_norm(&g).unwrap();
    println!("clip: {before} -> {after}");
    assert!(before > 1.0 && (after - 1.0).abs() < 1e-5);
}

#[test]
fn gpu_parity_matmul() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(5);
    for dt in [DType::F32, DType::BF16] {
        for (ash, bsh) in [(vec![2, 3, 5, 7], vec![2, 3, 7, 4]), (vec![4, 6, 8], vec![8, 3]), (vec![1, 9], vec![9, 2])]
        {
            let (a, b) = (rand(&ash, dt, &mut rng), rand(&bsh, dt, &mut rng));
            let (ga, gb) = (dev(&a, d), dev(&b, d));
            let (gy, cy) = (linear::matmul(&ga, &gb).unwrap(), linear::matmul(&a, &b).unwrap());
            close(&format!("matmul {ash:?}·{bsh:?}"), &gy, &cy, tol(dt) * 4.0);
            let dc = rand(cy.shape(), DType::F32, &mut rng);
            let (gda, gdb) = linear::matmul_backward(&ga, &gb, &dev(&dc, d)).unwrap();
            let (cda, cdb) = linear::matmul_backward(&a, &b, &dc).unwrap();
            close("matmul da", &gda, &cda, tol(dt) * 4.0);
            close("matmul db", &gdb, &cdb, tol(dt) * 4.0);
        }
    }
}

#[test]
fn gpu_parity_cat_sum_to_shape_upsample() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(4);
    for dt in [DType::F32, DType::BF16] {
        let a = rand(&[2, 3, 4], dt, &mut rng);
        let b = rand(&[2, 5, 4], dt, &mut rng);
        let c = rand(&[2, 4, 3], dt, &mut rng).transpose(1, 2).unwrap(); // a strided view [2, 3, 4]
        let (ga, gb, gc) = (dev(&a, d), dev(&b, d), dev(&c, d));
        close("cat(dim 1)", &shape::cat(&[&ga, &gb, &gc], 1).unwrap(), &shape::cat(&[&a, &b, &c], 1).unwrap(), tol(dt));
        close("cat(dim 2)", &shape::cat(&[&ga, &gc], 2).unwrap(), &shape::cat(&[&a, &c], 2).unwrap(), tol(dt));
        close("cat(dim 0)", &shape::cat(&[&ga, &gc], 0).unwrap(), &shape::cat(&[&a, &c], 0).unwrap(), tol(dt));
        let dy = rand(&[2, 11, 4], DType::F32, &mut rng);
        let (gp, cp) = (
            shape::cat_backward(&dev(&dy, d), 1, &[3, 5, 3]).unwrap(),
            shape::cat_backward(&dy, 1, &[3, 5, 3]).unwrap(),
        );
        for (g, c) in gp.iter().zip(&cp) {
            close("cat_backward", g, c, 1e-6);
        }

        let g = rand(&[3, 5, 7], dt, &mut rng);
        let gg = dev(&g, d);
        for to in [vec![5, 1], vec![1, 1, 7], vec![7], vec![3, 1, 7], vec![3, 5, 7], vec![1]] {
            close(
                &format!("sum_to_shape {to:?}"),
                &elementwise::sum_to_shape(&gg, &to).unwrap(),
                &elementwise::sum_to_shape(&g, &to).unwrap(),
                tol(dt) * 4.0,
            );
        }
        let gv = gg.transpose(0, 2).unwrap();
        close(
            "sum_to_shape(view)",
            &elementwise::sum_to_shape(&gv, &[1, 5, 1]).unwrap(),
            &elementwise::sum_to_shape(&g.transpose(0, 2).unwrap(), &[1, 5, 1]).unwrap(),
            tol(dt) * 4.0,
        );

        let x = rand(&[2, 3, 4, 5], dt, &mut rng);
        let gx = dev(&x, d);
        close(
            "upsample_nearest",
            &shape::upsample_nearest(&gx, [2, 3]).unwrap(),
            &shape::upsample_nearest(&x, [2, 3]).unwrap(),
            tol(dt),
        );
        let xv = x.transpose(2, 3).unwrap();
        close(
            "upsample_nearest(view)",
            &shape::upsample_nearest(&gx.transpose(2, 3).unwrap(), [3, 2]).unwrap(),
            &shape::upsample_nearest(&xv, [3, 2]).unwrap(),
            tol(dt),
        );
        let dy = rand(&[2, 3, 8, 15], dt, &mut rng);
        close(
            "upsample_nearest_backward",
            &shape::upsample_nearest_backward(&dev(&dy, d), [2, 3]).unwrap(),
            &shape::upsample_nearest_backward(&dy, [2, 3]).unwrap(),
            tol(dt) * 4.0,
        );
    }
}

#[test]
fn gpu_parity_embedding_gelu_erf_clamp() {
    let Some(d) = gpu() else { return };
    let mut rng = Rng::new(5);
    for dt in [DType::F32, DType::BF16] {
        let table = rand(&[11, 6], dt, &mut rng);
        let ids = [3usize, 0, 10, 3, 7, 3, 0, 9];
        let gt = dev(&table, d);
        close(
            "embedding",
            &shape::embedding(&ids, &[2, 4], &gt).unwrap(),
            &shape::embedding(&ids, &[2, 4], &table).unwrap(),
            0.0,
        );
        let dy = rand(&[2, 4, 6], dt, &mut rng);
        close(
            "embedding_backward",
            &shape::embedding_backward(&ids, &[2, 4], &gt, &dev(&dy, d)).unwrap(),
            &shape::embedding_backward(&ids, &[2, 4], &table, &dy).unwrap(),
            1e-6,
        );

        let x = rand(&[3, 7, 5], dt, &mut rng);
        let dy = rand(&[3, 7, 5], dt, &mut rng);
        let (gx, gdy) = (dev(&x, d), dev(&dy, d));
        close("gelu_erf", &activation::gelu_erf(&gx).unwrap(), &activation::gelu_erf(&x).unwrap(), tol(dt));
        close(
            "gelu_erf_backward",
            &activation::gelu_erf_backward(&gx, &gdy).unwrap(),
            &activation::gelu_erf_backward(&x, &dy).unwrap(),
            tol(dt),
        );
        for (lo, hi) in [(-0.5, 0.25), (0.0, f64::INFINITY)] {
            close("clamp", &activation::clamp(&gx, lo, hi).unwrap(), &activation::clamp(&x, lo, hi).unwrap(), 0.0);
            close(
                "clamp_backward",
                &activation::clamp_backward(&gx, lo, hi, &gdy).unwrap(),
                &activation::clamp_backward(&x, lo, hi, &dy).unwrap(),
                0.0,
            );
        }
    }
}

/// Issue #8: CUDA and CPU agree on a 2-layer model at the 1.3B width (forward, loss gradient
/// through the whole backward pass), in f32 and with bf16 weights on the device.
#[test]
fn gpu_dit_two_layers_at_1_3b_width_matches_cpu() {
    use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
    let Some(d) = gpu() else { return };
    let cfg = WanDitConfig { num_layers: 2, ..WanDitConfig::wan_1_3b() };
    let mut rng = Rng::new(6);
    let cpu = WanDit::init(cfg.clone(), &mut rng, DType::F32).unwrap();
    let x = rand(&[1, 16, 2, 8, 12], DType::F32, &mut rng); // 2·4·6 = 48 tokens
    let ctx = rand(&[1, 24, cfg.text_dim], DType::F32, &mut rng);
    let target = rand(&[1, 16, 2, 8, 12], DType::F32, &mut rng);
    let t = Tensor::from_vec(vec![700f32], &[1]).unwrap();
    let (v, tape) = cpu.forward_train(&x, &t, &ctx).unwrap();
    let grads = cpu.backward(&tape, &loss::mse_loss_backward(&v, &target, 1.0).unwrap()).unwrap();

    let on = |m: &WanDit| m.to_device(d).unwrap();
    let (gx, gt, gctx, gtarget) = (dev(&x, d), dev(&t, d), dev(&ctx, d), dev(&target, d));
    let g32 = on(&cpu);
    let (gv, gtape) = g32.forward_train(&gx, &gt, &gctx).unwrap();
    close("dit f32 velocity", &gv, &v, 1e-4);
    let ggrads = g32.backward(&gtape, &loss::mse_loss_backward(&gv, &gtarget, 1.0).unwrap()).unwrap();
    for (name, g) in &grads.params {
        close(&format!("dit f32 grad {name}"), &ggrads.params[name], g, 1e-3);
    }
    drop((g32, gtape, ggrads));

    let mut bf = WanDit::init(cfg, &mut Rng::new(7), DType::BF16).unwrap();
    for (name, p) in cpu.named_parameters() {
        bf.set_parameter(name, p).unwrap();
    }
    let gv16 = on(&bf).forward(&gx, &gt, &gctx).unwrap();
    close("dit bf16 velocity", &gv16, &bf.forward(&x, &t, &ctx).unwrap(), 2e-2);
}
