//! Results do not depend on the number of threads: forward, stats, dx, dgain and dbias are
//! bitwise identical in rayon pools of 1, 2, 3, 4 and 16 threads (1 thread takes the serial path;
//! 16 leaves some threads without rows under `LAYERNORM_SCHEDULE=static`, which CI also runs)
//! and when called from outside any pool (rayon's global pool), for f32, f64 and (feature
//! `half`) f16 and bf16.
//! f64 data shows any change in the order of the gradient sums (f32 results would round it away).
//! Backward splits at 8-row groups when 64-row gradient blocks would leave threads idle.

#![cfg(feature = "rayon")]

mod common;

use layernorm::{Element, LayerNorm};
use ndarray::{Array1, Array2};

fn run_in_pool<T: Send>(threads: usize, work: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(work)
}

fn check_thread_independence<A: Element>(convert: fn(f64) -> A, huge: f64) {
    // Shapes above the parallel threshold, with row counts that leave a partial gradient block.
    for (rows, dim) in [(333, 1000), (1000, 67), (70, 4096)] {
        let mut rng = common::rng(rows as u64);
        let mut x = common::normal_matrix(&mut rng, rows, dim, 50.0, 3.0);
        // Two rows whose squares overflow: the kernels hand them to the exact fallback, whose
        // gain-gradient terms join the sums of their 8-row group.
        for row in [5, rows - 3] {
            x.row_mut(row).mapv_inplace(|v| v * huge);
        }
        let x = x.mapv(convert);
        let dy = common::normal_matrix(&mut rng, rows, dim, 0.0, 1.0).mapv(convert);
        let gain = common::uniform_vector(&mut rng, dim, 0.5, 1.5).mapv(convert);
        let bias = common::uniform_vector(&mut rng, dim, -1.0, 1.0).mapv(convert);
        let ln = LayerNorm::from_params(gain, bias, 1e-5).expect("valid");
        let compute = || {
            let (y, stats) = ln.forward_with_stats(&x).expect("valid");
            let grads = ln.backward(&x, &stats, &dy).expect("valid");
            let mut dx = Array2::from_elem((rows, dim), convert(0.0));
            let mut gain_acc = Array1::from_elem(dim, convert(0.125));
            ln.backward_into(&x, &stats, &dy, &mut dx, Some(&mut gain_acc), None)
                .expect("valid");
            (y, stats, grads, dx, gain_acc)
        };
        let serial = run_in_pool(1, compute);
        for threads in [2, 3, 4, 16] {
            let parallel = run_in_pool(threads, compute);
            assert!(
                serial == parallel,
                "{rows}x{dim}: {threads} threads differ from 1"
            );
        }
        // From this thread, outside any pool: the calls hand their work to the global pool.
        assert!(
            serial == compute(),
            "{rows}x{dim}: a call from outside the pool differs"
        );
    }
}

#[test]
fn f32_results_are_bitwise_identical_on_any_thread_count() {
    check_thread_independence(|v| v as f32, 1e30);
}

#[test]
fn f64_results_are_bitwise_identical_on_any_thread_count() {
    check_thread_independence(|v| v, 1e160);
}

/// Half tasks hold whole 64-row gradient blocks, several of them on 2 threads at 1000×67.
/// f16 cannot hold values whose squares overflow f32; bf16 can (its fallback rows).
#[cfg(feature = "half")]
#[test]
fn half_results_are_bitwise_identical_on_any_thread_count() {
    check_thread_independence(half::f16::from_f64, 300.0);
    check_thread_independence(half::bf16::from_f64, 1e30);
}

/// A forward output of a typical last-level cache or more (32 MiB of f32 here) is written with
/// streaming stores where the CPU has them (`kernels/stream.rs`); in small batches, it is
/// written with ordinary stores. The results are the same bits, serial and on 2 or 3 threads.
#[test]
fn a_large_forward_gives_the_same_bits_as_small_batches() {
    let (rows, dim) = (8192, 1024);
    let mut rng = common::rng(17);
    let x = common::normal_matrix(&mut rng, rows, dim, 10.0, 2.0).mapv(|v| v as f32);
    let gain = common::uniform_vector(&mut rng, dim, 0.5, 1.5).mapv(|v| v as f32);
    let bias = common::uniform_vector(&mut rng, dim, -1.0, 1.0).mapv(|v| v as f32);
    let ln = LayerNorm::from_params(gain, bias, 1e-5).expect("valid");
    let mut small_batches = Array2::<f32>::zeros((rows, dim));
    for (x_rows, out_rows) in x
        .axis_chunks_iter(ndarray::Axis(0), 16)
        .zip(small_batches.axis_chunks_iter_mut(ndarray::Axis(0), 16))
    {
        let mut out_rows = out_rows;
        ln.forward_into(&x_rows, &mut out_rows).expect("valid");
    }
    for threads in [1, 2, 3] {
        let whole = run_in_pool(threads, || ln.forward(&x).expect("valid"));
        assert!(whole == small_batches, "{threads} threads");
    }
}
