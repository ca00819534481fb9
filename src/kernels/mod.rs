//! Row kernels on plain slices. They know nothing of ndarray and validate nothing: callers
//! pass whole rows (`len` a multiple of `dim`) and matching buffers.
//!
//! `scalar` is the specification; the functions re-exported here are what the rest of the
//! crate calls, so a faster implementation can take over without the callers changing.

mod scalar;

pub(crate) use scalar::{backward_rows, forward_rows};

/// Where the forward pass stores each row's statistics: one entry per row.
#[derive(Debug)]
pub(crate) struct RowStatsOut<'a, S> {
    pub(crate) mean: &'a mut [S],
    pub(crate) inv_std: &'a mut [S],
}

/// The per-feature affine parameters of a layer, borrowed as slices of length `dim`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine<'a, A> {
    pub(crate) gain: Option<&'a [A]>,
    pub(crate) bias: Option<&'a [A]>,
}
