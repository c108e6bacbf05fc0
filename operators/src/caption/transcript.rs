//! Transcripts for captioning: SubRip (`.srt`) and WebVTT (`.vtt`) cues, cut to a clip's span.

use std::collections::BTreeMap;

/// One timed cue.
#[derive(Clone, Debug, PartialEq)]
pub struct Cue {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

/// `HH:MM:SS,mmm`, `HH:MM:SS.mmm` or `MM:SS.mmm` → seconds.
fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim().replace(',', ".");
    let parts: Vec<&str> = s.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [h, m, sec] => (h.parse::<f64>().ok()?, m.parse::<f64>().ok()?, sec.parse::<f64>().ok()?),
        [m, sec] => (0.0, m.parse::<f64>().ok()?, sec.parse::<f64>().ok()?),
        _ => return None,
    };
    let t = h * 3600.0 + m * 60.0 + sec;
    t.is_finite().then_some(t)
}

/// Parse SRT or VTT text (the format is recognised from the cue lines). Malformed cues are skipped.
pub fn parse(text: &str) -> Vec<Cue> {
    let mut cues = Vec::new();
    let text = text.trim_start_matches('\u{feff}').replace("\r\n", "\n");
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(timing) = lines.by_ref().find(|l| l.contains("-->")) else { continue };
        let Some((a, b)) = timing.split_once("-->") else { continue };
        // VTT cue settings follow the end time after a space.
        let b = b.split_whitespace().next().unwrap_or("");
        let (Some(start_s), Some(end_s)) = (parse_time(a), parse_time(b)) else { continue };
        let text: Vec<String> = lines.map(strip_tags).filter(|l| !l.is_empty()).collect();
        if !text.is_empty() && end_s >= start_s {
            cues.push(Cue { start_s, end_s, text: text.join(" ") });
        }
    }
    cues
}

fn strip_tags(line: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in line.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// A clip's `[start, end)` (stream timeline) on the clock of its transcript, which counts from
/// where an MPEG program or transport stream's pictures start
/// ([`STREAM_START`](crate::video::STREAM_START) in the clip's metadata; 0 elsewhere).
pub fn on_transcript_clock(meta: &BTreeMap<String, String>, start: f64, end: f64) -> (f64, f64) {
    let origin = meta
        .get(crate::video::STREAM_START)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0);
    (start - origin, end - origin)
}

/// The text spoken during [start, end): every cue overlapping the span, in order.
pub fn cut(cues: &[Cue], start_s: f64, end_s: f64) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in cues {
        if c.end_s > start_s && c.start_s < end_s && parts.last() != Some(&c.text.as_str()) {
            parts.push(&c.text);
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_and_vtt_cut_to_a_span() {
        let srt = "1\n00:00:01,000 --> 00:00:03,500\nPlace the <i>trocar</i>.\n\n2\n00:00:04,000 --> 00:00:06,000\nInsufflate the abdomen.\n\n3\n00:00:09,000 --> 00:00:12,000\nNow dissect.\n";
        let cues = parse(srt);
        assert_eq!(cues.len(), 3);
        assert_eq!(cues[0].text, "Place the trocar.");
        assert_eq!(cut(&cues, 3.0, 8.0), "Place the trocar. Insufflate the abdomen.");
        assert_eq!(cut(&cues, 6.0, 9.0), "");
        // a clip of a transport stream whose first frame is at 1.4 s: [4.4, 7.4) on its timeline
        // is [3, 6) on the transcript's
        let meta: BTreeMap<String, String> = [(crate::video::STREAM_START.to_string(), "1.4".to_string())].into();
        let (a, b) = on_transcript_clock(&meta, 4.4, 7.4);
        assert_eq!(cut(&cues, a, b), "Place the trocar. Insufflate the abdomen.");
        assert_eq!(on_transcript_clock(&BTreeMap::new(), 4.4, 7.4), (4.4, 7.4));
        let vtt = "WEBVTT\n\n00:01.000 --> 00:02.000 align:start\nHello\n\nbroken --> line\nx\n";
        let cues = parse(vtt);
        assert_eq!(cues, vec![Cue { start_s: 1.0, end_s: 2.0, text: "Hello".into() }]);
    }
}
