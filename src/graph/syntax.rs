//! TOML parsing with spans: syntax errors (with better words for repeated tables), numbers that do
//! not fit, and conversion of spanned values to plain [`toml::Value`]s for operators.

use super::diag::Sink;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A spanned TOML value, as parsed.
pub type SValue<'i> = Spanned<DeValue<'i>>;

/// At most this many syntax errors are reported: after that the parser's recovery is guessing.
const MAX_SYNTAX_ERRORS: usize = 10;

/// Parse `text`; on syntax errors report them into `sink` and return `None`.
pub fn parse<'i>(text: &'i str, sink: &mut Sink<'_>) -> Option<Spanned<DeTable<'i>>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        check_numbers_table(doc.get_ref(), sink);
        return if sink.has_errors() { None } else { Some(doc) };
    }
    let headers = scan_headers(text);
    let mut reported_lines = Vec::new();
    let mut reported_kinds: Vec<bool> = Vec::new();
    let mut errs: Vec<(usize, usize, String)> = errors
        .iter()
        .map(|e| {
            let span = e.span().unwrap_or(0..0);
            (span.start, span.end, e.message().to_string())
        })
        .collect();
    errs.sort_by_key(|e| e.0);
    // Lines of a repeated table's body: the parser merges the body into the first table, so keys
    // written in both bodies come back as "duplicate key" too; the repeated header says it all.
    let mut shadowed: Vec<Range<usize>> = Vec::new();
    for (start, end, message) in errs {
        let line = sink.index.line(start);
        let duplicate = message == "duplicate key";
        if reported_lines.contains(&line) || (duplicate && shadowed.iter().any(|r| r.contains(&line))) {
            continue;
        }
        // After the first real syntax error the parser's recovery guesses (an unclosed string
        // swallows the lines after it): only repeated keys, which are reliable, are still reported.
        if !reported_lines.is_empty() && !duplicate && !first_was_duplicate_only(&reported_kinds) {
            continue;
        }
        reported_kinds.push(duplicate);
        if reported_lines.len() >= MAX_SYNTAX_ERRORS {
            break;
        }
        reported_lines.push(line);
        if message == "duplicate key" {
            if report_duplicate(start..end, line, &headers, sink) {
                let next = headers.iter().map(|h| h.line).filter(|&l| l > line).min().unwrap_or(usize::MAX);
                shadowed.push(line + 1..next);
            }
        } else {
            let fix = syntax_fix(&message);
            sink.error(start, None, format!("TOML syntax: {message}"), Some(fix));
        }
    }
    None
}

/// Whether everything reported so far was a repeated key (then real syntax errors still count).
fn first_was_duplicate_only(kinds: &[bool]) -> bool {
    kinds.iter().all(|&d| d)
}

/// A repeated key or table: name the first definition when it is a table header (then true).
fn report_duplicate(span: Range<usize>, line: usize, headers: &[Header], sink: &mut Sink<'_>) -> bool {
    let here = headers.iter().find(|h| h.line == line);
    let first = here.and_then(|h| headers.iter().find(|f| f.path == h.path && f.line < line));
    match (here, first) {
        (Some(h), Some(first)) => {
            if h.path.len() == 2 && h.path.first().is_some_and(|p| p == "nodes") {
                let name = h.path.get(1).cloned().unwrap_or_default();
                sink.error(
                    h.offset,
                    Some(&name),
                    format!("duplicate node name `{name}` (first defined at line {})", first.line),
                    Some(format!(
                        "rename one of them, e.g. [nodes.{name}_2], and update the `inputs` that refer to it"
                    )),
                );
            } else {
                let joined = h.path.join(".");
                sink.error(
                    h.offset,
                    None,
                    format!("table `[{joined}]` is defined twice (first at line {})", first.line),
                    Some("merge the two tables into one".into()),
                );
            }
            true
        }
        _ => {
            let key = sink.index.slice(&span).to_string();
            let what = if key.is_empty() { "duplicate key".to_string() } else { format!("duplicate key `{key}`") };
            sink.error(
                span.start,
                None,
                what,
                Some("each key may appear once per table: remove or rename one of them".into()),
            );
            false
        }
    }
}

/// A fix for a parser message.
fn syntax_fix(message: &str) -> String {
    let m = message.to_lowercase();
    if m.contains("must be quoted") {
        "quote string values, e.g. op = \"source.files\"".into()
    } else if m.contains("string") && (m.contains("invalid") || m.contains("unclosed") || m.contains("expected `\"`")) {
        "close the string with the same quote it starts with (use '...' for text containing \\)".into()
    } else if m.contains("unclosed table") {
        "close the table header with `]`, e.g. [nodes.raw]".into()
    } else if m.contains("array") {
        "separate array items with `,` and close the array with `]`".into()
    } else if m.contains("inline table") {
        "inline tables look like { key = \"value\", other = 1 } on one line".into()
    } else if m.contains("key") {
        "keys are letters, digits, `_` and `-` (quote anything else), followed by `= value`".into()
    } else if m.contains("recurs") {
        "nest arrays and tables less deeply".into()
    } else {
        "check quotes/brackets near here".into()
    }
}

/// A table header line (`[a.b]`, not `[[a.b]]`), for naming repeated tables.
#[derive(Debug)]
struct Header {
    path: Vec<String>,
    line: usize,
    /// Byte offset of the `[`.
    offset: usize,
}

/// Find `[a.b."c"]` headers line by line. Heuristic (a multi-line string may contain such a
/// line), so it is only consulted for lines the parser already flagged as repeated keys.
fn scan_headers(text: &str) -> Vec<Header> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (i, raw_line) in text.split('\n').enumerate() {
        let line_offset = offset;
        offset += raw_line.len() + 1;
        let trimmed = raw_line.trim_start();
        let lead = raw_line.len() - trimmed.len();
        if !trimmed.starts_with('[') || trimmed.starts_with("[[") {
            continue;
        }
        if let Some(path) = parse_header_path(&trimmed[1..]) {
            out.push(Header { path, line: i + 1, offset: line_offset + lead });
        }
    }
    out
}

/// Parse the dotted key of a header up to its `]`.
fn parse_header_path(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut part = String::new();
        match chars.peek() {
            Some('"') | Some('\'') => {
                let q = chars.next()?;
                loop {
                    let c = chars.next()?;
                    if c == q {
                        break;
                    }
                    if c == '\\' && q == '"' {
                        part.push(chars.next()?);
                    } else {
                        part.push(c);
                    }
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        part.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if part.is_empty() {
                    return None;
                }
            }
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        match chars.next()? {
            '.' => continue,
            ']' => return Some(parts),
            _ => return None,
        }
    }
}

/// Integers must fit in 64 bits and floats must be finite unless spelled `inf`/`nan`.
fn check_numbers_table(t: &DeTable<'_>, sink: &mut Sink<'_>) {
    for (_, v) in t.iter() {
        check_numbers(v, sink);
    }
}

fn check_numbers(v: &SValue<'_>, sink: &mut Sink<'_>) {
    match v.get_ref() {
        DeValue::Integer(i) => {
            if i64::from_str_radix(i.as_str(), i.radix()).is_err() {
                let text = sink.index.slice(&v.span()).to_string();
                sink.error(
                    v.span().start,
                    None,
                    format!("integer `{text}` does not fit in 64 bits"),
                    Some("use a number between -9223372036854775808 and 9223372036854775807".into()),
                );
            }
        }
        DeValue::Float(f) => {
            if float_value(f.as_str()).is_none() {
                let text = sink.index.slice(&v.span()).to_string();
                sink.error(
                    v.span().start,
                    None,
                    format!("float `{text}` is out of range"),
                    Some("use a smaller number".into()),
                );
            }
        }
        DeValue::Array(a) => {
            for x in a.iter() {
                check_numbers(x, sink);
            }
        }
        DeValue::Table(t) => check_numbers_table(t, sink),
        DeValue::String(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// A TOML float's value; `None` when it overflows without being spelled `inf`.
fn float_value(s: &str) -> Option<f64> {
    let f: f64 = s.parse().ok()?;
    if f.is_infinite() && !s.contains("inf") { None } else { Some(f) }
}

/// Convert a spanned value into a plain TOML value (numbers were checked by [`parse`]).
pub fn to_value(v: &DeValue<'_>) -> toml::Value {
    match v {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(i) => toml::Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).unwrap_or(0)),
        DeValue::Float(f) => toml::Value::Float(float_value(f.as_str()).unwrap_or(0.0)),
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(a) => toml::Value::Array(a.iter().map(|x| to_value(x.get_ref())).collect()),
        DeValue::Table(t) => toml::Value::Table(to_table(t.iter().map(|(k, v)| (k.get_ref().as_ref(), v)))),
    }
}

/// Convert entries of a spanned table into a plain TOML table.
pub fn to_table<'a, 'i: 'a, I>(entries: I) -> toml::Table
where
    I: IntoIterator<Item = (&'a str, &'a SValue<'i>)>,
{
    let mut t = toml::Table::new();
    for (k, v) in entries {
        t.insert(k.to_string(), to_value(v.get_ref()));
    }
    t
}

/// The entries of a spanned table in file order (the parser keeps them sorted by key).
pub fn entries_in_order<'a, 'i>(t: &'a DeTable<'i>) -> Vec<(&'a Spanned<std::borrow::Cow<'i, str>>, &'a SValue<'i>)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// The TOML type name of a value, for messages.
pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// One step of a param path: a key or an array index.
#[derive(Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Split `backend.model`, `paths[0]`, `a.b[2][1].c` into segments. Unparseable pieces are dropped
/// from the end (the location then falls back to the longest prefix that parses).
pub fn split_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(close) = stripped.find(']') else {
                return out;
            };
            match stripped[..close].parse::<usize>() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => return out,
            }
            rest = &stripped[close + 1..];
        }
        if !rest.is_empty() {
            return out;
        }
    }
    out
}

/// The span of the value at `path` inside `table` (or of the deepest prefix found); `None` when
/// not even the first key is there.
pub fn locate(table: &DeTable<'_>, path: &str) -> Option<Range<usize>> {
    let segs = split_path(path);
    let mut found: Option<Range<usize>> = None;
    let mut cur: Option<&SValue<'_>> = None;
    for (i, seg) in segs.iter().enumerate() {
        let next = match (i, seg, cur.map(|c| c.get_ref())) {
            (0, Seg::Key(k), _) => table.get(k.as_str()),
            (_, Seg::Key(k), Some(DeValue::Table(t))) => t.get(k.as_str()),
            (_, Seg::Index(n), Some(DeValue::Array(a))) => a.get(*n),
            _ => None,
        };
        match next {
            Some(v) => {
                found = Some(v.span());
                cur = Some(v);
            }
            None => break,
        }
    }
    found
}

/// The span of key `key` itself in `table`.
pub fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table.get_key_value(key).map(|(k, _)| k.span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn header_paths() {
        assert_eq!(parse_header_path("nodes.raw]"), Some(vec!["nodes".into(), "raw".into()]));
        assert_eq!(parse_header_path(" nodes . \"a b\" ] # c"), Some(vec!["nodes".into(), "a b".into()]));
        assert_eq!(parse_header_path("nodes.'x.y']"), Some(vec!["nodes".into(), "x.y".into()]));
        assert_eq!(parse_header_path("nodes.raw"), None);
        assert_eq!(parse_header_path("]"), None);
        assert_eq!(parse_header_path("\"unclosed]"), None);
    }

    #[test]
    fn paths_split() {
        assert_eq!(split_path(""), vec![]);
        assert_eq!(split_path("paths[0]"), vec![Seg::Key("paths".into()), Seg::Index(0)]);
        assert_eq!(
            split_path("a.b[2][1].c"),
            vec![Seg::Key("a".into()), Seg::Key("b".into()), Seg::Index(2), Seg::Index(1), Seg::Key("c".into())]
        );
        assert_eq!(split_path("a[x].b"), vec![Seg::Key("a".into())]);
        assert_eq!(split_path("a[1"), vec![Seg::Key("a".into())]);
    }

    #[test]
    fn locate_values() {
        let text = "paths = [\"a\", 3]\nb = { c = [1, { d = true }] }\n";
        let doc = DeTable::parse(text).unwrap();
        let t = doc.get_ref();
        let at = |p: &str| locate(t, p).map(|s| &text[s]);
        assert_eq!(at("paths[1]"), Some("3"));
        assert_eq!(at("paths[7]"), Some("[\"a\", 3]"));
        assert_eq!(at("b.c[1].d"), Some("true"));
        assert_eq!(at("nope"), None);
        assert_eq!(at(""), None);
        assert_eq!(key_span(t, "b").map(|s| &text[s]), Some("b"));
    }

    #[test]
    fn numbers_out_of_range_are_errors() {
        let text = "a = 99999999999999999999\nb = 1e999\nc = inf\nd = 0x7fffffffffffffff\n";
        let mut sink = Sink::new(Path::new("t.toml"), text);
        assert!(parse(text, &mut sink).is_none());
        let d = sink.into_sorted();
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[0].line, d[0].col), (1, 5));
        assert!(d[0].message.contains("does not fit in 64 bits"));
        assert_eq!(d[1].line, 2);
    }

    #[test]
    fn duplicate_node_tables_are_named() {
        let text = "[nodes.a]\nop = \"x\"\n\n[nodes.a]\nop = \"y\"\n";
        let mut sink = Sink::new(Path::new("t.toml"), text);
        assert!(parse(text, &mut sink).is_none());
        let d = sink.into_sorted();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].line, d[0].col), (4, 1));
        assert_eq!(d[0].message, "duplicate node name `a` (first defined at line 1)");
    }
}
