//! Reading a clip's frames inside a pool job (feature `video`).

use crate::api::{Clip, ItemCtx, ItemError};
use crate::video::decode::{Decoder, StreamInfo};
use crate::video::{DecodeSpec, Frame, PixelFormat, Sampling, Size, TimeRange, local_path};
use std::sync::atomic::Ordering;

/// Open a decoder over `uri` for `range`, honouring the item's deadline.
pub fn open(
    uri: &str,
    range: TimeRange,
    sampling: Sampling,
    size: Size,
    format: PixelFormat,
    ctx: &ItemCtx,
) -> Result<Decoder, ItemError> {
    let path = local_path(uri)?;
    let spec = DecodeSpec::all()
        .with_sampling(sampling)
        .with_size(size)
        .with_range(range)
        .with_format(format)
        .with_deadline(ctx.deadline);
    Ok(Decoder::open(&path, &spec)?)
}

/// Decode the frames `sampling` picks from a clip's span, stopping early when the run stops.
pub fn clip_frames(
    clip: &Clip,
    sampling: Sampling,
    size: Size,
    format: PixelFormat,
    ctx: &ItemCtx,
) -> Result<(StreamInfo, Vec<Frame>), ItemError> {
    if !(clip.start_s.0.is_finite()
        && clip.end_s.0.is_finite()
        && clip.end_s.0 > clip.start_s.0
        && clip.start_s.0 >= 0.0)
    {
        return Err(ItemError::invalid(format!(
            "clip span [{}, {}) is empty or invalid",
            clip.start_s.0, clip.end_s.0
        )));
    }
    let dec = open(&clip.uri, TimeRange::new(clip.start_s.0, clip.end_s.0), sampling, size, format, ctx)?;
    let info = dec.info().clone();
    let mut frames = Vec::new();
    for f in dec {
        frames.push(f?);
        check_stop(ctx)?;
    }
    if frames.is_empty() {
        return Err(ItemError::invalid(format!(
            "no frames decoded from {} in [{:.3}s, {:.3}s); the span may lie beyond the video's end",
            clip.uri, clip.start_s.0, clip.end_s.0
        )));
    }
    Ok((info, frames))
}

/// A transient error when the run is stopping (the item is redone next run).
pub fn check_stop(ctx: &ItemCtx) -> Result<(), ItemError> {
    if ctx.shutdown.load(Ordering::Relaxed) {
        return Err(ItemError::transient("the run is stopping"));
    }
    Ok(())
}
