//! Element types: the storage dtypes and the [`Float`] trait the CPU kernels are generic over.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use half::{bf16, f16};

use crate::tensor::CpuStorage;

/// Storage dtype of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// bfloat16 (storage only; computed in f32).
    BF16,
    /// IEEE half precision (storage only; computed in f32).
    F16,
    /// IEEE double precision; used by the finite-difference tests.
    F64,
}

impl DType {
    /// The lower-case name (`f32`, `bf16`, `f16`, `f64`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F64 => "f64",
        }
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::F64 => 8,
        }
    }

    /// The dtype CPU kernels compute in for this storage dtype: `F64` for `F64`, `F32` otherwise.
    pub fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// Result dtype of an op with inputs of dtypes `self` and `other`: `F64` wins, then `F32`;
    /// two equal half types stay half; `BF16` with `F16` gives `F32`.
    pub fn promote(self, other: DType) -> DType {
        use DType::*;
        match (self, other) {
            (F64, _) | (_, F64) => F64,
            (a, b) if a == b => a,
            _ => F32,
        }
    }

    /// Promote over a list of dtypes (`F32` for an empty list).
    pub fn promote_all(dtypes: &[DType]) -> DType {
        dtypes.iter().copied().reduce(DType::promote).unwrap_or(DType::F32)
    }
}

/// Storage element types (`f32`, `f64`, `bf16`, `f16`) and conversion to/from compute types.
pub trait Element: Copy + Send + Sync + 'static + Debug {
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Convert to a compute type.
    fn to_compute<T: Float>(self) -> T;
    /// Convert from a compute type (rounding to nearest for half types).
    fn from_compute<T: Float>(v: T) -> Self;
    /// Wrap a vector into tensor storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_compute<T: Float>(self) -> T {
        T::from_f32(self)
    }
    fn from_compute<T: Float>(v: T) -> Self {
        v.to_f32()
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_compute<T: Float>(self) -> T {
        T::from_f64(self)
    }
    fn from_compute<T: Float>(v: T) -> Self {
        v.to_f64()
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_compute<T: Float>(self) -> T {
        T::from_f32(self.to_f32())
    }
    fn from_compute<T: Float>(v: T) -> Self {
        bf16::from_f64(v.to_f64())
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::BF16(v)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_compute<T: Float>(self) -> T {
        T::from_f32(self.to_f32())
    }
    fn from_compute<T: Float>(v: T) -> Self {
        f16::from_f64(v.to_f64())
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F16(v)
    }
}

/// Compute types of the CPU kernels: `f32` and `f64`.
///
/// Every CPU kernel is written once against this trait; `f64` instances back the
/// finite-difference gradient checks.
pub trait Float:
    Element
    + PartialOrd
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// −∞.
    const NEG_INFINITY: Self;
    /// From f64 (rounding).
    fn from_f64(v: f64) -> Self;
    /// From f32 (exact).
    fn from_f32(v: f32) -> Self;
    /// To f64 (exact).
    fn to_f64(self) -> f64;
    /// To f32 (rounding).
    fn to_f32(self) -> f32;
    /// From a count.
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
    /// eˣ.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `eˣ − 1`, accurate near 0.
    fn exp_m1(self) -> Self;
    /// Integer power.
    fn powi(self, n: i32) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Maximum (NaN-ignoring like `f32::max`).
    fn max(self, other: Self) -> Self;
    /// Minimum.
    fn min(self, other: Self) -> Self;
    /// Whether the value is finite.
    fn is_finite(self) -> bool;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// Slice of a storage if it holds this type.
    fn storage_slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Mutable slice of a storage if it holds this type.
    fn storage_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! impl_float {
    ($t:ty, $variant:ident) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            #[inline]
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline]
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn storage_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

impl_float!(f32, F32);
impl_float!(f64, F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion() {
        use DType::*;
        assert_eq!(BF16.promote(BF16), BF16);
        assert_eq!(BF16.promote(F16), F32);
        assert_eq!(BF16.promote(F32), F32);
        assert_eq!(F32.promote(F64), F64);
        assert_eq!(DType::promote_all(&[F16, F16]), F16);
        assert_eq!(DType::promote_all(&[]), F32);
    }
}
