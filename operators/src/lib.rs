//! medgen's operators, one module per operator, grouped by stage, plus the registry the engine
//! builds graphs from.

pub mod api;
pub mod caption;
pub mod curate;
pub mod onnx;
pub mod registry;
pub mod sink;
pub mod source;
pub mod video;
