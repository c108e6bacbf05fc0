//! Decoding one frame ahead of the caller, on a thread of its own.
//!
//! A [`Decoder`](super::Decoder) that converts frames (RGB, gray) would otherwise pull a decoded
//! frame and convert it on the caller's thread, in turn with whatever the caller does with the
//! frame. [`Ahead`] moves the pulling and converting to a worker thread that stays up to
//! [`DEPTH`] frames ahead, so the conversion of the next frame overlaps the caller's work on
//! this one. (Measured on 2 cores: 480p RGB 1.19× vs 1.03× of decode-only gst-launch; at
//! 1080p, where decoding and conversion keep both cores busy, no difference by itself.)
//!
//! The worker runs at a lower scheduling priority (Linux: nice [`NICE`] on that thread only),
//! so that when the cores are all busy the decoder's threads go first. The caller waits on the worker only when it is ahead of it, and the worker waits
//! only on the bounded channel, so memory stays at a few frames.
//!
//! Stopping: dropping an [`Ahead`] raises the cancel flag (checked by the source between its
//! bounded waits), hangs up the channel and joins the worker, so no thread outlives the decoder.

use super::{DecodeStats, Frame, VideoError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Frames the worker may have finished that the caller has not taken yet (one more is in its
/// hands while it blocks on a full channel).
pub(super) const DEPTH: usize = 1;

/// The nice value the worker thread takes (Linux), above the caller's.
pub(super) const NICE: i32 = 5;

/// Something that yields frames and can be asked to stop.
pub(super) trait FrameSource: Send + 'static {
    /// The next frame, an error, or `None` at the end. Returns `None` soon after `cancel` is
    /// raised.
    fn next_frame(&mut self, cancel: &AtomicBool) -> Option<Result<Frame, VideoError>>;
    /// Counters so far.
    fn stats(&self) -> DecodeStats;
    /// Release what the source holds (stop threads, close files).
    fn stop(&mut self);
}

/// One message from the worker: an item of the iterator (`None`: the end) and the counters
/// after it.
struct Msg {
    item: Option<Result<Frame, VideoError>>,
    stats: DecodeStats,
}

/// A [`FrameSource`] running on its own thread, up to [`DEPTH`] frames ahead of the caller.
pub(super) struct Ahead {
    rx: Option<Receiver<Msg>>,
    cancel: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    stats: DecodeStats,
    ended: bool,
}

impl Ahead {
    /// Start `source` on a worker thread. Fails only when the system cannot make a thread.
    pub(super) fn spawn<S: FrameSource>(mut source: S) -> std::io::Result<Ahead> {
        let stats = source.stats();
        let (tx, rx) = sync_channel(DEPTH);
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let worker = std::thread::Builder::new().name("medgen-decode".into()).spawn(move || {
            lower_priority();
            run(&mut source, &tx, &flag);
            source.stop();
        })?;
        Ok(Ahead { rx: Some(rx), cancel, worker: Some(worker), stats, ended: false })
    }

    /// The next item, waiting for the worker when the caller is ahead of it.
    pub(super) fn next(&mut self) -> Option<Result<Frame, VideoError>> {
        if self.ended {
            return None;
        }
        let msg = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        let Some(Msg { item, stats }) = msg else {
            // The worker ended without saying so: it panicked.
            self.ended = true;
            return Some(Err(VideoError::Backend("the decoding thread stopped unexpectedly".into())));
        };
        self.stats = stats;
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }

    /// The counters as of the last item taken.
    pub(super) fn stats(&self) -> DecodeStats {
        self.stats
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Hanging up wakes a worker blocked on a full channel.
        self.rx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker's loop: items into the channel until the end, an error, a hang-up or a cancel.
fn run<S: FrameSource>(source: &mut S, tx: &SyncSender<Msg>, cancel: &AtomicBool) {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let item = source.next_frame(cancel);
        let last = !matches!(item, Some(Ok(_)));
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        if tx.send(Msg { item, stats: source.stats() }).is_err() || last {
            return;
        }
    }
}

/// Lower this thread's scheduling priority by [`NICE`] (Linux applies a nice value given for a
/// thread id to that thread alone). Best effort: a failure leaves the priority as it was.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; no memory is passed.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + NICE).min(19));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::PixelFormat;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Frames 0..n, then the end; records whether it was stopped and how far it got.
    struct Counting {
        n: u64,
        at: u64,
        fail_at: Option<u64>,
        log: Arc<Mutex<(u64, bool)>>,
    }

    impl FrameSource for Counting {
        fn next_frame(&mut self, cancel: &AtomicBool) -> Option<Result<Frame, VideoError>> {
            if cancel.load(Ordering::Relaxed) || self.at >= self.n {
                return None;
            }
            if self.fail_at == Some(self.at) {
                return Some(Err(VideoError::Backend(format!("broken at {}", self.at))));
            }
            let f = Frame::new(self.at as f64, None, 2, 2, PixelFormat::Gray, vec![self.at as u8; 4]);
            self.at += 1;
            self.log.lock().unwrap().0 = self.at;
            Some(Ok(f))
        }
        fn stats(&self) -> DecodeStats {
            DecodeStats { decoded: self.at, delivered: self.at, ..Default::default() }
        }
        fn stop(&mut self) {
            self.log.lock().unwrap().1 = true;
        }
    }

    fn counting(n: u64, fail_at: Option<u64>) -> (Counting, Arc<Mutex<(u64, bool)>>) {
        let log = Arc::new(Mutex::new((0, false)));
        (Counting { n, at: 0, fail_at, log: log.clone() }, log)
    }

    #[test]
    fn yields_every_frame_in_order_then_stops_the_source() {
        let (src, log) = counting(50, None);
        let mut a = Ahead::spawn(src).unwrap();
        for i in 0..50u64 {
            let f = a.next().unwrap().unwrap();
            assert_eq!(f.pts_s, i as f64);
            assert_eq!(a.stats().delivered, i + 1, "stats follow the items taken, not the worker");
        }
        assert!(a.next().is_none());
        assert!(a.next().is_none());
        drop(a);
        assert_eq!(*log.lock().unwrap(), (50, true));
    }

    #[test]
    fn an_error_ends_the_stream_after_the_frames_before_it() {
        let (src, _) = counting(10, Some(3));
        let mut a = Ahead::spawn(src).unwrap();
        for _ in 0..3 {
            assert!(a.next().unwrap().is_ok());
        }
        let e = a.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("broken at 3"), "{e}");
        assert!(a.next().is_none());
    }

    #[test]
    fn stays_a_bounded_distance_ahead_and_dropping_early_joins_the_worker() {
        let (src, log) = counting(1_000_000, None);
        let mut a = Ahead::spawn(src).unwrap();
        assert!(a.next().unwrap().is_ok());
        let t = Instant::now();
        while log.lock().unwrap().0 < 2 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        let made = log.lock().unwrap().0;
        // One taken, DEPTH in the channel, one in the worker's hands.
        assert!(made <= 2 + DEPTH as u64, "the worker ran {made} frames ahead");
        drop(a);
        let (made_after, stopped) = *log.lock().unwrap();
        assert!(stopped, "the source was stopped before drop returned");
        assert!(made_after <= made + 1);
    }
}
