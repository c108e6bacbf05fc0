//! The curation chain through the `medgen` binary — `source.manifest` → `curate.metadata_filter`
//! → `curate.segment` → `curate.black_border` → `curate.rule` — on synthetic videos with titles;
//! rule changes re-measure nothing; `medgen check` rejects bad expressions and params with the
//! column inside the expression (exit 78).
#![cfg(feature = "video")]

mod curate_common;

use curate_common::*;
use medgen_operators::video::synth::SynthSpec;
use std::path::{Path, PathBuf};

fn setup(dir: &Path) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synth_video(&data.join("lap.mp4"), &SynthSpec { letterbox: 30, ..SynthSpec::simple(320, 240, 10, 70) });
    synth_video(&data.join("echo.mp4"), &SynthSpec::simple(320, 240, 10, 70));
    synth_video(&data.join("sunset.mp4"), &SynthSpec { crf: 30, ..SynthSpec::simple(320, 240, 10, 70) });
    std::fs::write(
        dir.join("manifest.jsonl"),
        concat!(
            "{\"uri\": \"data/lap.mp4\", \"title\": \"Laparoscopic cholecystectomy, full procedure\", \"channel\": \"Surgery TV\"}\n",
            "{\"uri\": \"data/echo.mp4\", \"title\": \"Parasternal long axis view\", \"description\": \"Echocardiography basics for residents\"}\n",
            "{\"uri\": \"data/sunset.mp4\", \"title\": \"Sunset timelapse over the sea\", \"tags\": \"travel, relax\"}\n",
        ),
    )
    .unwrap();
}

fn graph(dir: &Path, rule: &str) -> PathBuf {
    let g = dir.join("g.toml");
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "chain"

[nodes.rows]
op = "source.manifest"
path = "manifest.jsonl"

[nodes.medical]
op = "curate.metadata_filter"
inputs = ["rows"]

[nodes.seg]
op = "curate.segment"
inputs = ["medical"]
min_height = 240

[nodes.border]
op = "curate.black_border"
inputs = ["seg"]
mode = "crop"

[nodes.rule]
op = "curate.rule"
inputs = ["border"]
{rule}

[nodes.kept]
op = "sink.jsonl"
inputs = ["rule"]
path = "kept.jsonl"

[nodes.dropped]
op = "sink.jsonl"
inputs = ["rule.rejected"]
path = "rule_rejected.jsonl"

[nodes.not_medical]
op = "sink.jsonl"
inputs = ["medical.rejected"]
path = "not_medical.jsonl"

[nodes.failed]
op = "sink.jsonl"
inputs = ["rule.failures"]
path = "failures.jsonl"
"#
        ),
    )
    .unwrap();
    g
}

#[test]
fn the_chain_filters_by_metadata_borders_and_rules_and_rule_changes_recompute_nothing() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let store = dir.path().join("store");
    let s1 = run(&graph(dir.path(), "drop = \"border_top > 10 || border_bottom > 10\""), &store);

    let not_medical = rows(&store, "not_medical.jsonl");
    assert_eq!(not_medical.len(), 1);
    assert!(not_medical[0]["uri"].as_str().unwrap().ends_with("sunset.mp4"));
    assert_eq!(not_medical[0]["metadata"]["reason"], "0 medical terms in title, description, tags (min_matches = 1)");

    let kept = rows(&store, "kept.jsonl");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(uri(&kept[0]).ends_with("echo.mp4"));
    assert_eq!(kept[0]["clip"]["metadata"]["medical_terms"], "echocardiography");
    assert_eq!((score(&kept[0], "medical_matches"), label(&kept[0], "medical_terms")), (1.0, "echocardiography"));
    assert_eq!(label(&kept[0], "border"), "none");
    assert_eq!(score(&kept[0], "crop_height"), 240.0);

    let dropped = rows(&store, "rule_rejected.jsonl");
    assert_eq!(dropped.len(), 1);
    assert!(uri(&dropped[0]).ends_with("lap.mp4"));
    assert_eq!(dropped[0]["clip"]["metadata"]["medical_terms"], "cholecystectomy, laparoscopic");
    assert_eq!(label(&dropped[0], "rejected_by"), "rule");
    let reason = label(&dropped[0], "reason");
    assert!(
        reason.starts_with("matched drop rule `border_top > 10 || border_bottom > 10` (border_top = 30"),
        "{reason}"
    );
    assert_eq!(counter(&s1, "border", "memo_misses"), 2);
    assert_eq!(counter(&s1, "medical", "items_in"), 3);
    assert_eq!(counter(&s1, "medical", "items_out"), 2);
    // The summary's `rejected`: net records on each filter's rejected port (null without one).
    assert_eq!((counter(&s1, "rule", "rejected"), counter(&s1, "medical", "rejected")), (1, 1));
    let rows_node = s1["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "rows").unwrap();
    assert!(rows_node["rejected"].is_null(), "{rows_node}");

    // A keep rule instead, with a label comparison and metadata_filter's count: no measurement
    // is redone anywhere.
    let s2 = run(
        &graph(dir.path(), "keep = \"border_top <= 40 && border != 'left,right' && medical_matches >= 1\""),
        &store,
    );
    for node in ["seg", "border"] {
        assert_eq!((counter(&s2, node, "memo_hits"), counter(&s2, node, "memo_misses")), (2, 0), "{node}");
    }
    assert_eq!(rows(&store, "kept.jsonl").len(), 2);
    assert!(rows(&store, "rule_rejected.jsonl").is_empty());

    // A rule on a score nobody computes: `missing` decides.
    run(&graph(dir.path(), "drop = \"aesthetic < 4.0\"\nmissing = \"fail\""), &store);
    let failures = rows(&store, "failures.jsonl");
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0]["class"], "invalid_input");
    assert!(failures[0]["message"].as_str().unwrap().contains("no aesthetic"), "{}", failures[0]);
    assert!(failures[0]["item"].as_str().unwrap().starts_with("scores:"));
    assert!(rows(&store, "kept.jsonl").is_empty());
    run(&graph(dir.path(), "drop = \"aesthetic < 4.0\""), &store);
    let kept = rows(&store, "kept.jsonl");
    assert_eq!(kept.len(), 2);
    assert_eq!(label(&kept[0], "rule_missing"), "aesthetic");
}

/// A graph with one `curate.rule` node with the given params, and a source to feed it.
fn check_graph(dir: &Path, name: &str, extra_nodes: &str) -> PathBuf {
    let g = dir.join(format!("{name}.toml"));
    std::fs::write(
        &g,
        format!(
            r#"[graph]
name = "{name}"

[nodes.raw]
op = "source.files"
paths = ["*.mp4"]

[nodes.seg]
op = "curate.segment"
inputs = ["raw"]

{extra_nodes}
"#
        ),
    )
    .unwrap();
    g
}

#[test]
fn check_rejects_bad_expressions_and_params_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    // The paper's joint rule, and a keep rule with labels: valid.
    let ok = check_graph(
        dir.path(),
        "ok",
        "[nodes.joint]\nop = \"curate.rule\"\ninputs = [\"seg\"]\ndrop = \"technical < 0.3 && aesthetic < 4.0\"\n\n\
         [nodes.cat]\nop = \"curate.rule\"\ninputs = [\"joint\"]\nkeep = \"category == 'teaching' || !(motion > 2)\"\n\n\
         [nodes.bb]\nop = \"curate.black_border\"\ninputs = [\"cat\"]\nmode = \"crop\"\n\n\
         [nodes.dd]\nop = \"curate.dedup\"\ninputs = [\"bb\"]\n\n\
         [nodes.meta]\nop = \"curate.metadata_filter\"\ninputs = [\"raw\"]\n",
    );
    let (code, text) = check(&ok);
    assert_eq!(code, 0, "{text}");

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad_expr",
            "[nodes.r]\nop = \"curate.rule\"\ninputs = [\"seg\"]\ndrop = \"technical < && aesthetic < 4.0\"\n",
            &[
                "param `drop`: invalid expression at column 13: expected a number, a string or a name, found `&&`",
                "    technical < && aesthetic < 4.0\n                ^^",
            ],
        ),
        (
            "and_word",
            "[nodes.r]\nop = \"curate.rule\"\ninputs = [\"seg\"]\ndrop = \"technical < 0.3 and aesthetic < 4\"\n",
            &["column 17", "`and` is not an operator here", "write `&&`"],
        ),
        ("no_rule", "[nodes.r]\nop = \"curate.rule\"\ninputs = [\"seg\"]\n", &["give the rule as `drop` or `keep`"]),
        (
            "bad_missing",
            "[nodes.r]\nop = \"curate.rule\"\ninputs = [\"seg\"]\ndrop = \"a < 1\"\nmissing = \"maybe\"\n",
            &["missing"],
        ),
        (
            "bad_segment",
            "[nodes.s2]\nop = \"curate.segment\"\ninputs = [\"raw\"]\ntau = 1.5\nmin_seconds = 8.0\nmax_seconds = 6.0\ncut_threshold = 0.01\n",
            &[
                "param `tau`: 1.5 is out of range",
                "param `max_seconds`: must be at least min_seconds (8)",
                "param `cut_threshold`",
            ],
        ),
        ("bad_mode", "[nodes.b]\nop = \"curate.black_border\"\ninputs = [\"seg\"]\nmode = \"trim\"\n", &["mode"]),
        ("bad_kind", "[nodes.b]\nop = \"curate.black_border\"\ninputs = [\"raw\"]\n", &["Video"]),
        (
            "bad_dictionary",
            "[nodes.m]\nop = \"curate.metadata_filter\"\ninputs = [\"raw\"]\nkeywords = \"builtin:medicine\"\nkeywords_file = \"missing.txt\"\n",
            &["unknown dictionary `builtin:medicine`", "cannot read"],
        ),
        (
            "typo",
            "[nodes.d]\nop = \"curate.dedup\"\ninputs = [\"seg\"]\nmax_distanse = 3\n",
            &["max_distanse", "max_distance"],
        ),
    ];
    for (name, nodes, needles) in cases {
        let (code, text) = check(&check_graph(dir.path(), name, nodes));
        assert_eq!(code, 78, "{name}: {text}");
        for n in *needles {
            assert!(text.contains(n), "{name}: `{n}` not in:\n{text}");
        }
    }
}

#[test]
fn ops_documents_the_curation_operators() {
    for (op, needles) in [
        ("curate.rule", &["drop", "keep", "missing", "rejected"][..]),
        ("curate.segment", &["sample_fps", "tau", "min_seconds", "max_seconds", "min_height", "cut_threshold"][..]),
        ("curate.black_border", &["persist_fraction", "min_width_px", "mode", "canny_low"][..]),
        ("curate.dedup", &["max_distance", "bands", "frames"][..]),
        ("curate.metadata_filter", &["keywords_file", "channels", "min_matches", "MiniLM"][..]),
    ] {
        let out = medgen().args(["ops", op]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "{op}: `{n}` not in:\n{text}");
        }
    }
}
