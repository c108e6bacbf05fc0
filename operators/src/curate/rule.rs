//! `curate.rule`: keep or drop clips by a boolean expression over their scores and labels, e.g. the
//! paper's joint rule `drop = "technical < 0.3 && aesthetic < 4.0"` (stage 10). The language is in
//! [`super::expr`]; expressions are checked by `medgen check`, with the column of any error.

use super::expr::{self, Expr};
use super::{REJECTED_PORT, count_in, count_out, reject, split_decided, take_input, to_scores};
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `curate.rule` operator.
pub struct CurateRule;

/// What to do with a clip when the result depends on a score or label it does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Keep the clip (label `rule_missing` names what was missing).
    #[default]
    Keep,
    /// Drop it (to `rejected`, reason says what was missing).
    Drop,
    /// Emit a Failure record (class invalid_input) on the `failures` port instead.
    Fail,
}

/// Params of `curate.rule`. Give exactly one of `drop` and `keep`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    /// Drop clips for which this expression is true, e.g. "technical < 0.3 && aesthetic < 4.0".
    /// Names are scores (compared with numbers) or labels (compared with "strings"); operators
    /// `|| && ! < <= > >= == !=` and parentheses.
    #[serde(default)]
    pub drop: Option<String>,
    /// Keep only clips for which this expression is true, e.g. "border_top == 0 && category != \"animation\"".
    #[serde(default)]
    pub keep: Option<String>,
    /// When the result depends on a score or label the clip lacks (or a NaN score): `keep`,
    /// `drop` or `fail` (a Failure record). Conditions that decide without it (`false && x < 1`)
    /// need nothing.
    #[serde(default)]
    pub missing: Missing,
}

impl RuleParams {
    /// (`drop` or `keep`, the expression).
    fn rule(&self) -> Option<(&'static str, &str)> {
        match (&self.drop, &self.keep) {
            (Some(d), None) => Some(("drop", d)),
            (None, Some(k)) => Some(("keep", k)),
            _ => None,
        }
    }
}

/// The outcome of a rule on one clip.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Keep(Scores),
    Reject(Scores),
    /// The clip, and why it cannot be decided.
    Fail(Scores, String),
}

/// Apply a parsed rule to a clip.
pub fn apply(mut s: Scores, rule: &Expr, is_drop: bool, source: &str, missing: Missing, node: &str) -> Outcome {
    let values = || {
        rule.names()
            .iter()
            .map(|(n, is_label)| {
                let v = if *is_label {
                    s.labels.get(n).map_or("missing".to_string(), |l| format!("{l:?}"))
                } else {
                    s.scores.get(n).map_or("missing".to_string(), |v| format!("{}", v.0))
                };
                format!("{n} = {v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verb = if is_drop { "drop" } else { "keep" };
    match rule.eval(&s) {
        Some(hit) => {
            if hit == is_drop {
                let reason = if is_drop {
                    format!("matched drop rule `{source}` ({})", values())
                } else {
                    format!("did not match keep rule `{source}` ({})", values())
                };
                reject(&mut s, node, reason);
                Outcome::Reject(s)
            } else {
                Outcome::Keep(s)
            }
        }
        None => {
            let absent: Vec<String> = rule
                .names()
                .into_iter()
                .filter(|(n, is_label)| {
                    if *is_label { !s.labels.contains_key(n) } else { s.scores.get(n).is_none_or(|v| v.0.is_nan()) }
                })
                .map(|(n, _)| n)
                .collect();
            let what = absent.join(", ");
            match missing {
                Missing::Keep => {
                    s.labels.insert("rule_missing".into(), what);
                    Outcome::Keep(s)
                }
                Missing::Drop => {
                    reject(
                        &mut s,
                        node,
                        format!("{verb} rule `{source}` cannot be decided: missing {what} (missing = \"drop\")"),
                    );
                    Outcome::Reject(s)
                }
                Missing::Fail => Outcome::Fail(
                    s,
                    format!(
                        "{verb} rule `{source}` cannot be decided: this clip has no {what}; is the node that computes it \
                     upstream of this one? (set missing = \"keep\" or \"drop\" to decide such clips instead)"
                    ),
                ),
            }
        }
    }
}

impl TypedOperator for CurateRule {
    type Params = RuleParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "curate.rule",
            summary: "Keep or drop clips by a boolean expression over scores and labels (e.g. technical < 0.3 && aesthetic < 4.0)",
            doc: "Evaluates `drop` (drop where true) or `keep` (keep only where true) on every clip. Expressions: \
                  names of scores compared with numbers (`aesthetic < 4.0`, `-0.5`, `1e-3`), names of labels compared \
                  with strings (`category == \"teaching\"`, == and != only), `!`, `&&`, `||` (tightest first) and \
                  parentheses; comparisons do not chain. `medgen check` parses the expression and points at the \
                  column of any error. When the result depends on a score or label a clip lacks (or a NaN score) — \
                  unknowns follow three-valued logic, so `false && x < 1` needs no x — `missing` decides: keep (label \
                  rule_missing), drop, or fail (a Failure record). Dropped clips go to `rejected` with labels \
                  rejected_by and reason (the rule and the values it read). Cheap: no memo, nothing recomputed.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Clip, Kind::Scores], required: true, doc: "scored clips" }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Scores), doc: "kept clips" },
                OutPort {
                    name: REJECTED_PORT,
                    kind: OutKind::Fixed(Kind::Scores),
                    doc: "dropped clips, with rejected_by and reason",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &RuleParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let example = Some("drop = \"technical < 0.3 && aesthetic < 4.0\"".to_string());
        match (&p.drop, &p.keep) {
            (None, None) => vec![ParamIssue::error("", "give the rule as `drop` or `keep`", example)],
            (Some(_), Some(_)) => {
                vec![ParamIssue::error(
                    "keep",
                    "give either `drop` or `keep`, not both",
                    Some("negate one into the other with !( ... )".into()),
                )]
            }
            _ => {
                let Some((key, src)) = p.rule() else { return Vec::new() };
                match expr::parse(src) {
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        vec![ParamIssue::error(key, format!("invalid expression at {}", e.render(src)), e.fix.clone())]
                    }
                }
            }
        }
    }

    fn fingerprint(&self, p: &RuleParams) -> serde_json::Value {
        serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &RuleParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let invalid = |message: String| BuildError::Invalid { node: ctx.node.clone(), message };
        let (verb, src) = p.rule().ok_or_else(|| invalid("give exactly one of `drop` and `keep`".into()))?;
        let rule = expr::parse(src).map_err(|e| invalid(format!("invalid expression at {}", e.render(src))))?;
        let (node, source, missing, is_drop) = (ctx.node.clone(), src.to_string(), p.missing, verb == "drop");
        let input = count_in(ctx, input);
        let outcomes =
            input.flat_map(move |r| to_scores(&r).map(|s| apply(s, &rule, is_drop, &source, missing, &node)));
        let decided = outcomes.clone().flat_map(|o| match o {
            Outcome::Keep(s) => Some((true, s)),
            Outcome::Reject(s) => Some((false, s)),
            Outcome::Fail(..) => None,
        });
        let (node, operator) = (ctx.node.clone(), ctx.spec.name.to_string());
        let failed = outcomes.flat_map(move |o| match o {
            Outcome::Fail(s, message) => Some(Record::Failure(Failure {
                item: format!("scores:{}", s.clip.clip_id),
                node: node.clone(),
                operator: operator.clone(),
                input: format!("{} [{:.3}s, {:.3}s)", s.clip.uri, s.clip.start_s.0, s.clip.end_s.0),
                class: ErrorClass::InvalidInput,
                message,
                attempts: 1,
            })),
            _ => None,
        });
        let (kept, rejected) = split_decided(decided);
        let kept = count_out(ctx, kept);
        Ok(Outputs::default().with(OUT_PORT, kept).with(REJECTED_PORT, rejected).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn clip(scores: &[(&str, f64)], labels: &[(&str, &str)]) -> Scores {
        Scores {
            clip: Clip {
                clip_id: "c1".into(),
                source_id: "s".into(),
                uri: "/v.mp4".into(),
                start_s: F64(0.0),
                end_s: F64(8.0),
                fps: F64(25.0),
                width: 720,
                height: 480,
                blob: None,
                metadata: BTreeMap::new(),
            },
            scores: scores.iter().map(|(k, v)| (k.to_string(), F64(*v))).collect(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn drop_and_keep_rules_decide_with_reasons() {
        let src = "technical < 0.3 && aesthetic < 4.0";
        let rule = expr::parse(src).unwrap();
        match apply(clip(&[("technical", 0.2), ("aesthetic", 3.5)], &[]), &rule, true, src, Missing::Keep, "joint") {
            Outcome::Reject(s) => {
                assert_eq!(s.labels["rejected_by"], "joint");
                assert_eq!(
                    s.labels["reason"],
                    "matched drop rule `technical < 0.3 && aesthetic < 4.0` (technical = 0.2, aesthetic = 3.5)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply(clip(&[("technical", 0.2), ("aesthetic", 4.5)], &[]), &rule, true, src, Missing::Keep, "j"),
            Outcome::Keep(_)
        ));
        let keep = expr::parse("category == 'teaching'").unwrap();
        assert!(matches!(
            apply(clip(&[], &[("category", "teaching")]), &keep, false, "k", Missing::Keep, "j"),
            Outcome::Keep(_)
        ));
        match apply(clip(&[], &[("category", "animation")]), &keep, false, "category == 'teaching'", Missing::Keep, "j")
        {
            Outcome::Reject(s) => assert!(
                s.labels["reason"].contains("did not match keep rule")
                    && s.labels["reason"].contains("category = \"animation\"")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_values_keep_drop_or_fail() {
        let src = "technical < 0.3 && aesthetic < 4.0";
        let rule = expr::parse(src).unwrap();
        let c = || clip(&[("technical", 0.1)], &[]);
        match apply(c(), &rule, true, src, Missing::Keep, "j") {
            Outcome::Keep(s) => assert_eq!(s.labels["rule_missing"], "aesthetic"),
            other => panic!("{other:?}"),
        }
        match apply(c(), &rule, true, src, Missing::Drop, "j") {
            Outcome::Reject(s) => assert!(s.labels["reason"].contains("missing aesthetic")),
            other => panic!("{other:?}"),
        }
        match apply(c(), &rule, true, src, Missing::Fail, "j") {
            Outcome::Fail(_, m) => assert!(m.contains("no aesthetic"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Decided without the missing score: technical is high, so && is false whatever aesthetic is.
        assert!(matches!(
            apply(clip(&[("technical", 0.9)], &[]), &rule, true, src, Missing::Fail, "j"),
            Outcome::Keep(_)
        ));
    }

    #[test]
    fn check_reports_expression_errors_with_columns() {
        let ctx = CheckCtx { base_dir: ".".into(), node: "r".into() };
        let p = |drop: Option<&str>, keep: Option<&str>| RuleParams {
            drop: drop.map(Into::into),
            keep: keep.map(Into::into),
            missing: Missing::Keep,
        };
        let issues = TypedOperator::check(&CurateRule, &p(Some("technical < && aesthetic < 4"), None), &ctx);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "drop");
        assert!(issues[0].message.starts_with("invalid expression at column 13:"), "{}", issues[0].message);
        assert!(
            issues[0].message.contains("\n    technical < && aesthetic < 4\n                ^^"),
            "{}",
            issues[0].message
        );
        assert!(TypedOperator::check(&CurateRule, &p(Some("a < 1"), None), &ctx).is_empty());
        assert_eq!(TypedOperator::check(&CurateRule, &p(None, None), &ctx).len(), 1);
        assert_eq!(TypedOperator::check(&CurateRule, &p(Some("a < 1"), Some("b > 1")), &ctx)[0].path, "keep");
    }
}
