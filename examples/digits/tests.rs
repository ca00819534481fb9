//! The comparison rests on the data being what it claims and on verified gradients: the batch
//! norm baseline's backward and each whole network's backward against central finite
//! differences of the loss, in f64.

use super::batch_norm::BatchNorm;
use super::data;
use super::mlp::{softmax_cross_entropy, Mlp, Variant};
use ndarray::{Array2, Axis};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Step of the central differences, and the agreement asked of them: the losses are smooth
/// and O(1), so the differences are accurate to ~1e-9; a wrong term is off by O(|gradient|).
const STEP: f64 = 1e-6;

fn close(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 1e-6 * (1.0 + analytic.abs().max(numeric.abs()))
}

fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0..1.0))
}

#[test]
fn the_loader_yields_1797_images_of_64_pixels_in_ten_classes() {
    let digits = data::load();
    assert_eq!(digits.images.dim(), (1797, 64));
    assert_eq!(digits.labels.len(), 1797);
    assert!(digits.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
    assert!(
        digits.images.iter().any(|&p| p == 1.0),
        "scaled by 16, not by the maximum"
    );
    for class in 0..10 {
        let count = digits.labels.iter().filter(|&&l| l == class).count();
        assert!(
            (170..=190).contains(&count),
            "class {class}: {count} images"
        );
    }
    let split = data::split(&digits, 450, 0);
    assert_eq!((split.train.len(), split.test.len()), (1347, 450));
    let total: f32 = split.train.images.sum() + split.test.images.sum();
    assert!(
        (total - digits.images.sum()).abs() <= 1e-2 * total,
        "every image used once"
    );
}

#[test]
fn batch_norm_backward_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, dim) = (5, 4);
    let x = random_matrix(&mut rng, rows, dim) * 3.0 + 1.0;
    let weights = random_matrix(&mut rng, rows, dim);
    let mut norm = BatchNorm::<f64>::new(dim);
    norm.gain = random_matrix(&mut rng, 1, dim).remove_axis(Axis(0)) + 1.0;
    norm.bias = random_matrix(&mut rng, 1, dim).remove_axis(Axis(0));
    // L = Σ weights ⊙ BN(x): dy = weights.
    let loss = |norm: &mut BatchNorm<f64>, x: &Array2<f64>| {
        (norm.forward_train(x.view()).0 * &weights).sum()
    };
    let (_, cache) = norm.forward_train(x.view());
    let (dx, dgain, dbias) = norm.backward(&cache, weights.view());
    for ((r, c), &expected) in dx.indexed_iter() {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[[r, c]] += STEP;
        down[[r, c]] -= STEP;
        let numeric = (loss(&mut norm, &up) - loss(&mut norm, &down)) / (2.0 * STEP);
        assert!(
            close(expected, numeric),
            "dx[{r}, {c}]: {expected} vs {numeric}"
        );
    }
    for (j, (&expected_gain, &expected_bias)) in dgain.iter().zip(&dbias).enumerate() {
        for (is_gain, expected) in [(true, expected_gain), (false, expected_bias)] {
            let mut shifted = |delta: f64| {
                let parameter = if is_gain {
                    &mut norm.gain
                } else {
                    &mut norm.bias
                };
                parameter[j] += delta;
                let value = loss(&mut norm, &x);
                let parameter = if is_gain {
                    &mut norm.gain
                } else {
                    &mut norm.bias
                };
                parameter[j] -= delta;
                value
            };
            let numeric = (shifted(STEP) - shifted(-STEP)) / (2.0 * STEP);
            assert!(
                close(expected, numeric),
                "gain {is_gain} [{j}]: {expected} vs {numeric}"
            );
        }
    }
}

fn check_network(variant: Variant) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut model = Mlp::<f64>::new(variant, 6, &mut rng);
    // Move every parameter away from its initial value (gains 1, biases 0).
    for mut parameter in model.parameters_mut() {
        parameter.mapv_inplace(|v| v + rng.random_range(-0.3..0.3));
    }
    let images = random_matrix(&mut rng, 7, data::PIXELS).mapv(f64::abs);
    let labels: Vec<usize> = (0..7).map(|i| (i * 3) % data::CLASSES).collect();
    let (_, grads) = model.loss_and_gradients(images.view(), &labels);
    let analytic: Vec<Vec<f64>> = grads
        .values
        .iter()
        .map(|g| g.iter().copied().collect())
        .collect();
    let loss_with = |model: &mut Mlp<f64>, p: usize, i: usize, delta: f64| {
        model.parameters_mut()[p]
            .as_slice_mut()
            .expect("standard layout")[i] += delta;
        let loss = model.loss_and_gradients(images.view(), &labels).0;
        model.parameters_mut()[p]
            .as_slice_mut()
            .expect("standard layout")[i] -= delta;
        loss
    };
    let mut checked = 0;
    for (p, parameter) in analytic.iter().enumerate() {
        for (i, &expected) in parameter.iter().enumerate() {
            let numeric = (loss_with(&mut model, p, i, STEP) - loss_with(&mut model, p, i, -STEP))
                / (2.0 * STEP);
            assert!(
                close(expected, numeric),
                "{variant:?} parameter {p} [{i}]: {expected} vs {numeric}"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        model
            .parameters_mut()
            .iter()
            .map(|p| p.len())
            .sum::<usize>()
    );
}

#[test]
fn network_without_normalization_gradient_matches_finite_differences() {
    check_network(Variant::None);
}

#[test]
fn network_with_batch_norm_gradient_matches_finite_differences() {
    check_network(Variant::BatchNorm);
}

#[test]
fn network_with_layer_norm_gradient_matches_finite_differences() {
    check_network(Variant::LayerNorm);
}

#[test]
fn softmax_cross_entropy_of_equal_scores_is_ln_10() {
    let (loss, grad) = softmax_cross_entropy(&Array2::<f64>::zeros((2, 10)), &[3, 7]);
    assert!((loss - 10f64.ln()).abs() < 1e-12);
    assert!((grad[[0, 3]] - (0.1 - 1.0) / 2.0).abs() < 1e-12);
    assert!((grad[[1, 0]] - 0.1 / 2.0).abs() < 1e-12);
}
