//! CUDA implementations of the ops, called from `crate::ops::*` when their inputs live on a CUDA device.
//! Shapes are validated by the CPU entry points before they dispatch here (the same checks apply); these
//! functions check devices and dtypes and launch kernels. Conventions match the CPU ops: forward results in the
//! promoted dtype of the inputs, gradients in f32. f64 tensors are refused (device compute is f32).

use std::sync::Arc;

use super::device::CudaDevice;
use super::launch::{ConvGeo, GemmOperand, Strided, cfg_2d, cfg_elems, cfg_rows, dt, gemm, launch};
use super::storage::CudaStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::attention::{AttentionGrads, AttentionOutput};
use crate::ops::linear::{LinearGrads, LinearNeed};
use crate::ops::norm::NormGrads;
use crate::tensor::{Device, Tensor};

pub(crate) use super::device::device;

/// The device shared by `ts` (all must be CUDA tensors of one ordinal, none f64).
fn common_device(ts: &[&Tensor], op: &'static str) -> Result<Arc<CudaDevice>> {
    let first = ts.first().map(|t| t.device()).unwrap_or(Device::Cpu);
    let Device::Cuda(ord) = first else {
        return Err(Error::arg(op, "internal: CUDA op called without CUDA inputs"));
    };
    for t in ts {
        if t.device() != first {
            return Err(Error::DeviceMismatch { op, a: first, b: t.device() });
        }
        if t.dtype() == DType::F64 {
            return Err(Error::DType {
                op,
                dtype: DType::F64,
                msg: "CUDA ops compute in f32: keep f64 tensors on the CPU".into(),
            });
        }
    }
    device(ord)
}

/// Device address of the first element of a contiguous CUDA tensor.
fn ptr(t: &Tensor) -> u64 {
    let s = t.cuda_storage().expect("CUDA tensor (checked by common_device)");
    s.ptr_at(t.layout().offset())
}

/// A contiguous version of `t` (a device copy when it is a strided view).
fn cont(t: &Tensor) -> Result<Tensor> {
    t.try_contiguous()
}

/// A new uninitialised device tensor.
fn empty(dev: &Arc<CudaDevice>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_cuda(CudaStorage::alloc(dev, dtype, n)?, shape))
}

fn out_dtype(ts: &[&Tensor]) -> DType {
    DType::promote_all(&ts.iter().map(|t| t.dtype()).collect::<Vec<_>>())
}

fn i64_(v: usize) -> i64 {
    v as i64
}

/// A tensor of `value` on CUDA device `ordinal`.
pub(crate) fn full(ordinal: usize, shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
    let dev = device(ordinal)?;
    let y = empty(&dev, shape, dtype)?;
    let n = y.numel();
    if n > 0 {
        launch!(dev, "elementwise.cu", "fill", cfg_elems(n); ptr(&y), dt(dtype), value as f32, i64_(n))?;
    }
    Ok(y)
}

/// Contiguous copy of any view, converted to `dtype`.
pub(crate) fn copy_cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let Device::Cuda(ord) = x.device() else {
        return Err(Error::arg("copy_cast", "internal: not a CUDA tensor"));
    };
    let dev = device(ord)?;
    let y = empty(&dev, x.shape(), dtype)?;
    let n = y.numel();
    if n > 0 {
        let xs = Strided::of(x, x.shape(), "copy")?;
        let base = x.cuda_storage().expect("CUDA tensor").ptr_at(0);
        launch!(dev, "elementwise.cu", "copy_strided", cfg_elems(n); base, dt(x.dtype()), xs, ptr(&y), dt(dtype), i64_(n))?;
    }
    Ok(y)
}

/// Converts `t` (contiguous) to `dtype` if needed.
fn as_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype { cont(t) } else { copy_cast(t, dtype) }
}

// ------------------------------------------------------------------------------------------------
// elementwise

/// `a (op) b` with broadcasting; op 0 add, 1 sub, 2 mul.
pub(crate) fn binary(a: &Tensor, b: &Tensor, shape: &[usize], op: i32, name: &'static str) -> Result<Tensor> {
    let dev = common_device(&[a, b], name)?;
    let y = empty(&dev, shape, out_dtype(&[a, b]))?;
    let n = y.numel();
    if n > 0 {
        let (sa, sb) = (Strided::of(a, shape, name)?, Strided::of(b, shape, name)?);
        let pa = a.cuda_storage().expect("CUDA").ptr_at(0);
        let pb = b.cuda_storage().expect("CUDA").ptr_at(0);
        launch!(dev, "elementwise.cu", "binary_bcast", cfg_elems(n);
            pa, dt(a.dtype()), sa, pb, dt(b.dtype()), sb, ptr(&y), dt(y.dtype()), i64_(n), op)?;
    }
    Ok(y)
}

/// `s·x`.
pub(crate) fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    let dev = common_device(&[x], "scale")?;
    let x = cont(x)?;
    let y = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    if n > 0 {
        launch!(dev, "elementwise.cu", "scale_kernel", cfg_elems(n); ptr(&x), dt(x.dtype()), ptr(&y), dt(y.dtype()), s as f32, i64_(n))?;
    }
    Ok(y)
}

/// A pointwise activation of `act_fwd` / `act_bwd` in elementwise.cu.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Act {
    Silu,
    GeluTanh,
    GeluErf,
    /// `min(max(x, lo), hi)` (infinite bounds allowed).
    Clamp(f64, f64),
}

impl Act {
    /// (kernel `kind`, lo, hi).
    fn args(self) -> (i32, f32, f32) {
        match self {
            Act::Silu => (0, 0.0, 0.0),
            Act::GeluTanh => (1, 0.0, 0.0),
            Act::GeluErf => (2, 0.0, 0.0),
            Act::Clamp(lo, hi) => (3, lo as f32, hi as f32),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::GeluTanh => "gelu_tanh",
            Act::GeluErf => "gelu_erf",
            Act::Clamp(..) => "clamp",
        }
    }
}

/// Pointwise activation forward (result in `x`'s dtype).
pub(crate) fn activation(x: &Tensor, act: Act) -> Result<Tensor> {
    let dev = common_device(&[x], act.name())?;
    let x = cont(x)?;
    let y = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    if n > 0 {
        let (kind, lo, hi) = act.args();
        launch!(dev, "elementwise.cu", "act_fwd", cfg_elems(n);
            ptr(&x), dt(x.dtype()), ptr(&y), dt(y.dtype()), i64_(n), kind, lo, hi)?;
    }
    Ok(y)
}

/// Pointwise activation backward (`dx` in f32).
pub(crate) fn activation_backward(x: &Tensor, dy: &Tensor, act: Act) -> Result<Tensor> {
    activation_backward_to(x, dy, None, act)
}

/// [`activation_backward`] written over `dy` (f32, the sole owner of its dense buffer: checked by the caller).
pub(crate) fn activation_backward_into(x: &Tensor, dy: Tensor, act: Act) -> Result<Tensor> {
    let out = dy.clone();
    activation_backward_to(x, &dy, Some(out), act)
}

fn activation_backward_to(x: &Tensor, dy: &Tensor, out: Option<Tensor>, act: Act) -> Result<Tensor> {
    let dev = common_device(&[x, dy], act.name())?;
    let (x, dy) = (cont(x)?, cont(dy)?);
    let dx = match out {
        Some(o) => o,
        None => empty(&dev, x.shape(), DType::F32)?,
    };
    let n = x.numel();
    if n > 0 {
        let (kind, lo, hi) = act.args();
        launch!(dev, "elementwise.cu", "act_bwd", cfg_elems(n);
            ptr(&x), dt(x.dtype()), ptr(&dy), dt(dy.dtype()), ptr(&dx), dt(DType::F32), i64_(n), kind, lo, hi)?;
    }
    Ok(dx)
}

// ------------------------------------------------------------------------------------------------
// embedding

/// Rows `ids` of `table [V, d]` as `[ids.len(), d]` in the table's dtype (ids checked by the caller).
pub(crate) fn embedding(ids: &[usize], table: &Tensor) -> Result<Tensor> {
    let dev = common_device(&[table], "embedding")?;
    let t = cont(table)?;
    let d = t.shape()[1];
    let y = empty(&dev, &[ids.len(), d], t.dtype())?;
    let n = y.numel();
    if n > 0 {
        let idx = IndexBuffer::upload(&dev, &ids.iter().map(|&i| i as i64).collect::<Vec<_>>())?;
        launch!(dev, "elementwise.cu", "embedding_gather", cfg_elems(n);
            ptr(&t), dt(t.dtype()), idx.ptr(), ptr(&y), dt(y.dtype()), i64_(d), i64_(n))?;
    }
    Ok(y)
}

/// Backward of [`embedding`]: `dtable [V, d]` (f32), each used row the sum of its `dy` rows in row order.
pub(crate) fn embedding_backward(ids: &[usize], vocab: usize, dy: &Tensor) -> Result<Tensor> {
    let dev = common_device(&[dy], "embedding_backward")?;
    let dy = cont(dy)?;
    let d = *dy.shape().last().unwrap_or(&0);
    let dtab = empty(&dev, &[vocab, d], DType::F32)?;
    zero(&dev, &dtab)?;
    let plan = embedding_plan(ids);
    let u = (plan.len() - 1 - ids.len()) / 2;
    let n = u * d;
    if n > 0 {
        let buf = IndexBuffer::upload(&dev, &plan)?;
        launch!(dev, "elementwise.cu", "embedding_scatter", cfg_elems(n);
            ptr(&dy), dt(dy.dtype()), buf.ptr(), i64_(u), ptr(&dtab), i64_(d), i64_(n))?;
    }
    Ok(dtab)
}

/// The `embedding_scatter` plan: `[uniq ids (u) | starts (u + 1) | rows (ids.len())]`, uniq ids ascending,
/// each id's rows ascending.
pub(crate) fn embedding_plan(ids: &[usize]) -> Vec<i64> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&r| (ids[r], r));
    let (mut uniq, mut starts) = (Vec::new(), Vec::new());
    for (j, &r) in order.iter().enumerate() {
        if uniq.last() != Some(&(ids[r] as i64)) {
            uniq.push(ids[r] as i64);
            starts.push(j as i64);
        }
    }
    starts.push(order.len() as i64);
    uniq.into_iter().chain(starts).chain(order.into_iter().map(|r| r as i64)).collect()
}

/// A device array of `i64` (indices for gather/scatter kernels), freed on drop.
struct IndexBuffer {
    /// Keeps the allocation alive while kernels use `ptr`.
    _buf: cudarc::driver::CudaSlice<i64>,
    ptr: u64,
}

impl IndexBuffer {
    fn upload(dev: &Arc<CudaDevice>, v: &[i64]) -> Result<IndexBuffer> {
        use cudarc::driver::DevicePtr as _;
        let buf = if v.is_empty() { dev.stream.alloc_zeros::<i64>(1) } else { dev.stream.clone_htod(v) }
            .map_err(|e| super::device::cuda_err("index upload", e))?;
        let ptr = {
            let (p, _sync) = buf.device_ptr(&dev.stream);
            p
        };
        Ok(IndexBuffer { _buf: buf, ptr })
    }

    fn ptr(&self) -> u64 {
        self.ptr
    }
}

/// Softmax over the last dim.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let dev = common_device(&[x], "softmax")?;
    let x = cont(x)?;
    let d = *x.shape().last().unwrap_or(&1);
    let y = empty(&dev, x.shape(), x.dtype())?;
    let rows = x.numel().checked_div(d).unwrap_or(0);
    if rows > 0 {
        launch!(dev, "softmax.cu", "softmax_fwd", cfg_rows(rows)?; ptr(&x), dt(x.dtype()), ptr(&y), dt(y.dtype()), i64_(d))?;
    }
    Ok(y)
}

/// Backward of softmax from its output.
pub(crate) fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dev = common_device(&[y, dy], "softmax_backward")?;
    let (y, dy) = (cont(y)?, cont(dy)?);
    let d = *y.shape().last().unwrap_or(&1);
    let dx = empty(&dev, y.shape(), DType::F32)?;
    let rows = y.numel().checked_div(d).unwrap_or(0);
    if rows > 0 {
        launch!(dev, "softmax.cu", "softmax_bwd", cfg_rows(rows)?; ptr(&y), dt(y.dtype()), ptr(&dy), dt(dy.dtype()), ptr(&dx), i64_(d))?;
    }
    Ok(dx)
}

/// Column sums of a contiguous `[rows, cols]` tensor, in f32 (two deterministic passes).
pub(crate) fn col_sum(x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let dev = common_device(&[x], "col_sum")?;
    let x = cont(x)?;
    let out = empty(&dev, &[cols], DType::F32)?;
    if cols == 0 {
        return Ok(out);
    }
    if rows == 0 {
        return full(dev.ordinal, &[cols], 0.0, DType::F32);
    }
    let per = 256usize;
    let chunks = rows.div_ceil(per);
    let gx = cols.div_ceil(256);
    if chunks == 1 {
        launch!(dev, "elementwise.cu", "col_sum_partial", cfg_2d(gx, 1, 256)?;
            ptr(&x), dt(x.dtype()), ptr(&out), i64_(rows), i64_(cols), i64_(per))?;
        return Ok(out);
    }
    if chunks > 65535 {
        return Err(Error::arg("col_sum", format!("{rows} rows exceed the supported {} rows", 65535 * per)));
    }
    let part = empty(&dev, &[chunks, cols], DType::F32)?;
    launch!(dev, "elementwise.cu", "col_sum_partial", cfg_2d(gx, chunks, 256)?;
        ptr(&x), dt(x.dtype()), ptr(&part), i64_(rows), i64_(cols), i64_(per))?;
    launch!(dev, "elementwise.cu", "col_sum_partial", cfg_2d(gx, 1, 256)?;
        ptr(&part), dt(DType::F32), ptr(&out), i64_(chunks), i64_(cols), i64_(chunks))?;
    Ok(out)
}

/// adaLN modulation `x·(1+scale)+shift`, `x [B, L, D]`, shift/scale `[B, 1, D]` or `[B, D]`.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, b: usize, l: usize, d: usize) -> Result<Tensor> {
    let dev = common_device(&[x, shift, scale], "modulate")?;
    let (x, sh, sc) = (cont(x)?, cont(shift)?, cont(scale)?);
    let y = empty(&dev, x.shape(), out_dtype(&[&x, &sh, &sc]))?;
    let n = b * l * d;
    if n > 0 {
        launch!(dev, "elementwise.cu", "modulate_fwd", cfg_elems(n);
            ptr(&x), dt(x.dtype()), ptr(&sh), dt(sh.dtype()), ptr(&sc), dt(sc.dtype()), ptr(&y), dt(y.dtype()),
            i64_(l), i64_(d), i64_(n))?;
    }
    Ok(y)
}

/// Backward of [`modulate`]: `(dx, dshift, dscale)` in f32, dshift/dscale shaped like shift/scale.
#[allow(clippy::too_many_arguments)]
pub(crate) fn modulate_backward(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    dy: &Tensor,
    b: usize,
    l: usize,
    d: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = common_device(&[x, shift, scale, dy], "modulate_backward")?;
    let (x, sc, dy) = (cont(x)?, cont(scale)?, cont(dy)?);
    let dx = empty(&dev, x.shape(), DType::F32)?;
    let dshift = empty(&dev, shift.shape(), DType::F32)?;
    let dscale = empty(&dev, scale.shape(), DType::F32)?;
    let n = b * l * d;
    if n > 0 {
        launch!(dev, "elementwise.cu", "modulate_bwd_dx", cfg_elems(n);
            ptr(&dy), dt(dy.dtype()), ptr(&sc), dt(sc.dtype()), ptr(&dx), dt(DType::F32), i64_(l), i64_(d), i64_(n))?;
    }
    if b * d > 0 {
        launch!(dev, "elementwise.cu", "modulate_bwd_params", cfg_2d((b * d).div_ceil(256), 1, 256)?;
            ptr(&x), dt(x.dtype()), ptr(&dy), dt(dy.dtype()), ptr(&dshift), ptr(&dscale), i64_(b), i64_(l), i64_(d))?;
    }
    Ok((dx, dshift, dscale))
}

// ------------------------------------------------------------------------------------------------
// norms

/// Parameter gradients of a last-dim norm from per-row statistics: `(dw, db)` in f32.
#[allow(clippy::too_many_arguments)]
fn norm_param_grads(
    dev: &Arc<CudaDevice>,
    x: &Tensor,
    dy: &Tensor,
    mean: Option<&Tensor>,
    rstd: &Tensor,
    rows: usize,
    d: usize,
    want_db: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let per = 512usize;
    let chunks = rows.div_ceil(per).max(1);
    if chunks > 65535 {
        return Err(Error::arg("norm backward", format!("{rows} rows exceed the supported {} rows", 65535 * per)));
    }
    let dw_part = empty(dev, &[chunks, d], DType::F32)?;
    let db_part = if want_db { Some(empty(dev, &[chunks, d], DType::F32)?) } else { None };
    launch!(dev, "norm.cu", "norm_param_grads", cfg_2d(d.div_ceil(256), chunks, 256)?;
        ptr(x), dt(x.dtype()), ptr(dy), dt(dy.dtype()), mean.map(ptr).unwrap_or(0), ptr(rstd), ptr(&dw_part),
        db_part.as_ref().map(ptr).unwrap_or(0), i64_(rows), i64_(d), i64_(per))?;
    let dw = col_sum(&dw_part, chunks, d)?;
    let db = db_part.map(|p| col_sum(&p, chunks, d)).transpose()?;
    Ok((dw, db))
}

/// LayerNorm forward over the last dim `d`.
pub(crate) fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64, d: usize) -> Result<Tensor> {
    let mut ins = vec![x];
    ins.extend(w);
    ins.extend(b);
    let dev = common_device(&ins, "layer_norm")?;
    let xc = cont(x)?;
    let wc = w.map(cont).transpose()?;
    let bc = b.map(cont).transpose()?;
    let y = empty(&dev, x.shape(), out_dtype(&ins))?;
    let rows = x.numel() / d;
    if rows > 0 {
        let (wp, wdt) = wc.as_ref().map(|t| (ptr(t), dt(t.dtype()))).unwrap_or((0, 0));
        let (bp, bdt) = bc.as_ref().map(|t| (ptr(t), dt(t.dtype()))).unwrap_or((0, 0));
        launch!(dev, "norm.cu", "layer_norm_fwd", cfg_rows(rows)?;
            ptr(&xc), dt(xc.dtype()), wp, wdt, bp, bdt, ptr(&y), dt(y.dtype()), i64_(d), eps as f32,
            wc.is_some() as i32, bc.is_some() as i32)?;
    }
    Ok(y)
}

/// LayerNorm backward.
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    w: Option<&Tensor>,
    has_bias: bool,
    eps: f64,
    dy: &Tensor,
    d: usize,
) -> Result<NormGrads> {
    let mut ins = vec![x, dy];
    ins.extend(w);
    let dev = common_device(&ins, "layer_norm_backward")?;
    let (xc, dyc) = (cont(x)?, cont(dy)?);
    let wc = w.map(cont).transpose()?;
    let rows = x.numel() / d;
    let dx = empty(&dev, x.shape(), DType::F32)?;
    let mean = empty(&dev, &[rows.max(1)], DType::F32)?;
    let rstd = empty(&dev, &[rows.max(1)], DType::F32)?;
    if rows > 0 {
        let (wp, wdt) = wc.as_ref().map(|t| (ptr(t), dt(t.dtype()))).unwrap_or((0, 0));
        launch!(dev, "norm.cu", "layer_norm_bwd", cfg_rows(rows)?;
            ptr(&xc), dt(xc.dtype()), wp, wdt, ptr(&dyc), dt(dyc.dtype()), ptr(&dx), ptr(&mean), ptr(&rstd),
            i64_(d), eps as f32, wc.is_some() as i32)?;
    }
    let (dweight, dbias) = if w.is_some() || has_bias {
        let (dw, db) = norm_param_grads(&dev, &xc, &dyc, Some(&mean), &rstd, rows, d, has_bias)?;
        (w.map(|w| dw.reshape(w.shape())).transpose()?, db)
    } else {
        (None, None)
    };
    Ok(NormGrads { dx, dweight, dbias })
}

/// RMSNorm forward over the last dim `d`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, d: usize) -> Result<Tensor> {
    let dev = common_device(&[x, w], "rms_norm")?;
    let (xc, wc) = (cont(x)?, cont(w)?);
    let y = empty(&dev, x.shape(), out_dtype(&[x, w]))?;
    let rows = x.numel() / d;
    if rows > 0 {
        launch!(dev, "norm.cu", "rms_norm_fwd", cfg_rows(rows)?;
            ptr(&xc), dt(xc.dtype()), ptr(&wc), dt(wc.dtype()), ptr(&y), dt(y.dtype()), i64_(d), eps as f32)?;
    }
    Ok(y)
}

/// RMSNorm backward.
pub(crate) fn rms_norm_backward(x: &Tensor, w: &Tensor, eps: f64, dy: &Tensor, d: usize) -> Result<NormGrads> {
    let dev = common_device(&[x, w, dy], "rms_norm_backward")?;
    let (xc, wc, dyc) = (cont(x)?, cont(w)?, cont(dy)?);
    let rows = x.numel() / d;
    let dx = empty(&dev, x.shape(), DType::F32)?;
    let rstd = empty(&dev, &[rows.max(1)], DType::F32)?;
    if rows > 0 {
        launch!(dev, "norm.cu", "rms_norm_bwd", cfg_rows(rows)?;
            ptr(&xc), dt(xc.dtype()), ptr(&wc), dt(wc.dtype()), ptr(&dyc), dt(dyc.dtype()), ptr(&dx), ptr(&rstd),
            i64_(d), eps as f32)?;
    }
    let (dw, _) = norm_param_grads(&dev, &xc, &dyc, None, &rstd, rows, d, false)?;
    Ok(NormGrads { dx, dweight: Some(dw.reshape(w.shape())?), dbias: None })
}

/// Channel RMS norm forward, `x [B, C, S...]`.
pub(crate) fn rms_norm_channel(x: &Tensor, gamma: &Tensor, b: usize, c: usize, s: usize) -> Result<Tensor> {
    let dev = common_device(&[x, gamma], "rms_norm_channel")?;
    let (xc, gc) = (cont(x)?, cont(gamma)?);
    let y = empty(&dev, x.shape(), out_dtype(&[x, gamma]))?;
    if b * s > 0 && c > 0 {
        launch!(dev, "norm.cu", "rms_norm_channel_fwd", cfg_2d((b * s).div_ceil(256), 1, 256)?;
            ptr(&xc), dt(xc.dtype()), ptr(&gc), dt(gc.dtype()), ptr(&y), dt(y.dtype()), i64_(b), i64_(c), i64_(s))?;
    }
    Ok(y)
}

/// Channel RMS norm backward.
pub(crate) fn rms_norm_channel_backward(
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    b: usize,
    c: usize,
    s: usize,
) -> Result<NormGrads> {
    let dev = common_device(&[x, gamma, dy], "rms_norm_channel_backward")?;
    let (xc, gc, dyc) = (cont(x)?, cont(gamma)?, cont(dy)?);
    let dx = empty(&dev, x.shape(), DType::F32)?;
    let norms = empty(&dev, &[(b * s).max(1)], DType::F32)?;
    let dgamma = empty(&dev, gamma.shape(), DType::F32)?;
    if b * s > 0 && c > 0 {
        launch!(dev, "norm.cu", "rms_norm_channel_bwd", cfg_2d((b * s).div_ceil(256), 1, 256)?;
            ptr(&xc), dt(xc.dtype()), ptr(&gc), dt(gc.dtype()), ptr(&dyc), dt(dyc.dtype()), ptr(&dx), ptr(&norms),
            i64_(b), i64_(c), i64_(s))?;
        launch!(dev, "norm.cu", "rms_norm_channel_dgamma", cfg_2d(c, 1, 256)?;
            ptr(&xc), dt(xc.dtype()), ptr(&dyc), dt(dyc.dtype()), ptr(&norms), ptr(&dgamma), i64_(b), i64_(c), i64_(s))?;
    } else if c > 0 {
        return Ok(NormGrads { dx, dweight: Some(full(dev.ordinal, gamma.shape(), 0.0, DType::F32)?), dbias: None });
    }
    Ok(NormGrads { dx, dweight: Some(dgamma), dbias: None })
}

// ------------------------------------------------------------------------------------------------
// RoPE

/// Rotates `x [B, L, H, hd]` by the RoPE tables (`sign` −1 for the backward pass).
pub(crate) fn rope(x: &Tensor, rope: &crate::ops::rope::Rope3d, sign: f32, out: DType) -> Result<Tensor> {
    let dev = common_device(&[x], "rope")?;
    let xc = cont(x)?;
    let tab_t = rope.device_tables(x.device())?;
    let (grid, pairs) = (rope.grid(), rope.pairs());
    let s = x.shape();
    let (l, h, hd) = (s[1], s[2], s[3]);
    let y = empty(&dev, s, out)?;
    let npairs = x.numel() / 2;
    if npairs > 0 {
        launch!(dev, "rope.cu", "rope3d", cfg_elems(npairs);
            ptr(&xc), dt(xc.dtype()), ptr(&y), dt(out), ptr(&tab_t), i64_(l), i64_(h), i64_(hd),
            i64_(grid[0]), i64_(grid[1]), i64_(grid[2]), i64_(pairs[0]), i64_(pairs[1]), i64_(pairs[2]), sign, i64_(npairs))?;
    }
    Ok(y)
}

// ------------------------------------------------------------------------------------------------
// linear

/// GEMM operands of one dtype: both bf16 when both are, else both f32. A bf16 operand paired with an f32 one
/// (a bf16 model's weights or activations with its f32 gradients) is widened, and the pair may run on TF32
/// tensor cores ([`GemmType::tf32`]).
fn gemm_pair(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor, GemmType)> {
    let gt = GemmType::of(a.dtype(), b.dtype());
    Ok((as_dtype(a, gt.dtype)?, as_dtype(b, gt.dtype)?, gt))
}

/// The element type of a GEMM's operands and whether f32 operands may be rounded to TF32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GemmType {
    dtype: DType,
    /// f32 operands that stand in a bf16 computation: a bf16 model's backward (f32 gradients against bf16
    /// weights and activations). TF32 keeps 10 mantissa bits, more than the bf16 side has, and runs on tensor
    /// cores (~495 vs ~67 dense TFLOP/s on an H100). Pure f32 GEMMs (f32 models) stay exact f32.
    tf32: bool,
}

impl GemmType {
    /// Of operands of dtypes `a` and `b` (f16 computes as f32).
    fn of(a: DType, b: DType) -> GemmType {
        let dtype = if a == DType::BF16 && b == DType::BF16 { DType::BF16 } else { DType::F32 };
        GemmType { dtype, tf32: dtype == DType::F32 && (a == DType::BF16 || b == DType::BF16) }
    }
}

fn op(t: &Tensor, gt: GemmType, trans: bool) -> GemmOperand {
    op_batched(t, gt, trans, 0)
}

/// `GemmOperand` of a contiguous tensor holding a batch of matrices `batch_stride` elements apart.
fn op_batched(t: &Tensor, gt: GemmType, trans: bool, batch_stride: usize) -> GemmOperand {
    GemmOperand { ptr: ptr(t), dtype: gt.dtype, trans, batch_stride: batch_stride as i64, tf32: gt.tf32 }
}

/// Zeros in every element of `y` (a GEMM with an empty inner dimension).
fn zero(dev: &Arc<CudaDevice>, y: &Tensor) -> Result<()> {
    let n = y.numel();
    if n > 0 {
        launch!(dev, "elementwise.cu", "fill", cfg_elems(n); ptr(y), dt(y.dtype()), 0f32, i64_(n))?;
    }
    Ok(())
}

/// Batched `a·b`: `batch` products `[m, k]·[k, n]`, `b` shared by all when `shared` (dims checked by the
/// caller); the result has `shape` and the promoted dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    shared: bool,
    shape: &[usize],
) -> Result<Tensor> {
    let dev = common_device(&[a, b], "matmul")?;
    let (ac, bc, ct) = gemm_pair(a, b)?;
    let y = empty(&dev, shape, out_dtype(&[a, b]))?;
    if k == 0 {
        zero(&dev, &y)?;
    } else {
        let bs = if shared { 0 } else { k * n };
        gemm(
            &dev,
            m,
            n,
            k,
            op_batched(&ac, ct, false, m * k),
            op_batched(&bc, ct, false, bs),
            (ptr(&y), y.dtype(), i64_(m * n)),
            1.0,
            0.0,
            batch,
        )?;
    }
    Ok(y)
}

/// Backward of [`matmul`]: `(da, db)` in f32; with a shared `b`, `db` sums over the batch (one GEMM over
/// the stacked rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    shared: bool,
) -> Result<(Tensor, Tensor)> {
    let dev = common_device(&[a, b, dc], "matmul_backward")?;
    let da = empty(&dev, a.shape(), DType::F32)?;
    let db = empty(&dev, b.shape(), DType::F32)?;
    if n == 0 {
        zero(&dev, &da)?;
    } else {
        // da_i[m, k] = dc_i[m, n] · b_iᵀ (b stored [k, n]: the transposed operand)
        let (g, bc, ct) = gemm_pair(dc, b)?;
        let bs = if shared { 0 } else { k * n };
        gemm(
            &dev,
            m,
            k,
            n,
            op_batched(&g, ct, false, m * n),
            op_batched(&bc, ct, true, bs),
            (ptr(&da), DType::F32, i64_(m * k)),
            1.0,
            0.0,
            batch,
        )?;
    }
    if batch * m == 0 {
        zero(&dev, &db)?;
    } else {
        // db_i[k, n] = a_iᵀ · dc_i (a stored [m, k]: transposed); shared: aᵀ · dc over all batch·m rows
        let (ac, g, ct) = gemm_pair(a, dc)?;
        if shared {
            gemm(&dev, k, n, batch * m, op(&ac, ct, true), op(&g, ct, false), (ptr(&db), DType::F32, 0), 1.0, 0.0, 1)?;
        } else {
            gemm(
                &dev,
                k,
                n,
                m,
                op_batched(&ac, ct, true, m * k),
                op_batched(&g, ct, false, m * n),
                (ptr(&db), DType::F32, i64_(k * n)),
                1.0,
                0.0,
                batch,
            )?;
        }
    }
    Ok((da, db))
}

/// `y = x·Wᵀ + b` (`m` rows, `din` → `dout`), or `gelu_tanh` of it when `gelu`: one cuBLASLt GEMM with the
/// bias (and GELU) in its epilogue where possible, else a cuBLAS GEMM and separate kernels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    gelu: bool,
    m: usize,
    din: usize,
    dout: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let mut ins = vec![x, w];
    ins.extend(b);
    let dev = common_device(&ins, "linear")?;
    let (xc, wc, ct) = gemm_pair(x, w)?;
    let y = empty(&dev, shape, out_dtype(&ins))?;
    if m * dout == 0 {
        return Ok(y);
    }
    let bc = b.map(cont).transpose()?;
    if din > 0 && (gelu || bc.is_some()) {
        use super::blaslt::{Epilogue, count, gemm_epilogue};
        let epilogue = match (&bc, gelu) {
            (Some(_), true) => Epilogue::GeluTanhBias,
            (Some(_), false) => Epilogue::Bias,
            (None, _) => Epilogue::GeluTanh,
        };
        // cuBLASLt reads the bias in the output's dtype; the output dtype is the promoted one, so converting a
        // narrower bias (bf16 bias, f32 output) is exact.
        let lt_bias = match &bc {
            Some(b) if b.dtype() != y.dtype() => Some(b.to_dtype(y.dtype())?),
            other => other.clone(),
        };
        let fused = gemm_epilogue(
            &dev,
            m,
            dout,
            din,
            op(&xc, ct, false),
            op(&wc, ct, true),
            (ptr(&y), y.dtype()),
            lt_bias.as_ref().map_or(0, ptr),
            epilogue,
        )?;
        count(fused);
        if fused {
            return Ok(y);
        }
    }
    if din == 0 {
        launch!(dev, "elementwise.cu", "fill", cfg_elems(m * dout); ptr(&y), dt(y.dtype()), 0f32, i64_(m * dout))?;
    } else {
        gemm(&dev, m, dout, din, op(&xc, ct, false), op(&wc, ct, true), (ptr(&y), y.dtype(), 0), 1.0, 0.0, 1)?;
    }
    if let Some(bc) = &bc {
        launch!(dev, "elementwise.cu", "add_bias_rows", cfg_elems(m * dout);
            ptr(&y), dt(y.dtype()), ptr(bc), dt(bc.dtype()), i64_(dout), i64_(m * dout))?;
    }
    if gelu {
        return activation(&y, Act::GeluTanh);
    }
    Ok(y)
}

/// Backward of [`linear`]: the gradients `need` asks for.
pub(crate) fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need: LinearNeed,
    m: usize,
    din: usize,
    dout: usize,
) -> Result<LinearGrads> {
    let dev = common_device(&[x, w, dy], "linear_backward")?;
    let dx = if need.dx {
        let (g, wc, ct) = gemm_pair(dy, w)?;
        let dx = empty(&dev, x.shape(), DType::F32)?;
        // dx[m, din] = dy[m, dout] · W[dout, din]
        gemm(&dev, m, din, dout, op(&g, ct, false), op(&wc, ct, false), (ptr(&dx), DType::F32, 0), 1.0, 0.0, 1)?;
        Some(dx)
    } else {
        None
    };
    let dw = if need.dw {
        let (g, xc, ct) = gemm_pair(dy, x)?;
        let dw = empty(&dev, &[dout, din], DType::F32)?;
        // dW[dout, din] = dyᵀ · x  (dy stored [m, dout] = transposed operand)
        if m == 0 {
            launch!(dev, "elementwise.cu", "fill", cfg_elems(dout * din);
                ptr(&dw), dt(DType::F32), 0f32, i64_(dout * din))?;
        } else {
            gemm(&dev, dout, din, m, op(&g, ct, true), op(&xc, ct, false), (ptr(&dw), DType::F32, 0), 1.0, 0.0, 1)?;
        }
        Some(dw)
    } else {
        None
    };
    let db = if need.db { Some(col_sum(&cont(dy)?, m, dout)?) } else { None };
    Ok(LinearGrads { dx, dw, db })
}

// ------------------------------------------------------------------------------------------------
// attention

/// Largest head dim of the CUDA attention kernels (`ATT_WIDE_MAXD`).
pub const ATTENTION_MAX_HEAD_DIM: usize = 512;
/// Largest head dim of the general attention kernels with the larger tiles (`ATT_MAXD`); up to
/// [`ATTENTION_MAX_HEAD_DIM`] the `_wide` ones run.
const ATT_MAXD: usize = 128;

/// The general (non-tensor-core) attention kernels for head dim `d`: (forward, dQ, dK/dV).
fn general_attention(d: usize) -> (&'static str, &'static str, &'static str) {
    if d <= ATT_MAXD {
        ("flash_attn_fwd", "flash_attn_bwd_dq", "flash_attn_bwd_dkdv")
    } else {
        ("flash_attn_fwd_wide", "flash_attn_bwd_dq_wide", "flash_attn_bwd_dkdv_wide")
    }
}
const ATT_BQ: usize = 64;

fn attn_dims(q: &Tensor, k: &Tensor, op: &'static str) -> Result<(usize, usize, usize, usize, usize)> {
    let (qs, ks) = (q.shape(), k.shape());
    let (b, lq, h, d, lk) = (qs[0], qs[1], qs[2], qs[3], ks[1]);
    if d > ATTENTION_MAX_HEAD_DIM {
        return Err(Error::arg(op, format!("head dim {d} > {ATTENTION_MAX_HEAD_DIM} is not supported on CUDA")));
    }
    if b * h > 65535 {
        return Err(Error::arg(op, format!("B·H = {} exceeds the CUDA grid limit 65535", b * h)));
    }
    Ok((b, lq, lk, h, d))
}

/// Rows of a tensor-core attention block (`TC_ROWS` in `attention_tc.cu`); 4 warps of 32 threads.
const TC_ROWS: usize = 64;
const TC_THREADS: u32 = 128;

/// The kernels of `attention_tc.cu` for one head dim: (forward, dQ, dK/dV).
type TcKernels = (&'static str, &'static str, &'static str);

/// The tensor-core attention kernels when they apply: bf16 `q`, `k`, `v` with 16-byte aligned bases, head dim
/// 64 or 128, compute capability 8.0 or newer, and `MEDGEN_CUDA_ATTENTION` not `simple` (which forces the
/// general kernels of `attention.cu`, for comparisons; read at the first attention call). `None` selects the
/// general kernels.
fn tc_attention(dev: &CudaDevice, qkv: [&Tensor; 3], d: usize) -> Option<TcKernels> {
    // Read once per process: attention runs twice per block and step.
    static SIMPLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SIMPLE.get_or_init(|| std::env::var("MEDGEN_CUDA_ATTENTION").is_ok_and(|v| v.eq_ignore_ascii_case("simple"))) {
        return None;
    }
    if dev.compute_capability() < 80 || qkv.iter().any(|t| t.dtype() != DType::BF16 || !ptr(t).is_multiple_of(16)) {
        return None;
    }
    match d {
        64 => Some(("flash_tc_fwd_d64", "flash_tc_bwd_dq_d64", "flash_tc_bwd_dkdv_d64")),
        128 => Some(("flash_tc_fwd_d128", "flash_tc_bwd_dq_d128", "flash_tc_bwd_dkdv_d128")),
        _ => None,
    }
}

/// Flash attention forward (`q [B, Lq, H, d]`, `k`, `v` `[B, Lk, H, d]`).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<AttentionOutput> {
    const OP: &str = "attention";
    let dev = common_device(&[q, k, v], OP)?;
    let (b, lq, lk, h, d) = attn_dims(q, k, OP)?;
    let (qc, kc, vc) = (cont(q)?, cont(k)?, cont(v)?);
    let out = empty(&dev, q.shape(), out_dtype(&[q, k, v]))?;
    let lse = empty(&dev, &[b, h, lq], DType::F32)?;
    if lq == 0 || b * h == 0 {
        return Ok(AttentionOutput { out, lse });
    }
    if let Some((fwd, _, _)) = tc_attention(&dev, [&qc, &kc, &vc], d) {
        let scale_log2 = (scale * std::f64::consts::LOG2_E) as f32;
        launch!(dev, "attention_tc.cu", fwd, cfg_2d(lq.div_ceil(TC_ROWS), b * h, TC_THREADS)?;
            ptr(&qc), ptr(&kc), ptr(&vc), ptr(&out), dt(out.dtype()), ptr(&lse), i64_(lq), i64_(lk), i64_(h),
            scale_log2)?;
    } else {
        launch!(dev, "attention.cu", general_attention(d).0, cfg_2d(lq.div_ceil(ATT_BQ), b * h, ATT_BQ as u32)?;
            ptr(&qc), dt(qc.dtype()), ptr(&kc), dt(kc.dtype()), ptr(&vc), dt(vc.dtype()), ptr(&out), dt(out.dtype()),
            ptr(&lse), i64_(lq), i64_(lk), i64_(h), i64_(d), scale as f32)?;
    }
    Ok(AttentionOutput { out, lse })
}

/// Flash attention backward (recompute with the saved LSE).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f64,
) -> Result<AttentionGrads> {
    const OP: &str = "attention_backward";
    let dev = common_device(&[q, k, v, out, lse, dout], OP)?;
    let (b, lq, lk, h, d) = attn_dims(q, k, OP)?;
    let (qc, kc, vc, oc, gc) = (cont(q)?, cont(k)?, cont(v)?, cont(out)?, cont(dout)?);
    let lsec = as_dtype(lse, DType::F32)?;
    let delta = empty(&dev, &[b, h, lq.max(1)], DType::F32)?;
    let dq = empty(&dev, q.shape(), DType::F32)?;
    let dk = empty(&dev, k.shape(), DType::F32)?;
    let dv = empty(&dev, v.shape(), DType::F32)?;
    if b * h == 0 {
        return Ok(AttentionGrads { dq, dk, dv });
    }
    if lq == 0 {
        let z = |t: &Tensor| full(dev.ordinal, t.shape(), 0.0, DType::F32);
        return Ok(AttentionGrads { dq, dk: z(k)?, dv: z(v)? });
    }
    let n = b * h * lq;
    launch!(dev, "attention.cu", "attn_bwd_delta", cfg_elems(n);
        ptr(&oc), dt(oc.dtype()), ptr(&gc), dt(gc.dtype()), ptr(&delta), i64_(lq), i64_(h), i64_(d), i64_(n))?;
    if let Some((_, kdq, kdkdv)) = tc_attention(&dev, [&qc, &kc, &vc], d) {
        let (sc, scale_log2) = (scale as f32, (scale * std::f64::consts::LOG2_E) as f32);
        launch!(dev, "attention_tc.cu", kdq, cfg_2d(lq.div_ceil(TC_ROWS), b * h, TC_THREADS)?;
            ptr(&qc), ptr(&kc), ptr(&vc), ptr(&gc), dt(gc.dtype()), ptr(&lsec), ptr(&delta), ptr(&dq), i64_(lq),
            i64_(lk), i64_(h), sc, scale_log2)?;
        launch!(dev, "attention_tc.cu", kdkdv, cfg_2d(lk.div_ceil(TC_ROWS), b * h, TC_THREADS)?;
            ptr(&qc), ptr(&kc), ptr(&vc), ptr(&gc), dt(gc.dtype()), ptr(&lsec), ptr(&delta), ptr(&dk), ptr(&dv),
            i64_(lq), i64_(lk), i64_(h), sc, scale_log2)?;
        return Ok(AttentionGrads { dq, dk, dv });
    }
    let (_, kdq, kdkdv) = general_attention(d);
    launch!(dev, "attention.cu", kdq, cfg_2d(lq.div_ceil(ATT_BQ), b * h, ATT_BQ as u32)?;
        ptr(&qc), dt(qc.dtype()), ptr(&kc), dt(kc.dtype()), ptr(&vc), dt(vc.dtype()), ptr(&gc), dt(gc.dtype()),
        ptr(&lsec), ptr(&delta), ptr(&dq), i64_(lq), i64_(lk), i64_(h), i64_(d), scale as f32)?;
    launch!(dev, "attention.cu", kdkdv, cfg_2d(lk.div_ceil(ATT_BQ), b * h, ATT_BQ as u32)?;
        ptr(&qc), dt(qc.dtype()), ptr(&kc), dt(kc.dtype()), ptr(&vc), dt(vc.dtype()), ptr(&gc), dt(gc.dtype()),
        ptr(&lsec), ptr(&delta), ptr(&dk), ptr(&dv), i64_(lq), i64_(lk), i64_(h), i64_(d), scale as f32)?;
    Ok(AttentionGrads { dq, dk, dv })
}

// ------------------------------------------------------------------------------------------------
// conv3d

/// Geometry of a conv3d: input `[B, C, T, H, W]`, kernel, stride, leading padding, output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub b: usize,
    pub cin: usize,
    pub cout: usize,
    pub inp: [usize; 3],
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad0: [usize; 3],
    pub out: [usize; 3],
}

impl ConvShape {
    fn geo(&self) -> ConvGeo {
        let c = |v: usize| v as i64;
        ConvGeo {
            b: c(self.b),
            c: c(self.cin),
            t: c(self.inp[0]),
            h: c(self.inp[1]),
            w: c(self.inp[2]),
            kt: c(self.k[0]),
            kh: c(self.k[1]),
            kw: c(self.k[2]),
            st: c(self.stride[0]),
            sh: c(self.stride[1]),
            sw: c(self.stride[2]),
            pt: c(self.pad0[0]),
            ph: c(self.pad0[1]),
            pw: c(self.pad0[2]),
            to: c(self.out[0]),
            ho: c(self.out[1]),
            wo: c(self.out[2]),
        }
    }
    fn rows(&self) -> usize {
        self.b * self.out.iter().product::<usize>()
    }
    fn ck(&self) -> usize {
        self.cin * self.k.iter().product::<usize>()
    }
}

/// Bytes of im2col columns gathered at a time by [`conv3d`]: `$MEDGEN_CUDA_IM2COL_BYTES`, else 256 MiB. The
/// full column matrix of a VAE decoder convolution at 480×832 would take ~17 GB; chunks of whole output rows
/// keep it bounded while each GEMM stays large enough to run at full speed.
fn im2col_budget() -> usize {
    static B: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        std::env::var("MEDGEN_CUDA_IM2COL_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&b| b > 0)
            .unwrap_or(256 << 20)
    })
}

/// conv3d forward: `out[P, Cout] = cols · Wᵀ`, im2col and GEMM over chunks of output rows (at most
/// [`im2col_budget`] bytes of columns at a time), bias, permute to `[B, Cout, To, Ho, Wo]`.
pub(crate) fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: ConvShape) -> Result<Tensor> {
    let mut ins = vec![x, w];
    ins.extend(bias);
    let dev = common_device(&ins, "conv3d")?;
    let (xc, wc, gt) = gemm_pair(x, w)?;
    let ct = gt.dtype;
    let (p, ck) = (g.rows(), g.ck());
    let ot = out_dtype(&ins);
    let rows = empty(&dev, &[p, g.cout], ot)?;
    if p > 0 {
        let chunk = (im2col_budget() / (ck * ct.size_in_bytes()).max(1)).clamp(1, p);
        let cols = empty(&dev, &[chunk, ck], ct)?;
        for r0 in (0..p).step_by(chunk) {
            let pc = chunk.min(p - r0);
            if ck > 0 {
                launch!(dev, "conv.cu", "im2col3d", cfg_elems(pc * ck);
                    ptr(&xc), dt(ct), ptr(&cols), dt(ct), g.geo(), i64_(r0), i64_(pc * ck))?;
            }
            let out_rows = ptr(&rows) + (r0 * g.cout * ot.size_in_bytes()) as u64;
            gemm(&dev, pc, g.cout, ck, op(&cols, gt, false), op(&wc, gt, true), (out_rows, ot, 0), 1.0, 0.0, 1)?;
        }
    }
    if let Some(b) = bias {
        let bc = cont(b)?;
        if p * g.cout > 0 {
            launch!(dev, "elementwise.cu", "add_bias_rows", cfg_elems(p * g.cout);
                ptr(&rows), dt(ot), ptr(&bc), dt(bc.dtype()), i64_(g.cout), i64_(p * g.cout))?;
        }
    }
    let [to, ho, wo] = g.out;
    rows.reshape(&[g.b, to, ho, wo, g.cout])?.permute(&[0, 4, 1, 2, 3])?.try_contiguous()
}

/// conv3d backward: `(dx, dw, db)` in f32. Gathers the whole column matrix at once (only the DiT's patch
/// embedding and the gradient checks run a convolution backward).
pub(crate) fn conv3d_backward(
    x: &Tensor,
    w: &Tensor,
    has_bias: bool,
    dy: &Tensor,
    g: ConvShape,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dev = common_device(&[x, w, dy], "conv3d_backward")?;
    let (p, ck) = (g.rows(), g.ck());
    // dy [B, Cout, To, Ho, Wo] -> rows [P, Cout]
    let dy_rows = dy.permute(&[0, 2, 3, 4, 1])?.try_contiguous()?.reshape(&[p, g.cout])?;
    let (xc, wc, gt) = gemm_pair(x, w)?;
    let ct = gt.dtype;
    let cols = empty(&dev, &[p, ck], ct)?;
    if p * ck > 0 {
        launch!(dev, "conv.cu", "im2col3d", cfg_elems(p * ck);
            ptr(&xc), dt(ct), ptr(&cols), dt(ct), g.geo(), i64_(0), i64_(p * ck))?;
    }
    let gd = as_dtype(&dy_rows, ct)?;
    // dW[Cout, CK] = dy_rowsᵀ · cols
    let dw = empty(&dev, w.shape(), DType::F32)?;
    if p == 0 {
        launch!(dev, "elementwise.cu", "fill", cfg_elems(g.cout * ck); ptr(&dw), dt(DType::F32), 0f32, i64_(g.cout * ck))?;
    } else {
        gemm(&dev, g.cout, ck, p, op(&gd, gt, true), op(&cols, gt, false), (ptr(&dw), DType::F32, 0), 1.0, 0.0, 1)?;
    }
    // dcols[P, CK] = dy_rows · W[Cout, CK]
    let dcols = empty(&dev, &[p, ck], DType::F32)?;
    gemm(&dev, p, ck, g.cout, op(&gd, gt, false), op(&wc, gt, false), (ptr(&dcols), DType::F32, 0), 1.0, 0.0, 1)?;
    let dx = empty(&dev, x.shape(), DType::F32)?;
    let n = x.numel();
    if n > 0 {
        launch!(dev, "conv.cu", "col2im3d", cfg_elems(n); ptr(&dcols), dt(DType::F32), ptr(&dx), g.geo(), i64_(n))?;
    }
    let db = if has_bias { Some(col_sum(&dy_rows, p, g.cout)?) } else { None };
    Ok((dx, dw, db))
}

// ------------------------------------------------------------------------------------------------
// loss

/// `Σ (p − t)²` (or `Σ p²` without `t`) in f64, deterministic block partials added in order on the host.
pub(crate) fn sum_sq_diff(p: &Tensor, t: Option<&Tensor>) -> Result<f64> {
    let mut ins = vec![p];
    ins.extend(t);
    let dev = common_device(&ins, "sum_sq")?;
    let pc = cont(p)?;
    let tc = t.map(cont).transpose()?;
    let n = p.numel();
    if n == 0 {
        return Ok(0.0);
    }
    let chunk = 1usize << 16;
    let blocks = n.div_ceil(chunk);
    let part = empty(&dev, &[blocks], DType::F64)?;
    let (tp, tdt) = tc.as_ref().map(|t| (ptr(t), dt(t.dtype()))).unwrap_or((0, 0));
    launch!(dev, "loss.cu", "sq_diff_partial", cfg_2d(blocks, 1, 256)?;
        ptr(&pc), dt(pc.dtype()), tp, tdt, tc.is_some() as i32, ptr(&part), i64_(n), i64_(chunk))?;
    Ok(part.to_vec_f64()?.iter().sum())
}

/// MSE loss value.
pub(crate) fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<f64> {
    Ok(sum_sq_diff(pred, Some(target))? / pred.numel().max(1) as f64)
}

/// MSE loss backward (f32).
pub(crate) fn mse_loss_backward(pred: &Tensor, target: &Tensor, dloss: f64) -> Result<Tensor> {
    let dev = common_device(&[pred, target], "mse_loss_backward")?;
    let (pc, tc) = (cont(pred)?, cont(target)?);
    let n = pred.numel();
    let g = empty(&dev, pred.shape(), DType::F32)?;
    if n > 0 {
        let k = (2.0 * dloss / n as f64) as f32;
        launch!(dev, "loss.cu", "mse_bwd", cfg_elems(n); ptr(&pc), dt(pc.dtype()), ptr(&tc), dt(tc.dtype()), ptr(&g), k, i64_(n))?;
    }
    Ok(g)
}

// ------------------------------------------------------------------------------------------------
// data movement and reductions

/// Concatenation along `dim` into a new `shape` tensor of `dtype` (shapes checked by the caller): each piece,
/// any view, is copied into its slice of the output.
pub(crate) fn cat(ts: &[&Tensor], dim: usize, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let dev = common_device(ts, "cat")?;
    let y = empty(&dev, shape, dtype)?;
    let ybase = y.cuda_storage().expect("CUDA").ptr_at(0);
    let mut start = 0;
    for t in ts {
        let len = t.shape()[dim];
        let n = t.numel();
        if n > 0 {
            let ys = Strided::of(&y.narrow(dim, start, len)?, t.shape(), "cat")?;
            let xs = Strided::of(t, t.shape(), "cat")?;
            let xbase = t.cuda_storage().expect("CUDA").ptr_at(0);
            launch!(dev, "elementwise.cu", "copy_into_strided", cfg_elems(n);
                xbase, dt(t.dtype()), xs, ybase, dt(dtype), ys, i64_(n))?;
        }
        start += len;
    }
    Ok(y)
}

/// Sums `g` over the dims where `shape` (right-aligned, broadcastable to `g`; checked by the caller) is 1
/// and `g` is not: an f32 tensor of `shape`.
pub(crate) fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "sum_to_shape";
    let dev = common_device(&[g], OP)?;
    let out = g.shape().to_vec();
    let pad = out.len() - shape.len().min(out.len());
    let target = |d: usize| if d < pad { 1 } else { shape[d - pad] };
    sum_dims(&dev, g, Strided::of(g, &out, OP)?, |d| target(d) == 1 && out[d] != 1, shape, OP)
}

/// Sums `view` (a view of `src`'s storage) over its dims where `summed(d)`: an f32 tensor of `shape`
/// (the other dims, row-major).
fn sum_dims(
    dev: &Arc<CudaDevice>,
    src: &Tensor,
    view: Strided,
    summed: impl Fn(usize) -> bool,
    shape: &[usize],
    op: &'static str,
) -> Result<Tensor> {
    let (keep, red, m) = view.split_sum(summed, op)?;
    let y = empty(dev, shape, DType::F32)?;
    let n = y.numel();
    if n > 0 {
        let base = src.cuda_storage().expect("CUDA").ptr_at(0);
        launch!(dev, "elementwise.cu", "sum_reduce", cfg_elems(n); base, dt(src.dtype()), keep, red, ptr(&y), i64_(n), i64_(m))?;
    }
    Ok(y)
}

/// `x [.., H, W]` as `[.., H, fh, W, fw]` (sizes, strides) with the factor dims split off the last two.
fn split_last_two(dims: &[(i64, i64)], fh: usize, fw: usize, stretch: bool) -> Vec<(i64, i64)> {
    let r = dims.len();
    let (fh, fw) = (fh as i64, fw as i64);
    let mut v = dims[..r - 2].to_vec();
    let ((h, sh), (w, sw)) = (dims[r - 2], dims[r - 1]);
    if stretch {
        // x itself: each element repeated (stride 0 on the factor dims)
        v.extend([(h, sh), (fh, 0), (w, sw), (fw, 0)]);
    } else {
        // dy [.., H·fh, W·fw]: row i·fh + a, column j·fw + b
        v.extend([(h / fh, sh * fh), (fh, sh), (w / fw, sw * fw), (fw, sw)]);
    }
    v
}

/// Nearest-neighbour upsampling of the last two dims into a new `shape` tensor of `dtype` (checked by the
/// caller): a strided copy of `x` with stride 0 on the factor dims.
pub(crate) fn upsample_nearest(x: &Tensor, factor: [usize; 2], shape: &[usize], dtype: DType) -> Result<Tensor> {
    const OP: &str = "upsample_nearest";
    let dev = common_device(&[x], OP)?;
    let (dims, offset) = Strided::of(x, x.shape(), OP)?.parts();
    let view = Strided::from_parts(&split_last_two(&dims, factor[0], factor[1], true), offset, OP)?;
    let y = empty(&dev, shape, dtype)?;
    let n = y.numel();
    if n > 0 {
        let base = x.cuda_storage().expect("CUDA").ptr_at(0);
        launch!(dev, "elementwise.cu", "copy_strided", cfg_elems(n); base, dt(x.dtype()), view, ptr(&y), dt(dtype), i64_(n))?;
    }
    Ok(y)
}

/// Backward of [`upsample_nearest`]: each `fh × fw` block of `dy` summed into an f32 tensor of `shape`.
pub(crate) fn upsample_nearest_backward(dy: &Tensor, factor: [usize; 2], shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "upsample_nearest_backward";
    let dev = common_device(&[dy], OP)?;
    let (dims, offset) = Strided::of(dy, dy.shape(), OP)?.parts();
    let split = split_last_two(&dims, factor[0], factor[1], false);
    let r = split.len();
    sum_dims(&dev, dy, Strided::from_parts(&split, offset, OP)?, |d| d == r - 3 || d == r - 1, shape, OP)
}

#[cfg(test)]
mod tests {
    use super::{GemmOperand, GemmType, embedding_plan};
    use crate::cuda::launch::use_tf32;
    use crate::dtype::DType;

    #[test]
    fn tf32_only_for_f32_operands_of_a_bf16_computation() {
        use DType::{BF16, F32};
        let t = |dtype, tf32| GemmType { dtype, tf32 };
        assert_eq!(GemmType::of(BF16, BF16), t(BF16, false));
        assert_eq!(GemmType::of(F32, F32), t(F32, false), "f32 models stay exact");
        assert_eq!(GemmType::of(F32, BF16), t(F32, true), "f32 gradient × bf16 weight");
        assert_eq!(GemmType::of(BF16, F32), t(F32, true));
        let o = |gt: GemmType| GemmOperand { ptr: 0, dtype: gt.dtype, trans: false, batch_stride: 0, tf32: gt.tf32 };
        assert!(use_tf32(&o(t(F32, true)), &o(t(F32, false))));
        assert!(!use_tf32(&o(t(F32, false)), &o(t(F32, false))));
        assert!(!use_tf32(&o(t(BF16, false)), &o(t(BF16, false))));
    }

    #[test]
    fn embedding_plan_groups_rows_by_id_in_row_order() {
        // ids by row: 3 0 3 7 0 3
        let p = embedding_plan(&[3, 0, 3, 7, 0, 3]);
        let (uniq, rest) = p.split_at(3);
        let (starts, rows) = rest.split_at(4);
        assert_eq!(uniq, [0, 3, 7]);
        assert_eq!(starts, [0, 2, 5, 6]);
        assert_eq!(rows, [1, 4, 0, 2, 5, 3]);
        assert_eq!(embedding_plan(&[]), vec![0]);
    }
}
