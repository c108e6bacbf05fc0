//! `latent.decode_video`: latents → H.264 MP4 through the codec that made them.

use super::codec::{VideoCodec, video_to_mp4};
use super::encode_video::codec_path;
use super::{LATENT_TENSOR, get_tensor};
use crate::api::*;
use medgen_kernels::Device;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub struct LatentDecodeVideo;

fn d_fps() -> f64 {
    16.0
}

/// Params of `latent.decode_video`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeVideoParams {
    /// The `latent.encode_video` node whose fitted patch-PCA codec decodes (its
    /// outputs/<node>/codec.safetensors in this run's store).
    #[serde(default)]
    pub codec_from: Option<String>,
    /// A patch-PCA codec file instead.
    #[serde(default)]
    pub codec_file: Option<String>,
    /// Or the Wan VAE folder, for Wan VAE latents.
    #[serde(default)]
    pub vae: Option<String>,
    /// Frame rate of the written MP4.
    #[serde(default = "d_fps")]
    pub fps: f64,
    /// Where a Wan VAE decodes: `cpu`, `cuda`, `cuda:N` or `auto` (a CUDA request on a machine
    /// without one runs on the CPU with a warning). The patch-PCA codec always runs on the CPU.
    #[serde(default = "crate::api::device::d_device")]
    pub device: String,
}

impl TypedOperator for LatentDecodeVideo {
    type Params = DecodeVideoParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "latent.decode_video",
            summary: "Decode video latents back to H.264 MP4 (to see what the codec keeps)",
            doc: "Each video Latent is decoded with the codec named by exactly one of `codec_from` (a \
                  latent.encode_video node of this graph: its fitted patch-PCA codec), `codec_file` (a patch-PCA \
                  codec file) or `vae` (the Wan VAE folder), and written as an MP4 blob at `fps`. Emits a Clip per \
                  latent (clip id of the latent, `blob` = the MP4, span [0, frames/fps)), so the result can go to \
                  sink.report or sink.jsonl. Latents whose codec id differs from the loaded codec's fail with a \
                  message naming both. Text latents (no latent blob) are skipped.",
            version: 1,
            inputs: &[InPort { name: "in", kinds: &[Kind::Latent], required: true, doc: "video latents" }],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Clip), doc: "decoded videos" }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &DecodeVideoParams, _ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        let n = [p.codec_from.is_some(), p.codec_file.is_some(), p.vae.is_some()].iter().filter(|b| **b).count();
        if n != 1 {
            v.push(ParamIssue::error(
                "",
                "give exactly one of codec_from, codec_file, vae",
                Some("codec_from = \"latents\" (the latent.encode_video node)".into()),
            ));
        }
        crate::curate::check_range(&mut v, "fps", p.fps, 0.1, 240.0, "fps = 16.0");
        crate::api::device::check_device(&p.device, &mut v);
        v
    }

    fn fingerprint(&self, p: &DecodeVideoParams) -> serde_json::Value {
        serde_json::json!({"fps": p.fps})
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &DecodeVideoParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let input = crate::api::take_input(ctx, &mut inputs)?;
        let (path, vae) = match (&p.codec_from, &p.codec_file, &p.vae) {
            (Some(node), _, _) => (codec_path(&ctx.services.outputs_dir(), node), false),
            (_, Some(f), _) => (ctx.resolve(f), false),
            (_, _, Some(d)) => (ctx.resolve(d), true),
            _ => {
                return Err(BuildError::Invalid {
                    node: ctx.node.clone(),
                    message: "give exactly one of codec_from, codec_file, vae".into(),
                });
            }
        };
        let fps = p.fps;
        let device = if vae {
            crate::api::device::resolve_device(&p.device, "latent.decode_video")
                .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?
        } else {
            Device::Cpu
        };
        let services = ctx.services.clone();
        let input = input.filter(|r| matches!(r, Record::Latent(l) if !l.latent_blob.is_empty()));
        let all = pool_map(ctx, input, PoolConfig::default(), move |rec: &Record, ictx| {
            let Record::Latent(l) = rec else { return Ok(vec![]) };
            let codec = load(&path, vae, device).map_err(|e| ItemError::new(ErrorClass::Backend, e))?;
            if codec.id() != l.codec && !vae {
                return Err(ItemError::invalid(format!(
                    "latent of clip {} was made by codec {} but {} holds codec {}; decode with the codec that encoded it",
                    l.clip_id,
                    l.codec,
                    path.display(),
                    codec.id()
                )));
            }
            let z = get_tensor(services.as_ref(), &l.latent_blob, LATENT_TENSOR)?;
            let video = codec.decode(&z).map_err(|e| ItemError::new(ErrorClass::Internal, e))?;
            let (t, h, w) = (video.shape()[1], video.shape()[2], video.shape()[3]);
            let key = video_to_mp4(&video, fps, services.as_ref(), ictx)?;
            let uri = services.blob_path(&key).display().to_string();
            Ok(vec![Record::Clip(Clip {
                clip_id: l.clip_id.clone(),
                source_id: l.clip_id.clone(),
                uri,
                start_s: F64(0.0),
                end_s: F64(t as f64 / fps),
                fps: F64(fps),
                width: w as u32,
                height: h as u32,
                blob: Some(key),
                metadata: [("codec".to_string(), l.codec.clone())].into_iter().collect(),
            })])
        });
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}

fn load(path: &Path, vae: bool, device: Device) -> Result<VideoCodec, String> {
    if vae { VideoCodec::wan_vae_on(path, device) } else { VideoCodec::patch_pca(path) }
}
