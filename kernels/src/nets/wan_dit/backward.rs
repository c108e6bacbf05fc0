//! The DiT backward pass (WAN_SPEC §6), written by hand from the op backwards of
//! [`crate::ops`]: output head → blocks in reverse (each: FFN, cross-attention, self-attention) →
//! modulation plumbing and time MLP → text embedder → patch embedding.
//!
//! Attention gradients use the tiled kernel with the saved log-sum-exp, so no `L × L` buffer
//! exists in either direction.

use std::collections::{BTreeMap, HashSet};

use super::WanDit;
use super::forward::{BlockCtx, BlockSaved, BlockTape, Tape, chunk, patchify_output, unpatchify_input};
use crate::error::{Error, Result};
use crate::ops::activation::{gelu_tanh_backward, gelu_tanh_backward_owned, silu_backward};
use crate::ops::attention::{AttentionGrads, attention_backward};
use crate::ops::elementwise::{add, modulate_backward, mul_backward, scale, sum_to_shape};
use crate::ops::linear::{LinearNeed, linear, linear_backward_opt};
use crate::ops::norm::{layer_norm_backward, rms_norm_backward};
use crate::ops::rope::rope_backward;
use crate::ops::shape::cat;
use crate::tensor::Tensor;
use crate::train::lora::LoraWeights;

/// Gradients of a loss with respect to the DiT's parameters (and optionally its inputs).
#[derive(Debug, Clone)]
pub struct Grads {
    /// `dL/dθ` for every requested parameter (all of them for [`WanDit::backward`]), keyed by diffusers
    /// name, in the compute dtype (f32, or f64 for an f64 model).
    pub params: BTreeMap<String, Tensor>,
    /// `[dA₀, dB₀, dA₁, dB₁, …]` of the LoRA adapters of [`GradRequest::lora`] (in
    /// [`LoraWeights::param_names`] order and the adapters' dtype); empty without adapters.
    pub lora: Vec<Tensor>,
    /// `dL/dx_t [B, C, F, H, W]` when [`TrainOptions::input_grads`](super::TrainOptions) was set.
    pub x_t: Option<Tensor>,
    /// `dL/dcontext [B, Lt, text_dim]` when [`TrainOptions::input_grads`](super::TrainOptions)
    /// was set.
    pub context: Option<Tensor>,
}

/// Which gradients [`WanDit::backward_for`] computes. Work for anything not requested is skipped: a frozen
/// linear layer costs one GEMM instead of two, and the time and text embedders' backward is not run at all
/// when none of their parameters (nor the inputs) need a gradient.
#[derive(Debug, Clone, Copy, Default)]
pub struct GradRequest<'a> {
    /// Parameters (diffusers names) whose full gradient is wanted; `None`: every parameter.
    pub params: Option<&'a HashSet<String>>,
    /// LoRA adapters (on the merged model being differentiated) whose gradients go to [`Grads::lora`]:
    /// `dB = s·dyᵀ·(x·Aᵀ)`, `dA = s·(dy·B)ᵀ·x` per layer, never forming the layer's full `dW`.
    pub lora: Option<&'a LoraWeights>,
}

/// Index-aligned gradient slots, with what is wanted.
struct Slots<'a> {
    grads: Vec<Option<Tensor>>,
    want: Vec<bool>,
    /// For each parameter: the index of the LoRA module adapting it.
    adapter: Vec<Option<usize>>,
    lora: Option<&'a LoraWeights>,
    lora_grads: Vec<Option<Tensor>>,
}

impl Slots<'_> {
    fn set(&mut self, i: usize, g: Tensor) {
        if self.want[i] {
            self.grads[i] = Some(g);
        }
    }

    /// Whether linear `l` needs any parameter gradient (full or LoRA).
    fn needs(&self, l: super::Lin) -> bool {
        self.want[l.w] || self.want[l.b] || self.adapter[l.w].is_some()
    }

    /// Backward through linear `l` (input `x`, weight `w`, output gradient `dy`): records the wanted
    /// parameter and adapter gradients and returns `dx` when `need_dx`.
    fn lin(&mut self, l: super::Lin, x: &Tensor, w: &Tensor, dy: &Tensor, need_dx: bool) -> Result<Option<Tensor>> {
        let need = LinearNeed { dx: need_dx, dw: self.want[l.w], db: self.want[l.b] };
        let gr = linear_backward_opt(x, w, dy, need)?;
        if let Some(dw) = gr.dw {
            self.grads[l.w] = Some(dw);
        }
        if let Some(db) = gr.db {
            self.grads[l.b] = Some(db);
        }
        if let Some(mi) = self.adapter[l.w] {
            self.lora_grad(mi, x, dy)?;
        }
        Ok(gr.dx)
    }

    /// [`lin`](Self::lin) where `dx` is needed.
    fn lin_dx(&mut self, l: super::Lin, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.lin(l, x, w, dy, true)?.ok_or_else(|| Error::arg("wan_dit backward", "linear input gradient missing"))
    }

    /// Gradients of adapter `mi` from the layer's input `x [.., in]` and output gradient `dy [.., out]`.
    fn lora_grad(&mut self, mi: usize, x: &Tensor, dy: &Tensor) -> Result<()> {
        let Some(lora) = self.lora else { return Ok(()) };
        let m = &lora.modules[mi];
        let (din, dout) = (m.a.shape()[1], m.b.shape()[0]);
        let x2 = x.reshape(&[x.numel() / din.max(1), din])?;
        let dy2 = dy.reshape(&[dy.numel() / dout.max(1), dout])?;
        // bf16 activations keep the small GEMMs in bf16 (the adapters are f32 master copies).
        let (a, b) = (m.a.to_dtype(x.dtype())?, m.b.to_dtype(x.dtype())?);
        let xa = linear(&x2, &a, None)?;
        let gb = linear_backward_opt(&xa, &b, &dy2, LinearNeed { dx: true, dw: true, db: false })?;
        let dyb = gb.dx.ok_or_else(|| Error::arg("wan_dit backward", "LoRA dy·B missing"))?;
        let ga = linear_backward_opt(&x2, &a, &dyb, LinearNeed { dx: false, dw: true, db: false })?;
        let s = lora.scale();
        let missing = || Error::arg("wan_dit backward", "LoRA gradient missing");
        let da = scale(&ga.dw.ok_or_else(missing)?.to_dtype(m.a.dtype())?, s)?;
        let db = scale(&gb.dw.ok_or_else(missing)?.to_dtype(m.b.dtype())?, s)?;
        acc(&mut self.lora_grads[2 * mi], da)?;
        acc(&mut self.lora_grads[2 * mi + 1], db)
    }
}

fn acc(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(s) => add(&s, &g)?,
        None => g,
    });
    Ok(())
}

impl WanDit {
    /// Gradients of `L` for every parameter given `d_velocity = dL/dvelocity` (shape of the forward
    /// output) and the tape of the [`forward_train`](Self::forward_train) call that produced the velocity.
    pub fn backward(&self, tape: &Tape, d_velocity: &Tensor) -> Result<Grads> {
        self.backward_for(tape, d_velocity, GradRequest::default())
    }

    /// [`backward`](Self::backward) computing only what `req` asks for (e.g. LoRA training: the adapters'
    /// gradients and nothing of the frozen base).
    pub fn backward_for(&self, tape: &Tape, d_velocity: &Tensor, req: GradRequest<'_>) -> Result<Grads> {
        let cfg = &self.cfg;
        let geo = tape.geo;
        let (b, d, eps) = (geo.b, cfg.inner_dim(), cfg.eps);
        let [f, h, w] = geo.fhw;
        let want = [b, cfg.out_dim(), f, h, w];
        if d_velocity.shape() != want {
            return Err(Error::shape(
                "wan_dit backward",
                format!("d_velocity has shape {:?}; the forward output was {want:?}", d_velocity.shape()),
            ));
        }
        if tape.blocks.len() != self.idx.blocks.len() {
            return Err(Error::arg(
                "wan_dit backward",
                format!("the tape holds {} blocks, the model {}", tape.blocks.len(), self.idx.blocks.len()),
            ));
        }
        let ix = &self.idx;
        let names = self.names();
        let want: Vec<bool> = names.iter().map(|n| req.params.is_none_or(|p| p.contains(n))).collect();
        let mut adapter = vec![None; names.len()];
        if let Some(lora) = req.lora {
            for (mi, m) in lora.modules.iter().enumerate() {
                let wname = format!("{}.weight", m.name);
                let i = names.iter().position(|n| *n == wname).ok_or_else(|| Error::MissingKey(wname.clone()))?;
                adapter[i] = Some(mi);
            }
        }
        let n_lora = req.lora.map_or(0, |l| 2 * l.modules.len());
        let mut g =
            Slots { grads: vec![None; names.len()], want, adapter, lora: req.lora, lora_grads: vec![None; n_lora] };
        let want_inputs = tape.opts.input_grads;
        // The time MLP and the text embedder only matter for their own parameters (and the inputs).
        let need_time = [ix.time_proj, ix.time2, ix.time1].iter().any(|&l| g.needs(l));
        let need_text = want_inputs || [ix.text1, ix.text2].iter().any(|&l| g.needs(l));

        // 9–8. unpatchify, head
        let d_out = patchify_output(d_velocity, cfg.out_dim(), cfg.patch_size, geo.grid)?;
        let hs = &tape.head;
        let dy = g.lin_dx(ix.proj_out, &hs.y, self.p(ix.proj_out.w), &d_out)?;
        let mb = modulate_backward(&hs.n, &chunk(&hs.hm, 0)?, &chunk(&hs.hm, 1)?, &dy)?;
        let mut dx = layer_norm_backward(&hs.x, None, false, eps, &mb.dx)?.dx;
        let d_hm = cat(&[&mb.dshift, &mb.dscale], 1)?;
        g.set(ix.head_table, sum_to_shape(&d_hm, &[1, 2, d])?);
        let mut d_temb = sum_to_shape(&d_hm, &[b, 1, d])?.reshape(&[b, d])?;

        // 7. blocks in reverse
        let bctx = BlockCtx { geo, rope: &tape.rope, c: &tape.c, e0: &tape.e0 };
        let mut d_e0: Option<Tensor> = None;
        let mut dc: Option<Tensor> = None;
        for (i, bt) in tape.blocks.iter().enumerate().rev() {
            let recomputed;
            let saved: &BlockSaved = match bt {
                BlockTape::Full(s) => s,
                BlockTape::Input(x) => {
                    recomputed = self
                        .block(i, x, &bctx, true)?
                        .1
                        .ok_or_else(|| Error::arg("wan_dit backward", "block recomputation kept no activations"))?;
                    &recomputed
                }
            };
            let (dx_in, d_mod, dc_i) = self.block_backward(i, saved, &bctx, dx, &mut g, need_text)?;
            dx = dx_in;
            g.set(ix.blocks[i].table, sum_to_shape(&d_mod, &[1, 6, d])?);
            if need_time {
                acc(&mut d_e0, d_mod)?;
            }
            if let Some(dc_i) = dc_i {
                acc(&mut dc, dc_i)?;
            }
        }

        // 4–2. shared modulation projection, time MLP
        let cs = &tape.cond;
        if need_time {
            if let Some(d_e0) = d_e0 {
                let d_flat = d_e0.reshape(&[b, 6 * d])?;
                let d_st = g.lin_dx(ix.time_proj, &cs.st, self.p(ix.time_proj.w), &d_flat)?;
                d_temb = add(&d_temb, &silu_backward(&cs.temb, &d_st)?)?;
            } else {
                // No blocks: time_proj is unused and its gradient is zero.
                let z = |i: usize| Tensor::zeros(self.p(i).shape(), d_temb.dtype(), d_temb.device());
                g.set(ix.time_proj.w, z(ix.time_proj.w)?);
                g.set(ix.time_proj.b, z(ix.time_proj.b)?);
            }
            let d_s1 = g.lin_dx(ix.time2, &cs.s1, self.p(ix.time2.w), &d_temb)?;
            let d_t1 = silu_backward(&cs.t1, &d_s1)?;
            g.lin(ix.time1, &cs.sinus, self.p(ix.time1.w), &d_t1, false)?;
        }

        // 5. text embedder (gradients from every block's cross-attention k/v)
        let mut context = None;
        if need_text {
            let dc = match dc {
                Some(dc) => dc,
                None => Tensor::zeros(tape.c.shape(), d_temb.dtype(), d_temb.device())?,
            };
            let d_g1 = g.lin_dx(ix.text2, &cs.g1, self.p(ix.text2.w), &dc)?;
            let d_c1 = gelu_tanh_backward(&cs.c1, &d_g1)?;
            context = g.lin(ix.text1, &cs.ctx_in, self.p(ix.text1.w), &d_c1, want_inputs)?;
        }

        // 1. patch embedding
        let mut x_t = None;
        if want_inputs || g.needs(ix.patch) {
            let wp = self.p(ix.patch.w);
            let wp2 = wp.reshape(&[d, cfg.in_channels * cfg.patch_volume()])?;
            let dp = g.lin(ix.patch, &tape.patches, &wp2, &dx, want_inputs)?;
            if let Some(gw) = g.grads[ix.patch.w].take() {
                g.grads[ix.patch.w] = Some(gw.reshape(wp.shape())?);
            }
            x_t = dp.map(|dp| unpatchify_input(&dp, cfg.in_channels, cfg.patch_size, geo.grid)).transpose()?;
        }

        let mut params = BTreeMap::new();
        for ((name, grad), wanted) in names.iter().zip(g.grads).zip(&g.want) {
            match grad {
                Some(t) => {
                    params.insert(name.clone(), t);
                }
                None if *wanted => return Err(Error::arg("wan_dit backward", format!("no gradient for {name}"))),
                None => {}
            }
        }
        let lora = g
            .lora_grads
            .into_iter()
            .map(|t| t.ok_or_else(|| Error::arg("wan_dit backward", "a LoRA layer received no gradient")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Grads { params, lora, x_t, context })
    }

    /// Backward of block `i`: returns `(dx_in, d_mod [B, 6, D], d_c [B, Lt, D] when need_c)` and fills
    /// the block's parameter gradients (except its modulation table, which the caller sums from
    /// `d_mod`).
    fn block_backward(
        &self,
        i: usize,
        s: &BlockSaved,
        ctx: &BlockCtx<'_>,
        dx: Tensor,
        g: &mut Slots<'_>,
        need_c: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let bi = &self.idx.blocks[i];
        let (b, l, lt, d, eps) = (ctx.geo.b, ctx.geo.l, ctx.geo.lt, self.cfg.inner_dim(), self.cfg.eps);
        let modv = &s.modv;

        // Each sub-block's gradient temporaries are dropped as soon as the next one no longer needs them (a
        // Rust binding would otherwise live to the end of this function): at the 1.3B model's 32,760 tokens
        // the FFN's dg and dh alone are 2.2 GB of f32.

        // FFN: x3 = x2 + f·gate2
        let ff = &s.ff;
        let (dx2, m2, dgate2) = {
            let (df, dgate2) = mul_backward(&ff.f, &chunk(modv, 5)?, &dx)?;
            let dg = g.lin_dx(bi.ffn2, &ff.g, self.p(bi.ffn2.w), &df)?;
            drop(df);
            let dh = gelu_tanh_backward_owned(&ff.h, dg)?;
            let dy = g.lin_dx(bi.ffn1, &ff.y, self.p(bi.ffn1.w), &dh)?;
            drop(dh);
            let m2 = modulate_backward(&ff.n, &chunk(modv, 3)?, &chunk(modv, 4)?, &dy)?;
            drop(dy);
            let dx2 = add(&dx, &layer_norm_backward(&ff.x, None, false, eps, &m2.dx)?.dx)?;
            (dx2, ModShiftScale { dshift: m2.dshift, dscale: m2.dscale }, dgate2)
        };
        drop(dx);

        // Cross-attention: x2 = x1 + to_out(attn(q(norm2(x1)), k(c), v(c)))
        let ca = &s.ca;
        let a2 = &bi.attn2;
        let (dx1, dc) = {
            let d_o = g.lin_dx(a2.o, &ca.o, self.p(a2.o.w), &dx2)?;
            let ab = attention_backward(&ca.q, &ca.k, &ca.v, &ca.att.out, &ca.att.lse, &self.heads(&d_o, b, l)?, None)?;
            drop(d_o);
            let AttentionGrads { dq, dk, dv } = ab;
            let rq = rms_norm_backward(&ca.q_lin, self.p(a2.norm_q), eps, &dq.reshape(&[b, l, d])?)?;
            drop(dq);
            let rk = rms_norm_backward(&ca.k_lin, self.p(a2.norm_k), eps, &dk.reshape(&[b, lt, d])?)?;
            g.set(a2.norm_q, rq.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_q gradient missing"))?);
            g.set(a2.norm_k, rk.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_k gradient missing"))?);
            let dy2 = g.lin_dx(a2.q, &ca.y, self.p(a2.q.w), &rq.dx)?;
            drop(rq.dx);
            let dck = g.lin(a2.k, ctx.c, self.p(a2.k.w), &rk.dx, need_c)?;
            let dcv = g.lin(a2.v, ctx.c, self.p(a2.v.w), &dv.reshape(&[b, lt, d])?, need_c)?;
            let dc = match (dck, dcv) {
                (Some(k), Some(v)) => Some(add(&k, &v)?),
                _ => None,
            };
            let dx_norm2 = match bi.norm2 {
                Some((wi, bi_)) => {
                    let ng = layer_norm_backward(&ca.x, Some(self.p(wi)), true, eps, &dy2)?;
                    g.set(
                        wi,
                        ng.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm2 weight gradient missing"))?,
                    );
                    g.set(bi_, ng.dbias.ok_or_else(|| Error::arg("wan_dit backward", "norm2 bias gradient missing"))?);
                    ng.dx
                }
                None => dy2,
            };
            (add(&dx2, &dx_norm2)?, dc)
        };
        drop(dx2);

        // Self-attention: x1 = x0 + to_out(attn(rope(rms(q)), rope(rms(k)), v))·gate1
        let sa = &s.sa;
        let a1 = &bi.attn1;
        let (dx0, m1, dgate1) = {
            let (da, dgate1) = mul_backward(&sa.a, &chunk(modv, 2)?, &dx1)?;
            let d_o = g.lin_dx(a1.o, &sa.o, self.p(a1.o.w), &da)?;
            drop(da);
            let ab = attention_backward(&sa.q, &sa.k, &sa.v, &sa.att.out, &sa.att.lse, &self.heads(&d_o, b, l)?, None)?;
            drop(d_o);
            let AttentionGrads { dq, dk, dv } = ab;
            let dqn = rope_backward(&dq, ctx.rope)?.reshape(&[b, l, d])?;
            drop(dq);
            let dkn = rope_backward(&dk, ctx.rope)?.reshape(&[b, l, d])?;
            drop(dk);
            let rq = rms_norm_backward(&sa.q_lin, self.p(a1.norm_q), eps, &dqn)?;
            drop(dqn);
            let rk = rms_norm_backward(&sa.k_lin, self.p(a1.norm_k), eps, &dkn)?;
            drop(dkn);
            g.set(a1.norm_q, rq.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_q gradient missing"))?);
            g.set(a1.norm_k, rk.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_k gradient missing"))?);
            let dyq = g.lin_dx(a1.q, &sa.y, self.p(a1.q.w), &rq.dx)?;
            drop(rq.dx);
            let dyk = g.lin_dx(a1.k, &sa.y, self.p(a1.k.w), &rk.dx)?;
            drop(rk.dx);
            let dyv = g.lin_dx(a1.v, &sa.y, self.p(a1.v.w), &dv.reshape(&[b, l, d])?)?;
            drop(dv);
            let dy1 = add(&add(&dyq, &dyk)?, &dyv)?;
            drop((dyq, dyk, dyv));
            let m1 = modulate_backward(&sa.n, &chunk(modv, 0)?, &chunk(modv, 1)?, &dy1)?;
            drop(dy1);
            let dx0 = add(&dx1, &layer_norm_backward(&sa.x, None, false, eps, &m1.dx)?.dx)?;
            (dx0, ModShiftScale { dshift: m1.dshift, dscale: m1.dscale }, dgate1)
        };

        let d_mod = cat(&[&m1.dshift, &m1.dscale, &dgate1, &m2.dshift, &m2.dscale, &dgate2], 1)?;
        Ok((dx0, d_mod, dc))
    }
}

/// The shift and scale gradients of a modulation (its `dx` is consumed where it is computed).
struct ModShiftScale {
    dshift: Tensor,
    dscale: Tensor,
}
