//! The flow-matching trainer on a tiny DiT: the loss drops (full fine-tune and LoRA), resuming
//! from a checkpoint reproduces the uninterrupted run bit for bit, LoRA gradients against finite
//! differences, the PEFT/diffusers LoRA file layout, caption dropout, atomic saves and errors.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use medgen_kernels::io::safetensors::SafeTensorsFile;
use medgen_kernels::nets::wan_dit::{GradRequest, WanDit, WanDitConfig};
use medgen_kernels::optim::{AdamW, AdamWConfig};
use medgen_kernels::train::lora::{LORA_FILE_NAME, LORA_METADATA_KEY, LoraWeights};
use medgen_kernels::train::{
    FlowMatchingConfig, FlowMatchingTrainer, LoraConfig, TimestepSampling, TrainExample, latest_checkpoint,
};
use medgen_kernels::{DType, Error, Rng, Tensor};

/// 2 layers, 2 heads × 16, in 4, text 16, ffn 32, freq 16.
fn tiny_config() -> WanDitConfig {
    WanDitConfig {
        num_attention_heads: 2,
        attention_head_dim: 16,
        in_channels: 4,
        out_channels: Some(4),
        text_dim: 16,
        freq_dim: 16,
        ffn_dim: 32,
        num_layers: 2,
        ..WanDitConfig::default()
    }
}

fn tiny_model(dtype: DType, seed: u64) -> WanDit {
    WanDit::init(tiny_config(), &mut Rng::new(seed), dtype).unwrap()
}

/// Four fixed (latent [4, 3, 4, 4], context [6, 16]) pairs.
fn examples(seed: u64) -> Vec<TrainExample> {
    let mut rng = Rng::new(seed);
    (0..4)
        .map(|_| TrainExample {
            latent: Tensor::randn(&[4, 3, 4, 4], 1.0, DType::F32, &mut rng),
            context: Tensor::randn(&[6, 16], 1.0, DType::F32, &mut rng),
        })
        .collect()
}

fn eval(tr: &FlowMatchingTrainer, ex: &[TrainExample]) -> f64 {
    (0..4).map(|s| tr.eval_loss(ex, 1000 + s).unwrap()).sum::<f64>() / 4.0
}

fn lora_cfg(targets: &[&str]) -> LoraConfig {
    LoraConfig { rank: 4, alpha: 8.0, targets: targets.iter().map(|s| s.to_string()).collect() }
}

/// Trains `steps` steps on four fixed pairs and asserts that the mean eval loss (4 fixed seeds)
/// drops by at least `min_drop`. The pairs are random unit-variance latents: the target `ε − x0`
/// has variance 2 and only the part the net can infer (x0 from the context, ε from x_σ at large
/// σ) is learnable, so the tiny net plateaus well above 0 (a zero predictor scores ≈ 2.0).
fn train_and_report(
    name: &str,
    model: WanDit,
    cfg: FlowMatchingConfig,
    steps: usize,
    min_drop: f64,
) -> FlowMatchingTrainer {
    let ex = examples(5);
    let mut tr = FlowMatchingTrainer::new(model, cfg).unwrap();
    let before = eval(&tr, &ex);
    let t0 = std::time::Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..steps {
        let s = tr.step(&ex).unwrap();
        first.get_or_insert(s.loss);
        last = s.loss;
        assert!(s.loss.is_finite() && s.grad_norm.is_finite());
    }
    let after = eval(&tr, &ex);
    println!(
        "{name}: eval loss {before:.4} -> {after:.4} ({:.1}% drop) after {steps} steps; step loss {:.4} -> {last:.4}; {:.2?}/step",
        100.0 * (1.0 - after / before),
        first.unwrap(),
        t0.elapsed() / steps as u32
    );
    assert!(after <= (1.0 - min_drop) * before, "{name}: eval loss {before} -> {after} did not drop by {min_drop}");
    assert_eq!(tr.step_count(), steps as u64);
    tr
}

#[test]
fn full_finetune_loss_drops() {
    let cfg = FlowMatchingConfig { lr: 1e-2, caption_dropout: 0.0, recompute_blocks: false, ..Default::default() };
    let tr = train_and_report("full", tiny_model(DType::F32, 1), cfg, 60, 0.30);
    // the trained weights moved
    let init = tiny_model(DType::F32, 1);
    let w = "blocks.0.attn1.to_q.weight";
    assert!(tr.model().parameter(w).unwrap().max_abs_diff(init.parameter(w).unwrap()).unwrap() > 1e-3);
}

#[test]
fn lora_loss_drops_and_base_is_frozen() {
    let base = tiny_model(DType::F32, 1);
    let targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out"];
    let cfg = FlowMatchingConfig {
        lr: 5e-3,
        caption_dropout: 0.0,
        recompute_blocks: true,
        lora: Some(LoraConfig { rank: 8, alpha: 32.0, ..lora_cfg(&targets) }),
        ..Default::default()
    };
    // A rank-8 adapter on a random base learns more slowly than the full net: ≥ 25% here.
    let tr = train_and_report("lora", base.clone(), cfg, 60, 0.25);
    for ((n, a), (_, b)) in tr.model().named_parameters().iter().zip(base.named_parameters()) {
        assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap(), "base weight {n} changed");
    }
    // the adapters moved, and merging them changes the adapted weights only
    let l = tr.lora().unwrap();
    assert_eq!(l.modules.len(), 2 * (2 * 4 + 2) + 1);
    assert!(l.modules.iter().all(|m| m.b.to_vec_f64().unwrap().iter().any(|&x| x != 0.0)));
    let merged = tr.inference_model(false).unwrap();
    for (n, p) in merged.named_parameters() {
        let same = p.max_abs_diff(base.parameter(n).unwrap()).unwrap() == 0.0;
        let adapted = l.modules.iter().any(|m| format!("{}.weight", m.name) == n);
        assert_eq!(same, !adapted, "{n}");
    }
}

/// Trains 6 steps saving after 3, resumes from the save and trains 3 more: the resumed losses,
/// gradient norms and final weights are bitwise those of the uninterrupted run.
fn check_resume(name: &str, base: WanDit, cfg: FlowMatchingConfig) {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let ex = examples(9);
    let mut a = FlowMatchingTrainer::new(base.clone(), cfg).unwrap();
    let mut full = Vec::new();
    for i in 0..6 {
        if i == 3 {
            a.save(&ck).unwrap();
        }
        full.push(a.step(&ex).unwrap());
    }
    let mut b = FlowMatchingTrainer::resume(base, &ck).unwrap();
    assert_eq!(b.step_count(), 3);
    for want in &full[3..] {
        let got = b.step(&ex).unwrap();
        assert_eq!(got.step, want.step);
        assert_eq!(
            got.loss.to_bits(),
            want.loss.to_bits(),
            "{name}: step {} loss {} vs {}",
            got.step,
            got.loss,
            want.loss
        );
        assert_eq!(got.grad_norm.to_bits(), want.grad_norm.to_bits(), "{name}: step {} grad norm", got.step);
    }
    println!("{name}: losses {:?}", full.iter().map(|s| s.loss).collect::<Vec<_>>());
    for (x, y) in a.trainable_tensors().iter().zip(b.trainable_tensors()) {
        assert_eq!(x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap(), "{name}: final weights differ");
    }
    if let (Some(x), Some(y)) = (a.ema_tensors(), b.ema_tensors()) {
        for (x, y) in x.iter().zip(y) {
            assert_eq!(x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap(), "{name}: EMA differs");
        }
    } else {
        panic!("{name}: EMA expected");
    }
    let (ea, eb) = (a.inference_model(true).unwrap(), b.inference_model(true).unwrap());
    for ((n, x), (_, y)) in ea.named_parameters().iter().zip(eb.named_parameters()) {
        assert_eq!(x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap(), "{name}: EMA model {n}");
    }
}

#[test]
fn resume_is_bitwise_full_with_ema() {
    let cfg = FlowMatchingConfig { lr: 1e-3, ema_decay: Some(0.9), max_grad_norm: 0.5, ..Default::default() };
    check_resume("full f32", tiny_model(DType::F32, 3), cfg);
}

#[test]
fn resume_is_bitwise_full_bf16_master_weights() {
    let cfg = FlowMatchingConfig {
        lr: 1e-3,
        ema_decay: Some(0.9),
        timestep_sampling: TimestepSampling::LogitNormal { mean: 0.0, std: 1.0 },
        ..Default::default()
    };
    check_resume("full bf16", tiny_model(DType::BF16, 3), cfg);
}

#[test]
fn resume_is_bitwise_lora_with_ema() {
    let cfg = FlowMatchingConfig {
        lr: 1e-2,
        ema_decay: Some(0.8),
        caption_dropout: 0.5,
        lora: Some(lora_cfg(&["to_q", "to_k", "to_v", "to_out.0"])),
        ..Default::default()
    };
    check_resume("lora", tiny_model(DType::F32, 4), cfg);
}

#[test]
fn lora_resume_rejects_another_base() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FlowMatchingConfig { lora: Some(lora_cfg(&["to_q"])), ..Default::default() };
    let mut tr = FlowMatchingTrainer::new(tiny_model(DType::F32, 4), cfg).unwrap();
    tr.step(&examples(1)).unwrap();
    let ck = tr.save_step(dir.path()).unwrap();
    assert!(ck.ends_with("step-00000001"));
    let e = FlowMatchingTrainer::resume(tiny_model(DType::F32, 5), &ck).unwrap_err();
    assert!(matches!(e, Error::TrainingCheckpoint { .. }) && e.to_string().contains("fingerprint"), "{e}");
    let e = FlowMatchingTrainer::resume(tiny_model(DType::BF16, 4), &ck).unwrap_err();
    assert!(matches!(e, Error::TrainingCheckpoint { .. }), "{e}");
    let other = WanDit::init(WanDitConfig { ffn_dim: 48, ..tiny_config() }, &mut Rng::new(4), DType::F32).unwrap();
    let e = FlowMatchingTrainer::resume(other, &ck).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    assert!(FlowMatchingTrainer::resume(tiny_model(DType::F32, 4), &ck).is_ok());
}

/// Finite-difference check of dA and dB (f64 model, nonzero B) through the whole DiT: the loss
/// `L = Σ v ⊙ R` of the merged model, gradients from the DiT backward's low-rank LoRA path (equal to
/// `grads_from_full` of the full backward).
#[test]
fn lora_gradients_match_finite_differences() {
    let base = tiny_model(DType::F64, 11);
    let lc = lora_cfg(&["to_q", "to_out.0", "ffn.net.0.proj"]);
    let mut rng = Rng::new(12);
    let mut lw = LoraWeights::init(&base, &lc, &mut rng, DType::F64).unwrap();
    for m in &mut lw.modules {
        m.b = Tensor::randn(m.b.shape(), 0.3, DType::F64, &mut rng);
    }
    let x = Tensor::randn(&[1, 4, 3, 4, 4], 1.0, DType::F64, &mut rng);
    let t = Tensor::from_f64_slice(&[700.0], &[1], DType::F64).unwrap();
    let c = Tensor::randn(&[1, 6, 16], 1.0, DType::F64, &mut rng);
    let r = Tensor::randn(&[1, 4, 3, 4, 4], 1.0, DType::F64, &mut rng);
    let loss = |lw: &LoraWeights| -> f64 {
        let v = lw.merge_into(&base).unwrap().forward(&x, &t, &c).unwrap().to_vec_f64().unwrap();
        v.iter().zip(r.to_vec_f64().unwrap()).map(|(a, b)| a * b).sum()
    };
    let merged = lw.merge_into(&base).unwrap();
    let (_, tape) = merged.forward_train(&x, &t, &c).unwrap();
    let full = lw.grads_from_full(&merged.backward(&tape, &r).unwrap().params).unwrap();
    // The trainer's path: adapter gradients from the low-rank factors, no gradient of the frozen base.
    let none = HashSet::new();
    let sel = merged.backward_for(&tape, &r, GradRequest { params: Some(&none), lora: Some(&lw) }).unwrap();
    assert!(sel.params.is_empty(), "frozen base weights got gradients: {:?}", sel.params.keys());
    let g = sel.lora;
    assert_eq!(g.len(), full.len());
    for (a, b) in g.iter().zip(&full) {
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-10 * scale.max(1e-30), "low-rank and full-dW LoRA gradients differ by {diff}");
    }
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for (mi, m) in lw.modules.iter().enumerate() {
        for (which, idx) in [(0usize, 5usize), (1, 7)] {
            let mut plus = lw.clone();
            let mut minus = lw.clone();
            let bump = |w: &mut LoraWeights, d: f64| {
                let tm = &mut w.modules[mi];
                let tgt = if which == 0 { &mut tm.a } else { &mut tm.b };
                let mut v = tgt.to_vec_f64().unwrap();
                v[idx] += d;
                *tgt = Tensor::from_f64_slice(&v, tgt.shape(), DType::F64).unwrap();
            };
            bump(&mut plus, h);
            bump(&mut minus, -h);
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            let an = g[2 * mi + which].to_vec_f64().unwrap()[idx];
            let rel = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-8);
            println!("{} d{} [{idx}]: analytic {an:.10e} fd {fd:.10e} rel {rel:.2e}", m.name, ["A", "B"][which]);
            assert!(an.abs() > 1e-6, "{}: gradient vanishes, the check would be vacuous", m.name);
            worst = worst.max(rel);
        }
    }
    println!("LoRA FD check: worst relative error {worst:.2e}");
    assert!(worst < 1e-6, "worst relative error {worst}");
}

#[test]
fn lora_file_has_the_diffusers_layout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FlowMatchingConfig {
        lr: 1e-2,
        lora: Some(LoraConfig { rank: 4, alpha: 6.0, ..Default::default() }),
        ..Default::default()
    };
    let mut tr = FlowMatchingTrainer::new(tiny_model(DType::F32, 6), cfg).unwrap();
    tr.step(&examples(2)).unwrap();
    tr.save(&dir.path().join("ck")).unwrap();
    let path = dir.path().join("ck").join(LORA_FILE_NAME);
    let f = SafeTensorsFile::open(&path).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..2 {
        for a in ["attn1", "attn2"] {
            for l in ["to_q", "to_k", "to_v", "to_out.0"] {
                for ab in ["A", "B"] {
                    want.insert(format!("transformer.blocks.{i}.{a}.{l}.lora_{ab}.weight"));
                }
            }
        }
    }
    assert_eq!(f.keys().into_iter().collect::<BTreeSet<_>>(), want);
    for k in &want {
        let (shape, dt) = f.describe(k).unwrap();
        assert_eq!(dt, DType::F32);
        assert_eq!(shape, if k.contains("lora_A") { vec![4, 32] } else { vec![32, 4] }, "{k}");
    }
    let md = f.user_metadata().unwrap();
    assert_eq!(md["format"], "pt");
    let meta: serde_json::Value = serde_json::from_str(&md[LORA_METADATA_KEY]).unwrap();
    assert_eq!(meta["transformer.r"], 4);
    assert_eq!(meta["transformer.lora_alpha"], 6);
    assert_eq!(meta["transformer.target_modules"].as_array().unwrap().len(), 16);
    // the file reads back with the same alpha and tensors
    let back = LoraWeights::load(&path, DType::F32).unwrap();
    assert_eq!((back.rank, back.alpha), (4, 6.0));
    let l = tr.lora().unwrap();
    for m in &l.modules {
        let b = back.modules.iter().find(|x| x.name == m.name).unwrap();
        assert_eq!(b.a.to_vec_f32().unwrap(), m.a.to_vec_f32().unwrap());
        assert_eq!(b.b.to_vec_f32().unwrap(), m.b.to_vec_f32().unwrap());
    }
    // full fine-tune files: diffusers weights loadable by WanDit::load
    let mut full = FlowMatchingTrainer::new(tiny_model(DType::F32, 6), FlowMatchingConfig::default()).unwrap();
    full.step(&examples(2)).unwrap();
    full.save(&dir.path().join("full")).unwrap();
    let ck =
        medgen_kernels::io::safetensors::Checkpoint::open(dir.path().join("full/diffusion_pytorch_model.safetensors"))
            .unwrap();
    let cfg = WanDitConfig::from_file(dir.path().join("full/config.json")).unwrap();
    let m = WanDit::load(cfg, &ck, DType::F32).unwrap();
    let w = "blocks.1.ffn.net.2.weight";
    assert_eq!(m.parameter(w).unwrap().to_vec_f32().unwrap(), full.model().parameter(w).unwrap().to_vec_f32().unwrap());
}

#[test]
fn full_caption_dropout_ignores_the_context() {
    let base = tiny_model(DType::F32, 7);
    let ex1 = examples(20);
    let mut ex2 = ex1.clone();
    let mut rng = Rng::new(21);
    for e in &mut ex2 {
        e.context = Tensor::randn(&[6, 16], 1.0, DType::F32, &mut rng);
    }
    let run = |dropout: f64, ex: &[TrainExample]| {
        let cfg = FlowMatchingConfig { caption_dropout: dropout, seed: 3, ..Default::default() };
        let mut tr = FlowMatchingTrainer::new(base.clone(), cfg).unwrap();
        (0..2).map(|_| tr.step(ex).unwrap()).collect::<Vec<_>>()
    };
    let (a, b) = (run(1.0, &ex1), run(1.0, &ex2));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits());
        assert_eq!(x.grad_norm.to_bits(), y.grad_norm.to_bits());
    }
    let (c, d) = (run(0.0, &ex1), run(0.0, &ex2));
    assert_ne!(c[0].loss, d[0].loss, "without dropout the context must matter");
}

#[test]
fn atomic_save_leftovers_and_missing_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("run");
    let cfg = FlowMatchingConfig { ema_decay: Some(0.5), ..Default::default() };
    let mut tr = FlowMatchingTrainer::new(tiny_model(DType::F32, 8), cfg).unwrap();
    let ex = examples(3);
    assert_eq!(latest_checkpoint(&root).unwrap(), None);
    let s0 = tr.save_step(&root).unwrap();
    tr.step(&ex).unwrap();
    let s1 = tr.save_step(&root).unwrap();
    // an interrupted later save, and stray files, are ignored
    let stale = root.join("step-00000009.tmp-1-2");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("training_state.safetensors"), b"garbage").unwrap();
    std::fs::create_dir_all(root.join("step-00000005")).unwrap(); // no training_state: incomplete
    assert_eq!(latest_checkpoint(&root).unwrap().as_deref(), Some(s1.as_path()));
    // a leftover of an interrupted save of s1 is cleaned by resume
    let left = root.join("step-00000001.tmp-77-88");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("x"), b"partial").unwrap();
    let r = FlowMatchingTrainer::resume_latest(tiny_model(DType::F32, 8), &root).unwrap().unwrap();
    assert_eq!(r.step_count(), 1);
    assert!(!left.exists(), "resume must remove {}", left.display());
    assert!(stale.exists(), "other checkpoints' leftovers are not touched");
    // saving over an existing directory replaces it
    tr.step(&ex).unwrap();
    tr.save(&s0).unwrap();
    assert_eq!(FlowMatchingTrainer::resume(tiny_model(DType::F32, 8), &s0).unwrap().step_count(), 2);
    assert!(std::fs::read_dir(&root).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-old-")));
    // the step-0 checkpoint (no optimiser state yet) resumes too
    let fresh = dir.path().join("fresh");
    FlowMatchingTrainer::new(tiny_model(DType::F32, 8), FlowMatchingConfig::default()).unwrap().save(&fresh).unwrap();
    assert_eq!(FlowMatchingTrainer::resume(tiny_model(DType::F32, 8), &fresh).unwrap().step_count(), 0);
    // missing and incomplete directories are typed errors
    let e = FlowMatchingTrainer::resume(tiny_model(DType::F32, 8), &root.join("nope")).unwrap_err();
    assert!(matches!(e, Error::TrainingCheckpoint { .. }), "{e}");
    let e = FlowMatchingTrainer::resume(tiny_model(DType::F32, 8), &root.join("step-00000005")).unwrap_err();
    assert!(matches!(e, Error::TrainingCheckpoint { .. }) && e.to_string().contains("incomplete"), "{e}");
    assert_eq!(
        FlowMatchingTrainer::resume_latest(tiny_model(DType::F32, 8), Path::new("/nonexistent/x"))
            .unwrap()
            .map(|t| t.step_count()),
        None
    );
}

#[test]
fn adamw_state_round_trips() {
    let cfg = AdamWConfig { lr: 0.1, ..Default::default() };
    let mut rng = Rng::new(1);
    let mut p1 =
        vec![Tensor::randn(&[3, 2], 1.0, DType::F32, &mut rng), Tensor::randn(&[4], 1.0, DType::F32, &mut rng)];
    let g: Vec<Vec<Tensor>> = (0..4)
        .map(|_| {
            vec![Tensor::randn(&[3, 2], 1.0, DType::F32, &mut rng), Tensor::randn(&[4], 1.0, DType::F32, &mut rng)]
        })
        .collect();
    let mut a = AdamW::new(cfg).unwrap();
    a.step(&mut p1, &g[0]).unwrap();
    a.step(&mut p1, &g[1]).unwrap();
    let st = a.export_state().unwrap();
    assert_eq!((st.step, st.exp_avg.len(), st.exp_avg[0].shape()), (2, 2, &[6][..]));
    let mut b = AdamW::new(cfg).unwrap();
    b.import_state(st.clone()).unwrap();
    let mut p2 = p1.clone();
    for gs in &g[2..] {
        a.step(&mut p1, gs).unwrap();
        b.step(&mut p2, gs).unwrap();
    }
    for (x, y) in p1.iter().zip(&p2) {
        assert_eq!(x.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
    }
    let mut bad = st.clone();
    bad.exp_avg_sq.pop();
    assert!(AdamW::new(cfg).unwrap().import_state(bad).is_err());
    let mut bad = st;
    bad.exp_avg[0] = bad.exp_avg[0].to_dtype(DType::F64).unwrap();
    assert!(AdamW::new(cfg).unwrap().import_state(bad).is_err());
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let m = || tiny_model(DType::F32, 9);
    let bad = |cfg: FlowMatchingConfig| FlowMatchingTrainer::new(m(), cfg).unwrap_err();
    assert!(
        bad(FlowMatchingConfig { caption_dropout: 1.5, ..Default::default() }).to_string().contains("caption_dropout")
    );
    assert!(bad(FlowMatchingConfig { shift: 0.0, ..Default::default() }).to_string().contains("shift"));
    assert!(bad(FlowMatchingConfig { ema_decay: Some(1.0), ..Default::default() }).to_string().contains("ema_decay"));
    let e = bad(FlowMatchingConfig { lora: Some(lora_cfg(&["to_qq"])), ..Default::default() });
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("to_qq"), "{e}");
    let e = bad(FlowMatchingConfig { lora: Some(LoraConfig { rank: 0, ..Default::default() }), ..Default::default() });
    assert!(e.to_string().contains("rank"), "{e}");

    let mut tr = FlowMatchingTrainer::new(m(), FlowMatchingConfig::default()).unwrap();
    assert!(tr.step(&[]).is_err());
    let mut rng = Rng::new(1);
    let wrong_c = TrainExample {
        latent: Tensor::randn(&[3, 3, 4, 4], 1.0, DType::F32, &mut rng),
        context: Tensor::randn(&[6, 16], 1.0, DType::F32, &mut rng),
    };
    assert!(tr.step(&[wrong_c]).unwrap_err().to_string().contains("latent"));
    let wrong_t = TrainExample {
        latent: Tensor::randn(&[4, 3, 4, 4], 1.0, DType::F32, &mut rng),
        context: Tensor::randn(&[6, 8], 1.0, DType::F32, &mut rng),
    };
    assert!(tr.step(&[wrong_t]).unwrap_err().to_string().contains("text_dim"));
    assert_eq!(tr.step_count(), 0);
    assert!(tr.inference_model(true).is_err(), "no EMA configured");
    // a NaN latent is a divergence error and changes nothing
    let nan = TrainExample {
        latent: Tensor::full(&[4, 3, 4, 4], f64::NAN, DType::F32, medgen_kernels::Device::Cpu).unwrap(),
        context: Tensor::randn(&[6, 16], 1.0, DType::F32, &mut rng),
    };
    let before = tr.model().parameter("proj_out.weight").unwrap().to_vec_f32().unwrap();
    assert!(matches!(tr.step(&[nan]).unwrap_err(), Error::TrainingDiverged { step: 0, .. }));
    assert_eq!(tr.model().parameter("proj_out.weight").unwrap().to_vec_f32().unwrap(), before);
    assert_eq!(tr.step_count(), 0);
}
