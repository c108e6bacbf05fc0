//! `medgen classifier train`: fit the relevance head of `curate.metadata_filter` from labelled
//! JSONL (MiniLM embeddings + logistic regression; see `medgen_operators::curate::relevance`).

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use medgen_kernels::nets::minilm;
use medgen_operators::curate::relevance::{self, TrainOptions, TrainRequest};
use std::path::PathBuf;

/// Arguments of `medgen classifier`.
#[derive(clap::Args, Debug)]
pub struct ClassifierArgs {
    #[command(subcommand)]
    pub command: ClassifierCommand,
}

/// What `medgen classifier` does.
#[derive(clap::Subcommand, Debug)]
pub enum ClassifierCommand {
    /// Fit the embedding classifier of curate.metadata_filter from labelled metadata.
    ///
    /// Each row's text fields (default title, description, tags; joined by ". ", tag lists by ", ",
    /// exactly as the operator does) are embedded with MiniLM and a logistic regression (L2,
    /// class-balanced, L-BFGS; deterministic) is fitted on a stratified training split. Prints
    /// accuracy, precision, recall and F1 on the training and holdout rows and the decision
    /// threshold, and writes the head as JSON (atomically) for the operator's `classifier` param.
    #[command(after_help = TRAIN_AFTER)]
    Train(TrainArgs),
}

const TRAIN_AFTER: &str = r#"Labelled JSONL, one video per line (other fields are ignored; blank and // lines skipped):
  {"title": "Laparoscopic cholecystectomy", "description": "Step-by-step gallbladder removal", "tags": ["surgery", "general surgery"], "label": "medical"}
  {"title": "Heart of the city: a walking tour of Lisbon", "description": "Old town at sunset", "tags": "travel, vlog", "label": false}
label: true | false | 1 | 0 | "medical" | "other". Bad rows are reported with their line number and
skipped; training fails when no row is usable or a class has no rows.

Then, in a graph file:
  [nodes.medical]
  op = "curate.metadata_filter"
  inputs = ["videos"]
  classifier = "head.json"        # relative to the graph file
  # classifier_threshold = 0.5    # default: the threshold in head.json
  # min_matches = 0               # let the classifier alone decide

Example:
  medgen classifier train --data labelled.jsonl --out graphs/models/relevance.json --holdout 0.2 --seed 1"#;

/// Arguments of `medgen classifier train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Labelled JSONL (see below).
    #[arg(long, value_name = "LABELLED.jsonl")]
    pub data: PathBuf,
    /// Where to write the head (JSON).
    #[arg(long, value_name = "HEAD.json")]
    pub out: PathBuf,
    /// MiniLM folder (model.safetensors, tokenizer.json, config.json); default: the one
    /// scripts/fetch-models.sh fetched (.cache/models/minilm). The graph must use the same model.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Metadata fields embedded, in order; stored in the head, so the operator embeds the same.
    #[arg(long, value_delimiter = ',', default_value = "title,description,tags")]
    pub text_fields: Vec<String>,
    /// L2 penalty on the weights (added to the mean log-loss as l2/2·‖w‖²); larger: smoother.
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f64,
    /// Share of each class held out for the holdout metrics (0: train on every row).
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Seed of the holdout split and the cross-validation folds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decision threshold on P(medical); default: the best F1 of 5-fold cross-validation on the
    /// training rows.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Weight rows equally instead of weighting both classes equally.
    #[arg(long)]
    pub unbalanced: bool,
}

/// Run `medgen classifier …`; returns the exit code.
pub fn classifier(a: &ClassifierArgs) -> anyhow::Result<i32> {
    match &a.command {
        ClassifierCommand::Train(t) => train(t),
    }
}

fn train(a: &TrainArgs) -> anyhow::Result<i32> {
    if !(a.l2.is_finite() && a.l2 > 0.0) {
        bail!("--l2 must be a positive number (e.g. --l2 0.001), got {}", a.l2);
    }
    if !(0.0..0.9).contains(&a.holdout) {
        bail!("--holdout must be at least 0 and below 0.9 (e.g. --holdout 0.2), got {}", a.holdout);
    }
    if let Some(t) = a.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        bail!("--threshold must be between 0 and 1, got {t}");
    }
    let fields: Vec<String> = a.text_fields.iter().map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect();
    if fields.is_empty() {
        bail!("--text-fields is empty (e.g. --text-fields title,description,tags)");
    }
    let text = std::fs::read_to_string(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let (rows, bad) = relevance::parse_labelled(&text, &fields);
    for (line, msg) in bad.iter().take(20) {
        eprintln!("warning: {}:{line}: {msg} (row skipped)", a.data.display());
    }
    if bad.len() > 20 {
        eprintln!("warning: … and {} more bad rows", bad.len() - 20);
    }
    let n_pos = rows.iter().filter(|r| r.label).count();
    let n_neg = rows.len() - n_pos;
    if rows.is_empty() {
        bail!(
            "no usable rows in {} ({} bad): each line needs a JSON object with text in {} and a label; see `medgen classifier train --help`",
            a.data.display(),
            bad.len(),
            fields.join(", ")
        );
    }
    if n_pos == 0 || n_neg == 0 {
        let (has, lacks) =
            if n_pos == 0 { ("other", "\"medical\" (true, 1)") } else { ("medical", "\"other\" (false, 0)") };
        bail!(
            "{} has only {has} rows ({} usable): training needs both classes; add rows labelled {lacks}",
            a.data.display(),
            rows.len()
        );
    }
    eprintln!(
        "{}: {} usable rows ({n_pos} medical, {n_neg} other), {} skipped",
        a.data.display(),
        rows.len(),
        bad.len()
    );

    let dir = match &a.model_dir {
        Some(d) => d.clone(),
        None => minilm::fetched_minilm_dir().with_context(|| format!("no MiniLM: {}", minilm::MINILM_FETCH_HINT))?,
    };
    if !(dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file()) {
        bail!("{} has no model.safetensors and tokenizer.json: {}", dir.display(), minilm::MINILM_FETCH_HINT);
    }
    let model = relevance::shared_minilm(&dir).map_err(anyhow::Error::msg)?;
    let dim = model.config().hidden_size;

    let bar = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("embedding {bar:30} {pos}/{len} rows  {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let mut x = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(8) {
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        x.extend(relevance::embed(&model, &texts).map_err(anyhow::Error::msg)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!("embedded {} rows with MiniLM ({dim}-d) in {:.1} s", rows.len(), started.elapsed().as_secs_f64());

    let y: Vec<bool> = rows.iter().map(|r| r.label).collect();
    let (tr, ho) = relevance::split_holdout(&y, a.holdout, a.seed);
    let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<bool>) { idx.iter().map(|i| (x[*i].clone(), y[*i])).unzip() };
    let ((tx, ty), (hx, hy)) = (pick(&tr), pick(&ho));
    let req = TrainRequest {
        options: TrainOptions { l2: a.l2, balanced: !a.unbalanced, ..Default::default() },
        threshold: a.threshold,
        seed: a.seed,
        dim,
        text_fields: fields,
    };
    let mut head = relevance::train((&tx, &ty), (&hx, &hy), &req).map_err(anyhow::Error::msg)?;
    head.metrics["data"] = serde_json::json!(a.data.display().to_string());
    head.metrics["seed"] = serde_json::json!(a.seed);
    head.metrics["holdout_fraction"] = serde_json::json!(a.holdout);
    for split in ["train", "holdout"] {
        let m = &head.metrics[split];
        if m.is_null() {
            println!("{split:<8} (none: --holdout 0)");
            continue;
        }
        let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{split:<8} n={:<5} accuracy {:.3}  precision {:.3}  recall {:.3}  F1 {:.3}",
            m["n"].as_u64().unwrap_or(0),
            f("accuracy"),
            f("precision"),
            f("recall"),
            f("f1")
        );
    }
    println!("threshold {:.3} ({})", head.threshold, head.metrics["threshold_from"].as_str().unwrap_or(""));
    head.save(&a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "wrote {} (minilm:{dim}, trained on {} medical + {} other rows); use it with curate.metadata_filter's `classifier = \"{}\"`",
        a.out.display(),
        head.trained_on.n_pos,
        head.trained_on.n_neg,
        a.out.display()
    );
    Ok(0)
}
