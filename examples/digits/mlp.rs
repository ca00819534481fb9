//! The network: 64 → H → H → 10, ReLU, softmax cross-entropy, in three variants that differ
//! only in what follows each hidden matrix product:
//!
//! ```text
//! none         hₗ = relu(hₗ₋₁ · Wₗ + bₗ)
//! batch norm   hₗ = relu(BN(hₗ₋₁ · Wₗ))       statistics over the batch (test: running averages)
//! layer norm   hₗ = relu(LN(hₗ₋₁ · Wₗ))       statistics over each sample's H summed inputs
//! ```
//!
//! Forward and backward are written by hand; the layer-normalized variant calls this crate's
//! `forward_with_stats_into` and `backward_into` on buffers kept across steps.

use crate::batch_norm::{BatchNorm, BatchNormCache};
use crate::data::{CLASSES, PIXELS};
use layernorm::{LayerNorm, NormStats};
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut, Axis, Ix1, IxDyn, Zip};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The float types the network runs in: f32 for training, f64 for the gradient checks.
pub trait Real:
    layernorm::Element
    + num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
{
}

impl<T> Real for T where
    T: layernorm::Element
        + num_traits::Float
        + num_traits::FromPrimitive
        + ndarray::LinalgScalar
        + ndarray::ScalarOperand
{
}

/// What follows each hidden matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    None,
    BatchNorm,
    LayerNorm,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::None, Variant::BatchNorm, Variant::LayerNorm];

    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "no normalization",
            Variant::BatchNorm => "batch norm",
            Variant::LayerNorm => "layer norm",
        }
    }
}

/// The normalization of one hidden layer, with its parameters.
enum Norm<A: Real> {
    /// A bias only.
    Bias(Array1<A>),
    Batch(BatchNorm<A>),
    Layer(Box<LayerNormState<A>>),
}

/// A layer norm and the buffers its forward and backward reuse from step to step.
struct LayerNormState<A: Real> {
    layer: LayerNorm<A>,
    output: Array2<A>,
    stats: NormStats<A::Stat, Ix1>,
    input_grad: Array2<A>,
}

struct Hidden<A: Real> {
    weight: Array2<A>,
    norm: Norm<A>,
}

pub struct Mlp<A: Real> {
    hidden: [Hidden<A>; 2],
    out_weight: Array2<A>,
    out_bias: Array1<A>,
}

/// What the training forward pass keeps for the backward pass, per hidden layer.
struct HiddenCache<A> {
    input: Array2<A>,
    summed: Array2<A>,
    /// After normalization, before the ReLU.
    normalized: Array2<A>,
    batch_norm: Option<BatchNormCache<A>>,
}

/// Gradients of every parameter, in the order of [`Mlp::parameters_mut`].
pub struct Grads<A> {
    pub values: Vec<ndarray::ArrayD<A>>,
}

impl<A: Real> Mlp<A> {
    /// He-initialized weights (N(0, 2/fan_in), output layer N(0, 1/fan_in)) drawn from `rng`
    /// in a fixed order, so that every variant built from the same seed starts from the same
    /// weights; gains 1, biases 0.
    pub fn new(variant: Variant, hidden: usize, rng: &mut impl Rng) -> Self {
        let mut weight = |fan_in: usize, fan_out: usize, gain: f64| {
            let normal = Normal::new(0.0, (gain / fan_in as f64).sqrt()).expect("valid");
            Array2::from_shape_simple_fn((fan_in, fan_out), || {
                A::from_f64(normal.sample(rng)).expect("representable")
            })
        };
        let weights = [weight(PIXELS, hidden, 2.0), weight(hidden, hidden, 2.0)];
        let out_weight = weight(hidden, CLASSES, 1.0);
        let hidden_layers = weights.map(|weight| Hidden {
            norm: match variant {
                Variant::None => Norm::Bias(Array1::zeros(hidden)),
                Variant::BatchNorm => Norm::Batch(BatchNorm::new(hidden)),
                Variant::LayerNorm => Norm::Layer(Box::new(LayerNormState {
                    layer: LayerNorm::new(hidden).expect("hidden > 0"),
                    output: Array2::zeros((0, hidden)),
                    stats: NormStats::zeros(Ix1(0)),
                    input_grad: Array2::zeros((0, hidden)),
                })),
            },
            weight,
        });
        Mlp {
            hidden: hidden_layers,
            out_weight,
            out_bias: Array1::zeros(CLASSES),
        }
    }

    /// Every parameter, in a fixed order: per hidden layer its weight then its normalization's
    /// parameters (bias; or gain and bias), then the output weight and bias.
    pub fn parameters_mut(&mut self) -> Vec<ArrayViewMut<'_, A, IxDyn>> {
        let mut parameters = Vec::new();
        for layer in &mut self.hidden {
            parameters.push(layer.weight.view_mut().into_dyn());
            match &mut layer.norm {
                Norm::Bias(bias) => parameters.push(bias.view_mut().into_dyn()),
                Norm::Batch(norm) => {
                    parameters.push(norm.gain.view_mut().into_dyn());
                    parameters.push(norm.bias.view_mut().into_dyn());
                }
                Norm::Layer(state) => {
                    let (gain, bias) = state.layer.parameters_mut();
                    parameters.extend(gain.map(|g| g.into_dyn()));
                    parameters.extend(bias.map(|b| b.into_dyn()));
                }
            }
        }
        parameters.push(self.out_weight.view_mut().into_dyn());
        parameters.push(self.out_bias.view_mut().into_dyn());
        parameters
    }

    /// Class scores for `images` at test time (batch norm uses its running averages).
    pub fn predict(&self, images: ArrayView2<'_, A>) -> Array2<A> {
        let mut h = images.to_owned();
        for layer in &self.hidden {
            let summed = h.dot(&layer.weight);
            let normalized = match &layer.norm {
                Norm::Bias(bias) => summed + bias,
                Norm::Batch(norm) => norm.forward_eval(summed.view()),
                Norm::Layer(state) => state.layer.forward(&summed).expect("shapes match"),
            };
            h = normalized.mapv(relu);
        }
        h.dot(&self.out_weight) + &self.out_bias
    }

    /// The fraction of `images` whose highest score is not their label.
    pub fn error_rate(&self, images: ArrayView2<'_, A>, labels: &[usize]) -> f64 {
        let scores = self.predict(images);
        let wrong = scores
            .outer_iter()
            .zip(labels)
            .filter(|(row, &label)| argmax(row.iter().copied()) != label)
            .count();
        wrong as f64 / labels.len() as f64
    }

    /// Mean cross-entropy of the batch in training mode, and the gradient of every parameter
    /// (batch norm's running averages are updated as a side effect).
    pub fn loss_and_gradients(
        &mut self,
        images: ArrayView2<'_, A>,
        labels: &[usize],
    ) -> (A, Grads<A>) {
        let mut caches = Vec::with_capacity(2);
        let mut h = images.to_owned();
        for layer in &mut self.hidden {
            let summed = h.dot(&layer.weight);
            let (normalized, batch_norm) = match &mut layer.norm {
                Norm::Bias(bias) => (&summed + &*bias, None),
                Norm::Batch(norm) => {
                    let (y, cache) = norm.forward_train(summed.view());
                    (y, Some(cache))
                }
                Norm::Layer(state) => {
                    state.resize(summed.nrows());
                    let LayerNormState {
                        layer,
                        output,
                        stats,
                        ..
                    } = &mut **state;
                    layer
                        .forward_with_stats_into(&summed, output, stats)
                        .expect("shapes match");
                    (output.clone(), None)
                }
            };
            let next = normalized.mapv(relu);
            caches.push(HiddenCache {
                input: std::mem::replace(&mut h, next),
                summed,
                normalized,
                batch_norm,
            });
        }
        let scores = h.dot(&self.out_weight) + &self.out_bias;
        let (loss, dscores) = softmax_cross_entropy(&scores, labels);

        // Gradients in reverse order of the parameters, reversed at the end.
        let mut reversed: Vec<ndarray::ArrayD<A>> = Vec::new();
        reversed.push(dscores.sum_axis(Axis(0)).into_dyn());
        reversed.push(h.t().dot(&dscores).into_dyn());
        let mut dh = dscores.dot(&self.out_weight.t());
        for (layer, cache) in self.hidden.iter_mut().zip(caches).rev() {
            let mut dnormalized = dh;
            Zip::from(&mut dnormalized)
                .and(&cache.normalized)
                .for_each(|d, &z| {
                    if z <= A::zero() {
                        *d = A::zero();
                    }
                });
            let dsummed = match &mut layer.norm {
                Norm::Bias(_) => {
                    reversed.push(dnormalized.sum_axis(Axis(0)).into_dyn());
                    dnormalized
                }
                Norm::Batch(norm) => {
                    let cache = cache.batch_norm.as_ref().expect("kept in training");
                    let (dx, dgain, dbias) = norm.backward(cache, dnormalized.view());
                    reversed.push(dbias.into_dyn());
                    reversed.push(dgain.into_dyn());
                    dx
                }
                Norm::Layer(state) => {
                    let dim = state.layer.dim();
                    let (mut dgain, mut dbias) = (Array1::zeros(dim), Array1::zeros(dim));
                    let LayerNormState {
                        layer,
                        stats,
                        input_grad,
                        ..
                    } = &mut **state;
                    layer
                        .backward_into(
                            &cache.summed,
                            stats,
                            &dnormalized,
                            input_grad,
                            Some(&mut dgain),
                            Some(&mut dbias),
                        )
                        .expect("shapes match");
                    reversed.push(dbias.into_dyn());
                    reversed.push(dgain.into_dyn());
                    input_grad.clone()
                }
            };
            reversed.push(cache.input.t().dot(&dsummed).into_dyn());
            dh = dsummed.dot(&layer.weight.t());
        }
        reversed.reverse();
        (loss, Grads { values: reversed })
    }

    /// One step of plain stochastic gradient descent.
    pub fn sgd_step(&mut self, grads: &Grads<A>, learning_rate: A) {
        for (mut parameter, grad) in self.parameters_mut().into_iter().zip(&grads.values) {
            parameter.scaled_add(-learning_rate, grad);
        }
    }
}

impl<A: Real> LayerNormState<A> {
    /// Buffers for a batch of `rows` (reallocated only when the batch size changes).
    fn resize(&mut self, rows: usize) {
        if self.output.nrows() != rows {
            let dim = self.layer.dim();
            self.output = Array2::zeros((rows, dim));
            self.input_grad = Array2::zeros((rows, dim));
            self.stats = NormStats::zeros(Ix1(rows));
        }
    }
}

fn relu<A: Real>(value: A) -> A {
    value.max(A::zero())
}

fn argmax<A: Real>(values: impl Iterator<Item = A>) -> usize {
    values
        .enumerate()
        .fold((0, A::neg_infinity()), |best, (i, v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Mean cross-entropy of softmax(scores) against `labels`, and its gradient in the scores.
pub fn softmax_cross_entropy<A: Real>(scores: &Array2<A>, labels: &[usize]) -> (A, Array2<A>) {
    let rows = A::from_usize(labels.len()).expect("representable");
    let mut grad = scores.clone();
    let mut loss = A::zero();
    for (mut row, &label) in grad.outer_iter_mut().zip(labels) {
        let max = row.fold(A::neg_infinity(), |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let total = row.sum();
        loss = loss - (row[label] / total).ln();
        row.mapv_inplace(|v| v / total / rows);
        row[label] = row[label] - A::one() / rows;
    }
    (loss / rows, grad)
}
