//! What safe Rust and pulp cannot express: CPU instructions issued through `core::arch` and
//! `asm!`, each behind a safe function and a proof that the CPU has the instruction. The
//! crate's only `unsafe` code, in its only module that allows it; each block states its
//! invariant under `// SAFETY:`.
//!
//! - [`prefetch`]: software prefetch for the short-row forward from memory.
//! - [`stream`]: streaming (non-temporal) stores for outputs larger than the last-level cache.
//! - `f16c` (x86-64, feature `half`): the CPU's f16 conversions for the AVX2 half kernels.
//! - `fcvt` (aarch64, feature `half`): NEON's f16 conversions for the NEON half kernels.

#![allow(unsafe_code)]

#[cfg(all(feature = "half", target_arch = "x86_64"))]
pub(crate) mod f16c;
#[cfg(all(feature = "half", target_arch = "aarch64"))]
pub(crate) mod fcvt;
pub(crate) mod prefetch;
pub(crate) mod stream;

/// The value of the environment variable `name` (trimmed, in lower case), for the settings
/// that force a choice of the kernels' for measurements (`LAYERNORM_STORES`,
/// `LAYERNORM_PREFETCH`); `None` when unset or not Unicode.
fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_ascii_lowercase())
}
