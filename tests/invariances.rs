//! The invariances of layer normalization from Table 1 of Ba, Kiros & Hinton (2016), as
//! properties of the crate's forward pass (f64).
//!
//! For summed inputs `a` of one case: `LN(δ·a) = LN(a)` for δ > 0 (exactly when ε is scaled by
//! δ² too, and up to ε otherwise), and `LN(a + c·1) = LN(a)`. For a linear layer `a = W·h` in
//! front, the same holds for re-scaling the whole weight matrix (`W → δW`) and re-centering it
//! (`W → W + 1·γᵀ`, one vector added to every row, which shifts every `aᵢ` by `γ·h`).
//! Re-scaling a single weight vector (one row of W) is *not* an invariance; a test shows that
//! the check would notice.
//!
//! Tolerances: outputs are O(|gain| + |bias|) ≤ 3; the f64 computation of `x − μ` loses
//! ulp(max |x|)/σ, so errors are bounded by ~1e-15 · (1 + max|x|/σ) · √n; we allow 1e-11 · that.

mod common;

use layernorm::LayerNorm;
use ndarray::{Array1, Array2, Axis};
use proptest::prelude::*;

fn layer(dim: usize, seed: u64, eps: f64) -> LayerNorm<f64> {
    let mut rng = common::rng(seed);
    let gain = common::uniform_vector(&mut rng, dim, -2.0, 2.0);
    let bias = common::uniform_vector(&mut rng, dim, -1.0, 1.0);
    LayerNorm::from_params(gain, bias, eps).expect("valid layer")
}

/// Allowed deviation for rows whose inputs reach `magnitude` with spread `spread`.
fn tolerance(magnitude: f64, spread: f64) -> f64 {
    1e-11 * (1.0 + magnitude / spread)
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    common::max_abs_diff(a, b)
}

fn batch(seed: u64, rows: usize, dim: usize) -> Array2<f64> {
    let mut rng = common::rng(seed);
    common::normal_matrix(&mut rng, rows, dim, 0.5, 2.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rescaling_a_single_case_leaves_its_output_unchanged(
        seed in any::<u64>(), rows in 1usize..6, dim in 2usize..40,
        case_index in 0usize..6, log_delta in -3.0..3.0f64, eps in prop_oneof![Just(0.0), 1e-6..1e-1f64],
    ) {
        let case_index = case_index % rows;
        let delta = 10f64.powf(log_delta);
        let x = batch(seed, rows, dim);
        let mut scaled = x.clone();
        scaled.row_mut(case_index).mapv_inplace(|v| v * delta);

        // Exact invariance of the re-scaled case: ε scales with δ² as the variance does.
        let y = layer(dim, seed, eps).forward(&x).expect("valid");
        let y_scaled = layer(dim, seed, eps * delta * delta).forward(&scaled).expect("valid");
        let difference = common::max_abs_diff(y.row(case_index), y_scaled.row(case_index));
        prop_assert!(difference <= tolerance(1.0, 1.0), "{}", difference);
        // With the same ε: other cases are untouched, bit for bit, and the re-scaled case is
        // unchanged up to ε (exactly so for ε = 0).
        let y_same_eps = layer(dim, seed, eps).forward(&scaled).expect("valid");
        for row in (0..rows).filter(|&r| r != case_index) {
            prop_assert_eq!(y.row(row), y_same_eps.row(row));
        }
        if eps == 0.0 {
            prop_assert!(max_abs_diff(&y, &y_same_eps) <= tolerance(1.0, 1.0));
        }
    }

    #[test]
    fn recentering_a_single_case_leaves_its_output_unchanged(
        seed in any::<u64>(), rows in 1usize..6, dim in 1usize..40,
        case_index in 0usize..6, shift in -1e4..1e4f64, eps in prop_oneof![Just(1e-5), 1e-6..1.0f64],
    ) {
        let case_index = case_index % rows;
        let x = batch(seed, rows, dim);
        let mut shifted = x.clone();
        shifted.row_mut(case_index).mapv_inplace(|v| v + shift);
        let ln = layer(dim, seed, eps);
        let y = ln.forward(&x).expect("valid");
        let y_shifted = ln.forward(&shifted).expect("valid");
        let spread = x.row(case_index).std(0.0) + eps.sqrt();
        prop_assert!(max_abs_diff(&y, &y_shifted) <= tolerance(shift.abs() + 10.0, spread));
    }

    #[test]
    fn rescaling_and_recentering_the_weight_matrix_leave_outputs_unchanged(
        seed in any::<u64>(), batch_size in 1usize..5, inputs in 1usize..12, dim in 2usize..24,
        log_delta in -2.0..2.0f64, gamma_scale in 0.0..100.0f64,
    ) {
        let mut rng = common::rng(seed);
        let h = common::normal_matrix(&mut rng, batch_size, inputs, 0.0, 1.0);
        let weights = common::normal_matrix(&mut rng, dim, inputs, 0.0, 1.0);
        let gamma = common::uniform_vector(&mut rng, inputs, -gamma_scale, gamma_scale);
        let ln = layer(dim, seed, 0.0);
        let summed = |w: &Array2<f64>| h.dot(&w.t());
        let y = ln.forward(&summed(&weights)).expect("valid");
        let a = summed(&weights);
        let spread = a.std_axis(Axis(1), 0.0).iter().fold(f64::INFINITY, |m: f64, &s| m.min(s));
        prop_assume!(spread > 1e-6);

        let delta = 10f64.powf(log_delta);
        let y_rescaled = ln.forward(&summed(&(&weights * delta))).expect("valid");
        prop_assert!(max_abs_diff(&y, &y_rescaled) <= tolerance(1.0, 1.0) * dim as f64);

        let recentered = &weights + &gamma.view().insert_axis(Axis(0));
        let magnitude = gamma_scale * inputs as f64 * 4.0 + 10.0;
        let y_recentered = ln.forward(&summed(&recentered)).expect("valid");
        prop_assert!(max_abs_diff(&y, &y_recentered) <= tolerance(magnitude, spread) * dim as f64);
    }
}

#[test]
fn rescaling_one_weight_vector_is_not_an_invariance() {
    // Table 1 lists weight-vector re-scaling as *not* invariant for layer normalization; the
    // same comparison as above must see a large change.
    let mut rng = common::rng(7);
    let h = common::normal_matrix(&mut rng, 3, 5, 0.0, 1.0);
    let weights = common::normal_matrix(&mut rng, 6, 5, 0.0, 1.0);
    let ln = layer(6, 7, 0.0);
    let y = ln.forward(&h.dot(&weights.t())).expect("valid");
    let mut one_row_scaled = weights.clone();
    one_row_scaled.row_mut(2).mapv_inplace(|v| v * 3.0);
    let y_changed = ln.forward(&h.dot(&one_row_scaled.t())).expect("valid");
    assert!(max_abs_diff(&y, &y_changed) > 0.1);
}

#[test]
fn recentering_by_a_per_feature_vector_is_not_an_invariance() {
    // A dataset re-centering (x → x + c with a different c per feature) changes the output.
    let x = batch(8, 4, 6);
    let ln = layer(6, 8, 1e-5);
    let offsets = Array1::linspace(-1.0, 1.0, 6);
    let moved = &x + &offsets.view().insert_axis(Axis(0));
    let difference = max_abs_diff(
        &ln.forward(&x).expect("valid"),
        &ln.forward(&moved).expect("valid"),
    );
    assert!(difference > 0.01, "{difference}");
}
