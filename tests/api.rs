//! The public contract: constructors, configurations, known values, shapes and layouts,
//! every error variant, and the agreement of the allocating and allocation-free paths.

mod common;

use approx::assert_abs_diff_eq;
use layernorm::{LayerNorm, LayerNormGrads, NormError, NormStats};
use ndarray::{array, s, Array, Array1, Array2, Array3, Array4, ArrayD, Axis, Ix1, IxDyn};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn default_layer_has_unit_gain_zero_bias_and_default_eps() -> Result {
    let ln = LayerNorm::<f32>::new(4)?;
    assert_eq!(ln.dim(), 4);
    assert_eq!(ln.eps(), 1e-5);
    assert_eq!(ln.gain(), Some(Array1::ones(4).view()));
    assert_eq!(ln.bias(), Some(Array1::zeros(4).view()));
    Ok(())
}

#[test]
fn one_two_three_normalizes_to_known_values() -> Result {
    let ln = LayerNorm::<f64>::new(3)?.with_eps(0.0)?;
    let y = ln.forward(&array![1.0, 2.0, 3.0])?;
    let expected = 1.5f64.sqrt(); // (3 − 2) / √(2/3)
    assert_abs_diff_eq!(y, array![-expected, 0.0, expected], epsilon = 1e-15);
    Ok(())
}

#[test]
fn eps_sits_inside_the_square_root() -> Result {
    // x = [-1, 1]: σ² = 1, so y = ±1/√(1 + ε).
    let eps = 0.44;
    let ln = LayerNorm::<f64>::new_without_affine(2)?.with_eps(eps)?;
    let y = ln.forward(&array![-1.0, 1.0])?;
    assert_abs_diff_eq!(y[1], 1.0 / (1.0 + eps).sqrt(), epsilon = 1e-15);
    Ok(())
}

#[test]
fn variance_is_biased() -> Result {
    // x = [0, 2]: biased σ² = 1 (unbiased would be 2), so y = [-1, 1].
    let ln = LayerNorm::<f64>::new(2)?.with_eps(0.0)?;
    assert_eq!(ln.forward(&array![0.0, 2.0])?, array![-1.0, 1.0]);
    Ok(())
}

#[test]
fn gain_and_bias_apply_per_feature() -> Result {
    let ln = LayerNorm::from_params(array![2.0f32, 3.0], array![10.0, -10.0], 0.0)?;
    assert_eq!(ln.forward(&array![[5.0, 7.0]])?, array![[8.0, -7.0]]);
    Ok(())
}

#[test]
fn configurations_without_bias_and_without_affine() -> Result {
    let x = array![[1.0f64, 4.0, 2.0, 9.0]];
    let plain = LayerNorm::<f64>::new_without_affine(4)?.forward(&x)?;
    let gain = array![1.0, -2.0, 0.5, 3.0];
    let no_bias = LayerNorm::from_gain(gain.clone(), 1e-5)?.forward(&x)?;
    assert_abs_diff_eq!(no_bias, &plain * &gain, epsilon = 1e-15);
    let same = LayerNorm::<f64>::new_without_bias(4)?.forward(&x)?;
    assert_abs_diff_eq!(same, plain, epsilon = 1e-15);

    let ln = LayerNorm::<f64>::new_without_affine(4)?;
    let (_, stats) = ln.forward_with_stats(&x)?;
    let grads = ln.backward(&x, &stats, &array![[1.0, 0.0, 0.0, 0.0]])?;
    assert_eq!((grads.gain, grads.bias), (None, None));
    let grads = LayerNorm::<f64>::new_without_bias(4)?.backward(&x, &stats, &x)?;
    assert!(grads.gain.is_some() && grads.bias.is_none());
    Ok(())
}

#[test]
fn parameters_can_be_read_changed_and_taken_back() -> Result {
    let mut ln = LayerNorm::<f32>::new(3)?;
    if let Some(mut gain) = ln.gain_mut() {
        gain[1] = 5.0;
    }
    if let Some(mut bias) = ln.bias_mut() {
        bias[2] = -1.0;
    }
    ln.set_eps(1e-3)?;
    let (gain, bias, eps) = ln.into_params();
    assert_eq!(gain, Some(array![1.0, 5.0, 1.0]));
    assert_eq!(bias, Some(array![0.0, 0.0, -1.0]));
    assert_eq!(eps, 1e-3);
    Ok(())
}

#[test]
fn every_input_dimensionality_from_one_to_four_normalizes_the_last_axis() -> Result {
    let ln = LayerNorm::<f64>::new(5)?;
    let mut rng = common::rng(1);
    let flat = common::normal_matrix(&mut rng, 2 * 3 * 4, 5, 3.0, 2.0);
    let expected = common::reference_forward(&flat, None, None, 1e-5);

    let x1 = flat.row(0).to_owned();
    assert_abs_diff_eq!(ln.forward(&x1)?, expected.row(0), epsilon = 1e-13);

    let x2 = flat.clone();
    assert_abs_diff_eq!(ln.forward(&x2)?, expected, epsilon = 1e-13);

    let x3 = flat.to_shape((6, 4, 5))?.to_owned();
    let y3 = ln.forward(&x3)?;
    assert_abs_diff_eq!(y3.to_shape((24, 5))?, expected, epsilon = 1e-13);

    let x4: Array4<f64> = flat.to_shape((2, 3, 4, 5))?.to_owned();
    let (y4, stats4) = ln.forward_with_stats(&x4)?;
    assert_abs_diff_eq!(y4.to_shape((24, 5))?, expected, epsilon = 1e-13);
    assert_eq!(stats4.shape(), &[2, 3, 4]);

    let xd: ArrayD<f64> = x4.clone().into_dyn();
    let (yd, statsd) = ln.forward_with_stats(&xd)?;
    assert_eq!(yd, y4.into_dyn());
    assert_eq!(statsd.mean(), stats4.mean().into_dyn());
    Ok(())
}

#[test]
fn strided_transposed_and_reversed_views_match_their_copies() -> Result {
    let ln = LayerNorm::from_params(
        array![0.5, 1.5, -1.0, 2.0, 1.0, 0.25],
        array![0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        1e-5,
    )?;
    let mut rng = common::rng(2);
    let base = common::normal_matrix(&mut rng, 12, 12, -4.0, 3.0);
    let dy_base = common::normal_matrix(&mut rng, 12, 12, 0.0, 1.0);
    let views = [
        base.slice(s![..;2, ..;2]),                 // stepped in both axes
        base.slice(s![1..7, 3..9]).reversed_axes(), // transposed
        base.slice(s![..;-2, ..;-2]),               // reversed (negative strides)
        base.slice(s![2..8, 6..]),                  // contiguous rows, row stride 12
    ];
    let dy = dy_base.slice(s![..6, ..;-2]);
    for view in views {
        let owned = view.to_owned();
        let (y_view, stats_view) = ln.forward_with_stats(&view)?;
        let (y_owned, stats_owned) = ln.forward_with_stats(&owned)?;
        assert_eq!(y_view, y_owned);
        assert_eq!(stats_view, stats_owned);
        let grads_view = ln.backward(&view, &stats_view, &dy)?;
        let grads_owned = ln.backward(&owned, &stats_owned, &dy.to_owned())?;
        assert_eq!(grads_view, grads_owned);
    }
    Ok(())
}

#[test]
fn forward_into_and_forward_inplace_equal_forward() -> Result {
    let ln = LayerNorm::from_params(
        array![1.0f32, 2.0, 3.0, 4.0],
        array![0.0, -1.0, 1.0, 0.5],
        1e-5,
    )?;
    let mut rng = common::rng(3);
    let x = common::normal_matrix(&mut rng, 7, 4, 10.0, 0.5).mapv(|v| v as f32);
    let y = ln.forward(&x)?;

    let mut out = Array2::<f32>::from_elem((7, 4), f32::NAN);
    ln.forward_into(&x, &mut out)?;
    assert_eq!(out, y);

    let mut inplace = x.clone();
    ln.forward_inplace(&mut inplace)?;
    assert_eq!(inplace, y);

    // Non-standard buffers take the copying path and give the same numbers.
    let mut transposed_out = Array2::<f32>::zeros((4, 7));
    ln.forward_into(&x, &mut transposed_out.view_mut().reversed_axes())?;
    assert_eq!(transposed_out.t(), y);
    let mut transposed_x = x.t().to_owned();
    ln.forward_inplace(&mut transposed_x.view_mut().reversed_axes())?;
    assert_eq!(transposed_x.t(), y);

    let mut stats = NormStats::zeros(Ix1(7));
    let mut out_with_stats = Array2::<f32>::zeros((7, 4));
    ln.forward_with_stats_into(&x, &mut out_with_stats, &mut stats)?;
    let (y_alloc, stats_alloc) = ln.forward_with_stats(&x)?;
    assert_eq!(out_with_stats, y_alloc);
    assert_eq!(stats, stats_alloc);
    Ok(())
}

#[test]
fn backward_into_writes_dx_and_adds_parameter_gradients() -> Result {
    let ln = LayerNorm::from_params(array![1.0f64, -0.5, 2.0], array![0.0, 0.0, 0.0], 1e-5)?;
    let x = array![[1.0, 5.0, -2.0], [0.5, 0.25, 3.0]];
    let dy = array![[0.3, -1.0, 2.0], [1.0, 1.0, -0.5]];
    let (_, stats) = ln.forward_with_stats(&x)?;
    let LayerNormGrads { input, gain, bias } = ln.backward(&x, &stats, &dy)?;
    let (gain, bias) = (gain.ok_or("gain")?, bias.ok_or("bias")?);

    let mut dx = Array2::from_elem((2, 3), 99.0);
    let mut gain_acc = array![1.0, 2.0, 3.0];
    let mut bias_acc = array![-1.0, 0.0, 1.0];
    ln.backward_into(
        &x,
        &stats,
        &dy,
        &mut dx,
        Some(&mut gain_acc),
        Some(&mut bias_acc),
    )?;
    assert_eq!(dx, input, "dx is overwritten, not accumulated");
    assert_abs_diff_eq!(gain_acc, &gain + &array![1.0, 2.0, 3.0], epsilon = 1e-15);
    assert_abs_diff_eq!(bias_acc, &bias + &array![-1.0, 0.0, 1.0], epsilon = 1e-15);

    // A second call adds again; a skipped accumulator is left alone.
    ln.backward_into(&x, &stats, &dy, &mut dx, Some(&mut gain_acc), None)?;
    assert_abs_diff_eq!(
        gain_acc,
        &gain * 2.0 + &array![1.0, 2.0, 3.0],
        epsilon = 1e-15
    );
    assert_abs_diff_eq!(bias_acc, &bias + &array![-1.0, 0.0, 1.0], epsilon = 1e-15);

    // Strided accumulators and a transposed dx buffer work too.
    let mut wide = Array1::<f64>::zeros(6);
    let mut dx_t = Array2::<f64>::zeros((3, 2));
    ln.backward_into(
        &x,
        &stats,
        &dy,
        &mut dx_t.view_mut().reversed_axes(),
        None,
        Some(&mut wide.slice_mut(s![..;2])),
    )?;
    assert_eq!(dx_t.t(), input);
    assert_abs_diff_eq!(wide.slice(s![..;2]), bias, epsilon = 0.0);
    Ok(())
}

#[test]
fn backward_matches_the_reference_formula() -> Result {
    let mut rng = common::rng(4);
    let gain = common::uniform_vector(&mut rng, 9, -2.0, 2.0);
    let bias = common::uniform_vector(&mut rng, 9, -1.0, 1.0);
    let ln = LayerNorm::from_params(gain.clone(), bias, 1e-3)?;
    let x = common::normal_matrix(&mut rng, 5, 9, 1.0, 2.0);
    let dy = common::normal_matrix(&mut rng, 5, 9, 0.0, 1.0);
    let (_, stats) = ln.forward_with_stats(&x)?;
    let grads = ln.backward(&x, &stats, &dy)?;
    let mut gain_sum = Array1::<f64>::zeros(9);
    let mut bias_sum = Array1::<f64>::zeros(9);
    for row in 0..5 {
        let (dx, dgain, dbias) = common::reference_backward_row(
            &x.row(row).to_vec(),
            gain.as_slice(),
            1e-3,
            &dy.row(row).to_vec(),
        );
        assert_abs_diff_eq!(grads.input.row(row), Array1::from(dx), epsilon = 1e-13);
        gain_sum += &Array1::from(dgain);
        bias_sum += &Array1::from(dbias);
    }
    assert_abs_diff_eq!(grads.gain.ok_or("gain")?, gain_sum, epsilon = 1e-13);
    assert_abs_diff_eq!(grads.bias.ok_or("bias")?, bias_sum, epsilon = 1e-13);
    Ok(())
}

/// Each accumulator value becomes `round(widen(start) + the call's sum)`: the same bits whether
/// the accumulators are contiguous (added a slice at a time, on the CPU's vectors) or strided
/// (a value at a time), for calls of one gradient block (up to 64 rows) and of several, and
/// whatever they held (zeros of either sign, extremes, infinities, NaN).
#[test]
fn accumulators_get_the_same_bits_in_any_layout() {
    common::check_accumulator_layouts::<f32>("f32");
    common::check_accumulator_layouts::<f64>("f64");
}

#[test]
fn zero_rows_give_empty_outputs_and_leave_accumulators_alone() -> Result {
    let ln = LayerNorm::<f32>::new(8)?;
    let x = Array3::<f32>::zeros((0, 5, 8));
    let (y, stats) = ln.forward_with_stats(&x)?;
    assert_eq!(y.shape(), &[0, 5, 8]);
    assert_eq!(stats.shape(), &[0, 5]);
    assert!(stats.is_empty());
    let mut gain_acc = Array1::<f32>::ones(8);
    let mut dx = Array3::<f32>::zeros((0, 5, 8));
    ln.backward_into(&x, &stats, &x, &mut dx, Some(&mut gain_acc), None)?;
    assert_eq!(gain_acc, Array1::ones(8));
    let grads = ln.backward(&x, &stats, &x)?;
    assert_eq!(grads.bias, Some(Array1::zeros(8)));
    Ok(())
}

#[test]
fn invalid_constructions_are_errors() {
    assert_eq!(LayerNorm::<f32>::new(0), Err(NormError::ZeroDim));
    assert_eq!(
        LayerNorm::<f32>::new_without_bias(0),
        Err(NormError::ZeroDim)
    );
    assert_eq!(
        LayerNorm::<f32>::new_without_affine(0),
        Err(NormError::ZeroDim)
    );
    assert_eq!(
        LayerNorm::<f64>::from_params(Array1::zeros(0), Array1::zeros(0), 1e-5),
        Err(NormError::ZeroDim)
    );
    assert_eq!(
        LayerNorm::<f64>::from_gain(Array1::zeros(0), 1e-5),
        Err(NormError::ZeroDim)
    );
    let mismatch = LayerNorm::<f64>::from_params(Array1::ones(3), Array1::zeros(4), 1e-5);
    assert_eq!(
        mismatch.map_err(|e| e.to_string()),
        Err("shape mismatch for bias: expected [3], found [4]".to_string())
    );
    for eps in [-1e-9, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = LayerNorm::<f32>::from_gain(Array1::ones(2), eps).unwrap_err();
        assert!(matches!(err, NormError::InvalidEps { .. }), "{eps}: {err}");
        assert!(LayerNorm::<f32>::new(2)
            .and_then(|ln| ln.with_eps(eps))
            .is_err());
        let mut ln = LayerNorm::<f32>::new(2).expect("valid");
        assert!(ln.set_eps(eps).is_err());
        assert_eq!(ln.eps(), 1e-5, "a rejected eps leaves the layer unchanged");
    }
    assert_eq!(
        NormError::InvalidEps { eps: -1.0 }.to_string(),
        "invalid eps: expected a finite value >= 0, found -1"
    );
}

#[test]
fn mismatched_shapes_are_errors_naming_argument_and_shapes() -> Result {
    let ln = LayerNorm::<f32>::new(768)?;
    let x = Array2::<f32>::zeros((4, 768));
    let (_, stats) = ln.forward_with_stats(&x)?;

    let err = ln.forward(&Array2::<f32>::zeros((4, 512))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for x: expected [4, 768], found [4, 512]"
    );

    let err = ln
        .backward(&x, &stats, &Array2::<f32>::zeros((4, 512)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for dy: expected [4, 768], found [4, 512]"
    );

    let other = Array2::<f32>::zeros((3, 768));
    let (_, other_stats) = ln.forward_with_stats(&other)?;
    let err = ln.backward(&x, &other_stats, &x).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for stats: expected [4], found [3]"
    );

    let mut out = Array2::<f32>::zeros((4, 767));
    let err = ln.forward_into(&x, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for out: expected [4, 768], found [4, 767]"
    );

    let mut stats_buffer = NormStats::zeros(Ix1(5));
    let mut out = Array2::<f32>::zeros((4, 768));
    let err = ln
        .forward_with_stats_into(&x, &mut out, &mut stats_buffer)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for stats: expected [4], found [5]"
    );

    let mut dx = Array2::<f32>::zeros((768, 4));
    let err = ln
        .backward_into(&x, &stats, &x, &mut dx, None, None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for dx: expected [4, 768], found [768, 4]"
    );

    let mut dx = Array2::<f32>::zeros((4, 768));
    let mut short = Array1::<f32>::zeros(767);
    let err = ln
        .backward_into(&x, &stats, &x, &mut dx, Some(&mut short), None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for gain_grad: expected [768], found [767]"
    );
    let err = ln
        .backward_into(&x, &stats, &x, &mut dx, None, Some(&mut short))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for bias_grad: expected [768], found [767]"
    );

    let scalar = Array::from_elem(IxDyn(&[]), 1.0f32);
    let err = ln.forward(&scalar).unwrap_err();
    assert_eq!(err, NormError::NoFeatureAxis { argument: "x" });
    assert_eq!(
        err.to_string(),
        "x has no axis to normalize: expected at least 1 dimension, found 0"
    );
    let mut scalar_mut = scalar.clone();
    assert!(ln.forward_inplace(&mut scalar_mut).is_err());

    // A row count that matches but a different rank is still a mismatch.
    let stats_dyn = NormStats::<f64, IxDyn>::zeros(IxDyn(&[2, 2]));
    let x_dyn = Array::zeros(IxDyn(&[4, 768]));
    let err = ln.backward(&x_dyn, &stats_dyn, &x_dyn).unwrap_err();
    assert_eq!(
        err.to_string(),
        "shape mismatch for stats: expected [4], found [2, 2]"
    );
    Ok(())
}

#[test]
fn accumulators_for_absent_parameters_are_errors() -> Result {
    let x = Array2::<f64>::ones((2, 3));
    let mut dx = Array2::<f64>::zeros((2, 3));
    let mut acc = Array1::<f64>::zeros(3);

    let no_bias = LayerNorm::<f64>::new_without_bias(3)?;
    let (_, stats) = no_bias.forward_with_stats(&x)?;
    let err = no_bias
        .backward_into(&x, &stats, &x, &mut dx, None, Some(&mut acc))
        .unwrap_err();
    assert_eq!(err, NormError::MissingParameter { parameter: "bias" });
    assert_eq!(
        err.to_string(),
        "a gradient accumulator for bias was given, but the layer has no bias"
    );

    let plain = LayerNorm::<f64>::new_without_affine(3)?;
    let err = plain
        .backward_into(&x, &stats, &x, &mut dx, Some(&mut acc), None)
        .unwrap_err();
    assert_eq!(err, NormError::MissingParameter { parameter: "gain" });
    Ok(())
}

#[test]
fn failed_calls_write_nothing() -> Result {
    let ln = LayerNorm::<f32>::new(3)?;
    let x = Array2::<f32>::ones((2, 3));
    let (_, stats) = ln.forward_with_stats(&x)?;
    let mut dx = Array2::<f32>::from_elem((2, 3), 7.0);
    let mut gain_acc = Array1::<f32>::from_elem(3, 7.0);
    let mut bias_acc = Array1::<f32>::from_elem(2, 7.0); // wrong length
    let result = ln.backward_into(
        &x,
        &stats,
        &x,
        &mut dx,
        Some(&mut gain_acc),
        Some(&mut bias_acc),
    );
    assert!(result.is_err());
    assert!(dx
        .iter()
        .chain(&gain_acc)
        .chain(&bias_acc)
        .all(|&v| v == 7.0));
    Ok(())
}

#[test]
fn stats_hold_mean_and_inverse_standard_deviation_per_row() -> Result {
    let ln = LayerNorm::<f32>::new(4)?.with_eps(0.0)?;
    let x = array![[[1.0f32, 2.0, 3.0, 6.0]], [[-2.0, -2.0, 2.0, 2.0]]];
    let (_, stats) = ln.forward_with_stats(&x)?;
    assert_eq!(stats.shape(), &[2, 1]);
    assert_eq!(stats.mean(), array![[3.0], [0.0]]);
    // Row 0: σ² = (4 + 1 + 0 + 9)/4 = 3.5; row 1: σ² = 4.
    assert_abs_diff_eq!(
        stats.inv_std(),
        array![[1.0 / 3.5f64.sqrt()], [0.5]],
        epsilon = 1e-15
    );
    let (mean, inv_std) = stats.into_parts();
    assert_eq!(mean.len_of(Axis(0)), inv_std.len_of(Axis(0)));
    Ok(())
}
