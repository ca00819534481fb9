//! The backward pass: per row, pass A sums `Σ g` and `Σ g·(x − hi)`; pass B writes
//! `dx = r · (g − mean(g)) − r·mean(g⊙x̂) · x̂` and adds `dy·x̂`, `dy` into the parameter sums.
//! Pass B of each row is fused with pass A of the next.
//!
//! The body is compiled once per combination of gain and wanted gradients ([`BackwardBody`],
//! const generics), so that no loop tests for any of them.

use super::{Normalizer, RowStats, SimdFloat, FOLD_ROWS};
use crate::kernels::stream::{store, Stores};
use crate::kernels::{add_into, scalar, BackwardJob, BackwardOut, GradSums};
use pulp::{Simd, WithSimd};

/// A backward job and the kernel's working memory (short partial sums in the data type,
/// grown once and reused across calls), dispatched once per call.
pub(crate) struct Backward<'a, T: SimdFloat> {
    pub(crate) job: BackwardJob<'a, T>,
    pub(crate) scratch: &'a mut Vec<T>,
}

impl<T: SimdFloat> WithSimd for Backward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // One body per combination of gain and wanted gradients: no loop tests for them.
        let sums = &self.job.out.sums;
        with_flags!(
            [
                self.job.rows.layer.gain.is_some(),
                sums.gain.is_some(),
                sums.bias.is_some()
            ],
            |V| backward_all::<T, S, V>(simd, self)
        )
    }
}

flags_trait!(
    /// Which body of the backward pass runs: with or without gain, with or without each parameter
    /// gradient, fixed at compile time.
    BackwardBody: HAS_GAIN, GAIN_GRAD, BIAS_GRAD
);

/// The backward pass over all rows: pass B of each fast row fused with pass A of the next;
/// rows the fast path cannot do exactly go to the scalar specification (their `dyᵢ` still
/// reaches `dbias` through the same sums as every other row's, so `dbias` never depends on x).
#[inline(always)]
fn backward_all<T: SimdFloat, S: Simd, V: BackwardBody>(simd: S, backward: Backward<'_, T>) {
    let (rows, out, scratch) = (backward.job.rows, backward.job.out, backward.scratch);
    let (dx, dsum) = (out.dx, out.dsum);
    let (mut partial_gain, mut partial_bias) = (out.sums.gain, out.sums.bias);
    let layer = rows.layer;
    let dim = layer.dim;
    scratch.clear();
    scratch.resize(2 * dim, T::zero());
    let (gain_sums, bias_sums) = scratch.split_at_mut(dim);
    let n = dim as f64;
    let (gain_head, gain_tail) = layer.gain.map_or((&[][..], &[][..]), T::split::<S>);
    let fast_row = |row: usize| -> Option<GradRow<'_, T, S>> {
        let (mean, inv_std) = (rows.means.get(row)?, rows.inv_stds[row]);
        backward_fast_path_is_safe::<T>(*mean, inv_std, n, layer.eps).then(|| {
            let range = row * dim..(row + 1) * dim;
            GradRow::new(
                &rows.x[range.clone()],
                &rows.dy[range],
                RowStats::from_f64(*mean, inv_std),
                layer.centered,
            )
        })
    };
    // Gain-gradient terms of this group's fallback rows, in f64 (allocated at the first such
    // row: never for ordinary data), added to the group's sum when it is folded.
    let mut fallback_gain: Option<Vec<f64>> = None;
    let mut pending: Option<RowSums> = None;
    for (row, dx_row) in dx.chunks_exact_mut(dim).enumerate() {
        match fast_row(row) {
            Some(current) => {
                let sums = match pending.take() {
                    Some(sums) => sums,
                    None => grad_sums::<T, S, V>(simd, current, (gain_head, gain_tail)),
                };
                pending = backward_row::<T, S, V>(
                    simd,
                    current,
                    sums,
                    fast_row(row + 1),
                    layer.gain,
                    RowOut {
                        dx: &mut *dx_row,
                        gain_sums: &mut *gain_sums,
                        bias_sums: &mut *bias_sums,
                        stores: layer.stores,
                    },
                );
            }
            None => {
                let single = rows.rows_range(row, row + 1);
                let gain = partial_gain.is_some().then(|| {
                    fallback_gain
                        .get_or_insert_with(|| vec![0.0; dim])
                        .as_mut_slice()
                });
                scalar::backward_rows(BackwardJob {
                    rows: single,
                    out: BackwardOut {
                        dx: dx_row,
                        dsum: None,
                        sums: GradSums { gain, bias: None },
                    },
                });
                if V::BIAS_GRAD {
                    add_into(bias_sums, single.dy);
                }
            }
        }
        if let Some(dsum) = dsum {
            add_into(dx_row, &dsum[row * dim..(row + 1) * dim]);
        }
        if (row + 1) % FOLD_ROWS == 0 {
            fold_into(
                partial_gain.as_deref_mut(),
                gain_sums,
                fallback_gain.as_deref_mut(),
            );
            fold_into(partial_bias.as_deref_mut(), bias_sums, None);
        }
    }
    fold_into(partial_gain, gain_sums, fallback_gain.as_deref_mut());
    fold_into(partial_bias, bias_sums, None);
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

/// The reductions of a row's backward pass: `Σ g` and `Σ g·(x − hi)`, in the fixed summation
/// order of `sum_and_dot!`.
#[derive(Clone, Copy)]
struct RowSums {
    sum_g: f64,
    sum_g_deviation: f64,
}

/// Pass A of one row alone: its [`RowSums`].
#[inline(always)]
fn grad_sums<T: SimdFloat, S: Simd, V: BackwardBody>(
    simd: S,
    row: GradRow<'_, T, S>,
    (gain, gain_tail): (&[T::Vector<S>], &[T]),
) -> RowSums {
    let hi = T::splat(simd, row.stats.hi);
    let (sum_g, sum_g_deviation) = sum_and_dot!(T, simd, row.x.len(), |k| {
        let g = if V::HAS_GAIN {
            T::mul_vectors(simd, gain[k], row.dy[k])
        } else {
            row.dy[k]
        };
        (g, g, T::sub_vectors(simd, row.x[k], hi))
    }, tail: row.x_tail.len() => tail_terms::<T, S, V>(simd, &row, gain_tail, hi));
    RowSums {
        sum_g,
        sum_g_deviation,
    }
}

/// Pass A's terms for a row's last, partial vector: `(g, g, x − hi)`, as for full vectors.
#[inline(always)]
fn tail_terms<T: SimdFloat, S: Simd, V: BackwardBody>(
    simd: S,
    row: &GradRow<'_, T, S>,
    gain_tail: &[T],
    hi: T::Vector<S>,
) -> (T::Vector<S>, T::Vector<S>, T::Vector<S>) {
    let dy = T::load_partial(simd, row.dy_tail);
    let g = if V::HAS_GAIN {
        T::mul_vectors(simd, T::load_partial(simd, gain_tail), dy)
    } else {
        dy
    };
    (
        g,
        g,
        T::sub_vectors(simd, T::load_partial(simd, row.x_tail), hi),
    )
}

/// Per-row constants of pass B: `dx = r · (g − mean(g)) − r·mean(g⊙x̂) · x̂`.
#[derive(Clone, Copy)]
struct InputGrad<V> {
    normalizer: Normalizer<V>,
    mean_g: V,
    neg_r_mean_g_x_hat: V,
}

impl<V: Copy> InputGrad<V> {
    /// From the row's reductions.
    #[inline(always)]
    fn new<T: SimdFloat<Vector<S> = V>, S: Simd>(
        simd: S,
        row: GradRow<'_, T, S>,
        sums: RowSums,
    ) -> Self {
        let stats = row.stats;
        let n = (size_of_val(row.x) / size_of::<T>() + row.x_tail.len()) as f64;
        // Σ g·x̂ = r · (Σ g·(x − hi) − lo · Σ g).
        let g_x_hat = stats.inv_std * (sums.sum_g_deviation - stats.lo.to_stat() * sums.sum_g);
        let mean_g = if row.centered { sums.sum_g / n } else { 0.0 };
        let mean_g_x_hat = g_x_hat / n;
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

/// A row's outputs: `dx`, and the parameter-gradient sums it adds to (data type).
struct RowOut<'a, T> {
    dx: &'a mut [T],
    gain_sums: &'a mut [T],
    bias_sums: &'a mut [T],
    stores: Stores,
}

/// Pass B over a row's full vectors: the gain it reads, the outputs it writes.
struct PassB<'a, V> {
    gain: &'a [V],
    stores: Stores,
    dx: &'a mut [V],
    gain_sums: &'a mut [V],
    bias_sums: &'a mut [V],
}

/// Pass B for vector `k`: `dx[k]`, and `dy·x̂`, `dy` added into the sums that are wanted.
#[inline(always)]
fn grad_at<T: SimdFloat, S: Simd, V: BackwardBody>(
    simd: S,
    k: usize,
    x: T::Vector<S>,
    dy: T::Vector<S>,
    input_grad: &InputGrad<T::Vector<S>>,
    out: &mut PassB<'_, T::Vector<S>>,
) {
    let x_hat = input_grad.normalizer.x_hat::<T, S>(simd, x);
    let g = if V::HAS_GAIN {
        T::mul_vectors(simd, out.gain[k], dy)
    } else {
        dy
    };
    store(
        out.stores,
        &mut out.dx[k],
        input_grad.dx::<T, S>(simd, g, x_hat),
    );
    if V::GAIN_GRAD {
        out.gain_sums[k] = T::mul_add_vectors(simd, dy, x_hat, out.gain_sums[k]);
    }
    if V::BIAS_GRAD {
        out.bias_sums[k] = T::add_vectors(simd, out.bias_sums[k], dy);
    }
}

/// Pass B of a row, fused with pass A of the next one when there is a next fast row (so that
/// reading it overlaps writing this one); returns the next row's [`RowSums`].
#[inline(always)]
fn backward_row<T: SimdFloat, S: Simd, V: BackwardBody>(
    simd: S,
    row: GradRow<'_, T, S>,
    sums: RowSums,
    next: Option<GradRow<'_, T, S>>,
    gain: Option<&[T]>,
    out: RowOut<'_, T>,
) -> Option<RowSums> {
    let RowOut {
        dx,
        gain_sums,
        bias_sums,
        stores,
    } = out;
    let (gain_head, gain_tail) = gain.map_or((&[][..], &[][..]), T::split::<S>);
    let len = row.x.len();
    let gain_head = if V::HAS_GAIN {
        &gain_head[..len]
    } else {
        gain_head
    };
    let input_grad = InputGrad::new::<T, S>(simd, row, sums);
    let (dx_head, dx_tail) = T::split_mut::<S>(dx);
    let (gain_sums_head, gain_sums_tail) = T::split_mut::<S>(gain_sums);
    let (bias_sums_head, bias_sums_tail) = T::split_mut::<S>(bias_sums);
    let mut out = PassB {
        gain: gain_head,
        stores,
        dx: &mut dx_head[..len],
        gain_sums: if V::GAIN_GRAD {
            &mut gain_sums_head[..len]
        } else {
            gain_sums_head
        },
        bias_sums: if V::BIAS_GRAD {
            &mut bias_sums_head[..len]
        } else {
            bias_sums_head
        },
    };
    // Pass B at vector `k`.
    macro_rules! pass_b {
        ($k:expr) => {
            grad_at::<T, S, V>(simd, $k, row.x[$k], row.dy[$k], &input_grad, &mut out)
        };
    }
    let next_sums = match next {
        Some(next) => {
            let (next_x, next_dy) = (&next.x[..len], &next.dy[..len]);
            let next_hi = T::splat(simd, next.stats.hi);
            let (sum_g, sum_g_deviation) = sum_and_dot!(T, simd, len, |k| {
                pass_b!(k);
                let g = if V::HAS_GAIN {
                    T::mul_vectors(simd, gain_head[k], next_dy[k])
                } else {
                    next_dy[k]
                };
                (g, g, T::sub_vectors(simd, next_x[k], next_hi))
            }, tail: next.x_tail.len() => tail_terms::<T, S, V>(simd, &next, gain_tail, next_hi));
            Some(RowSums {
                sum_g,
                sum_g_deviation,
            })
        }
        None => {
            for k in 0..len {
                pass_b!(k);
            }
            None
        }
    };
    if !dx_tail.is_empty() {
        let x_hat = input_grad
            .normalizer
            .x_hat::<T, S>(simd, T::load_partial(simd, row.x_tail));
        let dy = T::load_partial(simd, row.dy_tail);
        let g = if V::HAS_GAIN {
            T::mul_vectors(simd, T::load_partial(simd, gain_tail), dy)
        } else {
            dy
        };
        T::store_partial(simd, dx_tail, input_grad.dx::<T, S>(simd, g, x_hat));
        if V::GAIN_GRAD {
            let sum = T::load_partial(simd, gain_sums_tail);
            T::store_partial(
                simd,
                gain_sums_tail,
                T::mul_add_vectors(simd, dy, x_hat, sum),
            );
        }
        if V::BIAS_GRAD {
            let sum = T::load_partial(simd, bias_sums_tail);
            T::store_partial(simd, bias_sums_tail, T::add_vectors(simd, sum, dy));
        }
    }
    next_sums
}

/// Adds one group's sums into `totals` (f64): `sums` (data type) plus, where the group had
/// fallback rows, their f64 terms in `fallback` (`fallback + sums`, then added to the total);
/// clears both. A group's value is formed from zero, so a job that starts at a group boundary
/// adds the same group values to its totals as a longer job does: the driver may split
/// backward jobs at any multiple of [`FOLD_ROWS`] rows and add the parts' sums in order.
#[inline(always)]
fn fold_into<T: SimdFloat>(
    totals: Option<&mut [f64]>,
    sums: &mut [T],
    fallback: Option<&mut [f64]>,
) {
    let Some(totals) = totals else {
        return;
    };
    match fallback {
        Some(fallback) => {
            for ((total, sum), extra) in totals.iter_mut().zip(sums.iter_mut()).zip(fallback) {
                *total += *extra + sum.to_stat();
                *sum = T::zero();
                *extra = 0.0;
            }
        }
        None => {
            for (total, sum) in totals.iter_mut().zip(sums.iter_mut()) {
                *total += sum.to_stat();
                *sum = T::zero();
            }
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
