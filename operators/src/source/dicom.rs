//! `source.dicom`: multi-frame DICOM cine files (ultrasound, endoscopy) as `Video` records, and
//! [`DicomCine`], the pure-Rust frame reader behind them (dicom-rs; no GStreamer needed).
//!
//! * Frame rate from Frame Time (0018,1063), else Cine Rate (0018,0040), else Recommended Display
//!   Frame Rate (0008,2144), else the mean of the Frame Time Vector (0018,1065).
//! * Transfer syntaxes: everything dicom-rs decodes natively — uncompressed (implicit/explicit
//!   VR, little/big endian, deflated), RLE Lossless, JPEG baseline/extended/lossless.
//! * Photometric interpretations: RGB, YBR_FULL(_422), PALETTE COLOR (the palette is applied),
//!   MONOCHROME1/2 (8 bits as stored; wider samples through the first VOI window).
//! * Privacy: only an allow-list of header fields is copied into records ([`SAFE_FIELDS`]):
//!   modality, manufacturer and model, study/series description, body part, transfer syntax.
//!   Names, ids, dates, institutions, physicians and UIDs are never read into outputs. Pixels are
//!   not altered: burned-in text stays (`curate.deidentify` handles it).
//!
//! The whole file is read into memory when its frames are decoded (DICOM cine files are small);
//! the header alone is read to probe it.

use super::files::FolderScan;
use crate::api::*;
use crate::video::{
    DecodeSpec, DecodeStats, Frame, Geometry, PixelFormat, Selector, StreamInfo, VideoError, check_input_file, image,
};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::{ConvertOptions, PhotometricInterpretation, PixelDecoder, PlanarConfiguration, VoiLutOption};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Header fields copied into a Video's metadata: (metadata key, tag). Nothing else is.
pub const SAFE_FIELDS: &[(&str, Tag)] = &[
    ("modality", tags::MODALITY),
    ("manufacturer", tags::MANUFACTURER),
    ("manufacturer_model", tags::MANUFACTURER_MODEL_NAME),
    ("study_description", tags::STUDY_DESCRIPTION),
    ("series_description", tags::SERIES_DESCRIPTION),
    ("body_part", tags::BODY_PART_EXAMINED),
    ("photometric", tags::PHOTOMETRIC_INTERPRETATION),
];

/// Header fields that identify a patient, a visit or an institution (DICOM PS3.15 basic profile,
/// the common ones). None of them is ever copied into a record; [`identifying_values`] reads them
/// so that tests and audits can check that.
pub const IDENTIFYING_FIELDS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_ADDRESS,
    // Other Patient IDs (retired, still found in files)
    Tag(0x0010, 0x1000),
    tags::INSTITUTION_NAME,
    tags::INSTITUTION_ADDRESS,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::OPERATORS_NAME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DATE,
    tags::SERIES_DATE,
    tags::ACQUISITION_DATE,
    tags::CONTENT_DATE,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::STATION_NAME,
    tags::DEVICE_SERIAL_NUMBER,
];

/// The non-empty values (longer than 2 characters) of a file's [`IDENTIFYING_FIELDS`].
pub fn identifying_values(path: &Path) -> Result<Vec<String>, VideoError> {
    let obj = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path).map_err(|e| dicom_err(path, e))?;
    Ok(IDENTIFYING_FIELDS.iter().filter_map(|t| text(&obj, *t)).filter(|v| v.len() > 2).collect())
}

/// A readable name for a DICOM modality code.
pub fn modality_name(code: &str) -> &'static str {
    match code {
        "US" => "ultrasound",
        "ES" => "endoscopy",
        "XA" => "X-ray angiography",
        "RF" => "radio fluoroscopy",
        "CT" => "computed tomography",
        "MR" => "magnetic resonance",
        "OP" => "ophthalmic photography",
        "IVUS" => "intravascular ultrasound",
        "GM" => "general microscopy",
        "SM" => "slide microscopy",
        "XC" => "external-camera photography",
        "OT" => "other",
        _ => "medical imaging",
    }
}

fn text(obj: &dicom_object::InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string();
    (!s.is_empty()).then_some(s)
}

fn number(obj: &dicom_object::InMemDicomObject, tag: Tag) -> Option<f64> {
    let e = obj.get(tag)?;
    e.to_float64().ok().or_else(|| e.to_str().ok().and_then(|s| s.trim().trim_matches('\0').parse::<f64>().ok()))
}

fn int(obj: &dicom_object::InMemDicomObject, tag: Tag) -> Option<i64> {
    let e = obj.get(tag)?;
    e.to_int::<i64>().ok().or_else(|| number(obj, tag).map(|v| v.round() as i64))
}

/// What a DICOM header says about its cine.
#[derive(Clone, Debug, PartialEq)]
pub struct DicomInfo {
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    /// Frames per second, when the header gives timing.
    pub fps: Option<f64>,
    /// The Frame Time Vector varies (variable frame rate).
    pub variable_fps: bool,
    pub transfer_syntax_uid: String,
    pub transfer_syntax: String,
    /// Whether dicom-rs can decode the pixel data.
    pub decodable: bool,
    pub photometric: String,
    /// The allow-listed header fields ([`SAFE_FIELDS`]) that are present.
    pub fields: BTreeMap<String, String>,
    pub has_pixel_data: bool,
}

fn dicom_err(path: &Path, e: impl std::fmt::Display) -> VideoError {
    VideoError::not_video(path, format!("not a readable DICOM file ({e})"))
}

/// Read the header (everything before the pixel data) of a DICOM file.
pub fn read_info(path: &Path) -> Result<DicomInfo, VideoError> {
    check_input_file(path)?;
    let obj = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path).map_err(|e| dicom_err(path, e))?;
    let mut info = info_from(&obj, path)?;
    // read_until stops before the pixel data: an image header (rows, columns) implies it; opening
    // the cine for decoding checks it for real.
    info.has_pixel_data = true;
    Ok(info)
}

fn info_from(obj: &DefaultDicomObject, path: &Path) -> Result<DicomInfo, VideoError> {
    let rows = int(obj, tags::ROWS).unwrap_or(0).max(0) as u32;
    let columns = int(obj, tags::COLUMNS).unwrap_or(0).max(0) as u32;
    let frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as u32;
    let vector: Vec<f64> = obj.get(tags::FRAME_TIME_VECTOR).and_then(|e| e.to_multi_float64().ok()).unwrap_or_default();
    let from_vector = {
        let v: Vec<f64> = vector.iter().copied().skip(1).filter(|t| *t > 0.0).collect();
        (!v.is_empty()).then(|| 1000.0 * v.len() as f64 / v.iter().sum::<f64>())
    };
    let variable_fps = {
        let v: Vec<f64> = vector.iter().copied().skip(1).filter(|t| *t > 0.0).collect();
        match (v.iter().copied().reduce(f64::min), v.iter().copied().reduce(f64::max)) {
            (Some(lo), Some(hi)) => hi / lo > 1.05,
            _ => false,
        }
    };
    let fps = number(obj, tags::FRAME_TIME)
        .filter(|t| *t > 0.0)
        .map(|ms| 1000.0 / ms)
        .or_else(|| number(obj, tags::CINE_RATE).filter(|r| *r > 0.0))
        .or_else(|| number(obj, tags::RECOMMENDED_DISPLAY_FRAME_RATE).filter(|r| *r > 0.0))
        .or(from_vector)
        .filter(|f| f.is_finite() && *f > 0.0 && *f < 10_000.0);
    let uid = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let ts = TransferSyntaxRegistry.get(&uid);
    let transfer_syntax = ts.map(|t| t.name().to_string()).unwrap_or_else(|| format!("unknown transfer syntax {uid}"));
    let decodable = ts.is_some_and(|t| t.can_decode_all());
    let mut fields = BTreeMap::new();
    for (key, tag) in SAFE_FIELDS {
        if let Some(v) = text(obj, *tag) {
            fields.insert(key.to_string(), v);
        }
    }
    if rows == 0 || columns == 0 {
        return Err(VideoError::not_video(
            path,
            "a DICOM file without an image (no Rows/Columns): a report or structured document",
        ));
    }
    Ok(DicomInfo {
        rows,
        columns,
        frames,
        fps,
        variable_fps,
        transfer_syntax_uid: uid,
        photometric: fields.get("photometric").cloned().unwrap_or_default(),
        transfer_syntax,
        decodable,
        fields,
        has_pixel_data: obj.get(tags::PIXEL_DATA).is_some(),
    })
}

fn fraction(fps: f64) -> (u32, u32) {
    if (fps - fps.round()).abs() < 0.01 {
        (fps.round() as u32, 1)
    } else {
        let n = (fps * 1000.0).round() as u32;
        let g = gcd(n, 1000);
        (n / g, 1000 / g)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// Probe a DICOM cine from its header.
pub fn probe(path: &Path) -> Result<ProbeInfo, VideoError> {
    let size = check_input_file(path)?;
    let info = read_info(path)?;
    let duration = info.fps.map(|f| info.frames as f64 / f);
    let g = gcd(info.columns, info.rows);
    Ok(ProbeInfo {
        container: Some("DICOM".into()),
        video_codec: Some(info.transfer_syntax.clone()),
        audio_codec: None,
        width: Some(info.columns),
        height: Some(info.rows),
        display_aspect: Some((info.columns / g, info.rows / g)),
        fps: info.fps.map(fraction),
        variable_fps: info.variable_fps,
        duration_s: duration.map(F64),
        start_s: None,
        bitrate: duration.filter(|d| *d > 0.0).map(|d| (size as f64 * 8.0 / d) as u64),
        frame_count: Some(info.frames as u64),
        frame_count_exact: true,
        rotation_deg: None,
        has_audio: false,
    })
}

/// Metadata for a DICOM Video record: the allow-listed fields plus a title and a description
/// built from them (for metadata filters and captions).
pub fn metadata(info: &DicomInfo) -> BTreeMap<String, String> {
    let mut m = info.fields.clone();
    m.remove("photometric");
    let modality = info.fields.get("modality").map(String::as_str).unwrap_or("OT");
    let kind = modality_name(modality);
    m.insert("modality_name".into(), kind.into());
    m.insert("source_format".into(), "dicom".into());
    m.insert("transfer_syntax".into(), info.transfer_syntax.clone());
    let title = info
        .fields
        .get("study_description")
        .or_else(|| info.fields.get("series_description"))
        .cloned()
        .unwrap_or_else(|| format!("{kind} cine"));
    m.insert("title".into(), title);
    let mut d = format!("DICOM {kind} cine ({modality}), {} frames", info.frames);
    if let Some(f) = info.fps {
        d.push_str(&format!(" at {f:.2} fps"));
    }
    for (key, label) in [
        ("manufacturer", "manufacturer"),
        ("study_description", "study"),
        ("series_description", "series"),
        ("body_part", "body part"),
    ] {
        if let Some(v) = info.fields.get(key) {
            d.push_str(&format!(", {label}: {v}"));
        }
    }
    m.insert("description".into(), d);
    m
}

/// A DICOM cine opened for decoding.
pub struct DicomCine {
    path: PathBuf,
    obj: DefaultDicomObject,
    info: DicomInfo,
    palette: Option<[Vec<u8>; 3]>,
}

impl DicomCine {
    /// Open and check a DICOM file for frame decoding.
    pub fn open(path: &Path) -> Result<DicomCine, VideoError> {
        check_input_file(path)?;
        let obj = dicom_object::open_file(path).map_err(|e| dicom_err(path, e))?;
        let info = info_from(&obj, path)?;
        if !info.has_pixel_data {
            return Err(VideoError::not_video(path, "a DICOM file without pixel data"));
        }
        if !info.decodable {
            return Err(VideoError::unsupported(
                path,
                format!(
                    "pixel data in {} ({}), which this build cannot decode; transcode it to JPEG baseline, RLE or uncompressed",
                    info.transfer_syntax, info.transfer_syntax_uid
                ),
            ));
        }
        let palette = if info.photometric == "PALETTE COLOR" { Some(read_palette(&obj, path)?) } else { None };
        Ok(DicomCine { path: path.to_path_buf(), obj, info, palette })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn info(&self) -> &DicomInfo {
        &self.info
    }
    pub fn rows(&self) -> u32 {
        self.info.rows
    }
    pub fn columns(&self) -> u32 {
        self.info.columns
    }
    pub fn frames(&self) -> u32 {
        self.info.frames
    }
    pub fn fps(&self) -> Option<f64> {
        self.info.fps
    }
    pub fn transfer_syntax_name(&self) -> String {
        self.info.transfer_syntax.clone()
    }

    /// Frame `i` as packed RGB8, `columns × rows`.
    pub fn frame_rgb(&self, i: u32) -> Result<Vec<u8>, VideoError> {
        let path = &self.path;
        let bad = |e: &dyn std::fmt::Display| VideoError::corrupt(path, format!("frame {i} cannot be decoded: {e}"));
        let d = self.obj.decode_pixel_data_frame(i).map_err(|e| bad(&e))?;
        let (w, h) = (d.columns() as usize, d.rows() as usize);
        let n = w * h;
        let spp = d.samples_per_pixel();
        let bits = d.bits_allocated();
        let pi = d.photometric_interpretation().clone();
        let raw = d.data();
        let px = match (spp, bits) {
            (3, 8) => {
                if raw.len() < n * 3 {
                    return Err(bad(&"short pixel data"));
                }
                let mut px = if d.planar_configuration() == PlanarConfiguration::PixelFirst {
                    (0..n).flat_map(|p| [raw[p], raw[n + p], raw[2 * n + p]]).collect()
                } else {
                    raw[..n * 3].to_vec()
                };
                match pi {
                    PhotometricInterpretation::Rgb => {}
                    PhotometricInterpretation::YbrFull | PhotometricInterpretation::YbrFull422 => {
                        image::ybr_full_to_rgb(&mut px)
                    }
                    other => {
                        return Err(VideoError::unsupported(
                            path,
                            format!("3-sample photometric interpretation {other}"),
                        ));
                    }
                }
                px
            }
            (1, 8 | 16) if self.palette.is_some() => {
                let Some([r, g, b]) = &self.palette else { return Err(bad(&"no palette")) };
                let index = |p: usize| -> usize {
                    if bits == 8 {
                        raw.get(p).copied().unwrap_or(0) as usize
                    } else {
                        u16::from_le_bytes([
                            raw.get(2 * p).copied().unwrap_or(0),
                            raw.get(2 * p + 1).copied().unwrap_or(0),
                        ]) as usize
                    }
                };
                let first = self.palette_first();
                let last = r.len().saturating_sub(1);
                let mut px = Vec::with_capacity(n * 3);
                for p in 0..n {
                    let k = index(p).saturating_sub(first).min(last);
                    px.extend_from_slice(&[r[k], g[k], b[k]]);
                }
                px
            }
            (1, 8) if pi.is_monochrome() => {
                let mut gray = raw.get(..n).ok_or_else(|| bad(&"short pixel data"))?.to_vec();
                if pi == PhotometricInterpretation::Monochrome1 {
                    gray.iter_mut().for_each(|v| *v = 255 - *v);
                }
                image::gray_to_rgb(&gray)
            }
            (1, 16) if pi.is_monochrome() => {
                let opts = ConvertOptions::new().with_voi_lut(VoiLutOption::First);
                let mut gray: Vec<u8> = d.to_vec_frame_with_options(0, &opts).map_err(|e| bad(&e))?;
                if pi == PhotometricInterpretation::Monochrome1 {
                    gray.iter_mut().for_each(|v| *v = 255 - *v);
                }
                image::gray_to_rgb(&gray)
            }
            _ => {
                return Err(VideoError::unsupported(path, format!("{spp} samples of {bits} bits per pixel ({pi})")));
            }
        };
        if px.len() != n * 3 {
            return Err(bad(&"unexpected pixel data size"));
        }
        Ok(px)
    }

    fn palette_first(&self) -> usize {
        self.obj
            .get(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR)
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .and_then(|v| v.get(1).copied())
            .unwrap_or(0)
            .max(0) as usize
    }
}

/// The three palette lookup tables, as 8-bit values.
fn read_palette(obj: &DefaultDicomObject, path: &Path) -> Result<[Vec<u8>; 3], VideoError> {
    let one = |desc: Tag, data: Tag| -> Result<Vec<u8>, VideoError> {
        let d: Vec<i64> = obj
            .get(desc)
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .ok_or_else(|| VideoError::corrupt(path, "PALETTE COLOR without a lookup table descriptor"))?;
        let entries = match d.first().copied().unwrap_or(0) {
            0 => 65536,
            n => (n as u16) as usize,
        };
        let bits = d.get(2).copied().unwrap_or(8);
        let bytes = obj
            .get(data)
            .and_then(|e| e.to_bytes().ok())
            .ok_or_else(|| VideoError::corrupt(path, "PALETTE COLOR without lookup table data"))?;
        let lut: Vec<u8> = if bits > 8 {
            bytes.chunks_exact(2).map(|c| (u16::from_le_bytes([c[0], c[1]]) >> 8) as u8).collect()
        } else if bytes.len() >= entries * 2 {
            // 8-bit entries stored in 16-bit words
            bytes.chunks_exact(2).map(|c| c[0]).collect()
        } else {
            bytes.to_vec()
        };
        if lut.is_empty() {
            return Err(VideoError::corrupt(path, "an empty palette lookup table"));
        }
        Ok(lut)
    };
    Ok([
        one(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
        one(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
        one(tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
    ])
}

/// DICOM cine frames at a requested sampling, size and format ([`DecodeSpec`]), decoded in pure
/// Rust: what [`Decoder`](crate::video) yields for DICOM files, available without GStreamer.
pub struct DicomFrames {
    cine: DicomCine,
    selector: Selector,
    geometry: Geometry,
    format: PixelFormat,
    info: StreamInfo,
    next: u32,
    frame_dur: f64,
    deadline: Option<Instant>,
    started: Instant,
    stats: DecodeStats,
}

impl DicomFrames {
    /// Open a DICOM cine for decoding as `spec` asks.
    pub fn open(path: &Path, spec: &DecodeSpec) -> Result<DicomFrames, VideoError> {
        spec.validate()?;
        let cine = DicomCine::open(path)?;
        let (w, h) = (cine.columns(), cine.rows());
        if w as u64 * h as u64 > spec.max_pixels || w > spec.max_side || h > spec.max_side {
            return Err(VideoError::unsupported(path, format!("declared frame size {w}×{h} exceeds the limits")));
        }
        let fps = cine.fps();
        let frame_dur = fps.map(|f| 1.0 / f).unwrap_or(1.0);
        let duration = cine.frames() as f64 * frame_dur;
        if spec.range.start_s >= duration {
            return Err(VideoError::BadRequest(format!(
                "{}: the range starts at {:.3} s, after the cine's end ({duration:.3} s)",
                path.display(),
                spec.range.start_s
            )));
        }
        let selector = Selector::new(&spec.sampling, &spec.range, Some(duration))?;
        let geometry = Geometry::compute(&spec.size, w, h, (1, 1));
        let (out_width, out_height) = geometry.out_size();
        let fps_frac = fps.map(|f| ((f * 1000.0).round() as u32, 1000)).unwrap_or((0, 1));
        let info = StreamInfo {
            width: w,
            height: h,
            par: (1, 1),
            orientation: Default::default(),
            fps: fps_frac,
            duration_s: Some(duration),
            out_width,
            out_height,
            codec: Some(cine.transfer_syntax_name()),
            clock_timeline: false,
        };
        Ok(DicomFrames {
            cine,
            selector,
            geometry,
            // DICOM pixels are not YUV planes: a YUV request gets RGB (see PixelFormat::Yuv).
            format: if spec.format == PixelFormat::Yuv { PixelFormat::Rgb } else { spec.format },
            info,
            next: 0,
            frame_dur,
            deadline: spec.deadline,
            started: Instant::now(),
            stats: DecodeStats::default(),
        })
    }

    /// The stream's facts and the output size.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Counters so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    fn next_frame(&mut self) -> Option<Result<Frame, VideoError>> {
        while self.next < self.cine.frames() && !self.selector.done() {
            if let Some(d) = self.deadline
                && Instant::now() >= d
            {
                return Some(Err(VideoError::timeout(self.cine.path(), self.started, "decoding DICOM frames")));
            }
            let i = self.next;
            self.next += 1;
            let pts = i as f64 * self.frame_dur;
            if !self.selector.offer(pts, self.frame_dur) {
                continue;
            }
            self.stats.decoded += 1;
            let rgb = match self.cine.frame_rgb(i) {
                Ok(px) => px,
                Err(e) => return Some(Err(e)),
            };
            let g = self.geometry;
            let (w, h) = (self.info.width, self.info.height);
            let mut px = image::resize(&rgb, w, h, 3, g.scale_w, g.scale_h);
            if let Some((x, y, cw, ch)) = g.crop {
                px = image::crop(&px, g.scale_w, 3, x, y, cw, ch);
            }
            let (ow, oh) = g.out_size();
            if self.format == PixelFormat::Gray {
                px = image::rgb_to_gray(&px);
            }
            self.stats.delivered += 1;
            return Some(Ok(Frame::new(pts, Some(self.frame_dur), ow, oh, self.format, px)));
        }
        None
    }
}

impl Iterator for DicomFrames {
    type Item = Result<Frame, VideoError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_frame();
        if matches!(item, Some(Err(_))) {
            // Stop after an error.
            self.next = self.cine.frames();
        }
        item
    }
}

/// Turn a Video record of a DICOM file into the cine's Video: probe and safe metadata filled.
pub fn enrich(v: &Video, min_frames: u32) -> Result<Video, VideoError> {
    let path = crate::video::local_path(&v.uri)?;
    let info = read_info(&path)?;
    if !info.has_pixel_data {
        return Err(VideoError::not_video(&path, "a DICOM file without pixel data"));
    }
    if info.frames < min_frames {
        return Err(VideoError::not_video(
            &path,
            format!("a single-frame DICOM image ({} frame, min_frames = {min_frames}), not a cine", info.frames),
        ));
    }
    if !info.decodable {
        return Err(VideoError::unsupported(
            &path,
            format!(
                "pixel data in {} ({}), which this build cannot decode",
                info.transfer_syntax, info.transfer_syntax_uid
            ),
        ));
    }
    let mut out = v.clone();
    out.probe = Some(probe(&path)?);
    // Only safe fields; anything a manifest or sidecar put there stays.
    out.metadata.extend(metadata(&info));
    Ok(out)
}

fn default_poll() -> f64 {
    2.0
}
fn default_settle() -> f64 {
    0.5
}
fn default_threads() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_min_frames() -> u32 {
    2
}

/// Params of `source.dicom`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DicomParams {
    /// Glob patterns of DICOM files, relative to the graph file's folder unless absolute
    /// (e.g. `["data/echo/**/*.dcm"]`; DICOM files often have no extension: `data/echo/**/*`).
    pub paths: Vec<String>,
    /// Keep running: rescan every `poll_seconds`; new files become a new epoch, deleted files are
    /// retracted downstream.
    #[serde(default)]
    pub watch: bool,
    /// Seconds between scans in watch mode.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// In watch mode, take a file once it has not changed for this many seconds.
    #[serde(default = "default_settle")]
    pub settle_seconds: f64,
    /// Skip files and folders whose names start with a dot.
    #[serde(default = "default_true")]
    pub skip_hidden: bool,
    /// Files with fewer frames fail (a single-frame image is not a cine).
    #[serde(default = "default_min_frames")]
    pub min_frames: u32,
    /// Threads per worker hashing and reading files.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl DicomParams {
    /// The folder scan these params describe.
    fn scan(&self) -> FolderScan<'_> {
        FolderScan {
            paths: &self.paths,
            skip_hidden: self.skip_hidden,
            watch: self.watch,
            poll_seconds: self.poll_seconds,
            settle_seconds: self.settle_seconds,
            threads: self.threads,
        }
    }
}

/// The `source.dicom` operator.
pub struct SourceDicom;

impl TypedOperator for SourceDicom {
    type Params = DicomParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "source.dicom",
            summary: "Multi-frame DICOM cine files (ultrasound, endoscopy) as Video records, probe and safe metadata filled",
            doc: "Lists the files that match `paths`, hashes each into a Video record, reads its DICOM header \
                  and fills the probe (frames, size, fps from Frame Time / Cine Rate, transfer syntax) and the \
                  metadata a user needs: modality, manufacturer and model, study and series description, body \
                  part, plus a title and description built from them. Patient-identifying fields (names, ids, \
                  dates, institutions, physicians, UIDs) are never copied. Pixels stay as they are (burned-in \
                  text included); video.decode and the decoder API decode the frames (JPEG baseline, RLE, \
                  uncompressed). Non-DICOM files, single-frame images, files without pixel data and \
                  undecodable transfer syntaxes become Failure records.",
            version: 1,
            inputs: &[],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Video), doc: "one Video per DICOM cine" }],
            is_source: true,
            is_sink: false,
        }
    }

    fn check(&self, p: &DicomParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        p.scan().check(&ctx.base_dir, "data/echo/**/*.dcm")
    }

    fn fingerprint(&self, p: &DicomParams) -> serde_json::Value {
        serde_json::json!({ "min_frames": p.min_frames })
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DicomParams,
        _inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let hashed = p.scan().build(ctx)?;
        let (videos, scan_failures) = split_failures(hashed);
        // Second stage: read each file's header. Its counters stay private (the node's items were
        // counted by the first stage); its failures are counted into the node's.
        let header_ctx = BuildCtx {
            scope: ctx.scope,
            node: ctx.node.clone(),
            spec: ctx.spec.clone(),
            services: ctx.services.clone(),
            stats: Arc::new(NodeStats::default()),
            settings: ctx.settings.clone(),
            base_epoch: ctx.base_epoch,
            shutdown: ctx.shutdown.clone(),
            base_dir: ctx.base_dir.clone(),
            params_fingerprint: ctx.params_fingerprint.clone(),
        };
        let min_frames = p.min_frames;
        let enriched = pool_map(
            &header_ctx,
            videos,
            PoolConfig { threads: p.threads, memoise: true },
            move |rec: &Record, _ictx| match rec {
                Record::Video(v) => Ok(vec![Record::Video(enrich(v, min_frames)?)]),
                other => Ok(vec![other.clone()]),
            },
        );
        let stats = ctx.stats.clone();
        let enriched = enriched.inspect(move |(rec, _t, r)| {
            if matches!(rec, Record::Failure(_)) && *r > 0 {
                NodeStats::add(&stats.failed, *r as u64);
            }
        });
        let (ok, header_failures) = split_failures(enriched);
        let failed = scan_failures.concat(header_failures);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_fractions_and_modalities() {
        assert_eq!(fraction(30.0), (30, 1));
        let (n, d) = fraction(1000.0 / 33.3);
        assert!((n as f64 / d as f64 - 30.03).abs() < 0.01);
        assert_eq!(modality_name("US"), "ultrasound");
    }

    #[test]
    fn non_dicom_files_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dcm");
        std::fs::write(&p, b"hello, not a DICOM file at all").unwrap();
        let e = read_info(&p).unwrap_err();
        assert_eq!(e.class(), ErrorClass::InvalidInput);
        assert!(DicomCine::open(&p).is_err());
        let e = read_info(&dir.path().join("missing.dcm")).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Unreadable);
    }
}
