//! The DiT backward pass (WAN_SPEC §6), written by hand from the op backwards of
//! [`crate::ops`]: output head → blocks in reverse (each: FFN, cross-attention, self-attention) →
//! modulation plumbing and time MLP → text embedder → patch embedding.
//!
//! Attention gradients use the tiled kernel with the saved log-sum-exp, so no `L × L` buffer
//! exists in either direction.

use std::collections::BTreeMap;

use super::WanDit;
use super::forward::{BlockCtx, BlockSaved, BlockTape, Tape, chunk, patchify_output, unpatchify_input};
use crate::error::{Error, Result};
use crate::ops::activation::{gelu_tanh_backward, silu_backward};
use crate::ops::attention::attention_backward;
use crate::ops::elementwise::{add, modulate_backward, mul_backward, sum_to_shape};
use crate::ops::linear::{LinearGrads, linear_backward};
use crate::ops::norm::{layer_norm_backward, rms_norm_backward};
use crate::ops::rope::rope_backward;
use crate::ops::shape::cat;
use crate::tensor::Tensor;

/// Gradients of a loss with respect to the DiT's parameters (and optionally its inputs).
#[derive(Debug, Clone)]
pub struct Grads {
    /// `dL/dθ` for every parameter, keyed by diffusers name, in the compute dtype (f32, or f64
    /// for an f64 model).
    pub params: BTreeMap<String, Tensor>,
    /// `dL/dx_t [B, C, F, H, W]` when [`TrainOptions::input_grads`](super::TrainOptions) was set.
    pub x_t: Option<Tensor>,
    /// `dL/dcontext [B, Lt, text_dim]` when [`TrainOptions::input_grads`](super::TrainOptions)
    /// was set.
    pub context: Option<Tensor>,
}

/// Index-aligned gradient slots.
struct Slots(Vec<Option<Tensor>>);

impl Slots {
    fn set(&mut self, i: usize, g: Tensor) {
        self.0[i] = Some(g);
    }

    fn lin(&mut self, l: super::Lin, g: LinearGrads) -> Result<Tensor> {
        self.set(l.w, g.dw);
        self.set(l.b, g.db.ok_or_else(|| Error::arg("wan_dit backward", "linear bias gradient missing"))?);
        g.dx.ok_or_else(|| Error::arg("wan_dit backward", "linear input gradient missing"))
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
    /// Gradients of `L` given `d_velocity = dL/dvelocity` (shape of the forward output) and the
    /// tape of the [`forward_train`](Self::forward_train) call that produced the velocity.
    pub fn backward(&self, tape: &Tape, d_velocity: &Tensor) -> Result<Grads> {
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
        let mut g = Slots(vec![None; self.names().len()]);

        // 9–8. unpatchify, head
        let d_out = patchify_output(d_velocity, cfg.out_dim(), cfg.patch_size, geo.grid)?;
        let hs = &tape.head;
        let dy = g.lin(ix.proj_out, linear_backward(&hs.y, self.p(ix.proj_out.w), true, &d_out, true)?)?;
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
            let (dx_in, d_mod, dc_i) = self.block_backward(i, saved, &bctx, dx, &mut g)?;
            dx = dx_in;
            g.set(ix.blocks[i].table, sum_to_shape(&d_mod, &[1, 6, d])?);
            acc(&mut d_e0, d_mod)?;
            acc(&mut dc, dc_i)?;
        }

        // 4–2. shared modulation projection, time MLP
        let cs = &tape.cond;
        if let Some(d_e0) = d_e0 {
            let d_flat = d_e0.reshape(&[b, 6 * d])?;
            let d_st = g.lin(ix.time_proj, linear_backward(&cs.st, self.p(ix.time_proj.w), true, &d_flat, true)?)?;
            d_temb = add(&d_temb, &silu_backward(&cs.temb, &d_st)?)?;
        } else {
            // No blocks: time_proj is unused and its gradient is zero.
            g.set(ix.time_proj.w, Tensor::zeros(self.p(ix.time_proj.w).shape(), d_temb.dtype(), d_temb.device())?);
            g.set(ix.time_proj.b, Tensor::zeros(self.p(ix.time_proj.b).shape(), d_temb.dtype(), d_temb.device())?);
        }
        let d_s1 = g.lin(ix.time2, linear_backward(&cs.s1, self.p(ix.time2.w), true, &d_temb, true)?)?;
        let d_t1 = silu_backward(&cs.t1, &d_s1)?;
        let lt1 = linear_backward(&cs.sinus, self.p(ix.time1.w), true, &d_t1, false)?;
        g.set(ix.time1.w, lt1.dw);
        g.set(ix.time1.b, lt1.db.ok_or_else(|| Error::arg("wan_dit backward", "time bias gradient missing"))?);

        // 5. text embedder (gradients from every block's cross-attention k/v)
        let dc = match dc {
            Some(dc) => dc,
            None => Tensor::zeros(tape.c.shape(), d_temb.dtype(), d_temb.device())?,
        };
        let d_g1 = g.lin(ix.text2, linear_backward(&cs.g1, self.p(ix.text2.w), true, &dc, true)?)?;
        let d_c1 = gelu_tanh_backward(&cs.c1, &d_g1)?;
        let want_inputs = tape.opts.input_grads;
        let lx1 = linear_backward(&cs.ctx_in, self.p(ix.text1.w), true, &d_c1, want_inputs)?;
        g.set(ix.text1.w, lx1.dw);
        g.set(ix.text1.b, lx1.db.ok_or_else(|| Error::arg("wan_dit backward", "text bias gradient missing"))?);

        // 1. patch embedding
        let wp = self.p(ix.patch.w);
        let lp = linear_backward(
            &tape.patches,
            &wp.reshape(&[d, cfg.in_channels * cfg.patch_volume()])?,
            true,
            &dx,
            want_inputs,
        )?;
        g.set(ix.patch.w, lp.dw.reshape(wp.shape())?);
        g.set(ix.patch.b, lp.db.ok_or_else(|| Error::arg("wan_dit backward", "patch bias gradient missing"))?);
        let x_t = lp.dx.map(|dp| unpatchify_input(&dp, cfg.in_channels, cfg.patch_size, geo.grid)).transpose()?;

        Ok(Grads { params: self.grads_by_name(g.0)?, x_t, context: lx1.dx })
    }

    /// Backward of block `i`: returns `(dx_in, d_mod [B, 6, D], d_c [B, Lt, D])` and fills the
    /// block's parameter gradients (except its modulation table, which the caller sums from
    /// `d_mod`).
    fn block_backward(
        &self,
        i: usize,
        s: &BlockSaved,
        ctx: &BlockCtx<'_>,
        dx: Tensor,
        g: &mut Slots,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let bi = &self.idx.blocks[i];
        let (b, l, lt, d, eps) = (ctx.geo.b, ctx.geo.l, ctx.geo.lt, self.cfg.inner_dim(), self.cfg.eps);
        let modv = &s.modv;

        // FFN: x3 = x2 + f·gate2
        let ff = &s.ff;
        let (df, dgate2) = mul_backward(&ff.f, &chunk(modv, 5)?, &dx)?;
        let dg = g.lin(bi.ffn2, linear_backward(&ff.g, self.p(bi.ffn2.w), true, &df, true)?)?;
        let dh = gelu_tanh_backward(&ff.h, &dg)?;
        let dy = g.lin(bi.ffn1, linear_backward(&ff.y, self.p(bi.ffn1.w), true, &dh, true)?)?;
        let m2 = modulate_backward(&ff.n, &chunk(modv, 3)?, &chunk(modv, 4)?, &dy)?;
        let dx2 = add(&dx, &layer_norm_backward(&ff.x, None, false, eps, &m2.dx)?.dx)?;

        // Cross-attention: x2 = x1 + to_out(attn(q(norm2(x1)), k(c), v(c)))
        let ca = &s.ca;
        let a2 = &bi.attn2;
        let d_o = g.lin(a2.o, linear_backward(&ca.o, self.p(a2.o.w), true, &dx2, true)?)?;
        let ab = attention_backward(&ca.q, &ca.k, &ca.v, &ca.att.out, &ca.att.lse, &self.heads(&d_o, b, l)?, None)?;
        let rq = rms_norm_backward(&ca.q_lin, self.p(a2.norm_q), eps, &ab.dq.reshape(&[b, l, d])?)?;
        let rk = rms_norm_backward(&ca.k_lin, self.p(a2.norm_k), eps, &ab.dk.reshape(&[b, lt, d])?)?;
        g.set(a2.norm_q, rq.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_q gradient missing"))?);
        g.set(a2.norm_k, rk.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_k gradient missing"))?);
        let dy2 = g.lin(a2.q, linear_backward(&ca.y, self.p(a2.q.w), true, &rq.dx, true)?)?;
        let dck = g.lin(a2.k, linear_backward(ctx.c, self.p(a2.k.w), true, &rk.dx, true)?)?;
        let dcv = g.lin(a2.v, linear_backward(ctx.c, self.p(a2.v.w), true, &ab.dv.reshape(&[b, lt, d])?, true)?)?;
        let dc = add(&dck, &dcv)?;
        let dx_norm2 = match bi.norm2 {
            Some((wi, bi_)) => {
                let ng = layer_norm_backward(&ca.x, Some(self.p(wi)), true, eps, &dy2)?;
                g.set(wi, ng.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm2 weight gradient missing"))?);
                g.set(bi_, ng.dbias.ok_or_else(|| Error::arg("wan_dit backward", "norm2 bias gradient missing"))?);
                ng.dx
            }
            None => dy2,
        };
        let dx1 = add(&dx2, &dx_norm2)?;

        // Self-attention: x1 = x0 + to_out(attn(rope(rms(q)), rope(rms(k)), v))·gate1
        let sa = &s.sa;
        let a1 = &bi.attn1;
        let (da, dgate1) = mul_backward(&sa.a, &chunk(modv, 2)?, &dx1)?;
        let d_o = g.lin(a1.o, linear_backward(&sa.o, self.p(a1.o.w), true, &da, true)?)?;
        let ab = attention_backward(&sa.q, &sa.k, &sa.v, &sa.att.out, &sa.att.lse, &self.heads(&d_o, b, l)?, None)?;
        let dqn = rope_backward(&ab.dq, ctx.rope)?.reshape(&[b, l, d])?;
        let dkn = rope_backward(&ab.dk, ctx.rope)?.reshape(&[b, l, d])?;
        let rq = rms_norm_backward(&sa.q_lin, self.p(a1.norm_q), eps, &dqn)?;
        let rk = rms_norm_backward(&sa.k_lin, self.p(a1.norm_k), eps, &dkn)?;
        g.set(a1.norm_q, rq.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_q gradient missing"))?);
        g.set(a1.norm_k, rk.dweight.ok_or_else(|| Error::arg("wan_dit backward", "norm_k gradient missing"))?);
        let dyq = g.lin(a1.q, linear_backward(&sa.y, self.p(a1.q.w), true, &rq.dx, true)?)?;
        let dyk = g.lin(a1.k, linear_backward(&sa.y, self.p(a1.k.w), true, &rk.dx, true)?)?;
        let dyv = g.lin(a1.v, linear_backward(&sa.y, self.p(a1.v.w), true, &ab.dv.reshape(&[b, l, d])?, true)?)?;
        let dy1 = add(&add(&dyq, &dyk)?, &dyv)?;
        let m1 = modulate_backward(&sa.n, &chunk(modv, 0)?, &chunk(modv, 1)?, &dy1)?;
        let dx0 = add(&dx1, &layer_norm_backward(&sa.x, None, false, eps, &m1.dx)?.dx)?;

        let d_mod = cat(&[&m1.dshift, &m1.dscale, &dgate1, &m2.dshift, &m2.dscale, &dgate2], 1)?;
        Ok((dx0, d_mod, dc))
    }
}
