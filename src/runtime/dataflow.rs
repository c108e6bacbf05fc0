//! Turning a validated [`Plan`] into one timely dataflow on a worker.

use crate::graph::Plan;
use medgen_operators::api::{BuildCtx, Coll, Inputs, NodeStats, REJECTED_PORT, RunSettings, Scope, Services};
use medgen_operators::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What every worker needs to build the dataflow (shared, read-only).
pub struct BuildShared {
    pub plan: Arc<Plan>,
    pub registry: Arc<Registry>,
    pub services: Arc<dyn Services>,
    pub stats: BTreeMap<String, Arc<NodeStats>>,
    pub settings: RunSettings,
    pub base_epoch: u64,
    pub shutdown: Arc<AtomicBool>,
}

/// Build every node of the plan, in topological order, inside `scope`.
pub fn build(scope: Scope<'_>, shared: &BuildShared) -> Result<(), String> {
    let mut produced: BTreeMap<(String, String), Coll<'_>> = BTreeMap::new();
    for node in &shared.plan.nodes {
        let op = shared
            .registry
            .get(node.op)
            .ok_or_else(|| format!("node `{}`: operator `{}` is not in this build", node.name, node.op))?;
        let mut ports: BTreeMap<&'static str, Vec<Coll<'_>>> = BTreeMap::new();
        let mut sources: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (target, input) in &node.inputs {
            let coll = produced
                .get(&(input.node.clone(), input.port.clone()))
                .cloned()
                .ok_or_else(|| format!("node `{}`: input `{}.{}` was not built", node.name, input.node, input.port))?;
            ports.entry(*target).or_default().push(coll);
            sources.entry(*target).or_default().push(input.to_string());
        }
        let stats = shared.stats.get(&node.name).cloned().unwrap_or_default();
        let counters = stats.clone();
        let mut ctx = BuildCtx {
            scope,
            node: node.name.clone(),
            spec: op.spec(),
            services: shared.services.clone(),
            stats,
            settings: shared.settings.clone(),
            base_epoch: shared.base_epoch,
            shutdown: shared.shutdown.clone(),
            base_dir: shared.plan.base_dir.clone(),
            params_fingerprint: node.fingerprint.clone(),
        };
        let outputs = op.build(&mut ctx, &node.params, Inputs { ports, sources }).map_err(|e| e.to_string())?;
        for (port, coll) in outputs.ports {
            // A filter's rejections, net of retractions, for the run summary.
            let coll = if port == REJECTED_PORT {
                let c = counters.clone();
                coll.inspect(move |(_, _, r)| {
                    c.rejected.fetch_add(*r as i64, std::sync::atomic::Ordering::Relaxed);
                })
            } else {
                coll
            };
            produced.insert((node.name.clone(), port.to_string()), coll);
        }
    }
    Ok(())
}
