//! `medgen ops [NAME]`: the operator registry, generated from the code (specs and params schemas).

use clap::Args;
use medgen_operators::api::{InPort, OutKind, OutPort};
use medgen_operators::registry::Registry;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Show this operator in full (ports, params with types, defaults and docs).
    pub name: Option<String>,
    /// Print as JSON (the spec and the params' JSON schema).
    #[arg(long)]
    pub json: bool,
}

/// One documented param.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDoc {
    pub name: String,
    pub ty: String,
    pub default: Option<String>,
    pub required: bool,
    pub doc: String,
}

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        if let Some(def) = root.get("$defs").and_then(|d| d.get(name)) {
            return def;
        }
    }
    v
}

fn type_name(root: &Value, v: &Value) -> String {
    let v = resolve(root, v);
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        return values.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" | ");
    }
    if let Some(one) = v.get("oneOf").or_else(|| v.get("anyOf")).and_then(Value::as_array) {
        let parts: Vec<String> = one
            .iter()
            .map(|x| {
                let x = resolve(root, x);
                x.get("const").map(|c| c.to_string()).unwrap_or_else(|| type_name(root, x))
            })
            .collect();
        return parts.join(" | ");
    }
    match v.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = v.get("items").map(|i| type_name(root, i)).unwrap_or_else(|| "any".into());
            format!("[{item}]")
        }
        Some(Value::String(t)) => match t.as_str() {
            "number" => "float".into(),
            "integer" => "integer".into(),
            other => other.into(),
        },
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" | ")
        }
        _ => "any".into(),
    }
}

/// The params of an operator, from its JSON schema.
pub fn param_docs(schema: &Value) -> Vec<ParamDoc> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            out.push(ParamDoc {
                name: name.clone(),
                ty: type_name(schema, p),
                default: p.get("default").map(|d| d.to_string()),
                required: required.contains(&name.as_str()),
                doc: p.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " "),
            });
        }
    }
    out.sort_by_key(|p| (!p.required, p.name.clone()));
    out
}

fn kinds(k: &[medgen_operators::api::Kind]) -> String {
    if k.is_empty() { "any".into() } else { k.iter().map(|k| k.name()).collect::<Vec<_>>().join(" | ") }
}

fn in_port(p: &InPort) -> String {
    format!("  {} ({}){}  {}", p.name, kinds(p.kinds), if p.required { ", required" } else { "" }, p.doc)
}

fn out_port(p: &OutPort) -> String {
    let kind = match p.kind {
        OutKind::Fixed(k) => k.name().to_string(),
        OutKind::SameAs(port) => format!("same kinds as input `{port}`"),
    };
    format!("  {} ({kind})  {}", p.name, p.doc)
}

pub fn ops(a: &OpsArgs) -> anyhow::Result<i32> {
    let registry = Registry::builtin();
    let Some(name) = &a.name else {
        if a.json {
            let all: Vec<Value> =
                registry.specs().iter().map(|s| serde_json::json!({"name": s.name, "summary": s.summary})).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(0);
        }
        let specs = registry.specs();
        let width = specs.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut stage = "";
        for s in &specs {
            let this = s.name.split('.').next().unwrap_or("");
            if this != stage {
                stage = this;
                println!("{stage}:");
            }
            println!("  {:<width$}  {}", s.name, s.summary);
        }
        println!("\n`medgen ops NAME` shows an operator's ports and params.");
        return Ok(0);
    };
    let Some(op) = registry.get(name) else {
        let names = registry.names();
        let best = names.iter().max_by(|a, b| strsim::jaro_winkler(name, a).total_cmp(&strsim::jaro_winkler(name, b)));
        eprintln!("error: unknown operator `{name}`");
        if let Some(b) = best.filter(|b| strsim::jaro_winkler(name, b) > 0.7) {
            eprintln!("  = fix: did you mean `{b}`? (`medgen ops` lists all)");
        } else {
            eprintln!("  = fix: `medgen ops` lists all operators");
        }
        return Ok(2);
    };
    let spec = op.spec();
    let schema = serde_json::to_value(op.params_schema())?;
    if a.json {
        let v = serde_json::json!({
            "name": spec.name, "summary": spec.summary, "doc": spec.doc, "version": spec.version,
            "inputs": spec.inputs.iter().map(|p| serde_json::json!({"name": p.name, "kinds": p.kinds, "required": p.required, "doc": p.doc})).collect::<Vec<_>>(),
            "outputs": spec.outputs.iter().map(|p| serde_json::json!({"name": p.name, "kind": match p.kind { OutKind::Fixed(k) => k.name().to_string(), OutKind::SameAs(s) => format!("same_as:{s}") }, "doc": p.doc})).collect::<Vec<_>>(),
            "params": schema,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{} — {}\n", spec.name, spec.summary);
    println!("{}\n", textwrap(spec.doc, 96));
    println!("inputs:");
    if spec.inputs.is_empty() {
        println!("  (none: a source)");
    }
    for p in spec.inputs {
        println!("{}", in_port(p));
    }
    println!("outputs:");
    for p in spec.outputs {
        println!("{}", out_port(p));
    }
    println!("  failures (Failure)  per-item failures of this node");
    println!("\nparams:");
    for p in param_docs(&schema) {
        let req = if p.required {
            "required".to_string()
        } else {
            format!("default {}", p.default.unwrap_or_else(|| "none".into()))
        };
        println!("  {} : {}  ({req})", p.name, p.ty);
        if !p.doc.is_empty() {
            for line in textwrap(&p.doc, 90).lines() {
                println!("      {line}");
            }
        }
    }
    Ok(0)
}

fn textwrap(s: &str, width: usize) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut out = String::new();
    let mut line = String::new();
    for w in words {
        if !line.is_empty() && line.len() + 1 + w.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_of_source_files_come_from_the_code() {
        let r = Registry::builtin();
        let schema = serde_json::to_value(r.get("source.files").unwrap().params_schema()).unwrap();
        let docs = param_docs(&schema);
        let paths = docs.iter().find(|p| p.name == "paths").unwrap();
        assert!(paths.required);
        assert_eq!(paths.ty, "[string]");
        let poll = docs.iter().find(|p| p.name == "poll_seconds").unwrap();
        assert_eq!(poll.default.as_deref(), Some("2.0"));
        assert_eq!(poll.ty, "float");
        assert!(poll.doc.contains("watch mode"));
    }

    #[test]
    fn enum_params_list_their_values() {
        let r = Registry::builtin();
        let schema = serde_json::to_value(r.get("sink.jsonl").unwrap().params_schema()).unwrap();
        let kinds = param_docs(&schema).into_iter().find(|p| p.name == "kinds").unwrap();
        assert!(kinds.ty.contains("\"video\""), "{}", kinds.ty);
    }
}
