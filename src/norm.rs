//! What [`LayerNorm`](crate::LayerNorm) and [`RmsNorm`](crate::RmsNorm) share: the
//! parameters and their validation, the checks of every argument's shape, the ndarray layouts,
//! and the jobs handed to the row driver (`rows.rs`). The public types wrap a [`NormCore`],
//! choose its [`Centering`], and carry the documentation.

use crate::element::{Element, Parameter};
use crate::error::NormError;
use crate::kernels::{add_into, BackwardRows, ForwardRows, GradSums, Layer, RowStatsOut, Stores};
use crate::rows::{self, GradTotals, ResidualRows};
use crate::spare::Spare;
use crate::stats::{LayerNormGrads, NormStats};
use ndarray::{Array, Array1, ArrayRef, ArrayRef1, ArrayView1, ArrayViewMut1, Dimension};
use num_traits::{FromPrimitive, One, Zero};
use std::marker::PhantomData;

/// The default `eps`, as in PyTorch, ONNX and candle.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(layernorm::LayerNorm::<f32>::new(8)?.eps(), layernorm::DEFAULT_EPS);
/// # Ok(())
/// # }
/// ```
pub const DEFAULT_EPS: f64 = 1e-5;

/// Whether a layer subtracts each row's mean before scaling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Centering {
    /// LayerNorm: `x − μ`, scaled by `1/√(σ² + ε)`.
    Mean,
    /// RmsNorm: `x` itself, scaled by `1/√(mean(x²) + ε)`.
    None,
}

/// Parameters and kind of a normalization layer; see the public types for what each does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormCore<A: Element, P: Parameter<A>> {
    dim: usize,
    gain: Option<Array1<P>>,
    bias: Option<Array1<P>>,
    eps: f64,
    centering: Centering,
    activations: PhantomData<A>,
}

/// Where a backward call writes: `dx`, and the accumulators the parameter gradients are added
/// into (where the caller wants them).
pub(crate) struct GradsInto<'a, A, D: Dimension, P> {
    dx: &'a mut ArrayRef<A, D>,
    gain: Option<&'a mut ArrayRef1<P>>,
    bias: Option<&'a mut ArrayRef1<P>>,
}

impl<'a, A, D: Dimension, P> GradsInto<'a, A, D, P> {
    pub(crate) fn new(
        dx: &'a mut ArrayRef<A, D>,
        gain: Option<&'a mut ArrayRef1<P>>,
        bias: Option<&'a mut ArrayRef1<P>>,
    ) -> Self {
        GradsInto { dx, gain, bias }
    }
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

/// The shape of a batch's statistics: the input's shape without its last axis (no axis for an
/// input without axes, which the shape checks reject).
fn stats_dim<D: Dimension>(input_dim: &D) -> D::Smaller {
    let leading = &input_dim.slice()[..input_dim.ndim().saturating_sub(1)];
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
    let mut buffer = vec![zero::<A>(); out.len()];
    fill(&mut buffer);
    let view = ndarray::ArrayView::from_shape(out.raw_dim(), &buffer)
        .expect("buffer has exactly out.len() elements");
    out.assign(&view);
}

impl<A: Element, P: Parameter<A>> NormCore<A, P> {
    /// The one constructor: a layer over `dim` features with the given parameters (each, where
    /// present, of length `dim`) and eps, all validated.
    pub(crate) fn new(
        centering: Centering,
        dim: usize,
        gain: Option<Array1<P>>,
        bias: Option<Array1<P>>,
        eps: f64,
    ) -> Result<Self, NormError> {
        let dim = validate_dim(dim)?;
        for (argument, parameter) in [("gain", &gain), ("bias", &bias)] {
            if let Some(parameter) = parameter {
                expect_shape(argument, &[dim], parameter.shape())?;
            }
        }
        Ok(NormCore {
            dim,
            gain,
            bias,
            eps: validate_eps(eps)?,
            centering,
            activations: PhantomData,
        })
    }

    /// Gain 1 where `gain`, bias 0 where `bias`, and the default eps.
    pub(crate) fn with_defaults(
        centering: Centering,
        dim: usize,
        gain: bool,
        bias: bool,
    ) -> Result<Self, NormError> {
        let one = P::from_stat(A::Stat::one());
        let zero = P::from_stat(A::Stat::zero());
        Self::new(
            centering,
            dim,
            gain.then(|| Array1::from_elem(dim, one)),
            bias.then(|| Array1::from_elem(dim, zero)),
            DEFAULT_EPS,
        )
    }

    pub(crate) fn set_eps(&mut self, eps: f64) -> Result<(), NormError> {
        self.eps = validate_eps(eps)?;
        Ok(())
    }

    /// `Name { dim: 768, eps: 1e-5, gain: yes, bias: yes }`, for the public types' `Debug`.
    pub(crate) fn debug_as(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present =
            |parameter: &Option<Array1<P>>| if parameter.is_some() { "yes" } else { "no" };
        f.debug_struct(name)
            .field("dim", &self.dim)
            .field("eps", &self.eps)
            .field("gain", &format_args!("{}", present(&self.gain)))
            .field("bias", &format_args!("{}", present(&self.bias)))
            .finish()
    }

    /// Zeroed statistics shaped for the rows of `x`: its shape without the last axis.
    pub(crate) fn stats_for<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
    ) -> NormStats<A::Stat, D::Smaller> {
        NormStats::zeros(stats_dim(&x.raw_dim()))
    }

    #[cfg(feature = "serde")]
    pub(crate) fn centering(&self) -> Centering {
        self.centering
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    pub(crate) fn eps(&self) -> f64 {
        self.eps
    }

    pub(crate) fn gain(&self) -> Option<ArrayView1<'_, P>> {
        self.gain.as_ref().map(|gain| gain.view())
    }

    pub(crate) fn bias(&self) -> Option<ArrayView1<'_, P>> {
        self.bias.as_ref().map(|bias| bias.view())
    }

    pub(crate) fn gain_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.gain.as_mut().map(|gain| gain.view_mut())
    }

    pub(crate) fn bias_mut(&mut self) -> Option<ArrayViewMut1<'_, P>> {
        self.bias.as_mut().map(|bias| bias.view_mut())
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn parameters_mut(
        &mut self,
    ) -> (Option<ArrayViewMut1<'_, P>>, Option<ArrayViewMut1<'_, P>>) {
        (
            self.gain.as_mut().map(|gain| gain.view_mut()),
            self.bias.as_mut().map(|bias| bias.view_mut()),
        )
    }

    /// The same parameters and eps over data of type `H` (mixed precision).
    pub(crate) fn for_activations<H: Element>(self) -> NormCore<H, P>
    where
        P: Parameter<H>,
    {
        NormCore {
            dim: self.dim,
            gain: self.gain,
            bias: self.bias,
            eps: self.eps,
            centering: self.centering,
            activations: PhantomData,
        }
    }

    pub(crate) fn into_params(self) -> (Option<Array1<P>>, Option<Array1<P>>, f64) {
        (self.gain, self.bias, self.eps)
    }

    /// Runs `work` on the layer as the kernels see it, with the parameters in the kernels'
    /// type (borrowed, or widened for the call into buffers the thread reuses when half data
    /// keeps half parameters).
    fn with_layer<R>(&self, work: impl FnOnce(Layer<'_, A>) -> R) -> R {
        let (mut gain_buffer, mut bias_buffer) = (A::take_buffer(), A::take_buffer());
        let gain = (self.gain.as_ref()).map(|g| P::to_compute(as_slice_1d(g), &mut gain_buffer));
        let bias = (self.bias.as_ref()).map(|b| P::to_compute(as_slice_1d(b), &mut bias_buffer));
        let result = work(Layer {
            dim: self.dim,
            gain,
            bias,
            centered: self.centering == Centering::Mean,
            eps: A::Stat::from_f64(self.eps).expect("a finite eps converts to the statistics type"),
            // The driver (`rows.rs`) chooses both from the size of the whole call.
            stores: Stores::Cached,
            prefetch: false,
        });
        A::give_back(gain_buffer);
        A::give_back(bias_buffer);
        result
    }

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

    pub(crate) fn forward<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
    ) -> Result<Array<A, D>, NormError> {
        let mut out = Array::from_elem(x.raw_dim(), zero::<A>());
        self.forward_into_with(x, &mut out, None)?;
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn forward_with_stats<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
    ) -> Result<(Array<A, D>, NormStats<A::Stat, D::Smaller>), NormError> {
        let mut out = Array::from_elem(x.raw_dim(), zero::<A>());
        let mut stats = self.stats_for(x);
        self.forward_into_with(x, &mut out, Some(&mut stats))?;
        Ok((out, stats))
    }

    /// Every forward form but the in-place one: checks the shapes, then normalizes `x` into
    /// `out` (and the row statistics into `stats` when given).
    pub(crate) fn forward_into_with<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        stats: Option<&mut NormStats<A::Stat, D::Smaller>>,
    ) -> Result<(), NormError> {
        self.check_input("x", x)?;
        expect_shape("out", x.shape(), out.shape())?;
        if let Some(stats) = &stats {
            expect_shape("stats", stats_dim(&x.raw_dim()).slice(), stats.shape())?;
        }
        let x = x.as_standard_layout();
        let x = standard_slice(&x);
        let stats = stats.map(|stats| {
            let (mean, inv_std) = stats.as_mut_slices();
            RowStatsOut { mean, inv_std }
        });
        write_standard(out, |out| {
            self.with_layer(|layer| {
                rows::forward(ForwardRows {
                    layer,
                    x: Some(x),
                    out,
                    stats,
                })
            })
        });
        Ok(())
    }

    pub(crate) fn forward_inplace<D: Dimension>(
        &self,
        x: &mut ArrayRef<A, D>,
    ) -> Result<(), NormError> {
        self.check_input("x", x)?;
        self.with_layer(|layer| {
            if let Some(data) = x.as_slice_mut() {
                rows::forward(ForwardRows {
                    layer,
                    x: None,
                    out: data,
                    stats: None,
                });
            } else {
                let copy = x.as_standard_layout().into_owned();
                let source = standard_slice(&copy);
                write_standard(x, |out| {
                    rows::forward(ForwardRows {
                        layer,
                        x: Some(source),
                        out,
                        stats: None,
                    })
                });
            }
        });
        Ok(())
    }

    /// `sum = x + residual`, then `out` normalized from `sum`, with statistics: the fused
    /// residual form of pre-norm transformer blocks.
    pub(crate) fn forward_residual_into<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
        out: &mut ArrayRef<A, D>,
        sum: &mut ArrayRef<A, D>,
        stats: &mut NormStats<A::Stat, D::Smaller>,
    ) -> Result<(), NormError> {
        self.check_input("x", x)?;
        expect_shape("residual", x.shape(), residual.shape())?;
        expect_shape("out", x.shape(), out.shape())?;
        expect_shape("sum", x.shape(), sum.shape())?;
        expect_shape("stats", stats_dim(&x.raw_dim()).slice(), stats.shape())?;
        let x = x.as_standard_layout();
        let residual = residual.as_standard_layout();
        let (x, residual) = (standard_slice(&x), standard_slice(&residual));
        let (mean, inv_std) = stats.as_mut_slices();
        self.with_layer(|layer| {
            write_standard(out, |out| {
                write_standard(sum, |sum| {
                    rows::forward_residual(ResidualRows {
                        norm: ForwardRows {
                            layer,
                            x: Some(x),
                            out,
                            stats: Some(RowStatsOut { mean, inv_std }),
                        },
                        residual,
                        sum,
                    })
                })
            })
        });
        Ok(())
    }

    /// The allocating form of `forward_residual_into`: `(out, sum, stats)`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn forward_residual<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        residual: &ArrayRef<A, D>,
    ) -> Result<(Array<A, D>, Array<A, D>, NormStats<A::Stat, D::Smaller>), NormError> {
        let mut out = Array::from_elem(x.raw_dim(), zero::<A>());
        let mut sum = Array::from_elem(x.raw_dim(), zero::<A>());
        let mut stats = self.stats_for(x);
        self.forward_residual_into(x, residual, &mut out, &mut sum, &mut stats)?;
        Ok((out, sum, stats))
    }

    /// Backward, with `dsum` (the gradient reaching the normalized input by another path, for
    /// the fused residual form) added to `dx` when given.
    pub(crate) fn backward_with<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: Option<&ArrayRef<A, D>>,
    ) -> Result<LayerNormGrads<A, D, P>, NormError> {
        let parameter_zero = P::from_stat(A::Stat::zero());
        let zeros = |present: bool| present.then(|| Array1::from_elem(self.dim, parameter_zero));
        let mut gain = zeros(self.gain.is_some());
        let mut bias = zeros(self.bias.is_some());
        let mut input = Array::from_elem(x.raw_dim(), zero::<A>());
        let into = GradsInto::new(&mut input, gain.as_deref_mut(), bias.as_deref_mut());
        self.backward_into_with(x, stats, dy, dsum, into)?;
        Ok(LayerNormGrads { input, gain, bias })
    }

    /// `backward_into`, with `dsum` added to `dx` when given (see `backward_with`).
    pub(crate) fn backward_into_with<D: Dimension>(
        &self,
        x: &ArrayRef<A, D>,
        stats: &NormStats<A::Stat, D::Smaller>,
        dy: &ArrayRef<A, D>,
        dsum: Option<&ArrayRef<A, D>>,
        into: GradsInto<'_, A, D, P>,
    ) -> Result<(), NormError> {
        self.check_input("x", x)?;
        expect_shape("dy", x.shape(), dy.shape())?;
        expect_shape("stats", stats_dim(&x.raw_dim()).slice(), stats.shape())?;
        expect_shape("dx", x.shape(), into.dx.shape())?;
        if let Some(dsum) = dsum {
            expect_shape("dsum", x.shape(), dsum.shape())?;
        }
        for (argument, parameter, grad) in [
            ("gain_grad", self.gain.is_some(), into.gain.as_deref()),
            ("bias_grad", self.bias.is_some(), into.bias.as_deref()),
        ] {
            if let Some(grad) = grad {
                if !parameter {
                    let parameter = argument.trim_end_matches("_grad");
                    return Err(NormError::MissingParameter { parameter });
                }
                expect_shape(argument, &[self.dim], grad.shape())?;
            }
        }

        let GradsInto {
            dx,
            gain: gain_grad,
            bias: bias_grad,
        } = into;
        let mut totals = Accumulators::<A, P> {
            gain: gain_grad.map(Accumulator::new),
            bias: bias_grad.map(Accumulator::new),
        };
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let dsum = dsum.map(|dsum| dsum.as_standard_layout());
        let (means, inv_stds) = stats.as_slices();
        write_standard(dx, |dx| {
            self.with_layer(|layer| {
                let inputs = BackwardRows {
                    layer,
                    x: standard_slice(&x),
                    dy: standard_slice(&dy),
                    means,
                    inv_stds,
                };
                let dsum = dsum.as_ref().map(|dsum| standard_slice(dsum));
                rows::backward(inputs, dx, dsum, &mut totals)
            })
        });
        Ok(())
    }
}

/// The caller's parameter-gradient accumulators during a backward call, as `rows::backward`
/// adds to them.
struct Accumulators<'a, A: Element, P> {
    gain: Option<Accumulator<'a, A, P>>,
    bias: Option<Accumulator<'a, A, P>>,
}

/// One accumulator, in the parameter type, and its total in the statistics type while a call
/// of several blocks runs. A call of one block (up to `GRAD_BLOCK_ROWS` rows: a training
/// step's batch) adds it in one pass, widening, adding and rounding each value in turn; a
/// longer call widens before its first block and rounds after its last: the same operations
/// on every value either way.
struct Accumulator<'a, A: Element, P> {
    target: &'a mut ArrayRef1<P>,
    total: Option<Spare<A::Stat>>,
}

impl<'a, A: Element, P: Parameter<A>> Accumulator<'a, A, P> {
    fn new(target: &'a mut ArrayRef1<P>) -> Self {
        Accumulator {
            target,
            total: None,
        }
    }

    fn add_block(&mut self, block: &[A::Stat], last: bool) {
        match (self.total.as_deref_mut(), last) {
            (None, true) => add_rounded::<A, P>(self.target, block),
            (None, false) => add_into(self.widened(), block),
            (Some(total), last) => {
                add_into(total, block);
                if last {
                    self.finish();
                }
            }
        }
    }

    fn widened(&mut self) -> &mut [A::Stat] {
        let target = &*self.target;
        self.total.get_or_insert_with(|| widen::<A, P>(target))
    }

    fn finish(&mut self) {
        let Some(total) = self.total.take() else {
            return;
        };
        match self.target.as_slice_mut() {
            Some(values) => P::narrow_all(&total, values),
            None => (self.target.iter_mut().zip(total.iter()))
                .for_each(|(value, &total)| *value = P::from_stat(total)),
        }
    }
}

impl<A: Element, P: Parameter<A>> GradTotals<A::Stat> for Accumulators<'_, A, P> {
    fn wanted(&self) -> [bool; 2] {
        [self.gain.is_some(), self.bias.is_some()]
    }

    fn add_block(&mut self, block: &GradSums<'_, A::Stat>, last: bool) {
        for (accumulator, sums) in [
            (self.gain.as_mut(), block.gain.as_deref()),
            (self.bias.as_mut(), block.bias.as_deref()),
        ] {
            if let (Some(accumulator), Some(sums)) = (accumulator, sums) {
                accumulator.add_block(sums, last);
            }
        }
    }

    #[cfg(feature = "rayon")]
    fn widened(&mut self) -> GradSums<'_, A::Stat> {
        GradSums {
            gain: self.gain.as_mut().map(Accumulator::widened),
            bias: self.bias.as_mut().map(Accumulator::widened),
        }
    }

    #[cfg(feature = "rayon")]
    fn finish(&mut self) {
        self.gain
            .iter_mut()
            .chain(&mut self.bias)
            .for_each(Accumulator::finish);
    }
}

/// The element type's zero.
fn zero<A: Element>() -> A {
    A::from_stat(A::Stat::zero())
}

/// The accumulator's values in the statistics type, in a buffer the thread keeps.
fn widen<A: Element, P: Parameter<A>>(values: &ArrayRef1<P>) -> Spare<A::Stat> {
    let mut wide = Spare::with_len(values.len());
    match values.as_slice() {
        Some(slice) => P::widen_all(slice, &mut wide),
        None => (wide.iter_mut().zip(values)).for_each(|(wide, &value)| *wide = value.to_stat()),
    }
    wide
}

/// `target += sums`, each value widened to the statistics type, added to and rounded back.
fn add_rounded<A: Element, P: Parameter<A>>(target: &mut ArrayRef1<P>, sums: &[A::Stat]) {
    match target.as_slice_mut() {
        Some(values) => P::add_all(values, sums),
        None => (target.iter_mut().zip(sums))
            .for_each(|(value, &sum)| *value = P::from_stat(value.to_stat() + sum)),
    }
}

/// A parameter vector as a slice; parameters are built by this crate in standard layout.
fn as_slice_1d<A>(values: &Array1<A>) -> &[A] {
    values
        .as_slice()
        .expect("parameters are owned, standard-layout arrays")
}

/// The elements of an array that `as_standard_layout` returned, in order.
fn standard_slice<A, D: Dimension>(
    array: &ndarray::ArrayBase<impl ndarray::Data<Elem = A>, D>,
) -> &[A] {
    array
        .as_slice()
        .expect("as_standard_layout returns a standard-layout array")
}
