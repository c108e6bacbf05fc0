//! The DiT forward pass (WAN_SPEC §1.2–§1.4), for inference ([`WanDit::forward`]) and for
//! training ([`WanDit::forward_train`], which keeps a [`Tape`] of the activations the backward
//! pass needs, or only each block's input when blocks are recomputed).

use super::{AttnIdx, BlockIdx, Lin, WanDit};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::activation::{gelu_tanh, silu};
use crate::ops::attention::{AttentionOutput, attention};
use crate::ops::elementwise::{add, modulate, mul};
use crate::ops::linear::{linear, linear_gelu_tanh};
use crate::ops::norm::{layer_norm, rms_norm};
use crate::ops::rope::{Rope3d, rope_apply};
use crate::ops::shape::timestep_embedding;
use crate::tensor::Tensor;

/// RoPE base frequency of the Wan models.
const ROPE_THETA: f64 = 10000.0;

/// Options of [`WanDit::forward_train_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// Gradient checkpointing: keep only each block's input on the tape and recompute the block
    /// during the backward pass (what FastVideo's `"full"` checkpointing does). Saves most of the
    /// activation memory for one extra block forward per block.
    pub recompute_blocks: bool,
    /// Also compute the gradients with respect to the inputs `x_t` and `context`.
    pub input_grads: bool,
}

/// Shapes of one forward call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub b: usize,
    /// Input frames, height, width.
    pub fhw: [usize; 3],
    /// Post-patch grid `[F', H', W']`.
    pub grid: [usize; 3],
    /// Tokens `F'·H'·W'`.
    pub l: usize,
    /// Text tokens.
    pub lt: usize,
}

/// Activations of the timestep and text embedders.
#[derive(Debug, Clone)]
pub(crate) struct CondSaved {
    /// Timestep sinusoid `[B, freq_dim]`.
    pub sinus: Tensor,
    /// `time_embedder.linear_1` output.
    pub t1: Tensor,
    /// `silu(t1)`, the input of `time_embedder.linear_2`.
    pub s1: Tensor,
    /// `temb [B, D]`.
    pub temb: Tensor,
    /// `silu(temb)` as fed to `time_proj`.
    pub st: Tensor,
    /// The context as fed to `text_embedder.linear_1`.
    pub ctx_in: Tensor,
    /// `text_embedder.linear_1` output.
    pub c1: Tensor,
    /// `gelu(c1)` as fed to `text_embedder.linear_2`.
    pub g1: Tensor,
}

/// Saved activations of a self-attention sub-block.
#[derive(Debug, Clone)]
pub(crate) struct SelfSaved {
    /// Sub-block input (residual stream).
    pub x: Tensor,
    /// `LN(x)`.
    pub n: Tensor,
    /// Modulated norm, the q/k/v projection input.
    pub y: Tensor,
    pub q_lin: Tensor,
    pub k_lin: Tensor,
    /// RMS-normed, rotated queries `[B, L, nh, hd]`.
    pub q: Tensor,
    /// RMS-normed, rotated keys `[B, L, nh, hd]`.
    pub k: Tensor,
    /// Values `[B, L, nh, hd]`.
    pub v: Tensor,
    pub att: AttentionOutput,
    /// Attention output merged over heads, the `to_out` input.
    pub o: Tensor,
    /// `to_out` output (before the gate).
    pub a: Tensor,
}

/// Saved activations of a cross-attention sub-block.
#[derive(Debug, Clone)]
pub(crate) struct CrossSaved {
    pub x: Tensor,
    /// `norm2(x)` (or `x`), the `to_q` input.
    pub y: Tensor,
    pub q_lin: Tensor,
    pub k_lin: Tensor,
    /// `[B, L, nh, hd]`.
    pub q: Tensor,
    /// `[B, Lt, nh, hd]`.
    pub k: Tensor,
    /// `[B, Lt, nh, hd]`.
    pub v: Tensor,
    pub att: AttentionOutput,
    pub o: Tensor,
}

/// Saved activations of a feed-forward sub-block.
#[derive(Debug, Clone)]
pub(crate) struct FfnSaved {
    pub x: Tensor,
    pub n: Tensor,
    pub y: Tensor,
    /// `ffn.net.0.proj` output.
    pub h: Tensor,
    /// `gelu(h)` as fed to `ffn.net.2`.
    pub g: Tensor,
    /// `ffn.net.2` output (before the gate).
    pub f: Tensor,
}

/// Everything one block's backward pass needs.
#[derive(Debug, Clone)]
pub(crate) struct BlockSaved {
    /// `table + e0`, `[B, 6, D]`.
    pub modv: Tensor,
    pub sa: SelfSaved,
    pub ca: CrossSaved,
    pub ff: FfnSaved,
}

/// A block on the tape: fully saved, or only its input (recomputed in the backward pass).
#[derive(Debug, Clone)]
pub(crate) enum BlockTape {
    Full(Box<BlockSaved>),
    Input(Tensor),
}

/// Saved activations of the output head.
#[derive(Debug, Clone)]
pub(crate) struct HeadSaved {
    pub x: Tensor,
    pub n: Tensor,
    pub y: Tensor,
    /// `head table + temb`, `[B, 2, D]`.
    pub hm: Tensor,
}

/// What [`WanDit::backward`] needs from a [`WanDit::forward_train`] call.
#[derive(Debug, Clone)]
pub struct Tape {
    pub(crate) geo: Geo,
    pub(crate) opts: TrainOptions,
    pub(crate) rope: Rope3d,
    /// Gathered patches `[B, L, C·pt·ph·pw]`, the patch-embedding GEMM input.
    pub(crate) patches: Tensor,
    pub(crate) cond: CondSaved,
    /// Projected text `[B, Lt, D]` as fed to the cross-attention k/v projections.
    pub(crate) c: Tensor,
    /// `e0 [B, 6, D]`.
    pub(crate) e0: Tensor,
    pub(crate) blocks: Vec<BlockTape>,
    pub(crate) head: HeadSaved,
}

impl Tape {
    /// The options the tape was recorded with.
    pub fn options(&self) -> TrainOptions {
        self.opts
    }
}

/// Shared per-call state of the blocks.
pub(crate) struct BlockCtx<'a> {
    pub geo: Geo,
    pub rope: &'a Rope3d,
    pub c: &'a Tensor,
    pub e0: &'a Tensor,
}

fn shape_err(msg: String) -> Error {
    Error::shape("wan_dit", msg)
}

/// `[B, C, F, H, W]` → patches `[B, L, C·pt·ph·pw]`, each ordered `(c, pt, ph, pw)` like the
/// flattened conv weight, tokens ordered `(f, h, w)`.
pub(crate) fn patchify(x: &Tensor, patch: [usize; 3], grid: [usize; 3]) -> Result<Tensor> {
    let (b, c) = (x.shape()[0], x.shape()[1]);
    let [pt, ph, pw] = patch;
    let [gf, gh, gw] = grid;
    x.reshape(&[b, c, gf, pt, gh, ph, gw, pw])?.permute(&[0, 2, 4, 6, 1, 3, 5, 7])?.reshape(&[
        b,
        gf * gh * gw,
        c * pt * ph * pw,
    ])
}

/// Inverse of [`patchify`]: `[B, L, C·pt·ph·pw]` → `[B, C, F, H, W]`.
pub(crate) fn unpatchify_input(p: &Tensor, c: usize, patch: [usize; 3], grid: [usize; 3]) -> Result<Tensor> {
    let b = p.shape()[0];
    let [pt, ph, pw] = patch;
    let [gf, gh, gw] = grid;
    p.reshape(&[b, gf, gh, gw, c, pt, ph, pw])?.permute(&[0, 4, 1, 5, 2, 6, 3, 7])?.reshape(&[
        b,
        c,
        gf * pt,
        gh * ph,
        gw * pw,
    ])
}

/// Head output `[B, L, pt·ph·pw·C]` (channels fastest) → `[B, C, F, H, W]` (WAN_SPEC §1.2 step 9).
pub(crate) fn unpatchify_output(y: &Tensor, c: usize, patch: [usize; 3], grid: [usize; 3]) -> Result<Tensor> {
    let b = y.shape()[0];
    let [pt, ph, pw] = patch;
    let [gf, gh, gw] = grid;
    y.reshape(&[b, gf, gh, gw, pt, ph, pw, c])?.permute(&[0, 7, 1, 4, 2, 5, 3, 6])?.reshape(&[
        b,
        c,
        gf * pt,
        gh * ph,
        gw * pw,
    ])
}

/// Backward of [`unpatchify_output`] (the inverse permutation).
pub(crate) fn patchify_output(dv: &Tensor, c: usize, patch: [usize; 3], grid: [usize; 3]) -> Result<Tensor> {
    let b = dv.shape()[0];
    let [pt, ph, pw] = patch;
    let [gf, gh, gw] = grid;
    dv.reshape(&[b, c, gf, pt, gh, ph, gw, pw])?.permute(&[0, 2, 4, 6, 3, 5, 7, 1])?.reshape(&[
        b,
        gf * gh * gw,
        pt * ph * pw * c,
    ])
}

/// Chunk `k` (`[B, 1, D]`) of a modulation tensor `[B, n, D]`.
pub(crate) fn chunk(m: &Tensor, k: usize) -> Result<Tensor> {
    m.narrow(1, k, 1)
}

impl WanDit {
    /// Checks the inputs and returns the call's shapes.
    fn geometry(&self, x_t: &Tensor, timestep: &Tensor, context: &Tensor) -> Result<Geo> {
        let cfg = &self.cfg;
        if x_t.rank() != 5 || x_t.shape()[1] != cfg.in_channels {
            return Err(shape_err(format!(
                "x_t has shape {:?}; expected [B, {}, F, H, W] (in_channels = {})",
                x_t.shape(),
                cfg.in_channels,
                cfg.in_channels
            )));
        }
        let s = x_t.shape();
        let b = s[0];
        let fhw = [s[2], s[3], s[4]];
        let mut grid = [0; 3];
        for a in 0..3 {
            let p = cfg.patch_size[a];
            if fhw[a] == 0 || !fhw[a].is_multiple_of(p) {
                return Err(shape_err(format!(
                    "x_t {:?}: frames/height/width {fhw:?} must be positive multiples of patch_size {:?}",
                    s, cfg.patch_size
                )));
            }
            grid[a] = fhw[a] / p;
            if grid[a] > cfg.rope_max_seq_len {
                return Err(shape_err(format!(
                    "x_t {s:?}: post-patch grid {grid:?} exceeds rope_max_seq_len = {} positions per axis",
                    cfg.rope_max_seq_len
                )));
            }
        }
        if b == 0 {
            return Err(shape_err("x_t has an empty batch".into()));
        }
        if timestep.shape() != [b] {
            return Err(shape_err(format!(
                "timestep has shape {:?}; expected [{b}] (one per sample)",
                timestep.shape()
            )));
        }
        if context.rank() != 3
            || context.shape()[0] != b
            || context.shape()[2] != cfg.text_dim
            || context.shape()[1] == 0
        {
            return Err(shape_err(format!(
                "context has shape {:?}; expected [{b}, Lt ≥ 1, {}] (text_dim; Lt = 512 zero-padded tokens)",
                context.shape(),
                cfg.text_dim
            )));
        }
        Ok(Geo { b, fhw, grid, l: grid.iter().product(), lt: context.shape()[1] })
    }

    /// Rounds a linear-layer input to the model's GEMM input dtype (half models only).
    pub(crate) fn gin(&self, x: Tensor) -> Result<Tensor> {
        match self.gemm_input_dtype() {
            Some(dt) if x.dtype() != dt => x.to_dtype(dt),
            _ => Ok(x),
        }
    }

    pub(crate) fn lin(&self, x: &Tensor, l: Lin) -> Result<Tensor> {
        linear(x, self.p(l.w), Some(self.p(l.b)))
    }

    /// `[.., D]` → `[B, len, nh, hd]`.
    pub(crate) fn heads(&self, t: &Tensor, b: usize, len: usize) -> Result<Tensor> {
        t.reshape(&[b, len, self.cfg.num_attention_heads, self.cfg.attention_head_dim])
    }

    /// Self-attention sub-block (WAN_SPEC §1.3 steps 1–3).
    pub(crate) fn self_attn(
        &self,
        a: &AttnIdx,
        x: &Tensor,
        modv: &Tensor,
        ctx: &BlockCtx<'_>,
        keep: bool,
    ) -> Result<(Tensor, Option<SelfSaved>)> {
        let (b, l, d, eps) = (ctx.geo.b, ctx.geo.l, self.cfg.inner_dim(), self.cfg.eps);
        let n = layer_norm(x, None, None, eps)?;
        let y = self.gin(modulate(&n, &chunk(modv, 0)?, &chunk(modv, 1)?)?)?;
        let q_lin = self.lin(&y, a.q)?;
        let k_lin = self.lin(&y, a.k)?;
        // Attention takes bf16 q, k, v in a bf16 model (as SDPA does in diffusers): the tensor-core kernels.
        let v = self.gin(self.heads(&self.lin(&y, a.v)?, b, l)?)?;
        let q = self.gin(rope_apply(&self.heads(&rms_norm(&q_lin, self.p(a.norm_q), eps)?, b, l)?, ctx.rope)?)?;
        let k = self.gin(rope_apply(&self.heads(&rms_norm(&k_lin, self.p(a.norm_k), eps)?, b, l)?, ctx.rope)?)?;
        let att = attention(&q, &k, &v, None)?;
        let o = self.gin(att.out.reshape(&[b, l, d])?)?;
        let out = self.lin(&o, a.o)?;
        let x_new = add(x, &mul(&out, &chunk(modv, 2)?)?)?;
        let saved = keep.then(|| SelfSaved { x: x.clone(), n, y, q_lin, k_lin, q, k, v, att, o, a: out });
        Ok((x_new, saved))
    }

    /// Cross-attention sub-block (steps 4–6): no modulation, no gate, no RoPE, no mask.
    pub(crate) fn cross_attn(
        &self,
        bi: &BlockIdx,
        x: &Tensor,
        ctx: &BlockCtx<'_>,
        keep: bool,
    ) -> Result<(Tensor, Option<CrossSaved>)> {
        let a = &bi.attn2;
        let (b, l, lt, d, eps) = (ctx.geo.b, ctx.geo.l, ctx.geo.lt, self.cfg.inner_dim(), self.cfg.eps);
        let y = match bi.norm2 {
            Some((w, bb)) => layer_norm(x, Some(self.p(w)), Some(self.p(bb)), eps)?,
            None => x.clone(),
        };
        let y = self.gin(y)?;
        let q_lin = self.lin(&y, a.q)?;
        let k_lin = self.lin(ctx.c, a.k)?;
        // k and v come from the (f32) text embedding: rounded like q for the bf16 attention kernels.
        let v = self.gin(self.heads(&self.lin(ctx.c, a.v)?, b, lt)?)?;
        let q = self.gin(self.heads(&rms_norm(&q_lin, self.p(a.norm_q), eps)?, b, l)?)?;
        let k = self.gin(self.heads(&rms_norm(&k_lin, self.p(a.norm_k), eps)?, b, lt)?)?;
        let att = attention(&q, &k, &v, None)?;
        let o = self.gin(att.out.reshape(&[b, l, d])?)?;
        let x_new = add(x, &self.lin(&o, a.o)?)?;
        let saved = keep.then(|| CrossSaved { x: x.clone(), y, q_lin, k_lin, q, k, v, att, o });
        Ok((x_new, saved))
    }

    /// Feed-forward sub-block (steps 7–9).
    pub(crate) fn ffn(
        &self,
        bi: &BlockIdx,
        x: &Tensor,
        modv: &Tensor,
        keep: bool,
    ) -> Result<(Tensor, Option<FfnSaved>)> {
        let n = layer_norm(x, None, None, self.cfg.eps)?;
        let y = self.gin(modulate(&n, &chunk(modv, 3)?, &chunk(modv, 4)?)?)?;
        let (g, h) = if keep {
            let h = self.lin(&y, bi.ffn1)?;
            (self.gin(gelu_tanh(&h)?)?, Some(h))
        } else {
            // Inference (or a block recomputed later): no pre-activation to keep, so the GELU runs in the
            // first GEMM's epilogue on CUDA.
            let l = bi.ffn1;
            (self.gin(linear_gelu_tanh(&y, self.p(l.w), Some(self.p(l.b)))?)?, None)
        };
        let f = self.lin(&g, bi.ffn2)?;
        let x_new = add(x, &mul(&f, &chunk(modv, 5)?)?)?;
        Ok((x_new, h.map(|h| FfnSaved { x: x.clone(), n, y, h, g, f })))
    }

    /// One transformer block; returns its output and, when `keep`, its saved activations.
    pub(crate) fn block(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &BlockCtx<'_>,
        keep: bool,
    ) -> Result<(Tensor, Option<BlockSaved>)> {
        let bi = &self.idx.blocks[i];
        let modv = add(self.p(bi.table), ctx.e0)?;
        let (x1, sa) = self.self_attn(&bi.attn1, x, &modv, ctx, keep)?;
        let (x2, ca) = self.cross_attn(bi, &x1, ctx, keep)?;
        let (x3, ff) = self.ffn(bi, &x2, &modv, keep)?;
        let saved = match (sa, ca, ff) {
            (Some(sa), Some(ca), Some(ff)) => Some(BlockSaved { modv, sa, ca, ff }),
            _ => None,
        };
        Ok((x3, saved))
    }

    /// Computes the velocity prediction `[B, out_channels, F, H, W]` for latents
    /// `x_t [B, in_channels, F, H, W]`, timesteps `[B]` (0…1000, float) and text context
    /// `[B, Lt, text_dim]` (used as given: pad to 512 zero rows, there is no mask).
    pub fn forward(&self, x_t: &Tensor, timestep: &Tensor, context: &Tensor) -> Result<Tensor> {
        Ok(self.run(x_t, timestep, context, None)?.0)
    }

    /// [`forward`](Self::forward) keeping every activation the backward pass needs.
    pub fn forward_train(&self, x_t: &Tensor, timestep: &Tensor, context: &Tensor) -> Result<(Tensor, Tape)> {
        self.forward_train_with(x_t, timestep, context, TrainOptions::default())
    }

    /// [`forward_train`](Self::forward_train) with options (block recomputation, input gradients).
    pub fn forward_train_with(
        &self,
        x_t: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        opts: TrainOptions,
    ) -> Result<(Tensor, Tape)> {
        let (v, tape) = self.run(x_t, timestep, context, Some(opts))?;
        Ok((v, tape.unwrap_or_else(|| unreachable!("run records a tape when given options"))))
    }

    /// The forward pass; records a tape when `train` is given.
    fn run(
        &self,
        x_t: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        train: Option<TrainOptions>,
    ) -> Result<(Tensor, Option<Tape>)> {
        let geo = self.geometry(x_t, timestep, context)?;
        let cfg = &self.cfg;
        let (b, d, eps) = (geo.b, cfg.inner_dim(), cfg.eps);
        let f64_model = self.dtype == DType::F64;
        let ct = if f64_model { DType::F64 } else { DType::F32 };
        let ix = &self.idx;

        // 1. patch embedding as a GEMM over gathered patches
        let patches = self.gin(patchify(x_t, cfg.patch_size, geo.grid)?)?;
        let w_patch = self.p(ix.patch.w).reshape(&[d, cfg.in_channels * cfg.patch_volume()])?;
        let x = linear(&patches, &w_patch, Some(self.p(ix.patch.b)))?;
        // The residual stream stays in the compute dtype (f32, or f64).
        let mut x = x.to_dtype(x.dtype().compute())?;

        // 2–4. timestep sinusoid → time MLP → shared 6-way modulation
        // Built on the host in f64 (like the reference), then placed where the model computes.
        let sinus = timestep_embedding(&timestep.to_vec_f64()?, cfg.freq_dim, ct)?.to_device(x_t.device())?;
        let t1 = self.lin(&sinus, ix.time1)?;
        let s1 = silu(&t1)?;
        let temb = self.lin(&s1, ix.time2)?;
        let st = self.gin(silu(&temb)?)?;
        let e0 = self.lin(&st, ix.time_proj)?.reshape(&[b, 6, d])?;

        // 5. text projection
        let ctx_in = self.gin(context.clone())?;
        let c1 = self.lin(&ctx_in, ix.text1)?;
        let g1 = self.gin(gelu_tanh(&c1)?)?;
        let c = self.gin(self.lin(&g1, ix.text2)?)?;

        // 6. RoPE tables, 7. blocks
        let rope = Rope3d::new(cfg.attention_head_dim, geo.grid, ROPE_THETA)?;
        let bctx = BlockCtx { geo, rope: &rope, c: &c, e0: &e0 };
        let mut blocks = Vec::with_capacity(if train.is_some() { ix.blocks.len() } else { 0 });
        for i in 0..ix.blocks.len() {
            let (keep, recompute) = match train {
                Some(o) => (!o.recompute_blocks, o.recompute_blocks),
                None => (false, false),
            };
            let (x_new, saved) = self.block(i, &x, &bctx, keep)?;
            if let Some(s) = saved {
                blocks.push(BlockTape::Full(Box::new(s)));
            } else if recompute {
                blocks.push(BlockTape::Input(x.clone()));
            }
            x = x_new;
        }

        // 8. output head: (table + temb) → shift, scale; no SiLU
        let hm = add(self.p(ix.head_table), &temb.reshape(&[b, 1, d])?)?;
        let n = layer_norm(&x, None, None, eps)?;
        let y = self.gin(modulate(&n, &chunk(&hm, 0)?, &chunk(&hm, 1)?)?)?;
        let out = self.lin(&y, ix.proj_out)?;

        // 9. unpatchify
        let v = unpatchify_output(&out, cfg.out_dim(), cfg.patch_size, geo.grid)?;
        let tape = train.map(|opts| Tape {
            geo,
            opts,
            rope,
            patches,
            cond: CondSaved { sinus, t1, s1, temb, st, ctx_in, c1, g1 },
            c,
            e0,
            blocks,
            head: HeadSaved { x, n, y, hm },
        });
        Ok((v, tape))
    }
}
