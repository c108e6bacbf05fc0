//! medgen's tensor runtime.
//!
//! This crate holds the [`Tensor`] type, the CPU implementation of every operation the Wan2.1
//! networks need (each with its forward and backward pass written side by side, one file per op
//! family under [`ops`]), the optimiser ([`optim`]) and checkpoint loading ([`io`]).
//!
//! # Numerics
//!
//! Tensors store `f32`, `bf16`, `f16` or `f64`. CPU kernels are written once, generically over the
//! [`Float`] trait, and instantiated for `f32` and `f64`:
//!
//! * `f32`, `bf16` and `f16` inputs are computed in `f32` (half types are storage formats only);
//! * `f64` inputs are computed in `f64`. The `f64` dtype exists so that the finite-difference
//!   gradient checks in `tests/` can run at double precision through exactly the same code paths;
//!   the networks themselves use `f32`/`bf16`.
//!
//! An op's result has the *promoted* dtype of its inputs (see [`DType::promote`]): all-`bf16`
//! inputs give a `bf16` result, a mix of `f32` and `bf16` gives `f32`, anything with `f64` gives
//! `f64`.
//!
//! # Layout
//!
//! * [`tensor`]: [`Tensor`] (shared storage, strided views, dtype/device), [`Layout`], [`Device`].
//! * [`ops`]: one file per op family, forward and backward side by side — [`ops::linear`]
//!   (linear, matmul/bmm), [`ops::conv`] (conv3d via im2col + GEMM), [`ops::norm`] (LayerNorm,
//!   RMSNorm, VAE channel RMS norm), [`ops::rope`] (Wan 3D RoPE), [`ops::attention`] (tiled
//!   flash-style attention), [`ops::activation`] (GELU-tanh, SiLU, softmax, clamp),
//!   [`ops::elementwise`] (broadcast add/sub/mul, `sum_to_shape`, adaLN modulation),
//!   [`ops::shape`] (cat, nearest upsample, embedding, timestep sinusoid), [`ops::loss`] (MSE).
//! * [`optim`]: AdamW and global grad-norm clipping.
//! * [`train`]: the flow-matching trainer of the Wan DiT — full fine-tune or LoRA (PEFT/diffusers
//!   adapter files), gradient accumulation, clipping, EMA, caption dropout, seeded randomness and
//!   atomic checkpoints that resume bit for bit.
//! * [`io`]: safetensors checkpoints (mmap, mixed dtypes, shards), the [`io::TensorSource`]
//!   networks load weights through, and the Wan DiT key mapping.
//! * [`nets`]: the networks — Wan DiT (forward and backward), Wan VAE (causal chunked encode and
//!   decode), umT5 encoder, MiniLM sentence encoder — and the tokenizer wrapper.
//! * [`sched`]: flow-matching schedules and samplers (FlowMatch Euler, UniPC bh2) and CFG.
//! * [`verify`]: reference fixtures (made with torch/diffusers by `scripts/make-fixtures.sh`,
//!   committed under `kernels/tests/fixtures/`) and their comparison; `medgen verify` runs them.
//! * [`rng`]: deterministic PRNG for init, noise and tests.
//! * [`codec`]: the embedded patch-PCA latent codec (Wan latent geometry, fitted from data).
//!
//! # Devices
//!
//! Every tensor carries a [`Device`]. The CPU backend runs every op. The CUDA backend (feature
//! `cuda`, see [`cuda`]) is loaded at run time and runs the ops listed there on `Device::Cuda`
//! tensors; a machine without a driver gets [`Error::NoCuda`] from [`cuda::available`], and an op
//! without a CUDA path gets [`Error::NotOnDevice`] — never a panic.

// Numeric kernels index several parallel slices with one loop counter; iterator chains would
// obscure the formulas.
#![allow(clippy::needless_range_loop)]
#![warn(missing_docs)]

pub mod codec;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod io;
pub mod nets;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod sched;
pub mod special;
pub mod tensor;
pub mod train;
pub mod verify;

pub(crate) mod cpu;

pub use dtype::{DType, Float};
pub use error::{Error, Result};
pub use rng::Rng;
pub use tensor::{Device, Layout, Tensor};
