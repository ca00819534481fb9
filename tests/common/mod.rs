//! Slow, obviously correct references and seeded data for the tests.
//!
//! The references are written straight from the formulas in f64, independently of the crate's
//! kernels, and sum with `f64` pairwise-free loops over at most a few thousand terms, which is
//! exact to ~1e-13 relative: far below the f32 tolerances they check.

#![allow(dead_code)]

use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Forward of one row in f64: `gain · (x − μ)/√(σ² + ε) + bias`.
pub fn reference_forward_row(
    x: &[f64],
    gain: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv_std = 1.0 / (variance + eps).sqrt();
    (0..x.len())
        .map(|i| {
            let x_hat = (x[i] - mean) * inv_std;
            gain.map_or(1.0, |g| g[i]) * x_hat + bias.map_or(0.0, |b| b[i])
        })
        .collect()
}

/// Backward of one row in f64 from the textbook formula, returning `(dx, dyᵢ·x̂ᵢ, dyᵢ)`.
pub fn reference_backward_row(
    x: &[f64],
    gain: Option<&[f64]>,
    eps: f64,
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv_std = 1.0 / (variance + eps).sqrt();
    let x_hat: Vec<f64> = x.iter().map(|v| (v - mean) * inv_std).collect();
    let g: Vec<f64> = (0..x.len())
        .map(|i| gain.map_or(1.0, |gain| gain[i]) * dy[i])
        .collect();
    let mean_g = g.iter().sum::<f64>() / n;
    let mean_g_x_hat = g.iter().zip(&x_hat).map(|(g, h)| g * h).sum::<f64>() / n;
    let dx = (0..x.len())
        .map(|i| inv_std * (g[i] - mean_g - x_hat[i] * mean_g_x_hat))
        .collect();
    let dgain = (0..x.len()).map(|i| dy[i] * x_hat[i]).collect();
    (dx, dgain, dy.to_vec())
}

/// Forward of a 2-D batch in f64, row by row.
pub fn reference_forward(
    x: &Array2<f64>,
    gain: Option<&Array1<f64>>,
    bias: Option<&Array1<f64>>,
    eps: f64,
) -> Array2<f64> {
    let gain = gain.map(|g| g.to_vec());
    let bias = bias.map(|b| b.to_vec());
    let mut out = Array2::zeros(x.raw_dim());
    for (row, mut out_row) in x.rows().into_iter().zip(out.rows_mut()) {
        let y = reference_forward_row(&row.to_vec(), gain.as_deref(), bias.as_deref(), eps);
        out_row.assign(&Array1::from(y));
    }
    out
}

/// A seeded generator, so every failure reproduces.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `rows × cols` samples of `offset + scale · N(0, 1)`.
pub fn normal_matrix(
    rng: &mut StdRng,
    rows: usize,
    cols: usize,
    offset: f64,
    scale: f64,
) -> Array2<f64> {
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    Array2::from_shape_simple_fn((rows, cols), || offset + scale * normal.sample(rng))
}

/// A vector of uniform samples in `low..high`.
pub fn uniform_vector(rng: &mut StdRng, len: usize, low: f64, high: f64) -> Array1<f64> {
    Array1::from_shape_simple_fn(len, || rng.random_range(low..high))
}

/// Largest absolute value, ignoring nothing (NaN makes it NaN).
pub fn max_abs<'a>(values: impl IntoIterator<Item = &'a f64>) -> f64 {
    values.into_iter().fold(
        0.0,
        |m: f64, v| if v.is_nan() { f64::NAN } else { m.max(v.abs()) },
    )
}

/// Largest absolute difference between two equally long sequences.
pub fn max_abs_diff<'a>(
    a: impl IntoIterator<Item = &'a f64>,
    b: impl IntoIterator<Item = &'a f64>,
) -> f64 {
    a.into_iter()
        .zip(b)
        .fold(0.0, |m: f64, (a, b)| m.max((a - b).abs()))
}

/// Checks `analytic` = ∂L/∂x for `L = Σ w ⊙ f(x)` by central differences, element by element:
/// the element of row `r` (rows along the last axis) is stepped by `step(r)` and must agree
/// within `tolerance(r)`. Returns the first disagreement.
pub fn check_input_gradient(
    f: impl Fn(&ndarray::ArrayD<f64>) -> ndarray::ArrayD<f64>,
    x: &ndarray::ArrayD<f64>,
    w: &ndarray::ArrayD<f64>,
    analytic: &ndarray::ArrayD<f64>,
    step: impl Fn(usize) -> f64,
    tolerance: impl Fn(usize) -> f64,
) -> Result<(), String> {
    let dim = *x.shape().last().expect("at least one axis");
    let loss = |x: &ndarray::ArrayD<f64>| (f(x) * w).sum();
    let mut perturbed = x.as_standard_layout().to_owned();
    let analytic = analytic.as_standard_layout();
    let analytic = analytic.as_slice().expect("standard layout");
    for (flat, &expected) in analytic.iter().enumerate() {
        let row = flat / dim;
        let h = step(row);
        let original = perturbed.as_slice().expect("standard layout")[flat];
        // The steps actually taken: x ± h rounds to the grid of x, which matters when h is tiny
        // against |x| (a row with a large offset and a small spread).
        let (up, down) = (original + h, original - h);
        perturbed.as_slice_mut().expect("standard layout")[flat] = up;
        let plus = loss(&perturbed);
        perturbed.as_slice_mut().expect("standard layout")[flat] = down;
        let minus = loss(&perturbed);
        perturbed.as_slice_mut().expect("standard layout")[flat] = original;
        let numeric = (plus - minus) / (up - down);
        if (expected - numeric).abs() > tolerance(row) {
            return Err(format!("dx[{flat}]: analytic {expected} numeric {numeric}"));
        }
    }
    Ok(())
}

/// Parameter-gradient accumulators after one `backward_into` over `rows × dim` of seeded data
/// (parameters and data near 1, `dy` standard normal), starting from `start` (gain and bias
/// alike): `[contiguous, strided]`, each `(gain, bias)`. The strided ones are every second
/// value of a longer array, which the crate adds to a value at a time; the contiguous ones it
/// converts and adds a slice at a time. Both must hold the same bits.
pub fn accumulated_both_ways<A: layernorm::Element>(
    rows: usize,
    dim: usize,
    start: &Array1<A>,
) -> [(Array1<A>, Array1<A>); 2] {
    use num_traits::{FromPrimitive, Zero};
    let mut rng = rng(rows as u64 * 1000 + dim as u64);
    let of = |v: f64| A::from_stat(A::Stat::from_f64(v).expect("finite"));
    let x = normal_matrix(&mut rng, rows, dim, 1.0, 1.0).mapv(of);
    let dy = normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(of);
    let param = |values: Array1<f64>| values.mapv(of);
    let ln = layernorm::LayerNorm::from_params(
        param(uniform_vector(&mut rng, dim, 0.5, 1.5)),
        param(uniform_vector(&mut rng, dim, -0.5, 0.5)),
        1e-5,
    )
    .expect("valid");
    let (_, stats) = ln.forward_with_stats(&x).expect("valid");
    let mut dx = x.clone();
    let (mut gain, mut bias) = (start.clone(), start.clone());
    ln.backward_into(&x, &stats, &dy, &mut dx, Some(&mut gain), Some(&mut bias))
        .expect("valid");
    let spread = |values: &Array1<A>| {
        let mut wide = Array1::from_elem(2 * dim, A::from_stat(A::Stat::zero()));
        wide.slice_mut(ndarray::s![..;2]).assign(values);
        wide
    };
    let (mut gain_wide, mut bias_wide) = (spread(start), spread(start));
    ln.backward_into(
        &x,
        &stats,
        &dy,
        &mut dx,
        Some(&mut gain_wide.slice_mut(ndarray::s![..;2])),
        Some(&mut bias_wide.slice_mut(ndarray::s![..;2])),
    )
    .expect("valid");
    let every_second = |wide: Array1<A>| wide.slice(ndarray::s![..;2]).to_owned();
    [
        (gain, bias),
        (every_second(gain_wide), every_second(bias_wide)),
    ]
}

/// Accumulator starting values for [`accumulated_both_ways`]: ordinary values of both signs,
/// zeros of both signs, the extremes, infinities and NaN, repeated over `dim` values.
pub fn accumulator_starts<A: layernorm::Element>(dim: usize) -> Array1<A> {
    use num_traits::{Float, FromPrimitive, Zero};
    let specials = [
        A::Stat::from_f64(0.375).expect("finite"),
        A::Stat::from_f64(-1234.5).expect("finite"),
        A::Stat::zero(),
        -A::Stat::zero(),
        A::Stat::max_value(),
        A::Stat::min_positive_value(),
        A::Stat::infinity(),
        A::Stat::neg_infinity(),
        A::Stat::nan(),
    ];
    Array1::from_shape_fn(dim, |i| A::from_stat(specials[i % specials.len()]))
}

/// Whether two arrays hold the same values bit for bit: the sign of zero and NaN's sign and
/// payload count (compared through the exact widening to f64).
pub fn same_bits<A: layernorm::Element>(a: &Array1<A>, b: &Array1<A>) -> bool {
    use num_traits::ToPrimitive;
    let bits = |value: &A| value.to_stat().to_f64().expect("a float").to_bits();
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| bits(x) == bits(y))
}

/// [`accumulated_both_ways`] for calls of one gradient block (up to 64 rows) and of several,
/// rows of one value, of one vector and a bit, and of many: contiguous and strided
/// accumulators end with the same bits, and the call added something.
pub fn check_accumulator_layouts<A: layernorm::Element>(name: &str) {
    for (rows, dim) in [(1, 1), (1, 1000), (7, 65), (64, 300), (65, 300), (200, 129)] {
        let start = accumulator_starts::<A>(dim);
        let [(gain, bias), (gain_strided, bias_strided)] = accumulated_both_ways(rows, dim, &start);
        assert!(same_bits(&gain, &gain_strided), "{name} gain {rows}x{dim}");
        assert!(same_bits(&bias, &bias_strided), "{name} bias {rows}x{dim}");
        assert!(
            !same_bits(&bias, &start),
            "{name} {rows}x{dim}: nothing added"
        );
    }
}
