//! f32 accuracy against an f64 reference computed on the same f32 inputs, on the rows where
//! other implementations lose digits; extreme rows; NaN confinement.
//!
//! Errors are measured in ulps of the output scale: `max |out − ref| / ulp_f32(max |ref|)`.
//! A correctly rounded result is within 0.5 of those ulps. The SIMD path rounds a few times in
//! f32 (g = gain·dy, g − mean(g), the final fused multiply-add), so we require at most 3 ("a few
//! ulps") on every kind of row, which also makes offset rows as accurate as N(0, 1) rows.
//! `cargo test --test accuracy -- --nocapture` prints the measured table.

mod common;

use layernorm::LayerNorm;
use ndarray::{array, Array1, Array2, Axis};

const DIM: usize = 1024;
const ROWS: usize = 16;
const ULPS_ALLOWED: f64 = 3.0;

/// The spacing of f32 numbers at magnitude `value`.
fn ulp_f32(value: f64) -> f64 {
    let value = value.abs().max(f32::MIN_POSITIVE as f64) as f32;
    let bits = value.to_bits();
    (f32::from_bits(bits + 1) - value) as f64
}

fn error_in_ulps<'a>(
    computed: impl IntoIterator<Item = &'a f64>,
    reference: impl IntoIterator<Item = &'a f64> + Clone,
) -> f64 {
    let scale = common::max_abs(reference.clone());
    common::max_abs_diff(computed, reference) / ulp_f32(scale)
}

struct Measured {
    y: f64,
    dx: f64,
    dgain: f64,
    dbias: f64,
}

/// Forward and backward of an f32 layer on `x`, against the f64 reference on the same values.
fn measure(x: &Array2<f32>, seed: u64, eps: f64) -> Measured {
    let mut rng = common::rng(seed);
    let gain = common::uniform_vector(&mut rng, DIM, 0.5, 1.5).mapv(|v| v as f32);
    let bias = common::uniform_vector(&mut rng, DIM, -0.5, 0.5).mapv(|v| v as f32);
    let dy = common::normal_matrix(&mut rng, x.nrows(), DIM, 0.0, 1.0).mapv(|v| v as f32);
    let ln = LayerNorm::from_params(gain.clone(), bias.clone(), eps).expect("valid");
    let (y, stats) = ln.forward_with_stats(x).expect("valid");
    let grads = ln.backward(x, &stats, &dy).expect("valid");

    let (x64, gain64, bias64, dy64) = (
        x.mapv(f64::from),
        gain.mapv(f64::from),
        bias.mapv(f64::from),
        dy.mapv(f64::from),
    );
    let y_ref = common::reference_forward(&x64, Some(&gain64), Some(&bias64), eps);
    let mut dx_ref = Array2::<f64>::zeros(x.raw_dim());
    let mut dgain_ref = Array1::<f64>::zeros(DIM);
    let mut dbias_ref = Array1::<f64>::zeros(DIM);
    for row in 0..x.nrows() {
        let (dx, dgain, dbias) = common::reference_backward_row(
            &x64.row(row).to_vec(),
            gain64.as_slice(),
            eps,
            &dy64.row(row).to_vec(),
        );
        dx_ref.row_mut(row).assign(&Array1::from(dx));
        dgain_ref += &Array1::from(dgain);
        dbias_ref += &Array1::from(dbias);
    }
    let dx_rows = grads.input.mapv(f64::from);
    // dx is judged row by row against that row's own scale (rows differ in r).
    let dx = (0..x.nrows())
        .map(|r| error_in_ulps(dx_rows.row(r), dx_ref.row(r)))
        .fold(0.0, f64::max);
    Measured {
        y: error_in_ulps(&y.mapv(f64::from), &y_ref),
        dx,
        dgain: error_in_ulps(&grads.gain.expect("has gain").mapv(f64::from), &dgain_ref),
        dbias: error_in_ulps(&grads.bias.expect("has bias").mapv(f64::from), &dbias_ref),
    }
}

fn rows_f32(seed: u64, offset: f64, scale: f64) -> Array2<f32> {
    let mut rng = common::rng(seed);
    common::normal_matrix(&mut rng, ROWS, DIM, offset, scale).mapv(|v| v as f32)
}

#[test]
fn offset_rows_are_as_accurate_as_centered_rows() {
    // Tiny rows use eps = 0: with the default eps their normalized values would be ~0.
    let kinds: [(&str, f64, f64, f64); 6] = [
        ("N(0,1)", 0.0, 1.0, 1e-5),
        ("1e2 + N(0,1)", 1e2, 1.0, 1e-5),
        ("1e4 + N(0,1)", 1e4, 1.0, 1e-5),
        ("1e6 + 100·N(0,1)", 1e6, 100.0, 1e-5),
        ("1e18·N(0,1)", 0.0, 1e18, 1e-5),
        ("1e-30·N(0,1), eps 0", 0.0, 1e-30, 0.0),
    ];
    println!("f32 rows of {DIM}, {ROWS} rows; error in ulps of the output scale (f64 reference)");
    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>6}",
        "rows", "y", "dx", "dgain", "dbias"
    );
    for (seed, (name, offset, scale, eps)) in kinds.into_iter().enumerate() {
        let m = measure(
            &rows_f32(seed as u64, offset, scale),
            100 + seed as u64,
            eps,
        );
        println!(
            "{name:<22} {:>6.2} {:>6.2} {:>6.2} {:>6.2}",
            m.y, m.dx, m.dgain, m.dbias
        );
        for (what, error) in [
            ("y", m.y),
            ("dx", m.dx),
            ("dgain", m.dgain),
            ("dbias", m.dbias),
        ] {
            assert!(error <= ULPS_ALLOWED, "{name}: {what} off by {error} ulps");
        }
    }
}

#[test]
fn squares_do_not_overflow_for_huge_f32_inputs() {
    // Rows reaching f32::MAX: (x − μ)² would overflow f32 but not the f64 statistics.
    let mut x = Array2::<f32>::zeros((3, DIM));
    for (i, v) in x.row_mut(0).iter_mut().enumerate() {
        *v = if i % 2 == 0 { f32::MAX } else { -f32::MAX };
    }
    for (i, v) in x.row_mut(1).iter_mut().enumerate() {
        *v = if i % 3 == 0 { f32::MAX } else { 1.0 };
    }
    x.row_mut(2).assign(&rows_f32(9, 0.0, 1e37).row(0));
    let m = measure(&x, 9, 1e-5);
    println!("rows reaching f32::MAX: y {:.2}, dx {:.2} ulps", m.y, m.dx);
    assert!(m.y <= ULPS_ALLOWED && m.dx <= ULPS_ALLOWED);
    let y = LayerNorm::<f32>::new(DIM)
        .expect("valid")
        .forward(&x)
        .expect("valid");
    assert!(y.iter().all(|v| v.is_finite()));
    assert!((y[[0, 0]] - 1.0).abs() < 1e-6 && (y[[0, 1]] + 1.0).abs() < 1e-6);
}

#[test]
fn f32_and_f64_layers_agree() {
    let x = rows_f32(11, 3.0, 2.0);
    let y32 = LayerNorm::<f32>::new(DIM)
        .expect("valid")
        .forward(&x)
        .expect("valid");
    let y64 = LayerNorm::<f64>::new(DIM)
        .expect("valid")
        .forward(&x.mapv(f64::from))
        .expect("valid");
    assert!(error_in_ulps(&y32.mapv(f64::from), &y64) <= ULPS_ALLOWED);
}

#[test]
fn constant_rows_give_exactly_bias_and_finite_gradients() {
    let bias = array![0.25f32, -1.0, 3.0, 0.0];
    let gain = array![2.0f32, 0.5, -1.0, 1.0];
    let ln = LayerNorm::from_params(gain.clone(), bias.clone(), 1e-5).expect("valid");
    let x = array![
        [7.0f32, 7.0, 7.0, 7.0],
        [1e4, 1e4, 1e4, 1e4],
        [-1e30, -1e30, -1e30, -1e30],
        [0.1, 0.1, 0.1, 0.1]
    ];
    let (y, stats) = ln.forward_with_stats(&x).expect("valid");
    for row in y.rows() {
        assert_eq!(row, bias);
    }
    let dy = Array2::from_shape_fn((4, 4), |(_, i)| (i + 1) as f32);
    let grads = ln.backward(&x, &stats, &dy).expect("valid");
    // x̂ = 0, so dx = r · (g − mean(g)) with r = 1/√ε and g = gain · dy = [2, 1, -3, 4].
    let r = 1.0 / 1e-5f64.sqrt();
    let expected = Array1::from([2.0, 1.0, -3.0, 4.0].map(|g: f64| r * (g - 1.0)).to_vec());
    for row in grads.input.rows() {
        assert!(error_in_ulps(&row.mapv(f64::from), &expected) <= ULPS_ALLOWED);
    }
    assert_eq!(grads.gain, Some(Array1::zeros(4)));
    assert_eq!(grads.bias, Some(dy.sum_axis(Axis(0))));
}

#[test]
fn one_element_rows_give_bias_and_zero_input_gradient() {
    let ln = LayerNorm::from_params(array![3.0f32], array![-0.5], 1e-5).expect("valid");
    let x = array![[5.0f32], [-1e20], [0.0]];
    let (y, stats) = ln.forward_with_stats(&x).expect("valid");
    assert_eq!(y, array![[-0.5f32], [-0.5], [-0.5]]);
    let grads = ln
        .backward(&x, &stats, &array![[1.0f32], [2.0], [-3.0]])
        .expect("valid");
    assert_eq!(grads.input, Array2::zeros((3, 1)));
    assert_eq!(grads.gain, Some(array![0.0]));
    assert_eq!(grads.bias, Some(array![0.0]));
}

#[test]
fn zero_eps_constant_rows_are_nan_and_stay_in_their_row() {
    let ln = LayerNorm::<f32>::new(3)
        .expect("valid")
        .with_eps(0.0)
        .expect("valid");
    let x = array![[2.0f32, 2.0, 2.0], [1.0, 2.0, 3.0]];
    let (y, stats) = ln.forward_with_stats(&x).expect("valid");
    assert_eq!(stats.inv_std()[0], f64::INFINITY);
    assert!(y.row(0).iter().all(|v| v.is_nan()));
    assert!(y.row(1).iter().all(|v| v.is_finite()));
}

#[test]
fn non_finite_values_stay_in_their_row() {
    let mut rng = common::rng(12);
    let clean = common::normal_matrix(&mut rng, 6, 32, 1.0, 3.0).mapv(|v| v as f32);
    let dy = common::normal_matrix(&mut rng, 6, 32, 0.0, 1.0).mapv(|v| v as f32);
    let mut dirty = clean.clone();
    dirty[[1, 5]] = f32::NAN;
    dirty[[3, 0]] = f32::INFINITY;
    dirty[[4, 31]] = f32::NEG_INFINITY;
    let ln = LayerNorm::<f32>::new(32).expect("valid");
    let (y_clean, stats_clean) = ln.forward_with_stats(&clean).expect("valid");
    let (y_dirty, stats_dirty) = ln.forward_with_stats(&dirty).expect("valid");
    let grads_clean = ln.backward(&clean, &stats_clean, &dy).expect("valid");
    let grads_dirty = ln.backward(&dirty, &stats_dirty, &dy).expect("valid");
    for row in 0..6 {
        if [1, 3, 4].contains(&row) {
            assert!(y_dirty.row(row).iter().all(|v| v.is_nan()), "row {row}");
            assert!(
                grads_dirty.input.row(row).iter().all(|v| v.is_nan()),
                "row {row}"
            );
        } else {
            assert_eq!(y_dirty.row(row), y_clean.row(row));
            assert_eq!(grads_dirty.input.row(row), grads_clean.input.row(row));
        }
    }
    // dgain sums dy·x̂ over rows, so it is NaN; dbias sums dy only and is unaffected.
    assert!(grads_dirty
        .gain
        .expect("has gain")
        .iter()
        .all(|v| v.is_nan()));
    assert_eq!(grads_dirty.bias, grads_clean.bias);
}

#[test]
fn f64_rows_near_the_maximum_are_normalized_not_flattened() {
    // Squares (and here the sum) of such values overflow f64; the rows are computed scaled.
    let x = array![
        [1e200, -1e200, 3e200, -3e200],
        [f64::MAX, -f64::MAX, f64::MAX, -f64::MAX],
        [1e300, 2e300, 3e300, 4e300]
    ];
    let ln = LayerNorm::<f64>::new_without_affine(4).expect("valid");
    let (y, stats) = ln.forward_with_stats(&x).expect("valid");
    let unit = |row: [f64; 4]| {
        let mean = row.iter().sum::<f64>() / 4.0;
        let std = (row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 4.0).sqrt();
        row.map(|v| (v - mean) / std)
    };
    let expected = [
        unit([1.0, -1.0, 3.0, -3.0]),
        [1.0, -1.0, 1.0, -1.0],
        unit([1.0, 2.0, 3.0, 4.0]),
    ];
    for (row, expected) in expected.iter().enumerate() {
        for (i, e) in expected.iter().enumerate() {
            assert!(
                (y[[row, i]] - e).abs() < 1e-12,
                "row {row}: {} vs {e}",
                y[[row, i]]
            );
        }
    }
    assert!(stats.mean().iter().all(|m| m.is_finite()));
    let dy = array![
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.5, 0.5, -1.0, 0.0]
    ];
    let grads = ln.backward(&x, &stats, &dy).expect("valid");
    assert!(grads.input.iter().all(|v| v.is_finite()));
    // Shifting a row does not change y, so each row of dx sums to zero (relative to its size).
    for row in grads.input.rows() {
        let size = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            row.sum().abs() <= 1e-12 * size.max(f64::MIN_POSITIVE),
            "{row}"
        );
    }
}

/// The accuracy contract over row lengths and magnitudes (f32 data, f64 reference on the same
/// inputs, errors in ulps of each output's scale as above, eps = 0 so tiny rows normalize).
#[test]
fn accuracy_holds_across_row_lengths_and_magnitudes() {
    println!("f32, eps 0: error in ulps of the output scale");
    println!("{:<28} {:>6} {:>6}", "rows", "y", "dx");
    let mut worst = (0.0f64, 0.0f64);
    let lengths = [1usize, 2, 3, 7, 64, 1000, 4096, 1 << 16, 1 << 22];
    for (seed, &len) in lengths.iter().enumerate() {
        let rows = (1 << 16) / len.min(1 << 16) + usize::from(len > 1 << 16);
        let rows = rows.clamp(1, 4);
        let x = {
            let mut rng = common::rng(200 + seed as u64);
            common::normal_matrix(&mut rng, rows, len, 3.0, 2.0).mapv(|v| v as f32)
        };
        let (y, dx) = errors(&x, 300 + seed as u64);
        println!(
            "{:<28} {y:>6.2} {dx:>6.2}",
            format!("{rows} × {len}, 3 + 2·N(0,1)")
        );
        worst = (worst.0.max(y), worst.1.max(dx));
    }
    for (seed, magnitude) in [1e-30f64, 1e-10, 1e10, 1e30].into_iter().enumerate() {
        let x = {
            let mut rng = common::rng(400 + seed as u64);
            common::normal_matrix(&mut rng, 4, 1000, 0.0, magnitude).mapv(|v| v as f32)
        };
        let (y, dx) = errors(&x, 500 + seed as u64);
        println!(
            "{:<28} {y:>6.2} {dx:>6.2}",
            format!("4 × 1000, {magnitude:e}·N(0,1)")
        );
        worst = (worst.0.max(y), worst.1.max(dx));
    }
    println!("worst: y {:.2}, dx {:.2} ulps", worst.0, worst.1);
    assert!(
        worst.0 <= ULPS_ALLOWED && worst.1 <= ULPS_ALLOWED,
        "{worst:?}"
    );
}

/// Max errors of y and dx (no gain or bias, eps 0) against the f64 reference, in ulps of each
/// row's output scale; dx is judged against r · max|dy| (its natural scale, as in the kernel
/// tests) because it can cancel to almost nothing.
fn errors(x: &Array2<f32>, seed: u64) -> (f64, f64) {
    let (rows, dim) = x.dim();
    let mut rng = common::rng(seed);
    let dy = common::normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(|v| v as f32);
    let ln = LayerNorm::<f32>::new_without_affine(dim)
        .expect("valid")
        .with_eps(0.0)
        .expect("valid");
    let (y, stats) = ln.forward_with_stats(x).expect("valid");
    let dx = ln.backward(x, &stats, &dy).expect("valid").input;
    let (mut worst_y, mut worst_dx) = (0.0f64, 0.0f64);
    for row in 0..rows {
        let x64: Vec<f64> = x.row(row).iter().map(|&v| f64::from(v)).collect();
        let dy64: Vec<f64> = dy.row(row).iter().map(|&v| f64::from(v)).collect();
        if x64.iter().all(|v| *v == x64[0]) {
            continue; // constant rows (one element) have no defined x̂ with eps = 0
        }
        let y_ref = common::reference_forward_row(&x64, None, None, 0.0);
        let (dx_ref, _, _) = common::reference_backward_row(&x64, None, 0.0, &dy64);
        let y_row: Vec<f64> = y.row(row).iter().map(|&v| f64::from(v)).collect();
        let dx_row: Vec<f64> = dx.row(row).iter().map(|&v| f64::from(v)).collect();
        worst_y = worst_y.max(error_in_ulps(&y_row, &y_ref));
        let mean = x64.iter().sum::<f64>() / dim as f64;
        let r =
            1.0 / (x64.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64).sqrt();
        let scale = r * common::max_abs(&dy64);
        worst_dx = worst_dx.max(common::max_abs_diff(&dx_row, &dx_ref) / ulp_f32(scale));
    }
    (worst_y, worst_dx)
}

/// `Σ values` as an unevaluated pair `hi + lo` (Neumaier's compensated summation).
fn compensated_sum(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut sum, mut compensation) = (0.0f64, 0.0f64);
    for value in values {
        let next = sum + value;
        compensation += if sum.abs() >= value.abs() {
            (sum - next) + value
        } else {
            (value - next) + sum
        };
        sum = next;
    }
    (
        sum + compensation,
        compensation - ((sum + compensation) - sum),
    )
}

/// `(x − μ)/σ` for an f64 row, with the mean as a double-double and compensated sums: exact to
/// about an ulp of each output, a reference for f64 data.
fn reference_f64_row(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let (sum_hi, sum_lo) = compensated_sum(x.iter().copied());
    let mean_hi = sum_hi / n;
    let mean_lo = ((-mean_hi).mul_add(n, sum_hi) + sum_lo) / n;
    let deviations: Vec<f64> = x.iter().map(|&v| (v - mean_hi) - mean_lo).collect();
    let (squares, _) = compensated_sum(deviations.iter().map(|d| d * d));
    let std = (squares / n).sqrt();
    deviations.iter().map(|d| d / std).collect()
}

/// f64 data against the double-double reference: a few ulps on centered rows; on offset rows
/// the mean is held in one f64, so errors grow as ulp(|μ|)/σ of the output scale (documented).
#[test]
fn f64_accuracy_against_a_double_double_reference() {
    println!("f64, eps 0, rows of 1024: error in f64 ulps of the output scale");
    for (seed, (offset, spread)) in [(0.0, 1.0), (1e2, 1.0), (1e4, 1.0), (1e6, 1.0)]
        .into_iter()
        .enumerate()
    {
        let mut rng = common::rng(600 + seed as u64);
        let x = common::normal_matrix(&mut rng, 8, 1024, offset, spread);
        let ln = LayerNorm::<f64>::new_without_affine(1024)
            .expect("valid")
            .with_eps(0.0)
            .expect("valid");
        let y = ln.forward(&x).expect("valid");
        let mut worst = 0.0f64;
        for (row, y_row) in x.rows().into_iter().zip(y.rows()) {
            let reference = reference_f64_row(&row.to_vec());
            let scale = common::max_abs(&reference);
            let error = common::max_abs_diff(&y_row.to_vec(), &reference);
            let ulp = f64::EPSILON * scale;
            worst = worst.max(error / ulp);
            // A few ulps, plus what rounding the mean to f64 costs: ulp(|μ|)/σ of each x̂.
            let mean_rounding = offset.abs() * f64::EPSILON / spread * scale;
            assert!(
                error <= 4.0 * ulp + 2.0 * mean_rounding,
                "offset {offset}: {error}"
            );
        }
        println!("{offset:>8} + N(0,1)   {worst:>10.1} ulps");
    }
}
