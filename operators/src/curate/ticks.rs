//! Frame digests: what `curate.black_border` and `curate.dedup` measure on a frame, measured once
//! by `curate.segment` on the frames its single decode samples, and carried to them in the clip's
//! metadata (key [`DIGESTS_KEY`]), so that the classical path decodes each video once.
//!
//! `curate.segment` decodes every frame of a video anyway (its similarity and hard-cut signal).
//! At each similarity tick (1 fps by default) it also measures, on that frame at native
//! resolution: the black borders ([`detect`](super::black_border::detect) with the
//! `curate.black_border` defaults, [`BORDER_DEFAULTS`]) and the 64-bit DCT perceptual hash
//! ([`phash`](super::imgproc::phash) of the full-range luma). A clip carries the digests of the
//! ticks inside its span. `curate.black_border` and `curate.dedup` then take their `frames`
//! frames from those ticks — for each of `frames` equal sub-spans, the tick nearest its centre,
//! as uniform sampling picks frames — instead of decoding the span again. A clip without digests
//! (another source, `frame_digests = false`), or a `black_border` whose detection settings differ
//! from the ones the digests were measured with, is decoded as before.
//!
//! The metadata value is text: `d1 bl=40 lo=30 hi=80` then, per tick, `;t:top,bottom,left,right:hash`
//! (`t` in seconds with six decimals, `hash` 16 hex digits or `-` for a flat frame).

#[cfg(feature = "video")]
use crate::video::Frame;
#[cfg(feature = "video")]
use crate::video::orient::{Orientation, orient_into};

/// Clip metadata key of the digests.
pub const DIGESTS_KEY: &str = "frame_digests";
/// Version tag at the start of the value.
const VERSION: &str = "d1";

/// Border-detection settings: black level and Canny thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BorderSettings {
    pub black_level: u8,
    pub canny_low: f32,
    pub canny_high: f32,
}

/// The settings `curate.segment` measures borders with (`curate.black_border`'s defaults).
pub const BORDER_DEFAULTS: BorderSettings = BorderSettings { black_level: 40, canny_low: 30.0, canny_high: 80.0 };

/// What one tick frame measured.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TickDigest {
    /// Presentation time of the frame.
    pub t: f64,
    /// Black border widths: top, bottom, left, right (pixels; 0: none).
    pub borders: [u32; 4],
    /// Perceptual hash (`None`: a flat frame).
    pub phash: Option<u64>,
}

/// Measure one frame (any format; YUV frames are converted once here) as it is shown: a stored
/// frame is turned by `o` first (the container's orientation; upright for frames decoded shown),
/// so that digests agree with what `curate.black_border` and `curate.dedup` measure on decoded
/// frames.
#[cfg(feature = "video")]
pub fn measure(frame: &Frame, s: &BorderSettings, o: Orientation) -> Option<TickDigest> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (mut rgb, mut gray) = (frame.rgb()?, frame.gray()?);
    let (sw, sh) = o.shown_size(frame.width, frame.height);
    if !o.is_upright() {
        let turn = |pixels: &[u8], channels: usize| {
            let mut out = Vec::new();
            orient_into(pixels, w, h, channels, o, None, &mut out);
            std::borrow::Cow::Owned(out)
        };
        (rgb, gray) = (turn(&rgb, 3), turn(&gray, 1));
    }
    let (w, h) = (sw as usize, sh as usize);
    let b = super::black_border::detect(&rgb, w, h, s.black_level, s.canny_low, s.canny_high);
    Some(TickDigest {
        t: frame.pts_s,
        borders: [b.top, b.bottom, b.left, b.right],
        phash: super::imgproc::phash(&gray, w, h, 1),
    })
}

/// The metadata value for `ticks`.
pub fn format(s: &BorderSettings, ticks: &[TickDigest]) -> String {
    let mut out = format!("{VERSION} bl={} lo={} hi={}", s.black_level, s.canny_low, s.canny_high);
    for d in ticks {
        let [t, b, l, r] = d.borders;
        let hash = d.phash.map_or_else(|| "-".to_string(), |h| format!("{h:016x}"));
        out.push_str(&format!(";{:.6}:{t},{b},{l},{r}:{hash}", d.t));
    }
    out
}

/// Parse a metadata value; `None` when it is not one this version writes.
pub fn parse(text: &str) -> Option<(BorderSettings, Vec<TickDigest>)> {
    let mut parts = text.split(';');
    let mut head = parts.next()?.split(' ');
    if head.next()? != VERSION {
        return None;
    }
    let mut field = |name: &str| head.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_string);
    let settings = BorderSettings {
        black_level: field("bl")?.parse().ok()?,
        canny_low: field("lo")?.parse().ok()?,
        canny_high: field("hi")?.parse().ok()?,
    };
    let ticks = parts
        .map(|p| {
            let mut f = p.split(':');
            let t: f64 = f.next()?.parse().ok()?;
            let b: Vec<u32> = f.next()?.split(',').map(|v| v.parse().ok()).collect::<Option<_>>()?;
            let hash = match f.next()? {
                "-" => None,
                h => Some(u64::from_str_radix(h, 16).ok()?),
            };
            (t.is_finite() && b.len() == 4 && f.next().is_none()).then(|| TickDigest {
                t,
                borders: [b[0], b[1], b[2], b[3]],
                phash: hash,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((settings, ticks))
}

/// The ticks standing for `count` frames spread uniformly over `[start, end)`: for each of
/// `count` equal sub-spans, the tick inside the span nearest its centre; a tick is taken once
/// (fewer ticks than `count`: each once). Empty when no tick lies in the span.
pub fn pick(ticks: &[TickDigest], start: f64, end: f64, count: u32) -> Vec<TickDigest> {
    let inside: Vec<&TickDigest> = ticks.iter().filter(|d| d.t >= start - 1e-6 && d.t < end - 1e-6).collect();
    if inside.is_empty() || count == 0 {
        return Vec::new();
    }
    let step = (end - start) / count as f64;
    let mut picked: Vec<usize> = Vec::new();
    for k in 0..count {
        let centre = start + (k as f64 + 0.5) * step;
        let best = (0..inside.len())
            .min_by(|&a, &b| (inside[a].t - centre).abs().total_cmp(&(inside[b].t - centre).abs()))
            .unwrap_or(0);
        if picked.last() != Some(&best) {
            picked.push(best);
        }
    }
    picked.sort_unstable();
    picked.dedup();
    picked.into_iter().map(|i| *inside[i]).collect()
}

/// The `count` digests of a clip's span from its metadata value, when they were measured with
/// `want` border settings (`None` for `want` skips that check: hashes do not depend on it).
/// `None` when the clip carries none usable (then the caller decodes).
pub fn for_span(
    text: Option<&str>,
    start: f64,
    end: f64,
    count: u32,
    want: Option<&BorderSettings>,
) -> Option<Vec<TickDigest>> {
    let (settings, ticks) = parse(text?)?;
    if want.is_some_and(|w| *w != settings) {
        return None;
    }
    let picked = pick(&ticks, start, end, count.max(1));
    (!picked.is_empty()).then_some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(t: f64) -> TickDigest {
        TickDigest { t, borders: [t as u32, 0, 2, 0], phash: if t < 3.0 { Some(0xabc) } else { None } }
    }

    #[test]
    fn digests_roundtrip_and_refuse_other_text() {
        let ticks: Vec<TickDigest> = (0..5).map(|i| tick(i as f64 + 0.04)).collect();
        let text = format(&BORDER_DEFAULTS, &ticks);
        assert!(text.starts_with("d1 bl=40 lo=30 hi=80;0.040000:0,0,2,0:0000000000000abc;"), "{text}");
        assert_eq!(parse(&text), Some((BORDER_DEFAULTS, ticks)));
        assert_eq!(parse(&format(&BORDER_DEFAULTS, &[])), Some((BORDER_DEFAULTS, vec![])));
        for bad in
            ["", "d2 bl=40 lo=30 hi=80", "d1 bl=40 lo=30", "d1 bl=40 lo=30 hi=80;1.0:1,2,3:-", "d1 bl=x lo=30 hi=80"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn picks_the_tick_nearest_each_sub_span_centre_once() {
        let ticks: Vec<TickDigest> = (0..12).map(|i| tick(i as f64)).collect();
        let times = |v: Vec<TickDigest>| v.iter().map(|d| d.t).collect::<Vec<_>>();
        // [2, 8): centres 2.6, 3.8, 5.0, 6.2, 7.4 → ticks 3, 4, 5, 6, 7
        assert_eq!(times(pick(&ticks, 2.0, 8.0, 5)), vec![3.0, 4.0, 5.0, 6.0, 7.0]);
        // [2, 5): 3 centres 2.5, 3.5, 4.5 → 2 (tie goes first), 3, 4
        assert_eq!(times(pick(&ticks, 2.0, 5.0, 3)), vec![2.0, 3.0, 4.0]);
        // more frames than ticks: each tick once; the end is exclusive
        assert_eq!(times(pick(&ticks, 2.0, 4.0, 5)), vec![2.0, 3.0]);
        assert!(pick(&ticks, 20.0, 30.0, 3).is_empty());
        let text = format(&BORDER_DEFAULTS, &ticks);
        let other = BorderSettings { black_level: 30, ..BORDER_DEFAULTS };
        assert!(for_span(Some(&text), 2.0, 8.0, 5, Some(&other)).is_none());
        assert_eq!(for_span(Some(&text), 2.0, 8.0, 5, None).map(|v| v.len()), Some(5));
        assert_eq!(for_span(Some(&text), 2.0, 8.0, 5, Some(&BORDER_DEFAULTS)).map(|v| v.len()), Some(5));
        assert!(for_span(None, 2.0, 8.0, 5, None).is_none());
        assert!(for_span(Some(&text), 40.0, 48.0, 5, None).is_none());
    }
}
