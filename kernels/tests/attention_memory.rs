//! Memory bound of the tiled attention at the Wan 1.3B 480p sequence length.
//!
//! L = 32,760 tokens (21·30·52), head_dim 128, one head, batch 1, f32. Materialising the
//! score matrix would take L·L·4 = 4.29 GB. A counting global allocator measures the peak heap
//! growth during the forward and backward calls.
//!
//! The full 32,760 × 32,760 attention is ~0.55 TFLOP forward (and ~2.5× that backward), too
//! slow for a debug-profile test on 2 cores, so the test uses a subset of query rows
//! (`LQ = 2048`) against the **full** key/value length. Memory per query row is what the bound
//! is about, and the key sequence — the axis the score tiles stream over — is full length. The
//! ignored test `attention_full_length_timing` runs all 32,760 query rows forward.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use medgen_kernels::ops::attention::{attention, attention_backward};
use medgen_kernels::{DType, Rng, Tensor};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns (result, peak heap growth in bytes above the level at entry).
fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst) - base)
}

const L: usize = 32_760;
const D: usize = 128;
const LQ: usize = 2048;
const MB: f64 = 1024.0 * 1024.0;

fn inputs(lq: usize) -> (Tensor, Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(42);
    let q = Tensor::randn(&[1, lq, 1, D], 1.0, DType::F32, &mut rng);
    let k = Tensor::randn(&[1, L, 1, D], 1.0, DType::F32, &mut rng);
    let v = Tensor::randn(&[1, L, 1, D], 1.0, DType::F32, &mut rng);
    let g = Tensor::randn(&[1, lq, 1, D], 1.0, DType::F32, &mut rng);
    (q, k, v, g)
}

#[test]
fn attention_memory_is_bounded_at_32760_tokens() {
    let (q, k, v, g) = inputs(LQ);
    let full_scores = (L * L * 4) as f64;
    let subset_scores = (LQ * L * 4) as f64;

    let t = Instant::now();
    let (fwd, grow_f) = peak_growth(|| attention(&q, &k, &v, None).unwrap());
    let tf = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (grads, grow_b) = peak_growth(|| attention_backward(&q, &k, &v, &fwd.out, &fwd.lse, &g, None).unwrap());
    let tb = t.elapsed().as_secs_f64();
    println!(
        "attention Lq={LQ} Lk={L} d={D}: forward {tf:.2} s, peak growth {:.2} MB; backward {tb:.2} s, \
         peak growth {:.2} MB; full L×L scores would be {:.0} MB, this subset's Lq×Lk {:.0} MB",
        grow_f as f64 / MB,
        grow_b as f64 / MB,
        full_scores / MB,
        subset_scores / MB
    );
    assert_eq!(grads.dk.shape(), &[1, L, 1, D]);
    assert!(fwd.out.to_vec_f32().unwrap().iter().all(|x| x.is_finite()));
    // Forward: output + LSE (LQ·(D+1)·4 ≈ 1 MB) plus per-thread tiles. Allow 16 MB.
    assert!(grow_f < 16 << 20, "forward grew {grow_f} bytes");
    // Backward: dQ + dK + dV + Δ ≈ (LQ + 2L)·D·4 ≈ 33 MB plus tiles. Allow 64 MB — still far
    // below the 268 MB of this subset's score matrix and the 4.3 GB of the full one.
    assert!(grow_b < 64 << 20, "backward grew {grow_b} bytes");
    assert!((grow_b as f64) < subset_scores / 4.0);
}

#[test]
#[ignore = "full 32,760² forward: ~0.55 TFLOP; run in release: cargo test --release -- --ignored"]
fn attention_full_length_timing() {
    let (q, k, v, _) = inputs(L);
    let t = Instant::now();
    let (fwd, grow) = peak_growth(|| attention(&q, &k, &v, None).unwrap());
    println!("full attention L={L} d={D}: {:.1} s, peak growth {:.1} MB", t.elapsed().as_secs_f64(), grow as f64 / MB);
    assert!(fwd.out.to_vec_f32().unwrap().iter().all(|x| x.is_finite()));
    assert!(grow < 64 << 20);
}
