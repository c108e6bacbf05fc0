//! Client-side rate limits for caption backends: requests per minute and tokens per minute, shared
//! by every thread that talks to one endpoint. A sliding window per limit: a request may start only
//! when the requests (and tokens) in the window leave room for it. A request occupies the window
//! from when it is sent until one window after its answer came back (the server received it before
//! answering), so network and queueing delays can never make the server count more than the limit
//! in any window of its own clock.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u64>,
}

/// Requests in the window: (time, tokens, ticket id); the time moves to the answer's arrival.
#[derive(Default)]
struct History {
    entries: VecDeque<(Instant, u64, u64)>,
    next_id: u64,
}

/// A granted request; give it back with [`RateLimiter::finish`] when its answer arrives.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    /// How long the request waited for room.
    pub waited: Duration,
}

/// A blocking sliding-window limiter.
pub struct RateLimiter {
    limits: Limits,
    window: Duration,
    state: Mutex<History>,
    wake: Condvar,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self::with_window(limits, Duration::from_secs(60))
    }

    /// A limiter over another window length (tests).
    pub fn with_window(limits: Limits, window: Duration) -> Self {
        RateLimiter { limits, window, state: Mutex::new(History::default()), wake: Condvar::new() }
    }

    /// How long to wait before a request of `tokens` may start, given the history; zero if now.
    fn wait_needed(&self, history: &VecDeque<(Instant, u64, u64)>, tokens: u64, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        // Entries leave the window in order of their (possibly moved) times.
        let mut by_time: Vec<(Instant, u64)> = history.iter().map(|(t, n, _)| (*t, *n)).collect();
        by_time.sort();
        if let Some(rpm) = self.limits.requests_per_min {
            let rpm = rpm.max(1) as usize;
            if by_time.len() >= rpm {
                // The request that must leave the window first.
                let (t, _) = by_time[by_time.len() - rpm];
                wait = wait.max((t + self.window).saturating_duration_since(now));
            }
        }
        if let Some(tpm) = self.limits.tokens_per_min {
            let tokens = tokens.min(tpm);
            let mut used: u64 = by_time.iter().map(|(_, n)| n).sum();
            for (t, n) in &by_time {
                if used + tokens <= tpm {
                    break;
                }
                used -= n;
                wait = wait.max((*t + self.window).saturating_duration_since(now));
            }
        }
        wait
    }

    /// Block until a request estimated at `tokens` tokens may start, then record it. Gives up
    /// (returning `None`) once `deadline` would be passed.
    pub fn acquire(&self, tokens: u64, deadline: Option<Instant>) -> Option<Ticket> {
        let start = Instant::now();
        let mut history = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            history.entries.retain(|(t, _, _)| now.duration_since(*t) < self.window);
            let wait = self.wait_needed(&history.entries, tokens, now);
            if wait.is_zero() {
                let id = history.next_id;
                history.next_id += 1;
                history.entries.push_back((now, tokens, id));
                return Some(Ticket { id, waited: start.elapsed() });
            }
            if deadline.is_some_and(|d| now + wait > d) {
                return None;
            }
            let (h, _) = self.wake.wait_timeout(history, wait).unwrap_or_else(|p| p.into_inner());
            history = h;
        }
    }

    /// The request's answer arrived (or it failed): its window now runs from this moment, and its
    /// token count becomes the real usage when the server reported one.
    pub fn finish(&self, ticket: Ticket, actual_tokens: Option<u64>) {
        let mut history = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = history.entries.iter_mut().find(|(_, _, id)| *id == ticket.id) {
            entry.0 = Instant::now();
            if let Some(n) = actual_tokens {
                entry.1 = n;
            }
        }
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_exceeds_requests_per_window() {
        let window = Duration::from_millis(300);
        let lim =
            Arc::new(RateLimiter::with_window(Limits { requests_per_min: Some(5), tokens_per_min: None }, window));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lim, starts) = (lim.clone(), starts.clone());
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        let t = lim.acquire(1, None).unwrap();
                        starts.lock().unwrap().push(Instant::now());
                        lim.finish(t, None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut s = starts.lock().unwrap().clone();
        s.sort();
        assert_eq!(s.len(), 12);
        for (i, t) in s.iter().enumerate() {
            let in_window = s[i..].iter().take_while(|u| u.duration_since(*t) < window).count();
            assert!(in_window <= 5, "{in_window} requests within one window");
        }
        // 12 requests at 5 per window need at least two full windows.
        assert!(s[11].duration_since(s[0]) >= window * 2 - Duration::from_millis(20));
    }

    #[test]
    fn token_budget_and_deadline() {
        let lim = RateLimiter::with_window(
            Limits { requests_per_min: None, tokens_per_min: Some(100) },
            Duration::from_millis(200),
        );
        let first = lim.acquire(60, None).unwrap();
        assert!(first.waited < Duration::from_millis(10));
        lim.finish(first, Some(70));
        // 70 used: a 50-token request must wait for the window, and a deadline sooner than that fails.
        assert!(lim.acquire(50, Some(Instant::now() + Duration::from_millis(20))).is_none());
        let second = lim.acquire(50, None).unwrap();
        assert!(second.waited >= Duration::from_millis(150), "{:?}", second.waited);
    }

    #[test]
    fn a_slow_answer_keeps_its_slot_until_a_window_after_it_arrives() {
        let window = Duration::from_millis(200);
        let lim = RateLimiter::with_window(Limits { requests_per_min: Some(1), tokens_per_min: None }, window);
        let t = lim.acquire(1, None).unwrap();
        std::thread::sleep(Duration::from_millis(150)); // the answer takes 150 ms
        lim.finish(t, None);
        let next = lim.acquire(1, None).unwrap();
        assert!(next.waited >= Duration::from_millis(190), "{:?}", next.waited);
    }
}
