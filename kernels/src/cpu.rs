//! Low-level CPU helpers shared by the op families: a bounds-checked GEMM wrapper and
//! row-parallel loops.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::dtype::Float;

/// A strided matrix operand: `data[offset + i·rs + j·cs]` is element `(i, j)`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        MatRef { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [T], cols: usize) -> Self {
        MatRef { data, rs: 1, cs: cols }
    }
    /// General strides.
    pub fn strided(data: &'a [T], rs: usize, cs: usize) -> Self {
        MatRef { data, rs, cs }
    }
}

fn check_extent(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(last < len, "gemm {what} out of bounds: {rows}x{cols} rs={rs} cs={cs} len={len}");
    }
}

/// Work below this many multiply-adds runs single-threaded.
const PAR_THRESHOLD: usize = 1 << 20;

/// `C = scale·A·B` (or `C += scale·A·B` when `accumulate`), `A` m×k, `B` k×n, `C` m×n with
/// strides `(c_rs, c_cs)`. `parallel` allows gemm's own rayon parallelism for large products;
/// pass `false` from inside parallel loops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    c_rs: usize,
    c_cs: usize,
    accumulate: bool,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    scale: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_extent(c.len(), m, n, c_rs, c_cs, "dst");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = T::ZERO;
                }
            }
        }
        return;
    }
    check_extent(a.data.len(), m, k, a.rs, a.cs, "lhs");
    check_extent(b.data.len(), k, n, b.rs, b.cs, "rhs");
    let par = if parallel && m * n * k >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: all three operands were bounds-checked above for the index ranges gemm touches
    // (rows·rs + cols·cs); `c` is uniquely borrowed and does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Applies `f(row_index, in_row, out_row)` to every row of length `d`, in parallel for large inputs.
pub(crate) fn map_rows<T: Float>(x: &[T], out: &mut [T], d: usize, f: impl Fn(usize, &[T], &mut [T]) + Sync + Send) {
    if d == 0 {
        return;
    }
    if x.len() >= 1 << 14 {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).enumerate().for_each(|(i, (o, r))| f(i, r, o));
    } else {
        for (i, (o, r)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
            f(i, r, o);
        }
    }
}

/// Column sums of a row-major `rows × d` matrix (`Σ_rows`), parallel over row blocks.
pub(crate) fn sum_rows<T: Float>(x: &[T], d: usize) -> Vec<T> {
    if d == 0 {
        return Vec::new();
    }
    let block = (1 << 14) / d.max(1) + 1;
    x.par_chunks(block * d)
        .map(|chunk| {
            let mut acc = vec![T::ZERO; d];
            for row in chunk.chunks(d) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![T::ZERO; d],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// Elementwise map, parallel for large inputs.
pub(crate) fn map<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    if x.len() >= 1 << 15 { x.par_iter().map(|&v| f(v)).collect() } else { x.iter().map(|&v| f(v)).collect() }
}

/// Elementwise map of two equal-length slices, parallel for large inputs.
pub(crate) fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    debug_assert_eq!(a.len(), b.len());
    if a.len() >= 1 << 15 {
        a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_strided_matches_naive() {
        let (m, n, k) = (3, 4, 5);
        let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64).sin()).collect();
        // B given transposed (n×k row-major)
        let mut bt = vec![0.0; n * k];
        for i in 0..k {
            for j in 0..n {
                bt[j * k + i] = b[i * n + j];
            }
        }
        let mut c = vec![1.0; m * n];
        gemm(m, n, k, &mut c, n, 1, true, MatRef::rows(&a, k), MatRef::rows_t(&bt, k), 2.0, true);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 1.0 + 2.0 * (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f64>();
                assert!((c[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}
