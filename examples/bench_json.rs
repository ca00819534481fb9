//! Throughput of `forward_into` and `backward_into` as JSON lines, with the memory ceilings
//! measured in the same run: for machine-readable comparisons (`scripts/compare_pytorch.py`)
//! and thread sweeps on machines where running criterion is not practical.
//!
//! ```text
//! cargo run --release --example bench_json -- --threads 1,2 --shapes 512x1024,8192x4096
//! cargo run --release --features half --example bench_json -- --types f32,f16,bf16
//! ```
//!
//! Each line of stdout is one measurement: `{"op", "type", "rows", "cols", "threads",
//! "median_s", "gbps", ...}`; a readable table goes to stderr. GB/s count the bytes that must
//! move, in the type's own size: forward reads x and writes y (2 · rows · cols · size), backward
//! reads x and dy and writes dx (3 · …). The ceilings move the same bytes with the same number
//! of threads: `memcpy` (`copy_from_slice`, which the C library does with streaming stores
//! for large buffers) for the forward pass, `three_stream` (`dx = a·x + b·dy`, ordinary
//! stores; for f16 and bf16 integer arithmetic on the bits, as the CPU has no half arithmetic)
//! for the backward pass. `rayon_overhead` times a parallel call of as many 2 µs
//! tasks as the forward pass would make and reports its time beyond the work itself
//! (`median_s`), back to back (`rayon_warm`) and after a 2 ms pause (`rayon_cold`, the
//! workers asleep).
//!
//! Times are medians over `--samples` samples of about `--sample-ms` each; each sample runs
//! the call repeatedly on the same buffers (as a training loop does), after a warm-up. The
//! calls are made on a thread of a rayon pool of each thread count; `--from-outside` makes
//! them from the main thread instead, as most programs do, which adds the cost of handing each
//! parallel call to the global pool. `--line-offset N` places x, dy and the output N bytes past
//! a 64-byte cache line rather than where the allocator puts them, to measure what the
//! placement of the caller's arrays costs (BENCHMARKS.md).

use clap::Parser;
use layernorm::{Element, LayerNorm};
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Zip};
use num_traits::{FromPrimitive, Zero};
use rayon::prelude::*;
use serde_json::json;
use std::hint::black_box;
use std::ops::Mul;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "layernorm throughput as JSON lines, with same-run memory ceilings")]
struct Args {
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Shapes rows×cols, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "512x1024,4096x1024,8192x4096,65536x64"
    )]
    shapes: Vec<String>,
    /// Element types: f32, f64, and with the `half` feature f16, bf16.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    types: Vec<String>,
    /// Operations: forward, backward, memcpy, three_stream, rayon_overhead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "forward,backward,memcpy,three_stream"
    )]
    ops: Vec<String>,
    /// Samples per measurement (the median is reported).
    #[arg(long, default_value_t = 11)]
    samples: usize,
    /// Approximate length of one sample, in milliseconds.
    #[arg(long, default_value_t = 40)]
    sample_ms: u64,
    /// Make the calls from the main thread, outside any pool (as a program that never enters
    /// one does), so that each parallel call first hands its work to rayon's global pool,
    /// built with the one thread count given. By default the calls are made on a thread of a
    /// pool of each thread count (`ThreadPool::install`), where that hand-off is not paid.
    #[arg(long)]
    from_outside: bool,
    /// Place x, dy and the output this many bytes past the start of a 64-byte cache line (a
    /// multiple of the element size, below 64), to measure the cost of where the caller's rows
    /// lie. By default they lie where the allocator puts them (glibc: 16 bytes past a line for
    /// large arrays).
    #[arg(long)]
    line_offset: Option<usize>,
}

/// Runs `measure` on a thread of `pool`, or with `--from-outside` on the calling thread.
fn on_caller<R: Send>(
    pool: &rayon::ThreadPool,
    args: &Args,
    measure: impl FnOnce() -> R + Send,
) -> R {
    if args.from_outside {
        measure()
    } else {
        pool.install(measure)
    }
}

/// Median seconds per call of `work`, called as [`on_caller`] says.
fn median_seconds(pool: &rayon::ThreadPool, args: &Args, mut work: impl FnMut() + Send) -> f64 {
    on_caller(pool, args, || {
        // Warm-up, and a first estimate of one call's time.
        let start = Instant::now();
        let mut calls = 0u64;
        while calls < 3 || start.elapsed() < Duration::from_millis(args.sample_ms) {
            work();
            calls += 1;
        }
        let per_call = start.elapsed().as_secs_f64() / calls as f64;
        let calls_per_sample = ((args.sample_ms as f64 / 1e3 / per_call) as u64).max(1);
        let mut samples: Vec<f64> = (0..args.samples.max(1))
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls_per_sample {
                    work();
                }
                start.elapsed().as_secs_f64() / calls_per_sample as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    })
}

/// Values of a fixed pseudo-random sequence in [-1, 3): no `rand` state to carry around.
fn data<A: Element>(rows: usize, cols: usize, seed: u64) -> Array2<A> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_simple_fn((rows, cols), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
        value::<A>(4.0 * unit - 1.0)
    })
}

/// A copy of `values` (standard layout) in a buffer of its own, and where in the buffer the
/// copy starts: `offset` bytes past a 64-byte line, or (`None`) at the buffer's start.
fn placed<A: Copy + Zero>(
    values: &Array2<A>,
    offset: Option<usize>,
) -> Result<(Vec<A>, usize), String> {
    let values = values.as_slice().expect("standard layout");
    let Some(offset) = offset else {
        return Ok((values.to_vec(), 0));
    };
    let size = size_of::<A>();
    if offset >= 64 || !offset.is_multiple_of(size) {
        return Err(format!(
            "--line-offset {offset} is not a multiple of {size} below 64"
        ));
    }
    let mut buffer = vec![A::zero(); values.len() + 64 / size];
    let to_line = buffer.as_ptr().align_offset(64);
    if to_line >= 64 / size {
        return Err("could not place the buffers on cache lines".into());
    }
    let start = (to_line + offset / size) % (64 / size);
    buffer[start..start + values.len()].copy_from_slice(values);
    Ok((buffer, start))
}

/// `value` rounded to `A`.
fn value<A: Element>(value: f64) -> A {
    A::from_stat(A::Stat::from_f64(value).expect("a finite value"))
}

/// One measurement as a JSON line on stdout and a table row on stderr.
fn report(
    op: &str,
    type_name: &str,
    shape: (usize, usize),
    threads: usize,
    seconds: f64,
    bytes: usize,
) {
    let gbps = bytes as f64 / seconds / 1e9;
    let line = json!({
        "op": op,
        "type": type_name,
        "rows": shape.0,
        "cols": shape.1,
        "threads": threads,
        "median_s": seconds,
        "bytes": bytes,
        "gbps": gbps,
    });
    println!("{line}");
    eprintln!(
        "{op:>14} {type_name:>5} {:>11} {threads:>3}t  {:>10.1} µs  {gbps:>7.2} GB/s",
        format!("{}x{}", shape.0, shape.1),
        seconds * 1e6
    );
}

fn run_type<A: Element + Zero + Mul<Output = A> + bytemuck::Pod>(
    args: &Args,
    type_name: &str,
) -> Result<(), String> {
    let size = size_of::<A>();
    for shape_text in &args.shapes {
        let (rows, cols) = shape_text
            .split_once('x')
            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
            .ok_or_else(|| format!("shape {shape_text:?} is not ROWSxCOLS"))?;
        let shape = (rows, cols);
        let elements = rows * cols;
        let (x_buffer, x_start) = placed(&data::<A>(rows, cols, 1), args.line_offset)?;
        let (dy_buffer, dy_start) = placed(&data::<A>(rows, cols, 2), args.line_offset)?;
        let (mut out_buffer, out_start) =
            placed(&Array2::<A>::zeros((rows, cols)), args.line_offset)?;
        let x = ArrayView2::from_shape(shape, &x_buffer[x_start..x_start + elements])
            .expect("one row-major block");
        let dy = ArrayView2::from_shape(shape, &dy_buffer[dy_start..dy_start + elements])
            .expect("one row-major block");
        let mut out =
            ArrayViewMut2::from_shape(shape, &mut out_buffer[out_start..out_start + elements])
                .expect("one row-major block");
        let gain = Array1::from_elem(cols, value::<A>(1.5));
        let bias = Array1::from_elem(cols, value::<A>(0.25));
        let ln = LayerNorm::from_params(gain, bias, 1e-5).map_err(|e| e.to_string())?;
        let (_, stats) = ln.forward_with_stats(&x).map_err(|e| e.to_string())?;
        let mut gain_grad = Array1::<A>::zeros(cols);
        let mut bias_grad = Array1::<A>::zeros(cols);
        for &threads in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| e.to_string())?;
            for op in &args.ops {
                match op.as_str() {
                    "forward" => {
                        let s = median_seconds(&pool, args, || {
                            ln.forward_into(black_box(&x), black_box(&mut out))
                                .expect("valid shapes")
                        });
                        report(op, type_name, shape, threads, s, 2 * elements * size);
                    }
                    "backward" => {
                        let s = median_seconds(&pool, args, || {
                            ln.backward_into(
                                black_box(&x),
                                &stats,
                                black_box(&dy),
                                black_box(&mut out),
                                Some(&mut gain_grad),
                                Some(&mut bias_grad),
                            )
                            .expect("valid shapes")
                        });
                        report(op, type_name, shape, threads, s, 3 * elements * size);
                    }
                    "memcpy" => {
                        let chunk = elements.div_ceil(threads).max(1);
                        let source = x.as_slice().expect("standard layout");
                        let target = out.as_slice_mut().expect("standard layout");
                        let s = median_seconds(&pool, args, || {
                            target
                                .par_chunks_mut(chunk)
                                .zip(source.par_chunks(chunk))
                                .for_each(|(t, s)| t.copy_from_slice(black_box(s)))
                        });
                        report(op, type_name, shape, threads, s, 2 * elements * size);
                    }
                    "three_stream" if size == 2 => {
                        // Half precision has no arithmetic of its own on the CPU (the `half`
                        // crate's operators convert each value in software, 0.45 GB/s on the
                        // AVX-512 VM): the same three streams with integer arithmetic on the
                        // bits, which vectorizes, so that the ceiling is memory's.
                        let bits = |values: &ArrayView2<A>| -> Vec<u16> {
                            bytemuck::cast_slice(values.as_slice().expect("standard layout"))
                                .to_vec()
                        };
                        let (x_bits, dy_bits) = (bits(&x), bits(&dy));
                        let mut out_bits = vec![0u16; elements];
                        let chunk = elements.div_ceil(threads).max(1);
                        let s = median_seconds(&pool, args, || {
                            (black_box(&mut out_bits).par_chunks_mut(chunk))
                                .zip(black_box(&x_bits).par_chunks(chunk))
                                .zip(black_box(&dy_bits).par_chunks(chunk))
                                .for_each(|((o, x), dy)| {
                                    for ((o, &x), &dy) in o.iter_mut().zip(x).zip(dy) {
                                        *o = x.wrapping_mul(3).wrapping_add(dy);
                                    }
                                })
                        });
                        report(op, type_name, shape, threads, s, 3 * elements * size);
                    }
                    "three_stream" => {
                        let (a, b) = (value::<A>(1.5), value::<A>(0.25));
                        let s = median_seconds(&pool, args, || {
                            Zip::from(black_box(&mut out))
                                .and(black_box(&x))
                                .and(black_box(&dy))
                                .par_for_each(|o, &x, &dy| *o = a * x + b * dy)
                        });
                        report(op, type_name, shape, threads, s, 3 * elements * size);
                    }
                    "rayon_overhead" => {
                        // As many tasks as the crate's split makes for this shape, each busy
                        // for 2 µs: what a call takes beyond tasks · 2 µs / threads is the
                        // cost of handing the work to the pool.
                        let tasks = layernorm_task_count(rows, cols, threads);
                        let busy = Duration::from_micros(2);
                        let call = || {
                            (0..tasks).into_par_iter().for_each(|_| {
                                let start = Instant::now();
                                while start.elapsed() < busy {}
                            })
                        };
                        let ideal = busy.as_secs_f64() * tasks.div_ceil(threads) as f64;
                        let warm = median_seconds(&pool, args, call);
                        report("rayon_warm", type_name, shape, threads, warm - ideal, 0);
                        let cold = on_caller(&pool, args, || {
                            let mut samples: Vec<f64> = (0..args.samples.max(1) * 10)
                                .map(|_| {
                                    std::thread::sleep(Duration::from_millis(2));
                                    let start = Instant::now();
                                    call();
                                    start.elapsed().as_secs_f64()
                                })
                                .collect();
                            samples.sort_by(f64::total_cmp);
                            samples[samples.len() / 2]
                        });
                        report("rayon_cold", type_name, shape, threads, cold - ideal, 0);
                    }
                    other => return Err(format!("unknown op {other:?}")),
                }
            }
        }
    }
    Ok(())
}

/// The number of tasks the crate's split makes for a batch (see `rows.rs`): ~4 per thread,
/// none under 16 384 elements, one below 65 536 elements in all.
fn layernorm_task_count(rows: usize, cols: usize, threads: usize) -> usize {
    if threads <= 1 || rows * cols < 1 << 16 {
        return 1;
    }
    let per_task = rows
        .div_ceil(threads * 4)
        .max((1usize << 14).div_ceil(cols))
        .max(1);
    rows.div_ceil(per_task)
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.from_outside {
        let &[threads] = args.threads.as_slice() else {
            return Err("--from-outside takes one thread count (the global pool's)".into());
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| e.to_string())?;
    }
    for type_name in &args.types {
        match type_name.as_str() {
            "f32" => run_type::<f32>(&args, type_name)?,
            "f64" => run_type::<f64>(&args, type_name)?,
            #[cfg(feature = "half")]
            "f16" => run_type::<half::f16>(&args, type_name)?,
            #[cfg(feature = "half")]
            "bf16" => run_type::<half::bf16>(&args, type_name)?,
            other => {
                return Err(format!(
                    "unknown type {other:?} (f16 and bf16 need --features half)"
                ))
            }
        }
    }
    Ok(())
}
