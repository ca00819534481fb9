//! The driver: from a batch of rows (a job value of `kernels`) to kernel calls, on the calling
//! thread or cut into tasks across rayon's threads by one recursive split.
//!
//! Buffers here are contiguous row-major slices holding whole rows of `dim` elements; the
//! ndarray side (layouts, shapes, validation) is `norm.rs`'s job.
//!
//! Thread-count independence: every row is computed by the same kernel whatever the split, so
//! `y` and `dx` never depend on it. Parameter gradients are sums over rows; they are formed per
//! block of [`GRAD_BLOCK_ROWS`] consecutive rows (each block summed in row order from zero) and
//! the block sums are added to the total in block order. Serial and parallel runs therefore
//! perform the same additions in the same order and agree bit for bit.

use crate::element::Element;
use crate::kernels::{add_into, BackwardJob, BackwardOut, CutAt, ForwardRows, GradSums};

/// Rows per block of the parameter-gradient reduction. Part of the numerical result: changing
/// it changes the rounding of `dgain` and `dbias` (never which threads see which block).
pub(crate) const GRAD_BLOCK_ROWS: usize = 64;

/// Elements a parallel task holds, about: large enough that handing it to another thread costs
/// little against the work, small enough that the threads share the work evenly.
#[cfg(feature = "rayon")]
const TASK_ELEMENTS: usize = 1 << 16;

/// How a batch of `rows` rows of `dim` elements is cut for `threads` threads: `None` keeps it
/// on the calling thread (one thread, or fewer than [`TASK_ELEMENTS`] elements in all),
/// otherwise `Some(rows per task)`: about [`TASK_ELEMENTS`] elements, at least one row. Only
/// the speed depends on it, never the result.
#[cfg(feature = "rayon")]
pub(crate) fn task_rows(rows: usize, dim: usize, threads: usize) -> Option<usize> {
    (threads > 1 && rows * dim >= TASK_ELEMENTS).then(|| (TASK_ELEMENTS / dim).max(1))
}

/// A batch of rows the driver can cut into tasks.
trait RowJob: Send + Sized {
    /// Split points are multiples of this many rows.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    const ALIGN: usize;
    fn rows(&self) -> usize;
    fn dim(&self) -> usize;
    /// Rows `..row` and `row..`; `row` is a multiple of [`ALIGN`](Self::ALIGN).
    fn split_at(self, row: usize) -> (Self, Self);
    /// Does the whole job on the calling thread.
    fn run(self);
}

/// Runs `job`, cut into tasks across rayon's threads when [`task_rows`] says so.
fn run<J: RowJob>(job: J) {
    #[cfg(feature = "rayon")]
    if let Some(rows_per_task) = task_rows(job.rows(), job.dim(), rayon::current_num_threads()) {
        return split(job, rows_per_task);
    }
    job.run();
}

/// Halves `job` at an aligned row until the pieces hold at most `rows_per_task` rows.
#[cfg(feature = "rayon")]
fn split<J: RowJob>(job: J, rows_per_task: usize) {
    let rows = job.rows();
    let half = rows.div_ceil(J::ALIGN) / 2 * J::ALIGN;
    if rows <= rows_per_task || half == 0 {
        return job.run();
    }
    let (left, right) = job.split_at(half);
    rayon::join(
        || split(left, rows_per_task),
        || split(right, rows_per_task),
    );
}

impl<A: Element> RowJob for ForwardRows<'_, A> {
    const ALIGN: usize = 1;

    fn rows(&self) -> usize {
        ForwardRows::rows(self)
    }

    fn dim(&self) -> usize {
        self.layer.dim
    }

    fn split_at(self, row: usize) -> (Self, Self) {
        ForwardRows::split_at(self, row)
    }

    fn run(self) {
        A::forward_rows(self);
    }
}

/// Normalizes every row of the job.
pub(crate) fn forward<A: Element>(job: ForwardRows<'_, A>) {
    run(job);
}

/// Elements per chunk of the fused residual forward: a chunk's sums are written and then
/// normalized while they are still in cache.
const RESIDUAL_CHUNK_ELEMENTS: usize = 1 << 15;

/// The fused residual forward: `sum = x + residual`, then `out` normalized from `sum`, with
/// each row's statistics. `norm` is the forward job on `x` (never in place: `norm.x` is `x`),
/// which each chunk runs on its sums instead.
pub(crate) struct ResidualRows<'a, A: Element> {
    pub(crate) norm: ForwardRows<'a, A>,
    pub(crate) residual: &'a [A],
    pub(crate) sum: &'a mut [A],
}

impl<A: Element> RowJob for ResidualRows<'_, A> {
    const ALIGN: usize = 1;

    fn rows(&self) -> usize {
        self.norm.rows()
    }

    fn dim(&self) -> usize {
        self.norm.layer.dim
    }

    fn split_at(self, row: usize) -> (Self, Self) {
        let at = row * self.norm.layer.dim;
        let (norm_left, norm_right) = self.norm.split_at(row);
        let (residual_left, residual_right) = self.residual.cut_at(at);
        let (sum_left, sum_right) = self.sum.cut_at(at);
        (
            ResidualRows {
                norm: norm_left,
                residual: residual_left,
                sum: sum_left,
            },
            ResidualRows {
                norm: norm_right,
                residual: residual_right,
                sum: sum_right,
            },
        )
    }

    /// Chunk by chunk, so that the sums are read back from cache: memory sees `x` and
    /// `residual` read once and `sum` and `out` written once.
    fn run(self) {
        let chunk_rows = (RESIDUAL_CHUNK_ELEMENTS / self.dim()).max(1);
        let mut rest = self;
        while rest.rows() > 0 {
            let rows = rest.rows();
            let (chunk, later) = rest.split_at(chunk_rows.min(rows));
            let x = chunk
                .norm
                .x
                .expect("the residual job reads x, never in place");
            for ((sum, &x), &residual) in chunk.sum.iter_mut().zip(x).zip(chunk.residual) {
                *sum = x + residual;
            }
            let sum: &[A] = chunk.sum;
            A::forward_rows(ForwardRows {
                x: Some(sum),
                ..chunk.norm
            });
            rest = later;
        }
    }
}

/// `sum = x + residual` and `out = norm(sum)`, with statistics.
pub(crate) fn forward_residual<A: Element>(job: ResidualRows<'_, A>) {
    run(job);
}

/// A backward job whose gradient sums hold one row of `dim` per block of [`GRAD_BLOCK_ROWS`]
/// rows (or are not wanted).
struct BlockedBackward<'a, A: Element>(BackwardJob<'a, A>);

impl<A: Element> RowJob for BlockedBackward<'_, A> {
    const ALIGN: usize = GRAD_BLOCK_ROWS;

    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn dim(&self) -> usize {
        self.0.rows.layer.dim
    }

    fn split_at(self, row: usize) -> (Self, Self) {
        let (left, right) = self.0.split_at(row, GRAD_BLOCK_ROWS);
        (BlockedBackward(left), BlockedBackward(right))
    }

    /// Block by block, each block's sums formed from zero in its own row of sums.
    fn run(self) {
        let mut scratch = Vec::new();
        if !self.0.out.sums.is_wanted() {
            return A::backward_rows(self.0, &mut scratch);
        }
        let mut rest = Some(self.0);
        while let Some(job) = rest.take() {
            let (mut block, later) = if job.rows() > GRAD_BLOCK_ROWS {
                let (block, later) = job.split_at(GRAD_BLOCK_ROWS, GRAD_BLOCK_ROWS);
                (block, Some(later))
            } else {
                (job, None)
            };
            block.out.sums.clear();
            A::backward_rows(block, &mut scratch);
            rest = later;
        }
    }
}

/// Owned gradient sums: a buffer for each parameter gradient that is wanted.
struct SumBuffers<S> {
    gain: Option<Vec<S>>,
    bias: Option<Vec<S>>,
}

impl<S: Copy + num_traits::Zero> SumBuffers<S> {
    fn new<T>(wanted: &GradSums<'_, T>, len: usize) -> Self {
        SumBuffers {
            gain: wanted.gain.as_ref().map(|_| vec![S::zero(); len]),
            bias: wanted.bias.as_ref().map(|_| vec![S::zero(); len]),
        }
    }
}

impl<S: Copy + std::ops::Add<Output = S>> SumBuffers<S> {
    fn sums(&mut self) -> GradSums<'_, S> {
        GradSums {
            gain: self.gain.as_deref_mut(),
            bias: self.bias.as_deref_mut(),
        }
    }

    /// Adds the sums `range` into `totals`.
    fn add_into(&self, totals: &mut GradSums<'_, S>, range: std::ops::Range<usize>) {
        for (total, sums) in [
            (totals.gain.as_deref_mut(), &self.gain),
            (totals.bias.as_deref_mut(), &self.bias),
        ] {
            if let (Some(total), Some(sums)) = (total, sums) {
                add_into(total, &sums[range.clone()]);
            }
        }
    }
}

/// Backward over all rows: writes `dx` (plus `dsum` when given) and adds the parameter
/// gradients into the job's sums (the caller's totals, one row of `dim` each), block by block
/// in block order.
pub(crate) fn backward<A: Element>(job: BackwardJob<'_, A>) {
    if !job.out.sums.is_wanted() {
        return run(BlockedBackward(job));
    }
    let dim = job.rows.layer.dim;
    let rows = job.rows();
    let BackwardJob {
        rows: inputs,
        out: BackwardOut {
            dx,
            dsum,
            sums: mut totals,
        },
    } = job;
    #[cfg(feature = "rayon")]
    if task_rows(rows, dim, rayon::current_num_threads()).is_some() {
        // Every block's sums in a row of its own, filled in any order, added up in block order.
        let blocks = rows.div_ceil(GRAD_BLOCK_ROWS);
        let mut partials = SumBuffers::<A::Stat>::new(&totals, blocks * dim);
        run(BlockedBackward(BackwardJob {
            rows: inputs,
            out: BackwardOut {
                dx,
                dsum,
                sums: partials.sums(),
            },
        }));
        for block in 0..blocks {
            partials.add_into(&mut totals, block * dim..(block + 1) * dim);
        }
        return;
    }
    // On the calling thread: one block's sums at a time, added to the totals as they come.
    let mut block_sums = SumBuffers::<A::Stat>::new(&totals, dim);
    let mut scratch = Vec::new();
    for start in (0..rows).step_by(GRAD_BLOCK_ROWS) {
        let end = (start + GRAD_BLOCK_ROWS).min(rows);
        let mut block = BackwardJob {
            rows: inputs.rows_range(start, end),
            out: BackwardOut {
                dx: &mut dx[start * dim..end * dim],
                dsum: dsum.map(|dsum| &dsum[start * dim..end * dim]),
                sums: block_sums.sums(),
            },
        };
        block.out.sums.clear();
        A::backward_rows(block, &mut scratch);
        block_sums.add_into(&mut totals, 0..dim);
    }
}

#[cfg(all(test, feature = "rayon"))]
mod tests {
    use super::task_rows;

    /// The tasks each shape is cut into: one thread or a small batch stays whole; otherwise
    /// tasks of about 65 536 elements.
    #[test]
    fn task_rows_cut_batches_into_tasks_of_about_65536_elements() {
        assert_eq!(task_rows(512, 1024, 1), None);
        assert_eq!(task_rows(32, 768, 16), None);
        assert_eq!(task_rows(512, 1024, 2), Some(64));
        assert_eq!(task_rows(4096, 1024, 16), Some(64));
        assert_eq!(task_rows(65536, 64, 2), Some(1024));
        assert_eq!(task_rows(2, 1 << 20, 2), Some(1));
    }
}
