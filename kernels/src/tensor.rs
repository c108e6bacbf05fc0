//! The [`Tensor`] type: shared storage + strided layout + dtype + device.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::{DType, Element, Float};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Where a tensor's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory; computed by the CPU backend.
    Cpu,
    /// A CUDA device by ordinal (the `cuda` feature). Creating or moving a tensor here without a usable
    /// driver/device returns [`Error::NoCuda`] (or [`Error::NoBackend`] in a build without the feature).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Host storage, one vector per dtype.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
    /// f64 elements.
    F64(Vec<f64>),
}

/// Runs `$body` with `$v` bound to the typed vector of a [`CpuStorage`].
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::F64($v) => $body,
        }
    };
}

impl CpuStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    /// Number of stored elements.
    pub fn len(&self) -> usize {
        with_storage!(self, v => v.len())
    }

    /// Whether the storage is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Backend storage: host vectors or a CUDA device buffer.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

/// Shape, element strides and element offset of a view into a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

impl Layout {
    /// A row-major layout starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides (0 for broadcast dimensions).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element in the storage.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view is row-major without gaps (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// Largest storage index touched + 1 (0 for empty views).
    fn extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
    }
}

/// Copies the elements of a strided view into a new row-major vector.
pub(crate) fn gather_strided<E: Copy + Send + Sync>(src: &[E], l: &Layout) -> Vec<E> {
    let n = l.numel();
    if n == 0 {
        return Vec::new();
    }
    if l.is_contiguous() {
        return src[l.offset..l.offset + n].to_vec();
    }
    let rank = l.shape.len();
    let inner = l.shape[rank - 1];
    let is = l.strides[rank - 1];
    let outer_shape = &l.shape[..rank - 1];
    let outer_strides = &l.strides[..rank - 1];
    let outer = n / inner;
    let mut out = Vec::with_capacity(n);
    // Parallel over outer rows for large copies (the attention head permutes are ~50M elements).
    let row = |o: usize, dst: &mut [E]| {
        let mut rem = o;
        let mut base = l.offset;
        for (&d, &s) in outer_shape.iter().zip(outer_strides).rev() {
            base += (rem % d) * s;
            rem /= d;
        }
        if is == 1 {
            dst.copy_from_slice(&src[base..base + inner]);
        } else {
            for (i, x) in dst.iter_mut().enumerate() {
                *x = src[base + i * is];
            }
        }
    };
    if n >= 1 << 16 {
        out.resize(n, src[l.offset]);
        out.par_chunks_mut(inner).enumerate().for_each(|(o, dst)| row(o, dst));
    } else {
        out.resize(n, src[l.offset]);
        for (o, dst) in out.chunks_mut(inner).enumerate() {
            row(o, dst);
        }
    }
    debug_assert_eq!(out.len(), outer * inner);
    out
}

fn convert_slice<E: Element, T: Float>(v: &[E]) -> Vec<T> {
    if v.len() >= 1 << 16 {
        v.par_iter().map(|&e| e.to_compute::<T>()).collect()
    } else {
        v.iter().map(|&e| e.to_compute::<T>()).collect()
    }
}

fn compute_to_storage<T: Float>(v: Vec<T>, dtype: DType) -> CpuStorage {
    if dtype == T::DTYPE {
        return T::into_storage(v);
    }
    fn conv<T: Float, E: Element>(v: &[T]) -> Vec<E> {
        if v.len() >= 1 << 16 {
            v.par_iter().map(|&x| E::from_compute(x)).collect()
        } else {
            v.iter().map(|&x| E::from_compute(x)).collect()
        }
    }
    match dtype {
        DType::F32 => CpuStorage::F32(conv(&v)),
        DType::F64 => CpuStorage::F64(conv(&v)),
        DType::BF16 => CpuStorage::BF16(conv(&v)),
        DType::F16 => CpuStorage::F16(conv(&v)),
    }
}

/// An n-dimensional array: reference-counted storage plus a strided view.
///
/// Cloning is cheap (shares the storage). View ops ([`permute`](Tensor::permute),
/// [`transpose`](Tensor::transpose), [`narrow`](Tensor::narrow), [`reshape`](Tensor::reshape) of a
/// contiguous tensor, [`broadcast_as`](Tensor::broadcast_as)) never copy; ops that need row-major
/// data copy strided inputs internally.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {})", self.layout.shape, self.dtype(), self.device())
    }
}

impl Tensor {
    // ----------------------------------------------------------------------------------------
    // construction

    fn from_storage(storage: CpuStorage, shape: &[usize]) -> Tensor {
        Tensor { storage: Arc::new(Storage::Cpu(storage)), layout: Layout::contiguous(shape) }
    }

    /// Internal: a contiguous tensor over a whole CUDA buffer.
    #[cfg(feature = "cuda")]
    pub(crate) fn from_cuda(storage: crate::cuda::CudaStorage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Tensor { storage: Arc::new(Storage::Cuda(storage)), layout: Layout::contiguous(shape) }
    }

    /// Internal: the CUDA buffer of a device tensor.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_storage(&self) -> Option<&crate::cuda::CudaStorage> {
        match &*self.storage {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }

    /// A CPU tensor owning `data` (row-major) with the given shape; the dtype follows `E`.
    pub fn from_vec<E: Element>(data: Vec<E>, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(Error::DataLength { len: data.len(), shape: shape.to_vec(), numel });
        }
        Ok(Tensor::from_storage(E::into_storage(data), shape))
    }

    /// A CPU tensor of dtype `dtype` from `f64` values (rounded to the dtype).
    pub fn from_f64_slice(data: &[f64], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(Error::DataLength { len: data.len(), shape: shape.to_vec(), numel });
        }
        Ok(Tensor::from_storage(compute_to_storage(data.to_vec(), dtype), shape))
    }

    /// Internal: wrap compute-type results, converting to the output dtype.
    pub(crate) fn from_compute<T: Float>(data: Vec<T>, shape: &[usize], dtype: DType) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor::from_storage(compute_to_storage(data, dtype), shape)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        check_backend(device, "full")?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(i) = device {
            return crate::cuda::ops::full(i, shape, value, dtype);
        }
        let n: usize = shape.iter().product();
        let s = match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f64(value); n]),
            DType::F16 => CpuStorage::F16(vec![f16::from_f64(value); n]),
        };
        Ok(Tensor::from_storage(s, shape))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }

    /// A 0-dimensional tensor.
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::from_storage(compute_to_storage(vec![value], dtype), &[])
    }

    /// Standard-normal samples times `std` (CPU).
    pub fn randn(shape: &[usize], std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
        Tensor::from_storage(compute_to_storage(v, dtype), shape)
    }

    /// Uniform samples in `[lo, hi)` (CPU).
    pub fn rand_uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v = rng.uniform_vec(n, lo, hi);
        Tensor::from_storage(compute_to_storage(v, dtype), shape)
    }

    // ----------------------------------------------------------------------------------------
    // metadata

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.layout.shape.len()
    }

    /// Size of dimension `d`, with a typed error when out of range.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.layout
            .shape
            .get(d)
            .copied()
            .ok_or_else(|| Error::dim("dim", format!("dimension {d} of shape {:?}", self.layout.shape)))
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Element strides.
    pub fn strides(&self) -> &[usize] {
        &self.layout.strides
    }

    /// Whether the view is row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => Device::Cuda(s.device().ordinal),
        }
    }

    /// The host storage, or [`Error::NotOnDevice`] for tensors on other devices (an op without a
    /// device implementation).
    pub(crate) fn cpu_storage(&self, op: &'static str) -> Result<&CpuStorage> {
        let _ = op;
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(Error::NotOnDevice { op, device: self.device() }),
        }
    }

    // ----------------------------------------------------------------------------------------
    // data access and conversion

    /// Row-major data converted to the compute type `T`; borrowed when no copy is needed.
    pub(crate) fn cpu_data<T: Float>(&self, op: &'static str) -> Result<Cow<'_, [T]>> {
        let s = self.cpu_storage(op)?;
        let l = &self.layout;
        let n = l.numel();
        if let Some(v) = T::storage_slice(s) {
            if l.is_contiguous() {
                return Ok(Cow::Borrowed(&v[l.offset..l.offset + n]));
            }
            return Ok(Cow::Owned(gather_strided(v, l)));
        }
        Ok(Cow::Owned(with_storage!(s, v => {
            if l.is_contiguous() {
                convert_slice::<_, T>(&v[l.offset..l.offset + n])
            } else {
                convert_slice::<_, T>(&gather_strided(v, l))
            }
        })))
    }

    /// Row-major copy of the data converted to element type `E` (device tensors are copied to the host).
    pub fn to_vec<E: Element>(&self) -> Result<Vec<E>> {
        if self.device() != Device::Cpu {
            return self.to_cpu()?.to_vec();
        }
        let s = self.cpu_storage("to_vec")?;
        let l = &self.layout;
        Ok(with_storage!(s, v => {
            let g = gather_strided(v, l);
            g.iter().map(|&x| E::from_compute::<f64>(x.to_compute::<f64>())).collect()
        }))
    }

    /// Row-major data as `f32` (device tensors are copied to the host).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if self.device() != Device::Cpu {
            return self.to_cpu()?.to_vec_f32();
        }
        Ok(self.cpu_data::<f32>("to_vec_f32")?.into_owned())
    }

    /// Row-major data as `f64` (device tensors are copied to the host).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        if self.device() != Device::Cpu {
            return self.to_cpu()?.to_vec_f64();
        }
        Ok(self.cpu_data::<f64>("to_vec_f64")?.into_owned())
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("to_scalar", format!("expected one element, shape {:?}", self.shape())));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A copy with a different storage dtype (shares storage when the dtype already matches).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            return crate::cuda::ops::copy_cast(self, dtype);
        }
        let s = self.cpu_storage("to_dtype")?;
        let l = &self.layout;
        let storage = with_storage!(s, v => {
            let g = gather_strided(v, l);
            match dtype {
                DType::F32 => CpuStorage::F32(g.iter().map(|&x| f32::from_compute(x.to_compute::<f64>())).collect()),
                DType::F64 => CpuStorage::F64(g.iter().map(|&x| x.to_compute::<f64>()).collect()),
                DType::BF16 => CpuStorage::BF16(g.iter().map(|&x| bf16::from_compute(x.to_compute::<f64>())).collect()),
                DType::F16 => CpuStorage::F16(g.iter().map(|&x| f16::from_compute(x.to_compute::<f64>())).collect()),
            }
        });
        Ok(Tensor::from_storage(storage, self.shape()))
    }

    /// Move to a device (a no-op when the tensor is already there). A CUDA device without a usable
    /// driver is [`Error::NoCuda`]; a build without the `cuda` feature gives [`Error::NoBackend`].
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        check_backend(device, "to_device")?;
        if device == self.device() {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => self.to_cpu(),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let host = self.to_cpu()?.contiguous();
                let Storage::Cpu(s) = &*host.storage else { unreachable!("to_cpu returns a host tensor") };
                let n = host.numel();
                let off = host.layout.offset;
                let exact = with_storage!(s, v => Element::into_storage(v[off..off + n].to_vec()));
                let dev = crate::cuda::ops::device(i)?;
                let st = crate::cuda::CudaStorage::upload(&dev, &exact)?;
                Ok(Tensor::from_cuda(st, self.shape()))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::NoBackend { op: "to_device", device }),
        }
    }

    /// A host copy of a device tensor (`self` when already on the CPU).
    pub fn to_cpu(&self) -> Result<Tensor> {
        match &*self.storage {
            Storage::Cpu(_) => Ok(self.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                let c = self.try_contiguous()?;
                let Some(cs) = c.cuda_storage() else { unreachable!("a device tensor stays on its device") };
                let host = cs.download(c.layout.offset, c.numel())?;
                Ok(Tensor::from_storage(host, self.shape()))
            }
        }
    }

    /// A row-major copy (or `self` when already contiguous); errors only when a device copy fails.
    pub fn try_contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.cuda_storage().is_some() {
            return crate::cuda::ops::copy_cast(self, self.dtype());
        }
        Ok(self.contiguous())
    }

    /// A row-major copy (or `self` when already contiguous).
    ///
    /// # Panics
    ///
    /// For a CUDA tensor whose device copy fails (out of device memory); use
    /// [`try_contiguous`](Tensor::try_contiguous) to get that as an error.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let s = match &*self.storage {
            Storage::Cpu(s) => s,
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                return self.try_contiguous().unwrap_or_else(|e| panic!("contiguous copy on the device failed: {e}"));
            }
        };
        let l = &self.layout;
        let storage = with_storage!(s, v => Element::into_storage(gather_strided(v, l)));
        Tensor::from_storage(storage, self.shape())
    }

    /// Whether this tensor is the only user of its storage and covers all of it densely: an op may then
    /// write its result into it instead of allocating.
    pub(crate) fn owns_dense_storage(&self) -> bool {
        Arc::strong_count(&self.storage) == 1
            && self.is_contiguous()
            && self.layout.offset == 0
            && match &*self.storage {
                Storage::Cpu(s) => s.len(),
                #[cfg(feature = "cuda")]
                Storage::Cuda(s) => s.len(),
            } == self.numel()
    }

    /// Mutable row-major data of an `f32`/`f64` tensor (copy-on-write: the storage is made unique,
    /// contiguous and exactly sized first). Used by the optimiser on master weights.
    pub fn data_mut<T: Float>(&mut self) -> Result<&mut [T]> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DType { op: "data_mut", dtype: self.dtype(), msg: format!("expected {:?}", T::DTYPE) });
        }
        let s = self.cpu_storage("data_mut")?;
        if !self.is_contiguous() || self.layout.offset != 0 || s.len() != self.numel() {
            *self = Tensor::from_storage(
                T::into_storage(self.cpu_data::<T>("data_mut")?.into_owned()),
                &self.layout.shape.clone(),
            );
        }
        #[cfg(feature = "cuda")]
        let device = self.device();
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(s) => Ok(T::storage_slice_mut(s).expect("dtype checked above")),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => Err(Error::NotOnDevice { op: "data_mut", device }),
        }
    }

    /// Largest `|a − b|` over all elements (shapes must match); handy in tests.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f64> {
        if self.shape() != other.shape() {
            return Err(Error::shape("max_abs_diff", format!("{:?} vs {:?}", self.shape(), other.shape())));
        }
        let a = self.to_vec_f64()?;
        let b = other.to_vec_f64()?;
        Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
    }

    // ----------------------------------------------------------------------------------------
    // views

    fn with_layout(&self, layout: Layout) -> Tensor {
        debug_assert!(layout.extent() <= self.storage_len());
        Tensor { storage: self.storage.clone(), layout }
    }

    fn storage_len(&self) -> usize {
        match &*self.storage {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }

    /// Reorder dimensions: result dim `i` is input dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::dim("permute", format!("{perm:?} is not a permutation of {r} dims")));
        }
        let l = &self.layout;
        Ok(self.with_layout(Layout {
            shape: perm.iter().map(|&p| l.shape[p]).collect(),
            strides: perm.iter().map(|&p| l.strides[p]).collect(),
            offset: l.offset,
        }))
    }

    /// Swap two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let r = self.rank();
        if a >= r || b >= r {
            return Err(Error::dim("transpose", format!("dims {a},{b} of rank {r}")));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// The sub-range `start..start+len` of dimension `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let size = self.dim(dim)?;
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::dim("narrow", format!("range {start}..{start}+{len} out of dim {dim} of size {size}")));
        }
        let mut l = self.layout.clone();
        l.shape[dim] = len;
        if len > 0 {
            l.offset += start * l.strides[dim];
        }
        Ok(self.with_layout(l))
    }

    /// Same elements, new shape. A view when the tensor is contiguous, otherwise a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape("reshape", format!("cannot reshape {:?} into {shape:?}", self.shape())));
        }
        let t = self.try_contiguous()?;
        let offset = t.layout.offset;
        Ok(t.with_layout(Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset }))
    }

    /// Insert a size-1 dimension at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::dim("unsqueeze", format!("dim {dim} > rank {}", self.rank())));
        }
        let mut l = self.layout.clone();
        let stride = l.strides.get(dim).map(|&s| s * l.shape[dim]).unwrap_or(1);
        l.shape.insert(dim, 1);
        l.strides.insert(dim, stride);
        Ok(self.with_layout(l))
    }

    /// Remove a size-1 dimension.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        if self.dim(dim)? != 1 {
            return Err(Error::dim("squeeze", format!("dim {dim} of {:?} is not 1", self.shape())));
        }
        let mut l = self.layout.clone();
        l.shape.remove(dim);
        l.strides.remove(dim);
        Ok(self.with_layout(l))
    }

    /// Broadcast (numpy rules, right-aligned) to `shape` as a stride-0 view.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        if r > shape.len() {
            return Err(Error::shape("broadcast_as", format!("{:?} to {shape:?}", self.shape())));
        }
        let pad = shape.len() - r;
        let mut strides = vec![0; shape.len()];
        for i in 0..r {
            let (d, s) = (self.layout.shape[i], self.layout.strides[i]);
            let t = shape[pad + i];
            strides[pad + i] = if d == t {
                s
            } else if d == 1 {
                0
            } else {
                return Err(Error::shape("broadcast_as", format!("{:?} to {shape:?}", self.shape())));
            };
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            layout: Layout { shape: shape.to_vec(), strides, offset: self.layout.offset },
        })
    }
}

/// Errors unless the device has a backend (for CUDA: a driver and that device).
pub(crate) fn check_backend(device: Device, op: &'static str) -> Result<()> {
    let _ = op;
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => crate::cuda::ops::device(i).map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::NoBackend { op, device }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|i| i as f32).collect(), shape).unwrap()
    }

    #[test]
    fn views_and_contiguous() {
        let t = iota(&[2, 3, 4]);
        let p = t.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 3]);
        assert!(!p.is_contiguous());
        let v = p.to_vec_f32().unwrap();
        // p[k][i][j] = t[i][j][k] = 12 i + 4 j + k
        assert_eq!(v[0..6], [0., 4., 8., 12., 16., 20.]);
        assert_eq!(v[6], 1.0);
        let n = t.narrow(2, 1, 2).unwrap();
        assert_eq!(n.to_vec_f32().unwrap(), vec![1., 2., 5., 6., 9., 10., 13., 14., 17., 18., 21., 22.]);
        let r = p.reshape(&[8, 3]).unwrap();
        assert!(r.is_contiguous());
        assert_eq!(r.to_vec_f32().unwrap(), v);
        let tr = t.transpose(0, 1).unwrap().contiguous();
        assert_eq!(tr.shape(), &[3, 2, 4]);
        assert_eq!(tr.to_vec_f32().unwrap()[4..8], [12., 13., 14., 15.]);
        let u = t.unsqueeze(1).unwrap();
        assert_eq!(u.shape(), &[2, 1, 3, 4]);
        assert!(u.is_contiguous());
        assert_eq!(u.squeeze(1).unwrap().shape(), &[2, 3, 4]);
        let b = iota(&[3, 1]).broadcast_as(&[2, 3, 4]).unwrap();
        assert_eq!(b.to_vec_f32().unwrap()[4..12], [1., 1., 1., 1., 2., 2., 2., 2.]);
    }

    #[test]
    fn bad_views_are_errors() {
        let t = iota(&[2, 3]);
        assert!(t.permute(&[0, 0]).is_err());
        assert!(t.permute(&[0]).is_err());
        assert!(t.narrow(1, 2, 2).is_err());
        assert!(t.narrow(2, 0, 1).is_err());
        assert!(t.reshape(&[4]).is_err());
        assert!(t.squeeze(0).is_err());
        assert!(t.broadcast_as(&[3, 3]).is_err());
        assert!(Tensor::from_vec(vec![1f32; 5], &[2, 3]).is_err());
    }

    #[test]
    fn dtype_round_trip() {
        let t = Tensor::from_vec(vec![1.5f32, -2.25, 3.0e-3], &[3]).unwrap();
        let b = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        let back = b.to_vec_f32().unwrap();
        assert_eq!(back[0], 1.5);
        assert_eq!(back[1], -2.25);
        assert!((back[2] - 3.0e-3).abs() < 2e-5);
        let h = t.to_dtype(DType::F16).unwrap().to_dtype(DType::F64).unwrap();
        assert!((h.to_vec_f64().unwrap()[2] - 3.0e-3).abs() < 1e-6);
    }

    #[test]
    fn cuda_is_a_typed_error() {
        // Without the `cuda` feature: NoBackend. With it, on a machine without a driver or device: NoCuda.
        if crate::cuda::is_available() {
            return;
        }
        let e = Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).unwrap_err();
        assert!(matches!(e, Error::NoBackend { device: Device::Cuda(0), .. } | Error::NoCuda { .. }), "{e}");
        let t = iota(&[2]);
        assert!(matches!(t.to_device(Device::Cuda(1)), Err(Error::NoBackend { .. } | Error::NoCuda { .. })));
    }

    #[test]
    fn data_mut_copy_on_write() {
        let t = iota(&[2, 2]);
        let mut u = t.transpose(0, 1).unwrap();
        u.data_mut::<f32>().unwrap()[0] = 100.0;
        assert_eq!(u.to_vec_f32().unwrap(), vec![100., 2., 1., 3.]);
        assert_eq!(t.to_vec_f32().unwrap(), vec![0., 1., 2., 3.]);
        assert!(u.clone().data_mut::<f64>().is_err());
    }
}
