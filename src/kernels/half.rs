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

impl HalfElement for half::f16 {
    /// The `half` crate's slice conversions: F16C instructions where the CPU has them.
    fn widen(values: &[Self], into: &mut [f32]) {
        values.convert_to_f32_slice(into);
    }

    fn narrow(values: &[f32], into: &mut [Self]) {
        into.convert_from_f32_slice(values);
    }
}

/// bf16 is the upper half of an f32, so both conversions are integer operations the compiler
/// vectorizes, here for the widest instruction set the kernels use (the `half` crate converts
/// bf16 slices one element at a time, or in SSE2 lanes). Each gives the same bits as `half`'s
/// `bf16::to_f32` / `bf16::from_f32` (`tests` below compare them).
impl HalfElement for half::bf16 {
    fn widen(values: &[Self], into: &mut [f32]) {
        simd::arch().dispatch(WidenBf16 { values, into });
    }

    fn narrow(values: &[f32], into: &mut [Self]) {
        simd::arch().dispatch(NarrowBf16 { values, into });
    }
}

/// bf16 to f32, compiled for each instruction set by pulp's dispatch.
struct WidenBf16<'a> {
    values: &'a [half::bf16],
    into: &'a mut [f32],
}

impl pulp::WithSimd for WidenBf16<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (wide, &narrow) in self.into.iter_mut().zip(self.values) {
            *wide = bf16_to_f32(narrow.to_bits());
        }
    }
}

/// f32 to bf16, compiled for each instruction set by pulp's dispatch.
struct NarrowBf16<'a> {
    values: &'a [f32],
    into: &'a mut [half::bf16],
}

impl pulp::WithSimd for NarrowBf16<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for (narrow, &wide) in self.into.iter_mut().zip(self.values) {
            *narrow = half::bf16::from_bits(f32_to_bf16(wide));
        }
    }
}

/// A bf16's bits as f32: shifted into the upper half; a NaN is made quiet.
#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    let quiet = if bits & 0x7FFF > 0x7F80 { 0x0040 } else { 0 };
    f32::from_bits(u32::from(bits | quiet) << 16)
}

/// An f32 rounded to the nearest bf16, ties to even (a carry out of the mantissa gives the next
/// exponent, and ±Inf past the largest finite value); a NaN keeps its upper bits, made quiet.
#[inline(always)]
fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let upper = bits >> 16;
    // Round up when the first dropped bit is set and either a later dropped bit or the kept
    // last bit is: to nearest, ties to even.
    let round_up = (bits & 0x8000 != 0) & (bits & 0x1_7FFF != 0);
    let rounded = upper + u32::from(round_up);
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    (if is_nan { upper | 0x0040 } else { rounded }) as u16
}

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

#[cfg(test)]
mod tests {
    use super::{bf16_to_f32, f32_to_bf16};
    use half::bf16;

    /// Every bf16, and f32 values across the whole bit range (every 4099th pattern, plus the
    /// ones around rounding ties, ±0, ±Inf, NaNs and the largest values): the same bits as the
    /// `half` crate's conversions.
    #[test]
    fn bf16_conversions_match_the_half_crate() {
        for bits in 0..=u16::MAX {
            let expected = bf16::from_bits(bits).to_f32().to_bits();
            assert_eq!(bf16_to_f32(bits).to_bits(), expected, "bf16 {bits:#06x}");
        }
        let ties = (0..=u16::MAX).flat_map(|upper| {
            let base = u32::from(upper) << 16;
            [
                base,
                base | 0x7FFF,
                base | 0x8000,
                base | 0x8001,
                base | 0xFFFF,
            ]
        });
        let spread = (0..=u32::MAX).step_by(4099);
        let special = [
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            0.0,
        ]
        .map(f32::to_bits);
        for bits in ties.chain(spread).chain(special) {
            let value = f32::from_bits(bits);
            let expected = bf16::from_f32(value).to_bits();
            assert_eq!(f32_to_bf16(value), expected, "f32 {bits:#010x}");
        }
    }
}
