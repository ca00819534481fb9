//! Forward and backward throughput, f32 and f64, against a naive ndarray implementation and
//! against the memory ceiling: a plain `y = a·x + b` pass over the same bytes (forward) and a
//! 3-stream `dx = a·x + b·dy` pass (backward).
//!
//! Run with `cargo bench --bench layer_norm`; filter with e.g. `-- forward/f32`.
//! Throughput counts the bytes that must move: forward reads x and writes y
//! (2·rows·cols·size_of::<A>()), backward reads x and dy and writes dx (3·rows·cols·…).

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use layernorm::{Element, LayerNorm, NormStats, RmsNorm};
use ndarray::{Array1, Array2, Axis, Zip};
use num_traits::{Float, FromPrimitive};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 6] = [
    (32, 768),
    (512, 1024),
    (4096, 1024),
    (4096, 1000),
    (8192, 4096),
    (65536, 64),
];

fn random<A: Float>(rows: usize, cols: usize, seed: u64) -> Array2<A> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    Array2::from_shape_simple_fn((rows, cols), || {
        A::from(1.0 + 2.0 * normal.sample(&mut rng)).expect("representable")
    })
}

/// `(x̂, r)` with `r = 1/√(σ² + ε)` per row (as a column) and `x̂ = (x − μ)·r`, written the
/// obvious way with ndarray operations.
fn naive_normalize<A: Float + FromPrimitive + 'static>(
    x: &Array2<A>,
    eps: A,
) -> (Array2<A>, Array2<A>) {
    let row_mean = |a: &Array2<A>| {
        a.mean_axis(Axis(1))
            .expect("non-empty")
            .insert_axis(Axis(1))
    };
    let centered = x - &row_mean(x);
    let variance = row_mean(&centered.mapv(|v| v * v));
    let inv_std = variance.mapv(|v| (v + eps).sqrt().recip());
    (centered * &inv_std, inv_std)
}

/// Naive layer normalization: the baseline a user would write without this crate.
fn naive_forward<A: Float + FromPrimitive + 'static>(
    x: &Array2<A>,
    gain: &Array1<A>,
    bias: &Array1<A>,
    eps: A,
) -> Array2<A> {
    naive_normalize(x, eps).0 * gain + bias
}

/// Its backward, from the same formulas (recomputing the statistics, as a naive user would).
fn naive_backward<A: Float + FromPrimitive + 'static>(
    x: &Array2<A>,
    gain: &Array1<A>,
    dy: &Array2<A>,
    eps: A,
) -> (Array2<A>, Array1<A>, Array1<A>) {
    let (x_hat, inv_std) = naive_normalize(x, eps);
    let g = dy * gain;
    let mean_g = g
        .mean_axis(Axis(1))
        .expect("non-empty")
        .insert_axis(Axis(1));
    let mean_g_x_hat = (&g * &x_hat)
        .mean_axis(Axis(1))
        .expect("non-empty")
        .insert_axis(Axis(1));
    let dx = (g - &mean_g - &x_hat * &mean_g_x_hat) * &inv_std;
    let dgain = (dy * &x_hat).sum_axis(Axis(0));
    let dbias = dy.sum_axis(Axis(0));
    (dx, dgain, dbias)
}

/// Times `iters` calls of `work` inside `pool`, so that the library's parallel driver sees the
/// pool's thread count (the timing loop itself runs on a pool thread: no hand-off per call).
fn time_in(pool: &rayon::ThreadPool, iters: u64, mut work: impl FnMut() + Send) -> Duration {
    pool.install(|| {
        let start = Instant::now();
        for _ in 0..iters {
            work();
        }
        start.elapsed()
    })
}

/// Thread pools of one and two threads; each benchmark runs inside one.
fn pools() -> [(&'static str, rayon::ThreadPool); 2] {
    [1, 2].map(|threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        (if threads == 1 { "1t" } else { "2t" }, pool)
    })
}

fn configured<'a>(c: &'a mut Criterion, name: String) -> criterion::BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    group.sample_size(20);
    group
}

fn bench_forward<A: Element + Float + FromPrimitive>(c: &mut Criterion, type_name: &str) {
    let mut group = configured(c, format!("forward/{type_name}"));
    let pools = pools();
    for (rows, cols) in SHAPES {
        let shape = format!("{rows}x{cols}");
        let x = random::<A>(rows, cols, 1);
        let gain = Array1::from_elem(cols, A::from(1.5).expect("representable"));
        let bias = Array1::from_elem(cols, A::from(0.25).expect("representable"));
        let ln = LayerNorm::from_params(gain.clone(), bias.clone(), 1e-5).expect("valid");
        let mut out = Array2::<A>::zeros((rows, cols));
        let (scale, shift) = (A::from(1.5).expect("1.5"), A::from(0.25).expect("0.25"));
        // Forward reads x and writes y: 2 · rows · cols · size_of::<A>() bytes.
        group.throughput(Throughput::Bytes((2 * rows * cols * size_of::<A>()) as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(format!("forward_into/{threads}"), &shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        ln.forward_into(black_box(&x), black_box(&mut out))
                            .expect("valid")
                    })
                })
            });
            // The memory ceiling: one read stream and one write stream of the same bytes.
            let id = BenchmarkId::new(format!("ceiling_a_x_plus_b/{threads}"), &shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        Zip::from(black_box(&mut out))
                            .and(black_box(&x))
                            .par_for_each(|y, &x| *y = scale * x + shift)
                    })
                })
            });
        }
        let one_thread = &pools[0].1;
        group.bench_function(BenchmarkId::new("forward/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    black_box(ln.forward(black_box(&x)).expect("valid"));
                })
            })
        });
        let eps = A::from(1e-5).expect("representable");
        group.bench_function(BenchmarkId::new("naive_ndarray/1t", &shape), |b| {
            b.iter(|| naive_forward(black_box(&x), &gain, &bias, eps))
        });
    }
    group.finish();
}

fn bench_backward<A: Element + Float + FromPrimitive>(c: &mut Criterion, type_name: &str) {
    let mut group = configured(c, format!("backward/{type_name}"));
    let pools = pools();
    for (rows, cols) in SHAPES {
        let shape = format!("{rows}x{cols}");
        let x = random::<A>(rows, cols, 2);
        let dy = random::<A>(rows, cols, 3);
        let gain = Array1::from_elem(cols, A::from(1.5).expect("representable"));
        let ln = LayerNorm::from_params(gain.clone(), Array1::from_elem(cols, A::zero()), 1e-5)
            .expect("valid");
        let (_, stats) = ln.forward_with_stats(&x).expect("valid");
        let mut dx = Array2::<A>::zeros((rows, cols));
        let mut gain_grad = Array1::<A>::zeros(cols);
        let mut bias_grad = Array1::<A>::zeros(cols);
        let (scale, shift) = (A::from(1.5).expect("1.5"), A::from(0.25).expect("0.25"));
        // Backward reads x and dy and writes dx: 3 · rows · cols · size_of::<A>() bytes.
        group.throughput(Throughput::Bytes((3 * rows * cols * size_of::<A>()) as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(format!("backward_into/{threads}"), &shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        ln.backward_into(
                            black_box(&x),
                            &stats,
                            black_box(&dy),
                            black_box(&mut dx),
                            Some(&mut gain_grad),
                            Some(&mut bias_grad),
                        )
                        .expect("valid")
                    })
                })
            });
            // The memory ceiling: two read streams and one write stream of the same bytes.
            let id = BenchmarkId::new(format!("ceiling_3_stream/{threads}"), &shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        Zip::from(black_box(&mut dx))
                            .and(black_box(&x))
                            .and(black_box(&dy))
                            .par_for_each(|out, &x, &dy| *out = scale * x + shift * dy)
                    })
                })
            });
        }
        let eps = A::from(1e-5).expect("representable");
        group.bench_function(BenchmarkId::new("naive_ndarray/1t", &shape), |b| {
            b.iter(|| naive_backward(black_box(&x), &gain, black_box(&dy), eps))
        });
    }
    group.finish();
}

/// The fused residual step (`sum = x + residual`, `y = LN(sum)`) against adding and then
/// normalizing in two calls, f32, one thread. Both move 4 · rows · cols · 4 bytes at least
/// (read x and residual, write sum and y); the unfused form reads the sum back from memory.
fn bench_residual(c: &mut Criterion) {
    let mut group = configured(c, "residual/f32".to_string());
    let pools = pools();
    let one_thread = &pools[0].1;
    for (rows, cols) in [(512, 1024), (4096, 1024), (8192, 4096)] {
        let shape = format!("{rows}x{cols}");
        let x = random::<f32>(rows, cols, 4);
        let residual = random::<f32>(rows, cols, 5);
        let ln = LayerNorm::<f32>::new(cols).expect("valid");
        let (mut out, mut sum) = (
            Array2::<f32>::zeros((rows, cols)),
            Array2::<f32>::zeros((rows, cols)),
        );
        let mut stats = NormStats::zeros(ndarray::Ix1(rows));
        group.throughput(Throughput::Bytes(
            (4 * rows * cols * size_of::<f32>()) as u64,
        ));
        group.bench_function(BenchmarkId::new("fused/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    ln.forward_residual_into(
                        black_box(&x),
                        black_box(&residual),
                        &mut out,
                        &mut sum,
                        &mut stats,
                    )
                    .expect("valid")
                })
            })
        });
        group.bench_function(BenchmarkId::new("add_then_normalize/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    Zip::from(&mut sum)
                        .and(black_box(&x))
                        .and(black_box(&residual))
                        .for_each(|s, &x, &r| *s = x + r);
                    ln.forward_with_stats_into(&sum, &mut out, &mut stats)
                        .expect("valid")
                })
            })
        });
    }
    group.finish();
}

/// RmsNorm shares LayerNorm's kernels without the centering: forward_into and backward_into,
/// f32, one thread, next to the same ceilings (2 and 3 streams of the same bytes).
fn bench_rms(c: &mut Criterion) {
    let mut group = configured(c, "rms_norm/f32".to_string());
    let pools = pools();
    let one_thread = &pools[0].1;
    for (rows, cols) in [(512, 1024), (4096, 1024), (8192, 4096)] {
        let shape = format!("{rows}x{cols}");
        let x = random::<f32>(rows, cols, 6);
        let dy = random::<f32>(rows, cols, 7);
        let rms = RmsNorm::<f32>::new(cols).expect("valid");
        let (_, stats) = rms.forward_with_stats(&x).expect("valid");
        let mut out = Array2::<f32>::zeros((rows, cols));
        let mut gain_grad = Array1::<f32>::zeros(cols);
        group.throughput(Throughput::Bytes(
            (2 * rows * cols * size_of::<f32>()) as u64,
        ));
        group.bench_function(BenchmarkId::new("forward_into/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    rms.forward_into(black_box(&x), &mut out).expect("valid")
                })
            })
        });
        group.bench_function(BenchmarkId::new("ceiling_a_x_plus_b/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    Zip::from(&mut out)
                        .and(black_box(&x))
                        .for_each(|y, &x| *y = 1.5 * x + 0.25)
                })
            })
        });
        group.throughput(Throughput::Bytes(
            (3 * rows * cols * size_of::<f32>()) as u64,
        ));
        group.bench_function(BenchmarkId::new("backward_into/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    rms.backward_into(
                        black_box(&x),
                        &stats,
                        black_box(&dy),
                        &mut out,
                        Some(&mut gain_grad),
                        None,
                    )
                    .expect("valid")
                })
            })
        });
        group.bench_function(BenchmarkId::new("ceiling_3_stream/1t", &shape), |b| {
            b.iter_custom(|iters| {
                time_in(one_thread, iters, || {
                    Zip::from(&mut out)
                        .and(black_box(&x))
                        .and(black_box(&dy))
                        .for_each(|o, &x, &dy| *o = 1.5 * x + 0.25 * dy)
                })
            })
        });
    }
    group.finish();
}

/// Half precision against f32 in the same group, one thread: `forward_into` and
/// `backward_into` of f16, bf16 and f16 data with f32 parameters (mixed precision) next to f32,
/// GB/s counting each type's own element size. Run with
/// `cargo bench --features half --bench layer_norm -- half/`.
#[cfg(feature = "half")]
fn bench_half(c: &mut Criterion) {
    use half::{bf16, f16};
    let mut group = configured(c, "half".to_string());
    let one_thread = &pools()[0].1;
    for (rows, cols) in [(512, 1024), (4096, 1024), (8192, 4096)] {
        let shape = format!("{rows}x{cols}");
        let x = random::<f32>(rows, cols, 4);
        let dy = random::<f32>(rows, cols, 5);
        fn run<A: Element, P: layernorm::Parameter<A>>(
            group: &mut criterion::BenchmarkGroup<'_, WallTime>,
            pool: &rayon::ThreadPool,
            (name, shape): (&str, &str),
            ln: LayerNorm<A, P>,
            (x, dy): (Array2<A>, Array2<A>),
            gradients: (Array1<P>, Array1<P>),
        ) {
            let (rows, cols) = x.dim();
            let (mut gain_grad, mut bias_grad) = gradients;
            let mut out = x.clone();
            let mut stats = ln.stats_for(&x);
            ln.forward_with_stats_into(&x, &mut out, &mut stats)
                .expect("valid");
            // Forward moves 2 and backward 3 elements of A per element of x.
            let bytes = (rows * cols * size_of::<A>()) as u64;
            group.throughput(Throughput::Bytes(2 * bytes));
            let id = BenchmarkId::new(format!("{name}/forward_into/1t"), shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        ln.forward_into(black_box(&x), black_box(&mut out))
                            .expect("valid")
                    })
                })
            });
            group.throughput(Throughput::Bytes(3 * bytes));
            let id = BenchmarkId::new(format!("{name}/backward_into/1t"), shape);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    time_in(pool, iters, || {
                        ln.backward_into(
                            black_box(&x),
                            &stats,
                            black_box(&dy),
                            black_box(&mut out),
                            Some(&mut gain_grad),
                            Some(&mut bias_grad),
                        )
                        .expect("valid")
                    })
                })
            });
        }
        let zeros = || (Array1::zeros(cols), Array1::zeros(cols));
        let halves = |to: fn(f32) -> f16| (x.mapv(to), dy.mapv(to));
        let f32_layer = LayerNorm::<f32>::new(cols).expect("valid");
        run(
            &mut group,
            one_thread,
            ("f32", &shape),
            f32_layer.clone(),
            (x.clone(), dy.clone()),
            zeros(),
        );
        let f16_zeros = (
            Array1::from_elem(cols, f16::ZERO),
            Array1::from_elem(cols, f16::ZERO),
        );
        run(
            &mut group,
            one_thread,
            ("f16", &shape),
            LayerNorm::<f16>::new(cols).expect("valid"),
            halves(f16::from_f32),
            f16_zeros,
        );
        let bf16_zeros = (
            Array1::from_elem(cols, bf16::ZERO),
            Array1::from_elem(cols, bf16::ZERO),
        );
        let bf16_data = (x.mapv(bf16::from_f32), dy.mapv(bf16::from_f32));
        run(
            &mut group,
            one_thread,
            ("bf16", &shape),
            LayerNorm::<bf16>::new(cols).expect("valid"),
            bf16_data,
            bf16_zeros,
        );
        run(
            &mut group,
            one_thread,
            ("f16_f32_params", &shape),
            f32_layer.for_activations::<f16>(),
            halves(f16::from_f32),
            zeros(),
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_forward::<f32>(c, "f32");
    bench_forward::<f64>(c, "f64");
    bench_backward::<f32>(c, "f32");
    bench_backward::<f64>(c, "f64");
    bench_residual(c);
    bench_rms(c);
    #[cfg(feature = "half")]
    bench_half(c);
}

criterion_group!(layer_norm, benches);
criterion_main!(layer_norm);
