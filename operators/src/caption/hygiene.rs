//! Response hygiene for model-written captions: strip reasoning and markup, reject empty answers,
//! refusals and the wrong language, and enforce word limits. A rejected answer is retried by the
//! caller and, when the retries are spent, recorded as a failure with the raw answer kept.

/// Why an answer was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Empty,
    Refusal(String),
    TooShort { words: usize, min: usize },
    WrongLanguage { expected: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Empty => write!(f, "empty answer (nothing left after removing reasoning and markup)"),
            Rejection::Refusal(s) => write!(f, "the model refused: \"{s}\""),
            Rejection::TooShort { words, min } => write!(f, "answer has {words} words, fewer than the minimum {min}"),
            Rejection::WrongLanguage { expected } => write!(f, "answer is not in the expected language `{expected}`"),
        }
    }
}

/// What a clean caption must satisfy.
#[derive(Clone, Debug)]
pub struct Rules {
    pub min_words: usize,
    pub max_words: usize,
    /// ISO 639-1 code; only `en` is checked (other values disable the check).
    pub language: String,
}

/// Remove `<think>…</think>`-style reasoning blocks; an unterminated block runs to the end.
fn strip_reasoning(s: &str) -> String {
    let mut out = s.to_string();
    for tag in ["think", "thinking", "reasoning", "reflection"] {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        while let Some(start) = out.to_ascii_lowercase().find(&open) {
            let lower = out.to_ascii_lowercase();
            match lower[start..].find(&close) {
                Some(end) => out.replace_range(start..start + end + close.len(), " "),
                None => out.truncate(start),
            }
        }
        // A dangling close tag: everything before it was reasoning.
        if let Some(end) = out.to_ascii_lowercase().find(&close) {
            out = out[end + close.len()..].to_string();
        }
    }
    out
}

/// Flatten markdown into one paragraph of plain text.
fn strip_markup(s: &str) -> String {
    let mut lines = Vec::new();
    for line in s.lines() {
        let t = line.trim();
        if t.starts_with("```") || t.chars().all(|c| matches!(c, '-' | '*' | '_' | '=' | '#')) {
            continue;
        }
        if t.starts_with('#') {
            // A heading ("## Caption") is not part of the caption.
            continue;
        }
        let t = t.strip_prefix("- ").or_else(|| t.strip_prefix("* ")).or_else(|| t.strip_prefix("• ")).unwrap_or(t);
        // "1. " / "2) " list markers
        let t = match t.find(['.', ')']) {
            Some(i) if i > 0 && i <= 3 && t[..i].chars().all(|c| c.is_ascii_digit()) && t[i + 1..].starts_with(' ') => {
                &t[i + 2..]
            }
            _ => t,
        };
        lines.push(t.to_string());
    }
    let joined = lines.join(" ");
    let cleaned: String = joined.replace("**", "").replace("__", "").replace('`', "");
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Drop chatty preambles such as "Sure! Here is a detailed caption:".
fn strip_preamble(s: &str) -> &str {
    let lower = s.to_ascii_lowercase();
    for prefix in ["caption:", "detailed caption:", "brief caption:", "short caption:"] {
        if lower.starts_with(prefix) {
            return s[prefix.len()..].trim_start();
        }
    }
    if (lower.starts_with("sure")
        || lower.starts_with("certainly")
        || lower.starts_with("here is")
        || lower.starts_with("here's"))
        && let Some(i) = s.find(':')
        && i < 120
    {
        return s[i + 1..].trim_start();
    }
    s
}

const REFUSALS: &[&str] = &[
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i won't",
    "as an ai",
    "i'm not able",
    "i am not able",
    "unable to assist",
    "cannot assist",
    "can't assist",
];

fn first_sentence(s: &str) -> &str {
    let end = s.find(['.', '!', '?']).map(|i| i + 1).unwrap_or(s.len());
    &s[..end.min(s.len())]
}

const EN_STOPWORDS: &[&str] = &[
    "the", "a", "an", "and", "of", "in", "on", "is", "are", "with", "to", "for", "as", "by", "at", "this", "that",
    "from", "its", "which",
];

fn looks_english(s: &str) -> bool {
    let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.is_empty() {
        return false;
    }
    let latin = letters.iter().filter(|c| c.is_ascii_alphabetic()).count() as f64 / letters.len() as f64;
    let words: Vec<String> =
        s.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphabetic()).to_lowercase()).collect();
    let stop = words.iter().filter(|w| EN_STOPWORDS.contains(&w.as_str())).count() as f64 / words.len().max(1) as f64;
    latin >= 0.9 && (words.len() < 8 || stop >= 0.05)
}

/// Truncate to at most `max` words, ending at the last full sentence if there is one.
fn limit_words(s: &str, max: usize) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() <= max {
        return s.to_string();
    }
    let cut = words[..max].join(" ");
    match cut.rfind(['.', '!', '?']) {
        Some(i) if i > cut.len() / 2 => cut[..=i].to_string(),
        _ => cut,
    }
}

/// Clean a raw model answer into a caption, or say why it is unusable.
pub fn clean(raw: &str, rules: &Rules) -> Result<String, Rejection> {
    let text = strip_reasoning(raw);
    let text = strip_markup(&text);
    let text = strip_preamble(&text).trim().trim_matches('"').trim().to_string();
    if text.is_empty() {
        return Err(Rejection::Empty);
    }
    let head = first_sentence(&text).to_ascii_lowercase();
    if REFUSALS.iter().any(|r| head.contains(r)) {
        return Err(Rejection::Refusal(first_sentence(&text).to_string()));
    }
    if rules.language == "en" && !looks_english(&text) {
        return Err(Rejection::WrongLanguage { expected: rules.language.clone() });
    }
    let words = text.split_whitespace().count();
    if words < rules.min_words {
        return Err(Rejection::TooShort { words, min: rules.min_words });
    }
    Ok(limit_words(&text, rules.max_words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules { min_words: 5, max_words: 30, language: "en".into() }
    }

    #[test]
    fn strips_reasoning_markup_and_preambles() {
        let raw = "<think>The user wants a caption. Let me look.</think>\n**Sure! Here is a detailed caption:**\n\n\
                   ## Caption\n- The short video shows a surgeon performing a laparoscopic cholecystectomy.\n";
        assert_eq!(
            clean(raw, &rules()).unwrap(),
            "The short video shows a surgeon performing a laparoscopic cholecystectomy."
        );
        assert_eq!(clean("<think>never closed ... ", &rules()), Err(Rejection::Empty));
        assert_eq!(clean("   \n ```\n```", &rules()), Err(Rejection::Empty));
    }

    #[test]
    fn rejects_refusals_short_and_foreign_answers() {
        assert!(matches!(
            clean("I'm sorry, but I can't help with that request.", &rules()),
            Err(Rejection::Refusal(_))
        ));
        assert!(matches!(clean("A knee.", &rules()), Err(Rejection::TooShort { words: 2, min: 5 })));
        let zh = "这个短视频展示了一位外科医生正在进行腹腔镜胆囊切除手术，画面清晰。";
        assert!(matches!(clean(zh, &rules()), Err(Rejection::WrongLanguage { .. })));
        let de = "Das kurze Video zeigt einen Chirurgen bei einer laparoskopischen Operation im Krankenhaus mit Kamera";
        assert!(matches!(clean(de, &rules()), Err(Rejection::WrongLanguage { .. })));
    }

    #[test]
    fn limits_words_at_a_sentence_end() {
        let long = "The short video shows an ultrasound of the heart. ".repeat(10);
        let out = clean(&long, &rules()).unwrap();
        assert!(out.split_whitespace().count() <= 30);
        assert!(out.ends_with('.'));
    }
}
