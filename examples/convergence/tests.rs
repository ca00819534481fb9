//! The demonstration rests on verified gradients: the full network's backpropagation through
//! time against central finite differences of its loss, for every parameter of both models.

use super::rnn::Rnn;
use super::task;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Relative-or-absolute agreement. The loss is smooth and O(1) here, so with a step of 1e-5
/// the central difference is accurate to ~1e-9; a wrong term in BPTT is off by O(|gradient|).
fn close(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 1e-6 * (1.0 + analytic.abs().max(numeric.abs()))
}

fn check_model(layer_norm: bool) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut model = Rnn::new(4, 2, layer_norm, 1.0, &mut rng);
    // Move every parameter away from its initial value (gain 1, biases 0) so no term vanishes.
    for parameter in model.parameters_mut() {
        for value in parameter.iter_mut() {
            *value += rng.random_range(-0.5..0.5);
        }
    }
    let batch = task::adding_problem(&mut rng, 5, 3);
    let (_, mut grads) = model.loss_and_gradients(&batch.inputs, &batch.targets);
    let analytic: Vec<Vec<f64>> = grads.parameters_mut().iter().map(|g| g.to_vec()).collect();
    let h = 1e-5;
    let mut checked = 0;
    for (p, parameter) in analytic.iter().enumerate() {
        for (i, &expected) in parameter.iter().enumerate() {
            let original = model.parameters_mut()[p][i];
            model.parameters_mut()[p][i] = original + h;
            let plus = Rnn::loss(&model.forward(&batch.inputs).prediction, &batch.targets);
            model.parameters_mut()[p][i] = original - h;
            let minus = Rnn::loss(&model.forward(&batch.inputs).prediction, &batch.targets);
            model.parameters_mut()[p][i] = original;
            let numeric = (plus - minus) / (2.0 * h);
            assert!(
                close(expected, numeric),
                "layer_norm {layer_norm}: parameter {p}[{i}]: analytic {expected} numeric {numeric}"
            );
            checked += 1;
        }
    }
    // W (16) + U (8) + readout (4) + readout bias (1) + gain and bias (8) or bias (4).
    assert_eq!(checked, if layer_norm { 37 } else { 33 });
}

#[test]
fn layer_normalized_rnn_gradients_match_finite_differences() {
    check_model(true);
}

#[test]
fn plain_rnn_gradients_match_finite_differences() {
    check_model(false);
}
