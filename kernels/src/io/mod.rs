//! Checkpoint I/O: safetensors loading (single files and sharded checkpoints) and the Wan DiT
//! key mappings.

pub mod safetensors;
pub mod wan_keys;
