//! Evaluation: Med-VBench dimensions as operators (`eval.vbench`) and a checkpoint gate (`eval.gate`).

pub mod gate;
pub mod op;
pub mod vbench;
