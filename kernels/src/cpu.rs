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
///
/// The bits of the result do not depend on `parallel` or on the thread count: gemm 0.19 splits
/// the output tiles statically among its threads and always runs the sum over `k` sequentially
/// (depth blocks in order), with block sizes derived from `m, n, k` and the cache sizes only
/// (tests/determinism.rs checks 1 vs 2 vs 4 threads).
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

/// Most partial accumulators a [`reduce_blocks`] call creates.
const MAX_PARTS: usize = 64;

/// Soft cap on the elements of all partial accumulators of one [`reduce_blocks`] call: wide
/// accumulators get fewer parts (at least one).
const PARTIAL_BUDGET: usize = 1 << 22;

/// Elements per partial sum in [`det_sum`].
pub(crate) const SUM_CHUNK: usize = 1 << 14;

/// Number of parts [`reduce_blocks`] splits `items` items into: one per `min_items` items, at most
/// [`MAX_PARTS`] and at most `PARTIAL_BUDGET / width`, at least one. It depends on the sizes only,
/// never on the thread count.
pub(crate) fn reduce_parts(items: usize, width: usize, min_items: usize) -> usize {
    let by_work = items.div_ceil(min_items.max(1));
    let by_memory = PARTIAL_BUDGET / width.max(1);
    by_work.min(by_memory).clamp(1, MAX_PARTS)
}

/// Deterministic parallel reduction of items `0..items` into a `width`-long accumulator.
///
/// The items are cut into [`reduce_parts`]`(items, width, min_items)` contiguous ranges of equal
/// length (the last one shorter); `f(range, acc)` adds the contribution of its range into its own
/// zeroed accumulator, the ranges in parallel; then the partial accumulators are added element by
/// element in range order (`((p₀ + p₁) + p₂) + …`). The grouping of every floating-point sum
/// depends only on `items`, `width` and `min_items`, so the result is bitwise the same in every
/// run and for every rayon pool size. (`fold`/`reduce` and `par_iter().sum()` instead group by
/// rayon's adaptive splits, which follow work stealing.)
pub(crate) fn reduce_blocks<T: Float>(
    items: usize,
    width: usize,
    min_items: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let per = items.div_ceil(reduce_parts(items, width, min_items)).max(1);
    let parts = items.div_ceil(per);
    if parts <= 1 {
        let mut acc = vec![T::ZERO; width];
        if items > 0 {
            f(0..items, &mut acc);
        }
        return acc;
    }
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut acc = vec![T::ZERO; width];
            f(p * per..((p + 1) * per).min(items), &mut acc);
            acc
        })
        .collect();
    let mut out = partials[0].clone();
    // Column blocks in parallel; within a column, the parts in order.
    const COLS: usize = 1 << 12;
    let combine = |c: usize, o: &mut [T]| {
        for p in &partials[1..] {
            for (x, &y) in o.iter_mut().zip(&p[c * COLS..]) {
                *x += y;
            }
        }
    };
    if width * parts >= 1 << 16 {
        out.par_chunks_mut(COLS).enumerate().for_each(|(c, o)| combine(c, o));
    } else {
        out.chunks_mut(COLS).enumerate().for_each(|(c, o)| combine(c, o));
    }
    out
}

/// Deterministic parallel `Σ` over `0..n`: `f(range)` sums fixed chunks of [`SUM_CHUNK`] indices
/// (in parallel), and the chunk sums are added sequentially in index order, so the grouping
/// depends only on `n`.
pub(crate) fn det_sum(n: usize, f: impl Fn(std::ops::Range<usize>) -> f64 + Sync + Send) -> f64 {
    if n <= SUM_CHUNK {
        return f(0..n);
    }
    let partials: Vec<f64> =
        (0..n.div_ceil(SUM_CHUNK)).into_par_iter().map(|c| f(c * SUM_CHUNK..((c + 1) * SUM_CHUNK).min(n))).collect();
    partials.iter().sum()
}

/// Column sums of a row-major `rows × d` matrix (`Σ_rows`), parallel over row blocks with a
/// deterministic grouping ([`reduce_blocks`]).
pub(crate) fn sum_rows<T: Float>(x: &[T], d: usize) -> Vec<T> {
    if d == 0 {
        return Vec::new();
    }
    let rows = x.len() / d;
    reduce_blocks(rows, d, (1 << 14) / d + 1, |range, acc: &mut [T]| {
        for row in x[range.start * d..range.end * d].chunks(d) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    })
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
