//! `medgen store gc`: drop the memo entries no graph of a store would read again, and the blobs
//! nothing refers to any more.

use super::check::load_or_report;
use super::run::dry_run;
use super::store_dir;
use anyhow::Context;
use clap::Args;
use indicatif::HumanBytes;
use medgen::store::{GcPolicy, Marking, Store};
use medgen_operators::api::Services;
use medgen_operators::registry::Registry;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const GC_AFTER: &str = "Every parameter change leaves results behind: the memo cache keeps what the old settings \
computed, and the blobs (clips, latents, checkpoints, samples) those entries refer to stay on disk, \
although no graph reads them again. gc keeps what the given graphs still use and removes the rest:

  1. Each graph is dry-run against the store (as `medgen explain` does): the memo entries it reads are live.
  2. Memo entries that are not live, and that no run wrote or read in the last --keep-days, are dropped:
     results of nodes no longer in the graphs, of old parameter values, and of inputs gone from the source
     folders. The caches a node reads only when it recomputes (curate.segment's per-frame scene scores,
     which make a threshold change cheap) stay while their node is in a graph.
  3. Blobs that no kept memo entry refers to (and not younger than --keep-days) are deleted, and the catalog
     is compacted.

Name every graph that writes to the store: entries only another graph reads are dropped otherwise. Nothing
under outputs/ is touched (datasets, views, checkpoint folders, training state), and a blob that a dataset
still hard-links keeps its bytes until the dataset lets it go. Whatever gc removes, a later run recomputes
if it needs it.

A graph whose dry run reads nothing from a store that holds entries of its nodes (an unmounted source
folder, a wrong graph) stops the collection, unless --force. Not while a run uses the store.

Examples:
  medgen store gc graphs/medgen.toml --dry-run      show what would go
  medgen store gc graphs/medgen.toml --keep-days 7  collect, sparing the last week's results
  medgen store gc --store runs/lab curate.toml train.toml";

#[derive(Args, Debug)]
pub struct GcArgs {
    /// The graph files that use the store; what their dry runs read from the memo cache is kept.
    #[arg(required = true)]
    pub graphs: Vec<PathBuf>,
    /// The run directory (default: the graphs' store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Keep memo entries a run wrote or read in the last this many days, and blobs written in
    /// them, whatever the graphs' dry runs read.
    #[arg(long, default_value_t = 0.0, value_parser = days)]
    pub keep_days: f64,
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Collect even when a graph's dry run reads nothing from the store.
    #[arg(long)]
    pub force: bool,
    /// Worker threads for the dry runs.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn days(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(d) if (0.0..1e6).contains(&d) => Ok(d),
        _ => Err(format!("`{v}` is not a number of days (0 or more, e.g. 7 or 0.5)")),
    }
}

pub fn gc(a: &GcArgs) -> anyhow::Result<i32> {
    let registry = Arc::new(Registry::builtin());
    let mut plans = Vec::new();
    for g in &a.graphs {
        match load_or_report(g, &registry) {
            Ok(p) => plans.push(Arc::new(p)),
            Err(code) => return Ok(code),
        }
    }
    let dir = match &a.store {
        Some(s) => s.clone(),
        None => {
            let dirs: BTreeSet<PathBuf> = plans.iter().map(|p| store_dir(p, None)).collect();
            if dirs.len() > 1 {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                anyhow::bail!(
                    "the graphs use different run stores ({}); collect one store at a time with --store DIR",
                    list.join(", ")
                );
            }
            dirs.into_iter().next().context("no graph given")?
        }
    };
    if !dir.join("catalog.sqlite").exists() {
        anyhow::bail!("{} is not a run store (no catalog.sqlite); run the graph first or fix --store", dir.display());
    }
    let store = Arc::new(Store::open(&dir).with_context(|| format!("opening the run store {}", dir.display()))?);
    // Collecting under a run could drop what it just read; a dry run only reports.
    let _lock =
        if a.dry_run { None } else { Some(store.lock_run(0, "medgen store gc").map_err(|e| anyhow::anyhow!("{e}"))?) };

    let per_node = store.memo_stats()?;
    let base_epoch = store.next_epoch()?;
    let (mut live, mut live_blobs) = (HashSet::new(), HashSet::new());
    for plan in &plans {
        let marking = Arc::new(Marking::new(store.clone()));
        let services: Arc<dyn Services> = marking.clone();
        let summary = dry_run(plan, &registry, services, base_epoch, a.workers.max(1))?;
        let (memo, blobs) = marking.marked();
        let held: u64 = plan.nodes.iter().filter_map(|n| per_node.get(&n.name)).sum();
        println!(
            "{}: the dry run reads {} memo entr{} ({} item(s) would be computed)",
            plan.path.display(),
            memo.len(),
            if memo.len() == 1 { "y" } else { "ies" },
            summary.nodes.iter().map(|n| n.memo_misses).sum::<u64>()
        );
        if memo.is_empty() && held > 0 && !a.force {
            anyhow::bail!(
                "the dry run of {} reads nothing from {}, which holds {held} memo entries of its nodes: are its \
                 input folders there? Nothing was removed; check with `medgen explain {}`, or pass --force to \
                 collect anyway",
                plan.path.display(),
                dir.display(),
                plan.path.display()
            );
        }
        live.extend(memo);
        live_blobs.extend(blobs);
    }

    let live_nodes: HashSet<String> = plans.iter().flat_map(|p| p.nodes.iter().map(|n| n.name.clone())).collect();
    let policy = GcPolicy {
        live: &live,
        live_blobs: &live_blobs,
        live_nodes: &live_nodes,
        keep_younger_than: Duration::from_secs_f64(a.keep_days * 86_400.0),
    };
    let plan = store.gc_plan(&policy)?;

    let mut rows = vec![["memo node".to_string(), "kept".into(), "to drop".into()]];
    for (node, n) in &plan.nodes {
        rows.push([node.clone(), n.kept.to_string(), n.dropped.to_string()]);
    }
    print!("{}", medgen::runtime::render_table(&rows));
    println!(
        "blobs: {} kept ({}), {} to delete ({} freed{})",
        plan.blobs_kept,
        HumanBytes(plan.bytes_kept),
        plan.blobs_drop.len(),
        HumanBytes(plan.bytes_freed),
        if plan.bytes_still_linked > 0 {
            format!("; {} more stay on disk while datasets link them", HumanBytes(plan.bytes_still_linked))
        } else {
            String::new()
        }
    );
    if plan.missing_refs > 0 {
        println!(
            "{} blob(s) that kept entries refer to are already gone; the next run recomputes those items",
            plan.missing_refs
        );
    }
    for s in &plan.strays {
        println!("not a blob (left as is): {}", s.display());
    }
    if a.dry_run {
        println!("dry run: nothing was removed");
        return Ok(0);
    }
    if plan.memo_drop.is_empty() && plan.blobs_drop.is_empty() {
        println!("nothing to collect");
        return Ok(0);
    }
    let total: u64 = plan.blobs_drop.iter().map(|b| b.len).sum();
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    if let Ok(style) = indicatif::ProgressStyle::with_template("deleting {bar:30} {bytes}/{total_bytes}") {
        bar.set_style(style);
    }
    let done = store.gc_apply(&plan, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    let catalog = store.catalog_path().to_path_buf();
    let size = || std::fs::metadata(&catalog).map(|m| m.len()).unwrap_or(0);
    let before = size();
    if done.memo_dropped > 0 {
        store.compact_catalog()?;
    }
    println!(
        "dropped {} memo entries, deleted {} blobs: {} freed (catalog {} → {})",
        done.memo_dropped,
        done.blobs_deleted,
        HumanBytes(done.bytes_freed),
        HumanBytes(before),
        HumanBytes(size())
    );
    Ok(0)
}
