//! Command-line definitions (clap) and dispatch. Each subcommand lives in its own file.

mod bench;
mod check;
mod classifier;
mod doctor;
mod failures;
mod ops;
mod review;
mod run;
#[cfg(feature = "video")]
mod sample;
mod store;
mod store_gc;
mod verify;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit code for an invalid graph file (sysexits EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

const ABOUT: &str = "medgen — a streaming dataflow engine for medical text-to-video.

Declare a pipeline as a graph file (TOML: a [graph] table and one [nodes.NAME] table per operator),
then run it. Every node's work is memoised in the run store, so a re-run or a restart after a crash
recomputes only what is new; with `watch = true` sources keep ingesting new files as new epochs.";

const AFTER: &str = "Start here:
  medgen ops                         list the operators, then `medgen ops source.files` for one
  medgen check graphs/demo.toml      validate a graph file (exit 78 when invalid)
  medgen explain graphs/demo.toml    see what a run would compute and what comes from the cache
  medgen run graphs/demo.toml        run it (-w 2 for two worker threads)
  medgen failures --store runs/demo  what failed, and why

Exit codes: 0 success, 1 run failed, 2 usage error, 78 invalid graph file.";

#[derive(Parser, Debug)]
#[command(name = "medgen", version = version(), about = ABOUT, after_help = AFTER, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level filter (e.g. `info`, `medgen=debug`); RUST_LOG overrides it.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Execute a graph file.
    ///
    /// Runs until every source is exhausted (or, with `watch = true` sources, until Ctrl-C / SIGTERM,
    /// which lets in-flight items finish and commits what is done). Items that fail are recorded and
    /// the run goes on; see `medgen failures`.
    ///
    /// Cluster mode: start the same command once per process with `--processes P --process I
    /// --hostfile F` (F lists one host:port per process).
    Run(run::RunArgs),
    /// Validate graph files: syntax, operators, params, edges, cycles, port kinds. Exit 78 if invalid.
    Check(check::CheckArgs),
    /// List operators, or show one operator's ports and params (generated from the code).
    Ops(ops::OpsArgs),
    /// Draw a graph file as Graphviz dot or Mermaid.
    Graph(check::GraphArgs),
    /// Show the plan: per node its operator and parallelism, and what a run would recompute versus
    /// take from the memo cache. Computes nothing, writes nothing.
    Explain(run::ExplainArgs),
    /// List per-item failures recorded in a run store.
    Failures(failures::FailuresArgs),
    /// Re-admit quarantined items so the next run tries them again.
    Retry(failures::RetryArgs),
    /// Look after a run store: `medgen store verify` re-hashes its blobs against their names,
    /// `medgen store gc` removes what no graph uses any more.
    Store(store::StoreCmdArgs),
    /// Check this machine: GStreamer, H.264 encoders, ONNX Runtime, GPU driver, sample videos.
    Doctor(doctor::DoctorArgs),
    /// Benchmarks against baselines in the same run (e.g. `medgen bench decode` against gst-launch-1.0).
    Bench(bench::BenchArgs),
    /// Run reference fixtures (made with torch/diffusers from random tiny configs) through medgen's
    /// own networks and samplers; print max abs / rel errors; exit 0 within tolerance.
    Verify(verify::VerifyArgs),
    /// Train the embedding classifier of curate.metadata_filter from labelled metadata
    /// (`medgen classifier train --help`).
    Classifier(classifier::ClassifierArgs),
    /// One prompt → one MP4 from a checkpoint folder that train.flow_matching wrote, or a diffusers
    /// Wan2.1 pipeline folder.
    #[cfg(feature = "video")]
    Sample(sample::SampleArgs),
    /// Doctors rate two models' videos blind, pairwise, in a local web page (text alignment, medical
    /// accuracy, visual quality, warping errors); `--results` prints the counts, WE and Cohen's kappa.
    #[command(after_help = review::AFTER)]
    Review(review::ReviewArgs),
}

fn version() -> &'static str {
    if cfg!(feature = "video") {
        concat!(env!("CARGO_PKG_VERSION"), " (features: video)")
    } else {
        concat!(env!("CARGO_PKG_VERSION"), " (features: none — built without GStreamer video operators)")
    }
}

/// Where a graph's run store lives: `--store`, else the graph's `store` key (relative to the graph
/// file), else `runs/<graph name>` in the current folder.
pub fn store_dir(plan: &medgen::graph::Plan, flag: Option<&PathBuf>) -> PathBuf {
    if let Some(f) = flag {
        return f.clone();
    }
    match &plan.header.store {
        Some(s) => plan.base_dir.join(s),
        None => PathBuf::from("runs").join(&plan.header.name),
    }
}

fn init_logging(cli: &Cli, quiet_default: bool) {
    use tracing_subscriber::EnvFilter;
    let default = cli.log_level.clone().unwrap_or_else(|| if quiet_default { "warn".into() } else { "info".into() });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Parse the command line and run it; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let quiet_logs = match &cli.command {
        Command::Run(a) => a.quiet || a.progress_mode().draws_bars(),
        _ => true,
    };
    init_logging(&cli, quiet_logs);
    let result = match &cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::check(a),
        Command::Ops(a) => ops::ops(a),
        Command::Graph(a) => check::graph(a),
        Command::Explain(a) => run::explain(a),
        Command::Failures(a) => failures::failures(a),
        Command::Retry(a) => failures::retry(a),
        Command::Store(a) => store::store(a),
        Command::Doctor(a) => doctor::doctor(a),
        Command::Bench(a) => bench::bench(a),
        Command::Verify(a) => verify::verify(a),
        Command::Classifier(a) => classifier::classifier(a),
        #[cfg(feature = "video")]
        Command::Sample(a) => sample::sample(a),
        Command::Review(a) => review::review(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
