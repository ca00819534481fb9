//! The driver: from a batch of rows (a job value of `kernels`) to kernel calls, on the calling
//! thread or cut into tasks across rayon's threads: by one recursive split on a thread of a
//! pool, or from the front of the batch by the calling thread and helpers from rayon's global
//! pool when the caller is outside every pool.
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
#[cfg(feature = "rayon")]
use crate::kernels::add_into;
use crate::kernels::{
    prefetch, BackwardJob, BackwardOut, BackwardRows, CutAt, ForwardRows, GradSums, Stores,
};
use crate::spare::Spare;
#[cfg(feature = "rayon")]
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
#[cfg(feature = "rayon")]
use std::sync::{Mutex, PoisonError};
#[cfg(feature = "rayon")]
use std::time::{Duration, Instant};

/// Rows per block of the parameter-gradient reduction. Part of the numerical result: changing
/// it changes the rounding of `dgain` and `dbias` (never which threads see which block).
pub(crate) const GRAD_BLOCK_ROWS: usize = 64;

/// Below this many elements a batch stays on the calling thread: it takes less time than
/// waking rayon's sleeping workers costs.
#[cfg(feature = "rayon")]
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// The smallest task, in elements: against it, the cost of handing a task to another thread
/// (a `rayon::join`) stays small.
#[cfg(feature = "rayon")]
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// Tasks per thread, where the batch is large enough: a few, so that a thread that finishes
/// early, or wakes up late, takes over work from the others.
#[cfg(feature = "rayon")]
const TASKS_PER_THREAD: usize = 4;

/// How a batch of `rows` rows of `dim` elements is cut for `threads` threads: `None` keeps it
/// on the calling thread (one thread, or fewer than [`PARALLEL_MIN_ELEMENTS`] elements in all);
/// otherwise `Some(rows per task)`: enough tasks for [`TASKS_PER_THREAD`] per thread, none
/// smaller than [`MIN_TASK_ELEMENTS`] elements, at least one row. Jobs with aligned split
/// points (the backward pass's 64-row gradient blocks) round tasks up to whole blocks. Only
/// the speed depends on it, never the result.
#[cfg(feature = "rayon")]
pub(crate) fn task_rows(rows: usize, dim: usize, threads: usize) -> Option<usize> {
    if threads <= 1 || rows * dim < PARALLEL_MIN_ELEMENTS {
        return None;
    }
    Some(task_size(rows, dim, threads))
}

/// Rows per task for `threads` threads: enough tasks for [`TASKS_PER_THREAD`] per thread, none
/// smaller than [`MIN_TASK_ELEMENTS`] elements, at least one row.
#[cfg(feature = "rayon")]
fn task_size(rows: usize, dim: usize, threads: usize) -> usize {
    let for_every_thread = rows.div_ceil(threads * TASKS_PER_THREAD);
    let smallest = MIN_TASK_ELEMENTS.div_ceil(dim.max(1));
    for_every_thread.max(smallest).max(1)
}

/// A batch of rows the driver can cut into tasks.
trait RowJob: Send + Sized {
    /// Split points are multiples of this many rows.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    fn align(&self) -> usize;
    fn rows(&self) -> usize;
    fn dim(&self) -> usize;
    /// Rows `..row` and `row..`; `row` is a multiple of [`align`](Self::align).
    fn split_at(self, row: usize) -> (Self, Self);
    /// Does the whole job on the calling thread.
    fn run(self);
}

/// Runs `job`, cut into tasks across rayon's threads when [`task_rows`] says so, as
/// [`schedule`] says.
fn run<J: RowJob>(job: J) {
    #[cfg(feature = "rayon")]
    if let Some(rows_per_task) = task_rows(job.rows(), job.dim(), rayon::current_num_threads()) {
        return match schedule() {
            Schedule::Steal => run_in_tasks(job, rows_per_task),
            Schedule::Static => run_in_shares(job, rayon::current_num_threads()),
        };
    }
    job.run();
}

/// Runs `job` in tasks of about `rows_per_task` rows, taken by whichever thread is free: on a
/// thread of a pool, by [`split`]; on a thread outside every pool, by [`with_caller`].
#[cfg(feature = "rayon")]
fn run_in_tasks<J: RowJob>(job: J, rows_per_task: usize) {
    if rayon::current_thread_index().is_some() {
        split(job, rows_per_task)
    } else {
        with_caller(job, rows_per_task, rayon::current_num_threads())
    }
}

/// How a parallel job's rows are given to the threads.
#[cfg(feature = "rayon")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// Tasks from one recursive split, taken by whichever thread is free (rayon's work
    /// stealing): the default.
    Steal,
    /// One contiguous share of the rows per thread of the pool, the same share for the same
    /// shape on every call (OpenMP's static schedule), so that a thread finds the rows it wrote
    /// in the previous call in its own cache. For measuring on many cores; the same bits.
    Static,
}

/// The schedule `LAYERNORM_SCHEDULE` names (`static`; anything else, or nothing, is
/// [`Schedule::Steal`]), read once.
#[cfg(feature = "rayon")]
fn schedule() -> Schedule {
    static SCHEDULE: std::sync::OnceLock<Schedule> = std::sync::OnceLock::new();
    *SCHEDULE.get_or_init(|| {
        match std::env::var("LAYERNORM_SCHEDULE")
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref()
        {
            Ok("static") => Schedule::Static,
            _ => Schedule::Steal,
        }
    })
}

/// [`Schedule::Static`]: `job` cut at aligned rows into `shares` contiguous pieces of (nearly)
/// equal length, piece `i` run by thread `i` of the current pool (`rayon::broadcast`); empty
/// pieces are not run. Aligned cuts, like [`split`]'s, so the same bits.
#[cfg(feature = "rayon")]
fn run_in_shares<J: RowJob>(job: J, shares: usize) {
    let units = job.rows().div_ceil(job.align());
    let align = job.align();
    let mut pieces = Vec::with_capacity(shares);
    let mut rest = job;
    for share in 1..shares {
        let length = (share * units / shares - (share - 1) * units / shares) * align;
        let rows = length.min(rest.rows());
        let (piece, after) = rest.split_at(rows);
        pieces.push(std::sync::Mutex::new(Some(piece)));
        rest = after;
    }
    pieces.push(std::sync::Mutex::new(Some(rest)));
    rayon::broadcast(|context| {
        let piece = pieces
            .get(context.index())
            .and_then(|piece| piece.lock().ok()?.take());
        if let Some(piece) = piece.filter(|piece| piece.rows() > 0) {
            piece.run();
        }
    });
}

/// [`run_in_tasks`] on a thread outside every pool (a program's main thread) whose global
/// pool has `threads` threads: the calling thread and helpers handed to that pool take tasks
/// of `rows_per_task` rows (rounded up to aligned rows) from the front of the job, in row
/// order, until none is left.
///
/// Handing the whole job to the pool, as `rayon::join` or `rayon::scope` do from outside,
/// leaves the caller asleep while a worker wakes, and after the last task until it is woken
/// itself: on the 2-core VM that cost 2–36 µs per call of about 100 µs (BENCHMARKS.md). Here
/// the caller starts at once and helpers join in as they wake; they are one fewer than the
/// pool's threads, so as many threads work as in the pool. The caller spawns one helper, and
/// each helper that finds tasks left spawns up to two more, so that waking the pool's threads
/// is shared out rather than all done by the caller, and no helper is spawned once every task
/// is taken. When no task is left, the caller spins until the helpers' last tasks are done,
/// for at most twice its own longest task (a helper's last task began before the caller ran
/// out), and only then waits for the helpers as rayon does, asleep.
#[cfg(feature = "rayon")]
fn with_caller<J: RowJob>(job: J, rows_per_task: usize, threads: usize) {
    let align = job.align();
    let rows_per_task = rows_per_task.div_ceil(align).max(1) * align;
    let tasks = job.rows().div_ceil(rows_per_task);
    let shared = SharedTasks {
        rest: Mutex::new(Some(job)),
        rows_per_task,
        finished: AtomicUsize::new(0),
        helpers_left: AtomicUsize::new(threads.min(tasks).saturating_sub(1)),
    };
    rayon::in_place_scope(|scope| {
        shared.spawn_helpers(scope, 1);
        let longest = shared.take_tasks();
        let out_of_tasks = Instant::now();
        while shared.finished.load(Relaxed) < tasks && out_of_tasks.elapsed() < 2 * longest {
            std::hint::spin_loop();
        }
    });
}

/// The state [`with_caller`]'s threads share. The counters are only hints (for spawning and
/// the caller's spin): the scope's end is what orders the tasks' writes before the return.
#[cfg(feature = "rayon")]
struct SharedTasks<J> {
    /// The rows no thread has taken yet.
    rest: Mutex<Option<J>>,
    rows_per_task: usize,
    /// Tasks finished.
    finished: AtomicUsize,
    /// Helpers that may still be spawned.
    helpers_left: AtomicUsize,
}

#[cfg(feature = "rayon")]
impl<J: RowJob> SharedTasks<J> {
    /// Spawns up to `count` helpers while tasks are left and the pool has threads for them.
    fn spawn_helpers<'scope>(&'scope self, scope: &rayon::Scope<'scope>, count: usize) {
        for _ in 0..count {
            let tasks_left = self.rest.lock().map_or(true, |rest| rest.is_some());
            let helper = || {
                let take = |left: usize| left.checked_sub(1);
                self.helpers_left
                    .fetch_update(Relaxed, Relaxed, take)
                    .is_ok()
            };
            if !(tasks_left && helper()) {
                return;
            }
            scope.spawn(move |scope| {
                self.spawn_helpers(scope, 2);
                self.take_tasks();
            });
        }
    }

    /// The next task: the first `rows_per_task` rows not yet taken.
    fn next_task(&self) -> Option<J> {
        let mut rest = self.rest.lock().unwrap_or_else(PoisonError::into_inner);
        let job = rest.take()?;
        if job.rows() <= self.rows_per_task {
            return Some(job);
        }
        let (task, after) = job.split_at(self.rows_per_task);
        *rest = Some(after);
        Some(task)
    }

    /// Runs tasks until none is left; the longest one's time.
    fn take_tasks(&self) -> Duration {
        let mut longest = Duration::ZERO;
        while let Some(task) = self.next_task() {
            let start = Instant::now();
            task.run();
            longest = longest.max(start.elapsed());
            self.finished.fetch_add(1, Relaxed);
        }
        longest
    }
}

/// Halves `job` at an aligned row until the pieces hold at most `rows_per_task` rows.
#[cfg(feature = "rayon")]
fn split<J: RowJob>(job: J, rows_per_task: usize) {
    let (rows, align) = (job.rows(), job.align());
    let half = rows.div_ceil(align) / 2 * align;
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
    fn align(&self) -> usize {
        1
    }

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
pub(crate) fn forward<A: Element>(mut job: ForwardRows<'_, A>) {
    job.layer.stores = output_stores(&job);
    job.layer.prefetch = prefetch_rows::<A>(size_of_val(job.out), job.x.is_none());
    run(job);
}

/// Whether a forward call with an output of `out_bytes` bytes hints its short rows ahead
/// ([`prefetch::for_rows`]): from the bytes the whole call reads and writes (input and
/// output; once in place), for the types whose forward can gain from it.
fn prefetch_rows<A: Element>(out_bytes: usize, in_place: bool) -> bool {
    A::PREFETCH_SHORT_ROWS && prefetch::for_rows(call_bytes(out_bytes, in_place))
}

/// The bytes a forward call with an output of `out_bytes` bytes reads and writes: input and
/// output, or the output once in place.
fn call_bytes(out_bytes: usize, in_place: bool) -> usize {
    if in_place {
        out_bytes
    } else {
        2 * out_bytes
    }
}

/// How a forward job stores `out`: from the size of the whole output, before it is cut into
/// tasks. In place, the rows are in cache already (just read for their statistics): ordinary
/// stores.
fn output_stores<A: Element>(job: &ForwardRows<'_, A>) -> Stores {
    match job.x {
        Some(_) => stores_for::<A>(size_of_val(job.out), Stores::for_output),
        None => Stores::Cached,
    }
}

/// The stores for an output of `bytes` bytes of `A`: as `by_size` chooses
/// ([`Stores::for_output`] for `y`, [`Stores::for_backward_output`] for `dx`) for types that
/// gain from streaming stores; for half precision, [`Stores::cached_unless_forced`].
fn stores_for<A: Element>(bytes: usize, by_size: fn(usize) -> Stores) -> Stores {
    if A::STREAMING_STORES {
        by_size(bytes)
    } else {
        Stores::cached_unless_forced()
    }
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
    fn align(&self) -> usize {
        1
    }

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
pub(crate) fn forward_residual<A: Element>(mut job: ResidualRows<'_, A>) {
    job.norm.layer.stores = output_stores(&job.norm);
    run(job);
}

/// A backward job whose gradient sums hold one row of `dim` per group of `group_rows` rows
/// (or are not wanted): whole gradient blocks ([`GRAD_BLOCK_ROWS`]), or groups of
/// `A::GRAD_GROUP_ROWS` rows when blocks would leave threads idle.
struct BlockedBackward<'a, A: Element> {
    job: BackwardJob<'a, A>,
    group_rows: usize,
}

impl<A: Element> RowJob for BlockedBackward<'_, A> {
    fn align(&self) -> usize {
        self.group_rows
    }

    fn rows(&self) -> usize {
        self.job.rows()
    }

    fn dim(&self) -> usize {
        self.job.rows.layer.dim
    }

    fn split_at(self, row: usize) -> (Self, Self) {
        let group_rows = self.group_rows;
        let (left, right) = self.job.split_at(row, group_rows);
        (
            BlockedBackward {
                job: left,
                group_rows,
            },
            BlockedBackward {
                job: right,
                group_rows,
            },
        )
    }

    /// One kernel call: each group's sums formed from zero in its own row of sums.
    fn run(mut self) {
        self.job.out.sums.clear();
        let dim = self.job.rows.layer.dim;
        A::backward_rows(self.job, Spare::empty(3 * dim).vec_mut(), self.group_rows);
    }
}

/// Columns per task when the group sums are combined are a multiple of this.
#[cfg(feature = "rayon")]
const COMBINE_COLUMNS: usize = 128;

/// Adds the groups' sums (one row of `dim` per group of `group_rows` rows) into `totals` as
/// the serial path does: each gradient block's sum formed from zero, its groups in order
/// (a block that is one group is that group's sums), the blocks added in order. Column `j` of
/// the totals only ever sees column `j` of the groups, so the columns are cut into tasks,
/// each combined in the serial order.
#[cfg(feature = "rayon")]
fn combine_groups<S>(
    partials: &SumBuffers<S>,
    totals: &mut GradSums<'_, S>,
    dim: usize,
    group_rows: usize,
) where
    S: Copy + Send + Sync + std::ops::Add<Output = S> + num_traits::Zero,
{
    let job = CombineColumns {
        gradients: [
            totals.gain.as_deref_mut().zip(partials.gain.as_deref()),
            totals.bias.as_deref_mut().zip(partials.bias.as_deref()),
        ],
        first: 0,
        columns: dim,
        dim,
        group_rows,
    };
    // At least MIN_TASK_ELEMENTS additions per task, so that a few blocks' sums are combined
    // on the calling thread; a few tasks per thread.
    let threads = rayon::current_num_threads();
    let columns_per_task = task_size(dim, job.dim(), threads).next_multiple_of(COMBINE_COLUMNS);
    if threads <= 1 || columns_per_task >= dim {
        return job.run();
    }
    run_in_tasks(job, columns_per_task);
}

/// Columns `first..first + columns` of the parameter-gradient totals, to be combined from the
/// groups' sums: a job [`combine_groups`] cuts by columns (its "rows").
#[cfg(feature = "rayon")]
struct CombineColumns<'a, S> {
    /// For each gradient wanted: the totals' columns, and every group's sums (one row of `dim`
    /// per group).
    gradients: [Option<(&'a mut [S], &'a [S])>; 2],
    first: usize,
    columns: usize,
    dim: usize,
    group_rows: usize,
}

#[cfg(feature = "rayon")]
impl<S> RowJob for CombineColumns<'_, S>
where
    S: Copy + Send + Sync + std::ops::Add<Output = S> + num_traits::Zero,
{
    fn align(&self) -> usize {
        COMBINE_COLUMNS
    }

    fn rows(&self) -> usize {
        self.columns
    }

    /// Additions per column.
    fn dim(&self) -> usize {
        let groups = self
            .gradients
            .iter()
            .flatten()
            .map(|(_, sums)| sums.len() / self.dim);
        groups.sum()
    }

    fn split_at(self, column: usize) -> (Self, Self) {
        let [gain, bias] = self.gradients.map(|gradient| match gradient {
            Some((total, sums)) => {
                let (left, right) = total.split_at_mut(column);
                (Some((left, sums)), Some((right, sums)))
            }
            None => (None, None),
        });
        let left = CombineColumns {
            gradients: [gain.0, bias.0],
            columns: column,
            ..self
        };
        let right = CombineColumns {
            gradients: [gain.1, bias.1],
            first: self.first + column,
            columns: self.columns - column,
            ..self
        };
        (left, right)
    }

    fn run(self) {
        let groups_per_block = GRAD_BLOCK_ROWS / self.group_rows;
        let (first, columns) = (self.first, self.columns);
        for (total, sums) in self.gradients.into_iter().flatten() {
            let groups = sums.len() / self.dim;
            let group = |g: usize| &sums[g * self.dim + first..][..columns];
            if groups_per_block == 1 {
                (0..groups).for_each(|g| add_into(total, group(g)));
                continue;
            }
            let mut block = vec![S::zero(); columns];
            for start in (0..groups).step_by(groups_per_block) {
                block.fill(S::zero());
                for g in start..(start + groups_per_block).min(groups) {
                    add_into(&mut block, group(g));
                }
                add_into(total, &block);
            }
        }
    }
}

/// Owned gradient sums: a buffer for each parameter gradient that is wanted. Their values
/// are unspecified until the kernels' callers set their rows to zero; the buffers come from
/// the thread's spare ones and go back there when dropped.
struct SumBuffers<S: 'static> {
    gain: Option<Spare<S>>,
    bias: Option<Spare<S>>,
}

impl<S: Copy + num_traits::Zero + 'static> SumBuffers<S> {
    fn new([gain, bias]: [bool; 2], len: usize) -> Self {
        SumBuffers {
            gain: gain.then(|| Spare::with_len(len)),
            bias: bias.then(|| Spare::with_len(len)),
        }
    }
}

impl<S: Copy + std::ops::Add<Output = S> + 'static> SumBuffers<S> {
    fn sums(&mut self) -> GradSums<'_, S> {
        GradSums {
            gain: self.gain.as_deref_mut(),
            bias: self.bias.as_deref_mut(),
        }
    }
}

/// The caller's parameter-gradient accumulators, as the backward driver adds to them: block
/// sums in block order, each value widened to the statistics type before the first block and
/// rounded back to the accumulator's own type after the last. How the values are held (the
/// caller's arrays, their layout and type) is `norm.rs`'s business.
pub(crate) trait GradTotals<S> {
    /// Whether the gain gradient and the bias gradient are wanted.
    fn wanted(&self) -> [bool; 2];

    /// `total += block` for each wanted gradient (`block` holds a row of `dim` for each);
    /// `last`: no block follows, and the totals go back to the caller. A call over several
    /// blocks performs the additions of a run of calls, one per block, on widened totals.
    fn add_block(&mut self, block: &GradSums<'_, S>, last: bool);

    /// The totals widened, to be added to in place (the parallel path's combining step);
    /// [`GradTotals::finish`] gives them back.
    #[cfg(feature = "rayon")]
    fn widened(&mut self) -> GradSums<'_, S>;

    /// Rounds the widened totals back into the caller's accumulators.
    #[cfg(feature = "rayon")]
    fn finish(&mut self);
}

/// Backward over all rows: writes `dx` (plus `dsum` when given) and adds the parameter
/// gradients into `totals`, block by block in block order.
pub(crate) fn backward<A: Element>(
    mut inputs: BackwardRows<'_, A>,
    dx: &mut [A],
    dsum: Option<&[A]>,
    totals: &mut impl GradTotals<A::Stat>,
) {
    // Streaming stores for a large dx (see `Stores::for_backward_output`); with `dsum`, each
    // row of dx is read back to add it: ordinary stores always.
    if dsum.is_none() {
        inputs.layer.stores = stores_for::<A>(size_of_val(dx), Stores::for_backward_output);
    }
    let [gain_wanted, bias_wanted] = totals.wanted();
    if !(gain_wanted || bias_wanted) {
        let sums = GradSums {
            gain: None,
            bias: None,
        };
        let out = BackwardOut { dx, dsum, sums };
        let job = BackwardJob { rows: inputs, out };
        return run(BlockedBackward { job, group_rows: 1 });
    }
    let dim = inputs.layer.dim;
    let rows = inputs.rows();
    #[cfg(feature = "rayon")]
    if let Some(rows_per_task) = task_rows(rows, dim, rayon::current_num_threads()) {
        // Every group's sums in a row of its own, filled in any order; then each block's sum
        // from zero, its groups in order, added to the totals in block order: the additions
        // the serial path below performs.
        let group_rows = if rows_per_task >= GRAD_BLOCK_ROWS {
            GRAD_BLOCK_ROWS
        } else {
            A::GRAD_GROUP_ROWS
        };
        let groups = rows.div_ceil(group_rows);
        let mut partials = SumBuffers::<A::Stat>::new(totals.wanted(), groups * dim);
        let sums = partials.sums();
        let job = BackwardJob {
            rows: inputs,
            out: BackwardOut { dx, dsum, sums },
        };
        run(BlockedBackward { job, group_rows });
        combine_groups(&partials, &mut totals.widened(), dim, group_rows);
        totals.finish();
        return;
    }
    // On the calling thread: one block's sums at a time, added to the totals as they come.
    let mut block_sums = SumBuffers::<A::Stat>::new(totals.wanted(), dim);
    let mut scratch = Spare::<A>::empty(3 * dim);
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
        A::backward_rows(block, scratch.vec_mut(), GRAD_BLOCK_ROWS);
        totals.add_block(&block_sums.sums(), end == rows);
    }
}

#[cfg(all(test, feature = "rayon"))]
mod tests {
    use super::{
        call_bytes, prefetch_rows, run_in_tasks, stores_for, task_rows, with_caller, RowJob,
        GRAD_BLOCK_ROWS,
    };
    use crate::element::Element;
    use crate::kernels::stream::Stores;

    fn forward_stores<A: Element>(bytes: usize) -> Stores {
        stores_for::<A>(bytes, Stores::for_output)
    }

    fn backward_stores<A: Element>(bytes: usize) -> Stores {
        stores_for::<A>(bytes, Stores::for_backward_output)
    }

    /// Large f32 and f64 outputs stream (where the CPU can); half-precision outputs keep
    /// ordinary stores at any size, unless `LAYERNORM_STORES` forces a choice.
    #[test]
    fn half_precision_outputs_keep_ordinary_stores() {
        if std::env::var_os("LAYERNORM_STORES").is_some() {
            return;
        }
        let huge = 1 << 40;
        for stores in [
            forward_stores::<f32>(huge),
            forward_stores::<f64>(huge),
            backward_stores::<f32>(huge),
        ] {
            assert_eq!(stores, Stores::streaming());
        }
        assert_eq!(forward_stores::<f32>(4096), Stores::Cached);
        #[cfg(feature = "half")]
        for stores in [
            forward_stores::<half::f16>(huge),
            forward_stores::<half::bf16>(huge),
            backward_stores::<half::f16>(huge),
            backward_stores::<half::bf16>(huge),
        ] {
            assert_eq!(stores, Stores::Cached);
        }
    }

    /// By default no call is hinted ahead (the hint paid on one CPU and cost on two, see
    /// `prefetch`); whatever `LAYERNORM_PREFETCH` says, f16 and bf16 never are.
    #[test]
    fn rows_are_hinted_ahead_only_when_asked() {
        // What the `large` rule is given: input and output, or the output once in place.
        assert_eq!(call_bytes(32 << 20, false), 64 << 20);
        assert_eq!(call_bytes(32 << 20, true), 32 << 20);
        if std::env::var_os("LAYERNORM_PREFETCH").is_none() {
            for (bytes, in_place) in [(4096, false), (32 << 20, false), (1 << 40, true)] {
                assert!(!prefetch_rows::<f32>(bytes, in_place));
                assert!(!prefetch_rows::<f64>(bytes, in_place));
            }
        }
        #[cfg(feature = "half")]
        {
            assert!(!prefetch_rows::<half::f16>(1 << 40, false));
            assert!(!prefetch_rows::<half::bf16>(1 << 40, false));
        }
    }

    /// Tasks of `rows` rows for a job whose split points are multiples of `align` rows, as
    /// `split` cuts it: halves at aligned rows until a piece has at most `task` rows.
    fn tasks(rows: usize, align: usize, task: usize) -> usize {
        let half = rows.div_ceil(align) / 2 * align;
        if rows <= task || half == 0 {
            1
        } else {
            tasks(half, align, task) + tasks(rows - half, align, task)
        }
    }

    /// The tasks the usual shapes are cut into on 1 to 16 threads (forward: any row; backward:
    /// whole 64-row gradient blocks, or 8-row groups when tasks are smaller than a block): a
    /// small batch or one thread stays whole; otherwise at
    /// least one task per thread where the rows allow it, about four, none under 16 384
    /// elements.
    #[test]
    fn task_rows_give_every_thread_work_without_tiny_tasks() {
        assert_eq!(task_rows(512, 1024, 1), None);
        assert_eq!(task_rows(32, 768, 16), None);
        assert_eq!(task_rows(2, 1 << 20, 2), Some(1));
        // (rows, dim, threads) -> (forward tasks, backward tasks)
        let expected = [
            ((512, 1024, 2), (8, 8)),
            ((512, 1024, 4), (16, 16)),
            ((512, 1024, 8), (32, 32)),
            ((512, 1024, 16), (32, 32)),
            ((4096, 1024, 2), (8, 8)),
            ((4096, 1024, 16), (64, 64)),
            ((8192, 4096, 16), (64, 64)),
            ((65536, 64, 2), (8, 8)),
            ((65536, 64, 16), (64, 64)),
        ];
        for ((rows, dim, threads), counts) in expected {
            let task = task_rows(rows, dim, threads).expect("parallel");
            // Whole 64-row blocks when tasks hold that many rows, else groups of 8 (f32, f64).
            let group = if task >= GRAD_BLOCK_ROWS {
                GRAD_BLOCK_ROWS
            } else {
                8
            };
            let found = (tasks(rows, 1, task), tasks(rows, group, task));
            assert_eq!(
                found, counts,
                "{rows}x{dim} on {threads} threads, {task} rows a task"
            );
            // From outside every pool (`with_caller`): as many tasks, cut from the front.
            let from_outside = (
                rows.div_ceil(task),
                rows.div_ceil(task.next_multiple_of(group)),
            );
            assert_eq!(from_outside, counts, "{rows}x{dim} on {threads} threads");
            assert!(
                found.0 >= threads.min(rows * dim / (1 << 14)),
                "{rows}x{dim}"
            );
        }
    }

    /// Rows `first..first + rows` of a job that records the rows each task ran, and on which
    /// thread (rayon's index; `None` outside every pool).
    struct Recorded<'a> {
        first: usize,
        rows: usize,
        align: usize,
        seen: &'a std::sync::Mutex<Vec<(usize, usize, Option<usize>)>>,
    }

    impl RowJob for Recorded<'_> {
        fn align(&self) -> usize {
            self.align
        }

        fn rows(&self) -> usize {
            self.rows
        }

        fn dim(&self) -> usize {
            1
        }

        fn split_at(self, row: usize) -> (Self, Self) {
            assert!(row.is_multiple_of(self.align) && row <= self.rows, "{row}");
            let right = Recorded {
                first: self.first + row,
                rows: self.rows - row,
                ..self
            };
            (Recorded { rows: row, ..self }, right)
        }

        fn run(self) {
            let task = (self.first, self.rows, rayon::current_thread_index());
            self.seen.lock().expect("no task panics").push(task);
        }
    }

    /// How [`ran`] calls the driver.
    #[derive(Clone, Copy, Debug)]
    enum Caller {
        /// `run_in_tasks` from the test's thread, outside every pool.
        Outside,
        /// `with_caller` from the test's thread as if the global pool had this many threads:
        /// helpers spawn helpers up to that count (they queue on the real pool).
        OutsideWithHelpers(usize),
        /// `run_in_tasks` on a thread of a pool of this many threads.
        InPool(usize),
    }

    /// The tasks the driver runs for a job of `rows` rows aligned to `align`, in tasks of about
    /// `task` rows, called as `caller` says: (first row, rows, thread), sorted by first row.
    fn ran(
        rows: usize,
        align: usize,
        task: usize,
        caller: Caller,
    ) -> Vec<(usize, usize, Option<usize>)> {
        let seen = std::sync::Mutex::new(Vec::new());
        let job = Recorded {
            first: 0,
            rows,
            align,
            seen: &seen,
        };
        match caller {
            Caller::Outside => run_in_tasks(job, task),
            Caller::OutsideWithHelpers(threads) => with_caller(job, task, threads),
            Caller::InPool(threads) => rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool")
                .install(|| run_in_tasks(job, task)),
        }
        let mut tasks = seen.into_inner().expect("no task panics");
        tasks.sort_unstable();
        tasks
    }

    /// However it is called, every row is run exactly once, in tasks that start at aligned
    /// rows and hold at most `task` rows (rounded up to aligned rows); from outside every
    /// pool, the tasks are cut from the front, all of `task` rows but the last, and the
    /// calling thread takes part.
    #[test]
    fn tasks_cover_every_row_once_at_aligned_rows() {
        for (rows, align, task) in [
            (1usize, 1usize, 1usize),
            (100, 1, 7),
            (512, 64, 64),
            (520, 8, 16),
            (64, 8, 8),
            (1000, 64, 1),
            (4096, 1, 16),
        ] {
            let rounded = task.next_multiple_of(align);
            for caller in [
                Caller::Outside,
                Caller::OutsideWithHelpers(8),
                Caller::InPool(1),
                Caller::InPool(3),
            ] {
                let tasks = ran(rows, align, task, caller);
                let mut next = 0;
                for &(first, length, _) in &tasks {
                    assert_eq!(first, next, "{rows} rows, {caller:?}: {tasks:?}");
                    assert!(first.is_multiple_of(align) && length > 0 && length <= rounded);
                    next += length;
                }
                assert_eq!(next, rows, "{rows} rows, {caller:?}");
                if !matches!(caller, Caller::InPool(_)) {
                    assert_eq!(tasks.len(), rows.div_ceil(rounded), "{rows} rows");
                    assert!(tasks[..tasks.len() - 1].iter().all(|t| t.1 == rounded));
                }
            }
        }
        // Enough tasks for many to be left when the helpers start: the caller takes some.
        for caller in [Caller::Outside, Caller::OutsideWithHelpers(8)] {
            let tasks = ran(4096, 1, 1, caller);
            let by_caller = tasks.iter().any(|task| task.2.is_none());
            assert!(by_caller, "{caller:?}: the caller ran no task");
        }
    }
}
