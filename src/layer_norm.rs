//! `LayerNorm`: parameters, validation, and the orchestration of forward and backward.

use crate::element::Element;
use crate::error::NormError;
use crate::kernels::{Params, BackwardRows, RowStatsOut};
use crate::rows::{self, GradTotals};
use crate::stats::NormStats;
use ndarray::{Array, Array1, ArrayRef, ArrayRef1, ArrayView1, ArrayViewMut1, Dimension};
use num_traits::{FromPrimitive, One, Zero};

/// The default `eps`, as in PyTorch, ONNX and candle.
pub const DEFAULT_EPS: f64 = 1e-5;

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
/// # Non-finite values
///
/// NaN or ±Inf in a row make that row's outputs, statistics and input gradient NaN; other rows
/// are unaffected. Parameter gradients are sums over rows, so they are NaN where such a row
/// contributes. With `eps = 0`, a constant row has `σ² = 0` and `r = +Inf`, and its outputs
/// and input gradient are NaN (`0 · Inf`): use `eps > 0` (the default) for a finite answer
/// on constant rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm<A: Element> {
    dim: usize,
    gain: Option<Array1<A>>,
    bias: Option<Array1<A>>,
    eps: f64,
}

/// Gradients returned by [`LayerNorm::backward`].
///
/// `gain` and `bias` are `None` where the layer has no such parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGrads<A, D: Dimension> {
    /// `∂L/∂x`, shaped like the input.
    pub input: Array<A, D>,
    /// `∂L/∂gain`, one value per feature: `Σ_rows dyᵢ · x̂ᵢ`.
    #[doc(alias = "weight")]
    #[doc(alias = "gamma")]
    pub gain: Option<Array1<A>>,
    /// `∂L/∂bias`, one value per feature: `Σ_rows dyᵢ`.
    #[doc(alias = "beta")]
    pub bias: Option<Array1<A>>,
}

fn validate_eps(eps: f64) -> Result<f64, NormError> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(eps)
    } else {
        Err(NormError::InvalidEps { eps })
    }
}

fn validate_dim(dim: usize) -> Result<usize, NormError> {
    if dim == 0 {
        Err(NormError::ZeroDim)
    } else {
        Ok(dim)
    }
}

/// `Err(ShapeMismatch)` unless `found == expected`.
fn expect_shape(
    argument: &'static str,
    expected: &[usize],
    found: &[usize],
) -> Result<(), NormError> {
    if expected == found {
        Ok(())
    } else {
        Err(NormError::ShapeMismatch {
            argument,
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

/// The shape of a batch's statistics: the input's shape without its last axis.
/// Callers have checked that the input has at least one axis.
fn stats_dim<D: Dimension>(input_dim: &D) -> D::Smaller {
    let leading = &input_dim.slice()[..input_dim.ndim() - 1];
    let mut dim = D::Smaller::zeros(leading.len());
    dim.slice_mut().copy_from_slice(leading);
    dim
}

/// Runs `fill` on a standard-layout slice of `out`: `out`'s own memory when it is in standard
/// layout, otherwise a temporary buffer copied into `out` afterwards.
fn write_standard<A: Element, D: Dimension>(out: &mut ArrayRef<A, D>, fill: impl FnOnce(&mut [A])) {
    if let Some(slice) = out.as_slice_mut() {
        fill(slice);
        return;
    }
    let mut buffer = vec![A::from_stat(A::Stat::zero()); out.len()];
    fill(&mut buffer);
    let view = ndarray::ArrayView::from_shape(out.raw_dim(), &buffer)
        .expect("buffer has exactly out.len() elements");
    out.assign(&view);
}

/// A standard-layout array of `dim` whose elements `fill` writes.
fn new_standard<A: Element, D: Dimension>(dim: D, fill: impl FnOnce(&mut [A])) -> Array<A, D> {
    let mut buffer = vec![A::from_stat(A::Stat::zero()); dim.size()];
    fill(&mut buffer);
    Array::from_shape_vec(dim, buffer).expect("buffer has exactly dim.size() elements")
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
        let dim = validate_dim(dim)?;
        Ok(LayerNorm {
            dim,
            gain: Some(Array1::from_elem(dim, A::from_stat(A::Stat::one()))),
            bias: Some(Array1::from_elem(dim, A::from_stat(A::Stat::zero()))),
            eps: DEFAULT_EPS,
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
        let mut layer = Self::new(dim)?;
        layer.bias = None;
        Ok(layer)
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
        let dim = validate_dim(dim)?;
        Ok(LayerNorm {
            dim,
            gain: None,
            bias: None,
            eps: DEFAULT_EPS,
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
        let dim = validate_dim(gain.len())?;
        expect_shape("bias", &[dim], bias.shape())?;
        Ok(LayerNorm {
            dim,
            gain: Some(gain),
            bias: Some(bias),
            eps: validate_eps(eps)?,
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
        let dim = validate_dim(gain.len())?;
        Ok(LayerNorm {
            dim,
            gain: Some(gain),
            bias: None,
            eps: validate_eps(eps)?,
        })
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
        self.eps = validate_eps(eps)?;
        Ok(())
    }

    /// Number of features normalized: the required length of the input's last axis.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The ε added to the variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The per-feature gain, `None` for a layer without one.
    #[doc(alias = "weight")]
    #[doc(alias = "gamma")]
    pub fn gain(&self) -> Option<ArrayView1<'_, A>> {
        self.gain.as_ref().map(|gain| gain.view())
    }

    /// The per-feature bias, `None` for a layer without one.
    #[doc(alias = "beta")]
    pub fn bias(&self) -> Option<ArrayView1<'_, A>> {
        self.bias.as_ref().map(|bias| bias.view())
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
    pub fn gain_mut(&mut self) -> Option<ArrayViewMut1<'_, A>> {
        self.gain.as_mut().map(|gain| gain.view_mut())
    }

    /// Mutable access to the bias, for an optimizer step. Its length cannot change.
    pub fn bias_mut(&mut self) -> Option<ArrayViewMut1<'_, A>> {
        self.bias.as_mut().map(|bias| bias.view_mut())
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
    ) -> (Option<ArrayViewMut1<'_, A>>, Option<ArrayViewMut1<'_, A>>) {
        (
            self.gain.as_mut().map(|gain| gain.view_mut()),
            self.bias.as_mut().map(|bias| bias.view_mut()),
        )
    }

    /// Consumes the layer, returning `(gain, bias, eps)`.
    pub fn into_params(self) -> (Option<Array1<A>>, Option<Array1<A>>, f64) {
        (self.gain, self.bias, self.eps)
    }

    fn params(&self) -> Params<'_, A> {
        Params {
            gain: self.gain.as_ref().map(as_slice_1d),
            bias: self.bias.as_ref().map(as_slice_1d),
            centered: true,
        }
    }

    fn eps_stat(&self) -> A::Stat {
        A::Stat::from_f64(self.eps).expect("a finite eps converts to the statistics type")
    }

    /// Checks that `x` has a last axis of length `dim`.
    fn check_input<D: Dimension>(
        &self,
        argument: &'static str,
        x: &ArrayRef<A, D>,
    ) -> Result<(), NormError> {
        let shape = x.shape();
        match shape.last() {
            None => Err(NormError::NoFeatureAxis { argument }),
            Some(&last) if last == self.dim => Ok(()),
            Some(_) => {
                let mut expected = shape.to_vec();
                *expected.last_mut().expect("shape is not empty") = self.dim;
                expect_shape(argument, &expected, shape)
            }
        }
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
        self.check_input("x", x)?;
        let x = x.as_standard_layout();
        let x = as_slice_std(&x);
        Ok(new_standard(x.dim.clone(), |out| {
            rows::forward(
                Some(x.data),
                out,
                self.dim,
                self.params(),
                self.eps_stat(),
                None,
            )
        }))
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
        self.check_input("x", x)?;
        let stats_shape = stats_dim(&x.raw_dim());
        let x = x.as_standard_layout();
        let x = as_slice_std(&x);
        let mut mean = vec![A::Stat::zero(); stats_shape.size()];
        let mut inv_std = vec![A::Stat::zero(); stats_shape.size()];
        let y = new_standard(x.dim.clone(), |out| {
            rows::forward(
                Some(x.data),
                out,
                self.dim,
                self.params(),
                self.eps_stat(),
                Some(RowStatsOut {
                    mean: &mut mean,
                    inv_std: &mut inv_std,
                }),
            )
        });
        let mean = Array::from_shape_vec(stats_shape.clone(), mean).expect("one mean per row");
        let inv_std = Array::from_shape_vec(stats_shape, inv_std).expect("one inv_std per row");
        Ok((y, NormStats::from_parts(mean, inv_std)))
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
        self.check_input("x", x)?;
        expect_shape("out", x.shape(), out.shape())?;
        let x = x.as_standard_layout();
        let x = as_slice_std(&x);
        write_standard(out, |out| {
            rows::forward(
                Some(x.data),
                out,
                self.dim,
                self.params(),
                self.eps_stat(),
                None,
            )
        });
        Ok(())
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
        self.check_input("x", x)?;
        expect_shape("out", x.shape(), out.shape())?;
        expect_shape("stats", stats_dim(&x.raw_dim()).slice(), stats.shape())?;
        let x = x.as_standard_layout();
        let x = as_slice_std(&x);
        let (mean, inv_std) = stats.as_mut_slices();
        write_standard(out, |out| {
            rows::forward(
                Some(x.data),
                out,
                self.dim,
                self.params(),
                self.eps_stat(),
                Some(RowStatsOut { mean, inv_std }),
            )
        });
        Ok(())
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
        self.check_input("x", x)?;
        if let Some(data) = x.as_slice_mut() {
            rows::forward(None, data, self.dim, self.params(), self.eps_stat(), None);
        } else {
            let copy = x.as_standard_layout().into_owned();
            let source = as_slice_std(&copy);
            write_standard(x, |out| {
                rows::forward(
                    Some(source.data),
                    out,
                    self.dim,
                    self.params(),
                    self.eps_stat(),
                    None,
                )
            });
        }
        Ok(())
    }

    /// Checks the shared arguments of the backward methods.
    fn check_backward<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
    ) -> Result<(), NormError> {
        self.check_input("x", x)?;
        expect_shape("dy", x.shape(), dy.shape())?;
        expect_shape("stats", stats_dim(&x.raw_dim()).slice(), stats.shape())
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
    ) -> Result<LayerNormGrads<A, D>, NormError> {
        self.check_backward(x, stats, dy)?;
        let zero = A::from_stat(A::Stat::zero());
        let mut gain = self
            .gain
            .as_ref()
            .map(|_| Array1::from_elem(self.dim, zero));
        let mut bias = self
            .bias
            .as_ref()
            .map(|_| Array1::from_elem(self.dim, zero));
        let mut input = Array::from_elem(x.raw_dim(), zero);
        self.backward_into(
            x,
            stats,
            dy,
            &mut input,
            gain.as_deref_mut(),
            bias.as_deref_mut(),
        )?;
        Ok(LayerNormGrads { input, gain, bias })
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
        gain_grad: Option<&mut ArrayRef1<A>>,
        bias_grad: Option<&mut ArrayRef1<A>>,
    ) -> Result<(), NormError> {
        self.check_backward(x, stats, dy)?;
        expect_shape("dx", x.shape(), dx.shape())?;
        for (argument, parameter, grad) in [
            ("gain_grad", self.gain.is_some(), gain_grad.as_deref()),
            ("bias_grad", self.bias.is_some(), bias_grad.as_deref()),
        ] {
            if let Some(grad) = grad {
                if !parameter {
                    let parameter = argument.trim_end_matches("_grad");
                    return Err(NormError::MissingParameter { parameter });
                }
                expect_shape(argument, &[self.dim], grad.shape())?;
            }
        }

        let mut gain_total: Option<Vec<A::Stat>> = gain_grad.as_deref().map(widen);
        let mut bias_total: Option<Vec<A::Stat>> = bias_grad.as_deref().map(widen);
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let (means, inv_stds) = stats.as_slices();
        let inputs = BackwardRows {
            x: as_slice_std(&x).data,
            dy: as_slice_std(&dy).data,
            means,
            inv_stds,
            gain: self.params().gain,
            centered: true,
            eps: self.eps_stat(),
            dim: self.dim,
        };
        write_standard(dx, |dx| {
            rows::backward(
                inputs,
                dx,
                GradTotals {
                    gain: gain_total.as_deref_mut(),
                    bias: bias_total.as_deref_mut(),
                },
            )
        });
        narrow_into(gain_grad, gain_total.as_deref());
        narrow_into(bias_grad, bias_total.as_deref());
        Ok(())
    }
}

/// The accumulator's values in the statistics type.
fn widen<A: Element>(values: &ArrayRef1<A>) -> Vec<A::Stat> {
    match values.as_slice() {
        Some(slice) => slice.iter().map(|&value| value.to_stat()).collect(),
        None => values.iter().map(|&value| value.to_stat()).collect(),
    }
}

/// Writes the totals back into the caller's accumulator, rounded to its type.
fn narrow_into<A: Element>(target: Option<&mut ArrayRef1<A>>, totals: Option<&[A::Stat]>) {
    let (Some(target), Some(totals)) = (target, totals) else {
        return;
    };
    let narrow = |(slot, &total): (&mut A, &A::Stat)| *slot = A::from_stat(total);
    match target.as_slice_mut() {
        Some(slice) => slice.iter_mut().zip(totals).for_each(narrow),
        None => target.iter_mut().zip(totals).for_each(narrow),
    }
}

/// A parameter vector as a slice; parameters are built by this crate in standard layout.
fn as_slice_1d<A>(values: &Array1<A>) -> &[A] {
    values
        .as_slice()
        .expect("parameters are owned, standard-layout arrays")
}

/// A standard-layout input's data and shape.
struct StandardInput<'a, A, D> {
    data: &'a [A],
    dim: D,
}

fn as_slice_std<'a, A, D: Dimension>(
    array: &'a ndarray::ArrayBase<impl ndarray::Data<Elem = A>, D>,
) -> StandardInput<'a, A, D> {
    StandardInput {
        data: array
            .as_slice()
            .expect("as_standard_layout returns a standard-layout array"),
        dim: array.raw_dim(),
    }
}
