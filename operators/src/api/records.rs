//! The record kinds that flow between operators (ARCHITECTURE §3).
//!
//! Records are small and serde-serialisable; pixels, clips, latents and checkpoints live in the run
//! store and records carry their content-addressed keys. Every record is totally ordered and hashable
//! so that it can live in a differential collection: floating-point values are wrapped in [`F64`],
//! which orders by `f64::total_cmp`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A totally ordered, hashable `f64` (ordering by `total_cmp`, equality and hashing by bits).
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}
impl fmt::Debug for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl From<f64> for F64 {
    fn from(v: f64) -> Self {
        F64(v)
    }
}

/// What a port carries. `medgen check` matches these between connected nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Video,
    Clip,
    Scores,
    Caption,
    Latent,
    Checkpoint,
    Sample,
    Metric,
    Failure,
    Prompt,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Video,
        Kind::Clip,
        Kind::Scores,
        Kind::Caption,
        Kind::Latent,
        Kind::Checkpoint,
        Kind::Sample,
        Kind::Metric,
        Kind::Failure,
        Kind::Prompt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Video => "Video",
            Kind::Clip => "Clip",
            Kind::Scores => "Scores",
            Kind::Caption => "Caption",
            Kind::Latent => "Latent",
            Kind::Checkpoint => "Checkpoint",
            Kind::Sample => "Sample",
            Kind::Metric => "Metric",
            Kind::Failure => "Failure",
            Kind::Prompt => "Prompt",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Facts about a video stream, as `video.probe` measures them. All optional: a source fills what it
/// knows (a DICOM header knows its frame count, a plain file knows nothing until probed).
///
/// Serialised by hand (below) so that JSON leaves out an unset `start_s`: records are memo keys
/// by their JSON, and videos probed before the field existed keep theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub struct ProbeInfo {
    pub container: Option<String>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Display aspect ratio as (num, den), as shown (after `rotation_deg`).
    pub display_aspect: Option<(u32, u32)>,
    /// Frame rate as (num, den); (0, 1) for variable frame rate streams.
    pub fps: Option<(u32, u32)>,
    pub variable_fps: bool,
    /// How long the video lasts, seconds.
    pub duration_s: Option<F64>,
    /// Where the first frame is shown on the stream's timeline, seconds, when not at 0: MPEG
    /// program and transport streams start where their clock stood when recording began. Clip
    /// and decode times are on that timeline, so the frames span `[start_s, start_s +
    /// duration_s)` ([`ProbeInfo::end_s`]).
    #[serde(default)]
    pub start_s: Option<F64>,
    pub bitrate: Option<u64>,
    pub frame_count: Option<u64>,
    /// True when `frame_count` is exact, false when estimated from duration × fps.
    pub frame_count_exact: bool,
    /// Clockwise turn the container asks for to show the stored frames (0, 90, 180, 270; a
    /// phone's portrait recording: 90). Decoded RGB and gray frames come out turned.
    pub rotation_deg: Option<i32>,
    pub has_audio: bool,
}

impl Serialize for ProbeInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Binary formats (timely's exchange between processes) read fields by position: every
        // field is always written there.
        // Destructured so that a new field cannot be forgotten here.
        let ProbeInfo {
            container,
            video_codec,
            audio_codec,
            width,
            height,
            display_aspect,
            fps,
            variable_fps,
            duration_s,
            start_s,
            bitrate,
            frame_count,
            frame_count_exact,
            rotation_deg,
            has_audio,
        } = self;
        let write_start = start_s.is_some() || !s.is_human_readable();
        let mut st = s.serialize_struct("ProbeInfo", 14 + usize::from(write_start))?;
        st.serialize_field("container", container)?;
        st.serialize_field("video_codec", video_codec)?;
        st.serialize_field("audio_codec", audio_codec)?;
        st.serialize_field("width", width)?;
        st.serialize_field("height", height)?;
        st.serialize_field("display_aspect", display_aspect)?;
        st.serialize_field("fps", fps)?;
        st.serialize_field("variable_fps", variable_fps)?;
        st.serialize_field("duration_s", duration_s)?;
        if write_start {
            st.serialize_field("start_s", start_s)?;
        } else {
            st.skip_field("start_s")?;
        }
        st.serialize_field("bitrate", bitrate)?;
        st.serialize_field("frame_count", frame_count)?;
        st.serialize_field("frame_count_exact", frame_count_exact)?;
        st.serialize_field("rotation_deg", rotation_deg)?;
        st.serialize_field("has_audio", has_audio)?;
        st.end()
    }
}

impl ProbeInfo {
    /// Where the first frame is shown on the stream's timeline (0 unless `start_s` says otherwise).
    pub fn start(&self) -> f64 {
        self.start_s.map_or(0.0, |s| s.0)
    }

    /// Where the frames end on the stream's timeline: `start + duration`.
    pub fn end_s(&self) -> Option<f64> {
        self.duration_s.map(|d| self.start() + d.0)
    }
}

/// A source video: its identity is the hash of its content.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Video {
    /// Content hash (blake3, hex) of the file; hash of the uri for remote sources.
    pub source_id: String,
    pub uri: String,
    pub size_bytes: u64,
    pub probe: Option<ProbeInfo>,
    /// title, description, channel, tags, transcript (uri or text), modality, ... as given by the source.
    pub metadata: BTreeMap<String, String>,
}

/// A span of a source video.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Clip {
    /// hash(source id, start, end).
    pub clip_id: String,
    pub source_id: String,
    pub uri: String,
    pub start_s: F64,
    pub end_s: F64,
    pub fps: F64,
    pub width: u32,
    pub height: u32,
    /// Blob key of the written clip MP4, once written.
    pub blob: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Named scores and labels of a clip.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scores {
    pub clip: Clip,
    pub scores: BTreeMap<String, F64>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Caption {
    pub clip_id: String,
    pub brief: String,
    pub detailed: String,
    pub backend: String,
    pub model: String,
    pub prompt_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Latent {
    pub clip_id: String,
    pub latent_blob: String,
    pub shape: Vec<u64>,
    pub codec: String,
    pub text_blob: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    pub step: u64,
    /// file name inside the checkpoint (diffusers / PEFT layout) → blob key
    pub blobs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sample {
    pub prompt_id: String,
    pub checkpoint_epoch: u64,
    pub checkpoint_step: u64,
    pub video_blob: String,
    pub settings: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Metric {
    pub subject: String,
    pub name: String,
    pub value: F64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prompt {
    pub prompt_id: String,
    pub text: String,
}

/// Classes of per-item failure. `transient` ones are retried within a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The input is malformed (a bad manifest row, a corrupt file): retrying cannot help.
    InvalidInput,
    /// The input cannot be read (missing, permission denied).
    Unreadable,
    /// Unsupported format or feature.
    Unsupported,
    /// Took longer than the per-item timeout.
    Timeout,
    /// A transient error (I/O hiccup, HTTP 5xx, rate limit): retried.
    Transient,
    /// A model or backend failed.
    Backend,
    /// Skipped because the item is quarantined after repeated failures.
    Quarantined,
    /// A bug: an operator panicked on this item.
    Internal,
}

impl ErrorClass {
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Timeout)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidInput => "invalid_input",
            ErrorClass::Unreadable => "unreadable",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Transient => "transient",
            ErrorClass::Backend => "backend",
            ErrorClass::Quarantined => "quarantined",
            ErrorClass::Internal => "internal",
        }
    }
    pub fn parse(s: &str) -> Option<ErrorClass> {
        Some(match s {
            "invalid_input" => ErrorClass::InvalidInput,
            "unreadable" => ErrorClass::Unreadable,
            "unsupported" => ErrorClass::Unsupported,
            "timeout" => ErrorClass::Timeout,
            "transient" => ErrorClass::Transient,
            "backend" => ErrorClass::Backend,
            "quarantined" => ErrorClass::Quarantined,
            "internal" => ErrorClass::Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bad input is data, not a crash: one per failed item.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Failure {
    /// Stable id of the failed item (e.g. `file:/data/a.mp4`, `manifest:/m.jsonl:12`).
    pub item: String,
    /// The graph node that failed on it.
    pub node: String,
    /// Its operator.
    pub operator: String,
    /// Human-readable description of the input (path, row).
    pub input: String,
    pub class: ErrorClass,
    pub message: String,
    pub attempts: u32,
}

/// Everything that flows along an edge.
///
/// Serialised externally tagged (timely exchanges records between processes with bincode, which
/// cannot read internally tagged enums); [`Record::to_row`] gives the flat JSON row sinks write.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Video(Video),
    Clip(Clip),
    Scores(Scores),
    Caption(Caption),
    Latent(Latent),
    Checkpoint(Checkpoint),
    Sample(Sample),
    Metric(Metric),
    Failure(Failure),
    Prompt(Prompt),
}

/// Whether `s` looks like a blob key (64 lowercase hex digits).
fn is_blob_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Blob keys kept in a metadata map: the values of `*_blob` keys (`redacted_blob`, `frames_blob`, …).
fn metadata_blobs(m: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    m.iter().filter(|(k, v)| k.ends_with("_blob") && is_blob_key(v)).map(|(_, v)| v.as_str())
}

impl Record {
    /// The run-store blobs this record refers to: clip MP4s, latents and text embeddings,
    /// checkpoint files, sample videos, and `*_blob` metadata entries. A memoised result whose
    /// blobs are gone is recomputed rather than served.
    pub fn blob_keys(&self) -> Vec<&str> {
        fn clip(c: &Clip) -> Vec<&str> {
            c.blob.iter().map(String::as_str).chain(metadata_blobs(&c.metadata)).collect()
        }
        let mut keys = match self {
            Record::Video(v) => metadata_blobs(&v.metadata).collect(),
            Record::Clip(c) => clip(c),
            Record::Scores(s) => clip(&s.clip),
            Record::Latent(l) => std::iter::once(l.latent_blob.as_str()).chain(l.text_blob.as_deref()).collect(),
            Record::Checkpoint(c) => c.blobs.values().map(String::as_str).collect(),
            Record::Sample(s) => vec![s.video_blob.as_str()],
            Record::Caption(_) | Record::Metric(_) | Record::Failure(_) | Record::Prompt(_) => Vec::new(),
        };
        // Unset fields are empty (a text-only Latent has no latent_blob).
        keys.retain(|k| is_blob_key(k));
        keys
    }

    pub fn kind(&self) -> Kind {
        match self {
            Record::Video(_) => Kind::Video,
            Record::Clip(_) => Kind::Clip,
            Record::Scores(_) => Kind::Scores,
            Record::Caption(_) => Kind::Caption,
            Record::Latent(_) => Kind::Latent,
            Record::Checkpoint(_) => Kind::Checkpoint,
            Record::Sample(_) => Kind::Sample,
            Record::Metric(_) => Kind::Metric,
            Record::Failure(_) => Kind::Failure,
            Record::Prompt(_) => Kind::Prompt,
        }
    }

    /// A flat JSON object: `{"kind": "video", ...fields}`.
    pub fn to_row(&self) -> serde_json::Value {
        let inner = match self {
            Record::Video(x) => serde_json::to_value(x),
            Record::Clip(x) => serde_json::to_value(x),
            Record::Scores(x) => serde_json::to_value(x),
            Record::Caption(x) => serde_json::to_value(x),
            Record::Latent(x) => serde_json::to_value(x),
            Record::Checkpoint(x) => serde_json::to_value(x),
            Record::Sample(x) => serde_json::to_value(x),
            Record::Metric(x) => serde_json::to_value(x),
            Record::Failure(x) => serde_json::to_value(x),
            Record::Prompt(x) => serde_json::to_value(x),
        };
        let mut obj = serde_json::Map::new();
        obj.insert("kind".into(), serde_json::Value::String(self.kind().name().to_ascii_lowercase()));
        if let Ok(serde_json::Value::Object(m)) = inner {
            obj.extend(m);
        }
        serde_json::Value::Object(obj)
    }

    /// The key records are exchanged by between workers: all work on one source video stays on one
    /// worker (ARCHITECTURE §4).
    pub fn routing_key(&self) -> String {
        match self {
            Record::Video(v) => v.source_id.clone(),
            Record::Clip(c) => c.source_id.clone(),
            Record::Scores(s) => s.clip.source_id.clone(),
            Record::Caption(c) => c.clip_id.clone(),
            Record::Latent(l) => l.clip_id.clone(),
            Record::Checkpoint(c) => format!("ckpt:{}", c.epoch),
            Record::Sample(s) => s.prompt_id.clone(),
            Record::Metric(m) => m.subject.clone(),
            Record::Failure(f) => f.item.clone(),
            Record::Prompt(p) => p.prompt_id.clone(),
        }
    }

    /// A stable identity for logs and failure records.
    pub fn item_id(&self) -> String {
        match self {
            Record::Video(v) => format!("video:{}", v.source_id),
            Record::Clip(c) => format!("clip:{}", c.clip_id),
            Record::Scores(s) => format!("scores:{}", s.clip.clip_id),
            Record::Caption(c) => format!("caption:{}", c.clip_id),
            Record::Latent(l) => format!("latent:{}", l.clip_id),
            Record::Checkpoint(c) => format!("checkpoint:{}:{}", c.epoch, c.step),
            Record::Sample(s) => format!("sample:{}:{}", s.prompt_id, s.checkpoint_epoch),
            Record::Metric(m) => format!("metric:{}:{}", m.subject, m.name),
            Record::Failure(f) => format!("failure:{}", f.item),
            Record::Prompt(p) => format!("prompt:{}", p.prompt_id),
        }
    }
}

/// Stable 64-bit hash of a string, for exchange pacts (identical in every process).
pub fn route_hash(key: &str) -> u64 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_info_leaves_an_unset_start_out_of_json_only() {
        let mut p = ProbeInfo {
            container: Some("MPEG-2 Transport Stream".into()),
            video_codec: Some("H.264".into()),
            audio_codec: Some("AAC".into()),
            width: Some(1280),
            height: Some(720),
            display_aspect: Some((16, 9)),
            fps: Some((30, 1)),
            variable_fps: true,
            duration_s: Some(F64(8.25)),
            start_s: None,
            bitrate: Some(2_000_000),
            frame_count: Some(249),
            frame_count_exact: true,
            rotation_deg: Some(90),
            has_audio: true,
        };
        // JSON (memo keys, views): as before the field existed
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("start_s"), "{json}");
        assert_eq!(serde_json::from_str::<ProbeInfo>(&json).unwrap(), p);
        // bincode (between processes): every field, by position
        assert_eq!(bincode::deserialize::<ProbeInfo>(&bincode::serialize(&p).unwrap()).unwrap(), p);
        p.start_s = Some(F64(10.125));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"start_s\":10.125"), "{json}");
        assert_eq!(serde_json::from_str::<ProbeInfo>(&json).unwrap(), p);
        assert_eq!(bincode::deserialize::<ProbeInfo>(&bincode::serialize(&p).unwrap()).unwrap(), p);
        assert_eq!((p.start(), p.end_s()), (10.125, Some(18.375)));
    }

    #[test]
    fn f64_orders_totally() {
        let mut v = [F64(1.0), F64(f64::NAN), F64(-0.0), F64(0.0), F64(-3.0)];
        v.sort();
        assert_eq!(v[0], F64(-3.0));
        assert!(v[4].0.is_nan());
        assert_ne!(F64(0.0), F64(-0.0));
    }

    #[test]
    fn record_rows_are_tagged_by_kind_and_roundtrip() {
        let r = Record::Metric(Metric { subject: "s".into(), name: "loss".into(), value: F64(0.5) });
        assert_eq!(r.to_row().to_string(), r#"{"kind":"metric","name":"loss","subject":"s","value":0.5}"#);
        let j = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.kind(), Kind::Metric);
    }

    #[test]
    fn route_hash_is_stable() {
        assert_eq!(route_hash("abc"), route_hash("abc"));
        assert_ne!(route_hash("abc"), route_hash("abd"));
    }
}
