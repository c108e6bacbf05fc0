//! Drawing a plan: Graphviz DOT and Mermaid.

use super::{Plan, PlannedNode};
use medgen_operators::api::{FAILURES_PORT, OUT_PORT};
use std::fmt::Write;

/// The label of an edge: the output port when it is not `out`, and the input port when the target
/// has several.
fn edge_label(target: &PlannedNode, in_port: &str, out_port: &str) -> Option<String> {
    let several_inputs = target.spec.inputs.len() > 1;
    match (out_port != OUT_PORT, several_inputs) {
        (false, false) => None,
        (true, false) => Some(out_port.to_string()),
        (false, true) => Some(format!("→ {in_port}")),
        (true, true) => Some(format!("{out_port} → {in_port}")),
    }
}

/// A DOT string literal.
fn dot_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT (`medgen graph --format dot`): one box per node labelled `name\nop` (sources and
/// sinks shaped apart), edges labelled by port where it is not the default, `failures` edges dashed.
pub fn render_dot(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_str(&plan.header.name));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(s, "  node [shape=box, style=rounded, fontname=\"Helvetica\"];");
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=10];");
    for n in &plan.nodes {
        let shape = if n.spec.is_source {
            ", shape=invhouse"
        } else if n.spec.is_sink {
            ", shape=folder"
        } else {
            ""
        };
        let _ = writeln!(s, "  {} [label={}{shape}];", dot_str(&n.name), dot_str(&format!("{}\n{}", n.name, n.op)));
    }
    for n in &plan.nodes {
        for (in_port, r) in &n.inputs {
            let mut attrs = Vec::new();
            if let Some(label) = edge_label(n, in_port, &r.port) {
                attrs.push(format!("label={}", dot_str(&label)));
            }
            if r.port == FAILURES_PORT {
                attrs.push("style=dashed".into());
            }
            let attrs = if attrs.is_empty() { String::new() } else { format!(" [{}]", attrs.join(", ")) };
            let _ = writeln!(s, "  {} -> {}{attrs};", dot_str(&r.node), dot_str(&n.name));
        }
    }
    s.push_str("}\n");
    s
}

/// Text safe inside a Mermaid `"..."` label.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Mermaid `flowchart LR` (`medgen graph --format mermaid`): nodes `name<br/>op` (ids `n0`, `n1`, ...
/// so that any name is safe), edges labelled like the DOT output, `failures` edges dotted.
pub fn render_mermaid(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "%% {}", mermaid_text(&plan.header.name));
    let _ = writeln!(s, "flowchart LR");
    let id = |name: &str| plan.nodes.iter().position(|n| n.name == name).map(|i| format!("n{i}"));
    for (i, n) in plan.nodes.iter().enumerate() {
        let label = format!("\"{}<br/>{}\"", mermaid_text(&n.name), mermaid_text(n.op));
        let shaped = if n.spec.is_source {
            format!("[/{label}/]")
        } else if n.spec.is_sink {
            format!("[({label})]")
        } else {
            format!("[{label}]")
        };
        let _ = writeln!(s, "  n{i}{shaped}");
    }
    for (i, n) in plan.nodes.iter().enumerate() {
        for (in_port, r) in &n.inputs {
            let Some(from) = id(&r.node) else { continue };
            let label = edge_label(n, in_port, &r.port).map(|l| mermaid_text(&l));
            let line = match (r.port == FAILURES_PORT, label) {
                (true, Some(l)) => format!("  {from} -. \"{l}\" .-> n{i}"),
                (true, None) => format!("  {from} -.-> n{i}"),
                (false, Some(l)) => format!("  {from} -- \"{l}\" --> n{i}"),
                (false, None) => format!("  {from} --> n{i}"),
            };
            let _ = writeln!(s, "{line}");
        }
    }
    s
}
