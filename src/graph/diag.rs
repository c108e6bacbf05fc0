//! Diagnostics: what `medgen check` prints, and how byte offsets become `line:col`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The graph is invalid and will not run.
    Error,
    /// Worth fixing, but the graph runs.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a graph file, located by `file:line:col` (both 1-based; `col` counts
/// characters, not bytes), with the node it concerns and a concrete fix where one is known.
///
/// Displays as
/// ```text
/// error: graphs/x.toml:12:5: node `clips`: unknown param `treshold`
///   = fix: did you mean `threshold`?
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The graph file, as it was named to [`load`](super::load).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// The node the problem concerns, if any.
    pub node: Option<String>,
    /// What is wrong, on one line.
    pub message: String,
    /// What to change, when we know.
    pub fix: Option<String>,
}

impl Diagnostic {
    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}:{}:{}: ", self.severity, self.file.display(), self.line, self.col)?;
        if let Some(node) = &self.node {
            write!(f, "node `{node}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  = fix: {fix}")?;
        }
        Ok(())
    }
}

/// Renders diagnostics one after the other, separated by newlines (what `medgen check` prints).
pub fn render_diagnostics(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

/// Maps byte offsets of a text to 1-based `(line, col)`, columns in characters.
#[derive(Clone, Debug)]
pub struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset at which each line starts; always holds at least `0`.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    /// Index the line starts of `text` (a line ends at `\n`; a `\r` before it belongs to the line).
    pub fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// The 1-based line and column of byte `offset`. Offsets past the end are clamped to the end;
    /// an offset inside a multi-byte character counts as that character.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // The last line start <= offset; `starts[0] == 0` so the partition point is >= 1.
        let line_idx = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = self.starts.get(line_idx).copied().unwrap_or(0);
        let mut end = offset;
        while end > start && !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let col = self.text.get(start..end).map_or(0, |s| s.chars().count()) + 1;
        (line_idx + 1, col)
    }

    /// The 1-based line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    /// The text of a span, or `""` when the span does not fall on character boundaries.
    pub fn slice(&self, span: &Range<usize>) -> &'t str {
        self.text.get(span.clone()).unwrap_or("")
    }

    /// The text of the (1-based) line `line` without its line ending, or `""`.
    pub fn line_text(&self, line: usize) -> &'t str {
        let Some(&start) = self.starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let end = self.starts.get(line).map_or(self.text.len(), |&e| e.saturating_sub(1));
        self.text.get(start..end.max(start)).unwrap_or("").trim_end_matches('\r')
    }

    /// Number of lines (a trailing newline starts an empty last line).
    pub fn line_count(&self) -> usize {
        self.starts.len()
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Sink<'t> {
    pub file: PathBuf,
    pub index: LineIndex<'t>,
    pub diags: Vec<Diagnostic>,
}

impl<'t> Sink<'t> {
    pub fn new(file: &Path, text: &'t str) -> Self {
        Sink { file: file.to_path_buf(), index: LineIndex::new(text), diags: Vec::new() }
    }

    pub fn push(
        &mut self,
        severity: Severity,
        at: usize,
        node: Option<&str>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        let (line, col) = self.index.line_col(at);
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            col,
            node: node.map(str::to_string),
            message: message.into(),
            fix,
        });
    }

    pub fn error(&mut self, at: usize, node: Option<&str>, message: impl Into<String>, fix: Option<String>) {
        self.push(Severity::Error, at, node, message, fix);
    }

    pub fn warning(&mut self, at: usize, node: Option<&str>, message: impl Into<String>, fix: Option<String>) {
        self.push(Severity::Warning, at, node, message, fix);
    }

    pub fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    /// The diagnostics in file order (stable for equal positions).
    pub fn into_sorted(self) -> Vec<Diagnostic> {
        let mut d = self.diags;
        d.sort_by_key(|d| (d.line, d.col));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_ascii() {
        let idx = LineIndex::new("ab\ncd\n\nef");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(1), (1, 2));
        assert_eq!(idx.line_col(2), (1, 3)); // the newline itself
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_col(6), (3, 1));
        assert_eq!(idx.line_col(7), (4, 1));
        assert_eq!(idx.line_col(8), (4, 2));
        assert_eq!(idx.line_col(9), (4, 3)); // end of text
        assert_eq!(idx.line_col(1000), (4, 3)); // clamped
        assert_eq!(idx.line_count(), 4);
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let text = "é = \"日本\"\nx";
        let idx = LineIndex::new(text);
        let quote = text.find('"').unwrap();
        assert_eq!(idx.line_col(quote), (1, 5));
        // inside the 3-byte character 日: counts as that character
        assert_eq!(idx.line_col(quote + 2), (1, 6));
        assert_eq!(idx.line_col(text.find('x').unwrap()), (2, 1));
    }

    #[test]
    fn line_col_empty_and_crlf() {
        let idx = LineIndex::new("");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(5), (1, 1));
        let idx = LineIndex::new("a\r\nb");
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_text(1), "a");
        assert_eq!(idx.line_text(2), "b");
        assert_eq!(idx.line_text(3), "");
        assert_eq!(idx.line_text(0), "");
    }

    #[test]
    fn display_with_and_without_node_and_fix() {
        let mut d = Diagnostic {
            severity: Severity::Error,
            file: PathBuf::from("path/x.toml"),
            line: 12,
            col: 5,
            node: Some("clips".into()),
            message: "unknown param `treshold`".into(),
            fix: Some("did you mean `threshold`?".into()),
        };
        assert_eq!(
            d.to_string(),
            "error: path/x.toml:12:5: node `clips`: unknown param `treshold`\n  = fix: did you mean `threshold`?"
        );
        d.severity = Severity::Warning;
        d.node = None;
        d.fix = None;
        assert_eq!(d.to_string(), "warning: path/x.toml:12:5: unknown param `treshold`");
    }
}
