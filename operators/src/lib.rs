//! medgen's operators, one module per operator, grouped by stage, plus the registry the engine
//! builds graphs from.

pub mod api;
pub mod caption;
pub mod curate;
pub mod eval;
pub mod latent;
pub mod onnx;
pub mod registry;
#[cfg(feature = "video")]
pub mod sample;
pub mod sink;
pub mod source;
#[cfg(feature = "video")]
pub mod train;
pub mod video;
