//! `source.files`: the files matching glob patterns, as `Video` records; with `watch = true` a
//! long-running ingestion where new files become new epochs and deleted files are retracted.

use super::{FileEntry, ScanLoop, Snapshot, scanning_source, stat};
use crate::api::*;
use globset::{Glob, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub struct SourceFiles;

fn default_poll() -> f64 {
    2.0
}
fn default_settle() -> f64 {
    0.5
}
fn default_threads() -> usize {
    1
}
fn default_true() -> bool {
    true
}

/// Params of `source.files`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    /// Glob patterns, relative to the graph file's folder unless absolute. `*` stays within one
    /// folder, `**` crosses folders, `{mp4,mkv}` lists alternatives, `[ab]` character classes.
    pub paths: Vec<String>,
    /// Keep running: rescan every `poll_seconds`; new or changed files become a new epoch, deleted
    /// files are retracted downstream.
    #[serde(default)]
    pub watch: bool,
    /// Seconds between scans in watch mode.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// In watch mode, a file is taken only once its size and modification time have not changed
    /// for this many seconds (so half-copied files are not ingested).
    #[serde(default = "default_settle")]
    pub settle_seconds: f64,
    /// Skip files and folders whose names start with a dot.
    #[serde(default = "default_true")]
    pub skip_hidden: bool,
    /// Threads per worker hashing file contents.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

/// The folder a pattern's literal prefix names, and the pattern made absolute.
fn split_pattern(base_dir: &Path, pattern: &str) -> (PathBuf, String) {
    let abs = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base_dir.join(pattern) };
    let mut root = PathBuf::new();
    for comp in abs.components() {
        let s = comp.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(comp);
    }
    // A pattern without wildcards names a file: its folder is the walk root.
    if root == abs {
        root = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    }
    (normalize(&root), normalize(&abs).to_string_lossy().into_owned())
}

/// Lexically remove `.` and `..` components.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Per path: the size and modification time last seen, and since when they have been stable.
pub type SettleState = BTreeMap<String, (u64, u128, std::time::Instant)>;

impl FilesParams {
    /// The folder scan these params describe.
    fn scan(&self) -> FolderScan<'_> {
        FolderScan {
            paths: &self.paths,
            skip_hidden: self.skip_hidden,
            watch: self.watch,
            poll_seconds: self.poll_seconds,
            settle_seconds: self.settle_seconds,
            threads: self.threads,
        }
    }
}

/// The params of a source that scans folders for files (`source.files`, `source.dicom`).
pub struct FolderScan<'a> {
    pub paths: &'a [String],
    pub skip_hidden: bool,
    pub watch: bool,
    pub poll_seconds: f64,
    pub settle_seconds: f64,
    pub threads: usize,
}

impl FolderScan<'_> {
    /// Issues with the patterns (bad globs; folders that do not exist yet, as warnings), the
    /// polling times and threads. `example` is a pattern the hint shows.
    pub fn check(&self, base_dir: &Path, example: &str) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if self.paths.is_empty() {
            issues.push(ParamIssue::error(
                "paths",
                "no patterns given",
                Some(format!("add at least one, e.g. paths = [\"{example}\"]")),
            ));
        }
        for (i, pat) in self.paths.iter().enumerate() {
            if let Err(e) = Glob::new(pat) {
                issues.push(ParamIssue::error(
                    format!("paths[{i}]"),
                    format!("bad glob pattern `{pat}`: {e}"),
                    Some("check brackets and braces".into()),
                ));
                continue;
            }
            let (root, _) = split_pattern(base_dir, pat);
            if !root.exists() {
                issues.push(ParamIssue::warning(
                    format!("paths[{i}]"),
                    format!("folder {} does not exist yet", root.display()),
                    Some("create it, or fix the pattern; a run records it as a failure".into()),
                ));
            }
        }
        if !(self.poll_seconds > 0.0 && self.poll_seconds.is_finite()) {
            issues.push(ParamIssue::error(
                "poll_seconds",
                "must be a positive number of seconds",
                Some("e.g. poll_seconds = 2.0".into()),
            ));
        }
        if !(self.settle_seconds >= 0.0 && self.settle_seconds.is_finite()) {
            issues.push(ParamIssue::error("settle_seconds", "must be zero or a positive number of seconds", None));
        }
        crate::api::pool::check_threads(self.threads, &mut issues);
        issues
    }

    /// The source: matching files as Video records (hashed on the pool), failures among them.
    pub fn build<'s>(&self, ctx: &BuildCtx<'s>) -> Result<Coll<'s>, BuildError> {
        let matcher = Matcher::new(&ctx.base_dir, self.paths, self.skip_hidden)
            .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let settle = Duration::from_secs_f64(self.settle_seconds.max(0.0));
        let watch = self.watch;
        let mut seen = BTreeMap::new();
        let how = ScanLoop { watch, poll: Duration::from_secs_f64(self.poll_seconds.max(0.01)) };
        Ok(scanning_source(ctx, how, self.threads, move || {
            if watch && !settle.is_zero() { matcher.scan(Some((settle, &mut seen))) } else { matcher.scan(None) }
        }))
    }
}

/// A compiled set of patterns.
pub struct Matcher {
    roots: Vec<(PathBuf, String)>,
    set: GlobSet,
    skip_hidden: bool,
}

impl Matcher {
    pub fn new(base_dir: &Path, patterns: &[String], skip_hidden: bool) -> Result<Matcher, String> {
        let mut b = GlobSetBuilder::new();
        let mut roots = Vec::new();
        for p in patterns {
            let (root, abs) = split_pattern(base_dir, p);
            let glob = globset::GlobBuilder::new(&abs)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad glob pattern `{p}`: {e}"))?;
            b.add(glob);
            roots.push((root, p.clone()));
        }
        let set = b.build().map_err(|e| e.to_string())?;
        Ok(Matcher { roots, set, skip_hidden })
    }

    /// Every matching file now, with problems (missing folders, unreadable entries) as entries too.
    pub fn scan(&self, settle: Option<(Duration, &mut SettleState)>) -> Snapshot {
        let mut out = Snapshot::new();
        let mut seen_paths = std::collections::HashSet::new();
        let mut settle = settle;
        for (root, pattern) in &self.roots {
            if !root.exists() {
                let item = format!("pattern:{pattern}");
                out.insert(
                    item.clone(),
                    FileEntry {
                        item,
                        uri: root.to_string_lossy().into_owned(),
                        size: 0,
                        mtime_ns: 0,
                        metadata: BTreeMap::new(),
                        error: Some((
                            ErrorClass::Unreadable,
                            format!(
                                "folder {} of pattern `{pattern}` does not exist; create it or fix the pattern",
                                root.display()
                            ),
                        )),
                    },
                );
                continue;
            }
            let skip_hidden = self.skip_hidden;
            let walker =
                walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter().filter_entry(move |e| {
                    !(skip_hidden && e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.'))
                });
            for entry in walker {
                let entry = match entry {
                    Ok(e) => e,
                    Err(err) => {
                        let path = err.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                        let item = format!("file:{path}");
                        out.insert(
                            item.clone(),
                            FileEntry {
                                item,
                                uri: path,
                                size: 0,
                                mtime_ns: 0,
                                metadata: BTreeMap::new(),
                                error: Some((ErrorClass::Unreadable, format!("cannot list: {err}; check permissions"))),
                            },
                        );
                        continue;
                    }
                };
                if !entry.file_type().is_file() || !self.set.is_match(entry.path()) {
                    continue;
                }
                let path = entry.path().to_path_buf();
                let uri = path.to_string_lossy().into_owned();
                if !seen_paths.insert(uri.clone()) {
                    continue;
                }
                let item = format!("file:{uri}");
                let (size, mtime_ns, error) = match stat(&path) {
                    Ok((s, m)) => (s, m, None),
                    Err(e) => (0, 0, Some((ErrorClass::Unreadable, format!("cannot stat {uri}: {e}")))),
                };
                if let Some((window, seen)) = settle.as_mut() {
                    let now = std::time::Instant::now();
                    let e = seen.entry(uri.clone()).or_insert((size, mtime_ns, now));
                    if (e.0, e.1) != (size, mtime_ns) {
                        *e = (size, mtime_ns, now);
                    }
                    if e.2.elapsed() < *window {
                        continue;
                    }
                }
                out.insert(item.clone(), FileEntry { item, uri, size, mtime_ns, metadata: sidecars(&path), error });
            }
        }
        out
    }
}

/// Sidecar files next to a video: transcripts (`.srt`, `.vtt`) become metadata.
fn sidecars(path: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for ext in ["srt", "vtt"] {
        let side = path.with_extension(ext);
        if side != path && side.is_file() {
            m.insert("transcript_uri".into(), side.to_string_lossy().into_owned());
            break;
        }
    }
    m
}

impl TypedOperator for SourceFiles {
    type Params = FilesParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "source.files",
            summary: "Files matching glob patterns, as Video records; watch mode turns new files into new epochs",
            doc: "Lists the files that match `paths` and emits one Video record per file, identified by the \
                  blake3 hash of its content (hashing is memoised by path, size and modification time, so a \
                  restart hashes only new files). With `watch = true` the node keeps running: every \
                  `poll_seconds` it rescans, new or changed files become a new epoch and deleted files are \
                  retracted from everything downstream. A `.srt` or `.vtt` file next to a video is recorded \
                  as its transcript. Missing folders and unreadable files become Failure records.",
            version: 1,
            inputs: &[],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Video), doc: "one Video per file" }],
            is_source: true,
            is_sink: false,
        }
    }

    fn check(&self, p: &FilesParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        p.scan().check(&ctx.base_dir, "videos/**/*.mp4")
    }

    fn fingerprint(&self, _p: &FilesParams) -> serde_json::Value {
        // The Video of a file depends only on the file: no param changes it.
        serde_json::json!({})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &FilesParams,
        _inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let (ok, failed) = split_failures(p.scan().build(ctx)?);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_roots() {
        let (root, abs) = split_pattern(Path::new("/g"), "data/**/*.{mp4,mkv}");
        assert_eq!(root, PathBuf::from("/g/data"));
        assert_eq!(abs, "/g/data/**/*.{mp4,mkv}");
        let (root, _) = split_pattern(Path::new("/g"), "../x/a.mp4");
        assert_eq!(root, PathBuf::from("/x"));
    }

    #[test]
    fn scan_matches_and_reports_missing_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/one.mp4"), b"1").unwrap();
        std::fs::write(dir.path().join("a/b/two.MKV"), b"2").unwrap();
        std::fs::write(dir.path().join("a/b/three.mkv"), b"3").unwrap();
        std::fs::write(dir.path().join("a/b/three.srt"), b"1\n").unwrap();
        std::fs::write(dir.path().join("a/.hidden.mp4"), b"h").unwrap();
        let m = Matcher::new(dir.path(), &["a/**/*.{mp4,mkv}".into(), "missing/*.mp4".into()], true).unwrap();
        let snap = m.scan(None);
        let files: Vec<String> = snap
            .values()
            .filter(|e| e.error.is_none())
            .map(|e| e.uri.rsplit('/').next().unwrap().to_string())
            .collect();
        let mut files = files;
        files.sort();
        assert_eq!(files, vec!["one.mp4", "three.mkv"]);
        let three = snap.values().find(|e| e.uri.ends_with("three.mkv")).unwrap();
        assert!(three.metadata["transcript_uri"].ends_with("three.srt"));
        assert!(snap.values().any(|e| e.error.as_ref().is_some_and(|(c, _)| *c == ErrorClass::Unreadable)));
    }
}
