//! Per-node progress while a graph runs: live bars on a terminal, periodic plain lines otherwise.

use crate::graph::Plan;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use medgen_operators::api::NodeStats;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines every 10 s otherwise.
    Auto,
    /// Plain lines every `n` seconds.
    Lines(u64),
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// Whether live bars will be drawn (logs should then stay quiet).
    pub fn draws_bars(self) -> bool {
        self == ProgressMode::Auto && std::io::stderr().is_terminal()
    }
}

/// A background thread that renders node counters until [`Reporter::finish`].
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Row {
    name: String,
    op: String,
    stats: Arc<NodeStats>,
    last_out: u64,
    last_in: u64,
}

impl Row {
    fn line(&mut self, dt: f64) -> String {
        let s = &self.stats;
        let inn = NodeStats::get(&s.items_in);
        let out = NodeStats::get(&s.items_out);
        let rate = (inn.saturating_sub(self.last_in)) as f64 / dt.max(1e-6);
        self.last_in = inn;
        self.last_out = out;
        format!(
            "{:<14} {:<24} in {:>7}  out {:>7}  failed {:>5}  cached {:>6}  running {:>3}  {:>7.1}/s",
            self.name,
            self.op,
            inn,
            out,
            NodeStats::get(&s.failed),
            NodeStats::get(&s.memo_hits),
            s.in_flight.load(Ordering::Relaxed).max(0),
            rate
        )
    }
}

impl Reporter {
    pub fn start(mode: ProgressMode, plan: &Plan, stats: &BTreeMap<String, Arc<NodeStats>>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let mut rows: Vec<Row> = plan
            .nodes
            .iter()
            .filter_map(|n| {
                stats.get(&n.name).map(|s| Row {
                    name: n.name.clone(),
                    op: n.op.to_string(),
                    stats: s.clone(),
                    last_out: 0,
                    last_in: 0,
                })
            })
            .collect();
        let bars = mode.draws_bars();
        let period = match mode {
            ProgressMode::Quiet => return Reporter { stop, thread: None },
            ProgressMode::Lines(n) => Duration::from_secs(n.max(1)),
            ProgressMode::Auto if bars => Duration::from_millis(250),
            ProgressMode::Auto => Duration::from_secs(10),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("medgen-progress".into())
            .spawn(move || {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
                let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let handles: Vec<ProgressBar> = if bars {
                    rows.iter().map(|_| multi.add(ProgressBar::new_spinner().with_style(style.clone()))).collect()
                } else {
                    Vec::new()
                };
                let mut last = Instant::now();
                let mut next_lines = Instant::now() + period;
                loop {
                    let stopping = stop2.load(Ordering::Relaxed);
                    if bars {
                        let dt = last.elapsed().as_secs_f64();
                        last = Instant::now();
                        for (row, bar) in rows.iter_mut().zip(&handles) {
                            bar.set_message(row.line(dt));
                            bar.tick();
                        }
                    } else if Instant::now() >= next_lines {
                        let dt = last.elapsed().as_secs_f64();
                        last = Instant::now();
                        next_lines = Instant::now() + period;
                        for row in rows.iter_mut() {
                            eprintln!("progress: {}", row.line(dt));
                        }
                    }
                    if stopping {
                        for bar in &handles {
                            bar.finish();
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(if bars { 250 } else { 200 }));
                }
            })
            .ok();
        Reporter { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
