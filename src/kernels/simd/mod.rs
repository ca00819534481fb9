//! Runtime-dispatched SIMD kernels for `f32` and `f64` rows (and f16/bf16 rows, computed in f32
//! and converted as they are loaded and stored: [`Storage`]), through pulp: AVX-512 or AVX2 on
//! x86-64, NEON on aarch64, chosen when the kernel is called (see [`arch`]); without SIMD the
//! same kernels run one lane at a time. Every instruction set gives the same bits: sums follow
//! one logical layout (`sum_and_dot!`), fused multiply-adds are used in the same places, and
//! the rest is elementwise.
//!
//! They mirror `scalar.rs` in the data's own precision, kept exact by shifting before summing
//! and by folding short partial sums into f64:
//!
//! ```text
//! pass 1  m₀ = mean of the first 32 values (16 f64)   a first estimate of the mean, in the data type
//! pass 2  S₁ = Σ (xᵢ − m₀), S₂ = Σ (xᵢ − m₀)²    then μ = m₀ + S₁/n, σ² = S₂/n − (S₁/n)²
//! pass 3  yᵢ = gainᵢ · ((xᵢ − hi) − lo) · r + biasᵢ      μ = hi + lo, r = 1/√(σ² + ε)
//! ```
//!
//! `xᵢ − m₀` is exact or nearly so (m₀ is close to the data), the shifted sums are summed in
//! blocks of a few terms per lane and folded into f64, and `(xᵢ − hi) − lo` is within 2 ulps
//! of `xᵢ − μ` relative to itself: rows whose mean is far larger than their spread are
//! normalized as accurately as centered ones. A row whose squares overflow (or, with a tiny
//! ε, fall into subnormals) or whose estimate m₀ is too far off is recomputed by the scalar
//! specification, which works in f64 for f32 data; rows with NaN or ±Inf take that path too.
//! Parameter gradients are summed over a few rows in the data type and folded into f64.
//!
//! Stack use in debug builds: the loops are `#[inline(always)]` so that they compile inside
//! pulp's function for the instruction set, but without optimization every variable of every
//! inlined body keeps a stack slot of its own. The bodies of one dispatch (eight combinations
//! of gain and bias, each with several row layouts) once made a single frame of 1.7–2.9 MiB,
//! more than a thread's default 2 MiB stack (rayon's workers, test threads) on AVX-512. So in
//! debug builds `forward::forward_all` and `backward::backward_rows_as`, one body each, are not
//! inlined (their frames are below 400 KiB). Release builds inline them as before; the
//! results are the same either way. A kernel test runs every type on a 1 MiB stack.

use super::ForwardRows;
use crate::element::Element;
use bytemuck::Pod;
use num_traits::{Float, Zero};
use pulp::{Simd, WithSimd};

/// A float type with SIMD vectors in every pulp instruction set: the operations the kernels
/// use, named once so that one generic body serves f32 and f64.
pub(crate) trait SimdFloat:
    Element<Stat = f64, Compute = Self> + Pod + num_traits::Float
{
    type Vector<S: Simd>: Copy + Pod;
    /// Below this sum of squares, squared deviations may have lost bits to subnormals.
    const TINY_SUM_OF_SQUARES: f64;
    /// An ε at least this large dwarfs any error a tiny sum of squares could carry.
    const EPS_DWARFING_TINY: f64;
    /// The lanes of the fixed summation layout (see `sum_and_dot!`): a multiple of every
    /// instruction set's vector width, 128 bytes of data (32 f32, 16 f64): two AVX-512
    /// registers, four AVX2 ones, eight NEON ones, or as many scalars.
    const LOGICAL_LANES: usize;

    fn splat<S: Simd>(simd: S, value: Self) -> Self::Vector<S>;
    fn add_vectors<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
    fn sub_vectors<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
    fn mul_vectors<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
    /// `a · b + c` with one rounding.
    fn mul_add_vectors<S: Simd>(
        simd: S,
        a: Self::Vector<S>,
        b: Self::Vector<S>,
        c: Self::Vector<S>,
    ) -> Self::Vector<S>;
    fn split<S: Simd>(values: &[Self]) -> (&[Self::Vector<S>], &[Self]);
    fn split_mut<S: Simd>(values: &mut [Self]) -> (&mut [Self::Vector<S>], &mut [Self]);
    /// Loads `values` (shorter than a vector) into the first lanes, zeros elsewhere.
    fn load_partial<S: Simd>(simd: S, values: &[Self]) -> Self::Vector<S>;
    /// Stores the first `values.len()` lanes.
    fn store_partial<S: Simd>(simd: S, values: &mut [Self], vector: Self::Vector<S>);
    /// `vector` with its lanes from `valid` (less than a vector's lanes) on set to `+0.0`, by
    /// a mask in registers.
    fn keep_first<S: Simd>(simd: S, vector: Self::Vector<S>, valid: usize) -> Self::Vector<S>;
    /// The sum of a vector's lanes by the halving tree (lane `l` plus lane `l + w/2`, then
    /// `l + w/4`, …): pulp's horizontal sum on x86-64 (AVX-512 adds the 256-bit halves, AVX2
    /// the 128-bit halves, then `movehl` and one shuffle; the scalar path loops the same
    /// tree), so in registers where the instruction set allows.
    fn reduce_sum<S: Simd>(simd: S, vector: Self::Vector<S>) -> Self;
}

macro_rules! impl_simd_float {
    ($float:ty, $vector:ident, $tiny_ssq:expr, $eps_dwarfing:expr, $logical_lanes:expr,
     $splat:ident, $add:ident, $sub:ident, $mul:ident, $mul_add:ident,
     $split:ident, $split_mut:ident, $load:ident, $store:ident, $reduce:ident,
     $mask_between:ident, $select:ident, $lane_bits:ty) => {
        impl SimdFloat for $float {
            type Vector<S: Simd> = S::$vector;
            const TINY_SUM_OF_SQUARES: f64 = $tiny_ssq;
            const EPS_DWARFING_TINY: f64 = $eps_dwarfing;
            const LOGICAL_LANES: usize = $logical_lanes;

            #[inline(always)]
            fn splat<S: Simd>(simd: S, value: Self) -> S::$vector {
                simd.$splat(value)
            }
            #[inline(always)]
            fn add_vectors<S: Simd>(simd: S, a: S::$vector, b: S::$vector) -> S::$vector {
                simd.$add(a, b)
            }
            #[inline(always)]
            fn sub_vectors<S: Simd>(simd: S, a: S::$vector, b: S::$vector) -> S::$vector {
                simd.$sub(a, b)
            }
            #[inline(always)]
            fn mul_vectors<S: Simd>(simd: S, a: S::$vector, b: S::$vector) -> S::$vector {
                simd.$mul(a, b)
            }
            #[inline(always)]
            fn mul_add_vectors<S: Simd>(
                simd: S,
                a: S::$vector,
                b: S::$vector,
                c: S::$vector,
            ) -> S::$vector {
                simd.$mul_add(a, b, c)
            }
            #[inline(always)]
            fn split<S: Simd>(values: &[Self]) -> (&[S::$vector], &[Self]) {
                S::$split(values)
            }
            #[inline(always)]
            fn split_mut<S: Simd>(values: &mut [Self]) -> (&mut [S::$vector], &mut [Self]) {
                S::$split_mut(values)
            }
            #[inline(always)]
            fn load_partial<S: Simd>(simd: S, values: &[Self]) -> S::$vector {
                simd.$load(values)
            }
            #[inline(always)]
            fn store_partial<S: Simd>(simd: S, values: &mut [Self], vector: S::$vector) {
                simd.$store(values, vector)
            }
            #[inline(always)]
            fn keep_first<S: Simd>(simd: S, vector: S::$vector, valid: usize) -> S::$vector {
                // `valid` is below the lane count, so the cast is exact.
                let mask = simd.$mask_between(0, valid as $lane_bits).mask();
                simd.$select(mask, vector, simd.$splat(0.0))
            }
            #[inline(always)]
            fn reduce_sum<S: Simd>(simd: S, vector: S::$vector) -> Self {
                simd.$reduce(vector)
            }
        }
    };
}

// f32: squares below 2^-126 are subnormal; a sum of squares of 2^-100 keeps every term that
// matters normal. f64: the same with 2^-1022.
impl_simd_float!(
    f32,
    f32s,
    7.888609052210118e-31,
    8.673617379884035e-19,
    32,
    splat_f32s,
    add_f32s,
    sub_f32s,
    mul_f32s,
    mul_add_f32s,
    as_simd_f32s,
    as_mut_simd_f32s,
    partial_load_f32s,
    partial_store_f32s,
    reduce_sum_f32s,
    mask_between_m32s,
    select_f32s,
    u32
);
impl_simd_float!(
    f64,
    f64s,
    1.0e-280,
    1.0e-250,
    16,
    splat_f64s,
    add_f64s,
    sub_f64s,
    mul_f64s,
    mul_add_f64s,
    as_simd_f64s,
    as_mut_simd_f64s,
    partial_load_f64s,
    partial_store_f64s,
    reduce_sum_f64s,
    mask_between_m64s,
    select_f64s,
    u64
);

/// Rows of at most this many bytes (in the compute type) are "short": one fold period holds a
/// whole row (see `sum_and_dot_once_with!`), and the forward computes their statistics in
/// blocks of rows.
const SHORT_ROW_BYTES: usize = FOLD_BLOCKS * 128;

/// Rows whose parameter gradients are summed in the data type before folding into f64.
pub(crate) const FOLD_ROWS: usize = 8;

/// Logical blocks (of [`SimdFloat::LOGICAL_LANES`] elements) summed in the data type before the
/// partial sums are folded into f64: a few terms per lane.
const FOLD_BLOCKS: usize = 8;

/// Vectors per logical block on instruction set `S`: the number of accumulators per sum.
#[inline(always)]
fn accumulators<T: SimdFloat, S: Simd>(_simd: S) -> usize {
    T::LOGICAL_LANES / (size_of::<T::Vector<S>>() / size_of::<T>())
}

/// The lanes of a vector, as values.
#[inline(always)]
fn lanes_mut<T: SimdFloat, S: Simd>(vector: &mut T::Vector<S>) -> &mut [T] {
    bytemuck::cast_slice_mut(std::slice::from_mut(vector))
}

/// The sum of the `N` accumulators `parts`, widened to f64, by one fixed tree over the logical
/// lanes whatever the instruction set: lane `j` is added to lane `j + L/2`, then to `j + L/4`,
/// and so on (across accumulators while there are several, then within the last vector). Every
/// instruction set performs the same additions on the same values. The accumulators are taken
/// by value, an array of constant length; the caller starts the next period from zeros.
#[inline(always)]
fn fold<T: SimdFloat, S: Simd, const N: usize>(simd: S, mut parts: [T::Vector<S>; N]) -> f64 {
    let mut width = N;
    while width > 1 {
        width /= 2;
        for a in 0..width {
            parts[a] = T::add_vectors(simd, parts[a], parts[a + width]);
        }
    }
    halving_sum::<T, S>(simd, parts[0]).to_stat()
}

/// The lanes of `vector` summed by the halving tree: lane `l` plus lane `l + w/2`, then
/// `l + w/4`, and so on. On x86-64 pulp's horizontal sum performs exactly these additions
/// (its source: AVX-512 and AVX2 add register halves, then `movehl` and a shuffle; the scalar
/// path loops the tree), in registers; elsewhere (NEON's pairwise sum adds in another order)
/// the tree is spelled out on the lanes.
#[inline(always)]
fn halving_sum<T: SimdFloat, S: Simd>(simd: S, vector: T::Vector<S>) -> T {
    if cfg!(target_arch = "x86_64") {
        return T::reduce_sum(simd, vector);
    }
    let mut last = vector;
    let lanes = lanes_mut::<T, S>(&mut last);
    let mut width = lanes.len();
    while width > 1 {
        width /= 2;
        for l in 0..width {
            lanes[l] = lanes[l] + lanes[l + width];
        }
    }
    lanes[0]
}

// Hot loops take their per-vector work as macro bodies, not closures: a closure is compiled as
// a function of its own, without the instruction set's target features, and its intrinsics
// then become calls. Everything else here is `#[inline(always)]` into the dispatched body.

/// Adds the terms of vectors `$start..$end` of a row into the accumulators `$sums` and `$dots`
/// (vector `k` into accumulator `(k − $start) mod $n`): whole groups of `$n` vectors, then the
/// last vectors and, where `$with_tail`, the partial vector `$end` (its lanes from `$tail` on
/// zeroed). Accumulators are indexed by constants only, so that they stay in registers.
/// `$end_test`: each group also tests that it ends by `$end` (never false), which let the
/// compiler drop the per-vector bounds checks of long rows' loops (f32 512×1024 on AVX2:
/// −12 % of the forward's instructions, −6 % of the backward's) but not of short rows' two
/// groups, where it only added the test.
macro_rules! accumulate_span {
    ($n:literal, $float:ty, $simd:ident, ($sums:ident, $dots:ident), $start:expr, $end:expr,
     $with_tail:expr, $tail:expr, $end_test:literal, |$k:ident| $terms:expr, $tail_terms:expr) => {{
        let (start, end, with_tail): (usize, usize, bool) = ($start, $end, $with_tail);
        let blocks_end = start + (end - start) / $n * $n;
        let mut group = start;
        while group < blocks_end {
            if $end_test && group + $n > end {
                break;
            }
            for a in 0..$n {
                let $k = group + a;
                let (sum, factor, other) = $terms;
                $sums[a] = <$float>::add_vectors($simd, $sums[a], sum);
                $dots[a] = <$float>::mul_add_vectors($simd, factor, other, $dots[a]);
            }
            group += $n;
        }
        if blocks_end < end || with_tail {
            for a in 0..$n {
                let $k = blocks_end + a;
                if $k < end {
                    let (sum, factor, other) = $terms;
                    $sums[a] = <$float>::add_vectors($simd, $sums[a], sum);
                    $dots[a] = <$float>::mul_add_vectors($simd, factor, other, $dots[a]);
                } else if $k == end && with_tail {
                    let (sum, factor, other) = $tail_terms;
                    // By a mask: a fill of the lanes past the tail (as the slice's `fill`)
                    // was a call to `memset` for every row, with the vector registers saved
                    // around it (f32 8192×100 backward on AVX-512: about a quarter of the time).
                    let sum = <$float>::keep_first($simd, sum, $tail);
                    let factor = <$float>::keep_first($simd, factor, $tail);
                    $sums[a] = <$float>::add_vectors($simd, $sums[a], sum);
                    $dots[a] = <$float>::mul_add_vectors($simd, factor, other, $dots[a]);
                }
            }
        }
    }};
}

/// `(Σ sum, Σ factor · other)` over a row's `count` full vectors, whose terms are
/// `|k| (sumₖ, factorₖ, otherₖ)`, and its last, partial vector of `tail` values, whose terms
/// are `tail_terms` (lanes past the row's end are zeroed).
///
/// The summation order is fixed by the data, not the register width: element `i` of the row
/// is added to logical lane `i mod L` ([`SimdFloat::LOGICAL_LANES`]), in order, in the data
/// type; every [`FOLD_BLOCKS`] blocks of `L` elements the lanes are combined by [`fold`]'s tree
/// and added to an f64 total. A vector of `w` lanes holds `w` consecutive logical lanes, so
/// AVX-512, AVX2, NEON and the scalar path (one lane) perform the same additions.
/// [`sum_and_dot!`] with `$n` accumulators (a literal, so that they are a fixed-size array
/// the compiler keeps in registers).
macro_rules! sum_and_dot_with {
    ($n:literal, $float:ty, $simd:expr, $count:expr, |$k:ident| $terms:expr,
     tail: $tail:expr => $tail_terms:expr) => {{
        use $crate::kernels::simd::{fold, FOLD_BLOCKS};
        let simd = $simd;
        let count: usize = $count;
        let tail: usize = $tail;
        let accumulators: usize = $n;
        let period = FOLD_BLOCKS * accumulators;
        let zero = <$float>::splat(simd, <$float>::zero());
        let mut sums = [zero; $n];
        let mut dots = [zero; $n];
        let (mut total_sum, mut total_dot) = (0.0, 0.0);
        let mut start = 0;
        loop {
            let end = (start + period).min(count);
            // The partial vector (vector `count`) is in this period unless the period is full.
            let with_tail = end == count && end - start < period && tail > 0;
            accumulate_span!(
                $n,
                $float,
                simd,
                (sums, dots),
                start,
                end,
                with_tail,
                tail,
                true,
                |$k| $terms,
                $tail_terms
            );
            if end > start || with_tail {
                total_sum += fold::<$float, _, $n>(simd, sums);
                total_dot += fold::<$float, _, $n>(simd, dots);
                (sums, dots) = ([zero; $n], [zero; $n]);
            }
            if end == count && (with_tail || tail == 0) {
                break;
            }
            start = end;
        }
        (total_sum, total_dot)
    }};
}

/// [`sum_and_dot_with!`] for a row whose vectors, tail included, fit in one fold period
/// ([`FOLD_BLOCKS`] logical blocks: the short rows): the same additions in the same order, so
/// the same bits, with one fold at the end and none of the period bookkeeping.
macro_rules! sum_and_dot_once_with {
    ($n:literal, $float:ty, $simd:expr, $count:expr, |$k:ident| $terms:expr,
     tail: $tail:expr => $tail_terms:expr) => {{
        use $crate::kernels::simd::{fold, FOLD_BLOCKS};
        let simd = $simd;
        let count: usize = $count;
        let tail: usize = $tail;
        debug_assert!(count + usize::from(tail > 0) <= FOLD_BLOCKS * $n);
        let zero = <$float>::splat(simd, <$float>::zero());
        let mut sums = [zero; $n];
        let mut dots = [zero; $n];
        accumulate_span!(
            $n,
            $float,
            simd,
            (sums, dots),
            0,
            count,
            tail > 0,
            tail,
            false,
            |$k| $terms,
            $tail_terms
        );
        if count > 0 || tail > 0 {
            // `0.0 +` as in the general form, whose totals start at 0.0 (a -0.0 fold becomes 0.0).
            (
                0.0 + fold::<$float, _, $n>(simd, sums),
                0.0 + fold::<$float, _, $n>(simd, dots),
            )
        } else {
            (0.0, 0.0)
        }
    }};
}

/// [`sum_and_dot_with!`] with the accumulators of the instruction set: `sum_and_dot!(T, …)`;
/// `sum_and_dot!(once; T, …)` for a row that fits one fold period ([`SHORT_ROW_BYTES`]), by
/// [`sum_and_dot_once_with!`], which gives the same bits.
macro_rules! sum_and_dot {
    (@ $with:ident; $float:ty, $simd:expr, $count:expr, |$k:ident| $terms:expr,
     tail: $tail:expr => $tail_terms:expr) => {{
        let simd = $simd;
        // A constant for each instruction set: only one arm is compiled in each body.
        match $crate::kernels::simd::accumulators::<$float, _>(simd) {
            4 => $with!(4, $float, simd, $count, |$k| $terms, tail: $tail => $tail_terms),
            8 => $with!(8, $float, simd, $count, |$k| $terms, tail: $tail => $tail_terms),
            16 => $with!(16, $float, simd, $count, |$k| $terms, tail: $tail => $tail_terms),
            32 => $with!(32, $float, simd, $count, |$k| $terms, tail: $tail => $tail_terms),
            2 => $with!(2, $float, simd, $count, |$k| $terms, tail: $tail => $tail_terms),
            other => unreachable!("{other} accumulators: vectors of 1 to 16 lanes are supported"),
        }
    }};
    (once; $($rest:tt)*) => {
        sum_and_dot!(@ sum_and_dot_once_with; $($rest)*)
    };
    ($float:ty, $($rest:tt)*) => {
        sum_and_dot!(@ sum_and_dot_with; $float, $($rest)*)
    };
}

/// A row's statistics, in f64 for the record and in the data type for the arithmetic.
#[derive(Clone, Copy)]
struct RowStats<T> {
    mean: f64,
    inv_std: f64,
    /// `mean = hi + lo` to about twice the data type's precision (lo = 0 for f64).
    hi: T,
    lo: T,
    /// `inv_std` rounded to the data type.
    r: T,
}

impl<T: SimdFloat> RowStats<T> {
    fn from_f64(mean: f64, inv_std: f64) -> Self {
        let hi = T::from_stat(mean);
        RowStats {
            mean,
            inv_std,
            hi,
            lo: T::from_stat(mean - hi.to_stat()),
            r: T::from_stat(inv_std),
        }
    }
}

/// Computes `x̂ = ((x − hi) − lo) · r`, the normalized value to within a few ulps of itself.
#[derive(Clone, Copy)]
struct Normalizer<V> {
    hi: V,
    lo: V,
    r: V,
}

impl<V: Copy> Normalizer<V> {
    #[inline(always)]
    fn new<T: SimdFloat<Vector<S> = V>, S: Simd>(simd: S, stats: &RowStats<T>) -> Self {
        Normalizer {
            hi: T::splat(simd, stats.hi),
            lo: T::splat(simd, stats.lo),
            r: T::splat(simd, stats.r),
        }
    }

    #[inline(always)]
    fn x_hat<T: SimdFloat<Vector<S> = V>, S: Simd>(&self, simd: S, x: V) -> V {
        let deviation = T::sub_vectors(simd, T::sub_vectors(simd, x, self.hi), self.lo);
        T::mul_vectors(simd, deviation, self.r)
    }
}

/// The first estimate of a row's mean: the mean of its first [`SimdFloat::LOGICAL_LANES`]
/// values (32 f32, 16 f64), added by [`fold`]'s fixed tree in the data type (one load per
/// register, the tree in registers, the same additions on every instruction set); a shorter
/// row's mean in f64. It is within a fraction of σ of the mean for most rows (a sample of 32 is
/// off by more than σ/2 in 0.5 % of rows of independent values); a worse one is replaced by
/// the refined mean (see [`finish_stats`]). Uncentered rows (RmsNorm) are summed around 0.
#[inline(always)]
fn first_shift<E: Storage, S: Simd>(simd: S, row: &[E], centered: bool) -> E::Wide {
    type T<E> = <E as Storage>::Wide;
    if !centered {
        return T::<E>::zero();
    }
    let lanes = T::<E>::LOGICAL_LANES;
    if row.len() < lanes {
        let sum: f64 = row.iter().map(|&x| E::widen(x).to_stat()).sum();
        return T::<E>::from_stat(sum / row.len() as f64);
    }
    let (sample, _) = E::split::<S>(&row[..lanes]);
    let zero = T::<E>::splat(simd, T::<E>::zero());
    let count = E::count::<S>(&sample);
    let (sum, _) = sum_and_dot!(once; T<E>, simd, count, |k| (E::load_unquieted(simd, &sample, k), zero, zero), tail: 0 => {
        (zero, zero, zero)
    });
    T::<E>::from_stat(sum / lanes as f64)
}

/// A row's length as the divisor of its sums. When the length is a power of two, its reciprocal
/// is exact and multiplying by it gives the same f64 as dividing (both are the exact quotient
/// rounded once), with a fraction of a division's latency: that division sits on each short
/// row's chain from its sums to its next pass.
#[derive(Clone, Copy)]
struct RowLength {
    n: f64,
    /// `1/n` where it is exact.
    exact_recip: Option<f64>,
}

impl RowLength {
    fn new(n: usize) -> Self {
        RowLength {
            n: n as f64,
            exact_recip: n.is_power_of_two().then(|| (n as f64).recip()),
        }
    }

    /// `sum / n`, correctly rounded.
    #[inline(always)]
    fn mean(self, sum: f64) -> f64 {
        match self.exact_recip {
            Some(recip) => sum * recip,
            None => sum / self.n,
        }
    }
}

/// What the sums of a row's deviations from a shift give.
enum StatsStep<T> {
    Done(RowStats<T>),
    /// The shift was too far from the mean; sum again around this better one.
    Refine(T),
    /// Only the scalar specification computes this row exactly.
    Fallback,
}

/// Mean and inverse standard deviation from the sums of a row's deviations from `shift`:
/// `μ = shift + S₁/n`, `σ² = S₂/n − (S₁/n)²`; uncentered (shift 0): `μ = 0`, `σ² = S₂/n`.
#[inline(always)]
fn finish_stats<T: SimdFloat>(
    shift: T,
    sum: f64,
    sum_of_squares: f64,
    n: RowLength,
    eps: f64,
    centered: bool,
) -> StatsStep<T> {
    let correction = if centered { n.mean(sum) } else { 0.0 };
    let variance = n.mean(sum_of_squares) - correction * correction;
    // Every |x − mean| is at most √S₂ (plus the tiny correction): below a quarter of the data
    // type's maximum, the deviations formed in the data type later cannot overflow. (S₂ is
    // partly summed in f64, so it can be finite where a deviation would not be.)
    let reliable = sum_of_squares.is_finite()
        && sum_of_squares.sqrt() < T::max_value().to_stat() / 4.0
        && (sum_of_squares >= T::TINY_SUM_OF_SQUARES || eps >= T::EPS_DWARFING_TINY);
    if !reliable {
        return StatsStep::Fallback;
    }
    let mean = shift.to_stat() + correction;
    // Removing correction² loses little while it is small against the variance: at most a
    // quarter of it costs less than half a bit of σ².
    if correction * correction <= variance / 4.0 {
        let inv_std = (variance.max(0.0) + eps).sqrt().recip();
        StatsStep::Done(RowStats::from_f64(mean, inv_std))
    } else {
        StatsStep::Refine(T::from_stat(mean))
    }
}

/// The sums `(Σ (xᵢ − shift), Σ (xᵢ − shift)²)` of one row, by [`sum_and_dot!`] (`SHORT`: the
/// row fits one fold period, see `sum_and_dot_once_with!`; the same bits, less bookkeeping).
/// The forward pass's: a NaN in the row only makes them NaN (`Storage::load_unquieted`).
#[inline(always)]
fn deviation_sums<E: Storage, S: Simd, const SHORT: bool>(
    simd: S,
    row: &[E],
    shift: E::Wide,
) -> (f64, f64) {
    type T<E> = <E as Storage>::Wide;
    let (head, tail) = E::split::<S>(row);
    let count = E::count::<S>(&head);
    let head = E::first(head, count);
    let shift_vector = T::<E>::splat(simd, shift);
    macro_rules! deviations {
        ($($once:ident;)?) => {
            sum_and_dot!($($once;)? T<E>, simd, count, |k| {
                let deviation =
                    T::<E>::sub_vectors(simd, E::load_unquieted(simd, &head, k), shift_vector);
                (deviation, deviation, deviation)
            }, tail: tail.len() => {
                let deviation =
                    T::<E>::sub_vectors(simd, E::load_partial(simd, tail), shift_vector);
                (deviation, deviation, deviation)
            })
        };
    }
    if SHORT {
        deviations!(once;)
    } else {
        deviations!()
    }
}

/// Statistics of one row by a pass over it around `shift`, refined at most twice; `None` when
/// the row needs the scalar specification (non-finite values, overflowing squares, squares in
/// the subnormal range with a tiny ε, or no shift close enough to the mean). For long rows
/// (short ones take these steps a block at a time, in the forward).
#[inline(always)]
fn row_stats_from<E: Storage, S: Simd>(
    simd: S,
    row: &[E],
    shift: E::Wide,
    eps: f64,
    centered: bool,
) -> Option<RowStats<E::Wide>> {
    row_stats_within::<E, S, false>(simd, row, shift, eps, centered, 3)
}

/// [`row_stats_from`] with at most `passes` passes over the row (`SHORT`: the row fits one
/// fold period, see [`deviation_sums`]).
#[inline(always)]
fn row_stats_within<E: Storage, S: Simd, const SHORT: bool>(
    simd: S,
    row: &[E],
    mut shift: E::Wide,
    eps: f64,
    centered: bool,
    passes: usize,
) -> Option<RowStats<E::Wide>> {
    let n = RowLength::new(row.len());
    for _ in 0..passes {
        if !shift.is_finite() {
            return None;
        }
        let (sum, sum_of_squares) = deviation_sums::<E, S, SHORT>(simd, row, shift);
        match finish_stats(shift, sum, sum_of_squares, n, eps, centered) {
            StatsStep::Done(stats) => return Some(stats),
            StatsStep::Refine(better) => shift = better,
            StatsStep::Fallback => return None,
        }
    }
    None
}

/// Three choices fixed at compile time, so that a kernel body is compiled once per combination
/// and no loop tests for any of them (each pass names its own three).
pub(crate) struct Flags<const A: bool, const B: bool, const C: bool>;

/// `$body` with `$flags` naming the [`Flags`] type of three run-time booleans
/// (`[first, second, third]`): one compiled body per combination.
macro_rules! with_flags {
    ([$($value:expr),*], |$flags:ident| $body:expr) => {
        with_flags!(@ [] [$($value),*] |$flags| $body)
    };
    (@ [$($known:tt),*] [] |$flags:ident| $body:expr) => {{
        type $flags = $crate::kernels::simd::Flags<$($known),*>;
        $body
    }};
    (@ [$($known:tt),*] [$next:expr $(, $rest:expr)*] |$flags:ident| $body:expr) => {
        if $next {
            with_flags!(@ [$($known,)* true] [$($rest),*] |$flags| $body)
        } else {
            with_flags!(@ [$($known,)* false] [$($rest),*] |$flags| $body)
        }
    };
}

/// Declares a trait that names the three [`Flags`] of one pass, implemented for `Flags`.
macro_rules! flags_trait {
    ($(#[$doc:meta])* $name:ident: $a:ident, $b:ident, $c:ident) => {
        $(#[$doc])*
        trait $name {
            const $a: bool;
            const $b: bool;
            const $c: bool;
        }

        impl<const $a: bool, const $b: bool, const $c: bool> $name
            for $crate::kernels::simd::Flags<$a, $b, $c>
        {
            const $a: bool = $a;
            const $b: bool = $b;
            const $c: bool = $c;
        }
    };
}

mod backward;
mod forward;
mod storage;

/// Whether a parameter (absent, or one row of values) holds no NaN: the test, once per job, for
/// rounding half outputs by `Storage::store_plain_nans`.
fn holds_no_nan<T: Float>(values: Option<&[T]>) -> bool {
    values.is_none_or(|values| !values.iter().any(|value| value.is_nan()))
}

pub(crate) use backward::Backward;
#[cfg(test)]
pub(crate) use forward::{FORCE_FUSED_ROWS, FUSED_ROW_BYTES};
pub(crate) use storage::Storage;

/// The instruction set the kernels run on: the widest this CPU has, or at most the one named
/// by the environment variable `LAYERNORM_MAX_ISA` (`scalar`, `avx2`, `avx512`, `neon`; read
/// once; an unknown value means no cap). Results are the same bits on every one of them.
pub(crate) fn arch() -> pulp::Arch {
    static ARCH: std::sync::OnceLock<pulp::Arch> = std::sync::OnceLock::new();
    *ARCH.get_or_init(|| capped_arch(std::env::var("LAYERNORM_MAX_ISA").ok().as_deref()))
}

/// The widest instruction set this CPU has, at most `cap`.
pub(crate) fn capped_arch(cap: Option<&str>) -> pulp::Arch {
    match cap.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        Some("scalar") => pulp::Arch::Scalar,
        #[cfg(target_arch = "x86_64")]
        Some("avx2") => pulp::x86::V3::try_new().map_or(pulp::Arch::Scalar, pulp::Arch::V3),
        _ => pulp::Arch::new(),
    }
}

/// The instruction set for `E`'s kernels: [`arch`], or without SIMD where the CPU lacks what
/// the type's x86-64 SIMD kernels need ([`Storage::runs_on_avx2`]). Results are the same bits
/// on every one.
pub(crate) fn arch_for<E: Storage>() -> pulp::Arch {
    match arch() {
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V3(_) | pulp::Arch::V4(_) if !E::runs_on_avx2() => pulp::Arch::Scalar,
        arch => arch,
    }
}

/// Forward pass over whole rows on [`arch`]; see `scalar::forward_rows`.
pub(crate) fn forward_rows<E: Storage>(job: ForwardRows<'_, E>) {
    let stores = job.layer.stores;
    arch_for::<E>().dispatch(job);
    stores.finish();
}

/// Backward pass over whole rows on [`arch`]; see `scalar::backward_rows`.
pub(crate) fn backward_rows<E: Storage>(backward: Backward<'_, E>) {
    let stores = backward.rows.layer.stores;
    arch_for::<E>().dispatch(backward);
    stores.finish();
}

/// `values += sums`, each value widened to the statistics type, added to and rounded back
/// (`Element::add_all`), compiled for [`arch`]'s vectors: the same operations on every value.
/// A backward call of one gradient block adds its parameter gradients this way.
pub(crate) fn add_all<A: Element>(values: &mut [A], sums: &[A::Stat]) {
    struct AddAll<'a, A: Element> {
        values: &'a mut [A],
        sums: &'a [A::Stat],
    }

    impl<A: Element> WithSimd for AddAll<'_, A> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            for (value, &sum) in self.values.iter_mut().zip(self.sums) {
                *value = A::from_stat(value.to_stat() + sum);
            }
        }
    }

    arch().dispatch(AddAll { values, sums });
}

#[cfg(test)]
mod tests {
    use super::RowLength;
    use proptest::prelude::*;

    /// Any f64 from its bits: subnormals, huge values, infinities and NaN included.
    fn any_f64() -> impl Strategy<Value = f64> {
        any::<u64>().prop_map(f64::from_bits)
    }

    proptest! {
        /// Multiplying by the exact reciprocal of a power of two is the division, bit for bit
        /// (NaN for NaN), so rows of 2^k values keep the bits of every other length's formula.
        #[test]
        fn row_length_mean_is_the_division(sum in any_f64(), power in 0u32..64, other in 1usize..100_000) {
            for n in [1usize << power, other] {
                let expected = sum / n as f64;
                let found = RowLength::new(n).mean(sum);
                prop_assert!(
                    found.to_bits() == expected.to_bits() || (found.is_nan() && expected.is_nan()),
                    "{sum:e} / {n}: {found:e} against {expected:e}"
                );
            }
        }
    }
}
