//! Recycled frame buffers.
//!
//! A decoder that converts every frame would otherwise allocate a fresh buffer per frame (6 MB
//! for 1080p RGB) and the caller free it, often on another thread: the allocator then hands
//! the memory back to the system and takes it again, and every page of every frame faults in
//! anew. A [`BufPool`] keeps a few buffers a decoder's frames gave back when they were dropped,
//! and the next conversion writes into one of them.

use std::sync::{Arc, Mutex};

/// Buffers kept for reuse at most (more in flight are freed as usual).
const KEEP: usize = 4;

/// A small shared stack of spare buffers.
#[derive(Clone, Debug, Default)]
pub(crate) struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// The spare buffer given back last (empty, its capacity kept), or a new empty one.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        spare.pop().unwrap_or_default()
    }

    /// Keep `buf` for a later [`BufPool::take`] (dropped when enough are kept).
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < KEEP {
            spare.push(buf);
        }
    }
}

/// Bytes that go back to their pool when dropped.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub(crate) buf: Vec<u8>,
    pool: BufPool,
}

impl Pooled {
    pub(crate) fn new(buf: Vec<u8>, pool: &BufPool) -> Pooled {
        Pooled { buf, pool: pool.clone() }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_come_back_for_reuse_up_to_the_limit() {
        let pool = BufPool::default();
        let a = pool.take();
        assert_eq!(a.capacity(), 0, "an empty pool gives a new buffer");
        let bufs: Vec<Pooled> = (0..KEEP + 2).map(|i| Pooled::new(vec![i as u8; 1000], &pool)).collect();
        let ptrs: Vec<*const u8> = bufs.iter().map(|b| b.buf.as_ptr()).collect();
        drop(bufs);
        assert_eq!(pool.0.lock().unwrap().len(), KEEP, "kept at most KEEP");
        let again = pool.take();
        assert!(again.is_empty() && again.capacity() >= 1000);
        assert!(ptrs.contains(&again.as_ptr()), "the same allocation is handed out again");
        // A buffer taken out of a Pooled (e.g. Frame::into_vec) is not given back twice.
        let mut p = Pooled::new(vec![1; 10], &pool);
        let owned = std::mem::take(&mut p.buf);
        drop(p);
        assert_eq!(owned, vec![1; 10]);
        assert_eq!(pool.0.lock().unwrap().len(), KEEP - 1);
    }
}
