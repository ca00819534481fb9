//! The CPU's own f16 conversions (F16C: `vcvtph2ps`, `vcvtps2ph`) for the AVX2 kernels. pulp's
//! AVX2 token does not include F16C, so the instructions are issued by `asm!` on 128-bit
//! registers (which need no target feature in the calling function), after a run-time check
//! that the CPU has them. Both give exactly the bits of the integer conversions in
//! `kernels::half` and of the `half` crate (round to nearest, ties to even; NaN made quiet),
//! which the tests there check for every f16 and for f32 values across their range.

#![allow(unsafe_code)]

use pulp::x86::V3;
use std::arch::asm;
use std::arch::x86_64::{__m128, __m128i, __m256};
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
    pub(crate) fn widen(self, simd: V3, bits: __m128i) -> __m256 {
        let high_bits = simd.sse2._mm_unpackhi_epi64(bits, bits);
        let (low, high) = (self.widen4(bits), self.widen4(high_bits));
        simd.avx._mm256_set_m128(high, low)
    }

    /// Eight f32 values rounded to f16, to nearest (ties to even).
    #[inline(always)]
    pub(crate) fn narrow(self, simd: V3, values: __m256) -> __m128i {
        let low = self.narrow4(simd.avx._mm256_castps256_ps128(values));
        let high = self.narrow4(simd.avx._mm256_extractf128_ps::<1>(values));
        simd.sse2._mm_unpacklo_epi64(low, high)
    }

    /// The four f16 values in the low 64 bits of `bits`, widened.
    #[inline(always)]
    fn widen4(self, bits: __m128i) -> __m128 {
        let wide: __m128;
        // SAFETY: `self` proves the CPU has F16C, whose `vcvtph2ps` (VEX.128) reads one
        // register and writes one, touching no memory, stack or flags.
        unsafe {
            asm!(
                "vcvtph2ps {wide}, {bits}",
                wide = lateout(xmm_reg) wide,
                bits = in(xmm_reg) bits,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        wide
    }

    /// Four f32 values rounded to f16, into the low 64 bits (the rest zero).
    #[inline(always)]
    fn narrow4(self, values: __m128) -> __m128i {
        let bits: __m128i;
        // SAFETY: `self` proves the CPU has F16C, whose `vcvtps2ph` (VEX.128, immediate 0:
        // round to nearest even, whatever MXCSR says) reads one register and writes one,
        // touching no memory, stack or flags.
        unsafe {
            asm!(
                "vcvtps2ph {bits}, {values}, 0",
                bits = lateout(xmm_reg) bits,
                values = in(xmm_reg) values,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        bits
    }
}
