//! Device storage of a tensor and host <-> device transfers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaSlice, DevicePtr};
use half::{bf16, f16};

use super::device::{CudaDevice, cuda_err};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::CpuStorage;

/// Devices whose tensor memory is counted (ordinals past it are not counted).
const COUNTED_DEVICES: usize = 16;

/// Bytes held by live device tensors, per ordinal.
static HELD: [AtomicUsize; COUNTED_DEVICES] = [const { AtomicUsize::new(0) }; COUNTED_DEVICES];
/// The most bytes held at once since the process started or [`reset_peak`].
static PEAK: [AtomicUsize; COUNTED_DEVICES] = [const { AtomicUsize::new(0) }; COUNTED_DEVICES];

/// (bytes held now, peak bytes) of tensor storage on device `ordinal`. Counts what the tensors
/// hold, not the driver's pools or cuBLAS workspaces.
pub(crate) fn memory(ordinal: usize) -> (usize, usize) {
    match (HELD.get(ordinal), PEAK.get(ordinal)) {
        (Some(h), Some(p)) => (h.load(Ordering::Relaxed), p.load(Ordering::Relaxed)),
        _ => (0, 0),
    }
}

/// Restarts the peak of device `ordinal` from what is held now.
pub(crate) fn reset_peak(ordinal: usize) {
    if let (Some(h), Some(p)) = (HELD.get(ordinal), PEAK.get(ordinal)) {
        p.store(h.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// An allocation with its size, counted in [`HELD`] while it lives.
struct Tracked {
    buf: CudaSlice<u8>,
    bytes: usize,
    ordinal: usize,
}

impl Tracked {
    fn new(buf: CudaSlice<u8>, ordinal: usize) -> Tracked {
        let bytes = buf.len();
        if let (Some(h), Some(p)) = (HELD.get(ordinal), PEAK.get(ordinal)) {
            let now = h.fetch_add(bytes, Ordering::Relaxed) + bytes;
            p.fetch_max(now, Ordering::Relaxed);
        }
        Tracked { buf, bytes, ordinal }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(h) = HELD.get(self.ordinal) {
            h.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// A device buffer of `len` elements of `dtype` (shared by the views of a tensor).
#[derive(Clone)]
pub(crate) struct CudaStorage {
    /// Keeps the allocation alive; freed (stream-ordered) when the last view goes.
    _buf: Arc<Tracked>,
    /// Device address of element 0.
    ptr: u64,
    dtype: DType,
    len: usize,
    dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?} x {}, cuda:{})", self.dtype, self.len, self.dev.ordinal)
    }
}

impl CudaStorage {
    fn wrap(buf: CudaSlice<u8>, dtype: DType, len: usize, dev: Arc<CudaDevice>) -> Self {
        let ptr = {
            let (p, _sync) = buf.device_ptr(&dev.stream);
            p
        };
        CudaStorage { _buf: Arc::new(Tracked::new(buf, dev.ordinal)), ptr, dtype, len, dev }
    }

    /// An uninitialised buffer (every kernel that allocates one writes all of it).
    pub fn alloc(dev: &Arc<CudaDevice>, dtype: DType, len: usize) -> Result<Self> {
        let bytes = (len * dtype.size_in_bytes()).max(1);
        // SAFETY: the buffer is written by the caller's kernel before it is read.
        let buf = unsafe { dev.stream.alloc::<u8>(bytes) }.map_err(|e| cuda_err("cuda alloc", e))?;
        Ok(Self::wrap(buf, dtype, len, dev.clone()))
    }

    /// Copies host data to the device.
    pub fn upload(dev: &Arc<CudaDevice>, host: &CpuStorage) -> Result<Self> {
        let bytes: Vec<u8> = match host {
            CpuStorage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuStorage::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            CpuStorage::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            CpuStorage::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let buf = if bytes.is_empty() { dev.stream.alloc_zeros::<u8>(1) } else { dev.stream.clone_htod(&bytes) }
            .map_err(|e| cuda_err("to_device", e))?;
        Ok(Self::wrap(buf, host.dtype(), host.len(), dev.clone()))
    }

    /// Copies elements `offset .. offset + n` to the host.
    pub fn download(&self, offset: usize, n: usize) -> Result<CpuStorage> {
        let sz = self.dtype.size_in_bytes();
        let bytes = if n == 0 {
            Vec::new()
        } else {
            let view = self._buf.buf.slice(offset * sz..(offset + n) * sz);
            self.dev.stream.clone_dtoh(&view).map_err(|e| cuda_err("to_cpu", e))?
        };
        Ok(match self.dtype {
            DType::F32 => {
                CpuStorage::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DType::F64 => CpuStorage::F64(
                bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect(),
            ),
            DType::BF16 => CpuStorage::BF16(
                bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect(),
            ),
            DType::F16 => CpuStorage::F16(
                bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect(),
            ),
        })
    }

    /// Device address of element `offset`.
    pub fn ptr_at(&self, offset: usize) -> u64 {
        self.ptr + (offset * self.dtype.size_in_bytes()) as u64
    }

    /// Element dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The device.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }
}
