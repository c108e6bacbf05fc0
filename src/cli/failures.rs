//! `medgen failures` and `medgen retry`.

use super::check::load_or_report;
use super::store_dir;
use anyhow::Context;
use clap::{Args, ValueEnum};
use medgen::store::{FailureFilter, Store};
use medgen_operators::registry::Registry;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// A graph file whose run store to use.
    #[arg(conflicts_with = "store", required_unless_present = "store")]
    pub graph: Option<PathBuf>,
    /// The run directory.
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    /// The store, or the exit code of a graph file that could not be read (already reported).
    pub(super) fn open(&self) -> anyhow::Result<Result<Store, i32>> {
        let dir = match (&self.store, &self.graph) {
            (Some(s), _) => s.clone(),
            (None, Some(g)) => {
                let registry = Registry::builtin();
                match load_or_report(g, &registry) {
                    Ok(plan) => store_dir(&plan, None),
                    Err(code) => return Ok(Err(code)),
                }
            }
            (None, None) => anyhow::bail!("give a graph file or --store DIR"),
        };
        if !dir.join("catalog.sqlite").exists() {
            anyhow::bail!(
                "{} is not a run store (no catalog.sqlite); run the graph first or fix --store",
                dir.display()
            );
        }
        Ok(Ok(Store::open(&dir).with_context(|| format!("opening the run store {}", dir.display()))?))
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct FailuresArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only failures of this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only quarantined items.
    #[arg(long)]
    pub quarantined: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Re-admit quarantined items (required: says what is retried).
    #[arg(long, required = true)]
    pub quarantined: bool,
    /// Only items of this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this item id (as `medgen failures` prints it).
    #[arg(long)]
    pub item: Option<String>,
}

pub fn failures(a: &FailuresArgs) -> anyhow::Result<i32> {
    let store = match a.store.open()? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rows = store.failures(&FailureFilter { node: a.node.clone(), quarantined_only: a.quarantined })?;
    match a.format {
        Format::Json => {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        }
        Format::Table => {
            if rows.is_empty() {
                println!("no failures recorded");
                return Ok(0);
            }
            let mut table = vec![[
                "node".to_string(),
                "item".into(),
                "class".into(),
                "attempts".into(),
                "quarantined".into(),
                "message".into(),
            ]];
            for r in &rows {
                table.push([
                    r.node.clone(),
                    r.item.clone(),
                    r.class.clone(),
                    r.attempts.to_string(),
                    if r.quarantined { "yes".into() } else { "no".into() },
                    r.message.clone(),
                ]);
            }
            print!("{}", medgen::runtime::render_table(&table));
        }
    }
    Ok(0)
}

pub fn retry(a: &RetryArgs) -> anyhow::Result<i32> {
    let store = match a.store.open()? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let n = store.retry_quarantined(a.node.as_deref(), a.item.as_deref())?;
    println!("{n} quarantined item(s) re-admitted; the next run tries them again");
    Ok(0)
}
