//! Test-only operators with the port shapes the built-in registry does not have yet (typed inputs,
//! several input ports, pass-through outputs), and the unit tests that need them.

use super::*;
use medgen_operators::api::{
    BuildCtx, BuildError, CheckCtx, FAILURES_PORT, InPort, Inputs, Kind, OUT_PORT, OpSpec, OutKind, OutPort, Outputs,
    ParamIssue, TypedOperator,
};
use serde::{Deserialize, Serialize};

/// Params of the test operators.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TParams {
    /// A threshold.
    #[serde(default)]
    pub threshold: f64,
}

macro_rules! test_op {
    ($ty:ident, $name:expr, $inputs:expr, $outputs:expr) => {
        pub struct $ty;
        impl TypedOperator for $ty {
            type Params = TParams;
            fn spec(&self) -> OpSpec {
                OpSpec {
                    name: $name,
                    summary: "test",
                    doc: "test",
                    version: 1,
                    inputs: $inputs,
                    outputs: $outputs,
                    is_source: false,
                    is_sink: false,
                }
            }
            fn check(&self, p: &TParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
                if p.threshold < 0.0 {
                    vec![ParamIssue::error("threshold", "must not be negative", Some("e.g. threshold = 0.5".into()))]
                } else {
                    Vec::new()
                }
            }
            fn build<'s>(
                &self,
                ctx: &mut BuildCtx<'s>,
                _p: &TParams,
                _inputs: Inputs<'s>,
            ) -> Result<Outputs<'s>, BuildError> {
                Err(BuildError::Invalid { node: ctx.node.clone(), message: "test operator".into() })
            }
        }
    };
}

test_op!(
    Segment,
    "test.segment",
    &[InPort { name: "in", kinds: &[Kind::Video], required: true, doc: "" }],
    &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Clip), doc: "" }]
);
test_op!(
    Filter,
    "test.filter",
    &[InPort { name: "in", kinds: &[], required: true, doc: "" }],
    &[
        OutPort { name: OUT_PORT, kind: OutKind::SameAs("in"), doc: "" },
        OutPort { name: "rejected", kind: OutKind::SameAs("in"), doc: "" }
    ]
);
test_op!(
    Join,
    "test.join",
    &[
        InPort { name: "clips", kinds: &[Kind::Clip], required: true, doc: "" },
        InPort { name: "captions", kinds: &[Kind::Caption], required: false, doc: "" }
    ],
    &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Caption), doc: "" }]
);

/// The built-in registry plus the test operators.
pub struct TestCatalog {
    builtin: Registry,
    extra: Vec<Box<dyn Operator>>,
}

impl TestCatalog {
    pub fn new() -> Self {
        TestCatalog { builtin: Registry::builtin(), extra: vec![Box::new(Segment), Box::new(Filter), Box::new(Join)] }
    }
}

impl OpCatalog for TestCatalog {
    fn op(&self, name: &str) -> Option<&dyn Operator> {
        self.builtin.get(name).or_else(|| self.extra.iter().find(|o| o.spec().name == name).map(|b| b.as_ref()))
    }
    fn op_names(&self) -> Vec<&'static str> {
        let mut v = self.builtin.names();
        v.extend(self.extra.iter().map(|o| o.spec().name));
        v.sort();
        v
    }
}

/// A folder with one video, and the graph path inside it.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("videos")).expect("mkdir");
    std::fs::write(dir.path().join("videos/a.mp4"), b"x").expect("write");
    let path = dir.path().join("g.toml");
    (dir, path)
}

const SOURCE: &str = "[nodes.raw]\nop = \"source.files\"\npaths = [\"videos/*.mp4\"]\n";

fn check(text: &str) -> Result<Plan, Vec<Diagnostic>> {
    let (_dir, path) = fixture();
    load_str_with(text, &path, &TestCatalog::new())
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match check(text) {
        Ok(p) => panic!("expected errors, got a plan: {p:?}"),
        Err(d) => d.into_iter().filter(Diagnostic::is_error).collect(),
    }
}

#[test]
fn kinds_resolve_through_pass_through_ports() {
    let text = format!(
        "{SOURCE}
[nodes.keep]
op = \"test.filter\"
inputs = [\"raw\"]

[nodes.seg]
op = \"test.segment\"
inputs = [\"keep\", \"keep.rejected\"]

[nodes.cap]
op = \"test.join\"
inputs = {{ clips = \"seg\" }}

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"cap\", \"seg.failures\"]
"
    );
    let plan = check(&text).expect("valid");
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["raw", "keep", "seg", "cap", "out"]);
    let keep = plan.node("keep").expect("keep");
    assert_eq!(keep.out_kinds["out"], BTreeSet::from([Kind::Video]));
    assert_eq!(keep.out_kinds["rejected"], BTreeSet::from([Kind::Video]));
    assert_eq!(keep.out_kinds[FAILURES_PORT], BTreeSet::from([Kind::Failure]));
    let seg = plan.node("seg").expect("seg");
    assert_eq!(seg.inputs.len(), 2);
    assert_eq!(seg.inputs[1], ("in", InputRef { node: "keep".into(), port: "rejected".into() }));
    assert_eq!(
        plan.node("cap").expect("cap").inputs,
        vec![("clips", InputRef { node: "seg".into(), port: "out".into() })]
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn kind_mismatch_is_reported_with_a_compatible_port() {
    let text = format!(
        "{SOURCE}
[nodes.seg]
op = \"test.segment\"
inputs = [\"raw.failures\"]

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"seg\"]
"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].message, "input `raw.failures` carries Failure but `test.segment` port `in` accepts Video");
    assert_eq!((e[0].line, e[0].col), (7, 11));
    assert_eq!(e[0].node.as_deref(), Some("seg"));
    assert!(e[0].fix.as_deref().unwrap_or("").contains("`raw` (Video)"), "{:?}", e[0].fix);
}

#[test]
fn kind_mismatch_through_a_filter() {
    // A filter passes Failure through; the segmenter rejects it.
    let text = format!(
        "{SOURCE}
[nodes.keep]
op = \"test.filter\"
inputs = [\"raw.failures\"]

[nodes.seg]
op = \"test.segment\"
inputs = [\"keep\"]

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"seg\"]
"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].message.contains("input `keep` carries Failure"), "{}", e[0].message);
}

#[test]
fn multi_port_ops_need_the_table_form_and_known_ports() {
    let text = format!(
        "{SOURCE}
[nodes.seg]
op = \"test.segment\"
inputs = [\"raw\"]

[nodes.cap]
op = \"test.join\"
inputs = [\"seg\"]

[nodes.cap2]
op = \"test.join\"
inputs = {{ clip = \"seg\" }}

[nodes.cap3]
op = \"test.join\"
inputs = {{ captions = \"cap\" }}

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"cap\", \"cap2\", \"cap3\"]
"
    );
    let e = errors(&text);
    let msgs: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(e.len(), 3, "{msgs:?}");
    assert!(msgs[0].contains("has several input ports (`clips` or `captions`)"), "{msgs:?}");
    assert!(e[0].fix.as_deref().unwrap_or("").contains("inputs = { clips = \"...\", captions = \"...\" }"));
    assert_eq!(msgs[1], "`test.join` has no input port `clip`");
    assert_eq!(e[1].fix.as_deref(), Some("did you mean `clips`?"));
    assert_eq!(msgs[2], "required input port `clips` of `test.join` is not connected");
    assert_eq!(e[2].node.as_deref(), Some("cap3"));
}

#[test]
fn cycles_are_reported_once_with_their_path() {
    let text = format!(
        "{SOURCE}
[nodes.a]
op = \"test.filter\"
inputs = [\"c\"]

[nodes.b]
op = \"test.filter\"
inputs = [\"a\"]

[nodes.c]
op = \"test.filter\"
inputs = [\"b\"]

[nodes.d]
op = \"test.filter\"
inputs = [\"c\"]

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"d\", \"raw\"]
"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].message, "cycle: a → b → c → a");
    assert_eq!(e[0].line, 11); // `inputs = ["a"]` of node b
    assert_eq!(e[0].node.as_deref(), Some("b"));
}

#[test]
fn two_separate_cycles() {
    let text = format!(
        "{SOURCE}
[nodes.a]
op = \"test.filter\"
inputs = [\"raw\", \"b\"]
[nodes.b]
op = \"test.filter\"
inputs = [\"a\"]
[nodes.x]
op = \"test.filter\"
inputs = [\"y\"]
[nodes.y]
op = \"test.filter\"
inputs = [\"x\"]
[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"b\", \"y\"]
"
    );
    let e = errors(&text);
    let msgs: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(msgs, ["cycle: a → b → a", "cycle: x → y → x"]);
}

#[test]
fn operator_check_errors_are_located() {
    let text = format!(
        "{SOURCE}
[nodes.seg]
op = \"test.segment\"
inputs = [\"raw\"]
threshold = -1.0

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"seg\"]
"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].message, "param `threshold`: must not be negative");
    assert_eq!((e[0].line, e[0].col), (8, 13));
}

fn small_plan() -> Plan {
    let text = format!(
        "[graph]\nname = \"demo \\\"x\\\"\"\n{SOURCE}
[nodes.seg]
op = \"test.segment\"
inputs = [\"raw\"]

[nodes.cap]
op = \"test.join\"
inputs = {{ clips = \"seg\" }}

[nodes.out]
op = \"sink.jsonl\"
path = \"o.jsonl\"
inputs = [\"cap\", \"raw.failures\"]
"
    );
    check(&text).expect("valid")
}

#[test]
fn dot_rendering() {
    let dot = render_dot(&small_plan());
    let expected = r#"digraph "demo \"x\"" {
  rankdir=LR;
  node [shape=box, style=rounded, fontname="Helvetica"];
  edge [fontname="Helvetica", fontsize=10];
  "raw" [label="raw\nsource.files", shape=invhouse];
  "seg" [label="seg\ntest.segment"];
  "cap" [label="cap\ntest.join"];
  "out" [label="out\nsink.jsonl", shape=folder];
  "raw" -> "seg";
  "seg" -> "cap" [label="→ clips"];
  "cap" -> "out";
  "raw" -> "out" [label="failures", style=dashed];
}
"#;
    assert_eq!(dot, expected);
}

#[test]
fn mermaid_rendering() {
    let m = render_mermaid(&small_plan());
    let expected = r#"%% demo #quot;x#quot;
flowchart LR
  n0[/"raw<br/>source.files"/]
  n1["seg<br/>test.segment"]
  n2["cap<br/>test.join"]
  n3[("out<br/>sink.jsonl")]
  n0 --> n1
  n1 -- "→ clips" --> n2
  n2 --> n3
  n0 -. "failures" .-> n3
"#;
    assert_eq!(m, expected);
}
