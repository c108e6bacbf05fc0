//! `eval.gate`: accept or reject each checkpoint by a rule over its evaluation aggregates.
//!
//! Checkpoints are decided in epoch order. The rule (the `curate.rule` expression language) reads,
//! for the checkpoint being decided: each aggregate by its dimension key (`total`, `videos`,
//! `motion_smoothness`, … — the `@backbone` suffix dropped), `ref.<key>` (the reference
//! checkpoint's value) and `drop.<key>` (`ref − value`: how much worse it got). The reference is the
//! last accepted checkpoint (`reference = "last_accepted"`, the default), the best accepted one by
//! `total` (`"best"`), or the one just before (`"previous"`). The first checkpoint has no reference:
//! a rule that needs one cannot be decided and `missing` settles it.

use super::op::{checkpoint_subject, metric_key, subject_epoch};
use crate::api::*;
use crate::curate::expr::{self, Expr};
use crate::curate::rule::Missing;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct EvalGate;

/// Port of accepted checkpoints.
pub const ACCEPTED_PORT: &str = "accepted";
/// Port of rejected checkpoints.
pub use crate::api::REJECTED_PORT;

fn d_rule() -> String {
    "drop.total <= 0.5".into()
}
fn d_missing() -> Missing {
    Missing::Keep
}

/// Which earlier checkpoint `ref.*` and `drop.*` compare with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The newest accepted checkpoint before this one.
    #[default]
    LastAccepted,
    /// The accepted checkpoint with the highest `total` so far.
    Best,
    /// The checkpoint just before this one, accepted or not.
    Previous,
}

/// Params of `eval.gate`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateParams {
    /// Accept when this holds, e.g. `drop.total <= 0.5 && imaging_quality >= 40`.
    #[serde(default = "d_rule")]
    pub rule: String,
    /// What `ref.*` / `drop.*` compare with: last_accepted, best or previous.
    #[serde(default)]
    pub reference: Reference,
    /// When the rule cannot be decided (the first checkpoint; a dimension not scored): keep (accept),
    /// drop (reject) or fail.
    #[serde(default = "d_missing")]
    pub missing: Missing,
}

/// One checkpoint's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub epoch: u64,
    pub accepted: bool,
    /// Why, in words: the values the rule read.
    pub reason: String,
}

struct GateEnv<'a> {
    now: &'a BTreeMap<String, f64>,
    reference: Option<&'a BTreeMap<String, f64>>,
}

impl expr::Env for GateEnv<'_> {
    fn score(&self, name: &str) -> Option<f64> {
        if let Some(k) = name.strip_prefix("ref.") {
            return self.reference?.get(k).copied();
        }
        if let Some(k) = name.strip_prefix("drop.") {
            return Some(self.reference?.get(k)? - self.now.get(k)?);
        }
        self.now.get(name).copied()
    }
    fn label(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Aggregates keyed by dimension key (`name@backbone` → `name`).
fn by_key(values: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    values.iter().map(|(k, v)| (metric_key(k).to_string(), *v)).collect()
}

/// Decide every checkpoint, in epoch order. `Err` is a checkpoint the rule could not decide with
/// `missing = fail`: (epoch, message).
pub fn decide(
    aggregates: &BTreeMap<u64, BTreeMap<String, f64>>,
    rule: &Expr,
    source: &str,
    reference: Reference,
    missing: Missing,
) -> Vec<Result<Decision, (u64, String)>> {
    let mut out = Vec::new();
    let mut last_accepted: Option<BTreeMap<String, f64>> = None;
    let mut best: Option<BTreeMap<String, f64>> = None;
    let mut previous: Option<BTreeMap<String, f64>> = None;
    for (&epoch, values) in aggregates {
        let now = by_key(values);
        let refv = match reference {
            Reference::LastAccepted => last_accepted.as_ref(),
            Reference::Best => best.as_ref(),
            Reference::Previous => previous.as_ref(),
        };
        let env = GateEnv { now: &now, reference: refv };
        let read: Vec<String> = rule
            .names()
            .into_iter()
            .map(|(n, _)| {
                let v = expr::Env::score(&env, &n).map_or("missing".to_string(), |v| format!("{v:.3}"));
                format!("{n}={v}")
            })
            .collect();
        let read = read.join(", ");
        let decided = match rule.eval(&env) {
            Some(ok) => Ok(Decision { epoch, accepted: ok, reason: format!("rule `{source}` is {ok} ({read})") }),
            None => match missing {
                Missing::Keep => Ok(Decision {
                    epoch,
                    accepted: true,
                    reason: format!("rule `{source}` cannot be decided ({read}); accepted (missing = \"keep\")"),
                }),
                Missing::Drop => Ok(Decision {
                    epoch,
                    accepted: false,
                    reason: format!("rule `{source}` cannot be decided ({read}); rejected (missing = \"drop\")"),
                }),
                Missing::Fail => Err((
                    epoch,
                    format!(
                        "rule `{source}` cannot be decided for checkpoint epoch {epoch} ({read}); is the metric \
                         scored upstream? (set missing = \"keep\" or \"drop\")"
                    ),
                )),
            },
        };
        if let Ok(d) = &decided
            && d.accepted
        {
            let better = match &best {
                None => true,
                Some(b) => {
                    now.get("total").copied().unwrap_or(f64::NEG_INFINITY)
                        > b.get("total").copied().unwrap_or(f64::NEG_INFINITY)
                }
            };
            if better {
                best = Some(now.clone());
            }
            last_accepted = Some(now.clone());
        }
        previous = Some(now);
        out.push(decided);
    }
    out
}

impl TypedOperator for EvalGate {
    type Params = GateParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "eval.gate",
            summary: "Accept or reject each checkpoint by a rule over its evaluation aggregates (e.g. total must not drop by more than 0.5)",
            doc: "Reads per-checkpoint aggregates (an eval.vbench node's `out`: subjects `checkpoint:epoch<e>`) and \
                  decides the checkpoints in epoch order with `rule`, in curate.rule's expression language. Names: \
                  each aggregate by its dimension key (`total`, `videos`, `subject_consistency`, … without the \
                  `@backbone` suffix), `ref.<key>` — the reference checkpoint's value — and `drop.<key>` = ref − \
                  value. `reference`: last_accepted (default), best (highest total among accepted) or previous. The \
                  first checkpoint has no reference, so `drop.*` is missing there and `missing` decides (keep: \
                  accept). Port `out`: a Metric `gate.accepted` (1 or 0) per checkpoint; `accepted` / `rejected`: \
                  the Checkpoint records from `checkpoints`, so downstream nodes (sampling for release, export) see \
                  only accepted models. Decisions are recomputed as aggregates change.",
            version: 1,
            inputs: &[
                InPort { name: "metrics", kinds: &[Kind::Metric], required: true, doc: "per-checkpoint aggregates" },
                InPort {
                    name: "checkpoints",
                    kinds: &[Kind::Checkpoint],
                    required: false,
                    doc: "checkpoints to pass to `accepted` / `rejected`",
                },
            ],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Metric), doc: "gate.accepted per checkpoint" },
                OutPort { name: ACCEPTED_PORT, kind: OutKind::Fixed(Kind::Checkpoint), doc: "accepted checkpoints" },
                OutPort { name: REJECTED_PORT, kind: OutKind::Fixed(Kind::Checkpoint), doc: "rejected checkpoints" },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &GateParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        match expr::parse(&p.rule) {
            Err(e) => v.push(ParamIssue::error("rule", e.render(&p.rule), e.fix.clone())),
            Ok(r) => {
                if let Some((n, _)) = r.names().into_iter().find(|(_, label)| *label) {
                    v.push(ParamIssue::error(
                        "rule",
                        format!("`{n}` is compared with a string; the gate reads numbers only"),
                        Some("rule = \"drop.total <= 0.5\"".into()),
                    ));
                }
            }
        }
        v
    }

    fn fingerprint(&self, p: &GateParams) -> serde_json::Value {
        serde_json::to_value(p).unwrap_or_default()
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &GateParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let metrics = inputs.take(ctx.scope, "metrics").ok_or_else(|| BuildError::Invalid {
            node: ctx.node.clone(),
            message: "input `metrics` is not connected (an eval.vbench node's `out`)".into(),
        })?;
        let rule = expr::parse(&p.rule)
            .map_err(|e| BuildError::Invalid { node: ctx.node.clone(), message: e.render(&p.rule) })?;
        let (source, reference, missing, node) = (p.rule.clone(), p.reference, p.missing, ctx.node.clone());
        let all = metrics.flat_map(|r| match r {
            Record::Metric(m) if !m.subject.contains('/') => {
                subject_epoch(&m.subject).map(|e| ((), (e, m.name, m.value)))
            }
            _ => None,
        });
        let decisions = all.reduce(
            move |_k, vals: &[(&(u64, String, F64), isize)], out: &mut Vec<((u64, bool, String), isize)>| {
                let mut agg: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
                for ((e, name, v), c) in vals {
                    if *c > 0 {
                        agg.entry(*e).or_default().insert(name.clone(), v.0);
                    }
                }
                for d in decide(&agg, &rule, &source, reference, missing) {
                    match d {
                        Ok(d) => out.push(((d.epoch, d.accepted, d.reason), 1)),
                        // An undecidable checkpoint with missing = fail: neither accepted nor rejected.
                        Err((e, msg)) => out.push(((e, false, format!("FAIL:{msg}")), 1)),
                    }
                }
            },
        );
        let decisions = decisions.map(|((), d)| d);
        let failed = decisions.clone().flat_map(move |(e, _, reason)| {
            reason.strip_prefix("FAIL:").map(|msg| {
                Record::Failure(Failure {
                    item: checkpoint_subject(e),
                    node: node.clone(),
                    operator: "eval.gate".into(),
                    input: format!("aggregates of checkpoint epoch {e}"),
                    class: ErrorClass::InvalidInput,
                    message: msg.to_string(),
                    attempts: 1,
                })
            })
        });
        let decided = decisions.filter(|(_, _, reason)| !reason.starts_with("FAIL:"));
        let out = decided.clone().map(|(e, ok, _)| {
            Record::Metric(Metric {
                subject: checkpoint_subject(e),
                name: "gate.accepted".into(),
                value: F64(if ok { 1.0 } else { 0.0 }),
            })
        });
        let mut outputs = Outputs::default().with(OUT_PORT, out).with(FAILURES_PORT, failed);
        if let Some(ckpts) = inputs.take(ctx.scope, "checkpoints") {
            let ckpts = ckpts.flat_map(|r| match r {
                Record::Checkpoint(c) => Some((c.epoch, c)),
                _ => None,
            });
            let verdicts = decided.map(|(e, ok, reason)| (e, (ok, reason)));
            let joined = ckpts.join(verdicts);
            let accepted = joined.clone().flat_map(|(_, (c, (ok, _)))| ok.then_some(Record::Checkpoint(c)));
            let rejected = joined.flat_map(|(_, (c, (ok, _)))| (!ok).then_some(Record::Checkpoint(c)));
            outputs = outputs.with(ACCEPTED_PORT, accepted).with(REJECTED_PORT, rejected);
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(rows: &[(u64, f64)]) -> BTreeMap<u64, BTreeMap<String, f64>> {
        rows.iter()
            .map(|(e, t)| {
                (*e, BTreeMap::from([("total".to_string(), *t), ("motion_smoothness@embedded:rife".to_string(), 90.0)]))
            })
            .collect()
    }

    fn run(rows: &[(u64, f64)], rule: &str, reference: Reference, missing: Missing) -> Vec<bool> {
        let r = expr::parse(rule).unwrap();
        decide(&agg(rows), &r, rule, reference, missing).into_iter().map(|d| d.unwrap().accepted).collect()
    }

    #[test]
    fn total_must_not_drop_by_more_than_half_a_point() {
        let rows = [(0, 80.0), (1, 80.4), (2, 79.8), (3, 79.95), (4, 81.0)];
        // last accepted: 80.0 → 80.4 ok → 79.8 (drop 0.6) rejected → 79.95 vs 80.4 (0.45) ok → 81 ok.
        assert_eq!(
            run(&rows, "drop.total <= 0.5", Reference::LastAccepted, Missing::Keep),
            [true, true, false, true, true]
        );
        // previous: 79.95 vs 79.8 is fine either way.
        assert_eq!(
            run(&rows, "drop.total <= 0.5", Reference::Previous, Missing::Keep),
            [true, true, false, true, true]
        );
        // best: 79.95 vs best 80.4 → ok; a later 79.85 would be rejected against 81.
        let rows2 = [(0, 80.0), (1, 81.0), (2, 80.7), (3, 80.4)];
        assert_eq!(run(&rows2, "drop.total <= 0.5", Reference::Best, Missing::Keep), [true, true, true, false]);
        assert_eq!(run(&rows2, "drop.total <= 0.5", Reference::LastAccepted, Missing::Keep), [true, true, true, true]);
        // The first checkpoint cannot be decided by a drop rule: `missing` settles it.
        assert_eq!(run(&rows[..1], "drop.total <= 0.5", Reference::LastAccepted, Missing::Drop), [false]);
        // Dimension keys without their backbone suffix.
        assert_eq!(run(&rows[..2], "motion_smoothness >= 95", Reference::LastAccepted, Missing::Keep), [false, false]);
        let r = expr::parse("drop.total <= 0.5").unwrap();
        let d = decide(&agg(&rows[..1]), &r, "drop.total <= 0.5", Reference::LastAccepted, Missing::Fail);
        assert!(d[0].as_ref().unwrap_err().1.contains("drop.total=missing"));
        let d = decide(&agg(&rows[..3]), &r, "drop.total <= 0.5", Reference::LastAccepted, Missing::Keep);
        assert!(d[2].as_ref().unwrap().reason.contains("drop.total=0.600"), "{:?}", d[2]);
    }
}
