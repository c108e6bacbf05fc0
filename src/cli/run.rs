//! `medgen run` and `medgen explain`.

use super::check::load_or_report;
use super::store_dir;
use anyhow::Context;
use clap::Args;
use medgen::graph::Plan;
use medgen::runtime::{self, RunOptions, RunSummary, progress::ProgressMode};
use medgen::store::{Marking, RunInfo, RunStatus, Store};
use medgen_operators::api::{RunSettings, Services};
use medgen_operators::registry::Registry;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The graph file to run.
    pub graph: PathBuf,
    /// Worker threads per process (1–1024; expensive items run on per-node pools, not on these).
    #[arg(short = 'w', long, default_value_t = 1, value_parser = workers_in_range)]
    pub workers: usize,
    /// Processes in the cluster (each started with the same arguments and its own --process).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster, 0-based.
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, one line per process (cluster mode).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Run directory (catalog, blobs, memo cache, outputs). Default: the graph's `store`, else
    /// runs/<graph name>.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// No progress display and no summary table.
    #[arg(short, long)]
    pub quiet: bool,
    /// Progress as plain lines every N seconds instead of live bars.
    #[arg(long, value_name = "SECONDS")]
    pub progress_lines: Option<u64>,
    /// Stop after this many epochs (bounds a watch-mode run).
    #[arg(long)]
    pub max_epochs: Option<u64>,
    /// Also write the run summary (per-node counts, memo hits) as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

impl RunArgs {
    pub fn progress_mode(&self) -> ProgressMode {
        if self.quiet {
            ProgressMode::Quiet
        } else if let Some(n) = self.progress_lines {
            ProgressMode::Lines(n)
        } else {
            ProgressMode::Auto
        }
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The graph file.
    pub graph: PathBuf,
    /// Run directory to compare against (default as for `medgen run`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Worker threads a run would use.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
}

/// `-w`: 1 to 1024 worker threads (each is a timely worker with its own share of every operator).
fn workers_in_range(v: &str) -> Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("`{v}` is not a number of workers: {e}"))?;
    if (1..=1024).contains(&n) { Ok(n) } else { Err(format!("{n} workers: use 1 to 1024 (e.g. the number of cores)")) }
}

fn settings(plan: &Plan) -> RunSettings {
    RunSettings {
        max_attempts: plan.header.max_attempts,
        quarantine_after: plan.header.quarantine_after,
        item_timeout_s: plan.header.item_timeout_s,
        dry_run: false,
        max_epochs: None,
    }
}

fn install_signal_handler(shutdown: Arc<AtomicBool>) {
    let result = ctrlc::set_handler(move || {
        if shutdown.swap(true, Ordering::SeqCst) {
            eprintln!("\nmedgen: stopped at once (second interrupt); committed work is kept");
            std::process::exit(130);
        }
        eprintln!("\nmedgen: stopping — in-flight items finish and are committed (interrupt again to stop at once)");
    });
    if let Err(e) = result {
        tracing::warn!("cannot install the interrupt handler: {e}");
    }
}

pub fn run(a: &RunArgs) -> anyhow::Result<i32> {
    let registry = Arc::new(Registry::builtin());
    let plan = match load_or_report(&a.graph, &registry) {
        Ok(p) => Arc::new(p),
        Err(code) => return Ok(code),
    };
    let dir = store_dir(&plan, a.store.as_ref());
    let store = Arc::new(Store::open(&dir).with_context(|| format!("opening the run store {}", dir.display()))?);
    let _lock = store.lock_run(a.process, &format!("running {}", a.graph.display()))?;
    let base_epoch = store.next_epoch().context("reading the catalog")?;
    let run_id = store
        .begin_run(&RunInfo {
            graph_path: plan.path.clone(),
            graph_name: plan.header.name.clone(),
            graph_hash: plan.source_hash.clone(),
            process_index: a.process,
            processes: a.processes,
            argv: std::env::args().collect(),
        })
        .context("recording the run in the catalog")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    install_signal_handler(shutdown.clone());
    let mut settings = settings(&plan);
    settings.max_epochs = a.max_epochs;
    let opts = RunOptions {
        workers: a.workers,
        processes: a.processes,
        process: a.process,
        hostfile: a.hostfile.clone(),
        settings,
        progress: a.progress_mode(),
    };
    tracing::info!(graph = %plan.path.display(), store = %dir.display(), base_epoch, "run started");
    let services: Arc<dyn Services> = store.clone();
    match runtime::run(plan.clone(), registry, services, base_epoch, &opts, shutdown) {
        Ok(summary) => {
            let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
            let status = if summary.interrupted { RunStatus::Interrupted } else { RunStatus::Succeeded };
            store.finish_run(run_id, status, &json).context("recording the end of the run")?;
            if let Some(p) = &a.summary_json {
                medgen_operators::api::fsutil::atomic_write(p, json.as_bytes())
                    .with_context(|| format!("writing the summary to {}", p.display()))?;
            }
            if !a.quiet {
                report(&summary, &dir);
            }
            let unwritten: u64 = summary.nodes.iter().map(|n| n.write_errors).sum();
            if unwritten > 0 {
                let nodes: Vec<&str> =
                    summary.nodes.iter().filter(|n| n.write_errors > 0).map(|n| n.node.as_str()).collect();
                eprintln!(
                    "error: {unwritten} output write(s) failed ({}): see the errors above; what was written before is intact",
                    nodes.join(", ")
                );
                return Ok(1);
            }
            Ok(0)
        }
        Err(e) => {
            let _ = store.finish_run(run_id, RunStatus::Failed, &format!("{{\"error\": {:?}}}", e.to_string()));
            Err(anyhow::Error::new(e).context(format!("running {}", plan.path.display())))
        }
    }
}

fn report(summary: &RunSummary, dir: &std::path::Path) {
    eprint!("{}", runtime::summary_table(summary));
    let failed = summary.failed_items();
    let state = if summary.interrupted { "stopped" } else { "finished" };
    eprintln!("{state} in {:.1}s; {} memo hits; store {}", summary.wall_s, summary.memo_hits(), dir.display());
    if failed > 0 {
        eprintln!("{failed} item(s) failed and were recorded: `medgen failures --store {}` lists them", dir.display());
    }
}

/// A dry run of `plan` against `services` (what `explain` shows and `store gc` marks): every
/// memoised node answers from the memo cache or counts a miss; nothing is computed, no view or
/// dataset is written.
pub(super) fn dry_run(
    plan: &Arc<Plan>,
    registry: &Arc<Registry>,
    services: Arc<dyn Services>,
    base_epoch: u64,
    workers: usize,
) -> anyhow::Result<RunSummary> {
    let mut settings = settings(plan);
    settings.dry_run = true;
    let opts =
        RunOptions { workers, processes: 1, process: 0, hostfile: None, settings, progress: ProgressMode::Quiet };
    runtime::run(plan.clone(), registry.clone(), services, base_epoch, &opts, Arc::new(AtomicBool::new(false)))
        .with_context(|| format!("dry run of {}", plan.path.display()))
}

pub fn explain(a: &ExplainArgs) -> anyhow::Result<i32> {
    let registry = Arc::new(Registry::builtin());
    let plan = match load_or_report(&a.graph, &registry) {
        Ok(p) => Arc::new(p),
        Err(code) => return Ok(code),
    };
    let dir = store_dir(&plan, a.store.as_ref());
    // Never create a store just to explain: compare against an empty one instead.
    let scratch;
    let store_path = if dir.join("catalog.sqlite").exists() {
        dir.clone()
    } else {
        scratch = tempfile::tempdir().context("creating a scratch folder")?;
        scratch.path().to_path_buf()
    };
    let store = Arc::new(Store::open(&store_path).with_context(|| format!("opening the run store {}", dir.display()))?);
    let base_epoch = store.next_epoch()?;
    // Through the marking view: nothing is written, and what the graph reads is known.
    let marking = Arc::new(Marking::new(store.clone()));
    let summary = dry_run(&plan, &registry, marking.clone(), base_epoch, a.workers)?;
    println!("plan for {} (store {}, next epoch {base_epoch})", plan.path.display(), dir.display());
    let mut rows = vec![[
        "node".to_string(),
        "operator".into(),
        "inputs".into(),
        "parallelism".into(),
        "from cache".into(),
        "to compute".into(),
        "note".into(),
    ]];
    let mut pending_upstream: BTreeSet<String> = BTreeSet::new();
    for (n, s) in plan.nodes.iter().zip(&summary.nodes) {
        let spec = registry.get(n.op).map(|o| o.spec());
        let is_source = spec.as_ref().is_some_and(|s| s.is_source);
        let is_sink = spec.as_ref().is_some_and(|s| s.is_sink);
        let inputs: Vec<String> = n
            .inputs
            .iter()
            .map(|(_, i)| if i.port == "out" { i.node.clone() } else { format!("{}.{}", i.node, i.port) })
            .collect();
        let upstream_unknown = n.inputs.iter().any(|(_, i)| pending_upstream.contains(&i.node));
        if s.memo_misses > 0 || upstream_unknown {
            pending_upstream.insert(n.name.clone());
        }
        let parallelism = if is_sink {
            "1 (worker 0)".to_string()
        } else if is_source {
            format!("scan on worker 0, {} worker(s)", a.workers)
        } else {
            format!("{} worker(s)", a.workers)
        };
        let mut note = String::new();
        if is_sink {
            note.push_str(&format!("rewrites its view ({} rows now)", s.items_in));
        } else if s.memo_misses == 0 && !upstream_unknown {
            note.push_str("nothing to compute");
        }
        if upstream_unknown {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str("plus whatever new upstream items produce");
        }
        rows.push([
            n.name.clone(),
            n.op.to_string(),
            if inputs.is_empty() { "-".into() } else { inputs.join(", ") },
            parallelism,
            s.memo_hits.to_string(),
            s.memo_misses.to_string(),
            note,
        ]);
    }
    print!("{}", runtime::render_table(&rows));
    if store_path == dir {
        let (live, live_blobs) = marking.marked();
        let live_nodes: std::collections::HashSet<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        let policy = medgen::store::GcPolicy {
            live: &live,
            live_blobs: &live_blobs,
            live_nodes: &live_nodes,
            keep_younger_than: std::time::Duration::ZERO,
        };
        let unused = store.gc_plan(&policy)?;
        if !unused.memo_drop.is_empty() || !unused.blobs_drop.is_empty() {
            println!(
                "the store also holds {} memo entries and {} blobs ({}) this graph does not use (other settings, \
                 other graphs): `medgen store gc {} --dry-run` lists them",
                unused.memo_drop.len(),
                unused.blobs_drop.len(),
                indicatif::HumanBytes(unused.bytes_freed + unused.bytes_still_linked),
                plan.path.display()
            );
        }
    }
    Ok(0)
}
