//! `caption.vlm`: the paper's captioning stage over any OpenAI-compatible chat-completions endpoint.
//! For each clip: uniformly spaced frames (JPEG) + the source's title, description and the clip's
//! transcript → a detailed and a brief caption, asked for in two requests sent together.
//!
//! Frames of a clip that `curate.deidentify` redacted (metadata `redacted_blob`) are read from the
//! redacted copy in the run store, never from the source: identifiers are not sent to the API.

use super::client::{ChatClient, ChatRequest, Message, Part};
use super::hygiene::{self, Rules};
use super::ratelimit::{Limits, RateLimiter};
use super::{prompt, transcript};
use crate::api::*;
use crate::video::{DecodeSpec, Frame, PixelFormat, Sampling, Size, TimeRange, decode::Decoder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct CaptionVlm;

fn d_frames() -> u32 {
    8
}
fn d_frame_size() -> u32 {
    512
}
fn d_quality() -> u8 {
    85
}
fn d_concurrency() -> usize {
    4
}
fn d_timeout() -> f64 {
    120.0
}
fn d_window() -> f64 {
    60.0
}
fn d_retries() -> u32 {
    5
}
fn d_backoff() -> f64 {
    1.0
}
fn d_temperature() -> f64 {
    0.2
}
fn d_max_tokens() -> u32 {
    600
}
fn d_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn d_detailed_words() -> (usize, usize) {
    (60, 320)
}
fn d_brief_words() -> (usize, usize) {
    (8, 120)
}
fn d_language() -> String {
    "en".into()
}

/// Params of `caption.vlm`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VlmParams {
    /// API base URL of an OpenAI-compatible server, ending in /v1 (vLLM `http://host:8000/v1`,
    /// llama.cpp server, Ollama `http://host:11434/v1`, LM Studio, `https://api.openai.com/v1`).
    pub endpoint: String,
    /// Model name as the server knows it (e.g. `gpt-4o`, `Qwen/Qwen2.5-VL-7B-Instruct`).
    pub model: String,
    /// Name of the environment variable holding the API key (sent as a Bearer token; never logged
    /// or stored). Unset or empty variable: no key is sent (local servers).
    #[serde(default = "d_key_env")]
    pub api_key_env: String,
    /// Frames sent per clip, uniformly spaced over its span (the paper: 8).
    #[serde(default = "d_frames")]
    pub frames: u32,
    /// Longest side of each frame sent, pixels.
    #[serde(default = "d_frame_size")]
    pub frame_size: u32,
    /// JPEG quality of the frames, 1–100.
    #[serde(default = "d_quality")]
    pub jpeg_quality: u8,
    /// Clips captioned at once, per process and shared by its workers (each sends its detailed and
    /// brief requests together).
    #[serde(default = "d_concurrency")]
    pub max_concurrency: usize,
    /// Requests per minute allowed for this endpoint and model (per process); unset: unlimited.
    #[serde(default)]
    pub requests_per_min: Option<u32>,
    /// Tokens per minute allowed (estimated before, corrected after each request); unset: unlimited.
    #[serde(default)]
    pub tokens_per_min: Option<u64>,
    /// Length of the sliding window the two limits above are counted over, seconds. The default 60
    /// makes them per-minute limits; providers that count per second or per 10 s windows can be
    /// matched exactly.
    #[serde(default = "d_window")]
    pub rate_window_s: f64,
    /// Seconds to wait for one answer.
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Retries per request after a transient error (429, 5xx, timeout, reset, truncated or
    /// unusable answer), with exponential backoff and jitter; a server's Retry-After is honoured.
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// First backoff, seconds (doubles per retry, ±50% jitter, at most 60 s).
    #[serde(default = "d_backoff")]
    pub backoff_s: f64,
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    /// Max tokens per answer.
    #[serde(default = "d_max_tokens")]
    pub max_tokens: u32,
    /// File with a custom detailed-caption prompt (placeholders {title} {description}
    /// {transcript} {duration} {frames}); default: the built-in prompt.
    #[serde(default)]
    pub detailed_prompt: Option<String>,
    /// File with a custom brief-caption prompt; default: the built-in prompt.
    #[serde(default)]
    pub brief_prompt: Option<String>,
    /// Word limits of the detailed caption [min, max]: shorter answers are retried, longer ones cut
    /// at a sentence end.
    #[serde(default = "d_detailed_words")]
    pub detailed_words: (usize, usize),
    /// Word limits of the brief caption [min, max].
    #[serde(default = "d_brief_words")]
    pub brief_words: (usize, usize),
    /// Expected language of the answers (`en` is checked; anything else disables the check).
    #[serde(default = "d_language")]
    pub language: String,
}

/// A counting semaphore: at most `max_concurrency` clips of a node talk to the endpoint at once in
/// this process (whatever the number of workers), while extra pool threads decode the next clips'
/// frames ahead of time.
struct Slots {
    free: Mutex<usize>,
    wake: std::sync::Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.wake.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.wake.notify_one();
    }
}

/// Everything one captioning job needs (shared by the pool threads).
struct Job {
    slots: Arc<Slots>,
    client: ChatClient,
    limiter: Arc<RateLimiter>,
    p: VlmParams,
    detailed: String,
    brief: String,
    version: String,
    services: Arc<dyn Services>,
}

/// One limiter per (endpoint, model) in this process, shared by all workers.
fn limiter_for(endpoint: &str, model: &str, limits: Limits, window: Duration) -> Arc<RateLimiter> {
    static LIMITERS: OnceLock<Mutex<HashMap<String, Arc<RateLimiter>>>> = OnceLock::new();
    let map = LIMITERS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(format!("{endpoint}\u{0}{model}"))
        .or_insert_with(|| Arc::new(RateLimiter::with_window(limits, window)))
        .clone()
}

/// One set of endpoint slots per (node, endpoint, model, size) in this process, shared by all workers.
fn slots_for(node: &str, endpoint: &str, model: &str, n: usize) -> Arc<Slots> {
    static SLOTS: OnceLock<Mutex<HashMap<String, Arc<Slots>>>> = OnceLock::new();
    let map = SLOTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(format!("{node}\u{0}{endpoint}\u{0}{model}\u{0}{n}"))
        .or_insert_with(|| Arc::new(Slots { free: Mutex::new(n.max(1)), wake: std::sync::Condvar::new() }))
        .clone()
}

fn read_template(base: &Path, p: &Option<String>, default: &str) -> Result<String, String> {
    match p {
        None => Ok(default.to_string()),
        Some(f) => {
            let path = if Path::new(f).is_absolute() { PathBuf::from(f) } else { base.join(f) };
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read prompt file {}: {e}", path.display()))
        }
    }
}

/// What to caption: the file, the span, the id, the metadata, and where its frames come from
/// (the source's span, or the clip's redacted copy).
struct Target<'a> {
    id: String,
    range: TimeRange,
    frames_path: PathBuf,
    frames_range: TimeRange,
    duration_s: Option<f64>,
    /// Where the frames end on the source's timeline, for a whole video (see
    /// [`ProbeInfo::end_s`](crate::api::ProbeInfo::end_s)).
    end_s: Option<f64>,
    metadata: &'a std::collections::BTreeMap<String, String>,
}

fn target<'a>(rec: &'a Record, services: &dyn Services) -> Result<Target<'a>, ItemError> {
    let clip = match rec {
        Record::Clip(c) => Some(c),
        Record::Scores(s) => Some(&s.clip),
        _ => None,
    };
    if let Some(c) = clip {
        let range = TimeRange::new(c.start_s.0, c.end_s.0);
        let (frames_path, frames_range) = crate::video::cut::pixel_source(c, services)?;
        return Ok(Target {
            id: c.clip_id.clone(),
            range,
            frames_path,
            frames_range,
            duration_s: Some(c.end_s.0 - c.start_s.0),
            end_s: None,
            metadata: &c.metadata,
        });
    }
    match rec {
        Record::Video(v) => Ok(Target {
            id: v.source_id.clone(),
            range: TimeRange::ALL,
            frames_path: PathBuf::from(v.uri.strip_prefix("file://").unwrap_or(&v.uri)),
            frames_range: TimeRange::ALL,
            duration_s: v.probe.as_ref().and_then(|p| p.duration_s).map(|d| d.0),
            end_s: v.probe.as_ref().and_then(|p| p.end_s()),
            metadata: &v.metadata,
        }),
        other => Err(ItemError::new(
            ErrorClass::Unsupported,
            format!("caption.vlm cannot caption a {} record", other.kind()),
        )),
    }
}

/// The transcript of the target's span: inline `transcript` metadata, or a `.srt`/`.vtt` file.
fn transcript_for(t: &Target<'_>, end: f64) -> String {
    let (start, end) = transcript::on_transcript_clock(t.metadata, t.range.start_s, end);
    let file = t
        .metadata
        .get("transcript_uri")
        .or_else(|| t.metadata.get("transcript").filter(|s| s.ends_with(".srt") || s.ends_with(".vtt")));
    if let Some(uri) = file
        && let Ok(text) = std::fs::read_to_string(uri)
    {
        return transcript::cut(&transcript::parse(&text), start, end);
    }
    t.metadata.get("transcript").cloned().unwrap_or_default()
}

fn jpeg(frame: &Frame, quality: u8) -> Result<Vec<u8>, ItemError> {
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    let (w, h) = (u16::try_from(frame.width), u16::try_from(frame.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(ItemError::new(ErrorClass::Unsupported, "frame too large for JPEG"));
    };
    let color =
        if frame.format == PixelFormat::Gray { jpeg_encoder::ColorType::Luma } else { jpeg_encoder::ColorType::Rgb };
    enc.encode(frame.data(), w, h, color)
        .map_err(|e| ItemError::new(ErrorClass::Internal, format!("JPEG encoding failed: {e}")))?;
    Ok(out)
}

/// Jittered exponential backoff: base·2^attempt·U(0.5, 1.5), at most 60 s.
fn backoff(base: f64, attempt: u32, salt: &str) -> Duration {
    let h = blake3::hash(format!("{salt}:{attempt}:{:?}", Instant::now()).as_bytes());
    let u = h.as_bytes()[0] as f64 / 255.0;
    let secs = (base * 2f64.powi(attempt.min(16) as i32) * (0.5 + u)).min(60.0);
    Duration::from_secs_f64(secs.max(0.0))
}

impl Job {
    /// One request with retries: transient errors and unusable answers are retried with backoff.
    fn ask(
        &self,
        id: &str,
        messages: Vec<Message>,
        rules: &Rules,
        ctx: &ItemCtx,
        what: &str,
    ) -> Result<String, ItemError> {
        let mut last_error = String::new();
        let mut last_raw = None;
        let estimate = (messages
            .iter()
            .flat_map(|m| &m.parts)
            .map(|p| match p {
                Part::Text(t) => t.len() as u64 / 4,
                Part::Jpeg(_) => 300,
            })
            .sum::<u64>())
            + self.p.max_tokens as u64;
        let req = ChatRequest { messages, temperature: self.p.temperature, max_tokens: self.p.max_tokens };
        for attempt in 0..=self.p.retries {
            if ctx.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ItemError::transient("stopped before the caption was finished"));
            }
            let Some(ticket) = self.limiter.acquire(estimate, Some(ctx.deadline)) else {
                return Err(ItemError::new(
                    ErrorClass::Timeout,
                    format!("{what} caption: the rate limit leaves no room before the item timeout"),
                ));
            };
            let result = self.client.complete(&req);
            let used = result.as_ref().ok().map(|a| a.prompt_tokens + a.completion_tokens).filter(|n| *n > 0);
            self.limiter.finish(ticket, used);
            let wait = match result {
                Ok(answer) => match hygiene::clean(&answer.content, rules) {
                    Ok(text) => return Ok(text),
                    Err(rejection) => {
                        last_error = rejection.to_string();
                        last_raw = Some(answer.content);
                        backoff(self.p.backoff_s, attempt, id)
                    }
                },
                Err(e) if e.is_transient() => {
                    last_error = e.to_string();
                    e.retry_after().unwrap_or_else(|| backoff(self.p.backoff_s, attempt, id))
                }
                Err(e) => {
                    return Err(ItemError::new(ErrorClass::Backend, format!("{what} caption: {e}")));
                }
            };
            tracing::debug!(clip = id, attempt, "{what} caption retry: {last_error}");
            if attempt == self.p.retries || Instant::now() + wait >= ctx.deadline {
                break;
            }
            std::thread::sleep(wait);
        }
        let raw = last_raw
            .map(|r| format!("; last raw answer: {:?}", r.chars().take(2000).collect::<String>()))
            .unwrap_or_default();
        Err(ItemError::new(
            ErrorClass::Backend,
            format!("{what} caption failed after {} attempt(s): {last_error}{raw}", self.p.retries + 1),
        ))
    }

    fn caption(&self, rec: &Record, ctx: &ItemCtx) -> Result<Vec<Record>, ItemError> {
        let t = target(rec, self.services.as_ref())?;
        let spec = DecodeSpec {
            sampling: Sampling::Uniform { count: self.p.frames },
            size: Size::Fit { width: self.p.frame_size, height: self.p.frame_size },
            range: t.frames_range,
            format: PixelFormat::Rgb,
            deadline: Some(ctx.deadline),
            // A whole video: its probed duration spreads the frames over all of it.
            duration_hint: if t.frames_range.end_s.is_none() { t.end_s } else { None },
            ..Default::default()
        };
        let decoder = Decoder::open(&t.frames_path, &spec).map_err(|e| ItemError::new(e.class(), e.to_string()))?;
        let stream_duration = decoder.info().duration_s;
        let frames: Vec<Frame> =
            decoder.collect::<Result<_, _>>().map_err(|e| ItemError::new(e.class(), e.to_string()))?;
        if frames.is_empty() {
            return Err(ItemError::invalid(format!("no frames could be decoded from {}", t.frames_path.display())));
        }
        let duration = t
            .duration_s
            .or(stream_duration)
            .or_else(|| frames.last().map(|f| f.pts_s + f.duration_s.unwrap_or(0.0)))
            .unwrap_or(0.0);
        let dash = |k: &str| {
            t.metadata.get(k).map(String::as_str).filter(|s| !s.trim().is_empty()).unwrap_or("(none)").to_string()
        };
        // A whole video's span ends where its last decoded frame does when no probe said so.
        let end = t.range.end_s.unwrap_or(t.range.start_s + duration);
        let transcript = transcript_for(&t, end);
        let vars = [
            ("title", dash("title")),
            ("description", dash("description")),
            ("transcript", if transcript.is_empty() { "(none)".to_string() } else { transcript }),
            ("duration", format!("{duration:.1}")),
            ("frames", frames.len().to_string()),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut images = Vec::new();
        for f in &frames {
            images.push(Part::Jpeg(jpeg(f, self.p.jpeg_quality)?));
        }
        let request = |template: &str| {
            let mut parts = vec![Part::Text(prompt::fill(template, &vars))];
            parts.extend(images.iter().cloned());
            vec![Message::system(prompt::SYSTEM), Message::user(parts)]
        };
        let d_rules = Rules {
            min_words: self.p.detailed_words.0,
            max_words: self.p.detailed_words.1,
            language: self.p.language.clone(),
        };
        let b_rules = Rules {
            min_words: self.p.brief_words.0,
            max_words: self.p.brief_words.1,
            language: self.p.language.clone(),
        };
        let (d_req, b_req) = (request(&self.detailed), request(&self.brief));
        // Frames are ready: wait for one of the `max_concurrency` endpoint slots.
        let _slot = self.slots.acquire();
        // The two requests go out together: one round trip of latency per clip.
        let (detailed, brief) = std::thread::scope(|s| {
            let b = s.spawn(|| self.ask(&t.id, b_req, &b_rules, ctx, "brief"));
            let d = self.ask(&t.id, d_req, &d_rules, ctx, "detailed");
            let b =
                b.join().unwrap_or_else(|_| Err(ItemError::new(ErrorClass::Internal, "brief caption thread panicked")));
            (d, b)
        });
        let (detailed, brief) = (detailed?, brief?);
        Ok(vec![Record::Caption(Caption {
            clip_id: t.id,
            brief,
            detailed,
            backend: format!("vlm:{}", self.p.endpoint),
            model: self.p.model.clone(),
            prompt_version: self.version.clone(),
        })])
    }
}

impl TypedOperator for CaptionVlm {
    type Params = VlmParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "caption.vlm",
            summary: "Detailed and brief captions from a vision-language model behind an OpenAI-compatible API",
            doc: "For each clip (or whole video): `frames` uniformly spaced frames as JPEG, plus the source's title, \
                  description and the transcript of the clip's span (sidecar .srt/.vtt or manifest `transcript`), are \
                  sent to `endpoint`'s /chat/completions with the versioned detailed-caption prompt, and at the same \
                  time with the brief-caption prompt (so a clip costs one round trip of latency). Answers are cleaned (reasoning and markup stripped), \
                  and empty answers, refusals, the wrong language and too-short answers are retried; 429 (honouring \
                  Retry-After), 5xx, timeouts, resets and truncated responses are retried with exponential backoff \
                  and jitter; after `retries` the clip becomes a Failure with the last raw answer kept. Requests \
                  run at most `max_concurrency` clips at a time per process (shared by its workers), under per-process requests/tokens-per-minute \
                  limits. Captions are memoised by (clip, model, prompt version), so re-runs and resumed runs never \
                  pay twice. The API key is read from the environment and never logged or stored. Frames of a \
                  clip redacted by curate.deidentify (metadata `redacted_blob`) come from the redacted copy, not \
                  the source.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores, Kind::Video],
                required: true,
                doc: "clips (or scored clips, or whole videos) to caption",
            }],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Caption), doc: "one Caption per clip" }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &VlmParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if !(p.endpoint.starts_with("http://") || p.endpoint.starts_with("https://")) {
            v.push(ParamIssue::error(
                "endpoint",
                format!("`{}` is not an http(s) URL", p.endpoint),
                Some("e.g. endpoint = \"http://127.0.0.1:8000/v1\"".into()),
            ));
        }
        if p.model.trim().is_empty() {
            v.push(ParamIssue::error(
                "model",
                "empty model name",
                Some("the name the server serves, e.g. \"gpt-4o\"".into()),
            ));
        }
        if !(1..=64).contains(&p.frames) {
            v.push(ParamIssue::error("frames", "must be between 1 and 64", Some("the paper uses 8".into())));
        }
        if !(64..=4096).contains(&p.frame_size) {
            v.push(ParamIssue::error("frame_size", "must be between 64 and 4096 pixels", None));
        }
        if !(1..=100).contains(&p.jpeg_quality) {
            v.push(ParamIssue::error("jpeg_quality", "must be between 1 and 100", None));
        }
        if p.max_concurrency == 0 || p.max_concurrency > 256 {
            v.push(ParamIssue::error("max_concurrency", "must be between 1 and 256", None));
        }
        if p.requests_per_min == Some(0) || p.tokens_per_min == Some(0) {
            v.push(ParamIssue::error(
                "requests_per_min",
                "a limit of 0 would never send anything",
                Some("leave it out for no limit".into()),
            ));
        }
        if !(p.rate_window_s > 0.0 && p.rate_window_s <= 86400.0) {
            v.push(ParamIssue::error(
                "rate_window_s",
                "must be between 0 and 86400 seconds",
                Some("60 for per-minute limits".into()),
            ));
        }
        let timeout_ok = p.timeout_s > 0.0 && p.timeout_s.is_finite();
        let backoff_ok = p.backoff_s >= 0.0 && p.backoff_s.is_finite();
        if !(timeout_ok && backoff_ok) {
            v.push(ParamIssue::error("timeout_s", "timeout_s must be positive and backoff_s zero or positive", None));
        }
        for (key, words) in [("detailed_words", p.detailed_words), ("brief_words", p.brief_words)] {
            if words.0 > words.1 || words.1 == 0 {
                v.push(ParamIssue::error(key, "needs [min, max] with min <= max and max > 0", None));
            }
        }
        for (key, f) in [("detailed_prompt", &p.detailed_prompt), ("brief_prompt", &p.brief_prompt)] {
            if let Err(e) = read_template(&ctx.base_dir, f, "") {
                v.push(ParamIssue::error(key, e, Some("fix the path (relative to the graph file)".into())));
            }
        }
        v
    }

    fn fingerprint(&self, p: &VlmParams) -> serde_json::Value {
        // Memo key: (clip, model, prompt version) — plus what changes the request's content.
        let detailed = p.detailed_prompt.clone().unwrap_or_default();
        let brief = p.brief_prompt.clone().unwrap_or_default();
        serde_json::json!({"model": p.model, "prompts": [detailed, brief], "frames": p.frames, "language": p.language})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &VlmParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = take_input(ctx, &mut inputs)?;
        let invalid = |message: String| BuildError::Invalid { node: ctx.node.clone(), message };
        let detailed = read_template(&ctx.base_dir, &p.detailed_prompt, prompt::DETAILED).map_err(invalid)?;
        let brief = read_template(&ctx.base_dir, &p.brief_prompt, prompt::BRIEF).map_err(invalid)?;
        let version = prompt::version(&detailed, &brief);
        // The memo key carries the prompt version (a hash of custom prompt text).
        ctx.params_fingerprint = serde_json::json!({"model": p.model, "prompt_version": version, "frames": p.frames, "language": p.language}).to_string();
        let api_key = std::env::var(&p.api_key_env).ok().filter(|k| !k.is_empty());
        let job = Arc::new(Job {
            slots: slots_for(&ctx.node, &p.endpoint, &p.model, p.max_concurrency),
            client: ChatClient::new(&p.endpoint, &p.model, api_key, Duration::from_secs_f64(p.timeout_s)),
            limiter: limiter_for(
                &p.endpoint,
                &p.model,
                Limits { requests_per_min: p.requests_per_min, tokens_per_min: p.tokens_per_min },
                Duration::from_secs_f64(p.rate_window_s),
            ),
            p: p.clone(),
            detailed,
            brief,
            version,
            services: ctx.services.clone(),
        });
        // Extra threads decode frames ahead while the endpoint slots are busy.
        let threads = p.max_concurrency + p.max_concurrency / 2 + 2;
        // A scored clip is captioned as its clip (memo key: the clip, not scores added upstream).
        let input = input.map(|r| match r {
            Record::Scores(s) => Record::Clip(s.clip),
            other => other,
        });
        let all = pool_map(ctx, input, PoolConfig { threads, memoise: true }, move |rec: &Record, ictx| {
            job.caption(rec, ictx)
        });
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}
