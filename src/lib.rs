//! Layer normalization (Ba, Kiros & Hinton, 2016) on [`ndarray`], with an exact forward pass
//! and a hand-derived, finite-difference-verified backward pass.
//!
//! For each row `x` of `n` features (the last axis of the input; all other axes are batch
//! axes), [`LayerNorm`] computes
//!
//! ```text
//! μ  = (1/n) Σᵢ xᵢ
//! σ² = (1/n) Σᵢ (xᵢ − μ)²          biased variance, as in the paper
//! r  = 1 / √(σ² + ε)               "inv_std"; ε inside the root, as PyTorch, ONNX, candle
//! x̂ᵢ = (xᵢ − μ) · r
//! yᵢ = gainᵢ · x̂ᵢ + biasᵢ
//! ```
//!
//! and, for an upstream gradient `dy`,
//!
//! ```text
//! gᵢ     = gainᵢ · dyᵢ
//! dxᵢ    = r · (gᵢ − mean(g) − x̂ᵢ · mean(g ⊙ x̂))
//! dgainᵢ = Σ_rows dyᵢ · x̂ᵢ           dbiasᵢ = Σ_rows dyᵢ
//! ```
//!
//! Statistics come from one row alone, so training and inference are the same computation,
//! a batch of one works, and a recurrent network can normalize at every time step.
//!
//! # Quick example
//!
//! ```
//! use layernorm::LayerNorm;
//! use ndarray::array;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ln = LayerNorm::<f32>::new(3)?;                    // gain 1, bias 0, eps 1e-5
//! let x = array![[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]];
//! let (y, stats) = ln.forward_with_stats(&x)?;
//! assert!((y[[0, 0]] + 1.2247).abs() < 1e-4);            // [1, 2, 3] → [-1.2247, 0, 1.2247]
//!
//! let dy = array![[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];     // ∂L/∂y from the layer above
//! let grads = ln.backward(&x, &stats, &dy)?;
//! assert_eq!(grads.input.shape(), &[2, 3]);
//! assert_eq!(grads.bias, Some(array![1.0, 0.0, 1.0]));
//! # Ok(())
//! # }
//! ```
//!
//! [`RmsNorm`] (Zhang & Sennrich, 2019) shares the same kernels without the centering:
//! `yᵢ = gainᵢ · xᵢ / √(mean(x²) + ε)`.
//!
//! # What it does not do
//!
//! There is no autograd graph: you call [`LayerNorm::backward`] (or the allocation-free
//! [`LayerNorm::backward_into`]) yourself with the statistics that forward returned.
//!
//! # Numerics
//!
//! - Statistics are computed in two passes over each row, never as `E[x²] − E[x]²`: the second
//!   pass sums `x − m` and `(x − m)²` around a shift `m` close to the mean (so the differences
//!   are exact or nearly so), in short blocks folded into `f64`, and corrects mean and variance
//!   exactly from those sums. The mean is kept as `hi + lo` to twice the data precision and
//!   saved in [`NormStats`] as `f64` ([`Element::Stat`]). Rows whose mean is far larger than
//!   their spread (`1e4 + N(0, 1)` in `f32`) are normalized to within a few `f32` ulps of an
//!   `f64` reference, as centered rows are.
//! - Rows the fast path cannot compute exactly (NaN/Inf, squares that would overflow or fall into
//!   subnormals) are computed by a plain scalar specification in `f64`, so `f32` inputs up to
//!   `f32::MAX` give finite, accurate results.
//! - The backward pass uses the centered form above, recomputing `x̂ = (x − μ) · r` from the
//!   saved statistics.
//! - Constant rows give exactly `bias` and finite gradients for any `eps > 0`.
//! - NaN and ±Inf propagate to their own row only.
//! - Results do not depend on the number of threads: `y` and `dx` are computed row by row, and
//!   parameter gradients are summed in fixed blocks of rows combined in a fixed order.
//! - Nor on the instruction set: f32, f64, f16 and bf16 results (outputs, statistics, input and
//!   parameter gradients) are the same bits on AVX-512, AVX2, NEON and the scalar path. Every
//!   sum is formed in a fixed logical layout (element `i` of a row goes to logical lane
//!   `i mod 32` for f32, `i mod 16` for f64, lanes combined by one fixed tree), fused
//!   multiply-adds are used in the same places on every path, and the elementwise work is
//!   exact per element. A training run, a published table or a test expectation can be
//!   reproduced bit for bit on another machine. To check it, or to reproduce a result the slow
//!   way, cap the instruction set with the environment variable `LAYERNORM_MAX_ISA`
//!   (`scalar`, `avx2`, `avx512`, `neon`; read once, at the first call; an unknown value means
//!   no cap).
//!
//! # Speed
//!
//! The kernels are compiled for AVX-512 and AVX2 (x86-64) and NEON (aarch64) and the widest set
//! the CPU has is chosen at run time, with no `RUSTFLAGS` needed. Reading a row overlaps writing
//! the previous one. For training loops, prefer [`LayerNorm::forward_into`] and
//! [`LayerNorm::backward_into`] with reused buffers: writing a freshly allocated output costs
//! page faults that can exceed the normalization itself.
//!
//! # Feature flags
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `rayon` | yes | splits inputs of 65 536 elements or more across rayon's thread pool (bitwise identical results) |
//! | `half` | no | [`Element`] for `half::f16` and `half::bf16`: statistics and arithmetic in f32, outputs rounded to half once; f32 parameters over half data ([`Parameter`]) |
//! | `serde` | no | `Serialize`/`Deserialize` for [`LayerNorm`] and [`RmsNorm`] as a checkpoint record `{ format, kind, dim, eps, gain, bias }`, validated on load |
//!
//! With the feature `half`, f16 and bf16 data work the same way (statistics in f32):
//!
//! ```
//! # #[cfg(feature = "half")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use half::f16;
//! use layernorm::LayerNorm;
//! let ln = LayerNorm::<f16>::new(3)?;
//! let x = ndarray::array![[1.0, 2.0, 3.0]].mapv(f16::from_f32);
//! let (y, stats) = ln.forward_with_stats(&x)?;
//! assert_eq!(y[[0, 2]], f16::from_f32(1.2247));        // the f32 result, rounded once
//! let _: f32 = stats.mean()[0];                          // statistics in f32
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "half"))]
//! # fn main() {}
//! ```
//!
//! Mixed precision, as in PyTorch's autocast: activations in half, gain and bias (and their
//! gradients) in f32. [`LayerNorm::for_activations`] turns an f32 layer into one over half
//! data; its outputs are those of a half layer with the same parameter values, and its parameter
//! gradients are summed in f32, so that many small steps are not rounded away. One training step:
//!
//! ```
//! # #[cfg(feature = "half")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use half::f16;
//! use layernorm::LayerNorm;
//! use ndarray::{Array1, Array2};
//!
//! let mut ln = LayerNorm::<f32>::new(4)?.for_activations::<f16>(); // LayerNorm<f16, f32>
//! let x = Array2::from_shape_fn((8, 4), |(r, c)| f16::from_f32((r * 4 + c) as f32 * 0.25));
//! let dy = Array2::from_elem((8, 4), f16::from_f32(0.01));        // from the layer above
//! let mut stats = ln.stats_for(&x);
//! let (mut y, mut dx) = (Array2::from_elem((8, 4), f16::ZERO), Array2::from_elem((8, 4), f16::ZERO));
//! let (mut dgain, mut dbias) = (Array1::<f32>::zeros(4), Array1::<f32>::zeros(4));
//!
//! ln.forward_with_stats_into(&x, &mut y, &mut stats)?;            // f16 in, f16 out
//! ln.backward_into(&x, &stats, &dy, &mut dx, Some(&mut dgain), Some(&mut dbias))?;
//! if let (Some(mut gain), Some(mut bias)) = ln.parameters_mut() { // f32 master parameters
//!     gain.scaled_add(-0.1, &dgain);
//!     bias.scaled_add(-0.1, &dbias);
//! }
//! assert!((dbias[0] - 8.0 * 0.01).abs() < 1e-4);                   // Σ_rows dy, in f32
//! assert!((ln.bias().expect("bias")[0] + 0.008).abs() < 1e-5);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "half"))]
//! # fn main() {}
//! ```
//!
//! # Reference
//!
//! Jimmy Lei Ba, Jamie Ryan Kiros, Geoffrey E. Hinton. *Layer Normalization.* arXiv:1607.06450,
//! 2016.

// `unsafe` is allowed in one module only, `kernels/cpu/`: the streaming stores and the f16
// conversion instructions (F16C on x86-64, NEON's on aarch64).
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod element;
mod error;
mod kernels;
mod layer_norm;
mod norm;
mod rms_norm;
mod rows;
#[cfg(feature = "serde")]
mod serialize;
mod spare;
mod stats;

pub use crate::element::{Element, Parameter};
pub use crate::error::NormError;
pub use crate::layer_norm::LayerNorm;
pub use crate::norm::DEFAULT_EPS;
pub use crate::rms_norm::{RmsNorm, RmsNormGrads};
pub use crate::stats::{LayerNormGrads, NormStats, ResidualForward, RmsStats};
/// The ndarray this crate is built on (0.17): use it to name array types when your own
/// dependency is another version.
pub use ndarray;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
