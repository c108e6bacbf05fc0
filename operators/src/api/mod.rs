//! The operator API: records, operator specs, run-store services and the off-worker pool.
//! Operators see the engine only through this module.

pub mod device;
pub mod epochs;
pub mod fsutil;
pub mod loaded;
pub mod pool;
pub mod records;
pub mod services;
pub mod spec;

pub use epochs::{EpochView, on_epochs};
pub use pool::{ItemCtx, ItemError, PoolConfig, PoolItem, pool_map, pool_stage, split_failures};
pub use records::*;
pub use services::{FailureState, MemServices, MemoKey, ServiceError, Services};
pub use spec::*;
