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

/// Largest width (channels, heads, head size, vocabulary, …) a model config may declare: far above
/// any published model, low enough that the sizes, products and allocations derived from it cannot
/// overflow or exhaust memory before a single weight is read.
pub(crate) const MAX_WIDTH: usize = 1 << 20;
/// Largest layer count a model config may declare.
pub(crate) const MAX_LAYERS: usize = 4096;

/// Refuses config values above their bound (`(key, value, limit)`), naming the key.
pub(crate) fn check_bounds(model: &'static str, fields: &[(&str, usize, usize)]) -> crate::error::Result<()> {
    for &(key, value, limit) in fields {
        if value > limit {
            return Err(crate::error::Error::Config {
                model,
                msg: format!("`{key}` = {value} is implausibly large (at most {limit}): check config.json"),
            });
        }
    }
    Ok(())
}
