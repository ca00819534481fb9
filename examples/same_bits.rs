//! A fingerprint of everything the crate computes, to check the same-bits guarantee on a
//! machine: run it under each instruction-set cap and thread count and compare the last line.
//!
//! ```text
//! for isa in scalar avx2 avx512 default; do
//!     LAYERNORM_MAX_ISA=$isa cargo run --release --features half --example same_bits | tail -1
//! done
//! LAYERNORM_STORES=streaming cargo run --release --features half --example same_bits | tail -1
//! ```
//!
//! Every line must be the same whatever the cap, the stores, the thread count and the machine:
//! forward (with statistics, in place, the fused residual step), backward (dx, dgain, dbias,
//! the residual backward) of LayerNorm and RmsNorm, f32 and f64 (and f16, bf16 with the `half`
//! feature), on row lengths from 5 to 4096 (tails, short and long rows), centered and offset
//! rows, rows whose squares overflow (the exact fallback), in pools of 1, 2 and 16 threads.
//! Hashes are of the values' bit patterns (`DefaultHasher`, fixed keys: stable across runs of
//! one build; compare within one build).

use layernorm::{Element, LayerNorm, RmsNorm};
use ndarray::{Array1, Array2};
use num_traits::ToPrimitive;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Rows of values `offset + 4·u − 2` (u uniform in [0, 1)), from a fixed sequence, with row 1
/// scaled by `huge` (its squares overflow: the exact fallback path).
fn data(rows: usize, dim: usize, seed: u64, offset: f64, huge: f64) -> Array2<f64> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    Array2::from_shape_fn((rows, dim), |(row, _)| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let value = offset + ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 4.0;
        if row == 1 {
            value * huge
        } else {
            value
        }
    })
}

/// Feeds every value's bit pattern (widened exactly to f64) into `hasher`.
fn feed<T: ToPrimitive>(hasher: &mut DefaultHasher, values: impl IntoIterator<Item = T>) {
    for value in values {
        let wide = value.to_f64().expect("a float widens to f64");
        // Rust leaves a NaN's sign and payload unspecified: every NaN hashes as one value.
        let bits = if wide.is_nan() {
            u64::MAX
        } else {
            wide.to_bits()
        };
        bits.hash(hasher);
    }
}

/// Everything one element type computes on one input, hashed.
fn fingerprint<A: Element + ToPrimitive>(
    x: &Array2<f64>,
    dy: &Array2<f64>,
    residual: &Array2<f64>,
    convert: fn(f64) -> A,
) -> Result<u64, layernorm::NormError>
where
    A::Stat: ToPrimitive,
{
    let dim = x.ncols();
    let (x, dy, residual) = (x.mapv(convert), dy.mapv(convert), residual.mapv(convert));
    let gain = Array1::from_shape_fn(dim, |i| convert(0.5 + (i % 7) as f64 * 0.1));
    let bias = Array1::from_shape_fn(dim, |i| convert(-0.3 + (i % 5) as f64 * 0.1));
    let mut hasher = DefaultHasher::new();

    let ln = LayerNorm::from_params(gain.clone(), bias.clone(), 1e-5)?;
    let (y, stats) = ln.forward_with_stats(&x)?;
    let grads = ln.backward(&x, &stats, &dy)?;
    feed(&mut hasher, y);
    feed(&mut hasher, stats.mean().iter().copied());
    feed(&mut hasher, stats.inv_std().iter().copied());
    feed(&mut hasher, grads.input);
    for grad in [grads.gain, grads.bias].into_iter().flatten() {
        feed(&mut hasher, grad);
    }
    let mut in_place = x.clone();
    ln.forward_inplace(&mut in_place)?;
    feed(&mut hasher, in_place);
    let step = ln.forward_residual(&x, &residual)?;
    let residual_grads = ln.backward_residual(&step.sum, &step.stats, &dy, &residual)?;
    feed(&mut hasher, step.output);
    feed(&mut hasher, step.sum);
    feed(&mut hasher, residual_grads.input);

    let rms = RmsNorm::from_params(gain, bias, 1e-5)?;
    let (y, stats) = rms.forward_with_stats(&x)?;
    let grads = rms.backward(&x, &stats, &dy)?;
    feed(&mut hasher, y);
    feed(&mut hasher, stats.inv_rms().iter().copied());
    feed(&mut hasher, grads.input);
    for grad in [grads.gain, grads.bias].into_iter().flatten() {
        feed(&mut hasher, grad);
    }
    Ok(hasher.finish())
}

/// f16 data from the f64 data: rounded to f32, then to f16 (each an exact IEEE rounding to
/// nearest, ties to even, on every CPU). Not `half::f16::from_f64`: that rounds once on
/// aarch64 (one instruction) but twice, through f32, on x86-64 with F16C, so the inputs, and
/// the fingerprint, differed between the two. (`half::bf16::from_f64` is the same code on
/// every CPU, and the bf16 data are kept as they were.)
#[cfg(feature = "half")]
fn f16_data(value: f64) -> half::f16 {
    half::f16::from_f32(value as f32)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut total = DefaultHasher::new();
    for threads in [1, 2, 16] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        for (rows, dim) in [
            (3, 5),
            (17, 64),
            (100, 100),
            (333, 1000),
            (70, 4096),
            (1000, 67),
        ] {
            for offset in [0.0, 1e4] {
                let seed = (rows * dim) as u64;
                let x = data(rows, dim, seed, offset, 1.0);
                let dy = data(rows, dim, seed + 1, 0.0, 1.0);
                let residual = data(rows, dim, seed + 2, 0.0, 1.0);
                let (huge_32, huge_64) = (
                    data(rows, dim, seed, offset, 1e30),
                    data(rows, dim, seed, offset, 1e160),
                );
                let line = vec![
                    pool.install(|| fingerprint(&x, &dy, &residual, |v| v as f32))?,
                    pool.install(|| fingerprint(&x, &dy, &residual, |v| v))?,
                    pool.install(|| fingerprint(&huge_32, &dy, &residual, |v| v as f32))?,
                    pool.install(|| fingerprint(&huge_64, &dy, &residual, |v| v))?,
                    #[cfg(feature = "half")]
                    pool.install(|| fingerprint(&x, &dy, &residual, f16_data))?,
                    #[cfg(feature = "half")]
                    pool.install(|| fingerprint(&x, &dy, &residual, half::bf16::from_f64))?,
                ];
                let text: Vec<String> = line.iter().map(|h| format!("{h:016x}")).collect();
                println!(
                    "{threads:>2} threads, {rows}x{dim}, offset {offset}: {}",
                    text.join(" ")
                );
                line.hash(&mut total);
            }
        }
    }
    println!("all: {:016x}", total.finish());
    Ok(())
}
