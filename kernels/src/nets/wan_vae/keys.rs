//! Wan VAE checkpoint key names: the two layouts and their detection (WAN_SPEC §3.3).
//!
//! * **Diffusers** (`*-Diffusers/vae/diffusion_pytorch_model.safetensors`): `encoder.conv_in`,
//!   `encoder.down_blocks.{i}`, `encoder.mid_block.{resnets,attentions}`, `encoder.norm_out`,
//!   `encoder.conv_out`, `quant_conv`, `post_quant_conv`, `decoder.up_blocks.{b}.resnets.{r}` /
//!   `.upsamplers.0`, …; residual blocks use `norm1`, `conv1`, `norm2`, `conv2`, `conv_shortcut`.
//! * **Original** (`Wan2.1_VAE.pth` converted to safetensors): `encoder.conv1`,
//!   `encoder.downsamples.{i}`, `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`, top-level `conv1`
//!   (= `quant_conv`) and `conv2` (= `post_quant_conv`), and the decoder's blocks flattened into
//!   `decoder.upsamples.{n}` (`n = b·(num_res_blocks + 2) + r`, the up-sampler last); residual
//!   blocks use `residual.{0,2,3,6}` and `shortcut`.
//!
//! Resample (`resample.1`, `time_conv`) and attention (`norm`, `to_qkv`, `proj`) sub-keys are
//! the same in both. The network is built once with a name pair for every parameter (see
//! [`Prefix`]), so the mapping is written in one place, next to the topology.

use crate::error::{Error, Result};
use crate::io::TensorSource;

/// A VAE checkpoint's naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanVaeLayout {
    /// diffusers `AutoencoderKLWan` names.
    Diffusers,
    /// Original Wan2.1 `WanVAE_` names (`Wan2.1_VAE.pth`).
    Original,
}

impl WanVaeLayout {
    /// Detects the layout from the encoder's first convolution (`encoder.conv_in.weight` or
    /// `encoder.conv1.weight`).
    pub fn detect(src: &dyn TensorSource) -> Result<WanVaeLayout> {
        match (src.contains("encoder.conv_in.weight"), src.contains("encoder.conv1.weight")) {
            (true, false) => Ok(WanVaeLayout::Diffusers),
            (false, true) => Ok(WanVaeLayout::Original),
            (true, true) => Err(Error::UnknownFormat(
                "the checkpoint holds both encoder.conv_in.weight (diffusers) and encoder.conv1.weight (original \
                 Wan2.1): mixed VAE layouts"
                    .into(),
            )),
            (false, false) => {
                let names = src.names();
                let some: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                Err(Error::UnknownFormat(format!(
                    "not a Wan VAE checkpoint: neither encoder.conv_in.weight (diffusers) nor encoder.conv1.weight \
                     (original Wan2.1) is present ({} tensors, e.g. {some:?})",
                    names.len()
                )))
            }
        }
    }

    /// The name of this layout, as in fixture metadata (`diffusers`, `original`).
    pub fn as_str(self) -> &'static str {
        match self {
            WanVaeLayout::Diffusers => "diffusers",
            WanVaeLayout::Original => "original",
        }
    }
}

/// A module path in both layouts.
#[derive(Debug, Clone)]
pub(crate) struct Prefix {
    /// diffusers name.
    pub d: String,
    /// Original Wan2.1 name.
    pub o: String,
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

impl Prefix {
    /// The root (no prefix).
    pub fn root() -> Prefix {
        Prefix { d: String::new(), o: String::new() }
    }

    /// A child path: `d` appended to the diffusers name, `o` to the original one.
    pub fn join(&self, d: &str, o: &str) -> Prefix {
        Prefix { d: join(&self.d, d), o: join(&self.o, o) }
    }

    /// The same child name in both layouts.
    pub fn same(&self, name: &str) -> Prefix {
        self.join(name, name)
    }

    /// The name in `layout`.
    pub fn name(&self, layout: WanVaeLayout) -> &str {
        match layout {
            WanVaeLayout::Diffusers => &self.d,
            WanVaeLayout::Original => &self.o,
        }
    }
}
