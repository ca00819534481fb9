//! The backward pass: per row, pass A sums `Σ g` and `Σ g·(x − hi)`; pass B writes
//! `dx = r · (g − mean(g)) − r·mean(g⊙x̂) · x̂` and adds `dy·x̂`, `dy` into the parameter sums.
//! Short rows, and on AVX2 rows of at most [`SEPARATE_PASSES_ROW_BYTES`], run their two passes
//! one after the other; longer rows fuse pass B of each row with pass A of the next
//! ([`fuses_passes`]).
//!
//! The body is compiled once per combination of gain and wanted gradients ([`BackwardBody`],
//! const generics), so that no loop tests for any of them.

use super::storage::WideVector;
use super::{
    holds_no_nan, Normalizer, RowLength, RowStats, SimdFloat, Storage, FOLD_ROWS, SHORT_ROW_BYTES,
};
use crate::element::Element;
use crate::kernels::stream::{copy_row, Stores};
use crate::kernels::{add_into, BackwardRows, GradSums};
use num_traits::Zero;
use pulp::{Simd, WithSimd};

/// Rows of at most this many bytes in the compute type run pass A and pass B one after the
/// other; longer rows fuse pass B of each row with pass A of the next, so that reading the next
/// row overlaps writing this one. Up to this length a row's x, dy, gain, dx and parameter sums
/// stay in the L1 cache between the passes, and the separate loops are shorter: the fused loop
/// holds more values than there are vector registers (its accumulators went to the stack).
/// Measured on the 2-core AMD EPYC VM (AVX2, BENCHMARKS.md): in cache, separate passes ran
/// 1.16–1.23× as fast at 512×1024 (f32, f16, bf16) and 1.11–1.34× at 2048×64; from memory, once
/// the separate loops had lost their per-vector bounds checks (commit 73278bd), 1.00–1.09× for
/// f32 and 1.00–1.21× for f16 and bf16 at 4096×1024, 8192×1024 and 16384×512 (calls larger
/// than the cache had kept the fused loop before, when separate passes ran at 0.82–0.99× of it).
/// f64 rows of 1024 values (8 KiB) ran separately at 0.64× even in cache. Same bits either way.
/// On AVX-512 the bound is [`SHORT_ROW_BYTES`] instead (see [`fuses_passes`]).
const SEPARATE_PASSES_ROW_BYTES: usize = 4 << 10;

/// Bytes in a cache line (and in one 512-bit vector).
const CACHE_LINE: usize = 64;

/// Whether rows of `row_bytes` (in the compute type) fuse pass B with the next row's pass A on
/// instruction set `S`. Short rows never do. With 512-bit vectors (AVX-512, 32 vector registers)
/// the fused loop's values fit in registers, and every longer row fuses: on a 2-core AVX-512
/// Xeon VM (2026-11-30, BENCHMARKS.md; three runs, rows of 1.2 to 4 KiB, calls of 6 MiB and
/// more against its 2 MiB of L2) fused rows ran at 0.68–0.94× the time of separate passes for
/// f32 and 0.75–1.00× for bf16; f16 at 0.74–1.18× (one cell of nine slower). With 256-bit
/// vectors (AVX2, 16 registers) rows of up to [`SEPARATE_PASSES_ROW_BYTES`] keep separate
/// passes, measured faster on the AMD EPYC VM.
#[inline(always)]
fn fuses_passes<S: Simd>(row_bytes: usize) -> bool {
    let wide_vectors = size_of::<S::f32s>() >= 64;
    row_bytes > SHORT_ROW_BYTES && (wide_vectors || row_bytes > SEPARATE_PASSES_ROW_BYTES)
}

/// A backward call: its inputs, `dx` (and `dsum`), the parameter-gradient totals (f64, one
/// row of `dim` per group of `group_rows` rows) and the kernel's working memory (short partial
/// sums in the compute type, grown once and reused across calls), dispatched once per call.
pub(crate) struct Backward<'a, E: Storage> {
    pub(crate) rows: BackwardRows<'a, E>,
    pub(crate) dx: &'a mut [E],
    pub(crate) dsum: Option<&'a [E]>,
    pub(crate) totals: GradSums<'a, f64>,
    /// Rows per row of totals: a multiple of [`FOLD_ROWS`], or at least the call's rows (one
    /// row of totals). Each group's sums are added to its own row, so a call over several
    /// groups adds to each exactly what a call over that group alone adds.
    pub(crate) group_rows: usize,
    pub(crate) scratch: &'a mut Vec<E::Wide>,
}

impl<E: Storage> WithSimd for Backward<'_, E> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // One body per combination of gain and wanted gradients: no loop tests for them.
        let totals = &self.totals;
        with_flags!(
            [
                self.rows.layer.gain.is_some(),
                totals.gain.is_some(),
                totals.bias.is_some()
            ],
            |V| backward_all::<E, S, V>(simd, self)
        )
    }
}

flags_trait!(
    /// Which body of the backward pass runs: with or without gain, with or without each parameter
    /// gradient, fixed at compile time.
    BackwardBody: HAS_GAIN, GAIN_GRAD, BIAS_GRAD
);

/// The backward pass over all rows: each fast row's two passes one after the other, or (long
/// rows) pass B of each fused with pass A of the next. Rows the fast path cannot do exactly go
/// to the scalar specification (their `dyᵢ` still reaches `dbias` through the same sums as
/// every other row's, so `dbias` never depends on x).
#[inline(always)]
fn backward_all<E: Storage, S: Simd, V: BackwardBody>(simd: S, backward: Backward<'_, E>) {
    let row_bytes = backward.rows.layer.dim * size_of::<E::Wide>();
    let short = row_bytes <= SHORT_ROW_BYTES;
    let fuse = fuses_passes::<S>(row_bytes);
    // `dx` rounded by `Storage::store_plain_nans` (bf16: without a test for NaN), exact when the
    // gain holds no NaN: the rows this path computes have finite statistics, and `x` and `dy`
    // are half values (whose NaNs, widened, have clear lower bits), so every NaN in `dx` is
    // then made by the arithmetic or carried from `x` or `dy`. Checked once per job.
    let plain = E::PLAIN_NAN_STORES && holds_no_nan(E::wide_layer(backward.rows.layer).gain);
    if plain {
        backward_in_layout::<E, S, V, true>(simd, backward, short, fuse)
    } else {
        backward_in_layout::<E, S, V, false>(simd, backward, short, fuse)
    }
}

/// One loop per layout, so that no row tests it (short rows are never fused).
#[inline(always)]
fn backward_in_layout<E: Storage, S: Simd, V: BackwardBody, const PLAIN: bool>(
    simd: S,
    backward: Backward<'_, E>,
    short: bool,
    fuse: bool,
) {
    match (short, fuse) {
        (true, _) => backward_rows_as::<E, S, V, true, false, PLAIN>(simd, backward),
        (false, false) => backward_rows_as::<E, S, V, false, false, PLAIN>(simd, backward),
        (false, true) => backward_rows_as::<E, S, V, false, true, PLAIN>(simd, backward),
    }
}

/// [`backward_all`] for one layout: `SHORT` rows fit one fold period (see
/// [`SHORT_ROW_BYTES`]); `FUSE`: pass B of each row runs together with pass A of the next;
/// `PLAIN`: `dx` is stored by `Storage::store_plain_nans`.
// Not inlined in debug builds, where the dispatcher's one frame would otherwise hold every
// body (about 2 MiB; see the module notes of `kernels::simd` on stack use).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn backward_rows_as<
    E: Storage,
    S: Simd,
    V: BackwardBody,
    const SHORT: bool,
    const FUSE: bool,
    const PLAIN: bool,
>(
    simd: S,
    backward: Backward<'_, E>,
) {
    type T<E> = <E as Storage>::Wide;
    let (rows, scratch) = (backward.rows, backward.scratch);
    let (dx, dsum) = (backward.dx, backward.dsum);
    let (mut partial_gain, mut partial_bias) = (backward.totals.gain, backward.totals.bias);
    let group_rows = backward.group_rows;
    let layer = E::wide_layer(rows.layer);
    let dim = layer.dim;
    let row_count = dx.len() / dim;
    debug_assert!(
        (partial_gain.is_none() && partial_bias.is_none())
            || group_rows.is_multiple_of(FOLD_ROWS)
            || group_rows >= row_count
    );
    // With streaming stores, each row of dx is written into a row in cache (`staging`, after
    // the two sums in the scratch memory) and then streamed out whole, in order: streaming
    // each vector as the loop made it, among the loop's other streams, was up to 6× slower on
    // one machine. The loops themselves always store ordinarily, so they test no store choice.
    let stream_dx = layer.stores != Stores::Cached;
    let staging_len = if stream_dx { dim } else { 0 };
    // The sums (and the staging row) start on cache-line boundaries: pass B loads and stores
    // both sums once per vector, and a vector that straddles two lines costs two accesses
    // (on the AVX-512 Xeon VM, 64-byte stores that straddle ran at half the rate of aligned
    // ones). The caller's rows are where the caller put them; these are ours to place.
    let line = CACHE_LINE / size_of::<T<E>>();
    let stride = dim.next_multiple_of(line);
    scratch.clear();
    scratch.resize(2 * stride + staging_len + line, T::<E>::zero());
    let start = scratch.as_ptr().align_offset(CACHE_LINE);
    // `align_offset` may decline (`usize::MAX`); the sums are then merely unaligned.
    let start = if start < line { start } else { 0 };
    let (gain_sums, rest) = scratch[start..].split_at_mut(stride);
    let gain_sums = &mut gain_sums[..dim];
    let (bias_sums, staging) = rest.split_at_mut(stride);
    let bias_sums = &mut bias_sums[..dim];
    // The compute type is at least as wide as the storage type: `dim` of it hold a row.
    let staging: &mut [E] = &mut bytemuck::cast_slice_mut(staging)[..staging_len];
    let n = dim as f64;
    let length = RowLength::new(dim);
    let (gain_head, gain_tail) = layer.gain.map_or((&[][..], &[][..]), <T<E>>::split::<S>);
    let stats_of = |row: usize| {
        let mean = E::stat_to_f64(*rows.means.get(row)?);
        Some((mean, E::stat_to_f64(rows.inv_stds[row])))
    };
    let fast_row = |row: usize| -> Option<GradRow<'_, E, S>> {
        let (mean, inv_std) = stats_of(row)?;
        backward_fast_path_is_safe::<T<E>>(mean, inv_std, n, layer.eps).then(|| {
            let range = row * dim..(row + 1) * dim;
            GradRow::new(
                &rows.x[range.clone()],
                &rows.dy[range],
                RowStats::from_f64(mean, inv_std),
                layer.centered,
            )
        })
    };
    // Gain-gradient terms of this group's fallback rows, in f64 (allocated at the first such
    // row: never for ordinary data), added to the group's sum when it is folded.
    let mut fallback_gain: Option<Vec<f64>> = None;
    let mut pending: Option<RowSums> = None;
    for (row, dx_row) in dx.chunks_exact_mut(dim).enumerate() {
        // Whether this row's dx went to the staging row.
        let staged = match fast_row(row) {
            Some(current) => {
                let sums = match pending.take() {
                    Some(sums) => sums,
                    None => grad_sums::<E, S, V>(simd, SHORT, current, (gain_head, gain_tail)),
                };
                pending = backward_row::<E, S, V, PLAIN>(
                    simd,
                    current,
                    sums,
                    if FUSE { fast_row(row + 1) } else { None },
                    layer.gain,
                    length,
                    RowOut {
                        dx: if stream_dx {
                            &mut *staging
                        } else {
                            &mut *dx_row
                        },
                        gain_sums: &mut *gain_sums,
                        bias_sums: &mut *bias_sums,
                    },
                );
                stream_dx
            }
            None => {
                let range = row * dim..(row + 1) * dim;
                let (x_row, dy_row) = (&rows.x[range.clone()], &rows.dy[range]);
                let gain = partial_gain.is_some().then(|| {
                    fallback_gain
                        .get_or_insert_with(|| vec![0.0; dim])
                        .as_mut_slice()
                });
                let row_stats = stats_of(row).expect("a statistic for every row");
                E::backward_fallback(layer, (x_row, dy_row), row_stats, dx_row, gain);
                if V::BIAS_GRAD {
                    for (sum, &dy) in bias_sums.iter_mut().zip(dy_row) {
                        *sum = *sum + E::widen(dy);
                    }
                }
                false
            }
        };
        if let Some(dsum) = dsum {
            let target = if staged { &mut *staging } else { &mut *dx_row };
            add_into(target, &dsum[row * dim..(row + 1) * dim]);
        }
        if staged {
            copy_row(layer.stores, dx_row, staging);
        }
        if (row + 1) % FOLD_ROWS == 0 {
            let group = row / group_rows;
            fold_into(
                group_totals(&mut partial_gain, group, dim),
                gain_sums,
                fallback_gain.as_deref_mut(),
            );
            fold_into(group_totals(&mut partial_bias, group, dim), bias_sums, None);
        }
    }
    // The rows after the last full fold belong to the last group.
    let last = row_count.saturating_sub(1) / group_rows;
    fold_into(
        group_totals(&mut partial_gain, last, dim),
        gain_sums,
        fallback_gain.as_deref_mut(),
    );
    fold_into(group_totals(&mut partial_bias, last, dim), bias_sums, None);
}

/// The row of `totals` that group `group` adds to (none where the call has no such row: a
/// call without rows).
fn group_totals<'t>(
    totals: &'t mut Option<&mut [f64]>,
    group: usize,
    dim: usize,
) -> Option<&'t mut [f64]> {
    totals
        .as_deref_mut()?
        .get_mut(group * dim..(group + 1) * dim)
}

/// One row of the backward pass, as full vectors and a partial tail.
struct GradRow<'a, E: Storage, S: Simd> {
    x: E::Vectors<'a, S>,
    dy: E::Vectors<'a, S>,
    /// Full vectors in a row.
    len: usize,
    x_tail: &'a [E],
    dy_tail: &'a [E],
    stats: RowStats<E::Wide>,
    /// False for RmsNorm rows: no mean(g) term.
    centered: bool,
}

impl<E: Storage, S: Simd> Clone for GradRow<'_, E, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: Storage, S: Simd> Copy for GradRow<'_, E, S> {}

impl<'a, E: Storage, S: Simd> GradRow<'a, E, S> {
    #[inline(always)]
    fn new(x: &'a [E], dy: &'a [E], stats: RowStats<E::Wide>, centered: bool) -> Self {
        let (x, x_tail) = E::split::<S>(x);
        let (dy, dy_tail) = E::split::<S>(dy);
        let len = E::count::<S>(&x);
        GradRow {
            x,
            dy: E::first(dy, len),
            len,
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
fn grad_sums<E: Storage, S: Simd, V: BackwardBody>(
    simd: S,
    short: bool,
    row: GradRow<'_, E, S>,
    (gain, gain_tail): (&[WideVector<E, S>], &[E::Wide]),
) -> RowSums {
    type T<E> = <E as Storage>::Wide;
    let hi = T::<E>::splat(simd, row.stats.hi);
    // Every slice the loop indexes cut to the row's vectors: no bounds checks in it.
    let len = row.len;
    let (x, dy) = (E::first(row.x, len), E::first(row.dy, len));
    let gain = if V::HAS_GAIN { &gain[..len] } else { gain };
    macro_rules! sums {
        ($($once:ident;)?) => {
            sum_and_dot!($($once;)? T<E>, simd, len, |k| {
                let dy = E::load(simd, &dy, k);
                let g = if V::HAS_GAIN {
                    T::<E>::mul_vectors(simd, gain[k], dy)
                } else {
                    dy
                };
                (g, g, T::<E>::sub_vectors(simd, E::load(simd, &x, k), hi))
            }, tail: row.x_tail.len() => tail_terms::<E, S, V>(simd, &row, gain_tail, hi))
        };
    }
    let (sum_g, sum_g_deviation) = if short { sums!(once;) } else { sums!() };
    RowSums {
        sum_g,
        sum_g_deviation,
    }
}

/// Pass A's terms for a row's last, partial vector: `(g, g, x − hi)`, as for full vectors.
#[inline(always)]
fn tail_terms<E: Storage, S: Simd, V: BackwardBody>(
    simd: S,
    row: &GradRow<'_, E, S>,
    gain_tail: &[E::Wide],
    hi: WideVector<E, S>,
) -> (WideVector<E, S>, WideVector<E, S>, WideVector<E, S>) {
    type T<E> = <E as Storage>::Wide;
    let dy = E::load_partial(simd, row.dy_tail);
    let g = if V::HAS_GAIN {
        T::<E>::mul_vectors(simd, T::<E>::load_partial(simd, gain_tail), dy)
    } else {
        dy
    };
    (
        g,
        g,
        T::<E>::sub_vectors(simd, E::load_partial(simd, row.x_tail), hi),
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
    fn new<E: Storage, S: Simd>(
        simd: S,
        row: GradRow<'_, E, S>,
        sums: RowSums,
        n: RowLength,
    ) -> Self
    where
        E::Wide: SimdFloat<Vector<S> = V>,
    {
        type T<E> = <E as Storage>::Wide;
        let stats = row.stats;
        // Σ g·x̂ = r · (Σ g·(x − hi) − lo · Σ g).
        let g_x_hat = stats.inv_std * (sums.sum_g_deviation - stats.lo.to_stat() * sums.sum_g);
        let mean_g = if row.centered {
            n.mean(sums.sum_g)
        } else {
            0.0
        };
        let mean_g_x_hat = n.mean(g_x_hat);
        InputGrad {
            normalizer: Normalizer::new::<T<E>, S>(simd, &stats),
            mean_g: T::<E>::splat(simd, T::<E>::from_stat(mean_g)),
            neg_r_mean_g_x_hat: T::<E>::splat(
                simd,
                T::<E>::from_stat(-stats.inv_std * mean_g_x_hat),
            ),
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

/// A row's outputs: `dx`, and the parameter-gradient sums it adds to (compute type).
struct RowOut<'a, E: Storage> {
    dx: &'a mut [E],
    gain_sums: &'a mut [E::Wide],
    bias_sums: &'a mut [E::Wide],
}

/// Pass B over a row's full vectors: the gain it reads, the outputs it writes.
struct PassB<'a, E: Storage, S: Simd> {
    gain: &'a [WideVector<E, S>],
    dx: E::VectorsMut<'a, S>,
    gain_sums: &'a mut [WideVector<E, S>],
    bias_sums: &'a mut [WideVector<E, S>],
}

/// Pass B for vector `k`: `dx[k]`, and `dy·x̂`, `dy` added into the sums that are wanted.
#[inline(always)]
fn grad_at<E: Storage, S: Simd, V: BackwardBody, const PLAIN: bool>(
    simd: S,
    k: usize,
    x: WideVector<E, S>,
    dy: WideVector<E, S>,
    input_grad: &InputGrad<WideVector<E, S>>,
    out: &mut PassB<'_, E, S>,
) {
    type T<E> = <E as Storage>::Wide;
    let x_hat = input_grad.normalizer.x_hat::<T<E>, S>(simd, x);
    let g = if V::HAS_GAIN {
        T::<E>::mul_vectors(simd, out.gain[k], dy)
    } else {
        dy
    };
    let dx = input_grad.dx::<T<E>, S>(simd, g, x_hat);
    if PLAIN {
        E::store_plain_nans(simd, &mut out.dx, k, dx);
    } else {
        E::store(simd, &mut out.dx, k, dx);
    }
    if V::GAIN_GRAD {
        out.gain_sums[k] = T::<E>::mul_add_vectors(simd, dy, x_hat, out.gain_sums[k]);
    }
    if V::BIAS_GRAD {
        out.bias_sums[k] = T::<E>::add_vectors(simd, out.bias_sums[k], dy);
    }
}

/// Pass B of a row, fused with pass A of the next one when there is a next fast row (so that
/// reading it overlaps writing this one); returns the next row's [`RowSums`].
#[inline(always)]
fn backward_row<E: Storage, S: Simd, V: BackwardBody, const PLAIN: bool>(
    simd: S,
    row: GradRow<'_, E, S>,
    sums: RowSums,
    next: Option<GradRow<'_, E, S>>,
    gain: Option<&[E::Wide]>,
    length: RowLength,
    out: RowOut<'_, E>,
) -> Option<RowSums> {
    type T<E> = <E as Storage>::Wide;
    let RowOut {
        dx,
        gain_sums,
        bias_sums,
    } = out;
    let (gain_head, gain_tail) = gain.map_or((&[][..], &[][..]), <T<E>>::split::<S>);
    let len = row.len;
    let gain_head = if V::HAS_GAIN {
        &gain_head[..len]
    } else {
        gain_head
    };
    let input_grad = InputGrad::new::<E, S>(simd, row, sums, length);
    let (dx_head, dx_tail) = E::split_mut::<S>(dx, Stores::Cached);
    let (gain_sums_head, gain_sums_tail) = <T<E>>::split_mut::<S>(gain_sums);
    let (bias_sums_head, bias_sums_tail) = <T<E>>::split_mut::<S>(bias_sums);
    let mut out = PassB::<E, S> {
        gain: gain_head,
        dx: E::first_mut(dx_head, len),
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
    let (row_x, row_dy) = (E::first(row.x, len), E::first(row.dy, len));
    // Pass B at vector `k`.
    macro_rules! pass_b {
        ($k:expr) => {{
            let (x, dy) = (E::load(simd, &row_x, $k), E::load(simd, &row_dy, $k));
            grad_at::<E, S, V, PLAIN>(simd, $k, x, dy, &input_grad, &mut out)
        }};
    }
    let next_sums = match next {
        Some(next) => {
            let (next_x, next_dy) = (E::first(next.x, len), E::first(next.dy, len));
            let next_hi = T::<E>::splat(simd, next.stats.hi);
            let (sum_g, sum_g_deviation) = sum_and_dot!(T<E>, simd, len, |k| {
                pass_b!(k);
                let dy = E::load(simd, &next_dy, k);
                let g = if V::HAS_GAIN {
                    T::<E>::mul_vectors(simd, gain_head[k], dy)
                } else {
                    dy
                };
                (g, g, T::<E>::sub_vectors(simd, E::load(simd, &next_x, k), next_hi))
            }, tail: next.x_tail.len() => tail_terms::<E, S, V>(simd, &next, gain_tail, next_hi));
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
            .x_hat::<T<E>, S>(simd, E::load_partial(simd, row.x_tail));
        let dy = E::load_partial(simd, row.dy_tail);
        let g = if V::HAS_GAIN {
            T::<E>::mul_vectors(simd, T::<E>::load_partial(simd, gain_tail), dy)
        } else {
            dy
        };
        E::store_partial(simd, dx_tail, input_grad.dx::<T<E>, S>(simd, g, x_hat));
        if V::GAIN_GRAD {
            let sum = T::<E>::load_partial(simd, gain_sums_tail);
            T::<E>::store_partial(
                simd,
                gain_sums_tail,
                T::<E>::mul_add_vectors(simd, dy, x_hat, sum),
            );
        }
        if V::BIAS_GRAD {
            let sum = T::<E>::load_partial(simd, bias_sums_tail);
            T::<E>::store_partial(simd, bias_sums_tail, T::<E>::add_vectors(simd, sum, dy));
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
