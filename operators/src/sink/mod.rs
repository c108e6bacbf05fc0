//! Sinks: nodes that turn collections into files, one consistent snapshot per completed epoch.

#[cfg(feature = "video")]
pub mod dataset;
pub mod jsonl;
pub mod parquet;
pub mod report;
