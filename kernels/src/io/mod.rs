//! Checkpoint I/O: safetensors loading (single files and sharded checkpoints), the
//! [`TensorSource`] abstraction networks load weights through, and the Wan DiT key mappings.

pub mod safetensors;
pub mod source;
pub mod wan_keys;

pub use source::{Prefixed, TensorSource};
