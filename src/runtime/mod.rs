//! The timely runtime.
