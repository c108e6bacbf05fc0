//! `source.manifest`: videos listed in a JSONL or CSV manifest, with their metadata (title,
//! description, channel, transcript, ...). Malformed rows become `Failure` records naming the line.

use super::{FileEntry, ScanLoop, Snapshot, is_remote, scanning_source, stat};
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct SourceManifest;

fn default_poll() -> f64 {
    2.0
}
fn default_threads() -> usize {
    1
}

/// Manifest file format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ManifestFormat {
    /// From the file extension: `.csv` is CSV, anything else JSONL.
    Auto,
    Jsonl,
    Csv,
}

fn default_format() -> ManifestFormat {
    ManifestFormat::Auto
}

/// Params of `source.manifest`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestParams {
    /// The manifest file (relative to the graph file's folder). Each row needs `uri` (a path,
    /// relative to the manifest's folder, or a remote uri); optional `title`, `description`,
    /// `channel`, `tags`, `transcript`; other fields are kept as metadata.
    pub path: String,
    /// `auto`, `jsonl` or `csv`.
    #[serde(default = "default_format")]
    pub format: ManifestFormat,
    /// Re-read the manifest when it changes: new rows become a new epoch, removed rows are retracted.
    #[serde(default)]
    pub watch: bool,
    /// Seconds between checks in watch mode.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// Threads per worker hashing file contents.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

/// Parse a manifest into entries; bad rows become entries carrying their error.
pub fn read_manifest(path: &Path, format: ManifestFormat) -> Snapshot {
    let mut out = Snapshot::new();
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let item = format!("manifest:{}", path.display());
            out.insert(
                item.clone(),
                FileEntry {
                    item,
                    uri: path.to_string_lossy().into_owned(),
                    size: 0,
                    mtime_ns: 0,
                    metadata: BTreeMap::new(),
                    error: Some((ErrorClass::Unreadable, format!("cannot read manifest {}: {e}", path.display()))),
                },
            );
            return out;
        }
    };
    let csv = match format {
        ManifestFormat::Csv => true,
        ManifestFormat::Jsonl => false,
        ManifestFormat::Auto => path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = as_utf8(text);
    let rows = if csv { csv_rows(&text) } else { jsonl_rows(&text) };
    for (line, row) in rows {
        let item_bad = format!("manifest:{}:{line}", path.display());
        let entry = match row.and_then(|fields| row_entry(&base, fields)) {
            Ok(mut e) => {
                e.metadata.insert("manifest_line".into(), line.to_string());
                e
            }
            Err(msg) => FileEntry {
                item: item_bad.clone(),
                uri: format!("{}:{line}", path.display()),
                size: 0,
                mtime_ns: 0,
                metadata: BTreeMap::new(),
                error: Some((ErrorClass::InvalidInput, format!("{}:{line}: {msg}", path.display()))),
            },
        };
        // A uri listed twice keeps its first row; the repeat is reported.
        if out.contains_key(&entry.item) {
            let dup = FileEntry {
                item: item_bad.clone(),
                uri: entry.uri.clone(),
                size: 0,
                mtime_ns: 0,
                metadata: BTreeMap::new(),
                error: Some((
                    ErrorClass::InvalidInput,
                    format!(
                        "{}:{line}: `{}` is listed again (first row wins); remove the duplicate row",
                        path.display(),
                        entry.uri
                    ),
                )),
            };
            out.insert(item_bad, dup);
            continue;
        }
        out.insert(entry.item.clone(), entry);
    }
    out
}

type Row = Result<BTreeMap<String, String>, String>;

/// The manifest's bytes as UTF-8 without a byte-order mark: spreadsheet programs save CSV with a
/// UTF-8 BOM (which would otherwise become part of the first column's name) or as UTF-16.
fn as_utf8(bytes: Vec<u8>) -> Vec<u8> {
    let utf16 = |rest: &[u8], unit: fn([u8; 2]) -> u16| {
        let units: Vec<u16> = rest.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
        String::from_utf16_lossy(&units).into_bytes()
    };
    match bytes.as_slice() {
        [0xEF, 0xBB, 0xBF, rest @ ..] => rest.to_vec(),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ => bytes,
    }
}

/// The line of a CSV quote that is never closed, if any: the reader then takes everything after it
/// as one field, silently swallowing the rows that follow.
fn unterminated_quote(bytes: &[u8]) -> Option<usize> {
    let (mut line, mut open_at) = (1, None);
    let mut field_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match open_at {
            Some(_) if b == b'"' && bytes.get(i + 1) == Some(&b'"') => i += 1,
            Some(_) if b == b'"' => open_at = None,
            None if b == b'"' && field_start => open_at = Some(line),
            _ => {}
        }
        field_start = open_at.is_none() && matches!(b, b',' | b'\n' | b'\r');
        if b == b'\n' {
            line += 1;
        }
        i += 1;
    }
    open_at
}

fn jsonl_rows(bytes: &[u8]) -> Vec<(usize, Row)> {
    let text = String::from_utf8_lossy(bytes);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        let row = match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(serde_json::Value::Object(map)) => {
                let mut fields = BTreeMap::new();
                for (k, v) in map {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => continue,
                        serde_json::Value::Array(items) if k == "tags" => items
                            .iter()
                            .map(|t| t.as_str().map(str::to_string).unwrap_or_else(|| t.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        other => {
                            if k == "uri" {
                                fields.insert("__bad_uri".into(), other.to_string());
                                continue;
                            }
                            other.to_string()
                        }
                    };
                    fields.insert(k, s);
                }
                Ok(fields)
            }
            Ok(other) => Err(format!("expected a JSON object per line, found {}", json_type(&other))),
            Err(e) => Err(format!("invalid JSON: {e}")),
        };
        rows.push((line_no, row));
    }
    rows
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn csv_rows(bytes: &[u8]) -> Vec<(usize, Row)> {
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let headers = match rdr.headers() {
        Ok(h) => h.iter().map(|s| s.trim().to_string()).collect::<Vec<_>>(),
        Err(e) => return vec![(1, Err(format!("cannot read the CSV header: {e}")))],
    };
    let mut rows = Vec::new();
    for rec in rdr.records() {
        match rec {
            Ok(r) => {
                let line = r.position().map(|p| p.line() as usize).unwrap_or(0);
                let fields = headers
                    .iter()
                    .zip(r.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(h, v)| (h.clone(), v.to_string()))
                    .collect();
                rows.push((line, Ok(fields)));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                rows.push((line, Err(format!("malformed CSV row: {e}"))));
            }
        }
    }
    // The row holding a quote that is never closed runs to the end of the file: it is the last.
    if let Some(open) = unterminated_quote(bytes)
        && let Some((line, row)) = rows.last_mut()
    {
        let last = bytes.iter().filter(|b| **b == b'\n').count() + usize::from(!bytes.ends_with(b"\n"));
        *row = Err(format!(
            "the quote (\") opened on line {open} is never closed, so this row took in every line after it \
             (to line {last}); close the quote, or double a quote meant literally (\"\")"
        ));
        *line = (*line).min(open);
    }
    rows
}

fn row_entry(base: &Path, mut fields: BTreeMap<String, String>) -> Result<FileEntry, String> {
    if let Some(bad) = fields.remove("__bad_uri") {
        return Err(format!("`uri` must be a string, found {bad}"));
    }
    let Some(uri) = fields.remove("uri") else {
        // A column or key that was probably meant as the uri.
        let near = fields.keys().find(|k| {
            let k = k.trim().to_ascii_lowercase();
            matches!(k.as_str(), "uri" | "url" | "path" | "file" | "filename" | "file_path" | "video" | "video_path")
        });
        return Err(match near {
            Some(k) => format!("missing `uri` (the video's path or address); rename `{k}` to `uri`"),
            None => "missing `uri` (the video's path or address)".into(),
        });
    };
    let uri = uri.trim().to_string();
    if uri.is_empty() {
        return Err("`uri` is empty".into());
    }
    // A transcript given as a subtitle file is resolved like the uri.
    if let Some(t) = fields.get_mut("transcript")
        && (t.ends_with(".srt") || t.ends_with(".vtt"))
        && !is_remote(t)
        && !Path::new(t.as_str()).is_absolute()
    {
        *t = base.join(t.as_str()).to_string_lossy().into_owned();
    }
    if is_remote(&uri) {
        return Ok(FileEntry { item: format!("uri:{uri}"), uri, size: 0, mtime_ns: 0, metadata: fields, error: None });
    }
    let local = uri.strip_prefix("file://").unwrap_or(&uri);
    let path = if Path::new(local).is_absolute() { PathBuf::from(local) } else { base.join(local) };
    let path_s = path.to_string_lossy().into_owned();
    let (size, mtime_ns, error) = match stat(&path) {
        Ok((s, m)) => (s, m, None),
        Err(e) => (0, 0, Some((ErrorClass::Unreadable, format!("cannot read {path_s}: {e}")))),
    };
    Ok(FileEntry { item: format!("file:{path_s}"), uri: path_s, size, mtime_ns, metadata: fields, error })
}

impl TypedOperator for SourceManifest {
    type Params = ManifestParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "source.manifest",
            summary: "Videos listed in a JSONL or CSV manifest with title, description, channel and transcript",
            doc: "Reads a manifest with one row per video: `uri` (required; local paths are relative to the \
                  manifest's folder) and optional `title`, `description`, `channel`, `tags`, `transcript`; any \
                  other field is kept as metadata. The file is UTF-8 (a byte-order mark is fine) or UTF-16 with its \
                  byte-order mark, as spreadsheet programs save it. Each valid row becomes a Video record (content-hashed, \
                  memoised); malformed rows (bad JSON, missing uri, wrong types, duplicates) become Failure \
                  records naming the manifest line (a CSV quote never closed fails its row rather than taking in \
                  the rows after it), and the rest of the manifest is still read. With \
                  `watch = true`, edits to the manifest become new epochs.",
            version: 1,
            inputs: &[],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Video), doc: "one Video per valid row" }],
            is_source: true,
            is_sink: false,
        }
    }

    fn check(&self, p: &ManifestParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let path = if Path::new(&p.path).is_absolute() { PathBuf::from(&p.path) } else { ctx.base_dir.join(&p.path) };
        if !path.is_file() && !p.watch {
            issues.push(ParamIssue::error(
                "path",
                format!("manifest {} does not exist", path.display()),
                Some("fix the path (relative paths start at the graph file's folder)".into()),
            ));
        }
        if !(p.poll_seconds > 0.0 && p.poll_seconds.is_finite()) {
            issues.push(ParamIssue::error("poll_seconds", "must be a positive number of seconds", None));
        }
        crate::api::pool::check_threads(p.threads, &mut issues);
        issues
    }

    fn fingerprint(&self, _p: &ManifestParams) -> serde_json::Value {
        serde_json::json!({})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &ManifestParams,
        _inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let path = ctx.resolve(&p.path);
        let format = p.format;
        let how = ScanLoop { watch: p.watch, poll: Duration::from_secs_f64(p.poll_seconds.max(0.01)) };
        let all = scanning_source(ctx, how, p.threads, move || read_manifest(&path, format));
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.mp4"), b"x").unwrap();
        let m = dir.path().join("m.jsonl");
        std::fs::write(
            &m,
            concat!(
                "{\"uri\": \"a.mp4\", \"title\": \"Knee arthroscopy\", \"tags\": [\"ortho\", \"knee\"]}\n",
                "{\"title\": \"no uri\"}\n",
                "not json\n",
                "\n",
                "[1,2]\n",
                "{\"uri\": 5}\n",
                "{\"uri\": \"https://example.org/v.mp4\", \"channel\": \"c\"}\n",
                "{\"uri\": \"a.mp4\"}\n",
                "{\"URL\": \"b.mp4\"}\n",
            ),
        )
        .unwrap();
        let snap = read_manifest(&m, ManifestFormat::Auto);
        let good: Vec<_> = snap.values().filter(|e| e.error.is_none()).collect();
        assert_eq!(good.len(), 2);
        let a = good.iter().find(|e| e.uri.ends_with("a.mp4")).unwrap();
        assert_eq!(a.metadata["title"], "Knee arthroscopy");
        assert_eq!(a.metadata["tags"], "ortho, knee");
        let bad: BTreeMap<_, _> =
            snap.values().filter_map(|e| e.error.as_ref().map(|(_, m)| (e.item.clone(), m.clone()))).collect();
        assert_eq!(bad.len(), 6, "{bad:?}");
        assert!(bad.values().any(|m| m.contains(":2: missing `uri`")));
        assert!(
            bad.values().any(|m| m.contains(":9: missing `uri`") && m.contains("rename `URL` to `uri`")),
            "{bad:?}"
        );
        assert!(bad.values().any(|m| m.contains(":3: invalid JSON")));
        assert!(bad.values().any(|m| m.contains(":5: expected a JSON object")));
        assert!(bad.values().any(|m| m.contains(":6: `uri` must be a string")));
        assert!(bad.values().any(|m| m.contains(":8:") && m.contains("listed again")));
    }

    #[test]
    fn csv_rows_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        std::fs::write(&m, "uri,title,channel\nv1.mp4,One,c1\nv2.mp4,\"Two, with comma\",c2\nv3.mp4,broken\n").unwrap();
        let snap = read_manifest(&m, ManifestFormat::Auto);
        let titles: Vec<_> = snap.values().filter_map(|e| e.metadata.get("title").cloned()).collect();
        assert_eq!(titles, vec!["One", "Two, with comma"]);
        // v1/v2 do not exist: unreadable, but parsed.
        assert!(
            snap.values()
                .filter(|e| e.uri.ends_with("v1.mp4"))
                .all(|e| e.error.as_ref().unwrap().0 == ErrorClass::Unreadable)
        );
        assert!(
            snap.values()
                .any(|e| e.error.as_ref().is_some_and(|(c, m)| *c == ErrorClass::InvalidInput && m.contains(":4:")))
        );
    }

    /// Spreadsheet exports: a UTF-8 byte-order mark, or UTF-16, read like plain UTF-8.
    #[test]
    fn byte_order_marks_and_utf16_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "uri,title\nv1.mp4,Endoscopy\n";
        let jsonl = "{\"uri\": \"v1.mp4\", \"title\": \"Endoscopy\"}\n";
        let utf16 = |s: &str, bom: [u8; 2], be: bool| {
            let mut b = bom.to_vec();
            for u in s.encode_utf16() {
                b.extend(if be { u.to_be_bytes() } else { u.to_le_bytes() });
            }
            b
        };
        for (name, text) in [("csv", csv), ("jsonl", jsonl)] {
            let forms = [
                ("bom", [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat()),
                ("le", utf16(text, [0xFF, 0xFE], false)),
                ("be", utf16(text, [0xFE, 0xFF], true)),
            ];
            for (form, bytes) in forms {
                let m = dir.path().join(format!("m_{form}.{name}"));
                std::fs::write(&m, bytes).unwrap();
                let snap = read_manifest(&m, ManifestFormat::Auto);
                assert_eq!(snap.len(), 1, "{name} {form}: {snap:?}");
                let e = snap.values().next().unwrap();
                assert!(e.uri.ends_with("v1.mp4"), "{name} {form}: {e:?}");
                assert_eq!(e.metadata["title"], "Endoscopy", "{name} {form}");
            }
        }
    }

    /// A CSV quote that is never closed takes in every row after it: that row fails by name, and
    /// the rows before it are kept.
    #[test]
    fn an_unterminated_csv_quote_is_reported_not_swallowed() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.csv");
        std::fs::write(&m, "uri,title\nv1.mp4,\"5\"\" probe\"\nv2.mp4,\"unclosed\nv3.mp4,three\nv4.mp4,four\n")
            .unwrap();
        let snap = read_manifest(&m, ManifestFormat::Auto);
        let titles: Vec<_> = snap.values().filter_map(|e| e.metadata.get("title").cloned()).collect();
        assert_eq!(titles, vec!["5\" probe"], "{snap:?}");
        let bad: Vec<_> =
            snap.values().filter_map(|e| e.error.as_ref()).filter(|(c, _)| *c == ErrorClass::InvalidInput).collect();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].1.contains(":3:")
                && bad[0].1.contains("opened on line 3 is never closed")
                && bad[0].1.contains("line 5"),
            "{}",
            bad[0].1
        );
        // Quotes inside unquoted fields and quoted multi-line fields are fine.
        assert_eq!(unterminated_quote(b"uri,title\nv.mp4,5\" probe\nw.mp4,\"two\nlines\"\n"), None);
        assert_eq!(unterminated_quote(b"a,\"b\"\"\nc"), Some(1));
    }
}
