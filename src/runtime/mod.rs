//! The timely runtime: executes a validated plan on worker threads (and processes), with epochs as
//! timestamps, per-node progress and a final summary.

pub mod dataflow;
pub mod progress;

use crate::graph::Plan;
use medgen_operators::api::{NodeStats, REJECTED_PORT, RunSettings, Services};
use medgen_operators::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How to execute: threads, processes, and what to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes in the cluster (1 = this process only).
    pub processes: usize,
    /// This process's index in the cluster.
    pub process: usize,
    /// `host:port` per line, one per process (required when processes > 1).
    pub hostfile: Option<PathBuf>,
    pub settings: RunSettings,
    pub progress: progress::ProgressMode,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read the hostfile {path}: {source}")]
    Hostfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "hostfile {path} lists {found} addresses but --processes is {expected}; give one host:port line per process"
    )]
    HostfileCount { path: PathBuf, found: usize, expected: usize },
    #[error("--process {process} is out of range for --processes {processes}; use 0..{processes}")]
    ProcessIndex { process: usize, processes: usize },
    #[error("--processes {0} needs --hostfile FILE with one host:port line per process")]
    NoHostfile(usize),
    #[error("cannot start the workers: {0}")]
    Start(String),
    #[error("building the dataflow failed: {0}")]
    Build(String),
    #[error("a worker failed: {0}")]
    Worker(String),
}

/// Final per-node counts of a run (this process's share in cluster mode).
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub node: String,
    pub op: String,
    pub items_in: u64,
    pub items_out: u64,
    pub failed: u64,
    pub retracted: u64,
    /// Net records its `rejected` port holds at the end (`None`: the operator has no such port).
    pub rejected: Option<u64>,
    /// Outputs (views, datasets, reports) it could not write.
    pub write_errors: u64,
    pub memo_hits: u64,
    pub memo_misses: u64,
    pub busy_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub graph: String,
    pub epochs_from: u64,
    pub wall_s: f64,
    pub interrupted: bool,
    pub nodes: Vec<NodeSummary>,
}

impl RunSummary {
    pub fn failed_items(&self) -> u64 {
        self.nodes.iter().map(|n| n.failed).sum()
    }
    pub fn memo_hits(&self) -> u64 {
        self.nodes.iter().map(|n| n.memo_hits).sum()
    }
}

fn timely_config(opts: &RunOptions) -> Result<timely::Config, RuntimeError> {
    use timely::CommunicationConfig;
    let workers = opts.workers.max(1);
    if opts.processes <= 1 {
        return Ok(timely::Config { communication: CommunicationConfig::Process(workers), worker: Default::default() });
    }
    if opts.process >= opts.processes {
        return Err(RuntimeError::ProcessIndex { process: opts.process, processes: opts.processes });
    }
    let path = opts.hostfile.clone().ok_or(RuntimeError::NoHostfile(opts.processes))?;
    let text =
        std::fs::read_to_string(&path).map_err(|source| RuntimeError::Hostfile { path: path.clone(), source })?;
    let addresses: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if addresses.len() != opts.processes {
        return Err(RuntimeError::HostfileCount { path, found: addresses.len(), expected: opts.processes });
    }
    Ok(timely::Config {
        communication: CommunicationConfig::Cluster {
            threads: workers,
            process: opts.process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: Default::default(),
    })
}

/// Execute `plan` against `services` until every source is exhausted (or a stop is requested).
pub fn run(
    plan: Arc<Plan>,
    registry: Arc<Registry>,
    services: Arc<dyn Services>,
    base_epoch: u64,
    opts: &RunOptions,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary, RuntimeError> {
    let config = timely_config(opts)?;
    let stats: BTreeMap<String, Arc<NodeStats>> =
        plan.nodes.iter().map(|n| (n.name.clone(), Arc::new(NodeStats::default()))).collect();
    let shared = Arc::new(dataflow::BuildShared {
        plan: plan.clone(),
        registry,
        services,
        stats: stats.clone(),
        settings: opts.settings.clone(),
        base_epoch,
        shutdown: shutdown.clone(),
    });
    let reporter = progress::Reporter::start(opts.progress, &plan, &stats);
    let started = Instant::now();
    let worker_shared = shared.clone();
    let guards = timely::execute(config, move |worker| -> Result<(), String> {
        let shared = worker_shared.clone();
        let built = worker.dataflow::<u64, _, _>(|scope| dataflow::build(scope, &shared));
        built?;
        while worker.step_or_park(Some(Duration::from_millis(100))) {}
        Ok(())
    })
    .map_err(RuntimeError::Start)?;
    let mut first_error = None;
    for result in guards.join() {
        let err = match result {
            Ok(Ok(())) => continue,
            Ok(Err(build)) => RuntimeError::Build(build),
            Err(panic) => RuntimeError::Worker(panic),
        };
        // Ask the other workers to wind down too.
        shutdown.store(true, Ordering::Relaxed);
        first_error.get_or_insert(err);
    }
    reporter.finish();
    if let Some(e) = first_error {
        return Err(e);
    }
    let nodes = plan
        .nodes
        .iter()
        .map(|n| {
            let s = &stats[&n.name];
            NodeSummary {
                node: n.name.clone(),
                op: n.op.to_string(),
                items_in: NodeStats::get(&s.items_in),
                items_out: NodeStats::get(&s.items_out),
                failed: NodeStats::get(&s.failed),
                retracted: NodeStats::get(&s.retracted),
                rejected: n
                    .out_kinds
                    .contains_key(REJECTED_PORT)
                    .then(|| s.rejected.load(Ordering::Relaxed).max(0) as u64),
                write_errors: NodeStats::get(&s.write_errors),
                memo_hits: NodeStats::get(&s.memo_hits),
                memo_misses: NodeStats::get(&s.memo_misses),
                busy_s: NodeStats::get(&s.busy_ns) as f64 / 1e9,
            }
        })
        .collect();
    Ok(RunSummary {
        graph: plan.header.name.clone(),
        epochs_from: base_epoch,
        wall_s: started.elapsed().as_secs_f64(),
        interrupted: shutdown.load(Ordering::Relaxed),
        nodes,
    })
}

/// The end-of-run table, one row per node.
pub fn summary_table(s: &RunSummary) -> String {
    let mut rows = vec![[
        "node".to_string(),
        "operator".into(),
        "in".into(),
        "out".into(),
        "rejected".into(),
        "failed".into(),
        "retracted".into(),
        "memo hits".into(),
        "computed".into(),
        "busy s".into(),
    ]];
    for n in &s.nodes {
        rows.push([
            n.node.clone(),
            n.op.clone(),
            n.items_in.to_string(),
            n.items_out.to_string(),
            n.rejected.map_or_else(|| "-".to_string(), |r| r.to_string()),
            n.failed.to_string(),
            n.retracted.to_string(),
            n.memo_hits.to_string(),
            n.memo_misses.to_string(),
            format!("{:.2}", n.busy_s),
        ]);
    }
    render_table(&rows)
}

/// Left-aligned text columns, numbers right-aligned.
pub fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let numeric = ri > 0 && (c == "-" || c.chars().all(|ch| ch.is_ascii_digit() || ch == '.'));
            if numeric {
                line.push_str(&format!("{:>w$}  ", c, w = widths[i]));
            } else {
                line.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
