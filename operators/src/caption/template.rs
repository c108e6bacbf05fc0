//! `caption.template`: the offline captioner. Deterministic detailed and brief captions assembled
//! from what the pipeline knows about a clip — source title and description, the transcript of its
//! span, on-screen text, category, camera motion, matched medical terms — and from scene properties
//! measured on its frames (brightness, contrast, colour, size, frame rate). Every caption it writes
//! says `backend = "template"`, so template captions are never mistaken for model captions.

use super::transcript;
use crate::api::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct CaptionTemplate;

/// Version of the templates below; part of the memo key and recorded as `prompt_version`.
pub const TEMPLATE_VERSION: &str = "template-v1";

fn d_frames() -> u32 {
    4
}
fn d_max_words() -> usize {
    200
}
fn d_transcript_words() -> usize {
    60
}

/// Params of `caption.template`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateParams {
    /// Frames decoded per clip to measure scene properties (0: describe from metadata only).
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Word limit of the detailed caption.
    #[serde(default = "d_max_words")]
    pub max_words: usize,
    /// Words of transcript quoted at most.
    #[serde(default = "d_transcript_words")]
    pub transcript_words: usize,
}

/// Scene properties measured on frames.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scene {
    /// Mean luma 0–255.
    pub brightness: f64,
    /// Standard deviation of luma.
    pub contrast: f64,
    /// Mean saturation 0–1.
    pub saturation: f64,
    /// Dominant hue name of saturated pixels, if any.
    pub hue: Option<&'static str>,
}

/// Measure scene properties of RGB8 frames.
pub fn measure(frames: &[(u32, u32, &[u8])]) -> Option<Scene> {
    let (mut n, mut sum, mut sum2, mut sat) = (0f64, 0f64, 0f64, 0f64);
    let mut hues = [0u64; 6];
    for (_, _, px) in frames {
        for p in px.chunks_exact(3) {
            let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
            let y = 0.299 * r + 0.587 * g + 0.114 * b;
            let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
            let s = if mx > 0.0 { (mx - mn) / mx } else { 0.0 };
            n += 1.0;
            sum += y;
            sum2 += y * y;
            sat += s;
            if s > 0.35 && mx > 40.0 {
                let h = if mx == r {
                    ((g - b) / (mx - mn)).rem_euclid(6.0)
                } else if mx == g {
                    (b - r) / (mx - mn) + 2.0
                } else {
                    (r - g) / (mx - mn) + 4.0
                };
                hues[(h.floor() as usize).min(5)] += 1;
            }
        }
    }
    if n == 0.0 {
        return None;
    }
    let mean = sum / n;
    let names = ["red", "yellow", "green", "cyan", "blue", "magenta"];
    let (best, count) = hues.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, c)| (i, *c)).unwrap_or((0, 0));
    Some(Scene {
        brightness: mean,
        contrast: (sum2 / n - mean * mean).max(0.0).sqrt(),
        saturation: sat / n,
        hue: (count as f64 > 0.1 * n).then_some(names[best]),
    })
}

/// What the template knows about one clip.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub id: String,
    pub duration_s: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub metadata: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub transcript: String,
    pub scene: Option<Scene>,
}

fn first_sentence(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.find(['.', '!', '?']) {
        Some(i) => s[..=i].to_string(),
        None if s.is_empty() => s,
        None => format!("{s}."),
    }
}

fn words(s: &str, n: usize) -> String {
    let w: Vec<&str> = s.split_whitespace().collect();
    if w.len() <= n { w.join(" ") } else { format!("{} …", w[..n].join(" ")) }
}

fn category_phrase(c: &str) -> &'static str {
    match c {
        "teaching" => "medical teaching",
        "clinical_practice" | "clinical practice" => "clinical practice",
        "popular_science" | "popular science" => "popular-science",
        "animation" => "medical animation",
        "imaging" => "medical imaging",
        _ => "medical",
    }
}

fn motion_phrase(m: &str) -> Option<&'static str> {
    Some(match m {
        "static" => "The camera stays still throughout.",
        "pan" => "The camera pans horizontally across the scene.",
        "tilt" => "The camera tilts vertically across the scene.",
        "zoom" => "The camera zooms, changing the framing of the scene.",
        "shaky" => "The footage is hand-held and shaky.",
        "mixed" => "The camera moves in several ways over the clip.",
        _ => return None,
    })
}

fn scene_sentence(f: &Facts) -> Option<String> {
    let s = f.scene.as_ref()?;
    let light = match s.brightness {
        b if b < 50.0 => "dark",
        b if b < 100.0 => "dimly lit",
        b if b < 170.0 => "evenly lit",
        _ => "brightly lit",
    };
    let contrast = if s.contrast < 25.0 {
        "low contrast"
    } else if s.contrast < 60.0 {
        "moderate contrast"
    } else {
        "high contrast"
    };
    let colour = match (s.saturation, s.hue) {
        (x, _) if x < 0.08 => "nearly monochrome, grayscale tones".to_string(),
        (_, Some(h)) => format!("mostly {h} colour tones"),
        _ => "muted colours".to_string(),
    };
    let mut out = format!("The footage is {light}, with {contrast} and {colour}");
    if let (Some(w), Some(h)) = (f.width, f.height) {
        out.push_str(&format!(", at {w}×{h} pixels"));
    }
    if let Some(fps) = f.fps.filter(|x| *x > 0.0) {
        out.push_str(&format!(" and {fps:.0} frames per second"));
    }
    out.push('.');
    Some(out)
}

/// The detailed and brief captions for a clip.
pub fn compose(f: &Facts, p: &TemplateParams) -> (String, String) {
    let title = f.metadata.get("title").map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let description = f.metadata.get("description").map(|d| first_sentence(d)).filter(|d| !d.is_empty());
    let category = f.labels.get("category").map(|c| category_phrase(c)).unwrap_or("medical");
    let length = f.duration_s.map(|d| format!("{d:.0}-second ")).unwrap_or_default();
    let mut detailed = vec![match &title {
        Some(t) => format!("The short video is a {length}{category} clip from \"{t}\"."),
        None => format!("The short video is a {length}{category} clip."),
    }];
    if let Some(d) = &description {
        detailed.push(format!("Its source describes it as follows: {d}"));
    }
    if let Some(m) = f.labels.get("camera_motion").and_then(|m| motion_phrase(m)) {
        detailed.push(m.to_string());
    }
    if let Some(s) = scene_sentence(f) {
        detailed.push(s);
    }
    if let Some(terms) = f.labels.get("medical_terms").filter(|t| !t.is_empty()) {
        detailed.push(format!("Medical topics named in its metadata include {terms}."));
    }
    if let Some(text) = f.labels.get("ocr_text").filter(|t| !t.trim().is_empty()) {
        detailed.push(format!("On-screen text reads \"{}\".", words(text, 25)));
    }
    if !f.transcript.trim().is_empty() {
        detailed.push(format!("The narration during the clip says: \"{}\"", words(&f.transcript, p.transcript_words)));
    }
    let detailed = words(&detailed.join(" "), p.max_words);
    let brief = match (&title, &description) {
        (Some(t), Some(d)) => format!("A {category} clip from \"{t}\": {d}"),
        (Some(t), None) => format!("A {category} clip from \"{t}\"."),
        (None, Some(d)) => format!("A {category} clip: {d}"),
        (None, None) => format!("A {length}{category} clip."),
    };
    (detailed, words(&brief, 60))
}

/// Gather the facts of a record (frames are measured by the caller).
pub fn facts(rec: &Record) -> Option<(Facts, String, f64, f64)> {
    let (clip, labels) = match rec {
        Record::Clip(c) => (c, BTreeMap::new()),
        Record::Scores(s) => (&s.clip, s.labels.clone()),
        Record::Video(v) => {
            let p = v.probe.clone().unwrap_or_default();
            let fps = p.fps.and_then(|(n, d)| (d > 0).then(|| n as f64 / d as f64));
            let f = Facts {
                id: v.source_id.clone(),
                duration_s: p.duration_s.map(|d| d.0),
                width: p.width,
                height: p.height,
                fps,
                metadata: v.metadata.clone(),
                labels: BTreeMap::new(),
                transcript: String::new(),
                scene: None,
            };
            let end = p.end_s().unwrap_or(f64::INFINITY);
            return Some((f, v.uri.clone(), p.start(), end));
        }
        _ => return None,
    };
    let f = Facts {
        id: clip.clip_id.clone(),
        duration_s: Some(clip.end_s.0 - clip.start_s.0),
        width: Some(clip.width),
        height: Some(clip.height),
        fps: Some(clip.fps.0),
        metadata: clip.metadata.clone(),
        labels,
        transcript: String::new(),
        scene: None,
    };
    Some((f, clip.uri.clone(), clip.start_s.0, clip.end_s.0))
}

fn transcript_of(meta: &BTreeMap<String, String>, start: f64, end: f64) -> String {
    if let Some(uri) = meta.get("transcript_uri")
        && let Ok(text) = std::fs::read_to_string(uri)
    {
        return transcript::cut(&transcript::parse(&text), start, end);
    }
    meta.get("transcript").cloned().unwrap_or_default()
}

#[cfg(feature = "video")]
fn scene_of(uri: &str, start: f64, end: f64, frames: u32, ctx: &ItemCtx) -> Result<Option<Scene>, ItemError> {
    use crate::video::{DecodeSpec, PixelFormat, Sampling, Size, TimeRange, decode::decode_all};
    if frames == 0 {
        return Ok(None);
    }
    let range = if end.is_finite() { TimeRange::new(start, end) } else { TimeRange { start_s: start, end_s: None } };
    let spec = DecodeSpec {
        sampling: Sampling::Uniform { count: frames },
        size: Size::Fit { width: 160, height: 160 },
        range,
        format: PixelFormat::Rgb,
        deadline: Some(ctx.deadline),
        ..Default::default()
    };
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    let decoded =
        decode_all(std::path::Path::new(path), &spec).map_err(|e| ItemError::new(e.class(), e.to_string()))?;
    let views: Vec<(u32, u32, &[u8])> = decoded.iter().map(|f| (f.width, f.height, f.data())).collect();
    Ok(measure(&views))
}

#[cfg(not(feature = "video"))]
fn scene_of(_uri: &str, _start: f64, _end: f64, _frames: u32, _ctx: &ItemCtx) -> Result<Option<Scene>, ItemError> {
    Ok(None)
}

impl TypedOperator for CaptionTemplate {
    type Params = TemplateParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "caption.template",
            summary: "Offline, deterministic captions from metadata, transcript, labels and measured scene properties",
            doc: "The default captioner when no vision-language model is available: no network, no model. The \
                  detailed caption is assembled from the source title and description, the clip's length and \
                  category, camera motion, measured scene properties (brightness, contrast, colour tones, size, \
                  frame rate — from `frames` decoded frames), matched medical terms, on-screen text and the \
                  transcript of the clip's span; the brief caption from title, category and description. Captions \
                  carry backend `template` and prompt version `template-v1`, so datasets say plainly which captions \
                  are template-made. Accepts clips, scored clips (whose labels it uses) or whole videos.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores, Kind::Video],
                required: true,
                doc: "clips, scored clips or videos",
            }],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Caption), doc: "one Caption per input" }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &TemplateParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.frames > 64 {
            v.push(ParamIssue::error("frames", "at most 64 frames", None));
        }
        if p.max_words < 20 {
            v.push(ParamIssue::error("max_words", "at least 20 words", None));
        }
        v
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &TemplateParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let p = p.clone();
        let all = pool_map(ctx, input, PoolConfig::default(), move |rec: &Record, ictx| {
            let (mut f, uri, start, end) = facts(rec).ok_or_else(|| {
                ItemError::new(ErrorClass::Unsupported, format!("cannot caption a {} record", rec.kind()))
            })?;
            // A whole video takes its whole transcript (whose times count from its first frame,
            // not from its stream timeline's origin).
            f.transcript = match rec {
                Record::Video(_) => transcript_of(&f.metadata, 0.0, f64::INFINITY),
                _ => {
                    let (a, b) = transcript::on_transcript_clock(&f.metadata, start, end);
                    transcript_of(&f.metadata, a, b)
                }
            };
            f.scene = scene_of(&uri, start, end, p.frames, ictx)?;
            let (detailed, brief) = compose(&f, &p);
            Ok(vec![Record::Caption(Caption {
                clip_id: f.id,
                brief,
                detailed,
                backend: "template".into(),
                model: "template".into(),
                prompt_version: TEMPLATE_VERSION.into(),
            })])
        });
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_from_everything_it_knows() {
        let mut f = Facts {
            id: "x".into(),
            duration_s: Some(8.0),
            width: Some(720),
            height: Some(480),
            fps: Some(25.0),
            ..Default::default()
        };
        f.metadata.insert("title".into(), "Echocardiography basics".into());
        f.metadata.insert("description".into(), "A parasternal long-axis view of the heart. Second sentence.".into());
        f.labels.insert("category".into(), "imaging".into());
        f.labels.insert("camera_motion".into(), "static".into());
        f.transcript = "Here we see the left ventricle contracting".into();
        let gray: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 200) as u8).collect();
        f.scene = measure(&[(64, 64, &gray)]);
        let (d, b) = compose(&f, &TemplateParams { frames: 4, max_words: 200, transcript_words: 60 });
        assert!(
            d.starts_with("The short video is a 8-second medical imaging clip from \"Echocardiography basics\"."),
            "{d}"
        );
        assert!(d.contains("A parasternal long-axis view of the heart."));
        assert!(!d.contains("Second sentence"));
        assert!(d.contains("The camera stays still"));
        assert!(d.contains("720×480 pixels and 25 frames per second"));
        assert!(d.contains("left ventricle"));
        assert_eq!(
            b,
            "A medical imaging clip from \"Echocardiography basics\": A parasternal long-axis view of the heart."
        );
        // Deterministic.
        assert_eq!(compose(&f, &TemplateParams { frames: 4, max_words: 200, transcript_words: 60 }).0, d);
    }

    #[test]
    fn measures_brightness_and_colour() {
        let red: Vec<u8> = std::iter::repeat_n([200u8, 20, 20], 100).flatten().collect();
        let s = measure(&[(10, 10, &red)]).unwrap();
        assert_eq!(s.hue, Some("red"));
        assert!(s.saturation > 0.8);
        let black = vec![0u8; 300];
        let s = measure(&[(10, 10, &black)]).unwrap();
        assert_eq!((s.brightness, s.contrast, s.hue), (0.0, 0.0, None));
        assert!(measure(&[]).is_none());
    }
}
