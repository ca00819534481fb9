//! NEON's f16 conversions (`fcvtl`, `fcvtn`) for the aarch64 half kernels, four values at a
//! time. They are part of NEON (Advanced SIMD) itself, so pulp's `Neon` token is the whole
//! proof the CPU has them; Rust has no stable intrinsic for them (its f16 vector types are
//! unstable), so they are issued by `asm!`. `fcvtl` is exact; `fcvtn` rounds as the
//! floating-point control register says, which Rust code runs with at its default, to nearest,
//! ties to even. A NaN is made quiet, its upper payload bits kept. These are the bits of the
//! `half` crate, which the tests in `kernels::half` check for every f16 and for f32 values
//! across their range.

use pulp::aarch64::Neon;
use std::arch::aarch64::{float32x4_t, uint16x4_t};
use std::arch::asm;

/// Four f16 values (the bits in `bits`) widened to f32: `fcvtl v.4s, v.4h`.
#[inline(always)]
pub(crate) fn widen4(_simd: Neon, bits: uint16x4_t) -> float32x4_t {
    let wide: float32x4_t;
    // SAFETY: the `Neon` token proves the CPU has NEON, which includes the instruction. It
    // reads one register and writes one, touching no memory or stack; it may set exception
    // flags in FPSR (a signaling NaN), so `preserves_flags` is not claimed.
    unsafe {
        asm!(
            "fcvtl {wide:v}.4s, {bits:v}.4h",
            wide = lateout(vreg) wide,
            bits = in(vreg) bits,
            options(pure, nomem, nostack),
        );
    }
    wide
}

/// Four f32 values rounded to f16, to nearest (ties to even): `fcvtn v.4h, v.4s`.
#[inline(always)]
pub(crate) fn narrow4(_simd: Neon, values: float32x4_t) -> uint16x4_t {
    let bits: uint16x4_t;
    // SAFETY: as for `widen4`: NEON from the token; registers only; FPSR's exception flags
    // (inexact, overflow, underflow, invalid) may be set.
    unsafe {
        asm!(
            "fcvtn {bits:v}.4h, {values:v}.4s",
            bits = lateout(vreg) bits,
            values = in(vreg) values,
            options(pure, nomem, nostack),
        );
    }
    bits
}
