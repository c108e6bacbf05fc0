//! Typed errors of the tensor runtime.

use std::path::PathBuf;

use crate::dtype::DType;
use crate::tensor::Device;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the tensor runtime.
///
/// Shapes and dtypes that come from files or callers are validated and reported through these
/// variants; the library does not panic on bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch: {msg}")]
    ShapeMismatch {
        /// The operation that detected the problem.
        op: &'static str,
        /// What was expected and what was found.
        msg: String,
    },
    /// A tensor has the wrong number of dimensions.
    #[error("{op}: expected rank {expected}, got shape {got:?}")]
    RankMismatch {
        /// The operation that detected the problem.
        op: &'static str,
        /// The rank the op needs (or a description such as "≥ 2").
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A dimension index is out of range, or a narrow/permute argument is invalid.
    #[error("{op}: invalid dimension argument: {msg}")]
    InvalidDim {
        /// The operation that detected the problem.
        op: &'static str,
        /// Details.
        msg: String,
    },
    /// An argument has an invalid value (negative learning rate, zero stride, …).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The operation that detected the problem.
        op: &'static str,
        /// Details.
        msg: String,
    },
    /// The data length given to a constructor does not match the shape.
    #[error("data length {len} does not match shape {shape:?} ({numel} elements)")]
    DataLength {
        /// Length of the data.
        len: usize,
        /// Requested shape.
        shape: Vec<usize>,
        /// Number of elements of the shape.
        numel: usize,
    },
    /// The op needs a different dtype.
    #[error("{op}: unsupported dtype {dtype:?}: {msg}")]
    DType {
        /// The operation that detected the problem.
        op: &'static str,
        /// The dtype that was found.
        dtype: DType,
        /// Details.
        msg: String,
    },
    /// The tensor lives on a device for which no backend is compiled in or available.
    #[error("{op}: no backend for device {device}; only the CPU backend is available")]
    NoBackend {
        /// The operation that was attempted.
        op: &'static str,
        /// The device of the tensor.
        device: Device,
    },
    /// Inputs of one op live on different devices.
    #[error("{op}: tensors on different devices ({a} and {b})")]
    DeviceMismatch {
        /// The operation that detected the problem.
        op: &'static str,
        /// Device of the first tensor.
        a: Device,
        /// Device of the other tensor.
        b: Device,
    },
    /// No usable CUDA driver or device (or the crate was built without the `cuda` feature). The reason says
    /// which, e.g. "no CUDA driver (libcuda.so not found): running on CPU".
    #[error("{reason}")]
    NoCuda {
        /// What is missing.
        reason: String,
    },
    /// A CUDA driver, cuBLAS or NVRTC call failed.
    #[error("{op}: CUDA error: {msg}")]
    Cuda {
        /// The operation that was running.
        op: &'static str,
        /// The error reported by the driver / library.
        msg: String,
    },
    /// A CUDA kernel file did not compile with NVRTC.
    #[error("NVRTC could not compile kernels/cuda/{file} ({options}):\n{log}")]
    CudaCompile {
        /// The kernel file.
        file: String,
        /// The NVRTC options used.
        options: String,
        /// The compiler log.
        log: String,
    },
    /// The op has no implementation for tensors on this device yet.
    #[error("{op}: not implemented for {device} tensors (move them with to_cpu() first)")]
    NotOnDevice {
        /// The operation.
        op: &'static str,
        /// The device of the inputs.
        device: Device,
    },
    /// An I/O error while reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file is truncated, corrupt or otherwise unreadable.
    #[error("{path}: invalid safetensors file: {msg}")]
    SafeTensors {
        /// The file.
        path: PathBuf,
        /// Details (from the `safetensors` crate or our own checks).
        msg: String,
    },
    /// A sharded checkpoint's index JSON is unreadable or inconsistent.
    #[error("{path}: invalid checkpoint index: {msg}")]
    CheckpointIndex {
        /// The index file.
        path: PathBuf,
        /// Details.
        msg: String,
    },
    /// A tensor stored with a dtype we cannot load.
    #[error("tensor {name:?}: unsupported stored dtype {dtype}")]
    UnsupportedStoredDType {
        /// Tensor name.
        name: String,
        /// The dtype as spelled in the file header.
        dtype: String,
    },
    /// A key that the model needs is absent from the checkpoint.
    #[error("missing tensor {0:?} in checkpoint")]
    MissingKey(String),
    /// A checkpoint holds keys in no recognised naming scheme.
    #[error("unrecognised checkpoint key layout: {0}")]
    UnknownFormat(String),

    /// A weight's stored shape differs from what the network's config implies.
    #[error(
        "weight {name:?} has shape {got:?}, but the config implies {expected:?} (does config.json match the checkpoint?)"
    )]
    WeightShape {
        /// Tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Stored shape.
        got: Vec<usize>,
    },

    /// A model config that cannot be used.
    #[error("invalid {model} config: {msg}")]
    Config {
        /// Which network.
        model: &'static str,
        /// What is wrong and how to fix it.
        msg: String,
    },

    /// A tokenizer file that cannot be loaded, or text it cannot encode.
    #[error("tokenizer {what}: {msg}")]
    Tokenizer {
        /// The tokenizer (its file) or the operation.
        what: String,
        /// What went wrong.
        msg: String,
    },

    /// A training checkpoint directory that is missing, incomplete, or does not belong to the
    /// model it is resumed with.
    #[error("{path}: training checkpoint: {msg}")]
    TrainingCheckpoint {
        /// The checkpoint directory (or file in it).
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A training step produced a non-finite loss or gradient norm; nothing was updated.
    #[error("training step {step}: {msg}")]
    TrainingDiverged {
        /// The step (0-based count of steps taken before it).
        step: u64,
        /// What was not finite.
        msg: String,
    },

    /// A PyTorch checkpoint (`torch.save` zip) that is truncated, corrupt or not a state_dict.
    #[error("{path}: invalid PyTorch checkpoint: {msg}")]
    Pth {
        /// The file.
        path: PathBuf,
        /// Details.
        msg: String,
    },
    /// A pickle in a PyTorch checkpoint uses an opcode or a global outside the restricted set a
    /// state_dict needs (nothing is ever executed).
    #[error("{path}: refusing to unpickle {what} at byte {pos} of {record} (only plain state_dicts of tensors load)")]
    PickleRefused {
        /// The checkpoint file.
        path: PathBuf,
        /// The pickle record inside the zip.
        record: String,
        /// The opcode (`opcode 0x63 'c'`) or global (`global os.system`).
        what: String,
        /// Byte offset of the opcode in the pickle.
        pos: usize,
    },

    /// A reference fixture that cannot be run.
    #[error("{path}: {msg}")]
    Fixture {
        /// The fixture file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::ShapeMismatch { op, msg: msg.into() }
    }

    pub(crate) fn rank(op: &'static str, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::RankMismatch { op, expected: expected.into(), got: got.to_vec() }
    }

    pub(crate) fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }

    pub(crate) fn dim(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidDim { op, msg: msg.into() }
    }
}
