//! No hidden allocations: a counting global allocator shows that `forward_into`,
//! `forward_inplace` and `backward_into` allocate nothing on the serial path (backward: after
//! the thread's first call, which allocates a few rows of `dim` that do not grow with the
//! number of rows), and measures what the parallel path allocates.

use layernorm::{LayerNorm, NormStats, RmsNorm};
use ndarray::{Array1, Array2, Ix1};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes requested.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated while `work` runs (the work runs on the calling thread).
fn allocated_by(work: impl FnOnce()) -> usize {
    let before = ALLOCATED.load(Ordering::SeqCst);
    work();
    ALLOCATED.load(Ordering::SeqCst) - before
}

struct Buffers {
    x: Array2<f32>,
    dy: Array2<f32>,
    out: Array2<f32>,
    stats: NormStats<f64, Ix1>,
    gain_grad: Array1<f32>,
    bias_grad: Array1<f32>,
}

fn buffers(rows: usize, dim: usize) -> Buffers {
    let x = Array2::from_shape_fn((rows, dim), |(r, c)| ((r * 7 + c * 3) % 11) as f32 - 5.0);
    Buffers {
        dy: x.mapv(|v| v * 0.5 + 1.0),
        out: Array2::zeros((rows, dim)),
        stats: NormStats::zeros(Ix1(rows)),
        gain_grad: Array1::zeros(dim),
        bias_grad: Array1::zeros(dim),
        x,
    }
}

/// Bytes allocated by each training-loop call on `rows` × `dim`, in a pool of `threads`: the
/// three forward forms, then a first and a second `backward_into`.
fn measure(rows: usize, dim: usize, threads: usize) -> [usize; 5] {
    let ln = LayerNorm::<f32>::new(dim).expect("valid");
    let mut b = buffers(rows, dim);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        // Warm up once so lazily initialised state (CPU detection, thread-locals) is not counted.
        ln.forward_with_stats_into(&b.x, &mut b.out, &mut b.stats)
            .expect("valid");
        [
            allocated_by(|| ln.forward_into(&b.x, &mut b.out).expect("valid")),
            allocated_by(|| {
                ln.forward_with_stats_into(&b.x, &mut b.out, &mut b.stats)
                    .expect("valid")
            }),
            allocated_by(|| ln.forward_inplace(&mut b.out).expect("valid")),
            allocated_by(|| backward(&ln, &mut b)),
            allocated_by(|| backward(&ln, &mut b)),
        ]
    })
}

fn backward(ln: &LayerNorm<f32>, b: &mut Buffers) {
    ln.backward_into(
        &b.x,
        &b.stats,
        &b.dy,
        &mut b.out,
        Some(&mut b.gain_grad),
        Some(&mut b.bias_grad),
    )
    .expect("valid")
}

/// One test function, so that no other test thread allocates while the counter is read.
#[test]
fn training_loop_calls_allocate_nothing_that_grows_with_the_rows() {
    let dim = 256;
    let small = measure(64, dim, 1);
    let large = measure(2048, dim, 1);
    println!("serial, dim {dim}: 64 rows {small:?} bytes, 2048 rows {large:?} bytes");
    assert_eq!(&small[..3], &[0, 0, 0], "forward paths allocate nothing");
    assert_eq!(&large[..3], &[0, 0, 0], "forward paths allocate nothing");
    // A call of one gradient block (64 rows) adds to the caller's accumulators directly; a
    // longer call keeps f64 totals too. Nothing more for more rows.
    assert!(
        small[3] <= large[3],
        "backward allocates no more for 64 rows than for 2048"
    );
    // Two f64 totals, two f64 block sums and the kernel's f32 scratch: a few times dim.
    assert!(
        large[3] <= 8 * dim * 8,
        "backward allocates {} bytes",
        large[3]
    );
    // Later calls reuse the buffers the thread keeps (totals, block sums, the kernel's working
    // row): nothing at all.
    assert_eq!(small[4], 0, "a second backward allocates nothing");
    assert_eq!(large[4], 0, "a second backward allocates nothing");

    let rms = RmsNorm::<f32>::new(dim).expect("valid");
    let mut b = buffers(1024, dim);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let bytes = pool.install(|| {
        rms.forward_into(&b.x, &mut b.out).expect("valid");
        allocated_by(|| rms.forward_into(&b.x, &mut b.out).expect("valid"))
    });
    assert_eq!(bytes, 0, "RmsNorm forward_into");

    // Half data with half parameters: the parameters are widened to f32 for the kernels into
    // buffers the thread keeps, so forward allocates nothing after the first call.
    #[cfg(feature = "half")]
    {
        let ln = LayerNorm::<half::f16>::new(dim).expect("valid");
        let x = b.x.mapv(half::f16::from_f32);
        let mut out = x.clone();
        let bytes = pool.install(|| {
            ln.forward_into(&x, &mut out).expect("valid");
            allocated_by(|| ln.forward_into(&x, &mut out).expect("valid"))
        });
        assert_eq!(bytes, 0, "f16 forward_into");
        // Long rows (past 256 f32 values), whose statistics are summed while the row before
        // is written: nothing either, in place too.
        let long = 4 * dim;
        let ln_long = LayerNorm::<half::f16>::new(long).expect("valid");
        let x_long = Array2::from_shape_fn((64, long), |(r, c)| {
            half::f16::from_f32(((r * 5 + c * 3) % 13) as f32 - 6.0)
        });
        let mut out_long = x_long.clone();
        let bytes = pool.install(|| {
            ln_long.forward_into(&x_long, &mut out_long).expect("valid");
            [
                allocated_by(|| ln_long.forward_into(&x_long, &mut out_long).expect("valid")),
                allocated_by(|| ln_long.forward_inplace(&mut out_long).expect("valid")),
            ]
        });
        assert_eq!(
            bytes,
            [0, 0],
            "f16 forward_into and forward_inplace, long rows"
        );
        // Backward with both gradients: the kernel's f64 group totals and working row are
        // kept by the thread too.
        let dy = x.mapv(|v| v * half::f16::from_f32(0.5));
        let mut stats = NormStats::zeros(Ix1(x.nrows()));
        let mut gain_grad = Array1::<half::f16>::zeros(dim);
        let mut bias_grad = Array1::<half::f16>::zeros(dim);
        let bytes = pool.install(|| {
            ln.forward_with_stats_into(&x, &mut out, &mut stats)
                .expect("valid");
            let mut backward = || {
                ln.backward_into(
                    &x,
                    &stats,
                    &dy,
                    &mut out,
                    Some(&mut gain_grad),
                    Some(&mut bias_grad),
                )
                .expect("valid")
            };
            backward();
            allocated_by(backward)
        });
        assert_eq!(bytes, 0, "f16 backward_into after the first call");
    }

    // Two threads, above the parallel threshold: what rayon's path allocates.
    let rows = 2048;
    let parallel = measure(rows, dim, 2);
    println!("2 threads, {rows}x{dim}: {parallel:?} bytes");
    // Forward: rayon's join keeps its jobs on the stack. Backward: one f64 row of parameter
    // sums per block of 64 rows and parameter, plus a scratch row per task.
    let blocks = rows / 64;
    assert!(parallel[0] <= 4096 && parallel[2] <= 4096, "{parallel:?}");
    assert!(parallel[3] <= (2 * blocks + 16) * dim * 8, "{parallel:?}");
    // A second call takes the block sums from the buffers the calling thread kept, and each
    // task its working row from its thread's (measured: nothing at all). A thread that runs a
    // stolen task while its own waits needs a second working row: allow one per task (two
    // f32 rows of dim and a line of alignment each) and rayon's own.
    assert!(parallel[4] <= 16 * 2 * dim * 4 + 4096, "{parallel:?}");
}
