//! Latents, flow-matching training rounds and sampling, end to end through the `medgen` binary:
//! synthetic clips → template captions → MiniLM contexts + patch-PCA latents → a tiny DiT trained
//! from scratch → samples (MP4) with every round's checkpoint; then the incremental promise: new
//! videos in a later epoch are the only ones decoded, captioned and encoded, and a second round,
//! checkpoint and sample set appear; a re-run recomputes nothing.
#![cfg(feature = "video")]

#[path = "curate_common/mod.rs"]
mod common;

use common::{counter, medgen, run, synth_video};
use medgen_operators::video::synth::{Content, Shot, SynthSpec};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn minilm() -> Option<PathBuf> {
    let dir = common::repo().join(".cache/models/minilm");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: MiniLM is not fetched (run scripts/fetch-models.sh)");
        None
    }
}

/// A 3-second 64×48 clip at 8 fps of one moving content.
fn clip(dir: &Path, name: &str, content: Content) -> PathBuf {
    let path = dir.join(name);
    let spec = SynthSpec { shots: vec![Shot::new(24, content)], ..SynthSpec::simple(64, 48, 8, 24) };
    synth_video(&path, &spec);
    path
}

const NODES: &str = r#"
[nodes.captions]
op = "caption.template"
inputs = ["clips"]
frames = 2

[nodes.text]
op = "latent.encode_text"
inputs = ["captions"]
text_tokens = 16

[nodes.latents]
op = "latent.encode_video"
inputs = ["clips"]
width = 32
height = 32
frames = 9
fps = 8.0
fit_stride = 1

[nodes.train]
op = "train.flow_matching"
inputs = { latents = "latents", text = "text" }
scratch_layers = 1
scratch_heads = 2
scratch_head_dim = 16
scratch_ffn_dim = 64
scratch_freq_dim = 32
lr = 2e-3
batch_size = 2
steps_per_clip = 40
min_steps_per_round = 40
max_steps_per_round = 120
checkpoint_every = 50
ema_decay = 0.5

[nodes.prompts]
op = "source.prompts"
prompts = ["colour bars moving", "a checkerboard"]

[nodes.samples]
op = "sample.t2v"
inputs = { prompts = "prompts", checkpoints = "train" }
sampler = "euler"
steps = 4
guidance = 2.0

[nodes.vbench]
op = "eval.vbench"
inputs = { samples = "samples" }

[nodes.gate]
op = "eval.gate"
inputs = { metrics = "vbench", checkpoints = "train" }
rule = "drop.total <= 50"

[nodes.evals]
op = "sink.jsonl"
inputs = ["vbench", "gate"]
path = "evals.jsonl"

[nodes.accepted]
op = "sink.jsonl"
inputs = ["gate.accepted"]
path = "accepted.jsonl"

[nodes.losses]
op = "sink.jsonl"
inputs = ["train.metrics"]
path = "metrics.jsonl"

[nodes.psnr]
op = "sink.jsonl"
inputs = ["latents.metrics"]
path = "psnr.jsonl"

[nodes.samples_out]
op = "sink.jsonl"
inputs = ["samples"]
path = "samples.jsonl"

[nodes.recon]
op = "latent.decode_video"
inputs = ["latents"]
codec_from = "latents"
fps = 8.0

[nodes.recon_out]
op = "sink.jsonl"
inputs = ["recon"]
path = "recon.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["captions.failures", "text.failures", "latents.failures", "train.failures", "samples.failures",
          "recon.failures", "vbench.failures", "gate.failures"]
path = "failures.jsonl"
"#;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn probe_frames(path: &Path) -> u64 {
    let info = medgen_operators::video::probe::probe(path, &Default::default())
        .unwrap_or_else(|e| panic!("probing {}: {e}", path.display()));
    info.frame_count.unwrap_or(0)
}

#[test]
fn trains_from_scratch_samples_and_reruns_from_the_cache() {
    if minilm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    std::fs::create_dir_all(&data).unwrap();
    clip(&data, "bars.mp4", Content::Bars);
    clip(&data, "checker.mp4", Content::Checker);
    clip(&data, "gradient.mp4", Content::Gradient);
    let graph = dir.path().join("t.toml");
    std::fs::write(
        &graph,
        format!("[graph]\nname = \"t\"\n[nodes.clips]\nop = \"source.files\"\npaths = [\"clips/*.mp4\"]\n{NODES}"),
    )
    .unwrap();
    let store = dir.path().join("store");
    let s1 = run(&graph, &store);
    let failures = common::rows(&store, "failures.jsonl");
    assert!(failures.is_empty(), "{failures:?}");

    // The codec is honest about what it keeps; smooth synthetic content survives well.
    let psnr: Vec<f64> = common::rows(&store, "psnr.jsonl")
        .iter()
        .filter(|r| r["name"] == "latent_psnr_db")
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(psnr.len(), 3);
    eprintln!("patch-PCA reconstruction PSNR: {psnr:?}");
    assert!(psnr.iter().all(|p| *p > 18.0), "{psnr:?}");

    // latent.decode_video turns the latents back into 9-frame MP4s.
    let recon = common::rows(&store, "recon.jsonl");
    assert_eq!(recon.len(), 3, "{recon:?}");
    for r in &recon {
        assert_eq!(probe_frames(&find_blob(&store, r["blob"].as_str().unwrap())), 9);
    }

    // One round of 120 steps (3 new clips × 40), and the loss falls by a clear margin.
    let l = common::train_losses(&store);
    assert_eq!(l.len(), 120, "{l:?}");
    let vals: Vec<f64> = l.iter().map(|x| x.1).collect();
    let (first, last) = (mean(&vals[..20]), mean(&vals[vals.len() - 20..]));
    eprintln!("train loss: first 20 steps {first:.4}, last 20 steps {last:.4}");
    assert!(last < 0.8 * first, "loss {first} → {last}");

    // A self-contained checkpoint folder, and a playable sample per prompt.
    let ckpt_dirs: Vec<PathBuf> = std::fs::read_dir(store.join("outputs/train"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("epoch-")))
        .collect();
    assert_eq!(ckpt_dirs.len(), 1, "{ckpt_dirs:?}");
    for f in ["config.json", "diffusion_pytorch_model.safetensors", "latent_codec.safetensors", "medgen.json"] {
        assert!(ckpt_dirs[0].join(f).is_file(), "{f} missing from {}", ckpt_dirs[0].display());
    }
    let samples = common::rows(&store, "samples.jsonl");
    assert_eq!(samples.len(), 2, "{samples:?}");
    for s in &samples {
        let blob = find_blob(&store, s["video_blob"].as_str().unwrap());
        assert_eq!(probe_frames(&blob), 9, "{}", blob.display());
    }

    // `medgen sample` renders from the folder alone.
    let out = dir.path().join("one.mp4");
    let o = medgen()
        .args(["sample", "--steps", "3", "--sampler", "euler", "--guidance", "1", "--checkpoint"])
        .arg(&ckpt_dirs[0])
        .arg("--out")
        .arg(&out)
        .arg("a checkerboard")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sampler: euler at shift 3"), "{o:?}");
    assert_eq!(probe_frames(&out), 9);

    // … and with a LoRA file merged in (PEFT layout, as training writes it): another video; a
    // missing file is refused before anything runs.
    let lora_file = dir.path().join("adapter.safetensors");
    {
        use medgen_kernels::train::{LoraConfig, lora::LoraWeights};
        let m = medgen_operators::train::checkpoint::load_dir(&ckpt_dirs[0], medgen_kernels::DType::F32).unwrap();
        let cfg = LoraConfig { rank: 2, alpha: 2.0, targets: vec!["to_q".into(), "to_v".into()] };
        let mut rng = medgen_kernels::Rng::new(3);
        let mut lora = LoraWeights::init(&m.dit, &cfg, &mut rng, medgen_kernels::DType::F32).unwrap();
        for module in &mut lora.modules {
            module.b = medgen_kernels::Tensor::randn(module.b.shape(), 0.5, medgen_kernels::DType::F32, &mut rng);
        }
        lora.save(&lora_file).unwrap();
    }
    let sample_with = |lora: &str, out: &Path| {
        medgen()
            .args(["sample", "--steps", "3", "--sampler", "euler", "--guidance", "1", "--lora", lora, "--checkpoint"])
            .arg(&ckpt_dirs[0])
            .arg("--out")
            .arg(out)
            .arg("a checkerboard")
            .output()
            .unwrap()
    };
    let adapted = dir.path().join("adapted.mp4");
    let o = sample_with(&format!("{}@0.8", lora_file.display()), &adapted);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(&adapted).unwrap(), std::fs::read(&out).unwrap(), "the LoRA changes the video");
    let o = sample_with("missing.safetensors", &adapted);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.safetensors"), "{o:?}");

    // A re-run recomputes nothing: every pool answers from the memo cache, no new round.
    let s2 = run(&graph, &store);
    for node in ["captions", "text", "latents", "samples", "vbench"] {
        assert_eq!(counter(&s2, node, "memo_misses"), 0, "{node} recomputed: {s2}");
    }
    assert_eq!(common::train_losses(&store).len(), 120);
    let _ = s1;

    // `medgen store gc`: new sampling settings leave the old samples behind (memo entries and
    // MP4 blobs); a collection with the new graph removes them and keeps all the new graph reads.
    let old_videos: Vec<String> =
        common::rows(&store, "samples.jsonl").iter().map(|r| r["video_blob"].as_str().unwrap().to_string()).collect();
    let graph2 = dir.path().join("t2.toml");
    let text = std::fs::read_to_string(&graph).unwrap();
    assert!(text.contains("sampler = \"euler\"\nsteps = 4\n"));
    std::fs::write(&graph2, text.replace("sampler = \"euler\"\nsteps = 4\n", "sampler = \"euler\"\nsteps = 3\n"))
        .unwrap();
    let s3 = run(&graph2, &store);
    assert_eq!(counter(&s3, "samples", "memo_misses"), 2, "{s3}");
    let gc = |g: &Path, extra: &[&str]| {
        let o = medgen().args(["store", "gc", "--quiet", "--store"]).arg(&store).arg(g).args(extra).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let has_blob = |k: &str| store.join("blobs").join(&k[..2]).join(k).is_file();
    let explain = |g: &Path| {
        let o = medgen().args(["explain", "--store"]).arg(&store).arg(g).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(explain(&graph2).contains("the store also holds 5 memo entries and 2 blobs"), "{}", explain(&graph2));
    let (code, out) = gc(&graph2, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    let row = out.lines().find(|l| l.split_whitespace().next() == Some("samples")).unwrap_or_default();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["samples", "2", "2"], "{out}");
    assert!(out.contains("dry run: nothing was removed"), "{out}");
    assert!(old_videos.iter().all(|k| has_blob(k)), "a dry run removes nothing");

    let (code, out) = gc(&graph2, &[]);
    eprintln!("medgen store gc:\n{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(old_videos.iter().all(|k| !has_blob(k)), "the old samples' videos are collected: {out}");
    let new_videos: Vec<String> =
        common::rows(&store, "samples.jsonl").iter().map(|r| r["video_blob"].as_str().unwrap().to_string()).collect();
    assert!(new_videos.iter().all(|k| has_blob(k)) && new_videos != old_videos, "{out}");
    let s4 = run(&graph2, &store);
    for node in ["captions", "text", "latents", "samples", "vbench", "recon"] {
        assert_eq!(counter(&s4, node, "memo_misses"), 0, "{node} lost what it needs to gc: {s4}");
    }
    assert_eq!(common::train_losses(&store).len(), 120);
    let (code, out) = gc(&graph2, &[]);
    assert!(code == Some(0) && out.contains("nothing to collect"), "{out}");
    assert!(!explain(&graph2).contains("the store also holds"));

    // A graph whose inputs are not there reads nothing: gc refuses rather than empty the store.
    let elsewhere = dir.path().join("t3.toml");
    std::fs::write(
        &elsewhere,
        "[graph]\nname = \"t\"\n[nodes.clips]\nop = \"source.files\"\npaths = [\"unmounted/*.mp4\"]\n\
         [nodes.captions]\nop = \"caption.template\"\ninputs = [\"clips\"]\nframes = 2\n\
         [nodes.out]\nop = \"sink.jsonl\"\ninputs = [\"captions\"]\npath = \"c.jsonl\"\n",
    )
    .unwrap();
    let (code, out) = gc(&elsewhere, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("reads nothing") && out.contains("--force"), "{out}");
    assert!(new_videos.iter().all(|k| has_blob(k)));
}

/// Blob paths may be sharded; find one by key.
fn find_blob(store: &Path, key: &str) -> PathBuf {
    fn walk(d: &Path, key: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = walk(&p, key) {
                    return Some(f);
                }
            } else if p.file_name().is_some_and(|n| n.to_string_lossy() == key) {
                return Some(p);
            }
        }
        None
    }
    walk(&store.join("blobs"), key).unwrap_or_else(|| panic!("blob {key} not in {}", store.display()))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn new_videos_in_a_later_epoch_train_a_second_round_incrementally() {
    if minilm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    std::fs::create_dir_all(&data).unwrap();
    clip(&data, "bars.mp4", Content::Bars);
    clip(&data, "checker.mp4", Content::Checker);
    let graph = dir.path().join("w.toml");
    std::fs::write(
        &graph,
        format!(
            "[graph]\nname = \"w\"\n[nodes.clips]\nop = \"source.files\"\npaths = [\"clips/*.mp4\"]\nwatch = true\n\
             poll_seconds = 0.2\nsettle_seconds = 0.0\n{NODES}"
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let summary = dir.path().join("summary.json");
    let child = medgen()
        .args(["run", "-q", "--store"])
        .arg(&store)
        .arg("--summary-json")
        .arg(&summary)
        .arg(&graph)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let samples = || common::rows(&store, "samples.jsonl");
    wait_for("the first round's samples", Duration::from_secs(240), || samples().len() == 2);
    // Written beside the folder, then moved in: the watcher never sees a half-written file.
    let staged = clip(dir.path(), "gradient.mp4", Content::Gradient);
    std::fs::rename(&staged, data.join("gradient.mp4")).unwrap();
    wait_for("the second round's samples", Duration::from_secs(240), || samples().len() == 4);
    // …and their evaluation: both checkpoints' aggregates over two videos each.
    wait_for("the second checkpoint's evaluation", Duration::from_secs(240), || {
        common::rows(&store, "evals.jsonl").iter().filter(|r| r["name"] == "videos" && r["value"] == 2.0).count() == 2
    });
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    // Three videos: each decoded, captioned and encoded exactly once (latents: 3 frame
    // preparations, one codec fit, 3 encodes).
    for node in ["captions", "text"] {
        assert_eq!(counter(&s, node, "memo_misses"), 3, "{node}: {s}");
    }
    assert_eq!(counter(&s, "latents", "memo_misses"), 7, "{s}");
    // Two rounds: 2 new clips × 40 steps, then 1 new clip × 40 steps continuing the first.
    let l = common::train_losses(&store);
    assert_eq!(l.len(), 120, "{l:?}");
    let rounds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store.join("outputs/train/rounds.json")).unwrap()).unwrap();
    let rounds = rounds.as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0]["checkpoint"]["step"], 80);
    assert_eq!(rounds[1]["checkpoint"]["step"], 120);
    assert_eq!(rounds[1]["job"]["pool"].as_array().unwrap().len(), 3);
    assert_eq!(rounds[1]["job"]["new"].as_array().unwrap().len(), 1);
    let epochs: std::collections::BTreeSet<u64> =
        samples().iter().map(|r| r["checkpoint_epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs.len(), 2, "{epochs:?}");

    // Evaluation in the loop: each checkpoint's two samples scored once (the first checkpoint's
    // stay memo hits when the second arrives), an aggregate row per checkpoint, and the gate's
    // verdict on each, passed on as the Checkpoint records themselves.
    assert_eq!(counter(&s, "vbench", "memo_misses"), 4, "{s}");
    let evals = common::rows(&store, "evals.jsonl");
    let agg = |e: u64, name: &str| {
        evals
            .iter()
            .find(|r| r["subject"] == format!("checkpoint:epoch{e}").as_str() && r["name"] == name)
            .and_then(|r| r["value"].as_f64())
    };
    let gate_epochs: Vec<u64> = epochs.iter().copied().collect();
    for e in &gate_epochs {
        assert_eq!(agg(*e, "videos"), Some(2.0), "{evals:?}");
        let total = agg(*e, "total").unwrap_or_else(|| panic!("no total for epoch {e}: {evals:?}"));
        assert!(total > 0.0 && total <= 100.0, "{total}");
        assert!(agg(*e, "gate.accepted").is_some(), "{evals:?}");
        let ms = evals.iter().find(|r| {
            r["subject"] == format!("checkpoint:epoch{e}").as_str()
                && r["name"].as_str().unwrap_or("").starts_with("motion_smoothness@embedded:")
        });
        assert!(ms.is_some(), "motion smoothness names its backbone: {evals:?}");
    }
    let accepted = common::rows(&store, "accepted.jsonl");
    let n_accepted = gate_epochs.iter().filter(|e| agg(**e, "gate.accepted") == Some(1.0)).count();
    assert_eq!(accepted.len(), n_accepted, "{accepted:?}");
    assert!(n_accepted >= 1, "the first checkpoint has no reference and is accepted");
}

#[test]
fn a_killed_round_resumes_from_its_last_state_with_identical_losses() {
    if minilm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clips");
    std::fs::create_dir_all(&data).unwrap();
    clip(&data, "bars.mp4", Content::Bars);
    clip(&data, "checker.mp4", Content::Checker);
    // A longer round with frequent resume points.
    let nodes = NODES
        .replace("steps_per_clip = 40", "steps_per_clip = 200")
        .replace("max_steps_per_round = 120", "max_steps_per_round = 400")
        .replace("checkpoint_every = 50", "checkpoint_every = 25");
    let graph = dir.path().join("k.toml");
    std::fs::write(
        &graph,
        format!("[graph]\nname = \"k\"\n[nodes.clips]\nop = \"source.files\"\npaths = [\"clips/*.mp4\"]\n{nodes}"),
    )
    .unwrap();
    // The reference: uninterrupted.
    let reference = dir.path().join("reference");
    run(&graph, &reference);
    let full = common::train_losses(&reference);
    assert_eq!(full.len(), 400);

    // Killed (SIGKILL) once a resume point exists, then restarted.
    let store = dir.path().join("store");
    let mut child = medgen()
        .args(["run", "-q", "--store"])
        .arg(&store)
        .arg(&graph)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let progress = || {
        std::fs::read_dir(store.join("outputs/train/state"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .is_some_and(|e| e.path().join("progress").is_dir())
    };
    wait_for("a resume point", Duration::from_secs(240), progress);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let _ = child.wait();
    assert!(common::train_losses(&store).is_empty(), "a killed round commits no metrics");
    run(&graph, &store);
    let resumed = common::train_losses(&store);
    assert!(!resumed.is_empty() && resumed.len() < 400, "the restart resumed mid-round ({} steps)", resumed.len());
    let reference: std::collections::BTreeMap<_, _> = full.into_iter().collect();
    for (step, loss) in &resumed {
        assert_eq!(loss.to_bits(), reference[step].to_bits(), "{step}: {loss} vs {}", reference[step]);
    }
    eprintln!("resumed at {} of 400 steps; every later loss identical", 400 - resumed.len());
}
