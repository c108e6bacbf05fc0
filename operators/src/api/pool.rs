//! The off-worker pool pattern (ARCHITECTURE §4), as one reusable operator.
//!
//! [`pool_map`] turns each item of a differential collection into output records by running a
//! function on a small pool of threads owned by the operator, so the timely worker never blocks on
//! I/O or a model:
//!
//! * the operator holds a capability for every epoch that still has items queued or running, and
//!   drops it once the input frontier has passed the epoch and its last item completed — so
//!   downstream operators (sinks, trainers) see an epoch complete exactly when all its work is done;
//! * the job queue is a bounded crossbeam channel (back-pressure: excess items wait in the
//!   operator, not in memory of the pool threads); results come back on a channel and wake the
//!   operator through a `SyncActivator`;
//! * results are memoised in the run store by hash(operator, version, params, input), so a
//!   restarted or re-run graph recomputes nothing already committed;
//! * failures become `Failure` records (the item is data, not a crash): transient errors are retried
//!   with backoff, every failed attempt is counted in the catalog, and an item that failed
//!   `quarantine_after` times is skipped on later runs until `medgen retry --quarantined`;
//! * retractions replay the item's outputs with a negative diff, so deleting a source retracts
//!   everything derived from it.

use super::records::{ErrorClass, Failure, Record, route_hash};
use super::services::{MemoKey, Services};
use super::spec::{BuildCtx, Coll, FAILURES_PORT, NodeStats, OUT_PORT, Outputs, RunSettings};
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

/// Most threads one node's pool runs.
pub const MAX_POOL_THREADS: usize = 256;

/// Issues for an operator's `threads` param (its pool's size).
pub fn check_threads(threads: usize, issues: &mut Vec<crate::api::ParamIssue>) {
    if threads == 0 || threads > MAX_POOL_THREADS {
        issues.push(crate::api::ParamIssue::error(
            "threads",
            format!("must be between 1 and {MAX_POOL_THREADS}"),
            Some("threads = 1".into()),
        ));
    }
}

/// A per-item error: its class decides whether it is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemError {
    pub class: ErrorClass,
    pub message: String,
}

impl ItemError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ItemError { class, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::InvalidInput, message)
    }
    pub fn unreadable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unreadable, message)
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    /// An error of our own making (a bug or an unexpected I/O state), from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::Internal, e.to_string())
    }
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// What a pool job knows about its attempt.
#[derive(Clone, Debug)]
pub struct ItemCtx {
    /// 1-based attempt number within this run.
    pub attempt: u32,
    /// Give up by this instant (the per-item timeout); long operations should check it.
    pub deadline: Instant,
    /// Set when the run is stopping.
    pub shutdown: Arc<AtomicBool>,
}

impl ItemCtx {
    pub fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// An item a pool can work on.
pub trait PoolItem: timely::ExchangeData + differential_dataflow::ExchangeData + Hash + Eq {
    /// Stable item id for failure records (e.g. `file:/data/a.mp4`).
    fn item_id(&self) -> String;
    /// Human-readable description of the input.
    fn describe(&self) -> String;
    /// Bytes that identify the input for the memo key.
    fn memo_input(&self) -> Vec<u8>;
    /// Key the item is exchanged between workers by.
    fn route(&self) -> u64;
}

impl PoolItem for Record {
    fn item_id(&self) -> String {
        Record::item_id(self)
    }
    fn describe(&self) -> String {
        match self {
            Record::Video(v) => v.uri.clone(),
            Record::Clip(c) => format!("{} [{:.3}s, {:.3}s)", c.uri, c.start_s.0, c.end_s.0),
            other => Record::item_id(other),
        }
    }
    fn memo_input(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn route(&self) -> u64 {
        route_hash(&self.routing_key())
    }
}

/// How a pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Threads per worker.
    pub threads: usize,
    /// Memoise results in the run store.
    pub memoise: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { threads: 1, memoise: true }
    }
}

type Job<D> = (D, u64, isize);
type Done<D> = (D, u64, isize, Vec<Record>, bool);

struct Pool<D: Send + 'static> {
    jobs: Option<crossbeam_channel::Sender<Job<D>>>,
    results: crossbeam_channel::Receiver<Done<D>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<D: Send + 'static> Drop for Pool<D> {
    fn drop(&mut self) {
        // Closing the job channel ends the threads once their current item finishes: no leaks.
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Everything a pool thread needs to run one item.
struct Runner<F> {
    f: F,
    services: Arc<dyn Services>,
    stats: Arc<NodeStats>,
    settings: RunSettings,
    node: String,
    operator: String,
    version: u32,
    fingerprint: String,
    memoise: bool,
    shutdown: Arc<AtomicBool>,
}

impl<F> Runner<F> {
    fn memo_key<D: PoolItem>(&self, d: &D) -> MemoKey {
        MemoKey::new(&self.operator, self.version, &self.fingerprint, &d.memo_input())
    }

    /// Whether every blob a memoised result refers to is still in the store. One that is gone (blobs
    /// deleted to free space, a store copied in part) makes the hit a miss, so the item is
    /// recomputed instead of handing downstream nodes a key they cannot read.
    fn blobs_present<D: PoolItem>(&self, d: &D, records: &[Record]) -> bool {
        match records.iter().flat_map(Record::blob_keys).find(|k| !self.services.blob_exists(k)) {
            None => true,
            Some(key) => {
                tracing::warn!(
                    node = %self.node,
                    item = %d.item_id(),
                    blob = key,
                    "the memoised result refers to a blob that is gone from the run store; recomputing it"
                );
                false
            }
        }
    }

    /// Run one item with retries. Returns its output records and whether it succeeded.
    fn run<D: PoolItem>(&self, d: &D) -> (Vec<Record>, bool)
    where
        F: Fn(&D, &ItemCtx) -> Result<Vec<Record>, ItemError>,
    {
        let max = self.settings.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ctx = ItemCtx {
                attempt,
                deadline: Instant::now() + Duration::from_secs_f64(self.settings.item_timeout_s.max(0.001)),
                shutdown: self.shutdown.clone(),
            };
            let started = Instant::now();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(d, &ctx))).unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    Err(ItemError::new(
                        ErrorClass::Internal,
                        format!("operator panicked: {msg} (a bug; please report it)"),
                    ))
                });
            NodeStats::add(&self.stats.busy_ns, started.elapsed().as_nanos() as u64);
            match outcome {
                Ok(records) => {
                    if self.memoise {
                        let bytes = serde_json::to_vec(&records).unwrap_or_default();
                        if let Err(e) = self.services.memo_put(&self.memo_key(d), &self.node, &bytes) {
                            tracing::warn!(node = %self.node, item = %d.item_id(), "memo write failed: {e}");
                        }
                    }
                    if attempt > 1 {
                        let _ = self.services.clear_failure(&self.node, &d.item_id());
                    }
                    return (records, true);
                }
                Err(err) => {
                    let mut failure = Failure {
                        item: d.item_id(),
                        node: self.node.clone(),
                        operator: self.operator.clone(),
                        input: d.describe(),
                        class: err.class,
                        message: err.message.clone(),
                        attempts: attempt,
                    };
                    let state = self.services.record_failure(&failure, self.settings.quarantine_after);
                    if let Ok(st) = &state {
                        failure.attempts = st.attempts;
                    }
                    let quarantined = state.map(|s| s.quarantined).unwrap_or(false);
                    let retry = err.class.is_transient()
                        && attempt < max
                        && !quarantined
                        && !self.shutdown.load(Ordering::Relaxed);
                    tracing::warn!(node = %self.node, item = %failure.item, attempt, class = %err.class, retry,
                        "item failed: {}", err.message);
                    if retry {
                        let backoff = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)));
                        std::thread::sleep(backoff);
                        continue;
                    }
                    return (vec![Record::Failure(failure)], false);
                }
            }
        }
    }
}

/// Map each item of `input` to records on an off-worker pool, memoised (see the module docs).
///
/// `f` must be deterministic for a given input and params: its result is cached. Failed items come
/// out as `Record::Failure` in the same collection; split them with [`split_failures`].
pub fn pool_map<'s, D, F>(
    ctx: &BuildCtx<'s>,
    input: VecCollection<'s, u64, D, isize>,
    config: PoolConfig,
    f: F,
) -> Coll<'s>
where
    D: PoolItem,
    F: Fn(&D, &ItemCtx) -> Result<Vec<Record>, ItemError> + Send + Sync + 'static,
{
    let runner = Arc::new(Runner {
        f,
        services: ctx.services.clone(),
        stats: ctx.stats.clone(),
        settings: ctx.settings.clone(),
        node: ctx.node.clone(),
        operator: ctx.spec.name.to_string(),
        version: ctx.spec.version,
        fingerprint: ctx.params_fingerprint.clone(),
        memoise: config.memoise,
        shutdown: ctx.shutdown.clone(),
    });
    // More threads than this only exhausts the process (`medgen check` refuses them).
    let threads = config.threads.clamp(1, MAX_POOL_THREADS);
    let dry_run = ctx.settings.dry_run;
    let scope = ctx.scope;
    let name = format!("{}:{}", ctx.node, ctx.spec.name);

    input
        .inner
        .unary_frontier(Exchange::new(|(d, _t, _r): &(D, u64, isize)| d.route()), &name, move |_cap, info| {
            let activator = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
            let (job_tx, job_rx) = crossbeam_channel::bounded::<Job<D>>(threads * 2);
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done<D>>();
            let mut handles = Vec::new();
            if !dry_run {
                for i in 0..threads {
                    let job_rx = job_rx.clone();
                    let done_tx = done_tx.clone();
                    let runner = runner.clone();
                    let activator = activator.clone();
                    let h = std::thread::Builder::new()
                        .name(format!("medgen-pool-{}-{i}", runner.node))
                        .spawn(move || {
                            for (d, t, r) in job_rx.iter() {
                                let (records, ok) = runner.run(&d);
                                if done_tx.send((d, t, r, records, ok)).is_err() {
                                    break;
                                }
                                let _ = activator.activate();
                            }
                        });
                    match h {
                        Ok(h) => handles.push(h),
                        Err(e) => tracing::error!("cannot start a pool thread: {e}"),
                    }
                }
            }
            drop(done_tx);
            let pool = Pool { jobs: Some(job_tx), results: done_rx, threads: handles };
            let runner = runner.clone();

            // Per epoch: a capability and the number of items not yet emitted.
            let mut caps: BTreeMap<u64, (Capability<u64>, usize)> = BTreeMap::new();
            let mut stash: VecDeque<Job<D>> = VecDeque::new();
            let mut running: HashSet<D> = HashSet::new();
            // Outputs of every item present, with its multiplicity, to replay on retraction.
            let mut live: HashMap<D, (Vec<Record>, isize)> = HashMap::new();

            move |(input, frontier), output| {
                let stats = &runner.stats;
                input.for_each(|cap, data| {
                    for (d, t, r) in data.drain(..) {
                        let entry = caps.entry(t).or_insert_with(|| (cap.delayed(&t, 0), 0));
                        entry.1 += 1;
                        if r > 0 {
                            NodeStats::add(&stats.items_in, r as u64);
                        }
                        stash.push_back((d, t, r));
                    }
                });

                let shutting_down = runner.shutdown.load(Ordering::Relaxed);
                let mut emitted: Vec<(Record, u64, isize)> = Vec::new();

                // Results of finished jobs.
                while let Ok((d, t, r, records, ok)) = pool.results.try_recv() {
                    running.remove(&d);
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if !ok {
                        NodeStats::add(&stats.failed, 1);
                    }
                    for rec in &records {
                        emitted.push((rec.clone(), t, r));
                    }
                    let e = live.entry(d).or_insert_with(|| (records, 0));
                    e.1 += r;
                    if let Some(c) = caps.get_mut(&t) {
                        c.1 -= 1;
                    }
                }

                // Queued items, in arrival order; items of a running input wait for it.
                let mut waiting = VecDeque::new();
                while let Some((d, t, r)) = stash.pop_front() {
                    if running.contains(&d) {
                        waiting.push_back((d, t, r));
                        continue;
                    }
                    if let Some((records, count)) = live.get_mut(&d) {
                        for rec in records.iter() {
                            emitted.push((rec.clone(), t, r));
                        }
                        *count += r;
                        if r < 0 {
                            NodeStats::add(&stats.retracted, (-r) as u64);
                        }
                        if *count == 0 {
                            live.remove(&d);
                        }
                        if let Some(c) = caps.get_mut(&t) {
                            c.1 -= 1;
                        }
                        continue;
                    }
                    if r < 0 || shutting_down {
                        // A retraction of something never produced, or a stop: nothing to emit.
                        if let Some(c) = caps.get_mut(&t) {
                            c.1 -= 1;
                        }
                        continue;
                    }
                    // Quarantined items are skipped, visibly.
                    if runner.services.is_quarantined(&runner.node, &d.item_id()).unwrap_or(false) {
                        let rec = Record::Failure(Failure {
                            item: d.item_id(),
                            node: runner.node.clone(),
                            operator: runner.operator.clone(),
                            input: d.describe(),
                            class: ErrorClass::Quarantined,
                            message: "skipped: quarantined after repeated failures; `medgen retry --quarantined` re-admits it".into(),
                            attempts: 0,
                        });
                        NodeStats::add(&stats.failed, 1);
                        emitted.push((rec.clone(), t, r));
                        live.insert(d, (vec![rec], r));
                        if let Some(c) = caps.get_mut(&t) {
                            c.1 -= 1;
                        }
                        continue;
                    }
                    if runner.memoise {
                        let hit = runner
                            .services
                            .memo_get(&runner.memo_key(&d))
                            .ok()
                            .flatten()
                            .and_then(|bytes| serde_json::from_slice::<Vec<Record>>(&bytes).ok())
                            .filter(|records| runner.blobs_present(&d, records));
                        if let Some(records) = hit {
                            NodeStats::add(&stats.memo_hits, 1);
                            for rec in &records {
                                emitted.push((rec.clone(), t, r));
                            }
                            live.insert(d, (records, r));
                            if let Some(c) = caps.get_mut(&t) {
                                c.1 -= 1;
                            }
                            continue;
                        }
                    }
                    NodeStats::add(&stats.memo_misses, 1);
                    if dry_run {
                        live.insert(d, (Vec::new(), r));
                        if let Some(c) = caps.get_mut(&t) {
                            c.1 -= 1;
                        }
                        continue;
                    }
                    let jobs = pool.jobs.as_ref().expect("pool open while the operator runs");
                    match jobs.try_send((d.clone(), t, r)) {
                        Ok(()) => {
                            running.insert(d);
                            stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(crossbeam_channel::TrySendError::Full(job)) => {
                            // Back-pressure: keep the rest for when a job completes.
                            stats.memo_misses.fetch_sub(1, Ordering::Relaxed);
                            waiting.push_back(job);
                            waiting.extend(stash.drain(..));
                            break;
                        }
                        Err(crossbeam_channel::TrySendError::Disconnected(job)) => {
                            let rec = Record::Failure(Failure {
                                item: job.0.item_id(),
                                node: runner.node.clone(),
                                operator: runner.operator.clone(),
                                input: job.0.describe(),
                                class: ErrorClass::Internal,
                                message: "the operator's worker pool stopped".into(),
                                attempts: 0,
                            });
                            emitted.push((rec, job.1, job.2));
                            if let Some(c) = caps.get_mut(&job.1) {
                                c.1 -= 1;
                            }
                        }
                    }
                }
                stash = waiting;

                for (rec, t, r) in emitted {
                    if r > 0 {
                        NodeStats::add(&stats.items_out, r as u64);
                    }
                    if let Some((cap, _)) = caps.get(&t) {
                        output.session(cap).give((rec, t, r));
                    }
                }

                // Release epochs whose input is complete and whose items are all done.
                caps.retain(|t, (_, pending)| *pending > 0 || frontier.less_equal(t));
            }
        })
        .as_collection()
}

/// The usual shape of a per-record node: `f` on each record of `input` on the pool (memoised),
/// what it returns on `out`, the items that failed on `failures`.
pub fn pool_stage<'s, F>(ctx: &BuildCtx<'s>, input: Coll<'s>, threads: usize, f: F) -> Outputs<'s>
where
    F: Fn(&Record, &ItemCtx) -> Result<Vec<Record>, ItemError> + Send + Sync + 'static,
{
    let (ok, failed) = split_failures(pool_map(ctx, input, PoolConfig { threads, memoise: true }, f));
    Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed)
}

/// Split a collection into its non-failure records and its failures.
pub fn split_failures(coll: Coll<'_>) -> (Coll<'_>, Coll<'_>) {
    let ok = coll.clone().filter(|r| !matches!(r, Record::Failure(_)));
    let failed = coll.filter(|r| matches!(r, Record::Failure(_)));
    (ok, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::records::{Metric, Prompt, Sample};
    use crate::api::services::MemServices;
    use crate::api::spec::{OpSpec, RunSettings};
    use differential_dataflow::input::Input;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    fn spec() -> OpSpec {
        OpSpec {
            name: "test.pool",
            summary: "",
            doc: "",
            version: 1,
            inputs: &[],
            outputs: &[],
            is_source: false,
            is_sink: false,
        }
    }

    fn prompt(i: u32) -> Record {
        Record::Prompt(Prompt { prompt_id: format!("p{i}"), text: format!("text {i}") })
    }

    /// Runs `pool_map` over epochs of (record, diff) updates; returns the consolidated output
    /// per epoch and the node's stats.
    fn run(
        services: Arc<MemServices>,
        epochs: Vec<Vec<(Record, isize)>>,
        calls: Arc<AtomicU32>,
    ) -> (Vec<Vec<(Record, isize)>>, Arc<NodeStats>) {
        let stats = Arc::new(NodeStats::default());
        let out = Arc::new(Mutex::new(BTreeMap::<u64, Vec<(Record, isize)>>::new()));
        let (stats2, out2) = (stats.clone(), out.clone());
        let n_epochs = epochs.len();
        timely::execute_directly(move |worker| {
            let services = services.clone();
            let stats = stats2.clone();
            let out = out2.clone();
            let calls = calls.clone();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (handle, coll) = scope.new_collection::<Record, isize>();
                let ctx = BuildCtx {
                    scope,
                    node: "n".into(),
                    spec: spec(),
                    services: services.clone(),
                    stats: stats.clone(),
                    settings: RunSettings { max_attempts: 2, quarantine_after: 2, ..Default::default() },
                    base_epoch: 0,
                    shutdown: Arc::new(AtomicBool::new(false)),
                    base_dir: ".".into(),
                    params_fingerprint: "{}".into(),
                };
                let blobs = services.clone();
                let mapped = pool_map(&ctx, coll, PoolConfig { threads: 2, memoise: true }, move |r: &Record, _ctx| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match r {
                        Record::Prompt(p) if p.prompt_id == "p13" => Err(ItemError::invalid("thirteen is unlucky")),
                        // p5 writes a blob, as a sampler or an encoder does.
                        Record::Prompt(p) if p.prompt_id == "p5" => Ok(vec![Record::Sample(Sample {
                            prompt_id: p.prompt_id.clone(),
                            checkpoint_epoch: 0,
                            checkpoint_step: 0,
                            video_blob: blobs
                                .blob_put(p.text.as_bytes())
                                .map_err(|e| ItemError::transient(e.to_string()))?,
                            settings: BTreeMap::new(),
                        })]),
                        Record::Prompt(p) => Ok(vec![Record::Metric(Metric {
                            subject: p.prompt_id.clone(),
                            name: "len".into(),
                            value: (p.text.len() as f64).into(),
                        })]),
                        _ => Ok(vec![]),
                    }
                });
                let out = out.clone();
                let probe = mapped
                    .consolidate()
                    .inspect(move |(rec, t, r)| out.lock().unwrap().entry(*t).or_default().push((rec.clone(), *r)))
                    .probe();
                (handle, probe.0)
            });
            for (e, updates) in epochs.iter().enumerate() {
                for (rec, r) in updates {
                    input.update(rec.clone(), *r);
                }
                input.advance_to(e as u64 + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
        });
        let out = out.lock().unwrap();
        let per_epoch = (0..n_epochs as u64).map(|e| {
            let mut v = out.get(&e).cloned().unwrap_or_default();
            v.sort();
            v
        });
        (per_epoch.collect(), stats)
    }

    #[test]
    fn maps_memoises_retracts_and_records_failures() {
        let dir = tempfile::tempdir().unwrap();
        let services = Arc::new(MemServices::new(dir.path()));
        let calls = Arc::new(AtomicU32::new(0));
        let epochs = vec![(0..20).map(|i| (prompt(i), 1)).collect(), vec![(prompt(3), -1), (prompt(20), 1)]];
        let (out, stats) = run(services.clone(), epochs.clone(), calls.clone());
        assert_eq!(out[0].len(), 20);
        let fail = out[0].iter().find(|(r, _)| matches!(r, Record::Failure(_))).unwrap();
        let Record::Failure(f) = &fail.0 else { unreachable!() };
        assert_eq!(f.class, ErrorClass::InvalidInput);
        assert!(f.message.contains("unlucky"));
        // epoch 1: p3's output retracted, p20's added
        assert_eq!(out[1].len(), 2);
        assert!(out[1].iter().any(|(r, d)| *d == -1 && matches!(r, Record::Metric(m) if m.subject == "p3")));
        assert!(out[1].iter().any(|(r, d)| *d == 1 && matches!(r, Record::Metric(m) if m.subject == "p20")));
        // invalid input is not retried within the run
        assert_eq!(calls.load(Ordering::SeqCst), 21);
        assert_eq!(NodeStats::get(&stats.failed), 1);

        // A second run over the same store recomputes only the failed item, then quarantines it.
        calls.store(0, Ordering::SeqCst);
        let (out2, stats2) = run(services.clone(), epochs.clone(), calls.clone());
        let no_failures = |o: &Vec<Vec<(Record, isize)>>| -> Vec<Vec<(Record, isize)>> {
            o.iter().map(|e| e.iter().filter(|(r, _)| !matches!(r, Record::Failure(_))).cloned().collect()).collect()
        };
        assert_eq!(no_failures(&out2), no_failures(&out));
        assert!(out2[0].iter().any(|(r, _)| matches!(r, Record::Failure(f) if f.attempts == 2)));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "only the failed item runs again");
        assert_eq!(NodeStats::get(&stats2.memo_hits), 20);
        assert!(services.is_quarantined("n", "prompt:p13").unwrap());

        // A third run skips it as quarantined, computing nothing.
        calls.store(0, Ordering::SeqCst);
        let (out3, _) = run(services, epochs, calls.clone());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(out3[0].iter().any(|(r, _)| matches!(r, Record::Failure(f) if f.class == ErrorClass::Quarantined)));
    }

    /// A memoised result whose blob was deleted from the store is recomputed (the blob comes back);
    /// the other items stay cached.
    #[test]
    fn a_hit_whose_blob_is_gone_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let services = Arc::new(MemServices::new(dir.path()));
        let calls = Arc::new(AtomicU32::new(0));
        let epochs = vec![(0..8).map(|i| (prompt(i), 1)).collect()];
        let (out, _) = run(services.clone(), epochs.clone(), calls.clone());
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        let sample = out[0].iter().map(|(r, _)| r).find(|r| matches!(r, Record::Sample(_))).expect("p5 gives a Sample");
        let key = sample.blob_keys()[0].to_string();
        std::fs::remove_file(services.blob_path(&key)).unwrap();

        calls.store(0, Ordering::SeqCst);
        let (again, stats) = run(services.clone(), epochs, calls.clone());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "only the item whose blob is gone runs again");
        assert_eq!(NodeStats::get(&stats.memo_hits), 7);
        assert_eq!(again, out);
        assert!(services.blob_exists(&key), "the blob is written again");
    }
}
