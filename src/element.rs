//! The element types a layer can hold, and the type its statistics are computed in.

use num_traits::{Float, FromPrimitive};
use std::fmt::{Debug, Display};

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
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
pub trait Element:
    private::Sealed + Copy + Send + Sync + Debug + Display + PartialEq + 'static
{
    /// The type statistics are accumulated and returned in.
    type Stat: Float + FromPrimitive + Send + Sync + Debug + Display + 'static;

    /// Widens a stored value to the statistics type (exact).
    fn to_stat(self) -> Self::Stat;

    /// Rounds a statistics-type value to the storage type (to nearest).
    fn from_stat(value: Self::Stat) -> Self;
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
}
