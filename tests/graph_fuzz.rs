//! The graph loader never panics, whatever the input, and every diagnostic it returns is located
//! (line and column ≥ 1, within the file). 10,000 cases over four strategies: random bytes, TOML-ish
//! token soup, mutations of a valid graph, and deeply nested values.

use medgen::graph::{self, Diagnostic};
use medgen_operators::registry::Registry;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::builtin)
}

/// The graph path the texts pretend to come from: the good corpus folder, so relative paths in
/// params resolve to real files and mutations reach the operators' own checks.
fn graph_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphs/good/fuzz.toml")
}

const VALID: &str = r#"[graph]
name = "fuzz"
store = "runs/fuzz"
max_attempts = 3
item_timeout_s = 600.0

[nodes.raw]
op = "source.files"
paths = ["../data/videos/*.mp4"]
watch = false

[nodes.listed]
op = "source.manifest"
path = "../data/manifest.jsonl"

[nodes.out]
op = "sink.jsonl"
inputs = ["raw", "raw.failures", "listed"]
path = "out.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = { in = ["listed.failures"] }
path = "failed.jsonl"
"#;

/// Load `text`; panics (failing the case) only if a diagnostic is not located.
fn check(text: &str) {
    let path = graph_path();
    let result = graph::load_str(text, &path, registry());
    let diags: Vec<Diagnostic> = match result {
        Ok(plan) => {
            assert!(!plan.nodes.is_empty(), "a plan without nodes");
            plan.warnings
        }
        Err(d) => {
            assert!(d.iter().any(Diagnostic::is_error), "Err without an error: {d:?}");
            d
        }
    };
    let lines = text.split('\n').count();
    for d in &diags {
        assert!(d.line >= 1 && d.col >= 1, "unlocated diagnostic {d:?}");
        assert!(d.line <= lines, "line {} past the end ({lines} lines): {d:?}", d.line);
        assert!(!d.message.is_empty());
        let _ = d.to_string();
    }
}

/// Bytes, lossily made text (the loader takes text; `load` reports non-UTF-8 itself).
fn bytes() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..400).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Tokens that appear in graph files, and some that break them.
fn tokens() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "[",
        "]",
        "[[",
        "]]",
        "{",
        "}",
        "=",
        ",",
        ".",
        "\n",
        " ",
        "\"",
        "'",
        "\"\"\"",
        "#",
        "graph",
        "nodes",
        "[graph]",
        "[nodes.raw]",
        "[nodes.out]",
        "[nodes]",
        "op",
        "inputs",
        "paths",
        "path",
        "name",
        "store",
        "max_attempts",
        "\"source.files\"",
        "\"sink.jsonl\"",
        "\"source.manifest\"",
        "\"raw\"",
        "\"raw.failures\"",
        "\"out\"",
        "\"a.b.c\"",
        "\"\"",
        "[\"raw\"]",
        "[\"../data/videos/*.mp4\"]",
        "{ in = \"raw\" }",
        "1",
        "-1",
        "0",
        "3.5",
        "1e400",
        "nan",
        "inf",
        "true",
        "false",
        "1979-05-27T07:32:00Z",
        "99999999999999999999",
        "0x",
        "é",
        "日本",
        "\u{0}",
        "\u{feff}",
        "\r\n",
        "\t",
        "\\",
        "\\u",
        "watch",
        "format",
        "\"xml\"",
        "kinds",
        "[\"video\"]",
    ]);
    prop::collection::vec(tokens, 0..80).prop_map(|t| t.concat())
}

/// Whole lines that appear in graph files, shuffled together: mostly valid TOML, rarely a valid graph.
fn lines() -> impl Strategy<Value = String> {
    let header = prop::sample::select(vec![
        "[graph]",
        "[nodes]",
        "[nodes.raw]",
        "[nodes.out]",
        "[nodes.list]",
        "[nodes.\"a.b\"]",
        "[nodes.raw.inputs]",
        "[other]",
    ])
    .prop_map(str::to_string);
    let key = prop::sample::select(vec![
        "op",
        "inputs",
        "paths",
        "path",
        "name",
        "store",
        "max_attempts",
        "quarantine_after",
        "item_timeout_s",
        "watch",
        "format",
        "kinds",
        "changelog",
        "threads",
        "in",
        "description",
        "x",
    ]);
    let val = prop::sample::select(vec![
        "\"source.files\"",
        "\"source.manifest\"",
        "\"sink.jsonl\"",
        "\"files\"",
        "[\"raw\"]",
        "[\"raw.failures\", \"list\"]",
        "[\"out.failures\"]",
        "[\"../data/videos/*.mp4\"]",
        "\"../data/manifest.jsonl\"",
        "\"o.jsonl\"",
        "{ in = [\"raw\", \"list\"] }",
        "{ in = \"out\" }",
        "[]",
        "{}",
        "3",
        "0",
        "-1",
        "2.5",
        "true",
        "\"csv\"",
        "[\"video\", \"nope\"]",
        "\"raw\"",
        "\"\"",
    ]);
    let line = prop_oneof![1 => header, 4 => (key, val).prop_map(|(k, v)| format!("{k} = {v}"))];
    prop::collection::vec(line, 0..30).prop_map(|l| l.join("\n"))
}

fn token_soup() -> impl Strategy<Value = String> {
    prop_oneof![tokens(), lines()]
}

/// One edit of the valid graph, by line.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Rename the key of a `key = value` line.
    RenameKey(usize, String),
    /// Replace the value of a `key = value` line.
    ReplaceValue(usize, String),
    /// Insert text at a character position of a line.
    Insert(usize, usize, String),
    /// Truncate the whole text at a fraction of its length.
    Truncate(u16),
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, \"a\", true]".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("1e308".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("0".to_string()),
        Just("[\"raw\", \"nope\", \"raw.nope\", \"raw.out.x\", \"\"]".to_string()),
        Just("{ in = 3 }".to_string()),
        Just("{ nope = \"raw\" }".to_string()),
        Just("\"out\"".to_string()),
        Just("\"failed.failures\"".to_string()),
        Just("[\"out.failures\"]".to_string()),
        Just("\"../data/nothing.jsonl\"".to_string()),
        Just("[\"[\"]".to_string()),
        "[a-z_.]{0,12}".prop_map(|s| format!("\"{s}\"")),
        "\\PC{0,12}".prop_map(|s| format!("{:?}", s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ]
}

fn mutation(lines: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..lines).prop_map(Mutation::DeleteLine),
        (0..lines).prop_map(Mutation::DuplicateLine),
        (0..lines, 0..lines).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (0..lines, prop_oneof!["[a-z_]{1,10}", "\\PC{1,6}", Just("op".to_string()), Just("inputs".to_string())])
            .prop_map(|(l, k)| Mutation::RenameKey(l, k)),
        (0..lines, value()).prop_map(|(l, v)| Mutation::ReplaceValue(l, v)),
        (
            0..lines,
            0usize..40,
            prop_oneof!["\\PC{1,4}", Just("\n".to_string()), Just("[".to_string()), Just("\"".to_string())]
        )
            .prop_map(|(l, c, s)| Mutation::Insert(l, c, s)),
        any::<u16>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut truncate = None;
    for m in muts {
        let n = lines.len();
        if n == 0 {
            break;
        }
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
            Mutation::RenameKey(i, k) => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.find('=') {
                    *l = format!("{k} {}", &l[eq..]);
                }
            }
            Mutation::ReplaceValue(i, v) => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.find('=') {
                    *l = format!("{}= {v}", &l[..eq]);
                }
            }
            Mutation::Insert(i, c, s) => {
                let l = &mut lines[i % n];
                let at = l.char_indices().nth(*c).map_or(l.len(), |(b, _)| b);
                l.insert_str(at, s);
            }
            Mutation::Truncate(f) => truncate = Some(*f),
        }
    }
    let mut out = lines.join("\n");
    if let Some(f) = truncate {
        let mut at = out.len() * usize::from(f) / usize::from(u16::MAX).max(1);
        while at > 0 && !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
    }
    out
}

/// Deeply nested arrays and inline tables at, below and above the parser's limit, as a param the
/// operator knows (reaching its deserializer), one it does not, or as `inputs`.
fn nesting() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["kinds", "extra", "inputs", "path"]);
    (1usize..200, any::<bool>(), any::<bool>(), key).prop_map(|(depth, tables, close, key)| {
        let (open, shut) = if tables { ("{ in = ", " }") } else { ("[", "]") };
        let mut v = open.repeat(depth);
        v.push_str("\"raw\"");
        if close {
            v.push_str(&shut.repeat(depth));
        }
        let own = if key == "inputs" { String::new() } else { "inputs = [\"raw\"]\n".to_string() };
        let path = if key == "path" { String::new() } else { "path = \"o.jsonl\"\n".to_string() };
        format!(
            "[nodes.raw]\nop = \"source.files\"\npaths = [\"../data/videos/*.mp4\"]\n\n[nodes.out]\nop = \"sink.jsonl\"\n{own}{path}{key} = {v}\n"
        )
    })
}

#[test]
fn the_valid_graph_is_valid() {
    let plan = graph::load_str(VALID, &graph_path(), registry())
        .unwrap_or_else(|d| panic!("{}", graph::render_diagnostics(&d)));
    assert_eq!(plan.nodes.len(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(text in bytes()) {
        check(&text);
    }

    #[test]
    fn token_soups(text in token_soup()) {
        check(&text);
    }

    #[test]
    fn mutated_graphs(muts in prop::collection::vec(mutation(VALID.lines().count()), 1..6)) {
        check(&apply(VALID, &muts));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nested_values(text in nesting()) {
        check(&text);
    }
}
