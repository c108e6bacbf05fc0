//! Sinks: nodes that turn collections into files, one consistent snapshot per completed epoch.

#[cfg(feature = "video")]
pub mod dataset;
pub mod jsonl;
pub mod parquet;
pub mod report;

/// Whether a view must be written although no record changed: once per run, when the run's first
/// epoch (`base_epoch`) has completed or the input has finished. A view that this run leaves
/// empty then still replaces the file an earlier run wrote (in a watching run the input never
/// finishes, so waiting for that would keep the stale file for good).
pub fn first_write_due(
    wrote_once: bool,
    frontier: &timely::progress::frontier::MutableAntichain<u64>,
    base_epoch: u64,
) -> bool {
    !wrote_once && (frontier.is_empty() || !frontier.less_equal(&base_epoch))
}
