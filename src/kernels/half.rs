//! f16 and bf16 rows: widened to f32 a chunk at a time, run through the f32 kernels (SIMD where
//! the CPU has it), and rounded back to half once. Statistics are kept in f32; the f32 kernels'
//! f64 statistics and gradient sums are rounded to f32 on the way out, and widened exactly on
//! the way in.

use super::{
    add_into, simd, BackwardJob, BackwardOut, BackwardRows, ForwardRows, GradSums, Layer,
    RowStatsOut, Stores,
};
use crate::element::Element;
use half::slice::HalfFloatSliceExt;

/// A half-precision element: bulk conversions to and from f32.
pub(crate) trait HalfElement: Element<Stat = f32, Compute = f32> {
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

/// The layer as the f32 kernels see it: the parameters are f32 already.
fn wide<H: HalfElement>(layer: Layer<'_, H>) -> Layer<'_, f32> {
    Layer {
        dim: layer.dim,
        gain: layer.gain,
        bias: layer.bias,
        centered: layer.centered,
        eps: f64::from(layer.eps),
        // The f32 rows are a chunk buffer, read back at once.
        stores: Stores::Cached,
    }
}

/// Forward pass over whole rows of half data; see `scalar::forward_rows`.
pub(crate) fn forward_rows<H: HalfElement>(job: ForwardRows<'_, H>) {
    let (layer, x, out, mut stats) = (job.layer, job.x, job.out, job.stats);
    let dim = layer.dim;
    let wide_layer = wide(layer);
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
        simd::forward_rows(ForwardRows {
            layer: wide_layer,
            x: Some(x_wide),
            out: out_wide,
            stats: Some(RowStatsOut {
                mean: &mut means[..rows],
                inv_std: &mut inv_stds[..rows],
            }),
        });
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
pub(crate) fn backward_rows<H: HalfElement>(job: BackwardJob<'_, H>) {
    let (rows, BackwardOut { dx, dsum, sums }) = (job.rows, job.out);
    let dim = rows.layer.dim;
    let wide_layer = wide(rows.layer);
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
    let mut sums_gain = sums.gain.as_ref().map(|_| vec![0.0f64; dim]);
    let mut sums_bias = sums.bias.as_ref().map(|_| vec![0.0f64; dim]);
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
        let wide_job = BackwardJob {
            rows: BackwardRows {
                layer: wide_layer,
                x,
                dy,
                means: &means[..count],
                inv_stds: &inv_stds[..count],
            },
            out: BackwardOut {
                dx: dx_wide,
                dsum: None,
                sums: GradSums {
                    gain: sums_gain.as_deref_mut(),
                    bias: sums_bias.as_deref_mut(),
                },
            },
        };
        simd::backward_rows(wide_job, &mut scratch);
        H::narrow(dx_wide, dx_chunk);
        if let Some(dsum) = dsum {
            add_into(dx_chunk, &dsum[first * dim..][..dx_chunk.len()]);
        }
    }
    for (partial, sums) in [(sums.gain, sums_gain), (sums.bias, sums_bias)] {
        if let (Some(partial), Some(sums)) = (partial, sums) {
            for (total, sum) in partial.iter_mut().zip(sums) {
                *total += sum as f32;
            }
        }
    }
}
