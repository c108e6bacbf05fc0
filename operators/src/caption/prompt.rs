//! The captioning prompts (in our own words, after the paper's description), versioned: the version
//! is part of every caption's memo key and is recorded in the dataset, so changing a prompt
//! re-captions and says so.

/// Version of the built-in prompts; bump when their text changes.
pub const BUILTIN_VERSION: &str = "medcap-v1";

pub const SYSTEM: &str = "You are a medical video annotator. You describe what is visible in medical videos precisely, \
using correct clinical terminology, without speculating beyond what the frames, title, description and transcript support.";

/// The detailed caption request. `{title}`, `{description}`, `{transcript}`, `{duration}` and
/// `{frames}` are filled in.
pub const DETAILED: &str = "These {frames} frames are sampled uniformly from a {duration}-second clip of a medical video.\n\
Video title: {title}\nVideo description: {description}\nWhat is said during the clip: {transcript}\n\n\
Write one detailed paragraph (about 150 to 200 words) that begins with \"The short video\". Describe the setting, the people \
and instruments, the anatomy or imaging modality, the procedure or explanation shown and how it unfolds over time, \
camera viewpoint and motion, and any on-screen text or annotations. Use the title, description and transcript only to \
name what is actually visible. Answer with the paragraph only.";

/// The brief caption request: the same frames and metadata, sent alongside the detailed request
/// (the two run in parallel, so a clip costs one round trip of latency).
pub const BRIEF: &str = "These {frames} frames are sampled uniformly from a {duration}-second clip of a medical video.\n\
Video title: {title}\nVideo description: {description}\nWhat is said during the clip: {transcript}\n\n\
Write a brief caption of at most 80 words that keeps the key medical content: which procedure, finding or explanation, \
which anatomy or imaging modality, and what happens. Use the title, description and transcript only to name what is \
actually visible. Answer with the caption only.";

/// Fill `{name}` placeholders.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A version string for a pair of templates: the built-in version, or a hash of custom text.
pub fn version(detailed: &str, brief: &str) -> String {
    if detailed == DETAILED && brief == BRIEF {
        return BUILTIN_VERSION.to_string();
    }
    let h = blake3::hash(format!("{SYSTEM}\u{0}{detailed}\u{0}{brief}").as_bytes()).to_hex();
    format!("custom-{}", &h[..12])
}
