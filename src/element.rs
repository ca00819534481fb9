//! The element types a layer can hold, and the type its statistics are computed in.

use crate::kernels::{simd, BackwardJob, ForwardRows};
use num_traits::{Float, FromPrimitive};
use std::fmt::{Debug, Display};

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    #[cfg(feature = "half")]
    impl Sealed for half::f16 {}
    #[cfg(feature = "half")]
    impl Sealed for half::bf16 {}
}

/// A floating-point type a [`LayerNorm`](crate::LayerNorm) can store and normalize.
///
/// Implemented for `f32` and `f64`; sealed, so the set of types is the crate's to choose.
/// Each element type names the wider type its per-row statistics (mean, inverse standard
/// deviation, parameter-gradient sums) are computed and returned in:
///
/// | storage | `Stat` | why |
/// |---|---|---|
/// | `f32` | `f64` | keeps the mean exact on rows whose mean is large against their spread, and squares cannot overflow |
/// | `f64` | `f64` | |
/// | `half::f16`, `half::bf16` (feature `half`) | `f32` | the f32 kernels, with each vector widened to f32 as it is loaded and rounded to half as it is stored (in registers); outputs are the f32 computation rounded to half once |
///
/// Code generic over the element type names it as the bound:
///
/// ```
/// use layernorm::{Element, LayerNorm};
/// fn normalized<A: Element>(x: &ndarray::Array2<A>) -> Result<ndarray::Array2<A>, layernorm::NormError> {
///     LayerNorm::<A>::new(x.ncols())?.forward(x)
/// }
/// let y = normalized(&ndarray::array![[1.0f64, 3.0]]).unwrap();
/// assert!((y[[0, 1]] - 1.0).abs() < 1e-4);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an element type of layernorm",
    label = "layernorm normalizes f32 and f64 data, and half::f16 and half::bf16 with a feature",
    note = "for f16 and bf16, turn on the crate feature `half`: layernorm = {{ version = \"0.1\", features = [\"half\"] }}"
)]
pub trait Element:
    private::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + Display
    + PartialEq
    + std::ops::Add<Output = Self>
    + 'static
{
    /// The type statistics are accumulated and returned in.
    type Stat: Float + FromPrimitive + Send + Sync + Debug + Display + 'static;

    /// The type the kernels compute in and take the parameters in: the element type itself for
    /// `f32` and `f64`, `f32` for half precision (the crate's detail; not usable outside).
    #[doc(hidden)]
    type Compute: Element + Into<Self::Stat>;

    /// Parameters of this type in the kernels' type: `values` themselves when it is the same,
    /// else widened into `buffer` (the crate's hook).
    #[doc(hidden)]
    fn to_compute<'a>(
        values: &'a [Self],
        buffer: &'a mut Vec<Self::Compute>,
    ) -> &'a [Self::Compute];

    /// A buffer for [`to_compute`](Self::to_compute): reused from the calling thread's earlier
    /// calls where the type widens its parameters, so that a call allocates nothing after the
    /// first (the crate's hook).
    #[doc(hidden)]
    fn take_buffer() -> Vec<Self::Compute> {
        Vec::new()
    }

    /// Returns a buffer from [`take_buffer`](Self::take_buffer) for later calls.
    #[doc(hidden)]
    fn give_back(buffer: Vec<Self::Compute>) {
        drop(buffer);
    }

    /// Widens a stored value to the statistics type (exact).
    ///
    /// ```
    /// use layernorm::Element;
    /// let wide: f64 = 0.1f32.to_stat();                   // f32 data, f64 statistics
    /// assert_eq!(wide, 0.10000000149011612);
    /// ```
    fn to_stat(self) -> Self::Stat;

    /// Rounds a statistics-type value to the storage type (to nearest).
    ///
    /// ```
    /// use layernorm::Element;
    /// assert_eq!(f32::from_stat(0.1f64), 0.1f32);
    /// ```
    fn from_stat(value: Self::Stat) -> Self;

    /// [`to_stat`](Self::to_stat) of every value, into `stats` (as long as `values`): one
    /// conversion of a slice, where the type has a faster one than a value at a time (the
    /// crate's hook; the same results).
    #[doc(hidden)]
    fn widen_all(values: &[Self], stats: &mut [Self::Stat]) {
        for (stat, &value) in stats.iter_mut().zip(values) {
            *stat = value.to_stat();
        }
    }

    /// [`from_stat`](Self::from_stat) of every value of `stats`, into `values` (as long): the
    /// inverse hook of [`widen_all`](Self::widen_all).
    #[doc(hidden)]
    fn narrow_all(stats: &[Self::Stat], values: &mut [Self]) {
        for (value, &stat) in values.iter_mut().zip(stats) {
            *value = Self::from_stat(stat);
        }
    }

    /// `values += sums`: each value widened to the statistics type, added to and rounded back
    /// (the crate's hook; the same results as a value at a time).
    #[doc(hidden)]
    fn add_all(values: &mut [Self], sums: &[Self::Stat]) {
        for (value, &sum) in values.iter_mut().zip(sums) {
            *value = Self::from_stat(value.to_stat() + sum);
        }
    }

    /// The kernel that normalizes rows of this type (the crate's hook; not callable outside).
    #[doc(hidden)]
    fn forward_rows(job: ForwardRows<'_, Self>);

    /// The kernel that differentiates rows of this type (the crate's hook; not callable
    /// outside). The job's gradient sums hold one row of `dim` per group of `group_rows` rows
    /// (a multiple of [`GRAD_GROUP_ROWS`](Self::GRAD_GROUP_ROWS)), set to zero by the caller;
    /// each group's sums are added to its own row. `scratch` is working memory the kernel may
    /// grow and reuse across calls.
    #[doc(hidden)]
    fn backward_rows(job: BackwardJob<'_, Self>, scratch: &mut Vec<Self>, group_rows: usize);

    /// Backward jobs whose gradient sums start at a multiple of this many rows add the same
    /// values to their totals as one longer job (the kernel forms each group of rows' sums
    /// from zero): the finest split the driver may use (the crate's detail).
    #[doc(hidden)]
    const GRAD_GROUP_ROWS: usize;

    /// Whether large outputs of this type are written with streaming stores (see
    /// `kernels::stream`); half precision keeps ordinary stores (the crate's detail).
    #[doc(hidden)]
    const STREAMING_STORES: bool = true;

    /// Whether the short-row forward may hint rows ahead when they come from memory (when
    /// `LAYERNORM_PREFETCH` asks for it, see `kernels::prefetch`); half precision never does
    /// (the crate's detail).
    #[doc(hidden)]
    const PREFETCH_SHORT_ROWS: bool = true;
}

/// f32 and f64 run the SIMD kernels.
macro_rules! simd_kernels {
    () => {
        const GRAD_GROUP_ROWS: usize = simd::FOLD_ROWS;

        fn to_compute<'a>(values: &'a [Self], _buffer: &'a mut Vec<Self>) -> &'a [Self] {
            values
        }

        fn add_all(values: &mut [Self], sums: &[Self::Stat]) {
            simd::add_all(values, sums);
        }

        fn forward_rows(job: ForwardRows<'_, Self>) {
            simd::forward_rows(job);
        }

        fn backward_rows(job: BackwardJob<'_, Self>, scratch: &mut Vec<Self>, group_rows: usize) {
            let BackwardJob { rows, out } = job;
            simd::backward_rows(simd::Backward {
                rows,
                dx: out.dx,
                dsum: out.dsum,
                totals: out.sums,
                group_rows,
                scratch,
            });
        }
    };
}

impl Element for f32 {
    type Stat = f64;
    type Compute = f32;

    #[inline(always)]
    fn to_stat(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn from_stat(value: f64) -> f32 {
        value as f32
    }

    simd_kernels!();
}

impl Element for f64 {
    type Stat = f64;
    type Compute = f64;

    #[inline(always)]
    fn to_stat(self) -> f64 {
        self
    }

    #[inline(always)]
    fn from_stat(value: f64) -> f64 {
        value
    }

    simd_kernels!();
}

/// f16 and bf16 run the f32 kernels, converting in registers (`kernels::half`).
#[cfg(feature = "half")]
macro_rules! half_element {
    ($half:ty, add_by_slices: $by_slices:expr) => {
        impl Element for $half {
            type Stat = f32;
            type Compute = f32;
            // Each job's sums are rounded to f32 once: only whole gradient blocks split.
            const GRAD_GROUP_ROWS: usize = crate::rows::GRAD_BLOCK_ROWS;
            // Their loops are slower than memory on one thread: ordinary stores were faster
            // at 64 MiB outputs (see `Stores::cached_unless_forced`).
            const STREAMING_STORES: bool = false;
            // Their short-row forward is slower than memory: the hint only cost time
            // (see `kernels::prefetch`).
            const PREFETCH_SHORT_ROWS: bool = false;

            fn to_compute<'a>(values: &'a [Self], buffer: &'a mut Vec<f32>) -> &'a [f32] {
                use half::slice::HalfFloatSliceExt;
                buffer.clear();
                buffer.resize(values.len(), 0.0);
                values.convert_to_f32_slice(buffer);
                buffer
            }

            fn take_buffer() -> Vec<f32> {
                WIDE_PARAMETERS.with(|pool| pool.borrow_mut().pop().unwrap_or_default())
            }

            fn give_back(buffer: Vec<f32>) {
                WIDE_PARAMETERS.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.len() < WIDE_PARAMETER_BUFFERS {
                        pool.push(buffer);
                    }
                });
            }

            #[inline(always)]
            fn to_stat(self) -> f32 {
                self.to_f32()
            }

            #[inline(always)]
            fn from_stat(value: f32) -> Self {
                <$half>::from_f32(value)
            }

            // The `half` crate's slice conversions: the same rounding as a value at a time,
            // by the CPU's conversion instructions where it has them.
            fn widen_all(values: &[Self], stats: &mut [f32]) {
                use half::slice::HalfFloatSliceExt;
                values.convert_to_f32_slice(stats);
            }

            fn narrow_all(stats: &[f32], values: &mut [Self]) {
                use half::slice::HalfFloatSliceExt;
                values.convert_from_f32_slice(stats);
            }

            /// With `add_by_slices`, a chunk at a time: widened on the stack by the slice
            /// conversion, added to, rounded back (f16, whose single conversions are calls
            /// that test the CPU); else a value at a time on the dispatched vectors (bf16's
            /// are shifts and an integer rounding).
            fn add_all(values: &mut [Self], sums: &[f32]) {
                const CHUNK: usize = 64;
                if !$by_slices {
                    return simd::add_all(values, sums);
                }
                let mut wide = [0.0; CHUNK];
                for (values, sums) in values.chunks_mut(CHUNK).zip(sums.chunks(CHUNK)) {
                    let wide = &mut wide[..values.len()];
                    <Self as Element>::widen_all(values, wide);
                    crate::kernels::add_into(wide, sums);
                    <Self as Element>::narrow_all(wide, values);
                }
            }

            fn forward_rows(job: ForwardRows<'_, Self>) {
                simd::forward_rows(job);
            }

            fn backward_rows(
                job: BackwardJob<'_, Self>,
                _scratch: &mut Vec<Self>,
                group_rows: usize,
            ) {
                crate::kernels::half::backward_rows(job, group_rows);
            }
        }
    };
}

#[cfg(feature = "half")]
thread_local! {
    /// Buffers for half parameters widened to f32, kept between calls on this thread. A call
    /// takes its buffers out and puts them back when it returns, so a call made while another
    /// one waits on this thread (rayon work stealing) takes fresh ones instead.
    static WIDE_PARAMETERS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers kept per thread: gain and bias of a call, and of a few calls nested by work
/// stealing.
#[cfg(feature = "half")]
const WIDE_PARAMETER_BUFFERS: usize = 8;

#[cfg(feature = "half")]
half_element!(half::f16, add_by_slices: true);
#[cfg(feature = "half")]
half_element!(half::bf16, add_by_slices: false);

/// A type a layer over `A` data keeps its gain and bias (and their gradients) in: `A` itself,
/// or `f32` for `f16` and `bf16` data (mixed precision, as PyTorch's autocast keeps layer
/// normalization's parameters in f32). Sealed.
///
/// | data `A` | parameters `P` |
/// |---|---|
/// | `f32`, `f64` | `A` |
/// | `half::f16`, `half::bf16` (feature `half`) | `A`, or `f32` |
///
/// A layer with f32 parameters over half data computes exactly what a half layer with the same
/// parameter values computes (the kernels widen half parameters to f32 anyway), and its
/// parameter gradients are accumulated in f32, where many small steps are not lost.
///
/// ```
/// # #[cfg(feature = "half")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use layernorm::{LayerNorm, Parameter};
/// fn parameter_bytes<A: layernorm::Element, P: Parameter<A>>(layer: &LayerNorm<A, P>) -> usize {
///     2 * layer.dim() * size_of::<P>()
/// }
/// let mixed = LayerNorm::<f32>::new(768)?.for_activations::<half::f16>();
/// assert_eq!(parameter_bytes(&mixed), 2 * 768 * 4);          // f32 parameters
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "half"))]
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold the parameters of a layer over `{A}` data",
    note = "parameters are kept in the data's own type, or in f32 for f16 and bf16 data"
)]
pub trait Parameter<A: Element>:
    private::Sealed + Copy + Send + Sync + Debug + PartialEq + 'static
{
    /// Parameters in the kernels' type: `values` themselves, or widened into `buffer` (the
    /// crate's hook).
    #[doc(hidden)]
    fn to_compute<'a>(values: &'a [Self], buffer: &'a mut Vec<A::Compute>) -> &'a [A::Compute];

    /// Widens a parameter or gradient to the statistics type (exact).
    #[doc(hidden)]
    fn to_stat(self) -> A::Stat;

    /// Rounds a statistics-type value to the parameter type (to nearest).
    #[doc(hidden)]
    fn from_stat(value: A::Stat) -> Self;

    /// [`to_stat`](Self::to_stat) of every value, into `stats` (as long as `values`).
    #[doc(hidden)]
    fn widen_all(values: &[Self], stats: &mut [A::Stat]);

    /// [`from_stat`](Self::from_stat) of every value of `stats`, into `values` (as long).
    #[doc(hidden)]
    fn narrow_all(stats: &[A::Stat], values: &mut [Self]);

    /// `values += sums`: each value widened to the statistics type, added to and rounded back.
    #[doc(hidden)]
    fn add_all(values: &mut [Self], sums: &[A::Stat]);
}

impl<A: Element> Parameter<A> for A {
    fn to_compute<'a>(values: &'a [A], buffer: &'a mut Vec<A::Compute>) -> &'a [A::Compute] {
        A::to_compute(values, buffer)
    }

    fn to_stat(self) -> A::Stat {
        Element::to_stat(self)
    }

    fn from_stat(value: A::Stat) -> A {
        Element::from_stat(value)
    }

    fn widen_all(values: &[A], stats: &mut [A::Stat]) {
        A::widen_all(values, stats);
    }

    fn narrow_all(stats: &[A::Stat], values: &mut [A]) {
        A::narrow_all(stats, values);
    }

    fn add_all(values: &mut [A], sums: &[A::Stat]) {
        A::add_all(values, sums);
    }
}

/// f32 parameters over half data: the kernels' own type, and the statistics type.
#[cfg(feature = "half")]
macro_rules! f32_parameters {
    ($half:ty) => {
        impl Parameter<$half> for f32 {
            fn to_compute<'a>(values: &'a [f32], _buffer: &'a mut Vec<f32>) -> &'a [f32] {
                values
            }

            fn to_stat(self) -> f32 {
                self
            }

            fn from_stat(value: f32) -> f32 {
                value
            }

            fn widen_all(values: &[f32], stats: &mut [f32]) {
                stats.copy_from_slice(values);
            }

            fn narrow_all(stats: &[f32], values: &mut [f32]) {
                values.copy_from_slice(stats);
            }

            fn add_all(values: &mut [f32], sums: &[f32]) {
                crate::kernels::add_into(values, sums);
            }
        }
    };
}

#[cfg(feature = "half")]
f32_parameters!(half::f16);
#[cfg(feature = "half")]
f32_parameters!(half::bf16);
