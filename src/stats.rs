//! What forward and backward return: per-row statistics saved by the forward pass for the
//! backward pass, the fused residual step's results, and the gradients.

use ndarray::{Array, Array1, ArrayView, Dimension};
use num_traits::Zero;

/// Per-row mean and inverse standard deviation, as computed by
/// [`LayerNorm::forward_with_stats`](crate::LayerNorm::forward_with_stats).
///
/// Both arrays are shaped like the input without its last axis: one value per normalized row.
/// They are stored in the element type's statistics type ([`Element::Stat`](crate::Element::Stat):
/// `f64` for `f32` data), so the backward pass sees the mean at the precision forward computed
/// it, not rounded to the data's precision.
///
/// ```text
/// mean    = (1/n) Σᵢ xᵢ
/// inv_std = 1 / √(σ² + ε),   σ² = (1/n) Σᵢ (xᵢ − mean)²
/// ```
///
/// ```
/// use layernorm::LayerNorm;
/// use ndarray::array;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ln = LayerNorm::<f32>::new(3)?.with_eps(0.0)?;
/// let (_y, stats) = ln.forward_with_stats(&array![[1.0, 2.0, 3.0], [5.0, 5.0, 8.0]])?;
/// assert_eq!(stats.mean().shape(), &[2]);
/// assert!((stats.mean()[0] - 2.0).abs() < 1e-12);
/// assert!((stats.inv_std()[0] - 1.224744871391589).abs() < 1e-12); // 1 / √(2/3)
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NormStats<S, D: Dimension> {
    mean: Array<S, D>,
    inv_std: Array<S, D>,
}

impl<S: Zero + Clone, D: Dimension> NormStats<S, D> {
    /// Statistics of `shape` filled with zeros: a buffer for
    /// [`LayerNorm::forward_with_stats_into`](crate::LayerNorm::forward_with_stats_into) to
    /// overwrite, so that a training loop allocates its statistics once.
    ///
    /// ```
    /// use layernorm::NormStats;
    /// use ndarray::Ix2;
    /// let stats = NormStats::<f64, Ix2>::zeros(Ix2(4, 16));
    /// assert_eq!(stats.shape(), &[4, 16]);
    /// assert_eq!(stats.len(), 64);
    /// ```
    pub fn zeros(shape: D) -> Self {
        NormStats::from_parts(Array::zeros(shape.clone()), Array::zeros(shape))
    }
}

impl<S, D: Dimension> NormStats<S, D> {
    /// Wraps arrays computed by the crate; both have the same shape, in standard layout.
    pub(crate) fn from_parts(mean: Array<S, D>, inv_std: Array<S, D>) -> Self {
        debug_assert_eq!(mean.shape(), inv_std.shape());
        NormStats { mean, inv_std }
    }

    /// Mean of each row, shaped like the input without its last axis.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(2)?;
    /// let (_y, stats) = ln.forward_with_stats(&ndarray::array![[[1.0, 3.0], [2.0, 2.0]]])?;
    /// assert_eq!(stats.mean(), ndarray::array![[2.0, 2.0]]);  // shaped (1, 2)
    /// # Ok(())
    /// # }
    /// ```
    pub fn mean(&self) -> ArrayView<'_, S, D> {
        self.mean.view()
    }

    /// Inverse standard deviation `1 / √(σ² + ε)` of each row, shaped like [`mean`](Self::mean).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let (_y, stats) = ln.forward_with_stats(&ndarray::array![[1.0, 3.0]])?;
    /// assert_eq!(stats.inv_std()[0], 1.0);                 // σ = 1
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "rstd")]
    pub fn inv_std(&self) -> ArrayView<'_, S, D> {
        self.inv_std.view()
    }

    /// Shape of the statistics: the input's shape without its last axis.
    ///
    /// ```
    /// let stats = layernorm::NormStats::<f64, ndarray::Ix2>::zeros(ndarray::Ix2(4, 16));
    /// assert_eq!(stats.shape(), &[4, 16]);
    /// ```
    pub fn shape(&self) -> &[usize] {
        self.mean.shape()
    }

    /// Number of rows the statistics describe.
    ///
    /// ```
    /// let stats = layernorm::NormStats::<f64, ndarray::Ix2>::zeros(ndarray::Ix2(4, 16));
    /// assert_eq!(stats.len(), 64);
    /// ```
    pub fn len(&self) -> usize {
        self.mean.len()
    }

    /// `true` when the statistics describe zero rows.
    ///
    /// ```
    /// let stats = layernorm::NormStats::<f64, ndarray::Ix1>::zeros(ndarray::Ix1(0));
    /// assert!(stats.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }

    /// The mean and inverse standard deviation as flat row-major slices.
    pub(crate) fn as_slices(&self) -> (&[S], &[S]) {
        // Both arrays are built in standard layout by the crate and never exposed mutably.
        (
            self.mean
                .as_slice()
                .expect("stats are built in standard layout"),
            self.inv_std
                .as_slice()
                .expect("stats are built in standard layout"),
        )
    }

    /// The mean and inv_std as flat row-major mutable slices, for the forward pass to fill.
    pub(crate) fn as_mut_slices(&mut self) -> (&mut [S], &mut [S]) {
        (
            self.mean
                .as_slice_mut()
                .expect("stats are built in standard layout"),
            self.inv_std
                .as_slice_mut()
                .expect("stats are built in standard layout"),
        )
    }

    /// Consumes the statistics, returning `(mean, inv_std)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let (_y, stats) = ln.forward_with_stats(&ndarray::array![[1.0, 3.0]])?;
    /// let (mean, inv_std) = stats.into_parts();
    /// assert_eq!((mean[0], inv_std[0]), (2.0, 1.0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_parts(self) -> (Array<S, D>, Array<S, D>) {
        (self.mean, self.inv_std)
    }
}

/// Per-row inverse root mean square, as computed by
/// [`RmsNorm::forward_with_stats`](crate::RmsNorm::forward_with_stats).
///
/// Shaped like the input without its last axis, in the element type's statistics type (`f64`
/// for `f32` data).
///
/// ```text
/// inv_rms = 1 / √(mean(x²) + ε)
/// ```
///
/// ```
/// use layernorm::RmsNorm;
/// use ndarray::array;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rms = RmsNorm::<f32>::new(2)?.with_eps(0.0)?;
/// let (_y, stats) = rms.forward_with_stats(&array![[3.0, 4.0]])?;
/// assert!((stats.inv_rms()[0] - 1.0 / 12.5f64.sqrt()).abs() < 1e-12); // mean(x²) = 12.5
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RmsStats<S, D: Dimension> {
    /// The shared representation: means are all zero for uncentered rows.
    inner: NormStats<S, D>,
}

impl<S: Zero + Clone, D: Dimension> RmsStats<S, D> {
    /// Statistics of `shape` filled with zeros: a buffer for
    /// [`RmsNorm::forward_with_stats_into`](crate::RmsNorm::forward_with_stats_into).
    ///
    /// ```
    /// let stats = layernorm::RmsStats::<f64, ndarray::Ix1>::zeros(ndarray::Ix1(8));
    /// assert_eq!(stats.shape(), &[8]);
    /// ```
    pub fn zeros(shape: D) -> Self {
        RmsStats {
            inner: NormStats::zeros(shape),
        }
    }
}

impl<S, D: Dimension> RmsStats<S, D> {
    pub(crate) fn from_inner(inner: NormStats<S, D>) -> Self {
        RmsStats { inner }
    }

    pub(crate) fn inner(&self) -> &NormStats<S, D> {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut NormStats<S, D> {
        &mut self.inner
    }

    /// Inverse root mean square `1 / √(mean(x²) + ε)` of each row.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = layernorm::RmsNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let (_y, stats) = rms.forward_with_stats(&ndarray::array![[1.0, 1.0]])?;
    /// assert_eq!(stats.inv_rms()[0], 1.0);
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "rstd")]
    pub fn inv_rms(&self) -> ArrayView<'_, S, D> {
        self.inner.inv_std()
    }

    /// Shape of the statistics: the input's shape without its last axis.
    ///
    /// ```
    /// let stats = layernorm::RmsStats::<f64, ndarray::Ix1>::zeros(ndarray::Ix1(3));
    /// assert_eq!(stats.shape(), &[3]);
    /// ```
    pub fn shape(&self) -> &[usize] {
        self.inner.shape()
    }

    /// Number of rows the statistics describe.
    ///
    /// ```
    /// let stats = layernorm::RmsStats::<f64, ndarray::Ix2>::zeros(ndarray::Ix2(2, 3));
    /// assert_eq!(stats.len(), 6);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// `true` when the statistics describe zero rows.
    ///
    /// ```
    /// let stats = layernorm::RmsStats::<f64, ndarray::Ix1>::zeros(ndarray::Ix1(3));
    /// assert!(!stats.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Gradients returned by [`LayerNorm::backward`](crate::LayerNorm::backward).
///
/// `gain` and `bias` are `None` where the layer has no such parameter; they are in the layer's
/// parameter type `P` (the data type, or `f32` for a mixed-precision layer over half data).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ln = layernorm::LayerNorm::<f64>::new(2)?;
/// let x = ndarray::array![[1.0, 3.0]];
/// let (_y, stats) = ln.forward_with_stats(&x)?;
/// let grads = ln.backward(&x, &stats, &ndarray::array![[1.0, 1.0]])?;
/// assert_eq!(grads.bias, Some(ndarray::array![1.0, 1.0]));  // Σ_rows dy
/// assert!(grads.input.iter().all(|d| d.abs() < 1e-12));    // a uniform dy has no effect
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGrads<A, D: Dimension, P = A> {
    /// `∂L/∂x`, shaped like the input.
    pub input: Array<A, D>,
    /// `∂L/∂gain`, one value per feature: `Σ_rows dyᵢ · x̂ᵢ`.
    #[doc(alias = "weight")]
    #[doc(alias = "gamma")]
    pub gain: Option<Array1<P>>,
    /// `∂L/∂bias`, one value per feature: `Σ_rows dyᵢ`.
    #[doc(alias = "beta")]
    pub bias: Option<Array1<P>>,
}

/// What the fused residual forward returns: `output = norm(x + residual)`, the `sum`
/// `x + residual` (the residual stream the next block adds to), and the statistics the backward
/// pass needs ([`NormStats`] for LayerNorm, [`RmsStats`] for RmsNorm).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ln = layernorm::LayerNorm::<f32>::new(2)?.with_eps(0.0)?;
/// let step = ln.forward_residual(&ndarray::array![[0.0, 1.0]], &ndarray::array![[1.0, 3.0]])?;
/// assert_eq!(step.sum, ndarray::array![[1.0, 4.0]]);
/// assert_eq!(step.output, ndarray::array![[-1.0, 1.0]]);
/// assert_eq!(step.stats.mean()[0], 2.5);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ResidualForward<A, D: Dimension, St> {
    /// The normalized sum, shaped like `x`.
    pub output: Array<A, D>,
    /// `x + residual`, shaped like `x`.
    pub sum: Array<A, D>,
    /// Per-row statistics of the sum.
    pub stats: St,
}
