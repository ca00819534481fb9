//! Row kernels on plain slices. They know nothing of ndarray and validate nothing: callers
//! pass whole rows (lengths a multiple of `dim`) and matching buffers.
//!
//! `scalar` is the specification; `simd` is the fast path for `f32` and `f64`, chosen per
//! element type through [`Element`]'s kernel hooks and per CPU at run time.

#[cfg(feature = "half")]
pub(crate) mod half;
pub(crate) mod scalar;
pub(crate) mod simd;

use crate::element::Element;

/// What a layer does to a row: its per-feature gain and bias (slices of length `dim`), and
/// whether the row is centered first (LayerNorm) or only scaled by its root mean square
/// (RmsNorm, where the "mean" of the statistics is 0 and `σ² = mean(x²)`).
#[derive(Debug)]
pub struct Params<'a, A> {
    pub(crate) gain: Option<&'a [A]>,
    pub(crate) bias: Option<&'a [A]>,
    pub(crate) centered: bool,
}

impl<A> Clone for Params<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Params<'_, A> {}

/// Where the forward pass stores each row's statistics: one entry per row.
#[derive(Debug)]
pub struct RowStatsOut<'a, S> {
    pub(crate) mean: &'a mut [S],
    pub(crate) inv_std: &'a mut [S],
}

/// The read-only inputs of the backward pass: whole rows of `x` and `dy`, each row's saved
/// statistics, the layer's gain and eps.
#[derive(Debug)]
pub struct BackwardRows<'a, A: Element> {
    pub(crate) x: &'a [A],
    pub(crate) dy: &'a [A],
    pub(crate) means: &'a [A::Stat],
    pub(crate) inv_stds: &'a [A::Stat],
    pub(crate) gain: Option<&'a [A]>,
    pub(crate) centered: bool,
    pub(crate) eps: A::Stat,
    pub(crate) dim: usize,
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
        let dim = self.dim;
        BackwardRows {
            x: &self.x[start * dim..end * dim],
            dy: &self.dy[start * dim..end * dim],
            means: &self.means[start..end],
            inv_stds: &self.inv_stds[start..end],
            ..*self
        }
    }
}

/// Forward pass over whole rows of length `dim`; with `x = None` the input is read from `out`
/// and overwritten. When `stats` is given, each row's mean and inv_std are stored in it.
pub(crate) fn forward_rows<A: Element>(
    x: Option<&[A]>,
    out: &mut [A],
    dim: usize,
    params: Params<'_, A>,
    eps: A::Stat,
    stats: Option<RowStatsOut<'_, A::Stat>>,
) {
    A::forward_rows(x, out, dim, params, eps, stats);
}

/// Backward pass over whole rows: writes `dx` and adds the rows' `dyᵢ · x̂ᵢ` into
/// `partial_gain` and `dyᵢ` into `partial_bias` when given, in an order fixed by the data
/// alone. `scratch` is working memory the kernel may grow and reuse.
pub(crate) fn backward_rows<A: Element>(
    rows: BackwardRows<'_, A>,
    dx: &mut [A],
    partial_gain: Option<&mut [A::Stat]>,
    partial_bias: Option<&mut [A::Stat]>,
    scratch: &mut Vec<A>,
) {
    A::backward_rows(rows, dx, partial_gain, partial_bias, scratch);
}

#[cfg(test)]
mod tests;
