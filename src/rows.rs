//! From whole buffers of rows to kernel calls: serial, or split across rayon's threads.
//!
//! Buffers here are contiguous row-major slices holding whole rows of `dim` elements; the
//! ndarray side (layouts, shapes, validation) is `layer_norm.rs`'s job.
//!
//! Thread-count independence: every row is computed by the same kernel whatever the split, so
//! `y` and `dx` never depend on it. Parameter gradients are sums over rows; they are formed per
//! block of [`GRAD_BLOCK_ROWS`] consecutive rows (each block summed in row order from zero) and
//! the block sums are added to the total in block order. Serial and parallel runs therefore
//! perform the same additions in the same order and agree bit for bit.

use crate::element::Element;
use crate::kernels::{self, BackwardRows, Params, RowStatsOut};
use num_traits::Zero;

/// Rows per block of the parameter-gradient reduction. Part of the numerical result: changing
/// it changes the rounding of `dgain` and `dbias` (never which threads see which block).
pub(crate) const GRAD_BLOCK_ROWS: usize = 64;

/// Below this many elements all work stays on the calling thread.
#[cfg(feature = "rayon")]
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Rows handed to one parallel task: about this many elements, at least one row.
#[cfg(feature = "rayon")]
const TASK_ELEMENTS: usize = 1 << 16;

#[cfg(feature = "rayon")]
fn worth_splitting(elements: usize) -> bool {
    elements >= PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1
}

/// Running totals of the parameter gradients, in the statistics type.
pub(crate) struct GradTotals<'a, S> {
    pub(crate) gain: Option<&'a mut [S]>,
    pub(crate) bias: Option<&'a mut [S]>,
}

impl<S> GradTotals<'_, S> {
    fn is_empty(&self) -> bool {
        self.gain.is_none() && self.bias.is_none()
    }
}

/// Forward over all rows; see [`kernels::forward_rows`] for the arguments.
pub(crate) fn forward<A: Element>(
    x: Option<&[A]>,
    out: &mut [A],
    dim: usize,
    params: Params<'_, A>,
    eps: A::Stat,
    stats: Option<RowStatsOut<'_, A::Stat>>,
) {
    #[cfg(feature = "rayon")]
    if worth_splitting(out.len()) {
        let rows_per_task = (TASK_ELEMENTS / dim).max(1);
        return forward_split(x, out, dim, params, eps, stats, rows_per_task);
    }
    kernels::forward_rows(x, out, dim, params, eps, stats);
}

#[cfg(feature = "rayon")]
fn forward_split<A: Element>(
    x: Option<&[A]>,
    out: &mut [A],
    dim: usize,
    params: Params<'_, A>,
    eps: A::Stat,
    stats: Option<RowStatsOut<'_, A::Stat>>,
    rows_per_task: usize,
) {
    let rows = out.len() / dim;
    if rows <= rows_per_task {
        return kernels::forward_rows(x, out, dim, params, eps, stats);
    }
    let half = rows / 2;
    let (x_left, x_right) = match x {
        Some(x) => {
            let (left, right) = x.split_at(half * dim);
            (Some(left), Some(right))
        }
        None => (None, None),
    };
    let (out_left, out_right) = out.split_at_mut(half * dim);
    let (stats_left, stats_right) = match stats {
        Some(RowStatsOut { mean, inv_std }) => {
            let (mean_left, mean_right) = mean.split_at_mut(half);
            let (inv_std_left, inv_std_right) = inv_std.split_at_mut(half);
            (
                Some(RowStatsOut {
                    mean: mean_left,
                    inv_std: inv_std_left,
                }),
                Some(RowStatsOut {
                    mean: mean_right,
                    inv_std: inv_std_right,
                }),
            )
        }
        None => (None, None),
    };
    rayon::join(
        || {
            forward_split(
                x_left,
                out_left,
                dim,
                params,
                eps,
                stats_left,
                rows_per_task,
            )
        },
        || {
            forward_split(
                x_right,
                out_right,
                dim,
                params,
                eps,
                stats_right,
                rows_per_task,
            )
        },
    );
}

/// Elements per chunk of the fused residual forward: a chunk's sums are written and then
/// normalized while they are still in cache.
const RESIDUAL_CHUNK_ELEMENTS: usize = 1 << 15;

/// `sum = x + residual` and `out` normalized from `sum`, chunk by chunk, so that the sums are
/// read back from cache: memory sees x and residual read once and sum and out written once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_residual<A: Element>(
    x: &[A],
    residual: &[A],
    sum: &mut [A],
    out: &mut [A],
    dim: usize,
    params: Params<'_, A>,
    eps: A::Stat,
    stats: RowStatsOut<'_, A::Stat>,
) {
    let chunk_rows = (RESIDUAL_CHUNK_ELEMENTS / dim).max(1);
    let chunk = chunk_rows * dim;
    type Chunk<'c, A, S> = (
        (((&'c mut [A], &'c mut [A]), &'c [A]), &'c [A]),
        (&'c mut [S], &'c mut [S]),
    );
    let work = |((((out, sum), x), residual), (mean, inv_std)): Chunk<'_, A, A::Stat>| {
        for ((sum, &x), &residual) in sum.iter_mut().zip(x).zip(residual) {
            *sum = x + residual;
        }
        let stats = RowStatsOut { mean, inv_std };
        kernels::forward_rows(Some(&*sum), out, dim, params, eps, Some(stats));
    };
    #[cfg(feature = "rayon")]
    if worth_splitting(out.len()) {
        use rayon::prelude::*;
        return out
            .par_chunks_mut(chunk)
            .zip(sum.par_chunks_mut(chunk))
            .zip(x.par_chunks(chunk))
            .zip(residual.par_chunks(chunk))
            .zip(
                stats
                    .mean
                    .par_chunks_mut(chunk_rows)
                    .zip(stats.inv_std.par_chunks_mut(chunk_rows)),
            )
            .for_each(work);
    }
    out.chunks_mut(chunk)
        .zip(sum.chunks_mut(chunk))
        .zip(x.chunks(chunk))
        .zip(residual.chunks(chunk))
        .zip(
            stats
                .mean
                .chunks_mut(chunk_rows)
                .zip(stats.inv_std.chunks_mut(chunk_rows)),
        )
        .for_each(work);
}

/// Backward over all rows: writes `dx` (plus `dsum`, a gradient reaching the normalized input
/// by another path, when given) and adds the parameter gradients into `totals`.
pub(crate) fn backward<A: Element>(
    inputs: BackwardRows<'_, A>,
    dx: &mut [A],
    totals: GradTotals<'_, A::Stat>,
    dsum: Option<&[A]>,
) {
    #[cfg(feature = "rayon")]
    if worth_splitting(dx.len()) {
        return backward_parallel(inputs, dx, totals, dsum);
    }
    let mut scratch = Vec::new();
    if totals.is_empty() && dsum.is_none() {
        return kernels::backward_rows(inputs, dx, None, None, &mut scratch);
    }
    let dim = inputs.dim;
    let mut block_gain = totals.gain.as_ref().map(|_| vec![A::Stat::zero(); dim]);
    let mut block_bias = totals.bias.as_ref().map(|_| vec![A::Stat::zero(); dim]);
    let GradTotals {
        gain: mut total_gain,
        bias: mut total_bias,
    } = totals;
    let rows = inputs.rows();
    for start in (0..rows).step_by(GRAD_BLOCK_ROWS) {
        let end = (start + GRAD_BLOCK_ROWS).min(rows);
        let block = inputs.rows_range(start, end);
        block_partial(
            block,
            &mut dx[start * dim..end * dim],
            block_gain.as_deref_mut(),
            block_bias.as_deref_mut(),
            &mut scratch,
            dsum.map(|dsum| &dsum[start * dim..end * dim]),
        );
        add_into(total_gain.as_deref_mut(), block_gain.as_deref());
        add_into(total_bias.as_deref_mut(), block_bias.as_deref());
    }
}

/// One block's contribution: `dx` for its rows, and its parameter-gradient sums from zero.
fn block_partial<A: Element>(
    block: BackwardRows<'_, A>,
    dx: &mut [A],
    mut partial_gain: Option<&mut [A::Stat]>,
    mut partial_bias: Option<&mut [A::Stat]>,
    scratch: &mut Vec<A>,
    dsum: Option<&[A]>,
) {
    for partial in [partial_gain.as_deref_mut(), partial_bias.as_deref_mut()]
        .into_iter()
        .flatten()
    {
        partial.fill(A::Stat::zero());
    }
    kernels::backward_rows(block, dx, partial_gain, partial_bias, scratch);
    if let Some(dsum) = dsum {
        add_assign(dx, dsum);
    }
}

/// `target += values`, element by element (the block is still in cache).
pub(crate) fn add_assign<A: Element>(target: &mut [A], values: &[A]) {
    for (target, &value) in target.iter_mut().zip(values) {
        *target = *target + value;
    }
}

fn add_into<S: Copy + std::ops::Add<Output = S>>(total: Option<&mut [S]>, part: Option<&[S]>) {
    if let (Some(total), Some(part)) = (total, part) {
        for (sum, &value) in total.iter_mut().zip(part) {
            *sum = *sum + value;
        }
    }
}

#[cfg(feature = "rayon")]
fn backward_parallel<A: Element>(
    inputs: BackwardRows<'_, A>,
    dx: &mut [A],
    totals: GradTotals<'_, A::Stat>,
    dsum: Option<&[A]>,
) {
    let dim = inputs.dim;
    let blocks = inputs.rows().div_ceil(GRAD_BLOCK_ROWS);
    let mut partial_gain = totals
        .gain
        .as_ref()
        .map(|_| vec![A::Stat::zero(); blocks * dim]);
    let mut partial_bias = totals
        .bias
        .as_ref()
        .map(|_| vec![A::Stat::zero(); blocks * dim]);
    let blocks_per_task = (TASK_ELEMENTS / (dim * GRAD_BLOCK_ROWS)).max(1);
    backward_split(
        inputs,
        dx,
        partial_gain.as_deref_mut(),
        partial_bias.as_deref_mut(),
        dsum,
        blocks_per_task,
    );
    let GradTotals {
        gain: mut total_gain,
        bias: mut total_bias,
    } = totals;
    for block in 0..blocks {
        let range = block * dim..(block + 1) * dim;
        add_into(
            total_gain.as_deref_mut(),
            partial_gain.as_ref().map(|p| &p[range.clone()]),
        );
        add_into(
            total_bias.as_deref_mut(),
            partial_bias.as_ref().map(|p| &p[range]),
        );
    }
}

/// Splits whole blocks across threads; each block writes its own slot of the partial buffers.
#[cfg(feature = "rayon")]
fn backward_split<A: Element>(
    inputs: BackwardRows<'_, A>,
    dx: &mut [A],
    partial_gain: Option<&mut [A::Stat]>,
    partial_bias: Option<&mut [A::Stat]>,
    dsum: Option<&[A]>,
    blocks_per_task: usize,
) {
    let dim = inputs.dim;
    let rows = inputs.rows();
    let blocks = rows.div_ceil(GRAD_BLOCK_ROWS);
    if blocks <= blocks_per_task {
        let mut partial_gain = partial_gain;
        let mut partial_bias = partial_bias;
        let mut scratch = Vec::new();
        for block in 0..blocks {
            let start = block * GRAD_BLOCK_ROWS;
            let end = (start + GRAD_BLOCK_ROWS).min(rows);
            let slot = block * dim..(block + 1) * dim;
            block_partial(
                inputs.rows_range(start, end),
                &mut dx[start * dim..end * dim],
                partial_gain.as_deref_mut().map(|p| &mut p[slot.clone()]),
                partial_bias.as_deref_mut().map(|p| &mut p[slot]),
                &mut scratch,
                dsum.map(|dsum| &dsum[start * dim..end * dim]),
            );
        }
        return;
    }
    let half_blocks = blocks / 2;
    let half_rows = half_blocks * GRAD_BLOCK_ROWS;
    let (dx_left, dx_right) = dx.split_at_mut(half_rows * dim);
    let (gain_left, gain_right) = split_option(partial_gain, half_blocks * dim);
    let (bias_left, bias_right) = split_option(partial_bias, half_blocks * dim);
    let left = inputs.rows_range(0, half_rows);
    let right = inputs.rows_range(half_rows, rows);
    let (dsum_left, dsum_right) = match dsum {
        Some(dsum) => {
            let (left, right) = dsum.split_at(half_rows * dim);
            (Some(left), Some(right))
        }
        None => (None, None),
    };
    rayon::join(
        || {
            backward_split(
                left,
                dx_left,
                gain_left,
                bias_left,
                dsum_left,
                blocks_per_task,
            )
        },
        || {
            backward_split(
                right,
                dx_right,
                gain_right,
                bias_right,
                dsum_right,
                blocks_per_task,
            )
        },
    );
}

#[cfg(feature = "rayon")]
fn split_option<T>(slice: Option<&mut [T]>, at: usize) -> (Option<&mut [T]>, Option<&mut [T]>) {
    match slice {
        Some(slice) => {
            let (left, right) = slice.split_at_mut(at);
            (Some(left), Some(right))
        }
        None => (None, None),
    }
}
