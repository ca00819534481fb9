//! The executable specification: plain loops that can be checked against the formulas by eye.
//!
//! Every quantity is computed in the statistics type `S = A::Stat` (`f64` for `f32` data) and
//! rounded to the storage type once, at the end. Sums are pairwise, so their rounding error grows
//! with log₂(n), not n.
//!
//! ```text
//! μ  = (1/n) Σᵢ xᵢ                 σ² = (1/n) Σᵢ (xᵢ − μ)²        r = 1 / √(σ² + ε)
//! x̂ᵢ = (xᵢ − μ) · r                yᵢ = gainᵢ · x̂ᵢ + biasᵢ
//! gᵢ = gainᵢ · dyᵢ                 dxᵢ = r · (gᵢ − mean(g) − x̂ᵢ · mean(g ⊙ x̂))
//! dgainᵢ += dyᵢ · x̂ᵢ               dbiasᵢ += dyᵢ
//! ```
//!
//! Uncentered rows (RmsNorm) take μ = 0 and drop the mean(g) term: σ² = mean(x²),
//! dxᵢ = r · (gᵢ − x̂ᵢ · mean(g ⊙ x̂)). The fused residual form adds `dsum` to `dx`.

use super::{add_into, BackwardJob, ForwardRows, Layer};
use crate::element::Element;
use num_traits::{Float, FromPrimitive, One, Zero};

/// Below this many terms a sum is a plain loop; above, it is split in halves.
const PAIRWISE_LEAF: usize = 16;

/// `Σ term(i)` for `i` in `start..end`, summed pairwise.
fn pairwise_sum<S: Float>(start: usize, end: usize, term: &impl Fn(usize) -> S) -> S {
    if end - start <= PAIRWISE_LEAF {
        (start..end).fold(S::zero(), |sum, i| sum + term(i))
    } else {
        let middle = start + (end - start) / 2;
        pairwise_sum(start, middle, term) + pairwise_sum(middle, end, term)
    }
}

fn len_as<S: FromPrimitive>(n: usize) -> S {
    S::from_usize(n).expect("a row length is representable in a float type")
}

/// A power of two that brings any finite value far enough below the type's maximum that `n`
/// squares of it (for any `n < 2³²`) still sum to a finite number: `2⁻¹⁶ / √max`, rounded to a
/// power of two so that scaling by it is exact.
fn huge_row_scale<S: Float>() -> S {
    let two = S::one() + S::one();
    two.powi(-(S::max_value().log2().to_i32().unwrap_or(1) / 2 + 17))
}

/// Mean and inverse standard deviation of one row, in two passes. A row of finite values whose
/// sum or squares overflow (possible for f64 data beyond ~1e154) is computed scaled by
/// [`huge_row_scale`] and the results scaled back, so it is never silently flattened.
pub(crate) fn row_stats<A: Element>(row: &[A], eps: A::Stat, centered: bool) -> (A::Stat, A::Stat) {
    let n = len_as::<A::Stat>(row.len());
    let stats_scaled = |scale: A::Stat| {
        let mean = if centered {
            pairwise_sum(0, row.len(), &|i| row[i].to_stat() * scale) / n
        } else {
            A::Stat::zero()
        };
        let variance = pairwise_sum(0, row.len(), &|i| {
            let deviation = row[i].to_stat() * scale - mean;
            deviation * deviation
        }) / n;
        (mean, variance)
    };
    let (mean, variance) = stats_scaled(A::Stat::one());
    if !(mean.is_finite() && variance.is_finite()) && row.iter().all(|x| x.to_stat().is_finite()) {
        let scale = huge_row_scale::<A::Stat>();
        let (mean, variance) = stats_scaled(scale);
        // r = 1/√(σ² + ε) with σ² = variance/scale²: ε·scale² is far below variance here.
        return (
            mean / scale,
            scale / (variance + eps * scale * scale).sqrt(),
        );
    }
    (mean, (variance + eps).sqrt().recip())
}

/// `x̂ = (x − mean) · inv_std`. For rows whose spread is near the type's maximum (inv_std
/// tiny), `x − mean` could overflow, so it is formed scaled down by a power of two.
fn normalized<S: Float>(x: S, mean: S, inv_std: S) -> S {
    if inv_std >= S::max_value().sqrt().recip() {
        (x - mean) * inv_std
    } else {
        let scale = huge_row_scale::<S>();
        (x * scale - mean * scale) * (inv_std / scale)
    }
}

/// `yᵢ = gainᵢ · (xᵢ − mean) · inv_std + biasᵢ` for one row; `x` is `None` when `out` holds x.
fn normalize_row<A: Element>(
    x: Option<&[A]>,
    out: &mut [A],
    mean: A::Stat,
    inv_std: A::Stat,
    layer: Layer<'_, A>,
) {
    for i in 0..out.len() {
        let value = x.map_or(out[i], |x| x[i]);
        let mut y = normalized(value.to_stat(), mean, inv_std);
        if let Some(gain) = layer.gain {
            y = y * gain[i].into();
        }
        if let Some(bias) = layer.bias {
            y = y + bias[i].into();
        }
        out[i] = A::from_stat(y);
    }
}

/// Forward pass over whole rows: each row of `x` (of `out` itself when `x` is `None`)
/// normalized into `out`, its mean and inv_std stored in `stats` when given.
pub(crate) fn forward_rows<A: Element>(job: ForwardRows<'_, A>) {
    let (layer, x, mut stats) = (job.layer, job.x, job.stats);
    let dim = layer.dim;
    for (row_index, out_row) in job.out.chunks_exact_mut(dim).enumerate() {
        let x_row = x.map(|x| &x[row_index * dim..(row_index + 1) * dim]);
        let (mean, inv_std) = row_stats(x_row.unwrap_or(out_row), layer.eps, layer.centered);
        if let Some(stats) = stats.as_mut() {
            stats.mean[row_index] = mean;
            stats.inv_std[row_index] = inv_std;
        }
        normalize_row(x_row, out_row, mean, inv_std, layer);
    }
}

/// Backward pass over whole rows: writes `dx` (plus `dsum` when given) and, row by row in
/// order, adds each row's `dyᵢ · x̂ᵢ` into the gain sums and `dyᵢ` into the bias sums when they
/// are wanted.
pub(crate) fn backward_rows<A: Element>(job: BackwardJob<'_, A>) {
    let (rows, out) = (job.rows, job.out);
    let (dsum, mut dgain, mut dbias) = (out.dsum, out.sums.gain, out.sums.bias);
    let dim = rows.layer.dim;
    let n = len_as::<A::Stat>(dim);
    for (row_index, dx_row) in out.dx.chunks_exact_mut(dim).enumerate() {
        let range = row_index * dim..(row_index + 1) * dim;
        let (x_row, dy_row) = (&rows.x[range.clone()], &rows.dy[range.clone()]);
        let (mean, inv_std) = (rows.means[row_index], rows.inv_stds[row_index]);
        let x_hat = |i: usize| normalized(x_row[i].to_stat(), mean, inv_std);
        let g = |i: usize| match rows.layer.gain {
            Some(gain) => gain[i].into() * dy_row[i].to_stat(),
            None => dy_row[i].to_stat(),
        };
        let mean_g = if rows.layer.centered {
            pairwise_sum(0, dim, &g) / n
        } else {
            A::Stat::zero()
        };
        let mean_g_x_hat = pairwise_sum(0, dim, &|i| g(i) * x_hat(i)) / n;
        for (i, dx) in dx_row.iter_mut().enumerate() {
            *dx = A::from_stat(inv_std * (g(i) - mean_g - x_hat(i) * mean_g_x_hat));
        }
        if let Some(dsum) = dsum {
            add_into(dx_row, &dsum[range]);
        }
        if let Some(dgain) = dgain.as_deref_mut() {
            for (i, sum) in dgain.iter_mut().enumerate() {
                *sum = *sum + dy_row[i].to_stat() * x_hat(i);
            }
        }
        if let Some(dbias) = dbias.as_deref_mut() {
            for (sum, dy) in dbias.iter_mut().zip(dy_row) {
                *sum = *sum + dy.to_stat();
            }
        }
    }
}
