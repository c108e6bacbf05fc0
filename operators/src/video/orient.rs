//! How a stored picture is turned to be shown: the container's orientation (a phone's portrait
//! recording is stored landscape with a "rotate 90°" matrix), and turning decoded frames upright.
//!
//! GStreamer's demuxers report it as the `image-orientation` tag: `rotate-{0,90,180,270}` (turn
//! clockwise by that much to show) and `flip-rotate-{0,90,180,270}` (mirror left–right, then turn).
//! As `videoflip video-direction=auto` shows them (checked on MP4 matrices read by qtdemux):
//! `flip-rotate-0` mirrors left–right, `flip-rotate-180` top–bottom, `flip-rotate-270` transposes
//! (the upper-left / lower-right diagonal stays; the MP4 matrix `[0 1; 1 0]`) and `flip-rotate-90`
//! transposes about the other diagonal.

/// One of the eight ways to show a stored picture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Orientation {
    /// Clockwise quarter turns, 0..=3 (after the mirror when `mirror`).
    pub quarter_turns: u8,
    /// Mirrored left–right before turning.
    pub mirror: bool,
}

impl Orientation {
    /// As stored.
    pub const UPRIGHT: Orientation = Orientation { quarter_turns: 0, mirror: false };

    /// The orientation an `image-orientation` tag value names; `None` for anything else.
    pub fn from_tag(tag: &str) -> Option<Orientation> {
        let (mirror, deg) = match tag.strip_prefix("flip-rotate-") {
            Some(d) => (true, d),
            None => (false, tag.strip_prefix("rotate-")?),
        };
        let quarter_turns = match deg {
            "0" => 0,
            "90" => 1,
            "180" => 2,
            "270" => 3,
            _ => return None,
        };
        Some(Orientation { quarter_turns, mirror })
    }

    /// Clockwise degrees of the turn (0, 90, 180, 270).
    pub fn degrees(&self) -> i32 {
        self.quarter_turns as i32 * 90
    }

    pub fn is_upright(&self) -> bool {
        *self == Orientation::UPRIGHT
    }

    /// Whether the shown picture's width is the stored height.
    pub fn swaps_axes(&self) -> bool {
        self.quarter_turns % 2 == 1
    }

    /// The size shown for a stored `w × h`.
    pub fn shown_size(&self, w: u32, h: u32) -> (u32, u32) {
        if self.swaps_axes() { (h, w) } else { (w, h) }
    }

    /// The stored pixel shown at `(x, y)` of a stored `w × h` picture.
    pub fn stored_at(&self, x: usize, y: usize, w: usize, h: usize) -> (usize, usize) {
        // Undo the turn (in the shown picture's frame), then the mirror.
        let (mx, my) = match self.quarter_turns {
            0 => (x, y),
            // Turned clockwise: the shown column x is the stored row counted from the bottom.
            1 => (y, h - 1 - x),
            2 => (w - 1 - x, h - 1 - y),
            _ => (w - 1 - y, x),
        };
        if self.mirror { (w - 1 - mx, my) } else { (mx, my) }
    }
}

/// `src`, a packed stored `w × h` picture with `channels` bytes per pixel, shown as `o` says and
/// cut to `crop` = (x, y, width, height) of the shown picture (the whole of it when `None`),
/// written into `out` (cleared first).
pub fn orient_into(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    o: Orientation,
    crop: Option<(usize, usize, usize, usize)>,
    out: &mut Vec<u8>,
) {
    let (sw, sh) = o.shown_size(w as u32, h as u32);
    let (cx, cy, cw, ch) = crop.unwrap_or((0, 0, sw as usize, sh as usize));
    out.clear();
    out.resize(cw * ch * channels, 0);
    if cw == 0 {
        return;
    }
    match channels {
        1 => turn_rows::<1>(src, w, h, o, (cx, cy, cw, ch), out),
        3 => turn_rows::<3>(src, w, h, o, (cx, cy, cw, ch), out),
        _ => {
            for (row, y) in (cy..cy + ch).enumerate() {
                for (i, x) in (cx..cx + cw).enumerate() {
                    let (px, py) = o.stored_at(x, y, w, h);
                    let at = (py * w + px) * channels;
                    let to = (row * cw + i) * channels;
                    out[to..to + channels].copy_from_slice(&src[at..at + channels]);
                }
            }
        }
    }
}

/// [`orient_into`] for `C` bytes a pixel: along a shown row the stored position moves by a fixed
/// step, so each row is one strided copy.
fn turn_rows<const C: usize>(
    src: &[u8],
    w: usize,
    h: usize,
    o: Orientation,
    (cx, cy, cw, ch): (usize, usize, usize, usize),
    out: &mut [u8],
) {
    let at = |x: usize, y: usize| {
        let (px, py) = o.stored_at(x, y, w, h);
        (py * w + px) * C
    };
    for (row, y) in (cy..cy + ch).enumerate() {
        let first = at(cx, y);
        let step = if cw > 1 { at(cx + 1, y) as isize - first as isize } else { 0 };
        let dst = &mut out[row * cw * C..(row + 1) * cw * C];
        let mut pos = first as isize;
        for px in dst.chunks_exact_mut(C) {
            let p = pos as usize;
            px.copy_from_slice(&src[p..p + C]);
            pos += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3 × 2 picture whose pixel values are their stored positions.
    fn picture() -> Vec<u8> {
        vec![0, 1, 2, 10, 11, 12]
    }

    fn shown(tag: &str, crop: Option<(usize, usize, usize, usize)>) -> Vec<u8> {
        let o = Orientation::from_tag(tag).unwrap();
        let mut out = Vec::new();
        orient_into(&picture(), 3, 2, 1, o, crop, &mut out);
        out
    }

    #[test]
    fn every_tag_shows_the_picture_as_gstreamer_does() {
        // Stored:   0  1  2
        //          10 11 12
        assert_eq!(shown("rotate-0", None), vec![0, 1, 2, 10, 11, 12]);
        // Turned clockwise: the bottom-left corner goes to the top-left.
        assert_eq!(shown("rotate-90", None), vec![10, 0, 11, 1, 12, 2]);
        assert_eq!(shown("rotate-180", None), vec![12, 11, 10, 2, 1, 0]);
        assert_eq!(shown("rotate-270", None), vec![2, 12, 1, 11, 0, 10]);
        assert_eq!(shown("flip-rotate-0", None), vec![2, 1, 0, 12, 11, 10]);
        // Mirrored, then turned clockwise: the other diagonal stays.
        assert_eq!(shown("flip-rotate-90", None), vec![12, 2, 11, 1, 10, 0]);
        assert_eq!(shown("flip-rotate-180", None), vec![10, 11, 12, 0, 1, 2]);
        // Transposed: the upper-left / lower-right diagonal stays.
        assert_eq!(shown("flip-rotate-270", None), vec![0, 10, 1, 11, 2, 12]);
    }

    #[test]
    fn crops_are_taken_from_the_shown_picture() {
        // rotate-90 shows 2 × 3: [10 0 / 11 1 / 12 2]; its lower two rows, right column:
        assert_eq!(shown("rotate-90", Some((1, 1, 1, 2))), vec![1, 2]);
    }

    #[test]
    fn unknown_tags_are_not_orientations() {
        assert_eq!(Orientation::from_tag("rotate-45"), None);
        assert_eq!(Orientation::from_tag("sideways"), None);
        assert_eq!(Orientation::from_tag("rotate-90").unwrap().degrees(), 90);
        assert!(Orientation::from_tag("flip-rotate-90").unwrap().swaps_axes());
    }

    /// The strided rows agree with the pixel-by-pixel definition for every orientation, odd sizes,
    /// crops and channel counts.
    #[test]
    fn strided_rows_match_the_definition() {
        let tags = ["rotate-0", "rotate-90", "rotate-180", "rotate-270"];
        let flips = ["flip-rotate-0", "flip-rotate-90", "flip-rotate-180", "flip-rotate-270"];
        for (w, h) in [(1, 1), (5, 3), (4, 7), (16, 9)] {
            for channels in [1, 2, 3, 4] {
                let src: Vec<u8> = (0..w * h * channels).map(|v| (v * 7 % 251) as u8).collect();
                for tag in tags.iter().chain(&flips) {
                    let o = Orientation::from_tag(tag).unwrap();
                    let (sw, sh) = o.shown_size(w as u32, h as u32);
                    let (sw, sh) = (sw as usize, sh as usize);
                    for crop in [None, Some((sw / 3, sh / 2, sw - sw / 3, sh - sh / 2)), Some((0, 0, 1, sh))] {
                        let mut got = Vec::new();
                        orient_into(&src, w, h, channels, o, crop, &mut got);
                        let (cx, cy, cw, ch) = crop.unwrap_or((0, 0, sw, sh));
                        let mut want = Vec::new();
                        for y in cy..cy + ch {
                            for x in cx..cx + cw {
                                let (px, py) = o.stored_at(x, y, w, h);
                                want.extend_from_slice(&src[(py * w + px) * channels..][..channels]);
                            }
                        }
                        assert_eq!(got, want, "{w}×{h}×{channels} {tag} {crop:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn multi_channel_pixels_move_whole() {
        let src: Vec<u8> = (0..6).collect(); // 2 × 1 RGB
        let mut out = Vec::new();
        orient_into(&src, 2, 1, 3, Orientation::from_tag("rotate-90").unwrap(), None, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
        orient_into(&src, 2, 1, 3, Orientation::from_tag("rotate-180").unwrap(), None, &mut out);
        assert_eq!(out, vec![3, 4, 5, 0, 1, 2]);
    }
}
