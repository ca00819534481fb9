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
/// | `half::f16`, `half::bf16` (feature `half`) | `f32` | rows are widened to f32 and run through the f32 kernels; outputs are rounded to half once |
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

    /// Widens a stored value to the statistics type (exact).
    fn to_stat(self) -> Self::Stat;

    /// Rounds a statistics-type value to the storage type (to nearest).
    fn from_stat(value: Self::Stat) -> Self;

    /// The kernel that normalizes rows of this type (the crate's hook; not callable outside).
    #[doc(hidden)]
    fn forward_rows(job: ForwardRows<'_, Self>);

    /// The kernel that differentiates rows of this type (the crate's hook; not callable
    /// outside). `scratch` is working memory the kernel may grow and reuse across calls.
    #[doc(hidden)]
    fn backward_rows(job: BackwardJob<'_, Self>, scratch: &mut Vec<Self>);
}

/// f32 and f64 run the SIMD kernels.
macro_rules! simd_kernels {
    () => {
        fn forward_rows(job: ForwardRows<'_, Self>) {
            simd::forward_rows(job);
        }

        fn backward_rows(job: BackwardJob<'_, Self>, scratch: &mut Vec<Self>) {
            simd::backward_rows(job, scratch);
        }
    };
}

impl Element for f32 {
    type Stat = f64;

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

/// f16 and bf16 run the f32 kernels on rows widened to f32.
#[cfg(feature = "half")]
macro_rules! half_element {
    ($half:ty) => {
        impl Element for $half {
            type Stat = f32;

            #[inline(always)]
            fn to_stat(self) -> f32 {
                self.to_f32()
            }

            #[inline(always)]
            fn from_stat(value: f32) -> Self {
                <$half>::from_f32(value)
            }

            fn forward_rows(job: ForwardRows<'_, Self>) {
                crate::kernels::half::forward_rows(job);
            }

            fn backward_rows(job: BackwardJob<'_, Self>, _scratch: &mut Vec<Self>) {
                crate::kernels::half::backward_rows(job);
            }
        }
    };
}

#[cfg(feature = "half")]
half_element!(half::f16);
#[cfg(feature = "half")]
half_element!(half::bf16);
