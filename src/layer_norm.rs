//! `LayerNorm`: its constructors and public methods with their documentation. Each method is
//! one call into the shared [`NormCore`] (`norm.rs`), which checks the arguments and hands the
//! rows to the driver.

use crate::element::{Element, Parameter};
use crate::error::NormError;
use crate::norm::{Centering, GradsInto, NormCore};
use crate::stats::{LayerNormGrads, NormStats, ResidualForward};
use ndarray::{Array, Array1, ArrayRef, ArrayRef1, ArrayView1, ArrayViewMut1, Dimension};

/// Layer normalization over the last axis, with optional per-feature gain and bias.
///
/// For each row `x` of `n = dim()` values (a row is everything along the last axis; all other
/// axes are batch axes):
///
/// ```text
/// μ  = (1/n) Σᵢ xᵢ
/// σ² = (1/n) Σᵢ (xᵢ − μ)²            biased variance, as in Ba, Kiros & Hinton (2016)
/// r  = 1 / √(σ² + ε)                 ε inside the root, as PyTorch, ONNX and candle
/// yᵢ = gainᵢ · (xᵢ − μ) · r + biasᵢ
/// ```
///
/// The statistics of a row depend on that row only: training and inference compute the same
/// thing, a batch of one works, and a recurrent network can normalize at every time step.
///
/// There is no autograd graph: [`backward`](Self::backward) is an explicit function of the
/// input, the saved [`NormStats`] and the upstream gradient.
///
/// # Configurations
///
/// | constructor | gain | bias | PyTorch equivalent |
/// |---|---|---|---|
/// | [`new`](Self::new), [`from_params`](Self::from_params) | yes | yes | `LayerNorm(n)` |
/// | [`new_without_bias`](Self::new_without_bias), [`from_gain`](Self::from_gain) | yes | no | `LayerNorm(n, bias=False)` |
/// | [`new_without_affine`](Self::new_without_affine) | no | no | `LayerNorm(n, elementwise_affine=False)` |
///
/// # Inputs and layouts
///
/// Every method takes `&ArrayRef<A, D>`, so owned arrays, views and strided, transposed or
/// reversed views all pass as `&x`, in any dimensionality from 1 up. Inputs in standard (C)
/// layout are processed in place without a copy; other layouts are first copied into a
/// standard-layout buffer. Returned arrays are in standard layout.
///
/// To normalize over several trailing axes (PyTorch's `normalized_shape`, ONNX's `axis`),
/// merge them into one; for a standard-layout array this is free:
///
/// ```
/// use layernorm::LayerNorm;
/// use ndarray::Array3;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let x = Array3::<f32>::from_shape_fn((2, 4, 8), |(b, h, w)| (b * 32 + h * 8 + w) as f32);
/// let ln = LayerNorm::<f32>::new(4 * 8)?;              // normalized_shape = [4, 8]
/// let rows = x.to_shape((2, 4 * 8))?;                   // a view: no copy
/// let y = ln.forward(&rows)?.into_shape_with_order((2, 4, 8))?;
/// assert_eq!(y.shape(), &[2, 4, 8]);
/// # Ok(())
/// # }
/// ```
///
/// # Saving and loading
///
/// With the feature `serde`, layers serialize as a checkpoint record
/// `{ format, kind, dim, eps, gain, bias }`: every field is required (an absent parameter is an
/// explicit `null`), `kind` (`"layer_norm"` or `"rms_norm"`) must match the type loaded, and
/// loading checks the record like a constructor does. Parameters are JSON numbers for every
/// element type, f16 and bf16 included.
///
/// ```
/// # #[cfg(feature = "serde")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use layernorm::LayerNorm;
/// let ln = LayerNorm::from_params(ndarray::array![1.0f32, 2.0], ndarray::array![0.0, 0.5], 1e-5)?;
/// let json = serde_json::to_string(&ln)?;
/// assert_eq!(
///     json,
///     r#"{"format":1,"kind":"layer_norm","dim":2,"eps":0.00001,"gain":[1.0,2.0],"bias":[0.0,0.5]}"#
/// );
/// assert_eq!(serde_json::from_str::<LayerNorm<f32>>(&json)?, ln);
/// let truncated = r#"{"format":1,"kind":"layer_norm","dim":2,"eps":1e-5}"#;
/// let error = serde_json::from_str::<LayerNorm<f32>>(truncated).unwrap_err();
/// assert!(error.to_string().contains("missing field `gain`"));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "serde"))]
/// # fn main() {}
/// ```
///
/// # Non-finite values
///
/// NaN or ±Inf in a row make that row's outputs, statistics and input gradient NaN; other rows
/// are unaffected. Parameter gradients are sums over rows, so they are NaN where such a row
/// contributes. With `eps = 0`, a constant row has `σ² = 0` and `r = +Inf`, and its outputs
/// and input gradient are NaN (`0 · Inf`): use `eps > 0` (the default) for a finite answer
/// on constant rows.
#[derive(Clone, PartialEq)]
pub struct LayerNorm<A: Element, P: Parameter<A> = A> {
    core: NormCore<A, P>,
}

impl<A: Element> LayerNorm<A> {
    /// A layer over `dim` features with gain 1, bias 0 and `eps = 1e-5`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f64>::new(3)?;
    /// let y = ln.forward(&array![1.0, 2.0, 3.0])?;
    /// // (x − 2) / √(2/3 + 1e-5)
    /// assert!((y[0] + 1.2247357).abs() < 1e-6 && y[1] == 0.0 && (y[2] - 1.2247357).abs() < 1e-6);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(dim: usize) -> Result<Self, NormError> {
        Ok(LayerNorm {
            core: NormCore::with_defaults(Centering::Mean, dim, true, true)?,
        })
    }

    /// A layer over `dim` features with gain 1 and no bias (PyTorch's `bias=False`).
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new_without_bias(768)?;
    /// assert!(ln.gain().is_some() && ln.bias().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_without_bias(dim: usize) -> Result<Self, NormError> {
        Ok(LayerNorm {
            core: NormCore::with_defaults(Centering::Mean, dim, true, false)?,
        })
    }

    /// A layer over `dim` features with neither gain nor bias: `y = (x − μ) · r`
    /// (PyTorch's `elementwise_affine=False`).
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new_without_affine(768)?;
    /// assert!(ln.gain().is_none() && ln.bias().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_without_affine(dim: usize) -> Result<Self, NormError> {
        Ok(LayerNorm {
            core: NormCore::with_defaults(Centering::Mean, dim, false, false)?,
        })
    }

    /// A layer with the given gain and bias (of equal, non-zero length) and `eps`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `gain` is empty, [`NormError::ShapeMismatch`] (argument `bias`)
    /// if the lengths differ, [`NormError::InvalidEps`] if `eps` is NaN, infinite or negative.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::from_params(array![2.0, 2.0], array![1.0, 1.0], 0.0)?;
    /// let y = ln.forward(&array![3.0, 5.0])?;           // x̂ = [-1, 1]
    /// assert_eq!(y, array![-1.0, 3.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_params(gain: Array1<A>, bias: Array1<A>, eps: f64) -> Result<Self, NormError> {
        Ok(LayerNorm {
            core: NormCore::new(Centering::Mean, gain.len(), Some(gain), Some(bias), eps)?,
        })
    }

    /// A layer with the given gain, no bias, and `eps`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `gain` is empty, [`NormError::InvalidEps`] for a bad `eps`.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::from_gain(array![1.0, 10.0], 0.0)?;
    /// assert_eq!(ln.forward(&array![0.0, 2.0])?, array![-1.0, 10.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_gain(gain: Array1<A>, eps: f64) -> Result<Self, NormError> {
        Ok(LayerNorm {
            core: NormCore::new(Centering::Mean, gain.len(), Some(gain), None, eps)?,
        })
    }

    /// This layer's parameters (kept in `A`, here `f32`) applied to `f16` or `bf16` data:
    /// mixed precision, where x, y, dy and dx are half precision and gain, bias and their
    /// gradient accumulators stay in f32 (feature `half`). The results are those of a half
    /// layer with the same parameter values; the parameter gradients are summed in f32.
    ///
    /// ```
    /// # #[cfg(feature = "half")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use half::f16;
    /// use layernorm::LayerNorm;
    /// let layer = LayerNorm::<f32>::new(3)?.for_activations::<f16>();
    /// let x = ndarray::array![[1.0, 2.0, 3.0]].mapv(f16::from_f32);
    /// let y = layer.forward(&x)?;                      // f16 out
    /// let gain: ndarray::ArrayView1<f32> = layer.gain().expect("has a gain");
    /// assert_eq!(gain[0], 1.0);
    /// assert_eq!(y[[0, 2]], f16::from_f32(1.2247));
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "half"))]
    /// # fn main() {}
    /// ```
    pub fn for_activations<H: Element>(self) -> LayerNorm<H, A>
    where
        A: Parameter<H>,
    {
        LayerNorm {
            core: self.core.for_activations(),
        }
    }
}

impl<A: Element, P: Parameter<A>> LayerNorm<A, P> {
    /// Wraps a core (deserialization builds layers this way).
    #[cfg(feature = "serde")]
    pub(crate) fn from_core(core: NormCore<A, P>) -> Self {
        LayerNorm { core }
    }

    /// The shared core.
    #[cfg(feature = "serde")]
    pub(crate) fn core(&self) -> &NormCore<A, P> {
        &self.core
    }

    /// The same layer with another `eps`.
    ///
    /// # Errors
    /// [`NormError::InvalidEps`] if `eps` is NaN, infinite or negative.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(8)?.with_eps(1e-6)?;
    /// assert_eq!(ln.eps(), 1e-6);
    /// assert!(layernorm::LayerNorm::<f32>::new(8)?.with_eps(-1.0).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_eps(mut self, eps: f64) -> Result<Self, NormError> {
        self.set_eps(eps)?;
        Ok(self)
    }

    /// Replaces `eps`.
    ///
    /// # Errors
    /// [`NormError::InvalidEps`] if `eps` is NaN, infinite or negative; the layer is unchanged.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ln = layernorm::LayerNorm::<f32>::new(8)?;
    /// ln.set_eps(0.0)?;
    /// assert_eq!(ln.eps(), 0.0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_eps(&mut self, eps: f64) -> Result<(), NormError> {
        self.core.set_eps(eps)
    }

    /// Zeroed statistics shaped for the rows of `x` (its shape without the last axis): a
    /// buffer to allocate once and hand to the `_into` forms of forward at every step.
    ///
    /// ```
    /// use ndarray::{Array3, Ix2};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(64)?;
    /// let x = Array3::<f32>::zeros((8, 128, 64));              // (batch, seq, hidden)
    /// let mut stats: layernorm::NormStats<f64, Ix2> = ln.stats_for(&x);
    /// assert_eq!(stats.shape(), &[8, 128]);
    /// let mut y = Array3::zeros((8, 128, 64));
    /// ln.forward_with_stats_into(&x, &mut y, &mut stats)?;      // reused every step
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats_for<D: Dimension>(&self, x: &ArrayRef<A, D>) -> NormStats<A::Stat, D::Smaller> {
        self.core.stats_for(x)
    }

    /// Number of features normalized: the required length of the input's last axis.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(768)?;
    /// assert_eq!(ln.dim(), 768);
    /// # Ok(())
    /// # }
    /// ```
    pub fn dim(&self) -> usize {
        self.core.dim()
    }

    /// The ε added to the variance inside the square root.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(4)?;
    /// assert_eq!(ln.eps(), 1e-5);                 // layernorm::DEFAULT_EPS
    /// # Ok(())
    /// # }
    /// ```
    pub fn eps(&self) -> f64 {
        self.core.eps()
    }

    /// The per-feature gain, `None` for a layer without one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(3)?;
    /// assert_eq!(ln.gain().map(|g| g.to_vec()), Some(vec![1.0; 3]));
    /// assert!(layernorm::LayerNorm::<f32>::new_without_affine(3)?.gain().is_none());
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "weight")]
    #[doc(alias = "gamma")]
    pub fn gain(&self) -> Option<ArrayView1<'_, P>> {
        self.core.gain()
    }

    /// The per-feature bias, `None` for a layer without one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::<f32>::new(3)?;
    /// assert_eq!(ln.bias().map(|b| b.to_vec()), Some(vec![0.0; 3]));
    /// assert!(layernorm::LayerNorm::<f32>::new_without_bias(3)?.bias().is_none());
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "beta")]
    pub fn bias(&self) -> Option<ArrayView1<'_, P>> {
        self.core.bias()
    }

    /// Mutable access to the gain, for an optimizer step. Its length cannot change.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ln = layernorm::LayerNorm::<f32>::new(4)?;
    /// if let Some(mut gain) = ln.gain_mut() {
    ///     gain.fill(0.5);
    /// }
    /// assert_eq!(ln.gain().map(|g| g[0]), Some(0.5));
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "weight_mut")]
    pub fn gain_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.core.gain_mut()
    }

    /// Mutable access to the bias, for an optimizer step. Its length cannot change.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ln = layernorm::LayerNorm::<f32>::new(2)?;
    /// if let Some(mut bias) = ln.bias_mut() {
    ///     bias[1] = 0.25;
    /// }
    /// assert_eq!(ln.bias().map(|b| b[1]), Some(0.25));
    /// # Ok(())
    /// # }
    /// ```
    pub fn bias_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.core.bias_mut()
    }

    /// Mutable access to gain and bias at once, `(gain, bias)`: for an optimizer that updates
    /// both in one step. Their lengths cannot change.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ln = layernorm::LayerNorm::<f32>::new(2)?;
    /// if let (Some(mut gain), Some(mut bias)) = ln.parameters_mut() {
    ///     gain[0] -= 0.5; // a gradient step on both parameters
    ///     bias[1] += 0.5;
    /// }
    /// assert_eq!(ln.gain().map(|g| g[0]), Some(0.5));
    /// assert_eq!(ln.bias().map(|b| b[1]), Some(0.5));
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn parameters_mut(
        &mut self,
    ) -> (Option<ArrayViewMut1<'_, P>>, Option<ArrayViewMut1<'_, P>>) {
        self.core.parameters_mut()
    }

    /// Consumes the layer, returning `(gain, bias, eps)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = layernorm::LayerNorm::from_gain(ndarray::array![2.0f32, 3.0], 1e-6)?;
    /// let (gain, bias, eps) = ln.into_params();
    /// assert_eq!(gain, Some(ndarray::array![2.0, 3.0]));
    /// assert_eq!((bias, eps), (None, 1e-6));
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_params(self) -> (Option<Array1<P>>, Option<Array1<P>>, f64) {
        self.core.into_params()
    }

    /// Normalizes `x` over its last axis, returning a new array shaped like `x`.
    ///
    /// # Errors
    /// [`NormError::NoFeatureAxis`] for a 0-dimensional `x`; [`NormError::ShapeMismatch`]
    /// (argument `x`) if the last axis does not have [`dim`](Self::dim) elements.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(3)?;
    /// let y = ln.forward(&array![[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])?;
    /// assert!((y[[0, 0]] + 1.2247).abs() < 1e-4 && (y[[0, 2]] - 1.2247).abs() < 1e-4);
    /// assert!((y[[1, 0]] + 0.7071).abs() < 1e-4 && (y[[1, 2]] - 1.4142).abs() < 1e-4);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward<D: Dimension>(&self, x: &ArrayRef<A, D>) -> Result<Array<A, D>, NormError> {
        self.core.forward(x)
    }

    /// Normalizes `x` and also returns each row's mean and inverse standard deviation, which
    /// [`backward`](Self::backward) needs.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::Array3;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(16)?;
    /// let x = Array3::<f32>::from_shape_fn((2, 5, 16), |(b, t, i)| (b + t * i) as f32);
    /// let (y, stats) = ln.forward_with_stats(&x)?;
    /// assert_eq!(y.shape(), &[2, 5, 16]);
    /// assert_eq!(stats.mean().shape(), &[2, 5]);            // one per row
    /// assert!((stats.mean()[[1, 2]] - (1.0 + 2.0 * 7.5)).abs() < 1e-12);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn forward_with_stats<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
    ) -> Result<(Array<A, D>, NormStats<A::Stat, D::Smaller>), NormError> {
        self.core.forward_with_stats(x)
    }

    /// Normalizes `x` into the caller's buffer `out` (same shape as `x`), allocating nothing
    /// when both are in standard layout: the form for a training loop that reuses its buffers.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`NormError::ShapeMismatch`] (argument `out`) if `out`
    /// is not shaped like `x`. On error `out` is untouched.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::{array, Array2};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let mut out = Array2::<f32>::zeros((2, 2));
    /// for step in 0..3 {
    ///     let x = array![[0.0, 2.0], [step as f32, 5.0]];
    ///     ln.forward_into(&x, &mut out)?;
    ///     assert_eq!(out.row(0), array![-1.0, 1.0]);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
    ) -> Result<(), NormError> {
        self.core.forward_into_with(x, out, None)
    }

    /// As [`forward_into`](Self::forward_into), also writing each row's statistics into a
    /// reused [`NormStats`] (shaped like `x` without its last axis, e.g. from
    /// [`NormStats::zeros`]): forward for training with no allocation per step.
    ///
    /// # Errors
    /// As [`forward_into`](Self::forward_into); [`NormError::ShapeMismatch`] (argument
    /// `stats`) if `stats` does not have one entry per row of `x`.
    ///
    /// ```
    /// use layernorm::{LayerNorm, NormStats};
    /// use ndarray::{array, Array2, Ix1};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(3)?;
    /// let x = array![[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]];
    /// let mut y = Array2::<f32>::zeros((2, 3));
    /// let mut stats = NormStats::<f64, Ix1>::zeros(Ix1(2));
    /// ln.forward_with_stats_into(&x, &mut y, &mut stats)?;
    /// assert_eq!(stats.mean(), array![2.0, 4.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_with_stats_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        stats: &mut NormStats<A::Stat, D::Smaller>,
    ) -> Result<(), NormError> {
        self.core.forward_into_with(x, out, Some(stats))
    }

    /// Normalizes `x` in place.
    ///
    /// # Errors
    /// As [`forward`](Self::forward). On error `x` is untouched.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f64>::new_without_affine(2)?.with_eps(0.0)?;
    /// let mut x = array![[3.0, 5.0], [-4.0, 4.0]];
    /// ln.forward_inplace(&mut x)?;
    /// assert_eq!(x, array![[-1.0, 1.0], [-1.0, 1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_inplace<D: Dimension>(&self, x: &mut ArrayRef<A, D>) -> Result<(), NormError> {
        self.core.forward_inplace(x)
    }

    /// Gradients of a loss `L` with respect to the input and the parameters, given the input
    /// `x`, the statistics forward saved for it and the upstream gradient `dy = ∂L/∂y`.
    ///
    /// # Derivation
    ///
    /// Per row of `n` features, with `r = (σ² + ε)^(-1/2)`, `x̂ᵢ = (xᵢ − μ) · r` and
    /// `gᵢ = gainᵢ · dyᵢ = ∂L/∂x̂ᵢ` (`gᵢ = dyᵢ` without gain):
    ///
    /// ```text
    /// ∂μ/∂xⱼ  = 1/n
    /// ∂σ²/∂xⱼ = (2/n) (xⱼ − μ)                      the Σᵢ (xᵢ − μ) term is zero
    /// ∂r/∂xⱼ  = −½ (σ² + ε)^(-3/2) · (2/n)(xⱼ − μ) = −(r/n) · x̂ⱼ · r
    /// ∂x̂ᵢ/∂xⱼ = r (δᵢⱼ − 1/n) + (xᵢ − μ) ∂r/∂xⱼ    = r (δᵢⱼ − 1/n − x̂ᵢ x̂ⱼ / n)
    ///
    /// dxⱼ     = Σᵢ gᵢ ∂x̂ᵢ/∂xⱼ = r · (gⱼ − mean(g) − x̂ⱼ · mean(g ⊙ x̂))
    /// dgainⱼ  = Σ_rows dyⱼ · x̂ⱼ
    /// dbiasⱼ  = Σ_rows dyⱼ
    /// ```
    ///
    /// `x̂` is recomputed from `x` and the saved statistics in the centered form `(x − μ) · r`,
    /// so the result stays accurate on rows whose mean is large against their spread. The
    /// tests check all three gradients against central finite differences.
    ///
    /// # Errors
    /// As [`forward`](Self::forward) for `x`; [`NormError::ShapeMismatch`] for a `dy` not
    /// shaped like `x` (argument `dy`) or `stats` not describing the rows of `x` (argument
    /// `stats`). Statistics of another input of the same shape cannot be detected.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f64>::new(3)?.with_eps(0.0)?;
    /// let x = array![[1.0, 2.0, 3.0]];
    /// let (_y, stats) = ln.forward_with_stats(&x)?;
    /// // L = y₀: only the first output feeds the loss.
    /// let grads = ln.backward(&x, &stats, &array![[1.0, 0.0, 0.0]])?;
    /// assert_eq!(grads.bias, Some(array![1.0, 0.0, 0.0]));
    /// assert!((grads.gain.unwrap()[0] + 1.224744871391589).abs() < 1e-12);  // x̂₀
    /// assert!(grads.input.sum().abs() < 1e-12);             // shifting x does not change y
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
    ) -> Result<LayerNormGrads<A, D, P>, NormError> {
        self.core.backward_with(x, stats, dy, None)
    }

    /// As [`backward`](Self::backward), writing `dx` into the caller's buffer and ADDING the
    /// parameter gradients into caller-owned accumulators, so that a layer used at several
    /// places (an RNN at every time step) sums its gradients over all of them.
    ///
    /// Pass `None` for an accumulator to skip that gradient (a frozen parameter). The sums over
    /// rows are formed in the statistics type (`f64` for `f32` data) and added to the
    /// accumulator once per call.
    ///
    /// # Errors
    /// As [`backward`](Self::backward); [`NormError::ShapeMismatch`] (argument `dx`,
    /// `gain_grad` or `bias_grad`) for a buffer of the wrong shape;
    /// [`NormError::MissingParameter`] for an accumulator of a parameter the layer does not
    /// have. On error nothing is written.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::{array, Array1, Array2};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(2)?;
    /// let mut dx = Array2::<f32>::zeros((1, 2));
    /// let mut gain_grad = Array1::<f32>::zeros(2);
    /// let mut bias_grad = Array1::<f32>::zeros(2);
    /// for step in 0..3 {                                    // three time steps, one layer
    ///     let x = array![[step as f32, 1.0 + 2.0 * step as f32]];
    ///     let (_y, stats) = ln.forward_with_stats(&x)?;
    ///     let dy = array![[1.0, 0.5]];
    ///     ln.backward_into(&x, &stats, &dy, &mut dx, Some(&mut gain_grad), Some(&mut bias_grad))?;
    /// }
    /// assert_eq!(bias_grad, array![3.0, 1.5]);              // summed over the three steps
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dx: &mut ArrayRef<A, D>,
        gain_grad: Option<&mut ArrayRef1<P>>,
        bias_grad: Option<&mut ArrayRef1<P>>,
    ) -> Result<(), NormError> {
        let into = GradsInto::new(dx, gain_grad, bias_grad);
        self.core.backward_into_with(x, stats, dy, None, into)
    }

    /// The fused residual step of a pre-norm transformer block: `sum = x + residual` and
    /// `output = LN(sum)` in one pass over memory, with the statistics for
    /// [`backward_residual`](Self::backward_residual).
    ///
    /// ```text
    /// sum    = x + residual            the residual stream, returned for the next block
    /// output = LN(sum)
    /// ```
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`NormError::ShapeMismatch`] (argument `residual`) if
    /// `residual` is not shaped like `x`.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let step = ln.forward_residual(&array![[1.0, 2.0]], &array![[1.0, 4.0]])?;
    /// assert_eq!(step.sum, array![[2.0, 6.0]]);
    /// assert_eq!(step.output, array![[-1.0, 1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn forward_residual<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
    ) -> Result<ResidualForward<A, D, NormStats<A::Stat, D::Smaller>>, NormError> {
        let (output, sum, stats) = self.core.forward_residual(x, residual)?;
        Ok(ResidualForward { output, sum, stats })
    }

    /// As [`forward_residual`](Self::forward_residual), into caller buffers: `out` and `sum`
    /// shaped like `x`, `stats` with one entry per row.
    ///
    /// # Errors
    /// As [`forward_residual`](Self::forward_residual); [`NormError::ShapeMismatch`]
    /// (argument `out`, `sum` or `stats`) for a buffer of the wrong shape.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ndarray::{array, Array2};
    /// let ln = layernorm::LayerNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let (x, residual) = (array![[1.0, 2.0]], array![[1.0, 4.0]]);
    /// let (mut out, mut sum) = (Array2::zeros((1, 2)), Array2::zeros((1, 2)));
    /// let mut stats = ln.stats_for(&x);
    /// ln.forward_residual_into(&x, &residual, &mut out, &mut sum, &mut stats)?;
    /// assert_eq!(sum, array![[2.0, 6.0]]);
    /// assert_eq!(out, array![[-1.0, 1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_residual_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        sum: &mut ArrayRef<A, D>,
        stats: &mut NormStats<A::Stat, D::Smaller>,
    ) -> Result<(), NormError> {
        self.core
            .forward_residual_into(x, residual, out, sum, stats)
    }

    /// Backward of the fused residual step: given the `sum` and `stats` from
    /// [`forward_residual`](Self::forward_residual), the gradient `dy` of the output and the
    /// gradient `dsum` reaching the sum from the blocks after it, returns in `input` the
    /// gradient of the sum, which is the gradient of both `x` and `residual`:
    ///
    /// ```text
    /// ∂L/∂sum = LN′(sum)ᵀ dy + dsum = ∂L/∂x = ∂L/∂residual
    /// ```
    ///
    /// plus the gain and bias gradients, as [`backward`](Self::backward).
    ///
    /// # Errors
    /// As [`backward`](Self::backward) with `sum` in place of `x`; [`NormError::ShapeMismatch`]
    /// (argument `dsum`) if `dsum` is not shaped like `sum`.
    ///
    /// ```
    /// use layernorm::LayerNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ln = LayerNorm::<f64>::new(3)?;
    /// let step = ln.forward_residual(&array![[1.0, 2.0, 3.0]], &array![[0.5, 0.0, -0.5]])?;
    /// let dy = array![[1.0, 0.0, 0.0]];
    /// let dsum = array![[0.25, 0.25, 0.25]];
    /// let fused = ln.backward_residual(&step.sum, &step.stats, &dy, &dsum)?;
    /// let plain = ln.backward(&step.sum, &step.stats, &dy)?;
    /// assert_eq!(fused.input, plain.input + &dsum);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward_residual<D: Dimension>(
        &self,
        sum: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: &ArrayRef<A, D>,
    ) -> Result<LayerNormGrads<A, D, P>, NormError> {
        self.core.backward_with(sum, stats, dy, Some(dsum))
    }

    /// As [`backward_residual`](Self::backward_residual), writing the sum's gradient into
    /// `dinput` and ADDING the parameter gradients into caller-owned accumulators.
    ///
    /// # Errors
    /// As [`backward_residual`](Self::backward_residual) and
    /// [`backward_into`](Self::backward_into).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ndarray::{array, Array1, Array2};
    /// let ln = layernorm::LayerNorm::<f64>::new(2)?;
    /// let step = ln.forward_residual(&array![[1.0, 2.0]], &array![[0.5, 0.0]])?;
    /// let (dy, dsum) = (array![[1.0, 0.0]], array![[0.5, 0.5]]);
    /// let mut dinput = Array2::zeros((1, 2));
    /// let (mut dgain, mut dbias) = (Array1::zeros(2), Array1::zeros(2));
    /// ln.backward_residual_into(&step.sum, &step.stats, &dy, &dsum, &mut dinput,
    ///     Some(&mut dgain), Some(&mut dbias))?;
    /// let plain = ln.backward(&step.sum, &step.stats, &dy)?;
    /// assert_eq!(dinput, plain.input + &dsum);
    /// assert_eq!(dbias, array![1.0, 0.0]);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_residual_into<D: Dimension>(
        &self,
        sum: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: &ArrayRef<A, D>,
        dinput: &mut ArrayRef<A, D>,
        gain_grad: Option<&mut ArrayRef1<P>>,
        bias_grad: Option<&mut ArrayRef1<P>>,
    ) -> Result<(), NormError> {
        let into = GradsInto::new(dinput, gain_grad, bias_grad);
        self.core
            .backward_into_with(sum, stats, dy, Some(dsum), into)
    }
}

/// Compact: the configuration, not the parameter values.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ln = layernorm::LayerNorm::<f32>::new(768)?;
/// assert_eq!(format!("{ln:?}"), "LayerNorm { dim: 768, eps: 1e-5, gain: yes, bias: yes }");
/// # Ok(())
/// # }
/// ```
impl<A: Element, P: Parameter<A>> std::fmt::Debug for LayerNorm<A, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.debug_as("LayerNorm", f)
    }
}
