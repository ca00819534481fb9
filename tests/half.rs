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
