//! `medgen review`: blind pairwise rating of two models' videos by doctors, in a local web page.

use anyhow::Context;
use clap::Args;
use medgen::review::{self, Results, Review, ReviewOptions, server::Server};
use medgen::store::Store;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const AFTER: &str = "How it works:
  Pairs are the prompt ids both models have a video for. Each rater types a name into the page and
  gets the pairs one by one: the prompt on top, the two videos side by side in an order randomised
  per (rater, pair) from --seed, with no model names. They judge text alignment, medical accuracy
  and visual quality (left better / both lose / right better) and each video's warping error (No /
  Minor / Moderate / Severe). Ratings go to the store's catalog in model terms (A = the first
  --model, B = the second); rating a pair again replaces the earlier rating.

Sources (--model NAME=SOURCE):
  a folder of <prompt_id>.mp4 files, or a JSONL file of Sample records as sink.jsonl writes them for
  a sample.t2v node (prompt_id, video_blob, settings.prompt; blobs are read from --store).

Results (on the page at /results, or --results here):
  per criterion the counts of A wins / both lose / B wins (every rater's rating counts once);
  WE per model = share of its videos rated Moderate or Severe by a majority of the --raters panel
  (2 of 3), among its videos rated by at least that many raters; Cohen's kappa (unweighted) for
  every pair of raters over the items both rated, per criterion and on the warping levels
  (\"undefined\" when both raters used one and the same category throughout).

Access: the server binds 127.0.0.1 and prints a URL with a random 128-bit token; every request
without it is refused (403). Share the URL only with the raters.

Examples:
  medgen review --store runs/eval --model medgen=runs/eval/outputs/samples.jsonl \\
      --model baseline=videos/baseline --prompts prompts.jsonl
  medgen review --store runs/eval --model medgen --model baseline --results";

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// The run store: its catalog keeps the ratings; blob keys of JSONL sources resolve in it.
    #[arg(long)]
    pub store: PathBuf,
    /// `NAME=SOURCE`, exactly twice (model A, then model B). SOURCE: a folder of `<prompt_id>.mp4` or a
    /// sink.jsonl file of samples. With --results only NAME is needed.
    #[arg(long = "model", value_name = "NAME=SOURCE", required = true, num_args = 1)]
    pub models: Vec<String>,
    /// Prompt texts: `.jsonl` rows `{"id": .., "prompt": ..}`, as source.prompts reads them. Needed
    /// when the sources do not carry the text (folders of MP4s).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. Binding a non-loopback address exposes the page
    /// to the network (still token-protected).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Raters per video in the panel; WE counts a video as an error when a majority of them
    /// (raters/2 + 1) rate it Moderate or Severe.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub raters: u64,
    /// Seed of the left/right order per (rater, pair); default: random (printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the results (from the catalog) and exit instead of serving the page.
    #[arg(long)]
    pub results: bool,
    /// With --results: print JSON instead of tables.
    #[arg(long, requires = "results")]
    pub json: bool,
    /// Worker threads of the web server.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub threads: u64,
}

fn split_model(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('=') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    }
}

pub fn review(a: &ReviewArgs) -> anyhow::Result<i32> {
    if a.models.len() != 2 {
        anyhow::bail!(
            "give exactly two --model NAME=SOURCE (model A and model B), got {}; pairwise review compares two models",
            a.models.len()
        );
    }
    let specs: Vec<(&str, Option<&str>)> = a.models.iter().map(|m| split_model(m)).collect();
    for (name, _) in &specs {
        review::check_model_name(name)?;
    }
    if a.results && !a.store.join(medgen::store::CATALOG_FILE).is_file() {
        anyhow::bail!(
            "{} is not a run store (no catalog.sqlite); nothing was rated there — check --store",
            a.store.display()
        );
    }
    let store = Store::open(&a.store).with_context(|| format!("opening the run store {}", a.store.display()))?;
    if a.results {
        let r = review::results(&store, specs[0].0, specs[1].0, a.raters, 0)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_results(&r);
        }
        return Ok(0);
    }
    let mut models = Vec::new();
    for (name, source) in &specs {
        let Some(source) = source.filter(|s| !s.is_empty()) else {
            anyhow::bail!("--model {name}: give NAME=SOURCE (a folder of <prompt_id>.mp4 or a sink.jsonl file)");
        };
        models.push(review::load_model(&store, name, &PathBuf::from(source))?);
    }
    let prompts: BTreeMap<String, String> = match &a.prompts {
        Some(p) => medgen_operators::source::prompts::read_prompts(p)
            .map_err(review::ReviewError::Prompts)?
            .into_iter()
            .collect(),
        None => BTreeMap::new(),
    };
    let mut loaded = models.into_iter();
    let (Some(model_a), Some(model_b)) = (loaded.next(), loaded.next()) else {
        anyhow::bail!("give exactly two --model NAME=SOURCE");
    };
    for (m, other) in [(&model_a, &model_b), (&model_b, &model_a)] {
        let only: Vec<&str> = m.videos.keys().filter(|k| !other.videos.contains_key(*k)).map(String::as_str).collect();
        if !only.is_empty() {
            eprintln!(
                "note: {} prompt id(s) only `{}` has are left out (no pair): {}",
                only.len(),
                m.name,
                only.iter().take(8).copied().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let seed = match a.seed {
        Some(s) => s,
        None => u64::from_le_bytes(review::server::random_bytes::<8>()?),
    };
    let store = Arc::new(store);
    let key = review::server::random_bytes::<32>()?;
    let session = Review::new(store, model_a, model_b, &prompts, ReviewOptions { raters: a.raters, seed }, key)?;
    if !a.bind.ip().is_loopback() {
        eprintln!(
            "warning: --bind {} exposes the review page beyond this machine; anyone with the URL (token) can \
             rate. Prefer 127.0.0.1 and an SSH tunnel.",
            a.bind
        );
    }
    let [name_a, name_b] = session.models().clone();
    let pairs = session.prompt_ids().len();
    let token = review::server::new_token()?;
    let threads = usize::try_from(a.threads).unwrap_or(8);
    let server = Server::start(Arc::new(session), a.bind, token, threads)?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.send(());
    }) {
        tracing::warn!("cannot install the interrupt handler: {e}");
    }
    println!(
        "review: {pairs} pair(s), model A = {name_a}, model B = {name_b}, panel of {} raters, seed {seed}",
        a.raters
    );
    println!("rate: {}", server.url());
    println!("results: {}", server.results_url());
    println!("serving until Ctrl-C");
    // Wait for Ctrl-C / SIGTERM (or a failed handler: then serve forever).
    let _ = rx.recv();
    eprintln!("\nmedgen review: stopping; the ratings are in {}", a.store.join("catalog.sqlite").display());
    server.shutdown();
    Ok(0)
}

fn print_results(r: &Results) {
    let [a, b] = &r.models;
    println!("Pairwise comparison: A = {a}, B = {b}; raters: {}", r.raters.join(", "));
    let mut t =
        vec![["criterion".to_string(), format!("{a} wins"), "both lose".into(), format!("{b} wins"), "n".into()]];
    for (c, label) in r.counts.iter().zip(&r.criterion_labels) {
        t.push([
            label.clone(),
            c.a_wins.to_string(),
            c.both_lose.to_string(),
            c.b_wins.to_string(),
            c.total().to_string(),
        ]);
    }
    print!("{}", medgen::runtime::render_table(&t));
    println!("\nWarping errors ({})", r.warping_rule);
    let mut t = vec![["model".to_string(), "WE".into(), "errors".into(), "judged".into()]];
    for w in &r.warping {
        let rate = w.rate.map_or("undefined".into(), |x| format!("{:.1}%", 100.0 * x));
        t.push([w.model.clone(), rate, w.errors.to_string(), w.judged.to_string()]);
    }
    print!("{}", medgen::runtime::render_table(&t));
    println!("\nCohen's kappa (unweighted; undefined when both raters used a single category throughout)");
    if r.agreement.is_empty() {
        println!("needs at least two raters");
        return;
    }
    let mut t = vec![["rater 1".to_string(), "rater 2".into(), "scale".into(), "n".into(), "kappa".into()]];
    for g in &r.agreement {
        let k = g.kappa.kappa.map_or("undefined".into(), |k| format!("{k:.3}"));
        t.push([g.rater_1.clone(), g.rater_2.clone(), g.scale.clone(), g.kappa.n.to_string(), k]);
    }
    print!("{}", medgen::runtime::render_table(&t));
}
