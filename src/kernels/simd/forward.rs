//! The forward pass: statistics of each row (passes 1 and 2), then `y = gain · x̂ + bias`
//! (pass 3), with reading the next row overlapped with writing this one.
//!
//! The body is compiled once per combination of in-place, gain and bias ([`ForwardBody`], const
//! generics), so that no loop tests for any of them.

use super::storage::WideVector;
use super::{
    deviation_sums, finish_stats, first_shift, holds_no_nan, row_stats_from, row_stats_within,
    Normalizer, RowLength, RowStats, SimdFloat, StatsStep, Storage, SHORT_ROW_BYTES,
};
use crate::kernels::prefetch;
use crate::kernels::stream::Stores;
use crate::kernels::{ForwardRows, Layer, RowStatsOut};
use num_traits::{Float, One, Zero};
use pulp::{Simd, WithSimd};

/// Short rows whose statistics are computed together.
const SHORT_ROW_BLOCK: usize = 16;

impl<E: Storage> WithSimd for ForwardRows<'_, E> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        with_flags!(
            [
                self.x.is_none(),
                self.layer.gain.is_some(),
                self.layer.bias.is_some()
            ],
            |V| forward_all::<E, S, V>(simd, self)
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
// Not inlined in debug builds, where the dispatcher's one frame would otherwise hold every
// body (about 2 MiB; see the module notes of `kernels::simd` on stack use).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn forward_all<E: Storage, S: Simd, V: ForwardBody>(simd: S, job: ForwardRows<'_, E>) {
    type T<E> = <E as Storage>::Wide;
    let (x, out, mut stats) = (job.x, job.out, job.stats);
    let layer = E::wide_layer(job.layer);
    let dim = layer.dim;
    let rows = out.len() / dim;
    let centered = layer.centered;
    let common = common_loop::<E>(layer);
    if dim * size_of::<T<E>>() <= SHORT_ROW_BYTES {
        // Short rows: a row's statistics are a chain of dependent steps (first estimate of the
        // mean, the sums around it, then the f64 arithmetic of `finish_stats`, with a square
        // root and a division), too long for the processor to overlap one row's chain with the
        // next row's. So a block of rows is done in steps: the sums of every row, then the
        // statistics of every row from its sums (independent rows, whose chains overlap), then
        // the rows are written. The same computations as [`row_stats_from`]'s, so the same
        // bits. (Taking the first estimates of the block's rows as a step of its own was slower
        // from memory: it reads the start of each row, then the rest.) Consecutive short rows
        // are one stream for the hardware prefetcher.
        let n = RowLength::new(dim);
        // From memory, each block first hints the block `ahead` rows on (see `prefetch`).
        let ahead = (prefetch::AHEAD_BYTES / (dim * size_of::<E>()).max(1))
            .next_multiple_of(SHORT_ROW_BLOCK);
        for first in (0..rows).step_by(SHORT_ROW_BLOCK) {
            let count = SHORT_ROW_BLOCK.min(rows - first);
            if layer.prefetch && first + ahead < rows {
                let start = (first + ahead) * dim;
                let end = (first + ahead + SHORT_ROW_BLOCK).min(rows) * dim;
                prefetch::prefetch(x.map_or(&out[start..end], |x| &x[start..end]));
            }
            let block_stats = {
                let row = |offset: usize| {
                    let range = (first + offset) * dim..(first + offset + 1) * dim;
                    x.map_or(&out[range.clone()], |x| &x[range])
                };
                let mut shifts = [T::<E>::zero(); SHORT_ROW_BLOCK];
                let mut sums = [(0.0, 0.0); SHORT_ROW_BLOCK];
                for (offset, (shift, sums)) in shifts[..count].iter_mut().zip(&mut sums).enumerate()
                {
                    *shift = first_shift::<E, S>(simd, row(offset), centered);
                    if shift.is_finite() {
                        *sums = deviation_sums::<E, S, true>(simd, row(offset), *shift);
                    }
                }
                let mut block_stats = [None; SHORT_ROW_BLOCK];
                for (offset, slot) in block_stats[..count].iter_mut().enumerate() {
                    let (shift, (sum, sum_of_squares)) = (shifts[offset], sums[offset]);
                    if !shift.is_finite() {
                        continue;
                    }
                    *slot = match finish_stats(shift, sum, sum_of_squares, n, layer.eps, centered) {
                        StatsStep::Done(row_stats) => Some(row_stats),
                        // The remaining two of `row_stats_from`'s three passes.
                        StatsStep::Refine(better) => row_stats_within::<E, S, true>(
                            simd,
                            row(offset),
                            better,
                            layer.eps,
                            centered,
                            2,
                        ),
                        StatsStep::Fallback => None,
                    };
                }
                block_stats
            };
            for (offset, row_stats) in block_stats[..count].iter().enumerate() {
                let row = first + offset;
                let range = row * dim..(row + 1) * dim;
                let row_io = (x.map(|x| &x[range.clone()]), &mut out[range]);
                write_row::<E, S, V>(simd, row_io, *row_stats, (layer, common), &mut stats, row);
            }
        }
        return;
    }
    if !fuses_rows::<E, V>(dim) {
        // Rows too long for the fused loop's four streams to stay in the L1 cache: each row's
        // statistics by passes of their own, then the row is written.
        for row in 0..rows {
            let range = row * dim..(row + 1) * dim;
            let (x_row, out_row) = (x.map(|x| &x[range.clone()]), &mut out[range]);
            let row_stats = stats_of_row::<E, S>(simd, x_row.unwrap_or(out_row), layer);
            write_row::<E, S, V>(
                simd,
                (x_row, out_row),
                row_stats,
                (layer, common),
                &mut stats,
                row,
            );
        }
        return;
    }
    let n = RowLength::new(dim);
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
            Next::Unknown => stats_of_row::<E, S>(simd, x_row.unwrap_or(out_row), layer),
        };
        pending = Next::Unknown;
        let next: Option<&[E]> = match x {
            Some(x) => x.get(range.end..range.end + dim),
            None => later.get(..dim),
        };
        let shift = next
            .map(|next| first_shift::<E, S>(simd, next, centered))
            .filter(|shift| shift.is_finite());
        // Without statistics for this row, or a next row to overlap with, the row alone.
        let (Some(row_stats_now), Some(next), Some(shift)) = (current_stats, next, shift) else {
            write_row::<E, S, V>(
                simd,
                (x_row, out_row),
                current_stats,
                (layer, common),
                &mut stats,
                row,
            );
            continue;
        };
        record_stats::<E>(&mut stats, row, row_stats_now);
        let (sum, sum_of_squares) = normalize_row_and_sum_next::<E, S, V>(
            simd,
            (x_row, out_row),
            row_stats_now,
            (layer, common),
            next,
            shift,
        );
        pending = match finish_stats(shift, sum, sum_of_squares, n, layer.eps, centered) {
            StatsStep::Done(next_stats) => Next::Known(next_stats),
            StatsStep::Refine(better) => Next::from_stats(row_stats_from::<E, S>(
                simd, next, better, layer.eps, centered,
            )),
            StatsStep::Fallback => Next::Fallback,
        };
    }
}

/// Bytes the fused loop of long rows may stream through the L1 data cache per row (32 KiB: the
/// L1d per core of the Zen 4 VM where the rule was measured, and of the Zen 3 VM; recent Intel
/// cores have 48 KiB, where the bound is cautious). Writing one row while summing the next
/// ([`normalize_row_and_sum_next`]) reads this row's `x` again, the next row's `x`, the gain
/// and the bias (in the compute type), all at the same column; once the four rows outgrow the
/// L1 cache, every one of them is an L1 miss in the loop that also waits on memory for the next
/// row. Measured on the 2-core Zen 4 VM (AVX-512, 32 KiB L1d; BENCHMARKS.md, 2026-12-03), f32
/// and f64 rows of 8 KiB and more ran faster as two loops (the statistics, then the writing)
/// in and out of cache: f32 8192×4096 1.31–1.50×, 512×2048 1.22×, 4096×2048 1.14×,
/// 1024×8192 1.28×; f64 4096×1024 1.35×, 512×1024 1.23×, 1024×8192 1.31×; rows of 4 KiB or
/// less (in this count: under 32 KiB) kept the fused loop, faster in cache (f32 256×512
/// 1.17×, 64×1024 1.14×). A C loop of the same shape (`y = a·x + b` with streaming stores
/// while summing the next row, rows of 4096 f32) took 10 ms per 128 MiB without the gain and
/// bias loads and 17.5 ms with them; separately, 15 ms. Same bits either way: the same sums
/// and `y`.
pub(crate) const FUSED_ROW_BYTES: usize = 32 << 10;

#[cfg(test)]
thread_local! {
    /// Set by tests to run one loop or the other for long rows whatever their length (`None`:
    /// the rule of [`fuses_rows`]).
    pub(crate) static FORCE_FUSED_ROWS: std::cell::Cell<Option<bool>> =
        const { std::cell::Cell::new(None) };
}

/// Whether long rows of `dim` values run the fused loop (see [`FUSED_ROW_BYTES`]).
#[inline(always)]
fn fuses_rows<E: Storage, V: ForwardBody>(dim: usize) -> bool {
    #[cfg(test)]
    if let Some(forced) = FORCE_FUSED_ROWS.with(std::cell::Cell::get) {
        return forced;
    }
    let parameters = usize::from(V::HAS_GAIN) + usize::from(V::HAS_BIAS);
    let streamed = dim * (2 * size_of::<E>() + parameters * size_of::<E::Wide>());
    streamed < FUSED_ROW_BYTES
}

/// A long row's statistics by passes of their own, starting from the first estimate of its
/// mean (short rows: the block steps in `forward_all`).
#[inline(always)]
fn stats_of_row<E: Storage, S: Simd>(
    simd: S,
    values: &[E],
    layer: Layer<'_, E::Wide>,
) -> Option<RowStats<E::Wide>> {
    let shift = first_shift::<E, S>(simd, values, layer.centered);
    row_stats_from::<E, S>(simd, values, shift, layer.eps, layer.centered)
}

/// One row's input (`None` in place: the row is read from the output) and output.
type RowIo<'r, T> = (Option<&'r [T]>, &'r mut [T]);

/// Stores a row's statistics when the caller asked for them.
#[inline(always)]
fn record_stats<E: Storage>(
    stats: &mut Option<RowStatsOut<'_, E::Stat>>,
    row: usize,
    row_stats: RowStats<E::Wide>,
) {
    if let Some(stats) = stats.as_mut() {
        stats.mean[row] = E::stat_from_f64(row_stats.mean);
        stats.inv_std[row] = E::stat_from_f64(row_stats.inv_std);
    }
}

/// Writes one row from its statistics, or by the scalar specification when it has none.
#[inline(always)]
fn write_row<E: Storage, S: Simd, V: ForwardBody>(
    simd: S,
    (x_row, out_row): RowIo<'_, E>,
    row_stats: Option<RowStats<E::Wide>>,
    (layer, common): (Layer<'_, E::Wide>, bool),
    stats: &mut Option<RowStatsOut<'_, E::Stat>>,
    row: usize,
) {
    match row_stats {
        Some(row_stats) => {
            record_stats::<E>(stats, row, row_stats);
            let normalizer = Normalizer::new::<E::Wide, S>(simd, &row_stats);
            if common {
                write_vectors::<E, S, V, true>(simd, (x_row, out_row), &normalizer, layer);
            } else {
                write_vectors::<E, S, V, false>(simd, (x_row, out_row), &normalizer, layer);
            }
        }
        None => {
            let stats = stats.as_mut().map(|stats| RowStatsOut {
                mean: &mut stats.mean[row..row + 1],
                inv_std: &mut stats.inv_std[row..row + 1],
            });
            E::forward_fallback(layer, x_row, out_row, stats);
        }
    }
}

/// Whether the job's rows run the common copy of the row loops: for half precision the loops
/// are compiled twice (see `Storage::CACHED_LOOP_COPY`), once for the common case and once
/// for any layer. The common copy stores with ordinary stores, testing no store choice per
/// vector, and rounds with [`Storage::store_plain_nans`]. That is exact here when the gain and
/// bias hold no NaN: the rows this path writes have finite values and statistics (the others go
/// to the scalar specification, see `finish_stats`), so every NaN in `y` is then made by the
/// arithmetic itself (`∞ · 0`, `∞ − ∞`), never carried from an operand. Checked once
/// per job (the parameters are one row's length).
#[inline(always)]
fn common_loop<E: Storage>(layer: Layer<'_, E::Wide>) -> bool {
    E::CACHED_LOOP_COPY
        && layer.stores == Stores::Cached
        && holds_no_nan(layer.gain)
        && holds_no_nan(layer.bias)
}

/// Pass 3 of one row: `out = gain · x̂ + bias` (`COMMON`: the common copy, see
/// [`common_loop`]; otherwise with the layer's stores and any NaN).
#[inline(always)]
fn write_vectors<E: Storage, S: Simd, V: ForwardBody, const COMMON: bool>(
    simd: S,
    (x_row, out_row): RowIo<'_, E>,
    normalizer: &Normalizer<WideVector<E, S>>,
    layer: Layer<'_, E::Wide>,
) {
    let mut head = RowHead::<E, S>::new::<V, COMMON>(x_row, out_row, layer);
    for k in 0..head.len {
        let y = head.y::<V>(simd, normalizer, k);
        head.store::<COMMON>(simd, k, y);
    }
    head.finish_tail(simd, normalizer);
}

/// Pass 3 of one row fused with pass 2 of the next: writes the row's `out = gain · x̂ + bias`
/// while summing the next row's deviations from `next_shift`, so that reading the next row
/// overlaps writing this one. Returns the next row's sums, tail included.
#[inline(always)]
fn normalize_row_and_sum_next<E: Storage, S: Simd, V: ForwardBody>(
    simd: S,
    row_io: RowIo<'_, E>,
    row_stats: RowStats<E::Wide>,
    (layer, common): (Layer<'_, E::Wide>, bool),
    next: &[E],
    next_shift: E::Wide,
) -> (f64, f64) {
    if common {
        normalize_and_sum_next::<E, S, V, true>(simd, row_io, row_stats, layer, next, next_shift)
    } else {
        normalize_and_sum_next::<E, S, V, false>(simd, row_io, row_stats, layer, next, next_shift)
    }
}

/// [`normalize_row_and_sum_next`] with its copy chosen (see [`write_vectors`]).
#[inline(always)]
fn normalize_and_sum_next<E: Storage, S: Simd, V: ForwardBody, const COMMON: bool>(
    simd: S,
    (x_row, out_row): RowIo<'_, E>,
    row_stats: RowStats<E::Wide>,
    layer: Layer<'_, E::Wide>,
    next: &[E],
    next_shift: E::Wide,
) -> (f64, f64) {
    type T<E> = <E as Storage>::Wide;
    let normalizer = Normalizer::new::<T<E>, S>(simd, &row_stats);
    let mut head = RowHead::<E, S>::new::<V, COMMON>(x_row, out_row, layer);
    let len = head.len;
    let (next_head, next_tail) = E::split::<S>(next);
    let next_head = E::first(next_head, len);
    let shift = T::<E>::splat(simd, next_shift);
    let sums = sum_and_dot!(T<E>, simd, len, |k| {
        let y = head.y::<V>(simd, &normalizer, k);
        head.store::<COMMON>(simd, k, y);
        let deviation = T::<E>::sub_vectors(simd, E::load_unquieted(simd, &next_head, k), shift);
        (deviation, deviation, deviation)
    }, tail: next_tail.len() => {
        let deviation = T::<E>::sub_vectors(simd, E::load_partial(simd, next_tail), shift);
        (deviation, deviation, deviation)
    });
    head.finish_tail(simd, &normalizer);
    sums
}

/// A row cut into full vectors (all of one length `len`, so that indexing them in the loops
/// needs no bounds checks; empty where the layer has no such input) and a partial tail.
struct RowHead<'r, E: Storage, S: Simd> {
    len: usize,
    x: E::Vectors<'r, S>,
    out: E::VectorsMut<'r, S>,
    gain: &'r [WideVector<E, S>],
    bias: &'r [WideVector<E, S>],
    x_tail: Option<&'r [E]>,
    out_tail: &'r mut [E],
    gain_tail: Option<&'r [E::Wide]>,
    bias_tail: Option<&'r [E::Wide]>,
}

impl<'r, E: Storage, S: Simd> RowHead<'r, E, S> {
    #[inline(always)]
    fn new<V: ForwardBody, const COMMON: bool>(
        x: Option<&'r [E]>,
        out: &'r mut [E],
        layer: Layer<'r, E::Wide>,
    ) -> Self {
        let stores = if COMMON { Stores::Cached } else { layer.stores };
        let (out, out_tail) = E::split_mut::<S>(out, stores);
        let len = E::count_mut::<S>(&out);
        let out = E::first_mut(out, len);
        let (x, x_tail) = match x {
            Some(values) if !V::IN_PLACE => {
                let (head, tail) = E::split::<S>(values);
                (E::first(head, len), Some(tail))
            }
            _ => (E::split::<S>(&[]).0, None),
        };
        let parameter = |values: Option<&'r [E::Wide]>, wanted: bool| match values {
            Some(values) if wanted => {
                let (head, tail) = <E::Wide as SimdFloat>::split::<S>(values);
                (&head[..len], Some(tail))
            }
            _ => (&[][..], None),
        };
        let (gain, gain_tail) = parameter(layer.gain, V::HAS_GAIN);
        let (bias, bias_tail) = parameter(layer.bias, V::HAS_BIAS);
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

    /// Stores `y` as vector `k` (`COMMON`: see [`common_loop`]).
    #[inline(always)]
    fn store<const COMMON: bool>(&mut self, simd: S, k: usize, y: WideVector<E, S>) {
        if COMMON {
            E::store_plain_nans(simd, &mut self.out, k, y);
        } else {
            E::store(simd, &mut self.out, k, y);
        }
    }

    /// `gain · x̂ + bias` for vector `k`, with the parameters the layer has.
    #[inline(always)]
    fn y<V: ForwardBody>(
        &self,
        simd: S,
        normalizer: &Normalizer<WideVector<E, S>>,
        k: usize,
    ) -> WideVector<E, S> {
        type T<E> = <E as Storage>::Wide;
        let value = if V::IN_PLACE {
            E::load_mut_unquieted(simd, &self.out, k)
        } else {
            E::load_unquieted(simd, &self.x, k)
        };
        let x_hat = normalizer.x_hat::<T<E>, S>(simd, value);
        match (V::HAS_GAIN, V::HAS_BIAS) {
            (true, true) => T::<E>::mul_add_vectors(simd, x_hat, self.gain[k], self.bias[k]),
            (true, false) => T::<E>::mul_vectors(simd, x_hat, self.gain[k]),
            (false, true) => T::<E>::add_vectors(simd, x_hat, self.bias[k]),
            (false, false) => x_hat,
        }
    }

    /// The last, partial vector of the row: `out = gain · x̂ + bias` (one fused multiply-add
    /// with gain 1 and bias 0 where absent, which rounds as the full vectors do).
    #[inline(always)]
    fn finish_tail(self, simd: S, normalizer: &Normalizer<WideVector<E, S>>) {
        type T<E> = <E as Storage>::Wide;
        let out_tail = self.out_tail;
        if out_tail.is_empty() {
            return;
        }
        let x = E::load_partial(simd, self.x_tail.unwrap_or(out_tail));
        let x_hat = normalizer.x_hat::<T<E>, S>(simd, x);
        let gain = self
            .gain_tail
            .map_or(T::<E>::splat(simd, T::<E>::one()), |g| {
                T::<E>::load_partial(simd, g)
            });
        let bias = self
            .bias_tail
            .map_or(T::<E>::splat(simd, T::<E>::zero()), |b| {
                T::<E>::load_partial(simd, b)
            });
        E::store_partial(
            simd,
            out_tail,
            T::<E>::mul_add_vectors(simd, x_hat, gain, bias),
        );
    }
}
