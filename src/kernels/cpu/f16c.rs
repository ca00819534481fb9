//! The CPU's own f16 conversions (F16C: `vcvtph2ps`, `vcvtps2ph`) for the AVX2 kernels. pulp's
//! AVX2 token does not include F16C, so the instructions are issued by `asm!` (in functions that
//! enable AVX, a subset of the AVX2 kernels' features, so that they are inlined there), after a
//! run-time check that the CPU has them. They give exactly the bits of the `half` crate (round
//! to nearest, ties to even; NaN made quiet), which the tests in `kernels::half` check for every
//! f16 and for f32 values across their range.
//!
//! The kernels read and write f16 rows through [`F16cPieces`] and [`F16cPiecesMut`]: eight-value
//! pieces that only a [`HasF16c`] proof can make non-empty, so each piece comes with the proof
//! and no vector pays for a check. Where the CPU lacks F16C (no CPU with AVX2 is known to) the
//! dispatcher runs f16 kernels without SIMD (`Storage::runs_on_avx2`).

use super::stream::OutVectors;
use crate::kernels::half::{ReadPieces, WritePieces};
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
        #[cfg(test)]
        let has = has && !tests::PRETEND_NO_F16C.get();
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

/// f16 values as eight-value pieces for the F16C conversions: non-empty only when made by
/// `ReadPieces::new`, which takes the proof; so a piece that exists may be converted.
#[derive(Clone, Copy)]
pub(crate) struct F16cPieces<'a> {
    pieces: &'a [[u16; 8]],
}

/// [`F16cPieces`], written (and read, in place).
pub(crate) struct F16cPiecesMut<'a> {
    pieces: OutVectors<'a, [u16; 8], true>,
}

/// A piece of f16 pieces (`None` past their end) widened to f32.
#[inline(always)]
fn widen_piece(simd: V3, piece: Option<[u16; 8]>) -> Option<__m256> {
    // A piece exists, so the `HasF16c` proof made the pieces it came from: the CPU has F16C.
    Some(HasF16c(()).widen(simd, bytemuck::cast(piece?)))
}

impl<'a> ReadPieces<'a, HasF16c> for F16cPieces<'a> {
    #[inline(always)]
    fn new(_proof: HasF16c, pieces: &'a [[u16; 8]]) -> Self {
        F16cPieces { pieces }
    }
    #[inline(always)]
    fn empty() -> Self {
        F16cPieces { pieces: &[] }
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.pieces.len()
    }
    #[inline(always)]
    fn first(self, len: usize) -> Self {
        F16cPieces {
            pieces: &self.pieces[..len],
        }
    }
    #[inline(always)]
    fn widen(&self, simd: V3, k: usize) -> Option<__m256> {
        widen_piece(simd, self.pieces.get(k).copied())
    }
}

impl<'a> WritePieces<'a, HasF16c> for F16cPiecesMut<'a> {
    #[inline(always)]
    fn new(_proof: HasF16c, pieces: OutVectors<'a, [u16; 8], true>) -> Self {
        F16cPiecesMut { pieces }
    }
    #[inline(always)]
    fn empty() -> Self {
        F16cPiecesMut {
            pieces: OutVectors::empty(),
        }
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.pieces.len()
    }
    #[inline(always)]
    fn first(self, len: usize) -> Self {
        F16cPiecesMut {
            pieces: self.pieces.first(len),
        }
    }
    #[inline(always)]
    fn widen(&self, simd: V3, k: usize) -> Option<__m256> {
        widen_piece(simd, self.pieces.get(k))
    }
    #[inline(always)]
    fn narrow(&mut self, simd: V3, k: usize, values: __m256) -> bool {
        if k >= self.pieces.len() {
            return false;
        }
        // As in `widen_piece`: a piece exists, so the CPU has F16C.
        let bits = HasF16c(()).narrow(simd, values);
        self.pieces.put(k, bytemuck::cast(bits));
        true
    }
}

/// `vcvtph2ps ymm, xmm`. AVX is enabled for the 256-bit register operand (the function is
/// inlined into the AVX2 kernels, whose features include it).
#[target_feature(enable = "avx")]
#[inline]
fn widen8(bits: __m128i) -> __m256 {
    let wide: __m256;
    // SAFETY: the caller guarantees F16C; the instruction reads one register and writes one,
    // touching no memory or stack. It may set MXCSR's exception flags (invalid for a signaling
    // NaN), which Rust counts among the flags, so `preserves_flags` is not claimed.
    unsafe {
        asm!(
            "vcvtph2ps {wide}, {bits}",
            wide = lateout(ymm_reg) wide,
            bits = in(xmm_reg) bits,
            options(pure, nomem, nostack),
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
    // touching no memory or stack. It may set MXCSR's exception flags (inexact, overflow,
    // underflow, invalid), so `preserves_flags` is not claimed.
    unsafe {
        asm!(
            "vcvtps2ph {bits}, {values}, 0",
            bits = lateout(xmm_reg) bits,
            values = in(ymm_reg) values,
            options(pure, nomem, nostack),
        );
    }
    bits
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// Makes [`super::HasF16c::get`] answer `None` on this thread: the kernels then take
        /// the path of a CPU without F16C, which the tests check gives the same bits.
        pub(crate) static PRETEND_NO_F16C: Cell<bool> = const { Cell::new(false) };
    }
}
