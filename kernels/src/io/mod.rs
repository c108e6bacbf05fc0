//! Checkpoint I/O: safetensors loading (single files and sharded checkpoints), PyTorch zip
//! checkpoints ([`pth`], a restricted unpickler), the
//! [`TensorSource`] abstraction networks load weights through, and the Wan DiT key mappings.

pub mod pth;
pub mod safetensors;
pub mod source;
pub mod wan_keys;

pub use source::{Prefixed, TensorSource};
