//! Running a `wan_dit` reference fixture (FIXTURES.md): forward, loss and every gradient.

use std::collections::{BTreeMap, BTreeSet};

use super::{WanDit, WanDitConfig};
use crate::error::Result;
use crate::io::wan_keys::{diffusers_to_original, original_to_diffusers};
use crate::ops::elementwise::sub;
use crate::ops::loss::{mse_loss, mse_loss_backward};
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare, compare_slices, rel_error};

/// The gradients of one display group: per-tensor checks, and all values (for the
/// half-precision group metric).
#[derive(Default)]
struct Group {
    checks: Vec<Check>,
    got: Vec<f64>,
    want: Vec<f64>,
}

/// In f32 a gradient tensor's error is relative to the larger of its own largest reference magnitude and
/// this fraction of its group's largest.
const NEAR_ZERO_FLOOR: f64 = 1e-2;

/// Display group of a gradient, from the fixture's own (diffusers or original) name.
fn group(name: &str, original: bool) -> String {
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or("");
    match first {
        "blocks" => format!("g.blocks.{}", parts.next().unwrap_or("?")),
        "scale_shift_table" | "proj_out" if !original => "g.proj_out/scale_shift_table".into(),
        "condition_embedder" => format!("g.condition_embedder.{}", parts.next().unwrap_or("?")),
        "time_embedding" | "time_projection" => "g.time_embedding/time_projection".into(),
        other => format!("g.{other}"),
    }
}

/// Runs a `wan_dit` fixture: loads `w.*` (diffusers or original layout), compares the velocity
/// for `in.x_t`, `in.timestep`, `in.context` with `out.velocity` (absolute limit, default 1e-4),
/// the flow-matching loss `mean((v − (noise − x0))²)` with `out.loss`, and every reference
/// gradient `g.*` (relative limit, default 1e-3), merged into groups per module and block.
///
/// Some gradients are nearly zero by construction (e.g. cross-attention `to_k.bias`, whose softmax
/// part cancels exactly and which only the RMSNorm makes non-zero) and come out ~1e-3 of the
/// block's scale: what remains of them is the rounding of the large terms that cancel, so their
/// error on their own scale measures the order of summation, not correctness. In f32 each gradient
/// tensor is judged on its max abs error over the larger of its own largest reference magnitude
/// and 1% of its group's largest, and a group reports its worst tensor (the CUDA path's f32
/// attention backward sums in another order than the CPU's: `to_k.bias` of the tiny fixture comes
/// out at 1.2e-3 on its own scale, 4e-8 absolute). In bf16 a group is judged relative to the
/// group's largest reference gradient, which is below what bf16 inputs resolve on their own scale.
///
/// A parameter without a reference gradient, or a reference gradient for no parameter, is an
/// error.
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    let cfg = WanDitConfig::from_json(&fx.config)?;
    let original = fx.layout == "original";
    let half = opts.dtype != crate::dtype::DType::F32;
    let model = WanDit::load(cfg, &fx.weights(), opts.dtype)?.to_device(fx.device)?;
    let (x_t, t, ctx) = (fx.input("x_t")?, fx.input("timestep")?, fx.input("context")?);
    let (v, tape) = model.forward_train(&x_t, &t, &ctx)?;
    let mut checks =
        vec![compare("out.velocity", &v, &fx.output("velocity")?, opts.limit(Limit::Abs(fx.abs_limit(1e-4))))?];

    let target = sub(&fx.input("noise")?, &fx.input("x0")?)?;
    let loss = mse_loss(&v, &target)?;
    let want_loss = fx.output("loss")?.to_vec_f64()?;
    if want_loss.len() != 1 {
        return Err(fx.error(format!("out.loss has {} elements; expected 1", want_loss.len())));
    }
    checks.push(compare_slices("out.loss", &[loss], &want_loss, opts.limit(Limit::Abs(fx.abs_limit(1e-4)))));

    let grads = model.backward(&tape, &mse_loss_backward(&v, &target, 1.0)?)?;
    let grad_limit = opts.limit(Limit::Rel(fx.grad_rel_limit(1e-3)));
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for key in fx.keys_with_prefix("g.") {
        let fname = &key[2..];
        let dname = if original {
            original_to_diffusers(fname)
                .ok_or_else(|| fx.error(format!("reference gradient {key:?} names no Wan DiT parameter")))?
        } else {
            fname.to_string()
        };
        let ours = grads
            .params
            .get(&dname)
            .ok_or_else(|| fx.error(format!("reference gradient {key:?} names no parameter of this config")))?;
        let want = fx.tensor(&key)?;
        let c = compare(&key, ours, &want, grad_limit)?;
        let e = groups.entry(group(fname, original)).or_default();
        e.checks.push(c);
        if half {
            e.got.extend(ours.to_vec_f64()?);
            e.want.extend(want.to_vec_f64()?);
        }
        seen.insert(dname);
    }
    if let Some(missing) = grads.params.keys().find(|k| !seen.contains(*k)) {
        let spelled =
            if original { diffusers_to_original(missing).unwrap_or_else(|| missing.clone()) } else { missing.clone() };
        return Err(fx.error(format!("no reference gradient g.{spelled} for parameter {missing}")));
    }
    // Forward order: patch embedding, conditioning, blocks (numerically), head.
    let rank = |n: &str| match n.strip_prefix("g.blocks.").and_then(|s| s.parse::<usize>().ok()) {
        Some(i) => (1, i),
        None if n.starts_with("g.patch_embedding") => (0, 0),
        None if n.contains("proj_out") || n.starts_with("g.head") => (2, 0),
        None => (0, 1),
    };
    let mut names: Vec<&String> = groups.keys().collect();
    names.sort_by_key(|n| (rank(n), (*n).clone()));
    for n in names {
        let gr = &groups[n];
        if half {
            checks.push(compare_slices(n, &gr.got, &gr.want, grad_limit));
        } else {
            let floor = NEAR_ZERO_FLOOR * gr.checks.iter().fold(0f64, |m, c| m.max(c.scale));
            let judged: Vec<Check> = gr
                .checks
                .iter()
                .map(|c| Check { max_rel: rel_error(c.max_abs, c.scale.max(floor)), ..c.clone() })
                .collect();
            checks.extend(Check::merge(n, &judged));
        }
    }
    Ok(checks)
}
