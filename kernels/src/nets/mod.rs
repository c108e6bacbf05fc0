//! Model networks built from [`crate::ops`]: each file holds one network — its config (parsed
//! from the reference `config.json` names), its weights (loaded through [`crate::io`]) and its
//! forward pass (and, for the trained DiT, its backward pass).

pub mod minilm;
pub mod rife;
pub mod tokenizer;
pub mod transnetv2;
pub mod umt5;
pub mod wan_dit;
pub mod wan_vae;
