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
