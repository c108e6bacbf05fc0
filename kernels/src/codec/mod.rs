//! Latent codecs that need no pretrained weights.
//!
//! medgen's diffusion model works on Wan-VAE-shaped latents (`[16, 1 + k, H/8, W/8]` for a
//! `[3, 1 + 4k, H, W]` video). On machines without the Wan VAE weights the pipeline uses an
//! *embedded* codec with the same latent geometry, fitted from the dataset itself:
//!
//! * [`patch_pca`]: a linear patch-PCA codec. Each `3 × 4 × 8 × 8` space-time patch (768 values)
//!   is projected onto the top 16 principal components of the dataset's patch covariance, and the
//!   components are scaled to unit variance. The covariance is accumulated by streaming,
//!   mergeable sufficient statistics ([`CovarianceStats`]) so a dataflow can reduce it in
//!   parallel; [`PatchPca::fit`] eigen-decomposes it with the crate's own symmetric eigensolver
//!   ([`symmetric_eigen`]). It is honest about its quality: [`PatchPca::explained_variance`] and
//!   [`psnr`] report how much of the signal survives — a linear 48× compression loses fine detail
//!   that the Wan VAE keeps.

pub mod patch_pca;

pub use patch_pca::{CovarianceStats, PatchGeometry, PatchPca, SymmetricEigen, psnr, symmetric_eigen};
