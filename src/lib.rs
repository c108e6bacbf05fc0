//! medgen's engine: graph files (parse, validate, plan), the timely runtime, the run store and the
//! command line. Operators live in `medgen-operators` and are known only through its registry.

pub mod graph;
pub mod review;
pub mod runtime;
pub mod store;

pub use medgen_operators as operators;
