//! f16 and bf16 rows: widened to f32 a chunk at a time, run through the f32 kernels (SIMD where
//! the CPU has it), and rounded back to half once. Statistics are kept in f32; the f32 kernels'
//! f64 statistics and gradient sums are rounded to f32 on the way out, and widened exactly on
//! the way in.

use super::{simd, BackwardRows, Params, RowStatsOut};
use crate::element::Element;
use half::slice::HalfFloatSliceExt;

/// A half-precision element: bulk conversions to and from f32.
pub(crate) trait HalfElement: Element<Stat = f32> {
    fn widen(values: &[Self], into: &mut [f32]);
    fn narrow(values: &[f32], into: &mut [Self]);
}

macro_rules! half_element {
    ($half:ty) => {
        impl HalfElement for $half {
            fn widen(values: &[Self], into: &mut [f32]) {
                values.convert_to_f32_slice(into);
            }

            fn narrow(values: &[f32], into: &mut [Self]) {
                into.convert_from_f32_slice(values);
            }
        }
    };
}

half_element!(half::f16);
half_element!(half::bf16);

/// Elements converted per chunk (whole rows, at least one).
const CHUNK_ELEMENTS: usize = 1 << 13;

fn widened<H: HalfElement>(values: Option<&[H]>) -> Option<Vec<f32>> {
    values.map(|values| {
        let mut wide = vec![0.0; values.len()];
        H::widen(values, &mut wide);
        wide
    })
}

/// Forward pass over whole rows of half data; see `scalar::forward_rows`.
pub(crate) fn forward_rows<H: HalfElement>(
    x: Option<&[H]>,
    out: &mut [H],
    dim: usize,
    params: Params<'_, H>,
    eps: f32,
    mut stats: Option<RowStatsOut<'_, f32>>,
) {
    let (gain, bias) = (widened(params.gain), widened(params.bias));
    let params = Params {
        gain: gain.as_deref(),
        bias: bias.as_deref(),
        centered: params.centered,
    };
    let chunk_rows = (CHUNK_ELEMENTS / dim).max(1);
    let mut x_wide = vec![0.0f32; chunk_rows * dim];
    let mut out_wide = vec![0.0f32; chunk_rows * dim];
    let (mut means, mut inv_stds) = (vec![0.0f64; chunk_rows], vec![0.0f64; chunk_rows]);
    for (chunk, out_chunk) in out.chunks_mut(chunk_rows * dim).enumerate() {
        let rows = out_chunk.len() / dim;
        let (x_wide, out_wide) = (
            &mut x_wide[..out_chunk.len()],
            &mut out_wide[..out_chunk.len()],
        );
        match x {
            Some(x) => H::widen(&x[chunk * chunk_rows * dim..][..out_chunk.len()], x_wide),
            None => H::widen(out_chunk, x_wide),
        }
        let wide_stats = RowStatsOut {
            mean: &mut means[..rows],
            inv_std: &mut inv_stds[..rows],
        };
        simd::forward_rows(
            Some(x_wide),
            out_wide,
            dim,
            params,
            f64::from(eps),
            Some(wide_stats),
        );
        H::narrow(out_wide, out_chunk);
        if let Some(stats) = stats.as_mut() {
            let first = chunk * chunk_rows;
            for row in 0..rows {
                stats.mean[first + row] = means[row] as f32;
                stats.inv_std[first + row] = inv_stds[row] as f32;
            }
        }
    }
}

/// Backward pass over whole rows of half data; see `scalar::backward_rows`. Chunks are whole
/// multiples of the f32 kernel's folding period, so the sums come out as from one call.
pub(crate) fn backward_rows<H: HalfElement>(
    rows: BackwardRows<'_, H>,
    dx: &mut [H],
    partial_gain: Option<&mut [f32]>,
    partial_bias: Option<&mut [f32]>,
) {
    let dim = rows.dim;
    let gain = widened(rows.gain);
    let chunk_rows = (CHUNK_ELEMENTS / dim)
        .max(1)
        .next_multiple_of(simd::FOLD_ROWS);
    let chunk = chunk_rows * dim;
    let (mut x, mut dy, mut dx_wide) = (
        vec![0.0f32; chunk],
        vec![0.0f32; chunk],
        vec![0.0f32; chunk],
    );
    let (mut means, mut inv_stds) = (vec![0.0f64; chunk_rows], vec![0.0f64; chunk_rows]);
    let mut sums_gain = partial_gain.as_ref().map(|_| vec![0.0f64; dim]);
    let mut sums_bias = partial_bias.as_ref().map(|_| vec![0.0f64; dim]);
    let mut scratch = Vec::new();
    for (index, dx_chunk) in dx.chunks_mut(chunk).enumerate() {
        let count = dx_chunk.len() / dim;
        let first = index * chunk_rows;
        let part = rows.rows_range(first, first + count);
        let (x, dy, dx_wide) = (
            &mut x[..dx_chunk.len()],
            &mut dy[..dx_chunk.len()],
            &mut dx_wide[..dx_chunk.len()],
        );
        H::widen(part.x, x);
        H::widen(part.dy, dy);
        for (wide, &narrow) in means.iter_mut().zip(part.means) {
            *wide = f64::from(narrow);
        }
        for (wide, &narrow) in inv_stds.iter_mut().zip(part.inv_stds) {
            *wide = f64::from(narrow);
        }
        let wide_rows = BackwardRows {
            x,
            dy,
            means: &means[..count],
            inv_stds: &inv_stds[..count],
            gain: gain.as_deref(),
            centered: rows.centered,
            eps: f64::from(rows.eps),
            dim,
        };
        simd::backward_rows(
            wide_rows,
            dx_wide,
            sums_gain.as_deref_mut(),
            sums_bias.as_deref_mut(),
            &mut scratch,
        );
        H::narrow(dx_wide, dx_chunk);
    }
    for (partial, sums) in [(partial_gain, sums_gain), (partial_bias, sums_bias)] {
        if let (Some(partial), Some(sums)) = (partial, sums) {
            for (total, sum) in partial.iter_mut().zip(sums) {
                *total += sum as f32;
            }
        }
    }
}
