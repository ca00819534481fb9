//! `RmsNorm`: root-mean-square normalization (Zhang & Sennrich, 2019): its constructors and
//! public methods, each one call into the shared [`NormCore`] (`norm.rs`) with
//! [`Centering::None`], so that it runs LayerNorm's kernels with the centering turned off.

use crate::element::{Element, Parameter};
use crate::error::NormError;
use crate::norm::{Centering, GradsInto, NormCore};
use crate::stats::{LayerNormGrads, NormStats, ResidualForward, RmsStats};
use ndarray::{Array, Array1, ArrayRef, ArrayRef1, ArrayView1, ArrayViewMut1, Dimension};

/// Gradients returned by [`RmsNorm::backward`]: the same fields as [`LayerNormGrads`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rms = layernorm::RmsNorm::<f64>::new(2)?;
/// let x = ndarray::array![[3.0, 4.0]];
/// let (_y, stats) = rms.forward_with_stats(&x)?;
/// let grads: layernorm::RmsNormGrads<f64, ndarray::Ix2> = rms.backward(&x, &stats, &x)?;
/// assert!(grads.bias.is_none());                         // RmsNorm::new has no bias
/// # Ok(())
/// # }
/// ```
pub type RmsNormGrads<A, D, P = A> = LayerNormGrads<A, D, P>;

/// Root-mean-square normalization over the last axis (Zhang & Sennrich, 2019), the
/// normalization used by many current transformers: rows are scaled, not centered.
///
/// For each row `x` of `n = dim()` values:
///
/// ```text
/// r  = 1 / √(mean(x²) + ε)           "inv_rms"; ε inside the root
/// yᵢ = gainᵢ · xᵢ · r (+ biasᵢ)       bias off by default
/// ```
///
/// Inputs, layouts, errors, non-finite values and thread-count independence behave exactly as
/// for [`LayerNorm`](crate::LayerNorm), whose kernels it shares.
///
/// | constructor | gain | bias |
/// |---|---|---|
/// | [`new`](Self::new), [`from_gain`](Self::from_gain) | yes | no |
/// | [`new_with_bias`](Self::new_with_bias), [`from_params`](Self::from_params) | yes | yes |
/// | [`new_without_affine`](Self::new_without_affine) | no | no |
#[derive(Clone, PartialEq)]
pub struct RmsNorm<A: Element, P: Parameter<A> = A> {
    core: NormCore<A, P>,
}

fn stats_of<S, D: Dimension>(stats: &RmsStats<S, D>) -> &NormStats<S, D> {
    stats.inner()
}

impl<A: Element> RmsNorm<A> {
    /// A layer over `dim` features with gain 1, no bias and `eps = 1e-5`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let y = rms.forward(&array![3.0, 4.0])?;         // rms = √12.5 ≈ 3.5355
    /// assert!((y[0] - 0.848528).abs() < 1e-6 && (y[1] - 1.131371).abs() < 1e-6);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(dim: usize) -> Result<Self, NormError> {
        Ok(RmsNorm {
            core: NormCore::with_defaults(Centering::None, dim, true, false)?,
        })
    }

    /// A layer over `dim` features with gain 1 and bias 0.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = layernorm::RmsNorm::<f32>::new_with_bias(8)?;
    /// assert!(rms.bias().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_with_bias(dim: usize) -> Result<Self, NormError> {
        Ok(RmsNorm {
            core: NormCore::with_defaults(Centering::None, dim, true, true)?,
        })
    }

    /// A layer over `dim` features with neither gain nor bias: `y = x · r`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `dim == 0`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = layernorm::RmsNorm::<f32>::new_without_affine(8)?;
    /// assert!(rms.gain().is_none() && rms.bias().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new_without_affine(dim: usize) -> Result<Self, NormError> {
        Ok(RmsNorm {
            core: NormCore::with_defaults(Centering::None, dim, false, false)?,
        })
    }

    /// A layer with the given gain, no bias, and `eps`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `gain` is empty, [`NormError::InvalidEps`] for a bad `eps`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::from_gain(array![2.0, 0.5], 0.0)?;
    /// assert_eq!(rms.forward(&array![1.0, -1.0])?, array![2.0, -0.5]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_gain(gain: Array1<A>, eps: f64) -> Result<Self, NormError> {
        Ok(RmsNorm {
            core: NormCore::new(Centering::None, gain.len(), Some(gain), None, eps)?,
        })
    }

    /// A layer with the given gain and bias (of equal, non-zero length) and `eps`.
    ///
    /// # Errors
    /// [`NormError::ZeroDim`] if `gain` is empty, [`NormError::ShapeMismatch`] (argument `bias`)
    /// if the lengths differ, [`NormError::InvalidEps`] for a bad `eps`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::from_params(array![1.0, 1.0], array![0.5, 0.5], 0.0)?;
    /// assert_eq!(rms.forward(&array![2.0, -2.0])?, array![1.5, -0.5]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_params(gain: Array1<A>, bias: Array1<A>, eps: f64) -> Result<Self, NormError> {
        Ok(RmsNorm {
            core: NormCore::new(Centering::None, gain.len(), Some(gain), Some(bias), eps)?,
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
    /// use layernorm::RmsNorm;
    /// let layer = RmsNorm::<f32>::new(3)?.for_activations::<f16>();
    /// let x = ndarray::array![[1.0, 2.0, 3.0]].mapv(f16::from_f32);
    /// let y = layer.forward(&x)?;                      // f16 out
    /// let gain: ndarray::ArrayView1<f32> = layer.gain().expect("has a gain");
    /// assert_eq!(gain[0], 1.0);
    /// assert_eq!(y[[0, 2]], f16::from_f32(1.3887));      // 3 / √(14/3)
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "half"))]
    /// # fn main() {}
    /// ```
    pub fn for_activations<H: Element>(self) -> RmsNorm<H, A>
    where
        A: Parameter<H>,
    {
        RmsNorm {
            core: self.core.for_activations(),
        }
    }
}

impl<A: Element, P: Parameter<A>> RmsNorm<A, P> {
    /// Wraps a core (deserialization builds layers this way).
    #[cfg(feature = "serde")]
    pub(crate) fn from_core(core: NormCore<A, P>) -> Self {
        RmsNorm { core }
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
    /// let rms = layernorm::RmsNorm::<f32>::new(8)?.with_eps(1e-6)?;
    /// assert_eq!(rms.eps(), 1e-6);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_eps(mut self, eps: f64) -> Result<Self, NormError> {
        self.core.set_eps(eps)?;
        Ok(self)
    }

    /// Replaces `eps`.
    ///
    /// # Errors
    /// [`NormError::InvalidEps`] if `eps` is NaN, infinite or negative; the layer is unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut rms = layernorm::RmsNorm::<f32>::new(4)?;
    /// rms.set_eps(1e-6)?;
    /// assert_eq!(rms.eps(), 1e-6);
    /// assert!(rms.set_eps(f64::NAN).is_err());
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
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = layernorm::RmsNorm::<f32>::new(4)?;
    /// let stats = rms.stats_for(&ndarray::Array2::<f32>::zeros((3, 4)));
    /// assert_eq!(stats.shape(), &[3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats_for<D: Dimension>(&self, x: &ArrayRef<A, D>) -> RmsStats<A::Stat, D::Smaller> {
        RmsStats::from_inner(self.core.stats_for(x))
    }

    /// Number of features normalized: the required length of the input's last axis.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(layernorm::RmsNorm::<f32>::new(512)?.dim(), 512);
    /// # Ok(())
    /// # }
    /// ```
    pub fn dim(&self) -> usize {
        self.core.dim()
    }

    /// The ε added to the mean square inside the square root.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(layernorm::RmsNorm::<f32>::new(4)?.eps(), 1e-5);
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
    /// let rms = layernorm::RmsNorm::<f32>::new(2)?;
    /// assert_eq!(rms.gain().map(|g| g.to_vec()), Some(vec![1.0, 1.0]));
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
    /// assert!(layernorm::RmsNorm::<f32>::new(2)?.bias().is_none());                    // no bias by default
    /// assert_eq!(layernorm::RmsNorm::<f32>::new_with_bias(2)?.bias().map(|b| b[0]), Some(0.0));
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "beta")]
    pub fn bias(&self) -> Option<ArrayView1<'_, P>> {
        self.core.bias()
    }

    /// Mutable access to the gain. Its length cannot change.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut rms = layernorm::RmsNorm::<f32>::new(2)?;
    /// if let Some(mut gain) = rms.gain_mut() {
    ///     gain[0] = 3.0;
    /// }
    /// assert_eq!(rms.gain().map(|g| g[0]), Some(3.0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn gain_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.core.gain_mut()
    }

    /// Mutable access to the bias. Its length cannot change.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut rms = layernorm::RmsNorm::<f32>::new_with_bias(2)?;
    /// if let Some(mut bias) = rms.bias_mut() {
    ///     bias.fill(0.5);
    /// }
    /// assert_eq!(rms.bias().map(|b| b[1]), Some(0.5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn bias_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.core.bias_mut()
    }

    /// Mutable access to gain and bias at once, `(gain, bias)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut rms = layernorm::RmsNorm::<f32>::new(2)?;
    /// let (gain, bias) = rms.parameters_mut();
    /// assert!(gain.is_some() && bias.is_none());
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
    /// let (gain, bias, eps) = layernorm::RmsNorm::<f64>::new(2)?.into_params();
    /// assert_eq!((gain.map(|g| g.len()), bias, eps), (Some(2), None, 1e-5));
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
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f32>::new(4)?.with_eps(0.0)?;
    /// let y = rms.forward(&array![[1.0, 1.0, 1.0, 1.0], [2.0, -2.0, 2.0, -2.0]])?;
    /// assert_eq!(y, array![[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward<D: Dimension>(&self, x: &ArrayRef<A, D>) -> Result<Array<A, D>, NormError> {
        self.core.forward(x)
    }

    /// Normalizes `x` and also returns each row's inverse root mean square, which
    /// [`backward`](Self::backward) needs.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::Array3;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f32>::new(16)?;
    /// let (y, stats) = rms.forward_with_stats(&Array3::<f32>::ones((2, 5, 16)))?;
    /// assert_eq!(stats.inv_rms().shape(), &[2, 5]);
    /// assert!((y[[1, 4, 15]] - 1.0).abs() < 1e-4);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn forward_with_stats<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
    ) -> Result<(Array<A, D>, RmsStats<A::Stat, D::Smaller>), NormError> {
        let (y, stats) = self.core.forward_with_stats(x)?;
        Ok((y, RmsStats::from_inner(stats)))
    }

    /// Normalizes `x` into the caller's buffer `out` (same shape as `x`).
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`NormError::ShapeMismatch`] (argument `out`) if `out`
    /// is not shaped like `x`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::{array, Array2};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let mut out = Array2::zeros((1, 2));
    /// rms.forward_into(&array![[-5.0, 5.0]], &mut out)?;
    /// assert_eq!(out, array![[-1.0, 1.0]]);
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
    /// reused [`RmsStats`] (from [`RmsStats::zeros`]).
    ///
    /// # Errors
    /// As [`forward_into`](Self::forward_into); [`NormError::ShapeMismatch`] (argument
    /// `stats`) if `stats` does not have one entry per row of `x`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ndarray::{array, Array2};
    /// let rms = layernorm::RmsNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let x = array![[3.0, 4.0]];
    /// let (mut y, mut stats) = (Array2::zeros((1, 2)), rms.stats_for(&x));
    /// rms.forward_with_stats_into(&x, &mut y, &mut stats)?;
    /// assert!((stats.inv_rms()[0] - 1.0 / 12.5f64.sqrt()).abs() < 1e-12);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_with_stats_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        stats: &mut RmsStats<A::Stat, D::Smaller>,
    ) -> Result<(), NormError> {
        self.core.forward_into_with(x, out, Some(stats.inner_mut()))
    }

    /// Normalizes `x` in place.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = layernorm::RmsNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let mut x = ndarray::array![[1.0, -1.0]];
    /// rms.forward_inplace(&mut x)?;                        // rms = 1: unchanged
    /// assert_eq!(x, ndarray::array![[1.0, -1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_inplace<D: Dimension>(&self, x: &mut ArrayRef<A, D>) -> Result<(), NormError> {
        self.core.forward_inplace(x)
    }

    /// Gradients of a loss with respect to the input and the parameters, given the input, the
    /// statistics forward saved for it and the upstream gradient `dy`.
    ///
    /// # Derivation
    ///
    /// Per row of `n` features, with `r = (mean(x²) + ε)^(-1/2)`, `x̂ᵢ = xᵢ · r` and
    /// `gᵢ = gainᵢ · dyᵢ`:
    ///
    /// ```text
    /// ∂r/∂xⱼ  = −½ (mean(x²) + ε)^(-3/2) · 2xⱼ/n  = −(r/n) · x̂ⱼ · r
    /// ∂x̂ᵢ/∂xⱼ = r δᵢⱼ + xᵢ ∂r/∂xⱼ                  = r (δᵢⱼ − x̂ᵢ x̂ⱼ / n)
    ///
    /// dxⱼ     = Σᵢ gᵢ ∂x̂ᵢ/∂xⱼ = r · (gⱼ − x̂ⱼ · mean(g ⊙ x̂))
    /// dgainⱼ  = Σ_rows dyⱼ · x̂ⱼ          dbiasⱼ = Σ_rows dyⱼ
    /// ```
    ///
    /// LayerNorm's formula without the `mean(g)` term; the tests check it against central
    /// finite differences.
    ///
    /// # Errors
    /// As [`LayerNorm::backward`](crate::LayerNorm::backward).
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f64>::new(2)?.with_eps(0.0)?;
    /// let x = array![[3.0, 4.0]];
    /// let (_y, stats) = rms.forward_with_stats(&x)?;
    /// let grads = rms.backward(&x, &stats, &array![[1.0, 1.0]])?;
    /// // Scaling x does not change y, so dx is orthogonal to x: 3·dx₀ + 4·dx₁ = 0.
    /// assert!((3.0 * grads.input[[0, 0]] + 4.0 * grads.input[[0, 1]]).abs() < 1e-12);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &RmsStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
    ) -> Result<RmsNormGrads<A, D, P>, NormError> {
        self.core.backward_with(x, stats_of(stats), dy, None)
    }

    /// As [`backward`](Self::backward), writing `dx` into the caller's buffer and ADDING the
    /// parameter gradients into caller-owned accumulators (`None` skips one).
    ///
    /// # Errors
    /// As [`LayerNorm::backward_into`](crate::LayerNorm::backward_into).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ndarray::{array, Array1, Array2};
    /// let rms = layernorm::RmsNorm::<f64>::new(2)?;
    /// let x = array![[3.0, 4.0]];
    /// let (_y, stats) = rms.forward_with_stats(&x)?;
    /// let (mut dx, mut dgain) = (Array2::zeros((1, 2)), Array1::zeros(2));
    /// for _step in 0..2 {
    ///     rms.backward_into(&x, &stats, &array![[1.0, 0.0]], &mut dx, Some(&mut dgain), None)?;
    /// }
    /// let once = rms.backward(&x, &stats, &array![[1.0, 0.0]])?;
    /// assert_eq!(dx, once.input);                            // dx is overwritten
    /// assert_eq!(dgain, once.gain.expect("gain") * 2.0);      // gradients are added
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &RmsStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dx: &mut ArrayRef<A, D>,
        gain_grad: Option<&mut ArrayRef1<P>>,
        bias_grad: Option<&mut ArrayRef1<P>>,
    ) -> Result<(), NormError> {
        let into = GradsInto::new(dx, gain_grad, bias_grad);
        self.core
            .backward_into_with(x, stats_of(stats), dy, None, into)
    }

    /// The fused residual step of a pre-norm transformer block: `sum = x + residual` and
    /// `output = RMSNorm(sum)` in one pass over memory, with the statistics for
    /// [`backward_residual`](Self::backward_residual).
    ///
    /// ```text
    /// sum    = x + residual            the residual stream, returned for the next block
    /// output = RMSNorm(sum)
    /// ```
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`NormError::ShapeMismatch`] (argument `residual`) if
    /// `residual` is not shaped like `x`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let step = rms.forward_residual(&array![[1.0, -2.0]], &array![[1.0, 0.0]])?;
    /// assert_eq!(step.sum, array![[2.0, -2.0]]);
    /// assert_eq!(step.output, array![[1.0, -1.0]]);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn forward_residual<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
    ) -> Result<ResidualForward<A, D, RmsStats<A::Stat, D::Smaller>>, NormError> {
        let (output, sum, stats) = self.core.forward_residual(x, residual)?;
        Ok(ResidualForward {
            output,
            sum,
            stats: RmsStats::from_inner(stats),
        })
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
    /// let rms = layernorm::RmsNorm::<f32>::new(2)?.with_eps(0.0)?;
    /// let (x, residual) = (array![[1.0, 1.0]], array![[2.0, -5.0]]);
    /// let (mut out, mut sum) = (Array2::zeros((1, 2)), Array2::zeros((1, 2)));
    /// let mut stats = rms.stats_for(&x);
    /// rms.forward_residual_into(&x, &residual, &mut out, &mut sum, &mut stats)?;
    /// assert_eq!(sum, array![[3.0, -4.0]]);
    /// assert!((out[[0, 0]] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward_residual_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        sum: &mut ArrayRef<A, D>,
        stats: &mut RmsStats<A::Stat, D::Smaller>,
    ) -> Result<(), NormError> {
        self.core
            .forward_residual_into(x, residual, out, sum, stats.inner_mut())
    }

    /// Backward of the fused residual step: given the `sum` and `stats` from
    /// [`forward_residual`](Self::forward_residual), the gradient `dy` of the output and the
    /// gradient `dsum` reaching the sum from the blocks after it, returns in `input` the
    /// gradient of the sum, which is the gradient of both `x` and `residual`:
    ///
    /// ```text
    /// ∂L/∂sum = RMSNorm′(sum)ᵀ dy + dsum = ∂L/∂x = ∂L/∂residual
    /// ```
    ///
    /// plus the gain and bias gradients, as [`backward`](Self::backward).
    ///
    /// # Errors
    /// As [`backward`](Self::backward) with `sum` in place of `x`; [`NormError::ShapeMismatch`]
    /// (argument `dsum`) if `dsum` is not shaped like `sum`.
    ///
    /// ```
    /// use layernorm::RmsNorm;
    /// use ndarray::array;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rms = RmsNorm::<f64>::new(3)?;
    /// let step = rms.forward_residual(&array![[1.0, 2.0, 3.0]], &array![[0.5, 0.0, -0.5]])?;
    /// let dy = array![[1.0, 0.0, 0.0]];
    /// let dsum = array![[0.25, 0.25, 0.25]];
    /// let fused = rms.backward_residual(&step.sum, &step.stats, &dy, &dsum)?;
    /// let plain = rms.backward(&step.sum, &step.stats, &dy)?;
    /// assert_eq!(fused.input, plain.input + &dsum);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backward_residual<D: Dimension>(
        &self,
        sum: &ArrayRef<A, D>,
        stats: &RmsStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: &ArrayRef<A, D>,
    ) -> Result<RmsNormGrads<A, D, P>, NormError> {
        self.core
            .backward_with(sum, stats_of(stats), dy, Some(dsum))
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
    /// let rms = layernorm::RmsNorm::<f64>::new(2)?;
    /// let step = rms.forward_residual(&array![[1.0, 2.0]], &array![[0.5, 0.0]])?;
    /// let (dy, dsum) = (array![[1.0, 0.0]], array![[0.5, 0.5]]);
    /// let mut dinput = Array2::zeros((1, 2));
    /// let mut dgain = Array1::zeros(2);
    /// rms.backward_residual_into(&step.sum, &step.stats, &dy, &dsum, &mut dinput,
    ///     Some(&mut dgain), None)?;
    /// assert_eq!(dinput, rms.backward(&step.sum, &step.stats, &dy)?.input + &dsum);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_residual_into<D: Dimension>(
        &self,
        sum: &ArrayRef<A, D>,
        stats: &RmsStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: &ArrayRef<A, D>,
        dinput: &mut ArrayRef<A, D>,
        gain_grad: Option<&mut ArrayRef1<P>>,
        bias_grad: Option<&mut ArrayRef1<P>>,
    ) -> Result<(), NormError> {
        let into = GradsInto::new(dinput, gain_grad, bias_grad);
        self.core
            .backward_into_with(sum, stats_of(stats), dy, Some(dsum), into)
    }
}

/// Compact: the configuration, not the parameter values.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rms = layernorm::RmsNorm::<f32>::new(512)?;
/// assert_eq!(format!("{rms:?}"), "RmsNorm { dim: 512, eps: 1e-5, gain: yes, bias: no }");
/// # Ok(())
/// # }
/// ```
impl<A: Element, P: Parameter<A>> std::fmt::Debug for RmsNorm<A, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.debug_as("RmsNorm", f)
    }
}
