//! `latent.encode_video`: clips → latent blobs through the Wan VAE or the embedded patch-PCA codec.
//!
//! With `codec = "patch_pca"` and no fitted codec yet, the node fits one: each clip's frames are
//! prepared once (decoded, scaled, stored as a frames blob — memoised), then when the first epoch
//! with clips completes, one off-worker job streams every prepared clip (up to `fit_clips`) through
//! the patch covariance accumulator and fits the codec. The codec is written to
//! `outputs/<node>/codec.safetensors` and kept: later epochs and later runs encode with the same
//! codec, so latents stay comparable and incremental training stays valid (delete the file, or
//! point `codec_file` elsewhere, to refit). Every latent reports its reconstruction PSNR on the
//! `metrics` port — the embedded codec is honest about what it keeps.

use super::codec::{FrameSpec, VideoCodec, clip_video, frames_to_video};
use super::{LATENT_TENSOR, put_tensor};
use crate::api::*;
use crate::curate::to_scores;
use crate::video::PixelFormat;
use crate::video::blob::{FramesHeader, FramesReader, FramesWriter};
use medgen_kernels::Device;
use medgen_kernels::codec::patch_pca::{CovarianceStats, PatchGeometry, PatchPca, psnr};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::hash::Hash;
use std::path::{Path, PathBuf};

pub struct LatentEncodeVideo;

/// Which codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodecKind {
    /// The embedded patch-PCA codec (16 channels, ×4 time, ×8 space), fitted on the dataset.
    PatchPca,
    /// The Wan2.1 VAE (`vae` = its folder).
    WanVae,
}

fn d_codec() -> CodecKind {
    CodecKind::PatchPca
}
fn d_width() -> u32 {
    832
}
fn d_height() -> u32 {
    480
}
fn d_frames() -> usize {
    81
}
fn d_fps() -> f64 {
    16.0
}
fn d_fit_clips() -> usize {
    256
}
fn d_fit_stride() -> usize {
    3
}
fn d_threads() -> usize {
    1
}

/// Params of `latent.encode_video`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeVideoParams {
    /// `patch_pca` (embedded, fitted here) or `wan_vae` (needs `vae`).
    #[serde(default = "d_codec")]
    pub codec: CodecKind,
    /// Wan VAE folder (diffusers `vae/`: config.json + safetensors) or safetensors file.
    #[serde(default)]
    pub vae: Option<String>,
    /// A fitted patch-PCA codec file to encode with instead of fitting one.
    #[serde(default)]
    pub codec_file: Option<String>,
    /// Frame width (multiple of 16: ×8 for the codec, ×2 for the DiT's patches).
    #[serde(default = "d_width")]
    pub width: u32,
    /// Frame height (multiple of 16).
    #[serde(default = "d_height")]
    pub height: u32,
    /// Frames per clip, `1 + 4k` (Wan: 81).
    #[serde(default = "d_frames")]
    pub frames: usize,
    /// Sampling rate (Wan: 16); clips shorter than frames/fps are sampled uniformly.
    #[serde(default = "d_fps")]
    pub fps: f64,
    /// Clips the patch-PCA fit streams through at most.
    #[serde(default = "d_fit_clips")]
    pub fit_clips: usize,
    /// Every n-th patch enters the fit.
    #[serde(default = "d_fit_stride")]
    pub fit_stride: usize,
    /// Pool threads per worker.
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// Where a Wan VAE encodes: `cpu`, `cuda`, `cuda:N` or `auto` (a CUDA request on a machine
    /// without one runs on the CPU with a warning). The patch-PCA codec always runs on the CPU.
    #[serde(default = "crate::api::device::d_device")]
    pub device: String,
}

impl EncodeVideoParams {
    fn frame_spec(&self) -> FrameSpec {
        FrameSpec { width: self.width, height: self.height, frames: self.frames, fps: self.fps }
    }
}

/// Where a node keeps its fitted codec.
pub fn codec_path(outputs: &Path, node: &str) -> PathBuf {
    outputs.join(node).join("codec.safetensors")
}

/// A clip to encode with the codec stored under `codec_blob`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct EncodeJob {
    /// A Clip/Scores record, or an internal prepared-frames Latent (codec [`PREPARED`]).
    rec: Record,
    /// `blob:<key>` (a patch-PCA codec file in the run store) or `vae:<path>` (a Wan VAE).
    codec: String,
}

impl PoolItem for EncodeJob {
    fn item_id(&self) -> String {
        match &self.rec {
            Record::Latent(l) => format!("clip:{}", l.clip_id),
            r => r.item_id(),
        }
    }
    fn describe(&self) -> String {
        self.rec.describe()
    }
    fn memo_input(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn route(&self) -> u64 {
        self.rec.route()
    }
}

/// The fit of a patch-PCA codec over prepared clips (frames blob keys, sorted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct FitJob {
    frames: Vec<String>,
}

impl PoolItem for FitJob {
    fn item_id(&self) -> String {
        format!("codec-fit:{}clips", self.frames.len())
    }
    fn describe(&self) -> String {
        format!("patch-PCA fit over {} clips", self.frames.len())
    }
    fn memo_input(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn route(&self) -> u64 {
        0
    }
}

/// Codec tag of the internal prepared-frames records.
const PREPARED: &str = "prepared-frames";

/// The clip a record stands for: a clip, a scored clip, or a whole video (an already-cut clip file).
fn as_clip(rec: &Record) -> Result<Clip, ItemError> {
    if let Record::Video(v) = rec {
        let start = v.probe.as_ref().map_or(0.0, |p| p.start());
        let end = v.probe.as_ref().and_then(|p| p.end_s()).unwrap_or(1e9);
        return Ok(Clip {
            clip_id: v.source_id.clone(),
            source_id: v.source_id.clone(),
            uri: v.uri.clone(),
            start_s: F64(start),
            end_s: F64(end),
            fps: F64(0.0),
            width: 0,
            height: 0,
            blob: None,
            metadata: v.metadata.clone(),
        });
    }
    to_scores(rec).map(|s| s.clip).ok_or_else(|| {
        ItemError::new(
            ErrorClass::Unsupported,
            format!("latent.encode_video encodes clips or videos, not a {}", rec.kind()),
        )
    })
}

/// Decode a clip to the model's frames and store them as a frames blob.
fn prepare(rec: &Record, spec: &FrameSpec, services: &dyn Services, ictx: &ItemCtx) -> Result<Vec<Record>, ItemError> {
    let clip = as_clip(rec)?;
    let video = clip_video(&clip, spec, services, ictx)?;
    let (w, h, frames) = super::codec::video_to_rgb(&video).map_err(ItemError::internal)?;
    let tmp =
        tempfile::Builder::new().prefix("frames-").tempfile_in(services.tmp_dir()).map_err(ItemError::internal)?;
    let header = FramesHeader { width: w, height: h, format: PixelFormat::Rgb, fps: spec.fps };
    let mut wr = FramesWriter::create(tmp.path(), header).map_err(ItemError::internal)?;
    for (i, px) in frames.into_iter().enumerate() {
        wr.write(&crate::video::Frame::new(i as f64 / spec.fps, None, w, h, PixelFormat::Rgb, px))
            .map_err(ItemError::internal)?;
    }
    wr.finish().map_err(ItemError::internal)?;
    let key = services.blob_put_file(tmp.path()).map_err(|e| ItemError::transient(e.to_string()))?;
    Ok(vec![Record::Latent(Latent {
        clip_id: clip.clip_id.clone(),
        latent_blob: key,
        shape: vec![3, spec.frames as u64, h as u64, w as u64],
        codec: PREPARED.into(),
        text_blob: None,
    })])
}

/// The frames of a prepared clip as a video tensor.
fn prepared_video(key: &str, services: &dyn Services) -> Result<medgen_kernels::Tensor, ItemError> {
    let path = services.blob_path(key);
    let reader = FramesReader::open(&path)
        .map_err(|e| ItemError::unreadable(format!("prepared frames {key} ({}): {e}", path.display())))?;
    let frames = reader.collect::<std::io::Result<Vec<_>>>().map_err(|e| ItemError::unreadable(e.to_string()))?;
    frames_to_video(&frames).map_err(ItemError::internal)
}

impl TypedOperator for LatentEncodeVideo {
    type Params = EncodeVideoParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "latent.encode_video",
            summary: "Encode clips into DiT latents with the Wan VAE or the embedded patch-PCA codec (fitted on the dataset)",
            doc: "Each clip is decoded at `fps` (from its redacted copy when curate.deidentify made one), scaled to \
                  cover width×height and centre-cropped, cut to `frames` = 1+4k frames, and encoded to a latent \
                  [16, 1+k, height/8, width/8] stored as a safetensors blob (tensor `latent`), memoised per clip and \
                  codec: the FastVideo precomputed-latents cache, filled incrementally. `codec = \"wan_vae\"` uses the \
                  Wan2.1 VAE (`vae` folder; latents normalised as Wan's DiT expects). `codec = \"patch_pca\"` (the \
                  embedded default for machines without VAE weights) projects 3×4×8×8 pixel patches on the top 16 \
                  principal components of the dataset's patches: the first completed epoch's clips (at most \
                  `fit_clips`, every `fit_stride`-th patch) are reduced to a patch covariance in one off-worker job, \
                  the codec is fitted and kept in outputs/<node>/codec.safetensors for every later epoch and run \
                  (delete it to refit, or give `codec_file`). Metrics: `latent_psnr_db` per clip (reconstruction \
                  through the codec) and, for a fit, `codec_explained_variance`.",
            version: 1,
            inputs: &[InPort {
                name: "in",
                kinds: &[Kind::Clip, Kind::Scores, Kind::Video],
                required: true,
                doc: "clips, scored clips, or videos that are clips already (encoded from the start)",
            }],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Latent), doc: "one Latent per clip" },
                OutPort {
                    name: "metrics",
                    kind: OutKind::Fixed(Kind::Metric),
                    doc: "latent_psnr_db per clip; codec_explained_variance per fit",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &EncodeVideoParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.width == 0 || p.height == 0 || !p.width.is_multiple_of(16) || !p.height.is_multiple_of(16) {
            v.push(ParamIssue::error(
                "width",
                format!("width and height must be positive multiples of 16, got {}×{}", p.width, p.height),
                Some("width = 832, height = 480 (Wan), or 64×64 for a CPU demo".into()),
            ));
        }
        if p.frames == 0 || !(p.frames - 1).is_multiple_of(4) {
            v.push(ParamIssue::error(
                "frames",
                format!("frames must be 1 + 4k (1, 5, 9, …, 81), got {}", p.frames),
                Some("frames = 81".into()),
            ));
        }
        crate::curate::check_range(&mut v, "fps", p.fps, 0.1, 240.0, "fps = 16.0");
        if p.fit_clips == 0 {
            v.push(ParamIssue::error("fit_clips", "at least 1", None));
        }
        if p.fit_stride == 0 {
            v.push(ParamIssue::error("fit_stride", "at least 1", None));
        }
        crate::curate::check_threads(p.threads, &mut v);
        match p.codec {
            CodecKind::WanVae => match &p.vae {
                None => v.push(ParamIssue::error(
                    "vae",
                    "codec = \"wan_vae\" needs `vae`, the Wan2.1 VAE folder (diffusers vae/: config.json + safetensors)",
                    Some("vae = \"models/Wan2.1-T2V-1.3B-Diffusers/vae\", or codec = \"patch_pca\"".into()),
                )),
                Some(d) if !resolve_path(&ctx.base_dir, d).exists() => v.push(ParamIssue::error(
                    "vae",
                    format!("{} does not exist", resolve_path(&ctx.base_dir, d).display()),
                    None,
                )),
                _ => {}
            },
            CodecKind::PatchPca => {
                if let Some(f) = &p.codec_file {
                    let path = resolve_path(&ctx.base_dir, f);
                    if let Err(e) = PatchPca::load(&path) {
                        v.push(ParamIssue::error("codec_file", format!("{}: {e}", path.display()), None));
                    }
                }
                if p.vae.is_some() {
                    v.push(ParamIssue::warning("vae", "ignored with codec = \"patch_pca\"", None));
                }
            }
        }
        crate::api::device::check_device(&p.device, &mut v);
        v
    }

    fn fingerprint(&self, p: &EncodeVideoParams) -> serde_json::Value {
        // The codec's identity is part of each item; what else changes the latents:
        serde_json::json!({"w": p.width, "h": p.height, "frames": p.frames, "fps": p.fps,
            "fit_clips": p.fit_clips, "fit_stride": p.fit_stride})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &EncodeVideoParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = crate::api::take_input(ctx, &mut inputs)?;
        let invalid = |message: String| BuildError::Invalid { node: ctx.node.clone(), message };
        let spec = p.frame_spec();
        let services = ctx.services.clone();
        let pool = PoolConfig { threads: p.threads, memoise: true };
        let kept = codec_path(&ctx.services.outputs_dir(), &ctx.node);
        // The codec, when known before the run: (blob key or path, loader).
        let known: Option<String> = match p.codec {
            CodecKind::WanVae => {
                let d = p.vae.as_deref().ok_or_else(|| invalid("codec = \"wan_vae\" needs `vae`".into()))?;
                Some(format!("vae:{}", resolve_path(&ctx.base_dir, d).display()))
            }
            CodecKind::PatchPca => {
                let file = p
                    .codec_file
                    .as_deref()
                    .map(|f| resolve_path(&ctx.base_dir, f))
                    .or(kept.is_file().then(|| kept.clone()));
                match file {
                    Some(f) => {
                        let bytes = std::fs::read(&f).map_err(|e| invalid(format!("reading {}: {e}", f.display())))?;
                        // The blob key is the content hash: `explain` computes it without writing.
                        let key = if ctx.settings.dry_run {
                            blake3::hash(&bytes).to_hex().to_string()
                        } else {
                            ctx.services.blob_put(&bytes).map_err(|e| invalid(e.to_string()))?
                        };
                        Some(format!("blob:{key}"))
                    }
                    None => None,
                }
            }
        };
        // Patch-PCA clips are prepared once (decoded, scaled, stored as frames: memoised), so the
        // fit and every later encode read the same frames and a re-run decodes nothing.
        let (input, prep_failed) = match p.codec {
            CodecKind::WanVae => (input, None),
            CodecKind::PatchPca => {
                let svc = services.clone();
                let spec2 = spec.clone();
                let prepared = pool_map(ctx, input, pool.clone(), move |rec: &Record, ictx| {
                    prepare(rec, &spec2, svc.as_ref(), ictx)
                });
                let (prepared, failed) = split_failures(prepared);
                (prepared, Some(failed))
            }
        };
        let (jobs, mut failures) = match known {
            Some(codec) => (input.map(move |rec| EncodeJob { rec, codec: codec.clone() }), None),
            None => {
                let prepared = input;
                let fit_clips = p.fit_clips;
                let fit_jobs = on_epochs(ctx.scope, prepared.clone(), &format!("{}:codec-fit", ctx.node), {
                    let mut fitted = false;
                    move |view: EpochView<'_, Record>| {
                        if fitted {
                            return Vec::new();
                        }
                        fitted = true;
                        let mut keys: Vec<(String, String)> = view
                            .contents
                            .keys()
                            .filter_map(|r| match r {
                                Record::Latent(l) => Some((
                                    blake3::hash(l.clip_id.as_bytes()).to_hex().to_string(),
                                    l.latent_blob.clone(),
                                )),
                                _ => None,
                            })
                            .collect();
                        keys.sort();
                        keys.truncate(fit_clips);
                        let mut frames: Vec<String> = keys.into_iter().map(|(_, k)| k).collect();
                        frames.sort();
                        vec![FitJob { frames }]
                    }
                });
                let svc = services.clone();
                let stride = p.fit_stride;
                let kept2 = kept.clone();
                let fitted =
                    pool_map(ctx, fit_jobs, PoolConfig { threads: 1, memoise: true }, move |job: &FitJob, ictx| {
                        let mut stats = CovarianceStats::new(PatchGeometry::default());
                        for key in &job.frames {
                            crate::curate::frames::check_stop(ictx)?;
                            stats
                                .add_video(&prepared_video(key, svc.as_ref())?, stride)
                                .map_err(ItemError::internal)?;
                        }
                        let codec = PatchPca::fit(&stats)
                            .map_err(|e| ItemError::invalid(format!("fitting the patch-PCA codec: {e}")))?;
                        let tmp = tempfile::Builder::new()
                            .suffix(".safetensors")
                            .tempfile_in(svc.tmp_dir())
                            .map_err(ItemError::internal)?;
                        codec.save(tmp.path()).map_err(ItemError::internal)?;
                        let bytes = std::fs::read(tmp.path()).map_err(ItemError::internal)?;
                        let key = svc.blob_put(&bytes).map_err(|e| ItemError::transient(e.to_string()))?;
                        crate::api::fsutil::atomic_write(&kept2, &bytes).map_err(ItemError::internal)?;
                        Ok(vec![
                            Record::Latent(Latent {
                                clip_id: "codec".into(),
                                latent_blob: key,
                                shape: vec![],
                                codec: codec.codec_id(),
                                text_blob: None,
                            }),
                            Record::Metric(Metric {
                                subject: codec.codec_id(),
                                name: "codec_explained_variance".into(),
                                value: F64(codec.explained_variance()),
                            }),
                        ])
                    });
                let (fitted, fit_failed) = split_failures(fitted);
                let codec_keys = fitted.clone().flat_map(|r| match r {
                    Record::Latent(l) if l.clip_id == "codec" => Some(((), format!("blob:{}", l.latent_blob))),
                    _ => None,
                });
                let fit_metrics = fitted.filter(|r| matches!(r, Record::Metric(_)));
                let jobs =
                    prepared.map(|r| ((), r)).join(codec_keys).map(|((), (rec, codec))| EncodeJob { rec, codec });
                (jobs, Some((fit_failed, fit_metrics)))
            }
        };
        let svc = services.clone();
        let device = match p.codec {
            CodecKind::WanVae => {
                crate::api::device::resolve_device(&p.device, "latent.encode_video").map_err(invalid)?
            }
            CodecKind::PatchPca => Device::Cpu,
        };
        let encoded = pool_map(ctx, jobs, pool, move |job: &EncodeJob, ictx| {
            let codec =
                load_codec(&job.codec, svc.as_ref(), device).map_err(|e| ItemError::new(ErrorClass::Backend, e))?;
            let (clip_id, video) = match &job.rec {
                Record::Latent(l) if l.codec == PREPARED => {
                    (l.clip_id.clone(), prepared_video(&l.latent_blob, svc.as_ref())?)
                }
                rec => {
                    let clip = as_clip(rec)?;
                    (clip.clip_id.clone(), clip_video(&clip, &spec, svc.as_ref(), ictx)?)
                }
            };
            let z = codec
                .encode(&video)
                .map_err(|e| ItemError::new(ErrorClass::Internal, format!("encoding clip {clip_id}: {e}")))?;
            let back = codec
                .decode(&z)
                .map_err(|e| ItemError::new(ErrorClass::Internal, format!("decoding clip {clip_id}: {e}")))?;
            let quality = psnr(&video, &back).map_err(ItemError::internal)?;
            let id = codec.id();
            let fps = spec.fps.to_string();
            let meta = [
                ("codec", id.as_str()),
                ("codec_ref", job.codec.as_str()),
                ("clip_id", clip_id.as_str()),
                ("fps", fps.as_str()),
            ];
            let key = put_tensor(svc.as_ref(), LATENT_TENSOR, &z, &meta)?;
            Ok(vec![
                Record::Latent(Latent {
                    clip_id: clip_id.clone(),
                    latent_blob: key,
                    shape: z.shape().iter().map(|&d| d as u64).collect(),
                    codec: id,
                    text_blob: None,
                }),
                Record::Metric(Metric { subject: clip_id, name: "latent_psnr_db".into(), value: F64(quality) }),
            ])
        });
        let (ok, failed) = split_failures(encoded);
        let latents = ok.clone().filter(|r| matches!(r, Record::Latent(_)));
        let mut metrics = ok.filter(|r| matches!(r, Record::Metric(_)));
        let mut failed = failed;
        if let Some(f) = prep_failed {
            failed = failed.concat(f);
        }
        if let Some((f, m)) = failures.take() {
            failed = failed.concat(f);
            metrics = metrics.concat(m);
        }
        Ok(Outputs::default().with(OUT_PORT, latents).with("metrics", metrics).with(FAILURES_PORT, failed))
    }
}

/// The codec an [`EncodeJob`] names.
fn load_codec(spec: &str, services: &dyn Services, device: Device) -> Result<VideoCodec, String> {
    if let Some(key) = spec.strip_prefix("blob:") {
        VideoCodec::patch_pca(&services.blob_path(key))
    } else if let Some(path) = spec.strip_prefix("vae:") {
        VideoCodec::wan_vae_on(Path::new(path), device)
    } else {
        Err(format!("internal: unknown codec reference {spec:?}"))
    }
}
