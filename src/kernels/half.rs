//! f16 and bf16 rows in the SIMD kernels: each vector is widened to f32 as it is loaded and
//! rounded back to half as it is stored, in registers, so the kernels compute exactly what
//! they compute on f32 rows (statistics, sums and fallback rows included) and the result is
//! rounded to half once. Statistics are returned in f32, rounded from the kernels' f64 ones.
//!
//! Conversions: on x86-64 with AVX2 (`pulp::x86::V3`) eight values at a time, bf16 by integer
//! operations (it is the upper half of an f32) and f16 by the CPU's F16C instructions
//! (`kernels::f16c`); on aarch64 with NEON (`pulp::aarch64::Neon`) four at a time, bf16 by
//! integer operations and f16 by NEON's own conversion instructions (`kernels::fcvt`);
//! elsewhere, and for f16 on an x86-64 CPU without F16C, one lane at a time. All give the bits
//! of the `half` crate's `to_f32` / `from_f32` (round to nearest, ties to even; NaN made
//! quiet), which the tests below check for every half value and for f32 values across their
//! whole range. On AVX-512 (`pulp::x86::V4`) sixteen values at a time, from the row's values
//! (not pieces): f16 by AVX-512F's own conversions, bf16 by the integer operations of AVX2 on
//! 512-bit vectors ([`HalfElement::widen_v4`]); the same bits as on AVX2.
//!
//! On those two instruction sets ([`isa`]) a row's full vectors are pieces of one vector's
//! half values ([`HalfElement::Pieces`]) that carry what their conversion needs (for f16 on
//! x86-64 the proof that the CPU has F16C), so the loops convert each vector without a check of
//! their own. Where an x86-64 CPU lacks F16C, the dispatcher runs f16 kernels without SIMD
//! instead ([`Storage::runs_on_avx2`]).

#[cfg(target_arch = "x86_64")]
use super::f16c::{F16cPieces, F16cPiecesMut, HasF16c};
use super::simd::{Backward, Storage};
use super::stream::{OutVectors, Stores};
use super::{
    scalar, BackwardJob, BackwardOut, BackwardRows, ForwardRows, GradSums, Layer, RowStatsOut,
};
use crate::element::Element;
use crate::spare::Spare;
use isa::{Piece, Token, Wide};
use pulp::Simd;
#[cfg(target_arch = "x86_64")]
use {
    pulp::x86::{V3, V4},
    std::arch::x86_64::{__m128i, __m256, __m256i, __m512, __m512i},
};

/// The instruction set the half conversions are written for (pulp's token for it), its f32
/// vector, and a piece: the bits of one such vector's half values. Rows are read as pieces on
/// this instruction set only, lane by lane on any other.
#[cfg(target_arch = "x86_64")]
pub(crate) mod isa {
    pub(crate) use pulp::x86::V3 as Token;
    pub(crate) use std::arch::x86_64::__m256 as Wide;
    pub(crate) type Piece = [u16; 8];
}

/// See the x86-64 `isa`: NEON's 128-bit vectors, four values.
#[cfg(target_arch = "aarch64")]
pub(crate) mod isa {
    pub(crate) use pulp::aarch64::Neon as Token;
    pub(crate) use std::arch::aarch64::float32x4_t as Wide;
    pub(crate) type Piece = [u16; 4];
}

/// See the x86-64 `isa`: no instruction set here, so no row is read as pieces (a token of this
/// type cannot exist).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) mod isa {
    #[derive(Clone, Copy)]
    pub(crate) enum Token {}
    pub(crate) type Wide = [f32; 4];
    pub(crate) type Piece = [u16; 4];
}

/// A half-precision element: its conversions to and from f32, one value and a piece at a time.
pub(crate) trait HalfElement: Element<Stat = f32, Compute = f32> + bytemuck::Pod {
    fn widen_one(self) -> f32;
    fn narrow_one(value: f32) -> Self;
    /// What the piece conversions need beyond the instruction set's token (for f16 on x86-64,
    /// the proof that the CPU has F16C).
    type Proof: Copy;
    /// A row's values as pieces for the conversions in registers, read and written.
    type Pieces<'a>: ReadPieces<'a, Self::Proof>;
    type PiecesMut<'a>: WritePieces<'a, Self::Proof>;
    /// The proof, where this CPU has what the piece conversions need (checked once).
    fn proof() -> Option<Self::Proof>;
    /// Sixteen values (the bits in `bits`) widened to f32 on AVX-512: the bits of the AVX2
    /// piece conversions.
    #[cfg(target_arch = "x86_64")]
    fn widen_v4(simd: V4, bits: __m256i) -> __m512;
    /// Sixteen f32 rounded on AVX-512: the bits of [`HalfElement::narrow_one`].
    #[cfg(target_arch = "x86_64")]
    fn narrow_v4(simd: V4, values: __m512) -> __m256i;
    /// [`HalfElement::narrow_v4`] for the values [`Storage::store_plain_nans`] is used for.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn narrow_v4_plain(simd: V4, values: __m512) -> __m256i {
        Self::narrow_v4(simd, values)
    }
}

/// A row's full vectors as pieces that convert on [`isa::Token`]'s instruction set.
pub(crate) trait ReadPieces<'a, P>: Copy {
    fn new(proof: P, pieces: &'a [Piece]) -> Self;
    /// No pieces: not on that instruction set (the row goes lane by lane).
    fn empty() -> Self;
    fn len(&self) -> usize;
    /// The first `len` pieces.
    fn first(self, len: usize) -> Self;
    /// Piece `k` widened to f32; `None` past the end.
    fn widen(&self, simd: Token, k: usize) -> Option<Wide>;
    /// [`ReadPieces::widen`] where a signaling NaN may stay signaling (see
    /// [`Storage::load_unquieted`]).
    #[inline(always)]
    fn widen_unquieted(&self, simd: Token, k: usize) -> Option<Wide> {
        self.widen(simd, k)
    }
}

/// [`ReadPieces`], written (and read, in place).
pub(crate) trait WritePieces<'a, P> {
    fn new(proof: P, pieces: OutVectors<'a, Piece, true>) -> Self;
    fn empty() -> Self;
    fn len(&self) -> usize;
    fn first(self, len: usize) -> Self;
    fn widen(&self, simd: Token, k: usize) -> Option<Wide>;
    /// [`ReadPieces::widen_unquieted`], in place.
    #[inline(always)]
    fn widen_unquieted(&self, simd: Token, k: usize) -> Option<Wide> {
        self.widen(simd, k)
    }
    /// `values` rounded to half into piece `k` (stored as the row's [`OutVectors`] say);
    /// `false` past the end.
    fn narrow(&mut self, simd: Token, k: usize, values: Wide) -> bool;
    /// [`WritePieces::narrow`] for values whose NaNs are plain (see
    /// [`Storage::store_plain_nans`]).
    #[inline(always)]
    fn narrow_plain(&mut self, simd: Token, k: usize, values: Wide) -> bool {
        self.narrow(simd, k, values)
    }
}

/// Piece conversions that need nothing beyond the instruction set's token: bf16 everywhere,
/// and f16 on aarch64 (NEON's conversion instructions are part of NEON).
pub(crate) trait TokenConversions: Copy {
    fn widen_piece(simd: Token, bits: Piece) -> Wide;
    /// [`TokenConversions::widen_piece`] where a signaling NaN may stay signaling (see
    /// [`Storage::load_unquieted`]).
    #[inline(always)]
    fn widen_piece_unquieted(simd: Token, bits: Piece) -> Wide {
        Self::widen_piece(simd, bits)
    }
    fn narrow_piece(simd: Token, values: Wide) -> Piece;
    /// [`TokenConversions::narrow_piece`] for values whose NaNs are plain (see
    /// [`Storage::store_plain_nans`]).
    #[inline(always)]
    fn narrow_piece_plain(simd: Token, values: Wide) -> Piece {
        Self::narrow_piece(simd, values)
    }
}

/// A half row's full vectors: on [`isa::Token`]'s instruction set as pieces (indexed without
/// slicing, each converted without a check), otherwise as the values (a whole number of
/// vectors, converted lane by lane); the other is empty.
pub(crate) struct HalfVectors<'a, H: HalfElement> {
    values: &'a [H],
    pieces: H::Pieces<'a>,
}

impl<H: HalfElement> Clone for HalfVectors<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H: HalfElement> Copy for HalfVectors<'_, H> {}

/// [`HalfVectors`], written.
pub(crate) struct HalfVectorsMut<'a, H: HalfElement> {
    values: &'a mut [H],
    pieces: H::PiecesMut<'a>,
}

/// Pieces whose conversions need only the token ([`TokenConversions`] of `H`).
pub(crate) struct TokenPieces<'a, H>(&'a [Piece], std::marker::PhantomData<H>);

impl<H> Clone for TokenPieces<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H> Copy for TokenPieces<'_, H> {}

/// [`TokenPieces`], written (and read, in place).
pub(crate) struct TokenPiecesMut<'a, H>(OutVectors<'a, Piece, true>, std::marker::PhantomData<H>);

impl<'a, H: TokenConversions> ReadPieces<'a, ()> for TokenPieces<'a, H> {
    #[inline(always)]
    fn new((): (), pieces: &'a [Piece]) -> Self {
        TokenPieces(pieces, std::marker::PhantomData)
    }
    #[inline(always)]
    fn empty() -> Self {
        Self::new((), &[])
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn first(self, len: usize) -> Self {
        Self::new((), &self.0[..len])
    }
    #[inline(always)]
    fn widen(&self, simd: Token, k: usize) -> Option<Wide> {
        Some(H::widen_piece(simd, *self.0.get(k)?))
    }
    #[inline(always)]
    fn widen_unquieted(&self, simd: Token, k: usize) -> Option<Wide> {
        Some(H::widen_piece_unquieted(simd, *self.0.get(k)?))
    }
}

impl<'a, H: TokenConversions> WritePieces<'a, ()> for TokenPiecesMut<'a, H> {
    #[inline(always)]
    fn new((): (), pieces: OutVectors<'a, Piece, true>) -> Self {
        TokenPiecesMut(pieces, std::marker::PhantomData)
    }
    #[inline(always)]
    fn empty() -> Self {
        Self::new((), OutVectors::empty())
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn first(self, len: usize) -> Self {
        Self::new((), self.0.first(len))
    }
    #[inline(always)]
    fn widen(&self, simd: Token, k: usize) -> Option<Wide> {
        Some(H::widen_piece(simd, self.0.get(k)?))
    }
    #[inline(always)]
    fn widen_unquieted(&self, simd: Token, k: usize) -> Option<Wide> {
        Some(H::widen_piece_unquieted(simd, self.0.get(k)?))
    }
    #[inline(always)]
    fn narrow(&mut self, simd: Token, k: usize, values: Wide) -> bool {
        if k >= self.0.len() {
            return false;
        }
        self.0.put(k, H::narrow_piece(simd, values));
        true
    }
    #[inline(always)]
    fn narrow_plain(&mut self, simd: Token, k: usize, values: Wide) -> bool {
        if k >= self.0.len() {
            return false;
        }
        self.0.put(k, H::narrow_piece_plain(simd, values));
        true
    }
}

// f16's pieces on x86-64 (`F16cPieces`, `F16cPiecesMut`) implement these traits in
// `kernels::f16c`.

/// bf16: the upper half of an f32.
impl HalfElement for half::bf16 {
    #[inline(always)]
    fn widen_one(self) -> f32 {
        bf16_to_f32(self.to_bits())
    }

    #[inline(always)]
    fn narrow_one(value: f32) -> Self {
        half::bf16::from_bits(f32_to_bf16(value))
    }

    type Proof = ();
    type Pieces<'a> = TokenPieces<'a, Self>;
    type PiecesMut<'a> = TokenPiecesMut<'a, Self>;

    #[inline(always)]
    fn proof() -> Option<()> {
        Some(())
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn widen_v4(simd: V4, bits: __m256i) -> __m512 {
        let f = simd.avx512f;
        f._mm512_castsi512_ps(f._mm512_slli_epi32::<16>(f._mm512_cvtepu16_epi32(bits)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn narrow_v4(simd: V4, values: __m512) -> __m256i {
        let f = simd.avx512f;
        let bits = f._mm512_castps_si512(values);
        let quiet = f._mm512_or_si512(bits, f._mm512_set1_epi32(0x0040_0000));
        // Unordered with itself: NaN.
        let is_nan = f._mm512_cmp_ps_mask::<3>(values, values);
        let chosen = f._mm512_mask_blend_epi32(is_nan, bf16_rounded_bits_v4(simd, bits), quiet);
        upper_halves_v4(simd, chosen)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn narrow_v4_plain(simd: V4, values: __m512) -> __m256i {
        let bits = simd.avx512f._mm512_castps_si512(values);
        upper_halves_v4(simd, bf16_rounded_bits_v4(simd, bits))
    }
}

/// [`bf16_rounded_bits`] on sixteen lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_rounded_bits_v4(simd: V4, bits: __m512i) -> __m512i {
    let f = simd.avx512f;
    let last_kept = f._mm512_and_si512(f._mm512_srli_epi32::<16>(bits), f._mm512_set1_epi32(1));
    let bias = f._mm512_add_epi32(last_kept, f._mm512_set1_epi32(0x7FFF));
    f._mm512_add_epi32(bits, bias)
}

/// The upper halves of sixteen 32-bit lanes, in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn upper_halves_v4(simd: V4, lanes: __m512i) -> __m256i {
    let f = simd.avx512f;
    f._mm512_cvtepi32_epi16(f._mm512_srli_epi32::<16>(lanes))
}

#[cfg(target_arch = "x86_64")]
impl TokenConversions for half::bf16 {
    #[inline(always)]
    fn widen_piece(simd: Token, bits: Piece) -> Wide {
        bf16_widen_v3(simd, bytemuck::cast(bits))
    }
    #[inline(always)]
    fn narrow_piece(simd: Token, values: Wide) -> Piece {
        bytemuck::cast(bf16_narrow_v3(simd, values))
    }
    #[inline(always)]
    fn narrow_piece_plain(simd: Token, values: Wide) -> Piece {
        bytemuck::cast(bf16_narrow_plain_v3(simd, values))
    }
}

#[cfg(target_arch = "aarch64")]
impl TokenConversions for half::bf16 {
    #[inline(always)]
    fn widen_piece(simd: Token, bits: Piece) -> Wide {
        neon::bf16_widen(simd, bits)
    }
    #[inline(always)]
    fn widen_piece_unquieted(simd: Token, bits: Piece) -> Wide {
        neon::bf16_widen_unquieted(simd, bits)
    }
    #[inline(always)]
    fn narrow_piece(simd: Token, values: Wide) -> Piece {
        neon::bf16_narrow(simd, values)
    }
    #[inline(always)]
    fn narrow_piece_plain(simd: Token, values: Wide) -> Piece {
        neon::bf16_narrow_plain(simd, values)
    }
}

/// No token exists here (see `isa`): nothing to convert.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
macro_rules! no_token_conversions {
    ($half:ty) => {
        impl TokenConversions for $half {
            fn widen_piece(simd: Token, _bits: Piece) -> Wide {
                match simd {}
            }
            fn narrow_piece(simd: Token, _values: Wide) -> Piece {
                match simd {}
            }
        }
    };
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
no_token_conversions!(half::bf16);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
no_token_conversions!(half::f16);

/// Eight bf16 (the bits in a 128-bit register) widened to f32, on AVX2: shifted into the
/// upper half. A signaling NaN stays signaling here (`widen_one` makes it quiet): the kernels
/// only ever compute with what they load, and x86 arithmetic on a signaling NaN gives the same
/// quiet NaN as on the quieted one, so results have the same bits either way (the kernel tests
/// check NaN rows on every instruction set).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_widen_v3(simd: V3, bits: __m128i) -> __m256 {
    let wide = simd.avx2._mm256_cvtepu16_epi32(bits);
    simd.avx
        ._mm256_castsi256_ps(simd.avx2._mm256_slli_epi32::<16>(wide))
}

/// Eight f32 rounded to bf16, on AVX2: to nearest, ties to even, on the integer bits (a carry
/// out of the mantissa gives the next exponent, and ±Inf past the largest finite value); a NaN
/// keeps its upper bits, made quiet.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_narrow_v3(simd: V3, values: __m256) -> __m128i {
    let avx = simd.avx;
    let bits = avx._mm256_castps_si256(values);
    let quiet = avx._mm256_castsi256_ps(
        simd.avx2
            ._mm256_or_si256(bits, avx._mm256_set1_epi32(0x0040_0000)),
    );
    // Unordered with itself: NaN.
    let is_nan = avx._mm256_cmp_ps::<3>(values, values);
    let rounded = avx._mm256_castsi256_ps(bf16_rounded_bits(simd, bits));
    let chosen = avx._mm256_blendv_ps(rounded, quiet, is_nan);
    upper_halves(simd, avx._mm256_castps_si256(chosen))
}

/// [`bf16_narrow_v3`] without its test for NaN: the same bits for every lane but a NaN that
/// is signaling or has any of its lower 16 bits set (see [`Storage::store_plain_nans`]: the
/// NaNs that arithmetic makes from operands that are not NaN, and those it carries from bf16
/// values, have neither). Three fewer instructions per vector than [`bf16_narrow_v3`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_narrow_plain_v3(simd: V3, values: __m256) -> __m128i {
    let bits = simd.avx._mm256_castps_si256(values);
    upper_halves(simd, bf16_rounded_bits(simd, bits))
}

/// Eight f32 bit patterns rounded at their 16th bit, to nearest, ties to even: the bf16 in
/// each lane's upper half (for every value that is not NaN).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_rounded_bits(simd: V3, bits: __m256i) -> __m256i {
    let (avx, avx2) = (simd.avx, simd.avx2);
    let last_kept =
        avx2._mm256_and_si256(avx2._mm256_srli_epi32::<16>(bits), avx._mm256_set1_epi32(1));
    let bias = avx2._mm256_add_epi32(last_kept, avx._mm256_set1_epi32(0x7FFF));
    avx2._mm256_add_epi32(bits, bias)
}

/// The upper halves of eight 32-bit lanes, in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn upper_halves(simd: V3, lanes: __m256i) -> __m128i {
    let (avx, avx2) = (simd.avx, simd.avx2);
    // The upper two bytes of each lane (bytes 2, 3, 6, 7, 10, 11, 14, 15 of each 128-bit
    // half) to the half's first eight bytes, then the halves' first eight bytes together.
    let upper = avx._mm256_setr_epi8(
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, //
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let gathered = avx2._mm256_shuffle_epi8(lanes, upper);
    let ordered = avx2._mm256_permute4x64_epi64::<0b00_00_10_00>(gathered);
    avx._mm256_castsi256_si128(ordered)
}

/// f16: the CPU's conversion instructions: F16C on x86-64 machines with AVX2 that have it
/// (every one known), NEON's on aarch64; lane by lane otherwise.
impl HalfElement for half::f16 {
    #[inline(always)]
    fn widen_one(self) -> f32 {
        self.to_f32()
    }

    #[inline(always)]
    fn narrow_one(value: f32) -> Self {
        half::f16::from_f32(value)
    }

    #[cfg(target_arch = "x86_64")]
    type Proof = HasF16c;
    #[cfg(target_arch = "x86_64")]
    type Pieces<'a> = F16cPieces<'a>;
    #[cfg(target_arch = "x86_64")]
    type PiecesMut<'a> = F16cPiecesMut<'a>;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn proof() -> Option<HasF16c> {
        HasF16c::get()
    }

    /// `vcvtph2ps`, AVX-512F's own (a NaN made quiet, as F16C does).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn widen_v4(simd: V4, bits: __m256i) -> __m512 {
        simd.avx512f._mm512_cvtph_ps(bits)
    }

    /// `vcvtps2ph` with immediate 8: round to nearest, ties to even, whatever MXCSR says
    /// (exceptions suppressed, which changes no bits of the result).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn narrow_v4(simd: V4, values: __m512) -> __m256i {
        simd.avx512f._mm512_cvtps_ph::<8>(values)
    }

    #[cfg(not(target_arch = "x86_64"))]
    type Proof = ();
    #[cfg(not(target_arch = "x86_64"))]
    type Pieces<'a> = TokenPieces<'a, Self>;
    #[cfg(not(target_arch = "x86_64"))]
    type PiecesMut<'a> = TokenPiecesMut<'a, Self>;

    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn proof() -> Option<()> {
        Some(())
    }
}

#[cfg(target_arch = "aarch64")]
impl TokenConversions for half::f16 {
    #[inline(always)]
    fn widen_piece(simd: Token, bits: Piece) -> Wide {
        super::fcvt::widen4(simd, bytemuck::cast(bits))
    }
    #[inline(always)]
    fn narrow_piece(simd: Token, values: Wide) -> Piece {
        bytemuck::cast(super::fcvt::narrow4(simd, values))
    }
}

/// bf16 on NEON: the integer conversions of the AVX2 ones, four values at a time.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::isa::{Piece, Token, Wide};
    use std::arch::aarch64::uint32x4_t;

    /// Four bf16 widened to f32: shifted into the upper half, a NaN made quiet (as
    /// `bf16_to_f32` does). Unlike x86, aarch64 arithmetic gives a signaling NaN operand
    /// precedence over a quiet one, so a NaN left signaling could change which NaN a result
    /// carries. `fmax` of a value with itself is that value, but a signaling NaN comes out
    /// quiet with its sign and payload (FPCR's default-NaN mode is off in Rust's default
    /// environment): one instruction for the three of a test and a select.
    #[inline(always)]
    pub(super) fn bf16_widen(simd: Token, bits: Piece) -> Wide {
        let neon = simd.neon;
        let values = bf16_widen_unquieted(simd, bits);
        neon.vmaxq_f32(values, values)
    }

    /// [`bf16_widen`] without making a NaN quiet: the shift alone (see
    /// `Storage::load_unquieted` for where that is exact).
    #[inline(always)]
    pub(super) fn bf16_widen_unquieted(simd: Token, bits: Piece) -> Wide {
        let neon = simd.neon;
        neon.vreinterpretq_f32_u32(neon.vshll_n_u16::<16>(bytemuck::cast(bits)))
    }

    /// Four f32 rounded to bf16: to nearest, ties to even, on the integer bits (as
    /// `bf16_narrow_v3`); a NaN keeps its upper bits, made quiet. The rounding's addition is
    /// masked off NaN lanes, which `fmax` makes quiet (see [`bf16_widen`]).
    #[inline(always)]
    pub(super) fn bf16_narrow(simd: Token, values: Wide) -> Piece {
        let neon = simd.neon;
        let bits = neon.vreinterpretq_u32_f32(values);
        // All ones where the lane is not NaN (equal to itself).
        let ordered = neon.vceqq_f32(values, values);
        let bias = neon.vandq_u32(rounding_bias(simd, bits), ordered);
        let quiet = neon.vreinterpretq_u32_f32(neon.vmaxq_f32(values, values));
        bytemuck::cast(neon.vaddhn_u32(quiet, bias))
    }

    /// [`bf16_narrow`] without its test for NaN (see `bf16_narrow_plain_v3`): the sum's upper
    /// halves in one instruction.
    #[inline(always)]
    pub(super) fn bf16_narrow_plain(simd: Token, values: Wide) -> Piece {
        let neon = simd.neon;
        let bits = neon.vreinterpretq_u32_f32(values);
        bytemuck::cast(neon.vaddhn_u32(bits, rounding_bias(simd, bits)))
    }

    /// What rounds each lane's bits at their 16th bit to nearest, ties to even, when added:
    /// `0x7FFF` plus the last bit kept.
    #[inline(always)]
    fn rounding_bias(simd: Token, bits: uint32x4_t) -> uint32x4_t {
        let neon = simd.neon;
        let last_kept = neon.vandq_u32(neon.vshrq_n_u32::<16>(bits), neon.vdupq_n_u32(1));
        neon.vaddq_u32(last_kept, neon.vdupq_n_u32(0x7FFF))
    }
}

/// A bf16's bits as f32: shifted into the upper half; a NaN is made quiet.
#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    let quiet = if bits & 0x7FFF > 0x7F80 { 0x0040 } else { 0 };
    f32::from_bits(u32::from(bits | quiet) << 16)
}

/// An f32 rounded to the nearest bf16, ties to even (a carry out of the mantissa gives the next
/// exponent, and ±Inf past the largest finite value); a NaN keeps its upper bits, made quiet.
#[inline(always)]
fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let upper = bits >> 16;
    // Round up when the first dropped bit is set and either a later dropped bit or the kept
    // last bit is: to nearest, ties to even.
    let round_up = (bits & 0x8000 != 0) & (bits & 0x1_7FFF != 0);
    let rounded = upper + u32::from(round_up);
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    (if is_nan { upper | 0x0040 } else { rounded }) as u16
}

/// The token of [`isa`] when the kernels run on its instruction set (a type comparison the
/// compiler resolves).
#[inline(always)]
fn as_token<S: Simd>(simd: S) -> Option<Token> {
    (&simd as &dyn std::any::Any)
        .downcast_ref::<Token>()
        .copied()
}

/// Lanes of an f32 vector on `S`.
#[inline(always)]
fn lanes<S: Simd>() -> usize {
    size_of::<S::f32s>() / size_of::<f32>()
}

/// Whether the kernels run on [`isa`]'s instruction set (`S` is its token): rows as pieces.
#[inline(always)]
fn in_pieces<S: Simd>() -> bool {
    std::any::TypeId::of::<S>() == std::any::TypeId::of::<Token>()
}

/// `values` (at most a vector) widened into the first lanes, zeros elsewhere: a row's last,
/// partial vector. Padded with zeros to a whole vector and converted as full vectors are:
/// sixteen values at a time on AVX-512, as a piece on [`isa`]'s instruction set where the CPU
/// has the piece conversions (the same bits as lane by lane, see the module notes), lane by
/// lane elsewhere. Converting a tail of f16 values one by one cost more than the rest of a
/// short row (f16 8192×100 forward on an AVX-512 Xeon VM: 1.8× the time of 8192×96).
#[inline(always)]
fn widen_partial<H: HalfElement, S: Simd>(simd: S, values: &[H]) -> S::f32s {
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = as_v4(simd) {
        let bits: [u16; 16] = padded_bits(values);
        return bytemuck::cast(H::widen_v4(v4, bytemuck::cast(bits)));
    }
    if let (Some(token), Some(proof)) = (as_token(simd), H::proof()) {
        let piece: Piece = padded_bits(values);
        if let Some(widened) = H::Pieces::new(proof, std::slice::from_ref(&piece)).widen(token, 0) {
            return bytemuck::cast(widened);
        }
    }
    let mut vector = simd.splat_f32s(0.0);
    let lanes: &mut [f32] = bytemuck::cast_slice_mut(std::slice::from_mut(&mut vector));
    for (lane, &value) in lanes.iter_mut().zip(values) {
        *lane = value.widen_one();
    }
    vector
}

/// The first `values.len()` lanes of `vector` rounded into `values` (at most a vector): as
/// [`widen_partial`] converts, the whole vector rounded, then its first lanes copied.
#[inline(always)]
fn narrow_partial<H: HalfElement, S: Simd>(simd: S, values: &mut [H], vector: S::f32s) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = as_v4(simd) {
        let bits: [u16; 16] = bytemuck::cast(H::narrow_v4(v4, bytemuck::cast(vector)));
        copy_first_bits(values, bits);
        return;
    }
    if let (Some(token), Some(proof)) = (as_token(simd), H::proof()) {
        let mut piece: Piece = bytemuck::Zeroable::zeroed();
        let stored = H::PiecesMut::new(
            proof,
            OutVectors::new(Stores::Cached, std::slice::from_mut(&mut piece)),
        )
        .narrow(token, 0, bytemuck::cast(vector));
        if stored {
            copy_first_bits(values, piece);
            return;
        }
    }
    let lanes: &[f32] = bytemuck::cast_slice(std::slice::from_ref(&vector));
    for (value, &lane) in values.iter_mut().zip(lanes) {
        *value = H::narrow_one(lane);
    }
}

/// The bits of `values` (at most as many as `B` holds), zeros after them. A loop of
/// constant length: a copy of `values.len()` values compiles to a call of `memcpy`, costly
/// once per row (the registers are saved around it).
#[inline(always)]
fn padded_bits<H: HalfElement, B: bytemuck::Pod>(values: &[H]) -> B {
    let mut padded = B::zeroed();
    let bits: &mut [u16] = bytemuck::cast_slice_mut(std::slice::from_mut(&mut padded));
    debug_assert!(
        values.len() <= bits.len(),
        "more values than a vector holds"
    );
    for (lane, bit) in bits.iter_mut().enumerate() {
        if let Some(&value) = values.get(lane) {
            *bit = bytemuck::cast(value);
        }
    }
    padded
}

/// The first `values.len()` of `bits` (as many or more) into `values`, by a loop of constant
/// length (see [`padded_bits`]).
#[inline(always)]
fn copy_first_bits<H: HalfElement, B: bytemuck::Pod>(values: &mut [H], bits: B) {
    let bits: &[u16] = bytemuck::cast_slice(std::slice::from_ref(&bits));
    debug_assert!(
        values.len() <= bits.len(),
        "more values than a vector holds"
    );
    for (lane, &bit) in bits.iter().enumerate() {
        if let Some(value) = values.get_mut(lane) {
            *value = bytemuck::cast(bit);
        }
    }
}

/// Vector `k` of a row's full vectors, widened: from its piece on [`isa`]'s instruction set
/// (by `widen`, a [`ReadPieces`] or [`WritePieces`] method for piece `k`), lane by lane from
/// the values elsewhere (and where the CPU lacks the piece conversions).
#[inline(always)]
fn load_vector<H: HalfElement, S: Simd>(
    simd: S,
    widen: impl FnOnce(Token) -> Option<Wide>,
    values: &[H],
    k: usize,
) -> S::f32s {
    if let Some(token) = as_token(simd) {
        return bytemuck::cast(widen(token).unwrap_or_else(|| past_the_pieces(k)));
    }
    widen_lanes(simd, values, k)
}

/// Vector `k` is not a piece of the row: past its full vectors, or the CPU lacks the piece
/// conversions, which [`Storage::runs_on_avx2`] keeps the dispatcher from choosing AVX2 for.
#[cold]
#[inline(never)]
fn past_the_pieces(k: usize) -> ! {
    panic!("vector {k} is not one of the row's pieces")
}

/// The AVX-512 token when the kernels run on AVX-512 (a type comparison the compiler resolves).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_v4<S: Simd>(simd: S) -> Option<V4> {
    (&simd as &dyn std::any::Any).downcast_ref::<V4>().copied()
}

/// Vector `k` of `values`, widened: sixteen at a time on AVX-512, lane by lane elsewhere.
#[inline(always)]
fn widen_lanes<H: HalfElement, S: Simd>(simd: S, values: &[H], k: usize) -> S::f32s {
    let lanes = lanes::<S>();
    let values = &values[k * lanes..][..lanes];
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = as_v4(simd) {
        let bits: __m256i = bytemuck::pod_read_unaligned(bytemuck::cast_slice(values));
        return bytemuck::cast(H::widen_v4(v4, bits));
    }
    widen_partial(simd, values)
}

/// Stores vector `k` of a row's full vectors, rounded: into its piece on [`isa`]'s
/// instruction set (`PLAIN`: by [`WritePieces::narrow_plain`]), sixteen values at a time on
/// AVX-512 (`PLAIN`: by [`HalfElement::narrow_v4_plain`]; ordinary stores, see
/// [`Storage::split_mut`]), lane by lane elsewhere.
#[inline(always)]
fn store_vector<H: HalfElement, S: Simd, const PLAIN: bool>(
    simd: S,
    vectors: &mut HalfVectorsMut<'_, H>,
    k: usize,
    vector: S::f32s,
) {
    if let Some(token) = as_token(simd) {
        let values = bytemuck::cast(vector);
        let stored = if PLAIN {
            vectors.pieces.narrow_plain(token, k, values)
        } else {
            vectors.pieces.narrow(token, k, values)
        };
        if !stored {
            past_the_pieces(k);
        }
        return;
    }
    let lanes = lanes::<S>();
    let values = &mut vectors.values[k * lanes..][..lanes];
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = as_v4(simd) {
        let vector = bytemuck::cast(vector);
        let bits = if PLAIN {
            H::narrow_v4_plain(v4, vector)
        } else {
            H::narrow_v4(v4, vector)
        };
        let bits: [u16; 16] = bytemuck::cast(bits);
        bytemuck::cast_slice_mut::<H, u16>(values).copy_from_slice(&bits);
        return;
    }
    narrow_partial::<H, S>(simd, values, vector);
}

/// `values` as pieces on [`isa`]'s instruction set where the CPU has the conversions (`None`
/// otherwise: the row goes lane by lane).
#[inline(always)]
fn pieces_of<H: HalfElement, S: Simd>(values: &[H]) -> Option<H::Pieces<'_>> {
    let proof = H::proof().filter(|_| in_pieces::<S>())?;
    let pieces = bytemuck::cast_slice(bytemuck::cast_slice::<H, u16>(values));
    Some(H::Pieces::new(proof, pieces))
}

macro_rules! half_storage {
    ($half:ty, plain_nan_stores: $plain:expr) => {
        impl Storage for $half {
            type Wide = f32;
            /// The row's values, a whole number of vectors.
            type Vectors<'a, S: Simd> = HalfVectors<'a, $half>;
            type VectorsMut<'a, S: Simd> = HalfVectorsMut<'a, $half>;
            const CACHED_LOOP_COPY: bool = true;
            const PLAIN_NAN_STORES: bool = $plain;

            #[inline(always)]
            fn runs_on_avx2() -> bool {
                Self::proof().is_some()
            }

            fn wide_layer(layer: Layer<'_, Self>) -> Layer<'_, f32> {
                Layer {
                    dim: layer.dim,
                    gain: layer.gain,
                    bias: layer.bias,
                    centered: layer.centered,
                    eps: f64::from(layer.eps),
                    stores: layer.stores,
                    prefetch: layer.prefetch,
                }
            }
            #[inline(always)]
            fn stat_to_f64(value: f32) -> f64 {
                f64::from(value)
            }
            #[inline(always)]
            fn stat_from_f64(value: f64) -> f32 {
                value as f32
            }
            #[inline(always)]
            fn widen(value: Self) -> f32 {
                value.widen_one()
            }
            #[inline(always)]
            fn split<S: Simd>(values: &[Self]) -> (Self::Vectors<'_, S>, &[Self]) {
                let (values, tail) = values.split_at(values.len() / lanes::<S>() * lanes::<S>());
                if let Some(pieces) = pieces_of::<Self, S>(values) {
                    return (
                        HalfVectors {
                            values: &[],
                            pieces,
                        },
                        tail,
                    );
                }
                let vectors = HalfVectors {
                    values,
                    pieces: ReadPieces::empty(),
                };
                (vectors, tail)
            }
            #[inline(always)]
            fn split_mut<S: Simd>(
                values: &mut [Self],
                stores: Stores,
            ) -> (Self::VectorsMut<'_, S>, &mut [Self]) {
                let full = values.len() / lanes::<S>() * lanes::<S>();
                let (values, tail) = values.split_at_mut(full);
                if let Some(proof) = Self::proof().filter(|_| in_pieces::<S>()) {
                    let pieces =
                        bytemuck::cast_slice_mut(bytemuck::cast_slice_mut::<Self, u16>(values));
                    let pieces = WritePieces::new(proof, OutVectors::new(stores, pieces));
                    return (
                        HalfVectorsMut {
                            values: &mut [],
                            pieces,
                        },
                        tail,
                    );
                }
                // Lane by lane, and on AVX-512 (whose half loops convert from the values, not
                // pieces), ordinary stores: streaming stores are never chosen for half outputs
                // (`Element::STREAMING_STORES`), only forced by `LAYERNORM_STORES`.
                let _ = stores;
                let vectors = HalfVectorsMut {
                    values,
                    pieces: WritePieces::empty(),
                };
                (vectors, tail)
            }
            #[inline(always)]
            fn count<S: Simd>(vectors: &Self::Vectors<'_, S>) -> usize {
                vectors.pieces.len() + vectors.values.len() / lanes::<S>()
            }
            #[inline(always)]
            fn count_mut<S: Simd>(vectors: &Self::VectorsMut<'_, S>) -> usize {
                vectors.pieces.len() + vectors.values.len() / lanes::<S>()
            }
            #[inline(always)]
            fn first<'a, S: Simd>(
                vectors: Self::Vectors<'a, S>,
                len: usize,
            ) -> Self::Vectors<'a, S> {
                // On `isa`'s instruction set the loops read the pieces only (the dispatcher
                // runs no such kernel where the CPU lacks their conversions).
                if in_pieces::<S>() {
                    return HalfVectors {
                        pieces: vectors.pieces.first(len),
                        ..vectors
                    };
                }
                HalfVectors {
                    values: &vectors.values[..len * lanes::<S>()],
                    pieces: vectors.pieces,
                }
            }
            #[inline(always)]
            fn first_mut<'a, S: Simd>(
                vectors: Self::VectorsMut<'a, S>,
                len: usize,
            ) -> Self::VectorsMut<'a, S> {
                if in_pieces::<S>() {
                    return HalfVectorsMut {
                        values: vectors.values,
                        pieces: vectors.pieces.first(len),
                    };
                }
                HalfVectorsMut {
                    values: &mut vectors.values[..len * lanes::<S>()],
                    pieces: vectors.pieces,
                }
            }
            #[inline(always)]
            fn load<S: Simd>(simd: S, vectors: &Self::Vectors<'_, S>, k: usize) -> S::f32s {
                let widen = |token| vectors.pieces.widen(token, k);
                load_vector(simd, widen, vectors.values, k)
            }
            #[inline(always)]
            fn load_unquieted<S: Simd>(
                simd: S,
                vectors: &Self::Vectors<'_, S>,
                k: usize,
            ) -> S::f32s {
                let widen = |token| vectors.pieces.widen_unquieted(token, k);
                load_vector(simd, widen, vectors.values, k)
            }
            #[inline(always)]
            fn load_mut<S: Simd>(simd: S, vectors: &Self::VectorsMut<'_, S>, k: usize) -> S::f32s {
                let widen = |token| vectors.pieces.widen(token, k);
                load_vector(simd, widen, vectors.values, k)
            }
            #[inline(always)]
            fn load_mut_unquieted<S: Simd>(
                simd: S,
                vectors: &Self::VectorsMut<'_, S>,
                k: usize,
            ) -> S::f32s {
                let widen = |token| vectors.pieces.widen_unquieted(token, k);
                load_vector(simd, widen, vectors.values, k)
            }
            #[inline(always)]
            fn store<S: Simd>(
                simd: S,
                vectors: &mut Self::VectorsMut<'_, S>,
                k: usize,
                vector: S::f32s,
            ) {
                store_vector::<Self, S, false>(simd, vectors, k, vector);
            }
            #[inline(always)]
            fn store_plain_nans<S: Simd>(
                simd: S,
                vectors: &mut Self::VectorsMut<'_, S>,
                k: usize,
                vector: S::f32s,
            ) {
                store_vector::<Self, S, true>(simd, vectors, k, vector);
            }
            #[inline(always)]
            fn load_partial<S: Simd>(simd: S, values: &[Self]) -> S::f32s {
                widen_partial(simd, values)
            }
            #[inline(always)]
            fn store_partial<S: Simd>(simd: S, values: &mut [Self], vector: S::f32s) {
                narrow_partial::<Self, S>(simd, values, vector);
            }

            fn forward_fallback(
                layer: Layer<'_, f32>,
                x: Option<&[Self]>,
                out: &mut [Self],
                stats: Option<RowStatsOut<'_, f32>>,
            ) {
                forward_fallback(layer, x, out, stats);
            }

            fn backward_fallback(
                layer: Layer<'_, f32>,
                x_and_dy: (&[Self], &[Self]),
                mean_and_inv_std: (f64, f64),
                dx: &mut [Self],
                gain_sums: Option<&mut [f64]>,
            ) {
                backward_fallback(layer, x_and_dy, mean_and_inv_std, dx, gain_sums);
            }
        }
    };
}

half_storage!(half::f16, plain_nan_stores: false);
// bf16: fused, measured (2048×64 and 65536×64 backward on the 2-core AMD EPYC VM, AVX2): its
// separate second pass was about 15 % slower than the fused loop, with fewer instructions.
half_storage!(half::bf16, plain_nan_stores: true);

/// Values widened to f32, into a new buffer (fallback rows only).
fn widened<H: HalfElement>(values: &[H]) -> Vec<f32> {
    values.iter().map(|&value| value.widen_one()).collect()
}

/// Rows the fast path hands back: widened, computed by the scalar specification as the f32
/// kernels compute their own fallback rows (f64 statistics), rounded to half once.
fn forward_fallback<H: HalfElement>(
    layer: Layer<'_, f32>,
    x: Option<&[H]>,
    out: &mut [H],
    stats: Option<RowStatsOut<'_, f32>>,
) {
    let x_wide = widened(x.unwrap_or(out));
    let mut out_wide = vec![0.0f32; out.len()];
    let rows = out.len() / layer.dim;
    let (mut means, mut inv_stds) = (vec![0.0f64; rows], vec![0.0f64; rows]);
    scalar::forward_rows(ForwardRows {
        layer,
        x: Some(&x_wide),
        out: &mut out_wide,
        stats: Some(RowStatsOut {
            mean: &mut means,
            inv_std: &mut inv_stds,
        }),
    });
    for (value, &wide) in out.iter_mut().zip(&out_wide) {
        *value = H::narrow_one(wide);
    }
    if let Some(stats) = stats {
        for (narrow, &wide) in stats.mean.iter_mut().zip(&means) {
            *narrow = wide as f32;
        }
        for (narrow, &wide) in stats.inv_std.iter_mut().zip(&inv_stds) {
            *narrow = wide as f32;
        }
    }
}

/// One row's backward pass the fast path hands back, as [`forward_fallback`] does.
fn backward_fallback<H: HalfElement>(
    layer: Layer<'_, f32>,
    (x, dy): (&[H], &[H]),
    (mean, inv_std): (f64, f64),
    dx: &mut [H],
    gain_sums: Option<&mut [f64]>,
) {
    let (x_wide, dy_wide) = (widened(x), widened(dy));
    let mut dx_wide = vec![0.0f32; dx.len()];
    scalar::backward_rows(BackwardJob {
        rows: BackwardRows {
            layer,
            x: &x_wide,
            dy: &dy_wide,
            means: &[mean],
            inv_stds: &[inv_std],
        },
        out: BackwardOut {
            dx: &mut dx_wide,
            dsum: None,
            sums: GradSums {
                gain: gain_sums,
                bias: None,
            },
        },
    });
    for (value, &wide) in dx.iter_mut().zip(&dx_wide) {
        *value = H::narrow_one(wide);
    }
}

/// Backward pass over whole rows of half data; see `scalar::backward_rows`. The kernels sum the
/// parameter gradients in f64, one row per group of `group_rows` rows; each group's total is
/// rounded to f32 once and added to the group's row of the job's sums (the driver gives half
/// jobs whole gradient blocks as groups).
pub(crate) fn backward_rows<H: HalfElement + Storage<Wide = f32>>(
    job: BackwardJob<'_, H>,
    group_rows: usize,
) {
    let BackwardJob { rows, out } = job;
    let dim = rows.layer.dim;
    let groups = (out.dx.len() / dim).div_ceil(group_rows);
    let mut gain_totals = (out.sums.gain.as_ref()).map(|_| Spare::<f64>::zeroed(groups * dim));
    let mut bias_totals = (out.sums.bias.as_ref()).map(|_| Spare::<f64>::zeroed(groups * dim));
    let mut scratch = Spare::<f32>::empty(3 * dim);
    super::simd::backward_rows(Backward {
        rows,
        dx: out.dx,
        dsum: out.dsum,
        totals: GradSums {
            gain: gain_totals.as_deref_mut(),
            bias: bias_totals.as_deref_mut(),
        },
        group_rows,
        scratch: scratch.vec_mut(),
    });
    for (partial, totals) in [(out.sums.gain, gain_totals), (out.sums.bias, bias_totals)] {
        if let (Some(partial), Some(totals)) = (partial, totals) {
            for (sum, &total) in partial.iter_mut().zip(totals.iter()) {
                *sum += total as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bf16_to_f32, f32_to_bf16};
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    use super::{Piece, Token, TokenConversions, Wide};
    use half::bf16;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    use half::f16;

    /// f32 values across the whole bit range: around every rounding tie of bf16 and of f16
    /// (the f16 ones in every exponent, subnormal results included), every 4099th pattern,
    /// ±0, ±Inf, NaNs and the largest values.
    fn f32_patterns() -> impl Iterator<Item = u32> {
        let bf16_ties = (0..=u16::MAX).flat_map(|upper| {
            let base = u32::from(upper) << 16;
            [
                base,
                base | 0x7FFF,
                base | 0x8000,
                base | 0x8001,
                base | 0xFFFF,
            ]
        });
        // f16 keeps 10 of f32's 23 mantissa bits (fewer for subnormal results): ties at every
        // dropped-bit position, around each, for every exponent.
        let f16_ties = (0..512u32).flat_map(|sign_exponent| {
            (0..24).flat_map(move |position| {
                let base = (sign_exponent << 23) | (0x2A5 << 13);
                let tie = 1u32 << position;
                [
                    base | tie,
                    (base | tie) - 1,
                    base | tie | 1,
                    base | (tie << 1) | tie,
                ]
            })
        });
        let spread = (0..=u32::MAX).step_by(4099);
        let special = [
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            0.0,
            65504.0,
            65519.996,
            65520.0,
            -65520.0,
            6.1035156e-5,
            5.9604645e-8,
            2.9802322e-8,
            2.9802326e-8,
        ]
        .map(f32::to_bits);
        bf16_ties.chain(f16_ties).chain(spread).chain(special)
    }

    /// Every bf16, and the f32 patterns: the same bits as the `half` crate's conversions.
    #[test]
    fn bf16_conversions_match_the_half_crate() {
        for bits in 0..=u16::MAX {
            let expected = bf16::from_bits(bits).to_f32().to_bits();
            assert_eq!(bf16_to_f32(bits).to_bits(), expected, "bf16 {bits:#06x}");
        }
        for bits in f32_patterns() {
            let value = f32::from_bits(bits);
            let expected = bf16::from_f32(value).to_bits();
            assert_eq!(f32_to_bf16(value), expected, "f32 {bits:#010x}");
        }
    }

    /// The lanes of a piece.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    const PIECE: usize = size_of::<Piece>() / 2;

    /// `values` as pieces (the last padded with zeros), each with the count of its own values.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn in_pieces<T: bytemuck::Pod + Default, const N: usize>(
        values: &[T],
    ) -> impl Iterator<Item = ([T; N], usize)> + '_ {
        values.chunks(N).map(|chunk| {
            let mut piece = [T::default(); N];
            piece[..chunk.len()].copy_from_slice(chunk);
            (piece, chunk.len())
        })
    }

    /// A piece at a time on [`super::isa`]'s instruction set (AVX2, NEON) against the `half`
    /// crate's `to_f32` and `from_f32`, where the CPU has it: every half value, and the f32
    /// patterns. `quiet_nans`: whether a signaling NaN must come out quiet when widened.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn piece_conversions_match(
        widen: impl Fn(Token, Piece) -> Wide,
        narrow: impl Fn(Token, Wide) -> Piece,
        to_f32: fn(u16) -> f32,
        from_f32: fn(f32) -> u16,
        quiet_nans: bool,
    ) {
        let Some(simd) = Token::try_new() else {
            return;
        };
        let halves: Vec<u16> = (0..=u16::MAX).collect();
        for (piece, _) in in_pieces::<u16, PIECE>(&halves) {
            let wide: [f32; PIECE] = bytemuck::cast(widen(simd, bytemuck::cast(piece)));
            for (&half, &wide) in piece.iter().zip(&wide) {
                let expected = to_f32(half);
                if quiet_nans {
                    assert_eq!(wide.to_bits(), expected.to_bits(), "half {half:#06x}");
                } else {
                    // A NaN may stay signaling: equal but for the quiet bit.
                    let quiet = 0x0040_0000;
                    assert_eq!(
                        wide.to_bits() | quiet,
                        expected.to_bits() | quiet,
                        "half {half:#06x}"
                    );
                    assert_eq!(wide.is_nan(), expected.is_nan());
                }
            }
        }
        let patterns: Vec<f32> = f32_patterns().map(f32::from_bits).collect();
        for (values, count) in in_pieces::<f32, PIECE>(&patterns) {
            let narrow: [u16; PIECE] = bytemuck::cast(narrow(simd, bytemuck::cast(values)));
            for (&value, &narrow) in values.iter().zip(&narrow).take(count) {
                let expected = from_f32(value);
                assert_eq!(narrow, expected, "f32 {:#010x}", value.to_bits());
            }
        }
    }

    /// bf16 by integer operations: on x86-64 a signaling NaN may stay signaling when widened
    /// (see `bf16_widen_v3`), on aarch64 it is made quiet.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn bf16_piece_conversions_match_the_half_crate() {
        piece_conversions_match(
            <bf16 as TokenConversions>::widen_piece,
            <bf16 as TokenConversions>::narrow_piece,
            |bits| bf16::from_bits(bits).to_f32(),
            |value| bf16::from_f32(value).to_bits(),
            cfg!(target_arch = "aarch64"),
        );
    }

    /// The rounding without a test for NaN: the same bits for every f32 pattern that is not
    /// NaN, and for every quiet NaN whose lower 16 bits are clear (each sign and upper payload).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn bf16_plain_narrowing_matches_where_it_is_used() {
        let Some(simd) = Token::try_new() else {
            return;
        };
        let quiet_nans = (0..0x40u32)
            .flat_map(|payload| [0x7FC0_0000 | (payload << 16), 0xFFC0_0000 | (payload << 16)]);
        let patterns: Vec<f32> = f32_patterns()
            .filter(|&bits| !f32::from_bits(bits).is_nan())
            .chain(quiet_nans)
            .map(f32::from_bits)
            .collect();
        let plain = |values: [f32; PIECE]| -> [u16; PIECE] {
            let piece = bf16::narrow_piece_plain(simd, bytemuck::cast(values));
            bytemuck::cast(piece)
        };
        for (values, count) in in_pieces::<f32, PIECE>(&patterns) {
            for (&value, &plain) in values.iter().zip(&plain(values)).take(count) {
                let expected = bf16::from_f32(value).to_bits();
                assert_eq!(plain, expected, "f32 {:#010x}", value.to_bits());
            }
        }
        // What it is not used for: a NaN with lower payload bits may round into its upper ones.
        let carried = plain([f32::from_bits(0x7FC0_FFFF); PIECE]);
        assert_ne!(
            carried[0],
            bf16::from_f32(f32::from_bits(0x7FC0_FFFF)).to_bits()
        );
    }

    /// Through F16C where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_f16_conversions_match_the_half_crate() {
        let Some(f16c) = super::HasF16c::get() else {
            return;
        };
        piece_conversions_match(
            |simd, bits| bytemuck::cast(f16c.widen(simd, bytemuck::cast(bits))),
            |simd, values| bytemuck::cast(f16c.narrow(simd, values)),
            |bits| f16::from_bits(bits).to_f32(),
            |value| f16::from_f32(value).to_bits(),
            true,
        );
    }

    /// Sixteen at a time on AVX-512, where the CPU has it, against the one-value conversions
    /// (the `half` crate's bits, checked above): every half value widened; the f32 patterns
    /// rounded, and by the plain rounding the patterns it is used for (no NaN but quiet ones
    /// with clear lower bits). `quiet_nans`: as for [`piece_conversions_match`].
    #[cfg(target_arch = "x86_64")]
    fn avx512_conversions_match<H: super::HalfElement>(quiet_nans: bool) {
        use std::arch::x86_64::{__m256i, __m512};
        let Some(simd) = pulp::x86::V4::try_new() else {
            return;
        };
        let halves: Vec<u16> = (0..=u16::MAX).collect();
        for (piece, _) in in_pieces::<u16, 16>(&halves) {
            let wide: [f32; 16] = bytemuck::cast(H::widen_v4(simd, bytemuck::cast(piece)));
            for (&half, &wide) in piece.iter().zip(&wide) {
                let expected = bytemuck::cast::<u16, H>(half).widen_one();
                let quiet = if quiet_nans { 0 } else { 0x0040_0000 };
                let found = wide.to_bits() | quiet;
                assert_eq!(found, expected.to_bits() | quiet, "half {half:#06x}");
                assert_eq!(wide.is_nan(), expected.is_nan(), "half {half:#06x}");
            }
        }
        let patterns: Vec<f32> = f32_patterns().map(f32::from_bits).collect();
        let quiet_nans = (0..0x40u32)
            .flat_map(|payload| [0x7FC0_0000 | (payload << 16), 0xFFC0_0000 | (payload << 16)]);
        let plain_patterns: Vec<f32> = patterns
            .iter()
            .copied()
            .filter(|value| !value.is_nan())
            .chain(quiet_nans.map(f32::from_bits))
            .collect();
        type Rounding = fn(pulp::x86::V4, __m512) -> __m256i;
        let roundings: [(&[f32], Rounding); 2] = [
            (&patterns, H::narrow_v4),
            (&plain_patterns, H::narrow_v4_plain),
        ];
        for (patterns, narrow) in roundings {
            for (values, count) in in_pieces::<f32, 16>(patterns) {
                let bits: [u16; 16] = bytemuck::cast(narrow(simd, bytemuck::cast(values)));
                for (&value, &bits) in values.iter().zip(&bits).take(count) {
                    let expected: u16 = bytemuck::cast(H::narrow_one(value));
                    assert_eq!(bits, expected, "f32 {:#010x}", value.to_bits());
                }
            }
        }
    }

    /// f16 by AVX-512F's conversions (NaN made quiet), bf16 by integer operations (a signaling
    /// NaN may stay signaling when widened, as on AVX2).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_conversions_match_the_half_crate() {
        avx512_conversions_match::<f16>(true);
        avx512_conversions_match::<bf16>(false);
    }

    /// Through NEON's conversion instructions.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_f16_conversions_match_the_half_crate() {
        piece_conversions_match(
            <f16 as TokenConversions>::widen_piece,
            <f16 as TokenConversions>::narrow_piece,
            |bits| f16::from_bits(bits).to_f32(),
            |value| f16::from_f32(value).to_bits(),
            true,
        );
    }

    /// Where the CPU lacks F16C, f16 kernels run without SIMD (bf16 ones keep AVX2), with the
    /// same bits: shown here by pretending, on this thread, that the CPU lacks it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn without_f16c_f16_runs_without_simd_with_the_same_bits() {
        use crate::kernels::f16c::tests::PRETEND_NO_F16C;
        use crate::kernels::simd::{arch_for, forward_rows};
        use crate::kernels::{ForwardRows, Layer, Stores};

        let dim = 203;
        let x: Vec<f16> = (0..7 * dim)
            .map(|i| f16::from_f32(((i * 37) % 101) as f32 / 16.0 - 3.0))
            .collect();
        let gain: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 5) as f32 / 8.0).collect();
        let layer = Layer {
            dim,
            gain: Some(&gain),
            bias: None,
            centered: true,
            eps: 1e-5,
            stores: Stores::Cached,
            prefetch: false,
        };
        let forward = || {
            let mut y = vec![f16::ZERO; x.len()];
            forward_rows(ForwardRows {
                layer,
                x: Some(&x),
                out: &mut y,
                stats: None,
            });
            y.iter().map(|v| v.to_bits()).collect::<Vec<u16>>()
        };
        let with_f16c = forward();
        let simd_arch = !matches!(arch_for::<f16>(), pulp::Arch::Scalar);
        PRETEND_NO_F16C.set(true);
        let without = forward();
        let f16_arch = arch_for::<f16>();
        let bf16_arch = arch_for::<bf16>();
        PRETEND_NO_F16C.set(false);
        assert!(matches!(f16_arch, pulp::Arch::Scalar));
        if simd_arch {
            assert!(!matches!(bf16_arch, pulp::Arch::Scalar));
        }
        assert_eq!(without, with_f16c);
    }
}
