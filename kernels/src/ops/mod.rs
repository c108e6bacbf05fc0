//! CPU operations, one file per op family, each with its forward and backward pass side by side.
//!
//! Conventions shared by every op:
//!
//! * Forward functions return results in the promoted dtype of their inputs
//!   ([`DType::promote`](crate::DType::promote)).
//! * Backward functions take the upstream gradient `dy` and return gradients in the *compute*
//!   dtype (`f32`, or `f64` when any input is `f64`), so bf16 models get f32 gradients for their
//!   f32 master weights.
//! * Backward passes recompute cheap statistics (norm means, softmax) from their inputs rather
//!   than requiring the caller to keep them; the one exception is attention, whose forward returns
//!   the log-sum-exp it needs.
//! * Shapes are validated and reported as [`Error`](crate::Error)s.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod image;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod rope;
pub mod shape;

use crate::dtype::DType;
use crate::tensor::Tensor;

/// Compute dtype for a set of inputs: `F64` if any input is `F64`, else `F32`.
pub(crate) fn compute_dtype(ts: &[&Tensor]) -> DType {
    if ts.iter().any(|t| t.dtype() == DType::F64) { DType::F64 } else { DType::F32 }
}

/// Output dtype of a forward op: the promoted dtype of its inputs.
pub(crate) fn out_dtype(ts: &[&Tensor]) -> DType {
    DType::promote_all(&ts.iter().map(|t| t.dtype()).collect::<Vec<_>>())
}

/// Runs `$body` with the type alias `$T` bound to `f64` or `f32` according to `$dt`.
macro_rules! dispatch {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::dtype::DType::F64 => {
                type $T = f64;
                $body
            }
            _ => {
                type $T = f32;
                $body
            }
        }
    };
}
pub(crate) use dispatch;

/// Whether the inputs live on a CUDA device (then all of them must be on the same one): the ops call their
/// CUDA implementation in [`crate::cuda`] when this is true.
#[cfg(feature = "cuda")]
pub(crate) fn on_cuda(ts: &[&Tensor], op: &'static str) -> crate::Result<bool> {
    let Some(first) = ts.first().map(|t| t.device()) else { return Ok(false) };
    for t in ts {
        if t.device() != first {
            return Err(crate::Error::DeviceMismatch { op, a: first, b: t.device() });
        }
    }
    Ok(first != crate::Device::Cpu)
}

/// Checks that `t` has exactly `rank` dims.
pub(crate) fn expect_rank(t: &Tensor, rank: usize, op: &'static str) -> crate::Result<()> {
    if t.rank() != rank {
        return Err(crate::Error::rank(op, rank.to_string(), t.shape()));
    }
    Ok(())
}

/// Checks that two shapes are equal.
pub(crate) fn expect_same_shape(a: &Tensor, b: &Tensor, op: &'static str) -> crate::Result<()> {
    if a.shape() != b.shape() {
        return Err(crate::Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}
