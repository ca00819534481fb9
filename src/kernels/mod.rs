//! Row kernels on plain slices. They know nothing of ndarray and validate nothing: callers
//! pass whole rows (lengths a multiple of `dim`) and matching buffers.
//!
//! A batch of rows is a value: [`ForwardRows`] (what forward reads and writes) and
//! [`BackwardJob`] (what backward reads, [`BackwardRows`], and writes, [`BackwardOut`]). Each
//! knows its number of rows and splits in two at a row, which is all the driver in `rows.rs`
//! needs to cut a batch into tasks. The kernels take the whole value through [`Element`]'s
//! hooks: `scalar` is the specification (and computes the rows the fast path hands it: NaN,
//! ±Inf, overflowing squares); `simd` is the fast path for `f32` and `f64`, the same bits on
//! every instruction set, and for f16 and bf16 through `half`'s conversions in registers;
//! `cpu` holds what safe Rust cannot express (streaming stores, the CPU's f16 conversions).

mod cpu;
#[cfg(feature = "half")]
pub(crate) mod half;
pub(crate) mod scalar;
pub(crate) mod simd;

use crate::element::Element;
#[cfg(all(feature = "half", target_arch = "x86_64"))]
pub(crate) use cpu::f16c;
#[cfg(all(feature = "half", target_arch = "aarch64"))]
pub(crate) use cpu::fcvt;
pub(crate) use cpu::prefetch;
pub(crate) use cpu::stream;
use num_traits::Zero;
pub(crate) use stream::Stores;

/// What a layer does to each row: the row length, the per-feature gain and bias (slices of
/// length `dim`, where present, in the kernels' type `A::Compute`), whether the row is
/// centered first (LayerNorm) or only scaled by its root mean square (RmsNorm, where the
/// "mean" of the statistics is 0 and `σ² = mean(x²)`), and ε in the statistics type; and how
/// the kernels store this call's outputs (the driver chooses from the size of the whole call,
/// see [`Stores::for_output`]) and whether the short-row forward hints its rows ahead (also
/// the driver's choice, see [`prefetch::for_rows`]).
#[derive(Debug)]
pub struct Layer<'a, A: Element> {
    pub(crate) dim: usize,
    pub(crate) gain: Option<&'a [A::Compute]>,
    pub(crate) bias: Option<&'a [A::Compute]>,
    pub(crate) centered: bool,
    pub(crate) eps: A::Stat,
    pub(crate) stores: Stores,
    pub(crate) prefetch: bool,
}

impl<A: Element> Clone for Layer<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: Element> Copy for Layer<'_, A> {}

/// A buffer of rows (or of per-row values) that can be cut in two at an element index.
pub(crate) trait CutAt: Sized {
    fn cut_at(self, at: usize) -> (Self, Self);
}

impl<T> CutAt for &[T] {
    fn cut_at(self, at: usize) -> (Self, Self) {
        self.split_at(at)
    }
}

impl<T> CutAt for &mut [T] {
    fn cut_at(self, at: usize) -> (Self, Self) {
        self.split_at_mut(at)
    }
}

impl<T: CutAt> CutAt for Option<T> {
    fn cut_at(self, at: usize) -> (Self, Self) {
        match self {
            Some(values) => {
                let (left, right) = values.cut_at(at);
                (Some(left), Some(right))
            }
            None => (None, None),
        }
    }
}

/// Where the forward pass stores each row's statistics: one entry per row.
#[derive(Debug)]
pub struct RowStatsOut<'a, S> {
    pub(crate) mean: &'a mut [S],
    pub(crate) inv_std: &'a mut [S],
}

impl<S> CutAt for RowStatsOut<'_, S> {
    fn cut_at(self, row: usize) -> (Self, Self) {
        let (mean_left, mean_right) = self.mean.cut_at(row);
        let (inv_std_left, inv_std_right) = self.inv_std.cut_at(row);
        (
            RowStatsOut {
                mean: mean_left,
                inv_std: inv_std_left,
            },
            RowStatsOut {
                mean: mean_right,
                inv_std: inv_std_right,
            },
        )
    }
}

/// A forward batch: normalizes the rows of `x` into `out` (`x = None`: `out` holds x and is
/// overwritten), storing each row's mean and inv_std into `stats` when it is given.
#[derive(Debug)]
pub struct ForwardRows<'a, A: Element> {
    pub(crate) layer: Layer<'a, A>,
    pub(crate) x: Option<&'a [A]>,
    pub(crate) out: &'a mut [A],
    pub(crate) stats: Option<RowStatsOut<'a, A::Stat>>,
}

impl<A: Element> ForwardRows<'_, A> {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.out.len() / self.layer.dim
    }

    /// Rows `..row` and `row..`.
    pub(crate) fn split_at(self, row: usize) -> (Self, Self) {
        let at = row * self.layer.dim;
        let (x_left, x_right) = self.x.cut_at(at);
        let (out_left, out_right) = self.out.cut_at(at);
        let (stats_left, stats_right) = self.stats.cut_at(row);
        let layer = self.layer;
        (
            ForwardRows {
                layer,
                x: x_left,
                out: out_left,
                stats: stats_left,
            },
            ForwardRows {
                layer,
                x: x_right,
                out: out_right,
                stats: stats_right,
            },
        )
    }
}

/// The read-only inputs of the backward pass: whole rows of `x` and `dy` and each row's saved
/// statistics.
#[derive(Debug)]
pub struct BackwardRows<'a, A: Element> {
    pub(crate) layer: Layer<'a, A>,
    pub(crate) x: &'a [A],
    pub(crate) dy: &'a [A],
    pub(crate) means: &'a [A::Stat],
    pub(crate) inv_stds: &'a [A::Stat],
}

impl<A: Element> Clone for BackwardRows<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: Element> Copy for BackwardRows<'_, A> {}

impl<A: Element> BackwardRows<'_, A> {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.means.len()
    }

    /// Rows `start..end` of every input.
    pub(crate) fn rows_range(&self, start: usize, end: usize) -> Self {
        let dim = self.layer.dim;
        BackwardRows {
            x: &self.x[start * dim..end * dim],
            dy: &self.dy[start * dim..end * dim],
            means: &self.means[start..end],
            inv_stds: &self.inv_stds[start..end],
            ..*self
        }
    }

    /// Rows `..row` and `row..`.
    pub(crate) fn split_at(self, row: usize) -> (Self, Self) {
        (self.rows_range(0, row), self.rows_range(row, self.rows()))
    }
}

/// Parameter-gradient sums in the statistics type: `Σ dyᵢ · x̂ᵢ` into `gain` and `Σ dyᵢ` into
/// `bias`, each where wanted. A kernel adds every row of its batch into one row of `dim` sums;
/// the driver in `rows.rs` gives each block of rows a row of its own (see
/// [`BackwardJob::split_at`]).
#[derive(Debug)]
pub struct GradSums<'a, S> {
    pub(crate) gain: Option<&'a mut [S]>,
    pub(crate) bias: Option<&'a mut [S]>,
}

impl<S> GradSums<'_, S> {
    /// Sets every sum to zero.
    pub(crate) fn clear(&mut self)
    where
        S: Zero + Copy,
    {
        for sums in [self.gain.as_deref_mut(), self.bias.as_deref_mut()]
            .into_iter()
            .flatten()
        {
            sums.fill(S::zero());
        }
    }
}

impl<S> CutAt for GradSums<'_, S> {
    fn cut_at(self, at: usize) -> (Self, Self) {
        let (gain_left, gain_right) = self.gain.cut_at(at);
        let (bias_left, bias_right) = self.bias.cut_at(at);
        (
            GradSums {
                gain: gain_left,
                bias: bias_left,
            },
            GradSums {
                gain: gain_right,
                bias: bias_right,
            },
        )
    }
}

/// What the backward pass writes: `dx` for every row, plus `dsum` (a gradient reaching the
/// normalized input by another path, for the fused residual form) when given, and the
/// parameter-gradient sums.
#[derive(Debug)]
pub struct BackwardOut<'a, A: Element> {
    pub(crate) dx: &'a mut [A],
    pub(crate) dsum: Option<&'a [A]>,
    pub(crate) sums: GradSums<'a, A::Stat>,
}

/// A backward batch: its inputs and its outputs.
#[derive(Debug)]
pub struct BackwardJob<'a, A: Element> {
    pub(crate) rows: BackwardRows<'a, A>,
    pub(crate) out: BackwardOut<'a, A>,
}

impl<A: Element> BackwardJob<'_, A> {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows.rows()
    }

    /// Rows `..row` and `row..`, where `row` is a multiple of `block_rows` and the gradient sums
    /// hold one row of `dim` per block of `block_rows` rows (the driver's per-block layout).
    pub(crate) fn split_at(self, row: usize, block_rows: usize) -> (Self, Self) {
        debug_assert_eq!(row % block_rows, 0, "split inside a gradient block");
        let dim = self.rows.layer.dim;
        let (rows_left, rows_right) = self.rows.split_at(row);
        let (dx_left, dx_right) = self.out.dx.cut_at(row * dim);
        let (dsum_left, dsum_right) = self.out.dsum.cut_at(row * dim);
        let (sums_left, sums_right) = self.out.sums.cut_at(row / block_rows * dim);
        (
            BackwardJob {
                rows: rows_left,
                out: BackwardOut {
                    dx: dx_left,
                    dsum: dsum_left,
                    sums: sums_left,
                },
            },
            BackwardJob {
                rows: rows_right,
                out: BackwardOut {
                    dx: dx_right,
                    dsum: dsum_right,
                    sums: sums_right,
                },
            },
        )
    }
}

/// `target += values`, element by element, in the element type (or the statistics type).
pub(crate) fn add_into<S: Copy + std::ops::Add<Output = S>>(target: &mut [S], values: &[S]) {
    for (sum, &value) in target.iter_mut().zip(values) {
        *sum = *sum + value;
    }
}

#[cfg(test)]
mod tests;
