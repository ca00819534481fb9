//! Feature `half`: f16 and bf16 data through LayerNorm and RmsNorm, statistics in f32. The
//! rows run through the f32 kernels, so outputs are the f32 computation on the same (widened)
//! inputs rounded once to half; offset rows keep their accuracy.

#![cfg(feature = "half")]

mod common;

use half::{bf16, f16};
use layernorm::{Element, LayerNorm, RmsNorm};
use ndarray::{Array1, Array2};

/// One unit in the last place of H at |value|: the gap to the next larger H value (bf16 has 8
/// significant bits, f16 11; a step of 2⁻⁷ relative always reaches the next one).
fn half_ulp<H: Element<Stat = f32>>(value: f32) -> f32 {
    let h = H::from_stat(value.abs());
    let mut up = h;
    let mut factor = 1.0 + 2.0f32.powi(-12);
    while up == h && factor < 2.0 {
        up = H::from_stat(h.to_stat() * factor + f32::MIN_POSITIVE);
        factor = 1.0 + (factor - 1.0) * 2.0;
    }
    (up.to_stat() - h.to_stat()).abs()
}

fn check<H: Element<Stat = f32>>(name: &str, offset: f64) {
    let mut rng = common::rng(40);
    let (rows, dim) = (24, 300);
    let x =
        common::normal_matrix(&mut rng, rows, dim, offset, 4.0).mapv(|v| H::from_stat(v as f32));
    let dy = common::normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(|v| H::from_stat(v as f32));
    let gain = Array1::linspace(0.5f32, 1.5, dim);
    let bias = Array1::linspace(-0.25f32, 0.25, dim);
    let wide = |a: &Array2<H>| a.mapv(|v| v.to_stat());
    let narrow = |a: &Array2<f32>| a.mapv(H::from_stat);

    let ln_half = LayerNorm::from_params(gain.mapv(H::from_stat), bias.mapv(H::from_stat), 1e-5)
        .expect("valid");
    let ln_f32 = LayerNorm::from_params(
        gain.mapv(|g| H::from_stat(g).to_stat()),
        bias.mapv(|b| H::from_stat(b).to_stat()),
        1e-5,
    )
    .expect("valid");
    let (y, stats) = ln_half.forward_with_stats(&x).expect("valid");
    let (y32, stats32) = ln_f32.forward_with_stats(&wide(&x)).expect("valid");
    assert_eq!(y, narrow(&y32), "{name}: y is the f32 result rounded once");
    assert_eq!(
        stats.mean(),
        stats32.mean().mapv(|m| m as f32),
        "{name}: f32 stats"
    );
    let grads = ln_half.backward(&x, &stats, &dy).expect("valid");
    let grads32 = ln_f32
        .backward(&wide(&x), &stats32, &wide(&dy))
        .expect("valid");
    // dx: backward reads the mean back from f32 statistics (the f32 layer keeps f64), so it
    // may differ from the f32 result by one rounding to half of the row's scale.
    for (row, row32) in grads.input.rows().into_iter().zip(grads32.input.rows()) {
        let scale = row32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (h, g) in row.iter().zip(row32) {
            assert!(
                (h.to_stat() - g).abs() <= half_ulp::<H>(scale),
                "{name} dx: {h} vs {g}"
            );
        }
    }
    for (what, half_grad, f32_grad) in [
        (
            "dgain",
            grads.gain.expect("gain"),
            grads32.gain.expect("gain"),
        ),
        (
            "dbias",
            grads.bias.expect("bias"),
            grads32.bias.expect("bias"),
        ),
    ] {
        // Sums over rows that partly cancel: judged at the scale of the largest of them.
        let scale = f32_grad.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (h, g) in half_grad.iter().zip(&f32_grad) {
            assert!(
                (h.to_stat() - g).abs() <= half_ulp::<H>(scale),
                "{name} {what}: {h} vs {g}"
            );
        }
    }

    // Against an f64 reference on the same inputs: within one rounding to half (plus the f32
    // computation's few ulps).
    let x64 = x.mapv(|v| f64::from(v.to_stat()));
    let reference = common::reference_forward(
        &x64,
        Some(&ln_f32.gain().expect("gain").mapv(f64::from)),
        Some(&ln_f32.bias().expect("bias").mapv(f64::from)),
        1e-5,
    );
    for (h, r) in y.iter().zip(&reference) {
        assert!(
            (f64::from(h.to_stat()) - r).abs() <= f64::from(half_ulp::<H>(*r as f32)),
            "{name}: {h} vs {r}"
        );
    }

    let rms_half = RmsNorm::from_gain(gain.mapv(H::from_stat), 1e-5).expect("valid");
    let rms_f32 =
        RmsNorm::from_gain(gain.mapv(|g| H::from_stat(g).to_stat()), 1e-5).expect("valid");
    assert_eq!(
        rms_half.forward(&x).expect("valid"),
        narrow(&rms_f32.forward(&wide(&x)).expect("valid")),
        "{name}: RmsNorm"
    );
}

#[test]
fn f16_rows_are_the_f32_computation_rounded_once() {
    check::<f16>("f16", 0.0);
    check::<f16>("f16 offset", 1000.0);
}

#[test]
fn bf16_rows_are_the_f32_computation_rounded_once() {
    check::<bf16>("bf16", 0.0);
    check::<bf16>("bf16 offset", 1e4);
}

#[test]
fn half_results_do_not_depend_on_the_thread_count() {
    let mut rng = common::rng(41);
    let x = common::normal_matrix(&mut rng, 200, 512, 3.0, 1.0).mapv(f16::from_f64);
    let ln = LayerNorm::<f16>::new(512).expect("valid");
    let compute = || {
        let (y, stats) = ln.forward_with_stats(&x).expect("valid");
        (y, ln.backward(&x, &stats, &x).expect("valid"))
    };
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    };
    assert!(pool(1).install(compute) == pool(2).install(compute));
}

/// A layer with f32 parameters over half data computes what the half layer with the same
/// parameter values computes: y, statistics and dx bit for bit, and parameter gradients whose
/// rounding to half is the half layer's.
fn check_mixed<H: Element<Stat = f32>>(name: &str)
where
    f32: layernorm::Parameter<H>,
{
    let mut rng = common::rng(41);
    let (rows, dim) = (40, 96);
    let x = common::normal_matrix(&mut rng, rows, dim, 3.0, 2.0).mapv(|v| H::from_stat(v as f32));
    let dy = common::normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(|v| H::from_stat(v as f32));
    // Parameter values that half represents exactly, so both layers hold the same numbers.
    let gain = Array1::linspace(0.5f32, 1.5, dim).mapv(|g| H::from_stat(g).to_stat());
    let bias = Array1::linspace(-0.25f32, 0.25, dim).mapv(|b| H::from_stat(b).to_stat());
    let half = LayerNorm::from_params(gain.mapv(H::from_stat), bias.mapv(H::from_stat), 1e-5)
        .expect("valid");
    let mixed = LayerNorm::from_params(gain, bias, 1e-5)
        .expect("valid")
        .for_activations::<H>();
    let (y_half, stats_half) = half.forward_with_stats(&x).expect("valid");
    let (y_mixed, stats_mixed) = mixed.forward_with_stats(&x).expect("valid");
    assert_eq!(y_half, y_mixed, "{name}: y");
    assert_eq!(stats_half, stats_mixed, "{name}: stats");
    let grads_half = half.backward(&x, &stats_half, &dy).expect("valid");
    let grads_mixed = mixed.backward(&x, &stats_mixed, &dy).expect("valid");
    assert_eq!(grads_half.input, grads_mixed.input, "{name}: dx");
    let gain_mixed: Array1<f32> = grads_mixed.gain.expect("gain");
    assert_eq!(
        grads_half.gain,
        Some(gain_mixed.mapv(H::from_stat)),
        "{name}"
    );
    let rms_half =
        RmsNorm::from_gain(Array1::from_elem(dim, H::from_stat(0.75)), 1e-5).expect("valid");
    let rms_mixed = RmsNorm::from_gain(Array1::from_elem(dim, 0.75f32), 1e-5)
        .expect("valid")
        .for_activations::<H>();
    assert_eq!(
        rms_half.forward(&x).expect("valid"),
        rms_mixed.forward(&x).expect("valid")
    );
}

#[test]
fn f32_parameters_over_half_data_compute_what_half_parameters_compute() {
    check_mixed::<f16>("f16");
    check_mixed::<bf16>("bf16");
}

/// Half accumulators are widened and rounded back by the `half` crate's slice conversions when
/// contiguous, a value at a time when strided: the same bits (see the f32 and f64 test in
/// `api.rs`), for calls of one gradient block and of several.
#[test]
fn half_accumulators_get_the_same_bits_in_any_layout() {
    common::check_accumulator_layouts::<f16>("f16");
    common::check_accumulator_layouts::<bf16>("bf16");
}

/// Many small steps of parameter gradient: an f16 accumulator stops growing once each step is
/// below half its ulp (mixed precision keeps them in f32 for that reason); an f32 accumulator
/// stays within a few f32 ulps per step of the exact sum.
#[test]
fn f32_gradient_accumulators_do_not_lose_small_steps_where_f16_ones_do() {
    let (rows, dim, steps) = (2, 8, 5000);
    let mut rng = common::rng(42);
    let x = common::normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(f16::from_f64);
    let dy = Array2::from_elem((rows, dim), f16::from_f32(1e-4));
    let half = LayerNorm::<f16>::new(dim).expect("valid");
    let mixed = LayerNorm::<f32>::new(dim)
        .expect("valid")
        .for_activations::<f16>();
    let (_, stats) = half.forward_with_stats(&x).expect("valid");
    let mut dx = Array2::from_elem((rows, dim), f16::ZERO);
    let mut bias_half = Array1::from_elem(dim, f16::ZERO);
    let mut bias_mixed = Array1::<f32>::zeros(dim);
    for _ in 0..steps {
        half.backward_into(&x, &stats, &dy, &mut dx, None, Some(&mut bias_half))
            .expect("valid");
        mixed
            .backward_into(&x, &stats, &dy, &mut dx, None, Some(&mut bias_mixed))
            .expect("valid");
    }
    // Exact: every step adds rows · dy = 2 · f16(1e-4), about 1 in all.
    let exact = (steps * rows) as f64 * f64::from(f16::from_f32(1e-4).to_f32());
    let error = |value: f32| (f64::from(value) - exact).abs() / exact;
    let (half_error, mixed_error) = (error(bias_half[0].to_f32()), error(bias_mixed[0]));
    println!("dbias after {steps} steps: exact {exact}, f16 {} ({half_error:.1e}), f32 {} ({mixed_error:.1e})", bias_half[0], bias_mixed[0]);
    assert!(
        half_error > 0.1,
        "the f16 accumulator was expected to drift: {half_error}"
    );
    assert!(
        mixed_error < 1e-5,
        "the f32 accumulator drifted: {mixed_error}"
    );
}
