//! Runtime-dispatched SIMD kernels for `f32` and `f64` rows, through pulp: AVX-512 or AVX2 on
//! x86-64, NEON on aarch64, chosen when the kernel is called. Without SIMD the scalar
//! specification runs instead.
//!
//! They mirror `scalar.rs` in the data's own precision, made exact with error-free
//! transformations instead of a wider type:
//!
//! ```text
//! pass 1  Σ xᵢ          compensated (TwoSum per lane)           → μ in f64, split μ = hi + lo
//! pass 2  Σ dᵢ²         dᵢ = (xᵢ − hi) − lo; TwoProd + TwoSum   → σ², r = 1/√(σ² + ε) in f64
//! pass 3  yᵢ = gainᵢ · (dᵢ · r) + biasᵢ
//! ```
//!
//! `dᵢ` is within 2 ulps of `xᵢ − μ` relative to itself, so rows whose mean is far larger than
//! their spread are normalized as accurately as centered ones. A row whose sum of squares
//! overflows (or, with a tiny ε, underflows into subnormals) is recomputed by the scalar
//! specification, which works in f64 for f32 data; rows with NaN or ±Inf take that path too.
//! Parameter gradients are accumulated per block with TwoSum in the data type and widened to
//! f64 at the end of the block.

use super::{scalar, Affine, BackwardRows, RowStatsOut};
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
}

macro_rules! impl_simd_float {
    ($float:ty, $vector:ident, $tiny_ssq:expr, $eps_dwarfing:expr,
     $splat:ident, $add:ident, $sub:ident, $mul:ident, $mul_add:ident,
     $split:ident, $split_mut:ident, $load:ident, $store:ident) => {
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
    partial_store_f32s
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
    partial_store_f64s
);

/// Independent accumulators per pass: enough to hide the latency of the add chains.
const ACCUMULATORS: usize = 4;

/// A running sum and the running sum of its rounding errors, per lane.
#[derive(Clone, Copy)]
struct Compensated<V> {
    sum: V,
    error: V,
}

impl<V: Pod> Compensated<V> {
    #[inline(always)]
    fn zero<T: SimdFloat<Vector<S> = V>, S: Simd>(simd: S) -> Self {
        let zero = T::splat(simd, T::zero());
        Compensated {
            sum: zero,
            error: zero,
        }
    }

    /// Adds `value` with Knuth's TwoSum: the rounding error of the addition is kept exactly.
    #[inline(always)]
    fn add<T: SimdFloat<Vector<S> = V>, S: Simd>(&mut self, simd: S, value: V) {
        let sum = T::add_vectors(simd, self.sum, value);
        let value_part = T::sub_vectors(simd, sum, self.sum);
        let sum_part = T::sub_vectors(simd, sum, value_part);
        let error = T::add_vectors(
            simd,
            T::sub_vectors(simd, self.sum, sum_part),
            T::sub_vectors(simd, value, value_part),
        );
        self.sum = sum;
        self.error = T::add_vectors(simd, self.error, error);
    }

    /// Adds `a · b`, keeping the rounding error of the product too (TwoProd with an FMA).
    #[inline(always)]
    fn add_product<T: SimdFloat<Vector<S> = V>, S: Simd>(&mut self, simd: S, a: V, b: V) {
        let product = T::mul_vectors(simd, a, b);
        let product_error = T::mul_add_vectors(
            simd,
            a,
            b,
            T::sub_vectors(simd, T::splat(simd, T::zero()), product),
        );
        self.add::<T, S>(simd, product);
        self.error = T::add_vectors(simd, self.error, product_error);
    }
}

/// Sum of every lane of every accumulator, in f64.
#[inline(always)]
fn total<T: SimdFloat, S: Simd>(accumulators: &[Compensated<T::Vector<S>>]) -> f64 {
    let mut sum = 0.0;
    let mut error = 0.0;
    for accumulator in accumulators {
        for &lane in bytemuck::cast_slice::<_, T>(std::slice::from_ref(&accumulator.sum)) {
            sum += lane.to_stat();
        }
        for &lane in bytemuck::cast_slice::<_, T>(std::slice::from_ref(&accumulator.error)) {
            error += lane.to_stat();
        }
    }
    sum + error
}

/// Plain sum of every lane of several accumulators, in f64.
#[inline(always)]
fn plain_total<T: SimdFloat, S: Simd>(accumulators: &[T::Vector<S>]) -> f64 {
    bytemuck::cast_slice::<_, T>(accumulators)
        .iter()
        .map(|lane| lane.to_stat())
        .sum()
}

/// A row's statistics, in f64 for the record and in the data type for the arithmetic.
#[derive(Clone, Copy)]
struct RowStats<T> {
    mean: f64,
    inv_std: f64,
    /// `mean = hi + lo` to about twice the data type's precision (lo = 0 for f64).
    hi: T,
    lo: T,
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

/// `dᵢ = (xᵢ − hi) − lo`, the deviation from the mean to within 2 ulps of itself.
#[inline(always)]
fn deviation<T: SimdFloat, S: Simd>(
    simd: S,
    x: T::Vector<S>,
    hi: T::Vector<S>,
    lo: T::Vector<S>,
) -> T::Vector<S> {
    T::sub_vectors(simd, T::sub_vectors(simd, x, hi), lo)
}

/// Statistics of one row, or `None` when the row needs the scalar specification (non-finite
/// values, overflowing squares, or squares in the subnormal range with a tiny ε).
#[inline(always)]
fn row_stats<T: SimdFloat, S: Simd>(simd: S, row: &[T], eps: f64) -> Option<RowStats<T>> {
    let n = row.len() as f64;
    let (head, tail) = T::split::<S>(row);
    let (blocks, rest) = head.as_chunks::<ACCUMULATORS>();

    let mut sums = [Compensated::zero::<T, S>(simd); ACCUMULATORS];
    for block in blocks {
        for (sum, &x) in sums.iter_mut().zip(block) {
            sum.add::<T, S>(simd, x);
        }
    }
    for (sum, &x) in sums.iter_mut().zip(rest) {
        sum.add::<T, S>(simd, x);
    }
    let tail_sum: f64 = tail.iter().map(|x| x.to_stat()).sum();
    let mean = (total::<T, S>(&sums) + tail_sum) / n;
    if !mean.is_finite() {
        return None;
    }
    let split = RowStats::<T>::from_f64(mean, 0.0);
    let (hi, lo) = (T::splat(simd, split.hi), T::splat(simd, split.lo));

    let mut squares = [Compensated::zero::<T, S>(simd); ACCUMULATORS];
    for block in blocks {
        for (square, &x) in squares.iter_mut().zip(block) {
            let d = deviation::<T, S>(simd, x, hi, lo);
            square.add_product::<T, S>(simd, d, d);
        }
    }
    for (square, &x) in squares.iter_mut().zip(rest) {
        let d = deviation::<T, S>(simd, x, hi, lo);
        square.add_product::<T, S>(simd, d, d);
    }
    let tail_squares: f64 = tail
        .iter()
        .map(|x| {
            let d = x.to_stat() - mean;
            d * d
        })
        .sum();
    let sum_of_squares = total::<T, S>(&squares) + tail_squares;
    let reliable = sum_of_squares.is_finite()
        && (sum_of_squares >= T::TINY_SUM_OF_SQUARES || eps >= T::EPS_DWARFING_TINY);
    if !reliable {
        return None;
    }
    let inv_std = (sum_of_squares / n + eps).sqrt().recip();
    Some(RowStats::from_f64(mean, inv_std))
}

/// Pass 3: `out = gain · ((x − hi) − lo) · r + bias`; `x = None` reads x from `out`.
#[inline(always)]
fn normalize_row<T: SimdFloat, S: Simd>(
    simd: S,
    x: Option<&[T]>,
    out: &mut [T],
    stats: RowStats<T>,
    affine: Affine<'_, T>,
) {
    let (hi, lo, r) = (
        T::splat(simd, stats.hi),
        T::splat(simd, stats.lo),
        T::splat(simd, stats.r),
    );
    let (one, zero) = (T::splat(simd, T::one()), T::splat(simd, T::zero()));
    let normalize = |x, gain, bias| {
        let x_hat = T::mul_vectors(simd, deviation::<T, S>(simd, x, hi, lo), r);
        T::mul_add_vectors(simd, x_hat, gain, bias)
    };
    let (x_head, x_tail) = x.map(T::split::<S>).unzip();
    let (gain_head, gain_tail) = affine.gain.map(T::split::<S>).unzip();
    let (bias_head, bias_tail) = affine.bias.map(T::split::<S>).unzip();
    let (out_head, out_tail) = T::split_mut::<S>(out);
    for k in 0..out_head.len() {
        let x = x_head.map_or(out_head[k], |x| x[k]);
        let gain = gain_head.map_or(one, |gain| gain[k]);
        let bias = bias_head.map_or(zero, |bias| bias[k]);
        out_head[k] = normalize(x, gain, bias);
    }
    if !out_tail.is_empty() {
        let x = T::load_partial(simd, x_tail.unwrap_or(out_tail));
        let gain = gain_tail.map_or(one, |gain| T::load_partial(simd, gain));
        let bias = bias_tail.map_or(zero, |bias| T::load_partial(simd, bias));
        T::store_partial(simd, out_tail, normalize(x, gain, bias));
    }
}

/// Compensated per-feature sums of one block's parameter gradients, in the data type.
struct GradSums<'a, T> {
    gain: Option<(&'a mut [T], &'a mut [T])>,
    bias: Option<(&'a mut [T], &'a mut [T])>,
}

/// Loads a compensated pair, applies `update`, stores it back.
#[inline(always)]
fn update_pair<T: SimdFloat, S: Simd>(
    sum: &mut T::Vector<S>,
    error: &mut T::Vector<S>,
    update: impl FnOnce(&mut Compensated<T::Vector<S>>),
) {
    let mut pair = Compensated {
        sum: *sum,
        error: *error,
    };
    update(&mut pair);
    *sum = pair.sum;
    *error = pair.error;
}

/// As `update_pair`, for the partial last vector of a row.
#[inline(always)]
fn update_pair_tail<T: SimdFloat, S: Simd>(
    simd: S,
    sum: &mut [T],
    error: &mut [T],
    update: impl FnOnce(&mut Compensated<T::Vector<S>>),
) {
    let mut pair = Compensated {
        sum: T::load_partial(simd, sum),
        error: T::load_partial(simd, error),
    };
    update(&mut pair);
    T::store_partial(simd, sum, pair.sum);
    T::store_partial(simd, error, pair.error);
}

/// One row of the backward pass: `dx = r·g − r·mean(g) − r·mean(g⊙x̂)·x̂` and, when asked,
/// `dyᵢ·x̂ᵢ` and `dyᵢ` added into the block's compensated sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_row<T: SimdFloat, S: Simd>(
    simd: S,
    x: &[T],
    dy: &[T],
    stats: RowStats<T>,
    gain: Option<&[T]>,
    dx: &mut [T],
    sums: &mut GradSums<'_, T>,
) {
    let n = x.len() as f64;
    let (hi, lo, r) = (
        T::splat(simd, stats.hi),
        T::splat(simd, stats.lo),
        T::splat(simd, stats.r),
    );
    let x_hat_of = |x| T::mul_vectors(simd, deviation::<T, S>(simd, x, hi, lo), r);
    let g_of =
        |gain: Option<T::Vector<S>>, dy| gain.map_or(dy, |gain| T::mul_vectors(simd, gain, dy));
    let (x_head, x_tail) = T::split::<S>(x);
    let (dy_head, dy_tail) = T::split::<S>(dy);
    let (gain_head, gain_tail) = gain.map(T::split::<S>).unzip();

    // Pass A: Σ g and Σ g·x̂, several accumulators wide.
    let zero = T::splat(simd, T::zero());
    let mut sum_g = [zero; ACCUMULATORS];
    let mut sum_g_x_hat = [zero; ACCUMULATORS];
    let full = x_head.len() - x_head.len() % ACCUMULATORS;
    for start in (0..full).step_by(ACCUMULATORS) {
        for a in 0..ACCUMULATORS {
            let k = start + a;
            let g = g_of(gain_head.map(|gain| gain[k]), dy_head[k]);
            sum_g[a] = T::add_vectors(simd, sum_g[a], g);
            sum_g_x_hat[a] = T::mul_add_vectors(simd, g, x_hat_of(x_head[k]), sum_g_x_hat[a]);
        }
    }
    for k in full..x_head.len() {
        let g = g_of(gain_head.map(|gain| gain[k]), dy_head[k]);
        sum_g[0] = T::add_vectors(simd, sum_g[0], g);
        sum_g_x_hat[0] = T::mul_add_vectors(simd, g, x_hat_of(x_head[k]), sum_g_x_hat[0]);
    }
    let (mut tail_g, mut tail_g_x_hat) = (0.0, 0.0);
    for (i, (x, dy)) in x_tail.iter().zip(dy_tail).enumerate() {
        let g = gain_tail.map_or(1.0, |gain| gain[i].to_stat()) * dy.to_stat();
        tail_g += g;
        tail_g_x_hat += g * (x.to_stat() - stats.mean) * stats.inv_std;
    }
    let mean_g = (plain_total::<T, S>(&sum_g) + tail_g) / n;
    let mean_g_x_hat = (plain_total::<T, S>(&sum_g_x_hat) + tail_g_x_hat) / n;

    // Pass B: dx = r · ((g − mean(g)) − x̂ · mean(g⊙x̂)), and the parameter-gradient sums.
    // Subtracting mean(g) first makes dx exactly 0 where g equals its mean (one-element rows).
    let mean_g = T::splat(simd, T::from_stat(mean_g));
    let neg_mean_g_x_hat = T::splat(simd, T::from_stat(-mean_g_x_hat));
    // r = r_hi + r_lo to about twice the data type's precision: the last multiplication by r
    // then rounds once instead of twice.
    let r_lo = T::splat(simd, T::from_stat(stats.inv_std - stats.r.to_stat()));
    let dx_of = |g, x_hat| {
        let centered = T::sub_vectors(simd, g, mean_g);
        let inner = T::mul_add_vectors(simd, neg_mean_g_x_hat, x_hat, centered);
        T::mul_add_vectors(simd, r, inner, T::mul_vectors(simd, r_lo, inner))
    };
    let (dx_head, dx_tail) = T::split_mut::<S>(dx);
    let mut gain_sums = sums.gain.as_mut().map(|(sum, error)| {
        let (sum_head, sum_tail) = T::split_mut::<S>(sum);
        let (error_head, error_tail) = T::split_mut::<S>(error);
        (sum_head, error_head, sum_tail, error_tail)
    });
    let mut bias_sums = sums.bias.as_mut().map(|(sum, error)| {
        let (sum_head, sum_tail) = T::split_mut::<S>(sum);
        let (error_head, error_tail) = T::split_mut::<S>(error);
        (sum_head, error_head, sum_tail, error_tail)
    });
    for k in 0..dx_head.len() {
        let x_hat = x_hat_of(x_head[k]);
        let dy = dy_head[k];
        dx_head[k] = dx_of(g_of(gain_head.map(|gain| gain[k]), dy), x_hat);
        if let Some((sum, error, _, _)) = gain_sums.as_mut() {
            update_pair::<T, S>(&mut sum[k], &mut error[k], |pair| {
                pair.add_product::<T, S>(simd, dy, x_hat)
            });
        }
        if let Some((sum, error, _, _)) = bias_sums.as_mut() {
            update_pair::<T, S>(&mut sum[k], &mut error[k], |pair| {
                pair.add::<T, S>(simd, dy)
            });
        }
    }
    if !dx_tail.is_empty() {
        let x_hat = x_hat_of(T::load_partial(simd, x_tail));
        let dy = T::load_partial(simd, dy_tail);
        let gain = gain_tail.map(|gain| T::load_partial(simd, gain));
        T::store_partial(simd, dx_tail, dx_of(g_of(gain, dy), x_hat));
        if let Some((_, _, sum, error)) = gain_sums.as_mut() {
            update_pair_tail::<T, S>(simd, sum, error, |pair| {
                pair.add_product::<T, S>(simd, dy, x_hat)
            });
        }
        if let Some((_, _, sum, error)) = bias_sums.as_mut() {
            update_pair_tail::<T, S>(simd, sum, error, |pair| pair.add::<T, S>(simd, dy));
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
    affine: Affine<'a, T>,
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
            affine,
            eps,
            mut stats,
        } = self;
        if S::IS_SCALAR {
            return scalar::forward_rows(x, out, dim, affine, eps, stats);
        }
        for (row, out_row) in out.chunks_exact_mut(dim).enumerate() {
            let x_row = x.map(|x| &x[row * dim..(row + 1) * dim]);
            match row_stats::<T, S>(simd, x_row.unwrap_or(out_row), eps) {
                Some(row_stats) => {
                    if let Some(stats) = stats.as_mut() {
                        stats.mean[row] = row_stats.mean;
                        stats.inv_std[row] = row_stats.inv_std;
                    }
                    normalize_row::<T, S>(simd, x_row, out_row, row_stats, affine);
                }
                None => {
                    let row_stats_out = stats.as_mut().map(|stats| RowStatsOut {
                        mean: &mut stats.mean[row..row + 1],
                        inv_std: &mut stats.inv_std[row..row + 1],
                    });
                    scalar::forward_rows(x_row, out_row, dim, affine, eps, row_stats_out);
                }
            }
        }
    }
}

/// Forward pass over whole rows on the best instruction set of this CPU; see
/// `scalar::forward_rows`.
pub(crate) fn forward_rows<T: SimdFloat>(
    x: Option<&[T]>,
    out: &mut [T],
    dim: usize,
    affine: Affine<'_, T>,
    eps: f64,
    stats: Option<RowStatsOut<'_, f64>>,
) {
    forward_rows_on(pulp::Arch::new(), x, out, dim, affine, eps, stats);
}

/// `forward_rows` on the given instruction set.
pub(crate) fn forward_rows_on<T: SimdFloat>(
    arch: pulp::Arch,
    x: Option<&[T]>,
    out: &mut [T],
    dim: usize,
    affine: Affine<'_, T>,
    eps: f64,
    stats: Option<RowStatsOut<'_, f64>>,
) {
    arch.dispatch(Forward {
        x,
        out,
        dim,
        affine,
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
        let Backward {
            rows,
            dx,
            mut partial_gain,
            mut partial_bias,
            scratch,
        } = self;
        if S::IS_SCALAR {
            return scalar::backward_rows(rows, dx, partial_gain, partial_bias);
        }
        let dim = rows.dim;
        scratch.clear();
        scratch.resize(4 * dim, T::zero());
        let (gain_sums, bias_sums) = scratch.split_at_mut(2 * dim);
        let mut sums = GradSums {
            gain: partial_gain.is_some().then(|| gain_sums.split_at_mut(dim)),
            bias: partial_bias.is_some().then(|| bias_sums.split_at_mut(dim)),
        };
        let n = dim as f64;
        for (row, dx_row) in dx.chunks_exact_mut(dim).enumerate() {
            let (mean, inv_std) = (rows.means[row], rows.inv_stds[row]);
            if backward_fast_path_is_safe::<T>(mean, inv_std, n, rows.eps) {
                backward_row::<T, S>(
                    simd,
                    &rows.x[row * dim..(row + 1) * dim],
                    &rows.dy[row * dim..(row + 1) * dim],
                    RowStats::from_f64(mean, inv_std),
                    rows.gain,
                    dx_row,
                    &mut sums,
                );
            } else {
                scalar::backward_rows(
                    rows.rows_range(row, row + 1),
                    dx_row,
                    partial_gain.as_deref_mut(),
                    partial_bias.as_deref_mut(),
                );
            }
        }
        for (partial, sums) in [(partial_gain, sums.gain), (partial_bias, sums.bias)] {
            if let (Some(partial), Some((sum, error))) = (partial, sums) {
                for ((total, sum), error) in partial.iter_mut().zip(sum.iter()).zip(error.iter()) {
                    *total += sum.to_stat() + error.to_stat();
                }
            }
        }
    }
}

/// Backward pass over whole rows on the best instruction set of this CPU; see
/// `scalar::backward_rows`. `scratch` holds the block's compensated sums between calls.
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
