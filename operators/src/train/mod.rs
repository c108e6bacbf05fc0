//! train: flow-matching training of the Wan-architecture DiT as a dataflow stage.
//!
//! * [`flow_matching`]: the `train.flow_matching` operator — incremental training rounds, one per
//!   completed epoch of new latents, each ending in a checkpoint.
//! * [`checkpoint`]: the checkpoint folder it writes and samplers read.

pub mod checkpoint;
pub mod flow_matching;
