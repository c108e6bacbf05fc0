//! `sink.dataset`: the curated dataset on disk, as the paper ships MedVideoCap-55K — every kept
//! clip cut and re-encoded (720×480 H.264 by default) with its captions, in `metadata.jsonl`,
//! `metadata.parquet` and a FastVideo-style `videos2caption.json`. A materialised view: a clip that
//! is retracted upstream (its source deleted, a decision changed) leaves the dataset, file included.
//!
//! Clips that `curate.deidentify` redacted (metadata `redacted_blob`) are cut from the redacted
//! copy, not from the source ([`cut_record`] does it), so the written files hold only redacted
//! pixels.

use super::jsonl::output_path;
use super::parquet::{Column, Table};
use crate::api::fsutil::{atomic_write, make_read_only};
use crate::api::*;
use crate::video::cut::{CutParams, cut_record};
use crate::video::{ResizeMode, encode::H264Encoder};
use differential_dataflow::VecCollection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

pub struct SinkDataset;

fn d_path() -> String {
    "dataset".into()
}
fn d_width() -> u32 {
    720
}
fn d_height() -> u32 {
    480
}
fn d_resize() -> ResizeMode {
    ResizeMode::Fill
}
fn d_crf() -> u32 {
    20
}
fn d_true() -> bool {
    true
}
fn d_threads() -> usize {
    1
}

/// Params of `sink.dataset`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    /// Dataset folder; relative paths are inside the run's `outputs/` folder.
    #[serde(default = "d_path")]
    pub path: String,
    /// Width of the written clips (the paper: 720).
    #[serde(default = "d_width")]
    pub width: u32,
    /// Height of the written clips (the paper: 480).
    #[serde(default = "d_height")]
    pub height: u32,
    /// How to reach width × height: `fill` (scale and crop the centre; no bars), `fit` (keep
    /// everything, smaller side), `exact` (stretch).
    #[serde(default = "d_resize")]
    pub resize: ResizeMode,
    /// x264 constant rate factor (lower is better quality, bigger files).
    #[serde(default = "d_crf")]
    pub crf: u32,
    /// Output frame rate; default: the source's.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Only clips that have a caption enter the dataset (the paper's dataset is captioned).
    #[serde(default = "d_true")]
    pub require_caption: bool,
    /// Threads per worker cutting clips.
    #[serde(default = "d_threads")]
    pub threads: usize,
}

/// One dataset row: the clip (with its written file) and scores, and its caption.
type Row = (Scores, Option<Caption>);

fn as_scores(rec: &Record) -> Option<Scores> {
    match rec {
        Record::Scores(s) => Some(s.clone()),
        Record::Clip(c) => Some(Scores { clip: c.clone(), scores: BTreeMap::new(), labels: BTreeMap::new() }),
        _ => None,
    }
}

fn clip_id(rec: &Record) -> Option<String> {
    as_scores(rec).map(|s| s.clip.clip_id)
}

/// The JSON row of `metadata.jsonl` (fields of PIPELINE.md §A, plus caption provenance).
pub fn metadata_row(s: &Scores, cap: Option<&Caption>, file: &str, bytes: u64) -> serde_json::Value {
    let c = &s.clip;
    let duration = c.end_s.0 - c.start_s.0;
    let bitrate = if duration > 0.0 { Some((bytes as f64 * 8.0 / duration).round() as u64) } else { None };
    let scores: BTreeMap<&str, f64> = s.scores.iter().map(|(k, v)| (k.as_str(), v.0)).collect();
    json!({
        "id": c.clip_id,
        "file": file,
        "source": c.uri,
        "source_id": c.source_id,
        "title": c.metadata.get("title"),
        "start": c.start_s.0,
        "end": c.end_s.0,
        "duration": duration,
        "fps": c.fps.0,
        "width": c.width,
        "height": c.height,
        "bitrate": bitrate,
        "scores": scores,
        "aesthetic": s.scores.get("aesthetic").map(|v| v.0),
        "technical": s.scores.get("technical").map(|v| v.0),
        "camera_motion": s.labels.get("camera_motion"),
        "category": s.labels.get("category"),
        "caption_brief": cap.map(|c| c.brief.as_str()),
        "caption_detailed": cap.map(|c| c.detailed.as_str()),
        "caption_backend": cap.map(|c| c.backend.as_str()),
        "caption_model": cap.map(|c| c.model.as_str()),
        "caption_prompt_version": cap.map(|c| c.prompt_version.as_str()),
    })
}

/// The parquet table of the same rows.
fn metadata_table(rows: &[serde_json::Value]) -> Table {
    let s = |k: &str| Column::Str(rows.iter().map(|r| r[k].as_str().map(str::to_string)).collect());
    let f = |k: &str| Column::F64(rows.iter().map(|r| r[k].as_f64()).collect());
    let i = |k: &str| Column::I64(rows.iter().map(|r| r[k].as_i64()).collect());
    let mut columns = vec![
        ("id".to_string(), s("id")),
        ("file".into(), s("file")),
        ("source".into(), s("source")),
        ("source_id".into(), s("source_id")),
        ("title".into(), s("title")),
        ("start".into(), f("start")),
        ("end".into(), f("end")),
        ("duration".into(), f("duration")),
        ("fps".into(), f("fps")),
        ("width".into(), i("width")),
        ("height".into(), i("height")),
        ("bitrate".into(), i("bitrate")),
        ("aesthetic".into(), f("aesthetic")),
        ("technical".into(), f("technical")),
        ("camera_motion".into(), s("camera_motion")),
        ("category".into(), s("category")),
        ("caption_brief".into(), s("caption_brief")),
        ("caption_detailed".into(), s("caption_detailed")),
        ("caption_backend".into(), s("caption_backend")),
        ("caption_model".into(), s("caption_model")),
        ("caption_prompt_version".into(), s("caption_prompt_version")),
    ];
    // Every other score becomes a column of its own.
    let names: BTreeSet<String> =
        rows.iter().filter_map(|r| r["scores"].as_object()).flat_map(|m| m.keys().cloned()).collect();
    for n in names.into_iter().filter(|n| n != "aesthetic" && n != "technical") {
        let col = Column::F64(rows.iter().map(|r| r["scores"][&n].as_f64()).collect());
        columns.push((format!("score_{n}"), col));
    }
    Table { columns }
}

/// The dataset folder and what is in it.
struct Dataset {
    dir: PathBuf,
    rows: BTreeMap<Row, isize>,
    blob_path: Box<dyn Fn(&str) -> PathBuf>,
    /// Which blob each clip file was last put in place from (this process).
    placed: BTreeMap<String, String>,
}

/// The dataset folder's list of the clip files `sink.dataset` wrote into `clips/` (one name a line).
const LEDGER: &str = ".medgen-clips";

fn write_ledger(path: &Path, owned: &BTreeSet<String>) -> std::io::Result<()> {
    let text: String = owned.iter().map(|n| format!("{n}\n")).collect();
    atomic_write(path, text.as_bytes())
}

/// Whether two paths are the same file (a hard link of one another).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

impl Dataset {
    /// Rewrite the folder to match `rows`: clip files, metadata.jsonl/.parquet, videos2caption.json.
    fn write(&mut self) -> std::io::Result<usize> {
        let clips_dir = self.dir.join("clips");
        std::fs::create_dir_all(&clips_dir)?;
        // The clip files this sink put there (earlier runs included): the only ones it may remove.
        let ledger = self.dir.join(LEDGER);
        let mut owned: BTreeSet<String> = std::fs::read_to_string(&ledger)
            .map(|t| t.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        let wanted: BTreeSet<String> = self
            .rows
            .iter()
            .filter(|((s, _), n)| **n > 0 && s.clip.blob.is_some())
            .map(|((s, _), _)| format!("{}.mp4", s.clip.clip_id))
            .collect();
        // Owned before they are written: a crash in between cannot orphan a file.
        if !wanted.is_subset(&owned) {
            owned.extend(wanted.iter().cloned());
            write_ledger(&ledger, &owned)?;
        }
        let mut json_rows = Vec::new();
        let mut fastvideo = Vec::new();
        for ((s, cap), n) in &self.rows {
            if *n <= 0 {
                continue;
            }
            let Some(blob) = &s.clip.blob else { continue };
            let name = format!("{}.mp4", s.clip.clip_id);
            let target = clips_dir.join(&name);
            let src = (self.blob_path)(blob);
            // A file left by an earlier run or row of the same clip may hold other pixels (another
            // crf, a redacted copy): replace it unless it is this blob.
            let current = self.placed.get(&name) == Some(blob) && target.exists();
            if !current && !same_file(&src, &target) {
                // A hard link shares the blob's bytes; copy across file systems. The blob is made
                // read-only first (the store writes new ones so; older stores' may not be), so
                // editing the clip in place cannot change the store's bytes under their hash.
                let tmp = clips_dir.join(format!(".{name}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                make_read_only(&src);
                if std::fs::hard_link(&src, &tmp).is_err() {
                    std::fs::copy(&src, &tmp)?;
                }
                std::fs::rename(&tmp, &target)?;
            }
            self.placed.insert(name.clone(), blob.clone());
            let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
            let file = format!("clips/{name}");
            let row = metadata_row(s, cap.as_ref(), &file, bytes);
            fastvideo.push(json!({
                "path": name,
                "resolution": {"width": s.clip.width, "height": s.clip.height},
                "fps": s.clip.fps.0,
                "duration": s.clip.end_s.0 - s.clip.start_s.0,
                "cap": [cap.as_ref().map(|c| c.detailed.as_str()).unwrap_or("")],
            }));
            json_rows.push(row);
        }
        let mut jsonl = Vec::new();
        for r in &json_rows {
            jsonl.extend_from_slice(r.to_string().as_bytes());
            jsonl.push(b'\n');
        }
        atomic_write(&self.dir.join("metadata.jsonl"), &jsonl)?;
        let parquet = metadata_table(&json_rows).to_parquet().map_err(std::io::Error::other)?;
        atomic_write(&self.dir.join("metadata.parquet"), &parquet)?;
        let fv = serde_json::to_vec_pretty(&fastvideo).map_err(std::io::Error::other)?;
        atomic_write(&self.dir.join("videos2caption.json"), &fv)?;
        // Clips no longer in the dataset leave it; files this sink never wrote stay.
        for name in owned.difference(&wanted) {
            match std::fs::remove_file(clips_dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if owned != wanted {
            write_ledger(&ledger, &wanted)?;
        }
        Ok(json_rows.len())
    }
}

impl TypedOperator for SinkDataset {
    type Params = DatasetParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "sink.dataset",
            summary: "The curated dataset: clips cut to 720×480 H.264 with metadata.jsonl, metadata.parquet and videos2caption.json",
            doc: "Joins kept clips (Clip or Scores on `clips`) with their captions (`captions`) by clip id, cuts \
                  and re-encodes each clip's span (size, resize mode and CRF as params; memoised, so re-runs cut \
                  nothing twice) and keeps the dataset folder equal to the current collection: `clips/<id>.mp4`, \
                  `metadata.jsonl` and `metadata.parquet` (id, file, source, start, end, duration, fps, width, \
                  height, bitrate, scores, camera motion, category, brief and detailed captions with the \
                  backend, model and prompt version that made them) and FastVideo's `videos2caption.json` \
                  ({path, resolution, fps, duration, cap}). Clips retracted upstream leave the dataset, files \
                  included. Rewritten atomically when an epoch completes. A clip redacted by curate.deidentify \
                  (metadata `redacted_blob`) is cut from its redacted copy, never from the source. The clip \
                  files are read-only hard links to the run store's blobs (copies across file systems): edit \
                  copies of them; `medgen store verify` checks the store's bytes.",
            version: 1,
            inputs: &[
                InPort { name: "clips", kinds: &[Kind::Clip, Kind::Scores], required: true, doc: "kept clips" },
                InPort { name: "captions", kinds: &[Kind::Caption], required: false, doc: "their captions" },
            ],
            outputs: &[],
            is_source: false,
            is_sink: true,
        }
    }

    fn output_paths(&self, p: &DatasetParams) -> Vec<String> {
        vec![p.path.clone()]
    }

    fn check(&self, p: &DatasetParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.width % 2 == 1 || p.height % 2 == 1 || p.width < 16 || p.height < 16 || p.width > 8192 || p.height > 8192 {
            v.push(ParamIssue::error(
                "width",
                "width and height must be even, between 16 and 8192",
                Some("the paper: 720 × 480".into()),
            ));
        }
        if p.crf > 51 {
            v.push(ParamIssue::error("crf", "x264 CRF is 0–51", Some("e.g. 20".into())));
        }
        if p.fps.is_some_and(|f| !(f > 0.0 && f <= 240.0)) {
            v.push(ParamIssue::error("fps", "must be in (0, 240]", None));
        }
        crate::api::pool::check_threads(p.threads, &mut v);
        if p.path.trim().is_empty() {
            v.push(ParamIssue::error("path", "empty dataset folder", Some("e.g. path = \"dataset\"".into())));
        } else {
            super::jsonl::check_output_path(&p.path, "path = \"dataset\"", &mut v);
        }
        v
    }

    fn fingerprint(&self, p: &DatasetParams) -> serde_json::Value {
        // What changes the written clip files.
        json!({"w": p.width, "h": p.height, "resize": p.resize, "crf": p.crf, "fps": p.fps})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DatasetParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let clips = inputs.take(ctx.scope, "clips").ok_or_else(|| BuildError::Invalid {
            node: ctx.node.clone(),
            message: "input `clips` is not connected".into(),
        })?;
        let captions = inputs.take(ctx.scope, "captions");
        if captions.is_none() && p.require_caption {
            return Err(BuildError::Invalid {
                node: ctx.node.clone(),
                message: "require_caption = true but `captions` is not connected; connect a caption node or set require_caption = false".into(),
            });
        }
        let captions_by_id: Option<VecCollection<'s, u64, (String, Caption), isize>> = captions.map(|c| {
            c.flat_map(|r| match r {
                Record::Caption(c) => Some((c.clip_id.clone(), c)),
                _ => None,
            })
        });
        // Cut only the clips that will enter the dataset.
        let to_cut = match (&captions_by_id, p.require_caption) {
            (Some(caps), true) => {
                let ids = caps.clone().map(|(id, _)| id).distinct();
                clips.flat_map(|r| clip_id(&r).map(|id| (id, r))).semijoin(ids).map(|(_, r)| r)
            }
            _ => clips,
        };
        let cut = CutParams {
            width: Some(p.width),
            height: Some(p.height),
            resize: p.resize,
            crf: p.crf,
            fps: p.fps,
            encoder: H264Encoder::Auto,
            threads: p.threads,
            ..Default::default()
        };
        let services = ctx.services.clone();
        let cut_all =
            pool_map(ctx, to_cut, PoolConfig { threads: p.threads, memoise: true }, move |rec: &Record, ictx| {
                let scores = as_scores(rec).ok_or_else(|| {
                    ItemError::new(ErrorClass::Unsupported, format!("a {} is not a clip", rec.kind()))
                })?;
                let out = cut_record(&Record::Clip(scores.clip.clone()), &cut, services.as_ref(), ictx)?;
                Ok(out
                    .into_iter()
                    .map(|r| match r {
                        Record::Clip(c) => Record::Scores(Scores { clip: c, ..scores.clone() }),
                        other => other,
                    })
                    .collect())
            });
        let (written, failed) = split_failures(cut_all);
        let keyed = written.flat_map(|r| match r {
            Record::Scores(s) => Some((s.clip.clip_id.clone(), s)),
            _ => None,
        });
        let rows: VecCollection<'s, u64, Row, isize> = match captions_by_id {
            Some(caps) if p.require_caption => keyed.join(caps).map(|(_, (s, c))| (s, Some(c))),
            Some(caps) => {
                let with = keyed.clone().join(caps.clone()).map(|(_, (s, c))| (s, Some(c)));
                let without = keyed.antijoin(caps.map(|(id, _)| id).distinct()).map(|(_, s)| (s, None));
                with.concat(without)
            }
            None => keyed.map(|(_, s)| (s, None)),
        };

        let dir = output_path(&ctx.services.outputs_dir(), &p.path);
        let services = ctx.services.clone();
        let blob_services = ctx.services.clone();
        let stats = ctx.stats.clone();
        let node = ctx.node.clone();
        let writer = ctx.worker_index() == 0 && !ctx.settings.dry_run;
        let mut ds = Dataset {
            dir,
            rows: BTreeMap::new(),
            blob_path: Box::new(move |k| blob_services.blob_path(k)),
            placed: BTreeMap::new(),
        };
        let mut pending: BTreeMap<u64, Vec<(Row, isize)>> = BTreeMap::new();
        let mut wrote_once = false;
        let base_epoch = ctx.base_epoch;
        rows.inner.sink(Exchange::new(|_: &(Row, u64, isize)| 0u64), &format!("{node}:sink.dataset"), move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for (row, t, r) in data.drain(..) {
                    pending.entry(t).or_default().push((row, r));
                }
            });
            let mut changed = false;
            let mut last = None;
            while let Some((&t, _)) = pending.first_key_value() {
                if frontier.less_equal(&t) {
                    break;
                }
                for (row, r) in pending.remove(&t).unwrap_or_default() {
                    let e = ds.rows.entry(row.clone()).or_default();
                    *e += r;
                    if *e == 0 {
                        ds.rows.remove(&row);
                    }
                    if r > 0 {
                        NodeStats::add(&stats.items_in, r as u64);
                    } else {
                        NodeStats::add(&stats.retracted, (-r) as u64);
                    }
                    changed = true;
                }
                last = Some(t);
            }
            if !writer || !(changed || super::first_write_due(wrote_once, frontier, base_epoch)) {
                return;
            }
            match ds.write() {
                Ok(n) => {
                    wrote_once = true;
                    stats.items_out.store(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(t) = last {
                        let _ = services.commit_epoch(&node, t, &format!("{n} clips -> {}", ds.dir.display()));
                    }
                }
                Err(e) => {
                    NodeStats::add(&stats.failed, 1);
                    NodeStats::add(&stats.write_errors, 1);
                    tracing::error!(node = %node, dir = %ds.dir.display(), "cannot write the dataset: {e}; check free space and permissions");
                }
            }
        });
        Ok(Outputs::default().with(FAILURES_PORT, failed))
    }
}

/// Where a dataset's clip file lives.
pub fn clip_file(dir: &Path, clip_id: &str) -> PathBuf {
    dir.join("clips").join(format!("{clip_id}.mp4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(id: &str, blob: &str) -> Scores {
        Scores {
            clip: Clip {
                clip_id: id.into(),
                source_id: "s".into(),
                uri: "/v.mp4".into(),
                start_s: F64(0.0),
                end_s: F64(1.0),
                fps: F64(30.0),
                width: 64,
                height: 48,
                blob: Some(blob.into()),
                metadata: BTreeMap::new(),
            },
            scores: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    fn dataset(dir: &Path, blobs: &Path) -> Dataset {
        let blobs = blobs.to_path_buf();
        Dataset {
            dir: dir.to_path_buf(),
            rows: BTreeMap::new(),
            blob_path: Box::new(move |k| blobs.join(k)),
            placed: BTreeMap::new(),
        }
    }

    /// The folder follows the collection, but only files the sink wrote ever leave it: a video the
    /// user keeps in `<dataset>/clips` survives every rewrite (it was deleted once).
    #[test]
    fn only_the_sinks_own_clip_files_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        for b in ["b1", "b2"] {
            std::fs::write(blobs.join(b), b.as_bytes()).unwrap();
        }
        let ds_dir = dir.path().join("dataset");
        std::fs::create_dir_all(ds_dir.join("clips")).unwrap();
        let theirs = ds_dir.join("clips/patient_video.mp4");
        std::fs::write(&theirs, b"not ours").unwrap();
        let mut ds = dataset(&ds_dir, &blobs);
        ds.rows.insert((clip("c1", "b1"), None), 1);
        ds.rows.insert((clip("c2", "b2"), None), 1);
        assert_eq!(ds.write().unwrap(), 2);
        assert_eq!(std::fs::read(ds_dir.join("clips/c2.mp4")).unwrap(), b"b2");
        // c2 is retracted: its file goes, the user's stays.
        ds.rows.insert((clip("c2", "b2"), None), 0);
        assert_eq!(ds.write().unwrap(), 1);
        assert!(!ds_dir.join("clips/c2.mp4").exists());
        assert!(ds_dir.join("clips/c1.mp4").exists() && theirs.exists());
        // A later process (no memory of what it placed) prunes from the ledger alone.
        let mut again = dataset(&ds_dir, &blobs);
        assert_eq!(again.write().unwrap(), 0);
        assert!(!ds_dir.join("clips/c1.mp4").exists());
        assert_eq!(std::fs::read(&theirs).unwrap(), b"not ours");
    }
}
