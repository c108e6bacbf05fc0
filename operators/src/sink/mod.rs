//! Sinks: nodes that turn collections into files, one consistent snapshot per completed epoch.

pub mod jsonl;
