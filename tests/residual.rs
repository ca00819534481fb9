//! The fused residual step of pre-norm transformer blocks, for LayerNorm and RmsNorm:
//! `sum = x + residual`, `output = norm(sum)` and its backward with the gradient reaching the
//! sum from later blocks.

mod common;

use layernorm::{LayerNorm, NormError, NormStats, RmsNorm, RmsStats};
use ndarray::{array, s, Array1, Array2, Ix1};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn inputs(seed: u64, rows: usize, dim: usize) -> [Array2<f32>; 4] {
    let mut rng = common::rng(seed);
    [(2.0, 1.0), (-1.0, 3.0), (0.0, 1.0), (0.0, 1.0)].map(|(offset, scale)| {
        common::normal_matrix(&mut rng, rows, dim, offset, scale).mapv(|v| v as f32)
    })
}

#[test]
fn fused_forward_equals_adding_then_normalizing() -> Result {
    // Shapes below and above the parallel threshold and the fusion chunk.
    for (rows, dim) in [(3, 5), (40, 1000), (300, 300)] {
        let [x, residual, _, _] = inputs(rows as u64, rows, dim);
        let gain = Array1::linspace(0.5f32, 1.5, dim);
        let ln = LayerNorm::from_params(gain.clone(), Array1::from_elem(dim, 0.25), 1e-5)?;
        let step = ln.forward_residual(&x, &residual)?;
        let sum = &x + &residual;
        assert_eq!(step.sum, sum);
        let (output, stats) = ln.forward_with_stats(&sum)?;
        assert_eq!((&step.output, &step.stats), (&output, &stats));

        let rms = RmsNorm::from_gain(gain, 1e-5)?;
        let step = rms.forward_residual(&x, &residual)?;
        let (output, stats) = rms.forward_with_stats(&sum)?;
        assert_eq!(
            (&step.sum, &step.output, &step.stats),
            (&sum, &output, &stats)
        );
    }
    Ok(())
}

#[test]
fn into_forms_and_strided_inputs_agree() -> Result {
    let [x, residual, _, _] = inputs(7, 6, 16);
    let ln = LayerNorm::<f32>::new(8)?;
    let (x_view, residual_view) = (x.slice(s![.., ..;2]), residual.slice(s![.., 8..]));
    let step = ln.forward_residual(&x_view, &residual_view)?;
    let mut out = Array2::<f32>::zeros((6, 8));
    let mut sum_t = Array2::<f32>::zeros((8, 6));
    let mut stats = NormStats::zeros(Ix1(6));
    let mut sum_view = sum_t.view_mut().reversed_axes();
    ln.forward_residual_into(&x_view, &residual_view, &mut out, &mut sum_view, &mut stats)?;
    assert_eq!(
        (&out, &sum_t.t().to_owned(), &stats),
        (&step.output, &step.sum, &step.stats)
    );

    let rms = RmsNorm::<f32>::new(8)?;
    let mut rms_stats = RmsStats::zeros(Ix1(6));
    let mut sum = Array2::<f32>::zeros((6, 8));
    rms.forward_residual_into(&x_view, &residual_view, &mut out, &mut sum, &mut rms_stats)?;
    assert_eq!(
        rms_stats,
        rms.forward_residual(&x_view, &residual_view)?.stats
    );
    Ok(())
}

#[test]
fn fused_backward_adds_the_downstream_gradient_of_the_sum() -> Result {
    for (rows, dim) in [(4, 7), (200, 500)] {
        let [x, residual, dy, dsum] = inputs(rows as u64 + 1, rows, dim);
        let ln =
            LayerNorm::from_params(Array1::linspace(0.5f32, 1.5, dim), Array1::zeros(dim), 1e-5)?;
        let step = ln.forward_residual(&x, &residual)?;
        let fused = ln.backward_residual(&step.sum, &step.stats, &dy, &dsum)?;
        let plain = ln.backward(&step.sum, &step.stats, &dy)?;
        assert_eq!(fused.input, &plain.input + &dsum);
        assert_eq!((&fused.gain, &fused.bias), (&plain.gain, &plain.bias));

        let mut dinput = Array2::<f32>::zeros((rows, dim));
        let mut gain_grad = Array1::<f32>::zeros(dim);
        ln.backward_residual_into(
            &step.sum,
            &step.stats,
            &dy,
            &dsum,
            &mut dinput,
            Some(&mut gain_grad),
            None,
        )?;
        assert_eq!(Some(&gain_grad), fused.gain.as_ref());
        assert_eq!(dinput, fused.input);

        let rms = RmsNorm::<f32>::new(dim)?;
        let step = rms.forward_residual(&x, &residual)?;
        let fused = rms.backward_residual(&step.sum, &step.stats, &dy, &dsum)?;
        let plain = rms.backward(&step.sum, &step.stats, &dy)?;
        assert_eq!(fused.input, &plain.input + &dsum);
    }
    Ok(())
}

#[test]
fn the_sum_gradient_matches_finite_differences() -> Result {
    // L = Σ w ⊙ LN(x + r) + Σ v ⊙ (x + r): ∂L/∂x = ∂L/∂r = backward_residual(.., w, v).input.
    let mut rng = common::rng(30);
    let x = common::normal_matrix(&mut rng, 3, 6, 1.0, 2.0);
    let r = common::normal_matrix(&mut rng, 3, 6, -1.0, 1.0);
    let w = common::normal_matrix(&mut rng, 3, 6, 0.0, 1.0);
    let v = common::normal_matrix(&mut rng, 3, 6, 0.0, 1.0);
    let ln = LayerNorm::from_params(
        Array1::linspace(0.5, 2.0, 6),
        Array1::linspace(-1.0, 1.0, 6),
        1e-5,
    )?;
    let loss = |x: &Array2<f64>| -> f64 {
        let step = ln.forward_residual(x, &r).expect("valid");
        (&step.output * &w).sum() + (&step.sum * &v).sum()
    };
    let step = ln.forward_residual(&x, &r)?;
    let analytic = ln.backward_residual(&step.sum, &step.stats, &w, &v)?.input;
    let h = 1e-6;
    for ((i, j), &expected) in analytic.indexed_iter() {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[[i, j]] += h;
        minus[[i, j]] -= h;
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
        assert!(
            (expected - numeric).abs() < 1e-6,
            "[{i}, {j}]: {expected} vs {numeric}"
        );
    }
    Ok(())
}

#[test]
fn mismatched_residual_step_arguments_are_errors() -> Result {
    let ln = LayerNorm::<f32>::new(4)?;
    let x = Array2::<f32>::zeros((2, 4));
    let err = ln
        .forward_residual(&x, &Array2::<f32>::zeros((3, 4)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for residual: expected [2, 4], found [3, 4]"
    );
    let (mut out, mut sum) = (Array2::<f32>::zeros((2, 4)), Array2::<f32>::zeros((2, 5)));
    let mut stats = NormStats::zeros(Ix1(2));
    let err = ln
        .forward_residual_into(&x, &x, &mut out, &mut sum, &mut stats)
        .unwrap_err();
    assert!(matches!(
        err,
        NormError::ShapeMismatch {
            argument: "sum",
            ..
        }
    ));
    let step = ln.forward_residual(&x, &x)?;
    let err = ln
        .backward_residual(&step.sum, &step.stats, &x, &array![[1.0f32; 4]])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for dsum: expected [2, 4], found [1, 4]"
    );
    Ok(())
}

#[test]
fn fused_results_do_not_depend_on_the_thread_count() -> Result {
    let [x, residual, dy, dsum] = inputs(31, 256, 512);
    let ln = LayerNorm::<f32>::new(512)?;
    let compute = || {
        let step = ln.forward_residual(&x, &residual).expect("valid");
        let grads = ln
            .backward_residual(&step.sum, &step.stats, &dy, &dsum)
            .expect("valid");
        (step, grads)
    };
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let serial = pool(1)?.install(compute);
    assert!(pool(2)?.install(compute) == serial);
    Ok(())
}
