//! Runtime-dispatched SIMD kernels for `f32` and `f64` rows, through pulp: AVX-512 or AVX2 on
//! x86-64, NEON on aarch64, chosen when the kernel is called. Without SIMD the scalar
//! specification runs instead.
//!
//! They mirror `scalar.rs` in the data's own precision, kept exact by shifting before summing
//! and by folding short partial sums into f64:
//!
//! ```text
//! pass 1  m₀ = Σ xᵢ / n                    a first estimate of the mean, rounded to the data type
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

use super::{scalar, BackwardRows, Params, RowStatsOut};
use crate::element::Element;
use bytemuck::Pod;
use pulp::{Simd, WithSimd};

/// A float type with SIMD vectors in every pulp instruction set: the operations the kernels
/// use, named once so that one generic body serves f32 and f64.
pub(crate) trait SimdFloat: Element<Stat = f64> + Pod + num_traits::Float {
    type Vector<S: Simd>: Copy + Pod;
    /// Below this sum of squares, squared deviations may have lost bits to subnormals.
    const TINY_SUM_OF_SQUARES: f64;
    /// An ε at least this large dwarfs any error a tiny sum of squares could carry.
    const EPS_DWARFING_TINY: f64;

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
    /// The sum of the lanes (a short tree of additions in the data type).
    fn reduce_sum<S: Simd>(simd: S, vector: Self::Vector<S>) -> Self;
}

macro_rules! impl_simd_float {
    ($float:ty, $vector:ident, $tiny_ssq:expr, $eps_dwarfing:expr,
     $splat:ident, $add:ident, $sub:ident, $mul:ident, $mul_add:ident,
     $split:ident, $split_mut:ident, $load:ident, $store:ident, $reduce_sum:ident) => {
        impl SimdFloat for $float {
            type Vector<S: Simd> = S::$vector;
            const TINY_SUM_OF_SQUARES: f64 = $tiny_ssq;
            const EPS_DWARFING_TINY: f64 = $eps_dwarfing;

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
            fn reduce_sum<S: Simd>(simd: S, vector: S::$vector) -> Self {
                simd.$reduce_sum(vector)
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
    splat_f32s,
    add_f32s,
    sub_f32s,
    mul_f32s,
    mul_add_f32s,
    as_simd_f32s,
    as_mut_simd_f32s,
    partial_load_f32s,
    partial_store_f32s,
    reduce_sum_f32s
);
impl_simd_float!(
    f64,
    f64s,
    1.0e-280,
    1.0e-250,
    splat_f64s,
    add_f64s,
    sub_f64s,
    mul_f64s,
    mul_add_f64s,
    as_simd_f64s,
    as_mut_simd_f64s,
    partial_load_f64s,
    partial_store_f64s,
    reduce_sum_f64s
);

/// Independent accumulators per sum: enough to hide the latency of the add chains.
const ACCUMULATORS: usize = 4;

/// Vectors summed in the data type (a few terms per lane and accumulator) before the partial
/// sum is folded into f64.
const FOLD_VECTORS: usize = 32;

/// Rows of at most this many bytes are "short": their statistics are computed in blocks.
const SHORT_ROW_BYTES: usize = 1024;

/// Short rows whose statistics are computed together.
const SHORT_ROW_BLOCK: usize = 16;

/// Values averaged for the first estimate of the mean of a row shorter than a few vectors.
const SAMPLE: usize = 32;

/// Rows whose parameter gradients are summed in the data type before folding into f64.
pub(crate) const FOLD_ROWS: usize = 8;

/// The sum of the accumulators' lanes, widened to f64. The additions across lanes round in the
/// data type, which costs at most a few ulps of a block's partial sum: negligible for sums of
/// squares (all terms positive), and for signed sums small against the row's spread.
#[inline(always)]
fn fold<T: SimdFloat, S: Simd>(simd: S, parts: [T::Vector<S>; ACCUMULATORS]) -> f64 {
    T::reduce_sum(simd, combine::<T, S>(simd, parts)).to_stat()
}

/// One vector holding the sum of the accumulators.
#[inline(always)]
fn combine<T: SimdFloat, S: Simd>(simd: S, parts: [T::Vector<S>; ACCUMULATORS]) -> T::Vector<S> {
    let [a, b, c, d] = parts;
    T::add_vectors(simd, T::add_vectors(simd, a, b), T::add_vectors(simd, c, d))
}

// Hot loops take their per-vector work as macro bodies, not closures: a closure is compiled as
// a function of its own, without the instruction set's target features, and its intrinsics
// then become calls. Everything else here is `#[inline(always)]` into the dispatched body.

/// `(Σₖ sumₖ, Σₖ factorₖ · otherₖ)` over `|k| (sumₖ, factorₖ, otherₖ)` for vector indices
/// `k < count`, several accumulators wide, folded into f64 every [`FOLD_VECTORS`] vectors.
macro_rules! sum_and_dot {
    ($float:ty, $simd:expr, $count:expr, |$k:ident| $terms:expr) => {{
        let simd = $simd;
        let count: usize = $count;
        let zero = <$float>::splat(simd, <$float>::zero());
        let (mut total_sum, mut total_dot) = (0.0, 0.0);
        let mut start = 0;
        while start < count {
            let end = (start + FOLD_VECTORS).min(count);
            let full = start + (end - start) / ACCUMULATORS * ACCUMULATORS;
            let mut sums = [zero; ACCUMULATORS];
            let mut dots = [zero; ACCUMULATORS];
            let mut group = start;
            while group < full {
                for a in 0..ACCUMULATORS {
                    let $k = group + a;
                    let (sum, factor, other) = $terms;
                    sums[a] = <$float>::add_vectors(simd, sums[a], sum);
                    dots[a] = <$float>::mul_add_vectors(simd, factor, other, dots[a]);
                }
                group += ACCUMULATORS;
            }
            for $k in full..end {
                let (sum, factor, other) = $terms;
                sums[0] = <$float>::add_vectors(simd, sums[0], sum);
                dots[0] = <$float>::mul_add_vectors(simd, factor, other, dots[0]);
            }
            total_sum += fold::<$float, _>(simd, sums);
            total_dot += fold::<$float, _>(simd, dots);
            start = end;
        }
        (total_sum, total_dot)
    }};
}

/// `out[k] = body` for every vector `k`, with `value` the input vector: `x[k]`, or `out[k]`
/// itself when `x` is `None` (in place).
macro_rules! map_vectors {
    ($x:expr, $out:expr, |$k:ident, $value:ident| $body:expr) => {
        match $x {
            Some(x) => {
                for ($k, (out, &$value)) in $out.iter_mut().zip(x).enumerate() {
                    *out = $body;
                }
            }
            None => {
                for ($k, out) in $out.iter_mut().enumerate() {
                    let $value = *out;
                    *out = $body;
                }
            }
        }
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

/// The first estimate of a row's mean: the mean of its first few vectors (of its first values
/// when it is short). It is within a fraction of σ of the mean for most rows; a worse one is
/// replaced by the refined mean (see [`finish_stats`]).
/// Uncentered rows (RmsNorm) are summed around 0.
#[inline(always)]
fn first_shift<T: SimdFloat, S: Simd>(simd: S, row: &[T], centered: bool) -> T {
    if !centered {
        return T::zero();
    }
    let (head, _) = T::split::<S>(row);
    match head.first_chunk::<ACCUMULATORS>() {
        Some(&first) => {
            let lanes = size_of::<T::Vector<S>>() / size_of::<T>();
            let sum = T::reduce_sum(simd, combine::<T, S>(simd, first)).to_stat();
            T::from_stat(sum / (ACCUMULATORS * lanes) as f64)
        }
        None => {
            let sample = &row[..row.len().min(SAMPLE)];
            let sum: f64 = sample.iter().map(|x| x.to_stat()).sum();
            T::from_stat(sum / sample.len() as f64)
        }
    }
}

/// `(Σ (xᵢ − shift), Σ (xᵢ − shift)²)` over a row's last, partial vector, in f64.
#[inline(always)]
fn shifted_tail_sums<T: SimdFloat>(tail: &[T], shift: T) -> (f64, f64) {
    tail.iter().fold((0.0, 0.0), |(sum, squares), x| {
        let deviation = x.to_stat() - shift.to_stat();
        (sum + deviation, squares + deviation * deviation)
    })
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
    n: f64,
    eps: f64,
    centered: bool,
) -> StatsStep<T> {
    let correction = if centered { sum / n } else { 0.0 };
    let variance = sum_of_squares / n - correction * correction;
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

/// Statistics of one row by a pass over it around `shift`, refined at most twice; `None` when
/// the row needs the scalar specification (non-finite values, overflowing squares, squares in
/// the subnormal range with a tiny ε, or no shift close enough to the mean).
#[inline(always)]
fn row_stats_from<T: SimdFloat, S: Simd>(
    simd: S,
    row: &[T],
    mut shift: T,
    eps: f64,
    centered: bool,
) -> Option<RowStats<T>> {
    let n = row.len() as f64;
    let (head, tail) = T::split::<S>(row);
    for _ in 0..3 {
        if !shift.is_finite() {
            return None;
        }
        let shift_vector = T::splat(simd, shift);
        let (sum, sum_of_squares) = sum_and_dot!(T, simd, head.len(), |k| {
            let deviation = T::sub_vectors(simd, head[k], shift_vector);
            (deviation, deviation, deviation)
        });
        let (tail_sum, tail_squares) = shifted_tail_sums(tail, shift);
        match finish_stats(
            shift,
            sum + tail_sum,
            sum_of_squares + tail_squares,
            n,
            eps,
            centered,
        ) {
            StatsStep::Done(stats) => return Some(stats),
            StatsStep::Refine(better) => shift = better,
            StatsStep::Fallback => return None,
        }
    }
    None
}

/// Pass 3 of one row fused with pass 2 of the next: writes the row's `out = gain · x̂ + bias`
/// (`x = None`: in place) while summing the next row's deviations from `next_shift`, so that
/// reading the next row overlaps writing this one. Returns the next row's sums, tail included.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn normalize_row_and_sum_next<T: SimdFloat, S: Simd>(
    simd: S,
    x: Option<&[T]>,
    out: &mut [T],
    stats: RowStats<T>,
    params: Params<'_, T>,
    next: &[T],
    next_shift: T,
) -> (f64, f64) {
    let normalizer = Normalizer::new::<T, S>(simd, &stats);
    let (gain_head, gain_tail) = params.gain.map(T::split::<S>).unzip();
    let (bias_head, bias_tail) = params.bias.map(T::split::<S>).unzip();
    let (x_head, x_tail) = x.map(T::split::<S>).unzip();
    let (next_head, next_tail) = T::split::<S>(next);
    let (out_head, out_tail) = T::split_mut::<S>(out);
    // Slices of one known length, so that indexing them in the loops needs no bounds checks.
    let len = out_head.len();
    let (x_head, gain_head, bias_head, next_head) = (
        x_head.map(|x| &x[..len]),
        gain_head.map(|gain| &gain[..len]),
        bias_head.map(|bias| &bias[..len]),
        &next_head[..len],
    );
    let shift = T::splat(simd, next_shift);
    // One loop per source and parameter combination, so that no loop tests for either.
    macro_rules! normalize_and_sum {
        (|$k:ident, $x_hat:ident| x: $x:expr, y: $y:expr) => {
            sum_and_dot!(T, simd, len, |$k| {
                let $x_hat = normalizer.x_hat::<T, S>(simd, $x);
                out_head[$k] = $y;
                let deviation = T::sub_vectors(simd, next_head[$k], shift);
                (deviation, deviation, deviation)
            })
        };
    }
    let (sum, sum_of_squares) = match (x_head, gain_head, bias_head) {
        (Some(x), Some(gain), Some(bias)) => normalize_and_sum!(|k, x_hat| x: x[k],
            y: T::mul_add_vectors(simd, x_hat, gain[k], bias[k])),
        (Some(x), Some(gain), None) => normalize_and_sum!(|k, x_hat| x: x[k],
            y: T::mul_vectors(simd, x_hat, gain[k])),
        (Some(x), None, Some(bias)) => normalize_and_sum!(|k, x_hat| x: x[k],
            y: T::add_vectors(simd, x_hat, bias[k])),
        (Some(x), None, None) => normalize_and_sum!(|k, x_hat| x: x[k], y: x_hat),
        (None, Some(gain), Some(bias)) => normalize_and_sum!(|k, x_hat| x: out_head[k],
            y: T::mul_add_vectors(simd, x_hat, gain[k], bias[k])),
        (None, Some(gain), None) => normalize_and_sum!(|k, x_hat| x: out_head[k],
            y: T::mul_vectors(simd, x_hat, gain[k])),
        (None, None, Some(bias)) => normalize_and_sum!(|k, x_hat| x: out_head[k],
            y: T::add_vectors(simd, x_hat, bias[k])),
        (None, None, None) => normalize_and_sum!(|k, x_hat| x: out_head[k], y: x_hat),
    };
    normalize_tail::<T, S>(simd, x_tail, out_tail, &normalizer, gain_tail, bias_tail);
    let (tail_sum, tail_squares) = shifted_tail_sums(next_tail, next_shift);
    (sum + tail_sum, sum_of_squares + tail_squares)
}

/// The last, partial vector of a row: `out = gain · x̂ + bias` (`x = None`: in place).
#[inline(always)]
fn normalize_tail<T: SimdFloat, S: Simd>(
    simd: S,
    x_tail: Option<&[T]>,
    out_tail: &mut [T],
    normalizer: &Normalizer<T::Vector<S>>,
    gain_tail: Option<&[T]>,
    bias_tail: Option<&[T]>,
) {
    if !out_tail.is_empty() {
        let x_hat =
            normalizer.x_hat::<T, S>(simd, T::load_partial(simd, x_tail.unwrap_or(out_tail)));
        let gain = gain_tail.map_or(T::splat(simd, T::one()), |g| T::load_partial(simd, g));
        let bias = bias_tail.map_or(T::splat(simd, T::zero()), |b| T::load_partial(simd, b));
        T::store_partial(simd, out_tail, T::mul_add_vectors(simd, x_hat, gain, bias));
    }
}

/// Pass 3: `out = gain · x̂ + bias`, with the parameters that exist; `x = None` reads x from
/// `out`. One loop per combination, so that no loop tests for a parameter.
#[inline(always)]
fn normalize_row<T: SimdFloat, S: Simd>(
    simd: S,
    x: Option<&[T]>,
    out: &mut [T],
    stats: RowStats<T>,
    params: Params<'_, T>,
) {
    let normalizer = Normalizer::new::<T, S>(simd, &stats);
    let (gain_head, gain_tail) = params.gain.map(T::split::<S>).unzip();
    let (bias_head, bias_tail) = params.bias.map(T::split::<S>).unzip();
    let (x_head, x_tail) = x.map(T::split::<S>).unzip();
    let (out_head, out_tail) = T::split_mut::<S>(out);
    // Slices of one known length, so that indexing them in the loops needs no bounds checks.
    let len = out_head.len();
    let (x_head, gain_head, bias_head) = (
        x_head.map(|x| &x[..len]),
        gain_head.map(|gain| &gain[..len]),
        bias_head.map(|bias| &bias[..len]),
    );
    match (gain_head, bias_head) {
        (Some(gain), Some(bias)) => map_vectors!(x_head, out_head, |k, x| {
            let x_hat = normalizer.x_hat::<T, S>(simd, x);
            T::mul_add_vectors(simd, x_hat, gain[k], bias[k])
        }),
        (Some(gain), None) => map_vectors!(x_head, out_head, |k, x| {
            T::mul_vectors(simd, normalizer.x_hat::<T, S>(simd, x), gain[k])
        }),
        (None, Some(bias)) => map_vectors!(x_head, out_head, |k, x| {
            T::add_vectors(simd, normalizer.x_hat::<T, S>(simd, x), bias[k])
        }),
        (None, None) => map_vectors!(x_head, out_head, |_k, x| {
            normalizer.x_hat::<T, S>(simd, x)
        }),
    }
    if !out_tail.is_empty() {
        let x_hat =
            normalizer.x_hat::<T, S>(simd, T::load_partial(simd, x_tail.unwrap_or(out_tail)));
        let gain = gain_tail.map_or(T::splat(simd, T::one()), |g| T::load_partial(simd, g));
        let bias = bias_tail.map_or(T::splat(simd, T::zero()), |b| T::load_partial(simd, b));
        T::store_partial(simd, out_tail, T::mul_add_vectors(simd, x_hat, gain, bias));
    }
}

/// One row of the backward pass, as full vectors and a partial tail.
#[derive(Clone, Copy)]
struct GradRow<'a, T: SimdFloat, S: Simd> {
    x: &'a [T::Vector<S>],
    dy: &'a [T::Vector<S>],
    x_tail: &'a [T],
    dy_tail: &'a [T],
    stats: RowStats<T>,
    /// False for RmsNorm rows: no mean(g) term.
    centered: bool,
}

impl<'a, T: SimdFloat, S: Simd> GradRow<'a, T, S> {
    #[inline(always)]
    fn new(x: &'a [T], dy: &'a [T], stats: RowStats<T>, centered: bool) -> Self {
        let (x, x_tail) = T::split::<S>(x);
        let (dy, dy_tail) = T::split::<S>(dy);
        GradRow {
            x,
            dy: &dy[..x.len()],
            x_tail,
            dy_tail,
            stats,
            centered,
        }
    }
}

/// The reductions of a row's backward pass: over its full vectors, `Σ g` and `Σ g·(x − hi)`.
#[derive(Clone, Copy)]
struct GradSums {
    sum_g: f64,
    sum_g_deviation: f64,
}

/// Pass A of one row alone: its [`GradSums`].
#[inline(always)]
fn grad_sums<T: SimdFloat, S: Simd, const HAS_GAIN: bool>(
    simd: S,
    row: GradRow<'_, T, S>,
    gain: &[T::Vector<S>],
) -> GradSums {
    let hi = T::splat(simd, row.stats.hi);
    let (sum_g, sum_g_deviation) = sum_and_dot!(T, simd, row.x.len(), |k| {
        let g = if HAS_GAIN {
            T::mul_vectors(simd, gain[k], row.dy[k])
        } else {
            row.dy[k]
        };
        (g, g, T::sub_vectors(simd, row.x[k], hi))
    });
    GradSums {
        sum_g,
        sum_g_deviation,
    }
}

/// Per-row constants of pass B: `dx = r · (g − mean(g)) − r·mean(g⊙x̂) · x̂`.
#[derive(Clone, Copy)]
struct InputGrad<V> {
    normalizer: Normalizer<V>,
    mean_g: V,
    neg_r_mean_g_x_hat: V,
}

impl<V: Copy> InputGrad<V> {
    /// From the row's reductions; the tail's terms are added here in f64.
    #[inline(always)]
    fn new<T: SimdFloat<Vector<S> = V>, S: Simd>(
        simd: S,
        row: GradRow<'_, T, S>,
        sums: GradSums,
        gain_tail: &[T],
    ) -> Self {
        let stats = row.stats;
        let n = (size_of_val(row.x) / size_of::<T>() + row.x_tail.len()) as f64;
        let (mut tail_g, mut tail_g_x_hat) = (0.0, 0.0);
        for (i, (x, dy)) in row.x_tail.iter().zip(row.dy_tail).enumerate() {
            let g = gain_tail.get(i).map_or(1.0, |gain| gain.to_stat()) * dy.to_stat();
            tail_g += g;
            tail_g_x_hat += g * (x.to_stat() - stats.mean) * stats.inv_std;
        }
        // Σ g·x̂ = r · (Σ g·(x − hi) − lo · Σ g) over the full vectors.
        let vector_g_x_hat =
            stats.inv_std * (sums.sum_g_deviation - stats.lo.to_stat() * sums.sum_g);
        let mean_g = if row.centered {
            (sums.sum_g + tail_g) / n
        } else {
            0.0
        };
        let mean_g_x_hat = (vector_g_x_hat + tail_g_x_hat) / n;
        InputGrad {
            normalizer: Normalizer::new::<T, S>(simd, &stats),
            mean_g: T::splat(simd, T::from_stat(mean_g)),
            neg_r_mean_g_x_hat: T::splat(simd, T::from_stat(-stats.inv_std * mean_g_x_hat)),
        }
    }

    /// `dx` for one vector. Subtracting mean(g) first makes dx exactly 0 where g equals its
    /// mean and x̂ is 0 (one-element rows).
    #[inline(always)]
    fn dx<T: SimdFloat<Vector<S> = V>, S: Simd>(&self, simd: S, g: V, x_hat: V) -> V {
        let centered = T::mul_vectors(
            simd,
            self.normalizer.r,
            T::sub_vectors(simd, g, self.mean_g),
        );
        T::mul_add_vectors(simd, self.neg_r_mean_g_x_hat, x_hat, centered)
    }
}

/// Where pass B writes: `dx`, and the parameter-gradient sums it adds to (data type).
struct GradOut<'a, V> {
    dx: &'a mut [V],
    gain_sums: &'a mut [V],
    bias_sums: &'a mut [V],
}

/// Pass B for vector `k`: `dx[k]`, and `dy·x̂`, `dy` added into the sums that are wanted.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_at<
    T: SimdFloat,
    S: Simd,
    const HAS_GAIN: bool,
    const GAIN_GRAD: bool,
    const BIAS_GRAD: bool,
>(
    simd: S,
    k: usize,
    x: T::Vector<S>,
    dy: T::Vector<S>,
    gain: &[T::Vector<S>],
    input_grad: &InputGrad<T::Vector<S>>,
    out: &mut GradOut<'_, T::Vector<S>>,
) {
    let x_hat = input_grad.normalizer.x_hat::<T, S>(simd, x);
    let g = if HAS_GAIN {
        T::mul_vectors(simd, gain[k], dy)
    } else {
        dy
    };
    out.dx[k] = input_grad.dx::<T, S>(simd, g, x_hat);
    if GAIN_GRAD {
        out.gain_sums[k] = T::mul_add_vectors(simd, dy, x_hat, out.gain_sums[k]);
    }
    if BIAS_GRAD {
        out.bias_sums[k] = T::add_vectors(simd, out.bias_sums[k], dy);
    }
}

/// Pass B of a row, fused with pass A of the next one when there is a next fast row (so that
/// reading it overlaps writing this one); returns the next row's [`GradSums`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_row<
    T: SimdFloat,
    S: Simd,
    const HAS_GAIN: bool,
    const GAIN_GRAD: bool,
    const BIAS_GRAD: bool,
>(
    simd: S,
    row: GradRow<'_, T, S>,
    sums: GradSums,
    next: Option<GradRow<'_, T, S>>,
    gain: Option<&[T]>,
    dx: &mut [T],
    gain_sums: &mut [T],
    bias_sums: &mut [T],
) -> Option<GradSums> {
    let (gain_head, gain_tail) = gain.map_or((&[][..], &[][..]), T::split::<S>);
    let len = row.x.len();
    let gain_head = if HAS_GAIN {
        &gain_head[..len]
    } else {
        gain_head
    };
    let input_grad = InputGrad::new::<T, S>(simd, row, sums, gain_tail);
    let (dx_head, dx_tail) = T::split_mut::<S>(dx);
    let (gain_sums_head, gain_sums_tail) = T::split_mut::<S>(gain_sums);
    let (bias_sums_head, bias_sums_tail) = T::split_mut::<S>(bias_sums);
    let mut out = GradOut {
        dx: &mut dx_head[..len],
        gain_sums: if GAIN_GRAD {
            &mut gain_sums_head[..len]
        } else {
            gain_sums_head
        },
        bias_sums: if BIAS_GRAD {
            &mut bias_sums_head[..len]
        } else {
            bias_sums_head
        },
    };
    let next_sums = match next {
        Some(next) => {
            let (next_x, next_dy) = (&next.x[..len], &next.dy[..len]);
            let next_hi = T::splat(simd, next.stats.hi);
            let (sum_g, sum_g_deviation) = sum_and_dot!(T, simd, len, |k| {
                let (x, dy) = (row.x[k], row.dy[k]);
                grad_at::<T, S, HAS_GAIN, GAIN_GRAD, BIAS_GRAD>(
                    simd,
                    k,
                    x,
                    dy,
                    gain_head,
                    &input_grad,
                    &mut out,
                );
                let g = if HAS_GAIN {
                    T::mul_vectors(simd, gain_head[k], next_dy[k])
                } else {
                    next_dy[k]
                };
                (g, g, T::sub_vectors(simd, next_x[k], next_hi))
            });
            Some(GradSums {
                sum_g,
                sum_g_deviation,
            })
        }
        None => {
            for k in 0..len {
                let (x, dy) = (row.x[k], row.dy[k]);
                grad_at::<T, S, HAS_GAIN, GAIN_GRAD, BIAS_GRAD>(
                    simd,
                    k,
                    x,
                    dy,
                    gain_head,
                    &input_grad,
                    &mut out,
                );
            }
            None
        }
    };
    if !dx_tail.is_empty() {
        let x_hat = input_grad
            .normalizer
            .x_hat::<T, S>(simd, T::load_partial(simd, row.x_tail));
        let dy = T::load_partial(simd, row.dy_tail);
        let g = if HAS_GAIN {
            T::mul_vectors(simd, T::load_partial(simd, gain_tail), dy)
        } else {
            dy
        };
        T::store_partial(simd, dx_tail, input_grad.dx::<T, S>(simd, g, x_hat));
        if GAIN_GRAD {
            let sum = T::load_partial(simd, gain_sums_tail);
            T::store_partial(
                simd,
                gain_sums_tail,
                T::mul_add_vectors(simd, dy, x_hat, sum),
            );
        }
        if BIAS_GRAD {
            let sum = T::load_partial(simd, bias_sums_tail);
            T::store_partial(simd, bias_sums_tail, T::add_vectors(simd, sum, dy));
        }
    }
    next_sums
}

/// Adds `sums` (data type) into `totals` (f64) and clears them.
#[inline(always)]
fn fold_into<T: SimdFloat>(totals: Option<&mut [f64]>, sums: &mut [T]) {
    if let Some(totals) = totals {
        for (total, sum) in totals.iter_mut().zip(sums.iter_mut()) {
            *total += sum.to_stat();
            *sum = T::zero();
        }
    }
}

/// Whether saved statistics let the fast backward run exactly as forward did: finite, with
/// squared deviations that neither overflow nor fall into subnormals.
fn backward_fast_path_is_safe<T: SimdFloat>(mean: f64, inv_std: f64, n: f64, eps: f64) -> bool {
    let variance_plus_eps = (inv_std * inv_std).recip();
    let bound = n * variance_plus_eps;
    mean.is_finite()
        && inv_std.is_finite()
        && inv_std > 0.0
        && bound < T::max_value().to_stat() / 4.0
        && (bound - n * eps >= T::TINY_SUM_OF_SQUARES || eps >= T::EPS_DWARFING_TINY)
}

/// Forward over whole rows, dispatched once per call.
struct Forward<'a, T> {
    x: Option<&'a [T]>,
    out: &'a mut [T],
    dim: usize,
    params: Params<'a, T>,
    eps: f64,
    stats: Option<RowStatsOut<'a, f64>>,
}

impl<T: SimdFloat> WithSimd for Forward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Forward {
            x,
            out,
            dim,
            params,
            eps,
            mut stats,
        } = self;
        if S::IS_SCALAR {
            return scalar::forward_rows(x, out, dim, params, eps, stats);
        }
        let rows = out.len() / dim;
        if dim * size_of::<T>() <= SHORT_ROW_BYTES {
            // Short rows: a row's statistics are a short chain of dependent steps, so those of
            // several rows are computed together (independent chains overlap), then the rows
            // are written. Consecutive short rows are one stream for the hardware prefetcher.
            for first in (0..rows).step_by(SHORT_ROW_BLOCK) {
                let count = SHORT_ROW_BLOCK.min(rows - first);
                let mut block_stats = [None; SHORT_ROW_BLOCK];
                for (offset, slot) in block_stats[..count].iter_mut().enumerate() {
                    let range = (first + offset) * dim..(first + offset + 1) * dim;
                    let values = x.map_or(&out[range.clone()], |x| &x[range]);
                    *slot = row_stats_from::<T, S>(
                        simd,
                        values,
                        first_shift::<T, S>(simd, values, params.centered),
                        eps,
                        params.centered,
                    );
                }
                for (offset, row_stats) in block_stats[..count].iter().enumerate() {
                    let row = first + offset;
                    let range = row * dim..(row + 1) * dim;
                    let x_row = x.map(|x| &x[range.clone()]);
                    let out_row = &mut out[range];
                    write_row::<T, S>(
                        simd, x_row, out_row, *row_stats, params, eps, &mut stats, row,
                    );
                }
            }
            return;
        }
        let n = dim as f64;
        // Long rows: each row's statistics are computed while the row before it is written (see
        // `normalize_row_and_sum_next`), so that reading overlaps writing; the first row's by a
        // pass of its own. `pending` is `Some(stats)` when the previous step computed this
        // row's statistics (`Some(None)`: the row needs the scalar specification).
        let mut pending: Option<Option<RowStats<T>>> = None;
        for row in 0..rows {
            let range = row * dim..(row + 1) * dim;
            let (current, later) = out.split_at_mut(range.end);
            let out_row = &mut current[range.start..];
            let x_row = x.map(|x| &x[range.clone()]);
            let row_stats = match pending.take() {
                Some(row_stats) => row_stats,
                None => {
                    let values = x_row.unwrap_or(out_row);
                    row_stats_from::<T, S>(
                        simd,
                        values,
                        first_shift::<T, S>(simd, values, params.centered),
                        eps,
                        params.centered,
                    )
                }
            };
            let next: Option<&[T]> = match x {
                Some(x) => x.get(range.end..range.end + dim),
                None => later.get(..dim),
            };
            let (Some(current_stats), Some(next)) = (row_stats, next) else {
                write_row::<T, S>(
                    simd, x_row, out_row, row_stats, params, eps, &mut stats, row,
                );
                continue;
            };
            let shift = first_shift::<T, S>(simd, next, params.centered);
            if !shift.is_finite() {
                write_row::<T, S>(
                    simd, x_row, out_row, row_stats, params, eps, &mut stats, row,
                );
                continue;
            }
            record_stats(&mut stats, row, current_stats);
            let (sum, sum_of_squares) = normalize_row_and_sum_next::<T, S>(
                simd,
                x_row,
                out_row,
                current_stats,
                params,
                next,
                shift,
            );
            pending = Some(
                match finish_stats(shift, sum, sum_of_squares, n, eps, params.centered) {
                    StatsStep::Done(next_stats) => Some(next_stats),
                    StatsStep::Refine(better) => {
                        row_stats_from::<T, S>(simd, next, better, eps, params.centered)
                    }
                    StatsStep::Fallback => None,
                },
            );
        }
    }
}

/// Stores a row's statistics when the caller asked for them.
#[inline(always)]
fn record_stats<T: SimdFloat>(
    stats: &mut Option<RowStatsOut<'_, f64>>,
    row: usize,
    row_stats: RowStats<T>,
) {
    if let Some(stats) = stats.as_mut() {
        stats.mean[row] = row_stats.mean;
        stats.inv_std[row] = row_stats.inv_std;
    }
}

/// Writes one row from its statistics, or by the scalar specification when it has none.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write_row<T: SimdFloat, S: Simd>(
    simd: S,
    x_row: Option<&[T]>,
    out_row: &mut [T],
    row_stats: Option<RowStats<T>>,
    params: Params<'_, T>,
    eps: f64,
    stats: &mut Option<RowStatsOut<'_, f64>>,
    row: usize,
) {
    match row_stats {
        Some(row_stats) => {
            record_stats(stats, row, row_stats);
            normalize_row::<T, S>(simd, x_row, out_row, row_stats, params);
        }
        None => {
            let row_stats_out = stats.as_mut().map(|stats| RowStatsOut {
                mean: &mut stats.mean[row..row + 1],
                inv_std: &mut stats.inv_std[row..row + 1],
            });
            let dim = out_row.len();
            scalar::forward_rows(x_row, out_row, dim, params, eps, row_stats_out);
        }
    }
}

/// Forward pass over whole rows on the best instruction set of this CPU; see
/// `scalar::forward_rows`.
pub(crate) fn forward_rows<T: SimdFloat>(
    x: Option<&[T]>,
    out: &mut [T],
    dim: usize,
    params: Params<'_, T>,
    eps: f64,
    stats: Option<RowStatsOut<'_, f64>>,
) {
    forward_rows_on(pulp::Arch::new(), x, out, dim, params, eps, stats);
}

/// `forward_rows` on the given instruction set.
pub(crate) fn forward_rows_on<T: SimdFloat>(
    arch: pulp::Arch,
    x: Option<&[T]>,
    out: &mut [T],
    dim: usize,
    params: Params<'_, T>,
    eps: f64,
    stats: Option<RowStatsOut<'_, f64>>,
) {
    arch.dispatch(Forward {
        x,
        out,
        dim,
        params,
        eps,
        stats,
    });
}

/// Backward over whole rows, dispatched once per call.
struct Backward<'a, T: Element> {
    rows: BackwardRows<'a, T>,
    dx: &'a mut [T],
    partial_gain: Option<&'a mut [f64]>,
    partial_bias: Option<&'a mut [f64]>,
    scratch: &'a mut Vec<T>,
}

impl<T: SimdFloat> WithSimd for Backward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        if S::IS_SCALAR {
            let Backward {
                rows,
                dx,
                partial_gain,
                partial_bias,
                ..
            } = self;
            return scalar::backward_rows(rows, dx, partial_gain, partial_bias);
        }
        // One body per combination of gain and wanted gradients: no loop tests for them.
        match (
            self.rows.gain.is_some(),
            self.partial_gain.is_some(),
            self.partial_bias.is_some(),
        ) {
            (true, true, true) => backward_all::<T, S, true, true, true>(simd, self),
            (true, true, false) => backward_all::<T, S, true, true, false>(simd, self),
            (true, false, true) => backward_all::<T, S, true, false, true>(simd, self),
            (true, false, false) => backward_all::<T, S, true, false, false>(simd, self),
            (false, true, true) => backward_all::<T, S, false, true, true>(simd, self),
            (false, true, false) => backward_all::<T, S, false, true, false>(simd, self),
            (false, false, true) => backward_all::<T, S, false, false, true>(simd, self),
            (false, false, false) => backward_all::<T, S, false, false, false>(simd, self),
        }
    }
}

/// The backward pass over all rows: pass B of each fast row fused with pass A of the next;
/// rows the fast path cannot do exactly go to the scalar specification (their `dyᵢ` still
/// reaches `dbias` through the same sums as every other row's, so `dbias` never depends on x).
#[inline(always)]
fn backward_all<
    T: SimdFloat,
    S: Simd,
    const HAS_GAIN: bool,
    const GAIN_GRAD: bool,
    const BIAS_GRAD: bool,
>(
    simd: S,
    backward: Backward<'_, T>,
) {
    let Backward {
        rows,
        dx,
        mut partial_gain,
        mut partial_bias,
        scratch,
    } = backward;
    let dim = rows.dim;
    scratch.clear();
    scratch.resize(2 * dim, T::zero());
    let (gain_sums, bias_sums) = scratch.split_at_mut(dim);
    let n = dim as f64;
    let (gain_head, _) = rows.gain.map_or((&[][..], &[][..]), T::split::<S>);
    let fast_row = |row: usize| -> Option<GradRow<'_, T, S>> {
        let (mean, inv_std) = (rows.means.get(row)?, rows.inv_stds[row]);
        backward_fast_path_is_safe::<T>(*mean, inv_std, n, rows.eps).then(|| {
            let range = row * dim..(row + 1) * dim;
            GradRow::new(
                &rows.x[range.clone()],
                &rows.dy[range],
                RowStats::from_f64(*mean, inv_std),
                rows.centered,
            )
        })
    };
    let mut pending: Option<GradSums> = None;
    for (row, dx_row) in dx.chunks_exact_mut(dim).enumerate() {
        match fast_row(row) {
            Some(current) => {
                let sums = match pending.take() {
                    Some(sums) => sums,
                    None => grad_sums::<T, S, HAS_GAIN>(simd, current, gain_head),
                };
                pending = backward_row::<T, S, HAS_GAIN, GAIN_GRAD, BIAS_GRAD>(
                    simd,
                    current,
                    sums,
                    fast_row(row + 1),
                    rows.gain,
                    dx_row,
                    gain_sums,
                    bias_sums,
                );
            }
            None => {
                let single = rows.rows_range(row, row + 1);
                scalar::backward_rows(single, dx_row, partial_gain.as_deref_mut(), None);
                if BIAS_GRAD {
                    for (sum, &dy) in bias_sums.iter_mut().zip(single.dy) {
                        *sum = *sum + dy;
                    }
                }
            }
        }
        if (row + 1) % FOLD_ROWS == 0 {
            fold_into(partial_gain.as_deref_mut(), gain_sums);
            fold_into(partial_bias.as_deref_mut(), bias_sums);
        }
    }
    fold_into(partial_gain, gain_sums);
    fold_into(partial_bias, bias_sums);
}

/// Backward pass over whole rows on the best instruction set of this CPU; see
/// `scalar::backward_rows`. `scratch` holds short partial sums between calls.
pub(crate) fn backward_rows<T: SimdFloat>(
    rows: BackwardRows<'_, T>,
    dx: &mut [T],
    partial_gain: Option<&mut [f64]>,
    partial_bias: Option<&mut [f64]>,
    scratch: &mut Vec<T>,
) {
    backward_rows_on(
        pulp::Arch::new(),
        rows,
        dx,
        partial_gain,
        partial_bias,
        scratch,
    );
}

/// `backward_rows` on the given instruction set.
pub(crate) fn backward_rows_on<T: SimdFloat>(
    arch: pulp::Arch,
    rows: BackwardRows<'_, T>,
    dx: &mut [T],
    partial_gain: Option<&mut [f64]>,
    partial_bias: Option<&mut [f64]>,
    scratch: &mut Vec<T>,
) {
    arch.dispatch(Backward {
        rows,
        dx,
        partial_gain,
        partial_bias,
        scratch,
    });
}
