//! Reading an operator's params JSON schema: known keys, required keys, and a short description of
//! what each key takes (for fixes like "`paths` takes an array of strings").

use serde_json::Value;

/// What the graph checker needs from a params schema.
#[derive(Clone, Debug, Default)]
pub struct ParamsSchema {
    /// Property names in schema order; `None` when the schema does not list them (anything goes).
    pub properties: Option<Vec<String>>,
    /// Whether keys outside `properties` are rejected.
    pub closed: bool,
    pub required: Vec<String>,
    root: Value,
}

impl ParamsSchema {
    /// Read the parts of `schema` we use; never fails (unknown shapes mean "no information").
    pub fn new(schema: &schemars::Schema) -> Self {
        let root = schema.as_value().clone();
        let properties =
            root.get("properties").and_then(Value::as_object).map(|m| m.keys().cloned().collect::<Vec<_>>());
        let closed = properties.is_some()
            && !matches!(root.get("additionalProperties"), Some(Value::Bool(true)) | Some(Value::Object(_)));
        let required = root
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        ParamsSchema { properties, closed, required, root }
    }

    /// Whether `key` is a known property (always true when the schema lists none).
    pub fn knows(&self, key: &str) -> bool {
        match &self.properties {
            Some(p) => p.iter().any(|k| k == key),
            None => true,
        }
    }

    fn property(&self, key: &str) -> Option<&Value> {
        self.root.get("properties").and_then(|p| p.get(key))
    }

    /// Follow a local `$ref` (`#/$defs/Name`), at most a few times.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..8 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(ptr) = r.strip_prefix('#') else {
                break;
            };
            match self.root.pointer(ptr) {
                Some(target) => v = target,
                None => break,
            }
        }
        v
    }

    /// "an array of strings", "a number", "one of `auto`, `jsonl` or `csv`", ... for property `key`.
    pub fn describe(&self, key: &str) -> Option<String> {
        self.property(key).map(|p| self.describe_value(p, 0))
    }

    /// A value to show in an example `key = <example>`.
    pub fn example(&self, key: &str) -> String {
        let Some(p) = self.property(key) else {
            return "...".into();
        };
        let p = self.resolve(p);
        if let Some(values) = self.enum_values(p)
            && let Some(first) = values.first()
        {
            return format!("\"{first}\"");
        }
        match type_of(p) {
            Some("string") => "\"...\"".into(),
            Some("array") => {
                let item = p.get("items").map(|i| self.resolve(i));
                match item.and_then(type_of) {
                    Some("string") => "[\"...\"]".into(),
                    _ => "[...]".into(),
                }
            }
            Some("integer") => "1".into(),
            Some("number") => "1.0".into(),
            Some("boolean") => "true".into(),
            Some("object") => "{ ... }".into(),
            _ => "...".into(),
        }
    }

    /// The first sentence of the property's doc comment.
    pub fn doc(&self, key: &str) -> Option<String> {
        let d = self.property(key)?.get("description")?.as_str()?;
        let first = d.split(". ").next().unwrap_or(d).trim().trim_end_matches('.');
        if first.is_empty() { None } else { Some(first.replace('\n', " ")) }
    }

    fn enum_values(&self, v: &Value) -> Option<Vec<String>> {
        if let Some(e) = v.get("enum").and_then(Value::as_array) {
            return Some(e.iter().map(json_short).collect());
        }
        let alts = v.get("oneOf").or_else(|| v.get("anyOf")).and_then(Value::as_array)?;
        let mut out = Vec::new();
        for a in alts {
            let a = self.resolve(a);
            if let Some(c) = a.get("const") {
                out.push(json_short(c));
            } else if let Some(e) = a.get("enum").and_then(Value::as_array) {
                out.extend(e.iter().map(json_short));
            } else {
                return None;
            }
        }
        Some(out)
    }

    fn describe_value(&self, v: &Value, depth: usize) -> String {
        let v = self.resolve(v);
        if depth > 4 {
            return "a value".into();
        }
        if let Some(values) = self.enum_values(v) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            return format!("one of {}", super::suggest::or_list(&refs));
        }
        match type_of(v) {
            Some("string") => "a string".into(),
            Some("integer") => {
                if v.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0) {
                    "a non-negative integer".into()
                } else {
                    "an integer".into()
                }
            }
            Some("number") => "a number".into(),
            Some("boolean") => "`true` or `false`".into(),
            Some("array") => match v.get("items") {
                Some(items) => {
                    let inner = self.describe_value(items, depth + 1);
                    format!("an array of {}", plural(&inner))
                }
                None => "an array".into(),
            },
            Some("object") => "a table".into(),
            Some("null") => "nothing".into(),
            _ => match v.get("type").and_then(Value::as_array) {
                // Option<T>: ["string", "null"]
                Some(types) => {
                    let names: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
                    match names.as_slice() {
                        [one] => article(one),
                        _ => "a value".into(),
                    }
                }
                None => "a value".into(),
            },
        }
    }
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

fn json_short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn article(t: &str) -> String {
    match t {
        "integer" | "array" => format!("an {t}"),
        "boolean" => "`true` or `false`".into(),
        "object" => "a table".into(),
        other => format!("a {other}"),
    }
}

/// "a string" → "strings", "one of `a` or `b`" → "`a` or `b` values".
fn plural(desc: &str) -> String {
    if let Some(rest) = desc.strip_prefix("one of ") {
        return format!("{rest} values");
    }
    let bare = desc.strip_prefix("an ").or_else(|| desc.strip_prefix("a ")).unwrap_or(desc);
    if bare.starts_with('`') { format!("{bare} values") } else { format!("{bare}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(v: serde_json::Value) -> ParamsSchema {
        ParamsSchema::new(&schemars::Schema::try_from(v).unwrap())
    }

    #[test]
    fn reads_properties_required_and_types() {
        let s = schema(serde_json::json!({
            "type": "object",
            "properties": {
                "paths": {"type": "array", "items": {"type": "string"}, "description": "Glob patterns. More."},
                "threads": {"type": "integer", "minimum": 0},
                "format": {"$ref": "#/$defs/Format"},
                "kinds": {"type": "array", "items": {"$ref": "#/$defs/Kind"}},
                "opt": {"type": ["number", "null"]}
            },
            "required": ["paths"],
            "additionalProperties": false,
            "$defs": {
                "Format": {"oneOf": [{"const": "auto"}, {"const": "csv"}]},
                "Kind": {"type": "string", "enum": ["video", "clip"]}
            }
        }));
        assert!(s.closed);
        assert_eq!(s.required, vec!["paths".to_string()]);
        assert!(s.knows("paths") && !s.knows("path"));
        assert_eq!(s.describe("paths").unwrap(), "an array of strings");
        assert_eq!(s.describe("threads").unwrap(), "a non-negative integer");
        assert_eq!(s.describe("format").unwrap(), "one of `auto` or `csv`");
        assert_eq!(s.describe("kinds").unwrap(), "an array of `video` or `clip` values");
        assert_eq!(s.describe("opt").unwrap(), "a number");
        assert_eq!(s.example("paths"), "[\"...\"]");
        assert_eq!(s.example("format"), "\"auto\"");
        assert_eq!(s.doc("paths").unwrap(), "Glob patterns");
        assert_eq!(s.describe("nope"), None);
    }

    #[test]
    fn open_schemas_know_everything() {
        let s = schema(serde_json::json!({"type": "object"}));
        assert!(!s.closed);
        assert!(s.knows("anything"));
    }
}
