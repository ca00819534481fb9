//! What safe Rust and pulp cannot express: CPU instructions issued through `core::arch` and
//! `asm!`, each behind a safe function and a proof that the CPU has the instruction. The
//! crate's only `unsafe` code, in its only module that allows it; each block states its
//! invariant under `// SAFETY:`.
//!
//! - [`stream`]: streaming (non-temporal) stores for outputs larger than the last-level cache.
//! - `f16c` (x86-64, feature `half`): the CPU's f16 conversions for the AVX2 half kernels.
//! - `fcvt` (aarch64, feature `half`): NEON's f16 conversions for the NEON half kernels.

#![allow(unsafe_code)]

#[cfg(all(feature = "half", target_arch = "x86_64"))]
pub(crate) mod f16c;
#[cfg(all(feature = "half", target_arch = "aarch64"))]
pub(crate) mod fcvt;
pub(crate) mod stream;
