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

use super::{scalar, BackwardJob, ForwardRows};
use crate::element::Element;
use bytemuck::Pod;
use pulp::Simd;

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
            let end = (start + $crate::kernels::simd::FOLD_VECTORS).min(count);
            let full = start
                + (end - start) / $crate::kernels::simd::ACCUMULATORS
                    * $crate::kernels::simd::ACCUMULATORS;
            let mut sums = [zero; $crate::kernels::simd::ACCUMULATORS];
            let mut dots = [zero; $crate::kernels::simd::ACCUMULATORS];
            let mut group = start;
            while group < full {
                for a in 0..$crate::kernels::simd::ACCUMULATORS {
                    let $k = group + a;
                    let (sum, factor, other) = $terms;
                    sums[a] = <$float>::add_vectors(simd, sums[a], sum);
                    dots[a] = <$float>::mul_add_vectors(simd, factor, other, dots[a]);
                }
                group += $crate::kernels::simd::ACCUMULATORS;
            }
            for $k in full..end {
                let (sum, factor, other) = $terms;
                sums[0] = <$float>::add_vectors(simd, sums[0], sum);
                dots[0] = <$float>::mul_add_vectors(simd, factor, other, dots[0]);
            }
            total_sum += $crate::kernels::simd::fold::<$float, _>(simd, sums);
            total_dot += $crate::kernels::simd::fold::<$float, _>(simd, dots);
            start = end;
        }
        (total_sum, total_dot)
    }};
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

pub(crate) use backward::Backward;

/// The instruction set the kernels run on: the widest this CPU has.
pub(crate) fn arch() -> pulp::Arch {
    pulp::Arch::new()
}

/// Forward pass over whole rows on [`arch`]; see `scalar::forward_rows`.
pub(crate) fn forward_rows<T: SimdFloat>(job: ForwardRows<'_, T>) {
    arch().dispatch(job);
}

/// Backward pass over whole rows on [`arch`]; see `scalar::backward_rows`. `scratch` holds
/// short partial sums between calls.
pub(crate) fn backward_rows<T: SimdFloat>(job: BackwardJob<'_, T>, scratch: &mut Vec<T>) {
    arch().dispatch(Backward { job, scratch });
}
