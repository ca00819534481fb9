//! The forward pass: statistics of each row (passes 1 and 2), then `y = gain · x̂ + bias`
//! (pass 3), with reading the next row overlapped with writing this one.
//!
//! The body is compiled once per combination of in-place, gain and bias ([`ForwardBody`], const
//! generics), so that no loop tests for any of them.

use super::{
    finish_stats, first_shift, row_stats_from, Normalizer, RowStats, SimdFloat, StatsStep,
};
use crate::kernels::stream::store;
use crate::kernels::{scalar, ForwardRows, Layer, RowStatsOut};
use pulp::{Simd, WithSimd};

/// Rows of at most this many bytes are "short": their statistics are computed in blocks.
const SHORT_ROW_BYTES: usize = 1024;

/// Short rows whose statistics are computed together.
const SHORT_ROW_BLOCK: usize = 16;

impl<T: SimdFloat> WithSimd for ForwardRows<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        with_flags!(
            [
                self.x.is_none(),
                self.layer.gain.is_some(),
                self.layer.bias.is_some()
            ],
            |V| forward_all::<T, S, V>(simd, self)
        )
    }
}

flags_trait!(
    /// Which body of the forward pass runs: out of place or in place, with or without gain and
    /// bias, fixed at compile time.
    ForwardBody: IN_PLACE, HAS_GAIN, HAS_BIAS
);

/// What the pipeline knows of the next row's statistics.
#[derive(Clone, Copy)]
enum Next<T> {
    /// Not computed yet.
    Unknown,
    /// Computed while the previous row was written.
    Known(RowStats<T>),
    /// Only the scalar specification computes this row exactly.
    Fallback,
}

impl<T> Next<T> {
    fn from_stats(stats: Option<RowStats<T>>) -> Self {
        stats.map_or(Next::Fallback, Next::Known)
    }
}

/// The forward pass over all rows of the job.
#[inline(always)]
fn forward_all<T: SimdFloat, S: Simd, V: ForwardBody>(simd: S, job: ForwardRows<'_, T>) {
    let (layer, x, out, mut stats) = (job.layer, job.x, job.out, job.stats);
    let dim = layer.dim;
    let rows = out.len() / dim;
    let centered = layer.centered;
    if dim * size_of::<T>() <= SHORT_ROW_BYTES {
        // Short rows: a row's statistics are a short chain of dependent steps, so those of
        // several rows are computed together (independent chains overlap), then the rows are
        // written. Consecutive short rows are one stream for the hardware prefetcher.
        for first in (0..rows).step_by(SHORT_ROW_BLOCK) {
            let count = SHORT_ROW_BLOCK.min(rows - first);
            let mut block_stats = [None; SHORT_ROW_BLOCK];
            for (offset, slot) in block_stats[..count].iter_mut().enumerate() {
                let range = (first + offset) * dim..(first + offset + 1) * dim;
                *slot =
                    stats_of_row::<T, S>(simd, x.map_or(&out[range.clone()], |x| &x[range]), layer);
            }
            for (offset, row_stats) in block_stats[..count].iter().enumerate() {
                let row = first + offset;
                let range = row * dim..(row + 1) * dim;
                let row_io = (x.map(|x| &x[range.clone()]), &mut out[range]);
                write_row::<T, S, V>(simd, row_io, *row_stats, layer, &mut stats, row);
            }
        }
        return;
    }
    let n = dim as f64;
    // Long rows: each row's statistics are computed while the row before it is written (see
    // `normalize_row_and_sum_next`), so that reading overlaps writing; the first row's by a
    // pass of its own.
    let mut pending = Next::Unknown;
    for row in 0..rows {
        let range = row * dim..(row + 1) * dim;
        let (current, later) = out.split_at_mut(range.end);
        let out_row = &mut current[range.start..];
        let x_row = x.map(|x| &x[range.clone()]);
        let current_stats = match pending {
            Next::Known(row_stats) => Some(row_stats),
            Next::Fallback => None,
            Next::Unknown => stats_of_row::<T, S>(simd, x_row.unwrap_or(out_row), layer),
        };
        pending = Next::Unknown;
        let next: Option<&[T]> = match x {
            Some(x) => x.get(range.end..range.end + dim),
            None => later.get(..dim),
        };
        let shift = next
            .map(|next| first_shift::<T, S>(simd, next, centered))
            .filter(|shift| shift.is_finite());
        // Without statistics for this row, or a next row to overlap with, the row alone.
        let (Some(row_stats_now), Some(next), Some(shift)) = (current_stats, next, shift) else {
            write_row::<T, S, V>(
                simd,
                (x_row, out_row),
                current_stats,
                layer,
                &mut stats,
                row,
            );
            continue;
        };
        record_stats(&mut stats, row, row_stats_now);
        let (sum, sum_of_squares) = normalize_row_and_sum_next::<T, S, V>(
            simd,
            (x_row, out_row),
            row_stats_now,
            layer,
            next,
            shift,
        );
        pending = match finish_stats(shift, sum, sum_of_squares, n, layer.eps, centered) {
            StatsStep::Done(next_stats) => Next::Known(next_stats),
            StatsStep::Refine(better) => Next::from_stats(row_stats_from::<T, S>(
                simd, next, better, layer.eps, centered,
            )),
            StatsStep::Fallback => Next::Fallback,
        };
    }
}

/// A row's statistics by passes of their own, starting from the first estimate of its mean.
#[inline(always)]
fn stats_of_row<T: SimdFloat, S: Simd>(
    simd: S,
    values: &[T],
    layer: Layer<'_, T>,
) -> Option<RowStats<T>> {
    let shift = first_shift::<T, S>(simd, values, layer.centered);
    row_stats_from::<T, S>(simd, values, shift, layer.eps, layer.centered)
}

/// One row's input (`None` in place: the row is read from the output) and output.
type RowIo<'r, T> = (Option<&'r [T]>, &'r mut [T]);

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
fn write_row<T: SimdFloat, S: Simd, V: ForwardBody>(
    simd: S,
    (x_row, out_row): RowIo<'_, T>,
    row_stats: Option<RowStats<T>>,
    layer: Layer<'_, T>,
    stats: &mut Option<RowStatsOut<'_, f64>>,
    row: usize,
) {
    match row_stats {
        Some(row_stats) => {
            record_stats(stats, row, row_stats);
            let normalizer = Normalizer::new::<T, S>(simd, &row_stats);
            let head = RowHead::<T, S>::new::<V>(x_row, out_row, layer);
            for k in 0..head.len {
                let y = head.y::<V>(simd, &normalizer, k);
                store(layer.stores, &mut head.out[k], y);
            }
            head.finish_tail(simd, &normalizer);
        }
        None => {
            let stats = stats.as_mut().map(|stats| RowStatsOut {
                mean: &mut stats.mean[row..row + 1],
                inv_std: &mut stats.inv_std[row..row + 1],
            });
            scalar::forward_rows(ForwardRows {
                layer,
                x: x_row,
                out: out_row,
                stats,
            });
        }
    }
}

/// Pass 3 of one row fused with pass 2 of the next: writes the row's `out = gain · x̂ + bias`
/// while summing the next row's deviations from `next_shift`, so that reading the next row
/// overlaps writing this one. Returns the next row's sums, tail included.
#[inline(always)]
fn normalize_row_and_sum_next<T: SimdFloat, S: Simd, V: ForwardBody>(
    simd: S,
    (x_row, out_row): RowIo<'_, T>,
    row_stats: RowStats<T>,
    layer: Layer<'_, T>,
    next: &[T],
    next_shift: T,
) -> (f64, f64) {
    let normalizer = Normalizer::new::<T, S>(simd, &row_stats);
    let head = RowHead::<T, S>::new::<V>(x_row, out_row, layer);
    let len = head.len;
    let (next_head, next_tail) = T::split::<S>(next);
    let next_head = &next_head[..len];
    let shift = T::splat(simd, next_shift);
    let sums = sum_and_dot!(T, simd, len, |k| {
        let y = head.y::<V>(simd, &normalizer, k);
        store(layer.stores, &mut head.out[k], y);
        let deviation = T::sub_vectors(simd, next_head[k], shift);
        (deviation, deviation, deviation)
    }, tail: next_tail.len() => {
        let deviation = T::sub_vectors(simd, T::load_partial(simd, next_tail), shift);
        (deviation, deviation, deviation)
    });
    head.finish_tail(simd, &normalizer);
    sums
}

/// A row cut into full vectors (all of one length `len`, so that indexing them in the loops
/// needs no bounds checks; empty where the layer has no such input) and a partial tail.
struct RowHead<'r, T: SimdFloat, S: Simd> {
    len: usize,
    x: &'r [T::Vector<S>],
    out: &'r mut [T::Vector<S>],
    gain: &'r [T::Vector<S>],
    bias: &'r [T::Vector<S>],
    x_tail: Option<&'r [T]>,
    out_tail: &'r mut [T],
    gain_tail: Option<&'r [T]>,
    bias_tail: Option<&'r [T]>,
}

impl<'r, T: SimdFloat, S: Simd> RowHead<'r, T, S> {
    #[inline(always)]
    fn new<V: ForwardBody>(x: Option<&'r [T]>, out: &'r mut [T], layer: Layer<'r, T>) -> Self {
        let (out, out_tail) = T::split_mut::<S>(out);
        let len = out.len();
        let head = |values: Option<&'r [T]>, wanted: bool| match values {
            Some(values) if wanted => {
                let (head, tail) = T::split::<S>(values);
                (&head[..len], Some(tail))
            }
            _ => (&[][..], None),
        };
        let (x, x_tail) = head(x, !V::IN_PLACE);
        let (gain, gain_tail) = head(layer.gain, V::HAS_GAIN);
        let (bias, bias_tail) = head(layer.bias, V::HAS_BIAS);
        RowHead {
            len,
            x,
            out,
            gain,
            bias,
            x_tail,
            out_tail,
            gain_tail,
            bias_tail,
        }
    }

    /// `gain · x̂ + bias` for vector `k`, with the parameters the layer has.
    #[inline(always)]
    fn y<V: ForwardBody>(
        &self,
        simd: S,
        normalizer: &Normalizer<T::Vector<S>>,
        k: usize,
    ) -> T::Vector<S> {
        let value = if V::IN_PLACE { self.out[k] } else { self.x[k] };
        let x_hat = normalizer.x_hat::<T, S>(simd, value);
        match (V::HAS_GAIN, V::HAS_BIAS) {
            (true, true) => T::mul_add_vectors(simd, x_hat, self.gain[k], self.bias[k]),
            (true, false) => T::mul_vectors(simd, x_hat, self.gain[k]),
            (false, true) => T::add_vectors(simd, x_hat, self.bias[k]),
            (false, false) => x_hat,
        }
    }

    /// The last, partial vector of the row: `out = gain · x̂ + bias` (one fused multiply-add
    /// with gain 1 and bias 0 where absent, which rounds as the full vectors do).
    #[inline(always)]
    fn finish_tail(self, simd: S, normalizer: &Normalizer<T::Vector<S>>) {
        let out_tail = self.out_tail;
        if out_tail.is_empty() {
            return;
        }
        let x = T::load_partial(simd, self.x_tail.unwrap_or(out_tail));
        let x_hat = normalizer.x_hat::<T, S>(simd, x);
        let gain = self
            .gain_tail
            .map_or(T::splat(simd, T::one()), |g| T::load_partial(simd, g));
        let bias = self
            .bias_tail
            .map_or(T::splat(simd, T::zero()), |b| T::load_partial(simd, b));
        T::store_partial(simd, out_tail, T::mul_add_vectors(simd, x_hat, gain, bias));
    }
}
