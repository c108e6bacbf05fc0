//! Per-epoch decisions over a whole collection: the pattern of stages that act once an epoch is
//! complete (fitting a codec on the clips so far, a training round on the latents so far).
//!
//! [`on_epochs`] gathers a collection on worker 0, keeps its accumulated contents (records with
//! their multiplicities, so retractions leave it), and when the frontier passes an epoch that
//! changed it calls the decision function with the contents and that epoch's changes. What the
//! function returns is emitted at that epoch with diff +1: a stream of jobs that downstream pools
//! run off the worker thread.

use super::spec::Scope;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

/// What an epoch's decision sees.
pub struct EpochView<'a, D> {
    /// The epoch that just completed.
    pub epoch: u64,
    /// Everything accumulated so far (multiplicity > 0), this epoch's changes applied.
    pub contents: &'a BTreeMap<D, isize>,
    /// This epoch's changes (record, diff), consolidated; never empty.
    pub changes: &'a [(D, isize)],
}

/// Calls `decide` on worker 0 once per completed epoch that changed `input`; emits the jobs it returns.
pub fn on_epochs<'s, D, J, F>(
    scope: Scope<'s>,
    input: VecCollection<'s, u64, D, isize>,
    name: &str,
    mut decide: F,
) -> VecCollection<'s, u64, J, isize>
where
    D: timely::ExchangeData + Ord + Clone,
    J: timely::ExchangeData,
    F: FnMut(EpochView<'_, D>) -> Vec<J> + 'static,
{
    let _ = scope;
    let mut contents: BTreeMap<D, isize> = BTreeMap::new();
    type Pending<D> = BTreeMap<u64, (timely::dataflow::operators::Capability<u64>, Vec<(D, isize)>)>;
    let mut pending: Pending<D> = BTreeMap::new();
    input
        .inner
        .unary_frontier(Exchange::new(|_: &(D, u64, isize)| 0u64), name, move |_cap, _info| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (d, t, r) in data.drain(..) {
                        let entry = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                        entry.1.push((d, r));
                    }
                });
                while let Some((&t, _)) = pending.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let Some((cap, changes)) = pending.remove(&t) else { break };
                    let mut net: BTreeMap<D, isize> = BTreeMap::new();
                    for (d, r) in changes {
                        *net.entry(d).or_default() += r;
                    }
                    let changes: Vec<(D, isize)> = net.into_iter().filter(|(_, r)| *r != 0).collect();
                    if changes.is_empty() {
                        continue;
                    }
                    for (d, r) in &changes {
                        let e = contents.entry(d.clone()).or_default();
                        *e += r;
                        if *e == 0 {
                            contents.remove(d);
                        }
                    }
                    let jobs = decide(EpochView { epoch: t, contents: &contents, changes: &changes });
                    output.session(&cap).give_iterator(jobs.into_iter().map(|j| (j, t, 1isize)));
                }
            }
        })
        .as_collection()
}
