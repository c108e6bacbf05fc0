//! Tensor runtime and model networks.
