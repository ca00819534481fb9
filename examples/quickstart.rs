//! A first look at `layernorm`: forward and backward on a (batch, seq, hidden) array.
//!
//! Run with `cargo run --release --example quickstart`.

use layernorm::LayerNorm;
use ndarray::{Array1, Array3, Axis};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, seq, hidden) = (2, 3, 8);

    // Activations with very different offsets and scales per position.
    let x = Array3::<f32>::from_shape_fn((batch, seq, hidden), |(b, t, i)| {
        let offset = 100.0 * b as f32 - 10.0 * t as f32;
        let scale = 1.0 + (b + t) as f32;
        offset + scale * ((i * 7 + t * 3) % 5) as f32
    });

    // A layer over the last axis: gain 1, bias 0, eps 1e-5. Give it a non-trivial gain and bias.
    let mut ln = LayerNorm::<f32>::new(hidden)?;
    if let Some(mut gain) = ln.gain_mut() {
        gain.assign(&Array1::linspace(0.5, 1.5, hidden));
    }
    if let Some(mut bias) = ln.bias_mut() {
        bias.fill(0.1);
    }

    let (y, stats) = ln.forward_with_stats(&x)?;
    println!("input  x: shape {:?}", x.shape());
    println!("output y: shape {:?}", y.shape());
    println!(
        "stats   : mean and inv_std shaped {:?} (one per row)",
        stats.mean().shape()
    );
    println!();
    println!("row (b, t)   mean(x)    std(x)   |  mean(x̂)   std(x̂)");
    let no_affine = LayerNorm::<f32>::new_without_affine(hidden)?;
    let x_hat = no_affine.forward(&x)?;
    for b in 0..batch {
        for t in 0..seq {
            let row = x.index_axis(Axis(0), b).index_axis(Axis(0), t).to_owned();
            let normalized = x_hat
                .index_axis(Axis(0), b)
                .index_axis(Axis(0), t)
                .to_owned();
            println!(
                "  ({b}, {t})   {:8.3}  {:8.3}   |  {:8.1e}  {:7.4}",
                row.mean().unwrap_or(0.0),
                row.std(0.0),
                normalized.mean().unwrap_or(0.0),
                normalized.std(0.0),
            );
        }
    }

    // Backward for the loss L = Σ w ⊙ y with fixed weights w, so dy = w.
    let dy = Array3::<f32>::from_shape_fn(x.raw_dim(), |(b, t, i)| {
        ((b + 2 * t + 3 * i) % 4) as f32 - 1.5
    });
    let grads = ln.backward(&x, &stats, &dy)?;
    println!();
    println!("backward: dx shaped {:?}", grads.input.shape());
    if let (Some(gain_grad), Some(bias_grad)) = (&grads.gain, &grads.bias) {
        println!("  dgain = {:.3}", gain_grad);
        println!("  dbias = {:.3}", bias_grad);
    }
    // Shifting a row does not change y, so each row of dx sums to zero.
    let row_sums = grads.input.sum_axis(Axis(2));
    let worst = row_sums.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("  largest |Σ dx| over a row: {worst:.1e} (0 up to rounding)");

    // Errors, not panics: a mismatched last axis names the argument and both shapes.
    let wrong = Array3::<f32>::zeros((batch, seq, hidden + 1));
    if let Err(err) = ln.forward(&wrong) {
        println!();
        println!("forward on a mismatched input: error: {err}");
    }
    Ok(())
}
