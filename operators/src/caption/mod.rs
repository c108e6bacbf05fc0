//! Captioning: model-written captions over OpenAI-compatible endpoints (`caption.vlm`) and the
//! building blocks they share (HTTP client, rate limits, response hygiene, prompts, transcripts).

pub mod client;
pub mod hygiene;
pub mod prompt;
pub mod ratelimit;
pub mod template;
pub mod transcript;
#[cfg(feature = "video")]
pub mod vlm;
