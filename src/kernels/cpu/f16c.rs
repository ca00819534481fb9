//! The CPU's own f16 conversions (F16C: `vcvtph2ps`, `vcvtps2ph`) for the AVX2 kernels. pulp's
//! AVX2 token does not include F16C, so the instructions are issued by `asm!` (in functions that
//! enable AVX, a subset of the AVX2 kernels' features, so that they are inlined there), after a
//! run-time check that the CPU has them. Both give exactly the bits of the integer conversions in
//! `kernels::half` and of the `half` crate (round to nearest, ties to even; NaN made quiet),
//! which the tests there check for every f16 and for f32 values across their range.

use pulp::x86::V3;
use std::arch::asm;
use std::arch::x86_64::{__m128i, __m256};
use std::sync::OnceLock;

/// Proof that the CPU has F16C: the private field lets only [`HasF16c::get`], which checks,
/// make one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HasF16c(());

impl HasF16c {
    /// The proof, where the CPU has F16C (checked once).
    #[inline(always)]
    pub(crate) fn get() -> Option<Self> {
        static HAS: OnceLock<bool> = OnceLock::new();
        let has = *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("f16c"));
        has.then_some(HasF16c(()))
    }

    /// Eight f16 values (the bits in `bits`) widened to f32.
    #[inline(always)]
    pub(crate) fn widen(self, _simd: V3, bits: __m128i) -> __m256 {
        // SAFETY: the `V3` token proves the CPU has AVX, the only target feature `widen8`
        // enables; `self` proves F16C, whose instruction its `asm!` issues.
        unsafe { widen8(bits) }
    }

    /// Eight f32 values rounded to f16, to nearest (ties to even).
    #[inline(always)]
    pub(crate) fn narrow(self, _simd: V3, values: __m256) -> __m128i {
        // SAFETY: as for `widen`: AVX from the `V3` token, F16C from `self`.
        unsafe { narrow8(values) }
    }
}

/// `vcvtph2ps ymm, xmm`. AVX is enabled for the 256-bit register operand (the function is
/// inlined into the AVX2 kernels, whose features include it).
#[target_feature(enable = "avx")]
#[inline]
fn widen8(bits: __m128i) -> __m256 {
    let wide: __m256;
    // SAFETY: the caller guarantees F16C; the instruction reads one register and writes one,
    // touching no memory, stack or flags.
    unsafe {
        asm!(
            "vcvtph2ps {wide}, {bits}",
            wide = lateout(ymm_reg) wide,
            bits = in(xmm_reg) bits,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    wide
}

/// `vcvtps2ph xmm, ymm, 0` (immediate 0: round to nearest even, whatever MXCSR says).
#[target_feature(enable = "avx")]
#[inline]
fn narrow8(values: __m256) -> __m128i {
    let bits: __m128i;
    // SAFETY: the caller guarantees F16C; the instruction reads one register and writes one,
    // touching no memory, stack or flags.
    unsafe {
        asm!(
            "vcvtps2ph {bits}, {values}, 0",
            bits = lateout(xmm_reg) bits,
            values = in(ymm_reg) values,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    bits
}
