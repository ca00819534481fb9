//! A tanh recurrent network with hand-written backpropagation through time, with or without
//! layer normalization of the summed inputs at every time step (Ba, Kiros & Hinton, 2016, §3.1):
//!
//! ```text
//! aₜ = W·hₜ₋₁ + U·xₜ                         summed inputs
//! hₜ = tanh(LN(aₜ))    = tanh(gain ⊙ (aₜ − μₜ)/σₜ + bias)     layer-normalized model
//! hₜ = tanh(aₜ + bias)                                         baseline
//! ŷ  = w_out · h_T + b_out,   L = mean over the batch of (ŷ − y)²
//! ```
//!
//! The same `LayerNorm` is used at every step, so its gain and bias gradients accumulate over
//! time through `backward_into`.

use layernorm::{LayerNorm, NormStats};
use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Ix1};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// How the summed inputs are turned into the pre-activation.
#[derive(Clone, Debug)]
pub enum Norm {
    /// `LN(a)`, with the layer's own gain and bias.
    Layer(LayerNorm<f64>),
    /// `a + bias`.
    Bias(Array1<f64>),
}

/// The network's parameters (and, with the same shapes, its gradients).
#[derive(Clone, Debug)]
pub struct Rnn {
    pub recurrent: Array2<f64>,
    pub input: Array2<f64>,
    pub readout: Array1<f64>,
    pub readout_bias: f64,
    pub norm: Norm,
}

/// What the forward pass keeps for the backward pass.
pub struct Trace {
    /// hₜ for t = 0..=T (h₀ = 0), shape (T + 1, batch, hidden).
    hidden: Array3<f64>,
    /// aₜ for t = 1..=T, shape (T, batch, hidden).
    summed: Array3<f64>,
    /// Layer-norm statistics per step (empty for the baseline).
    stats: Vec<NormStats<f64, Ix1>>,
    /// The network's output for each sequence of the batch.
    pub prediction: Array1<f64>,
}

impl Rnn {
    /// Random weights from `rng`; the same draws give both models the same initial weights.
    /// Recurrent weights N(0, 1/hidden) and input weights N(0, 1), both multiplied by
    /// `weight_scale` (the paper's Table 1: layer normalization is invariant to re-scaling the
    /// weight matrix, so only the unnormalized model should care).
    pub fn new(
        hidden: usize,
        inputs: usize,
        layer_norm: bool,
        weight_scale: f64,
        rng: &mut StdRng,
    ) -> Self {
        let mut normal = |rows: usize, cols: usize, scale: f64| {
            let dist = Normal::new(0.0, scale).expect("valid normal");
            Array2::from_shape_simple_fn((rows, cols), || dist.sample(rng))
        };
        let recurrent = normal(hidden, hidden, weight_scale / (hidden as f64).sqrt());
        let input = normal(hidden, inputs, weight_scale);
        let readout = normal(1, hidden, 1.0 / (hidden as f64).sqrt()).remove_axis(Axis(0));
        let norm = if layer_norm {
            Norm::Layer(LayerNorm::new(hidden).expect("hidden > 0"))
        } else {
            Norm::Bias(Array1::zeros(hidden))
        };
        Rnn {
            recurrent,
            input,
            readout,
            readout_bias: 0.0,
            norm,
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.recurrent.nrows()
    }

    /// Runs the sequences `x` (shape (T, batch, inputs)) and returns the predictions and trace.
    pub fn forward(&self, x: &Array3<f64>) -> Trace {
        let (steps, batch, _) = x.dim();
        let hidden_size = self.hidden_size();
        let mut hidden = Array3::zeros((steps + 1, batch, hidden_size));
        let mut summed = Array3::zeros((steps, batch, hidden_size));
        let mut stats = Vec::with_capacity(steps);
        for t in 0..steps {
            let previous = hidden.index_axis(Axis(0), t);
            let a =
                previous.dot(&self.recurrent.t()) + x.index_axis(Axis(0), t).dot(&self.input.t());
            let pre_activation = match &self.norm {
                Norm::Layer(ln) => {
                    let (normalized, step_stats) = ln.forward_with_stats(&a).expect("shapes match");
                    stats.push(step_stats);
                    normalized
                }
                Norm::Bias(bias) => &a + bias,
            };
            hidden
                .index_axis_mut(Axis(0), t + 1)
                .assign(&pre_activation.mapv(f64::tanh));
            summed.index_axis_mut(Axis(0), t).assign(&a);
        }
        let prediction = hidden.index_axis(Axis(0), steps).dot(&self.readout) + self.readout_bias;
        Trace {
            hidden,
            summed,
            stats,
            prediction,
        }
    }

    /// Mean squared error of the predictions.
    pub fn loss(prediction: &Array1<f64>, target: &Array1<f64>) -> f64 {
        (prediction - target).mapv(|e| e * e).mean().unwrap_or(0.0)
    }

    /// Loss and gradients of all parameters by backpropagation through time.
    pub fn loss_and_gradients(&self, x: &Array3<f64>, target: &Array1<f64>) -> (f64, Rnn) {
        let trace = self.forward(x);
        let (steps, batch, _) = x.dim();
        let loss = Self::loss(&trace.prediction, target);
        let mut grads = self.zeros_like();

        // ∂L/∂ŷ = 2 (ŷ − y) / batch.
        let d_prediction = (&trace.prediction - target) * (2.0 / batch as f64);
        let last = trace.hidden.index_axis(Axis(0), steps);
        grads.readout = last.t().dot(&d_prediction);
        grads.readout_bias = d_prediction.sum();
        let mut d_hidden: Array2<f64> = d_prediction
            .view()
            .insert_axis(Axis(1))
            .dot(&self.readout.view().insert_axis(Axis(0)));

        let mut d_summed = Array2::zeros((batch, self.hidden_size()));
        for t in (0..steps).rev() {
            let h = trace.hidden.index_axis(Axis(0), t + 1);
            // tanh′ = 1 − h².
            let d_pre_activation = &d_hidden * &h.mapv(|h| 1.0 - h * h);
            match (&self.norm, &mut grads.norm) {
                (Norm::Layer(ln), Norm::Layer(ln_grads)) => {
                    let a = trace.summed.index_axis(Axis(0), t);
                    let (mut gain_grad, mut bias_grad) = gain_and_bias_mut(ln_grads);
                    ln.backward_into(
                        &a,
                        &trace.stats[t],
                        &d_pre_activation,
                        &mut d_summed,
                        Some(&mut gain_grad),
                        Some(&mut bias_grad),
                    )
                    .expect("shapes match");
                }
                (Norm::Bias(_), Norm::Bias(bias_grad)) => {
                    d_summed.assign(&d_pre_activation);
                    *bias_grad += &d_pre_activation.sum_axis(Axis(0));
                }
                _ => unreachable!("gradients have the model's structure"),
            }
            let previous: ArrayView2<f64> = trace.hidden.index_axis(Axis(0), t);
            grads.recurrent += &d_summed.t().dot(&previous);
            grads.input += &d_summed.t().dot(&x.index_axis(Axis(0), t));
            d_hidden = d_summed.dot(&self.recurrent);
        }
        (loss, grads)
    }

    /// A model of the same shape with every parameter zero (a gradient accumulator).
    pub fn zeros_like(&self) -> Rnn {
        let norm = match &self.norm {
            Norm::Layer(ln) => {
                let zeros = Array1::zeros(ln.dim());
                Norm::Layer(LayerNorm::from_params(zeros.clone(), zeros, ln.eps()).expect("valid"))
            }
            Norm::Bias(bias) => Norm::Bias(Array1::zeros(bias.len())),
        };
        Rnn {
            recurrent: Array2::zeros(self.recurrent.raw_dim()),
            input: Array2::zeros(self.input.raw_dim()),
            readout: Array1::zeros(self.readout.len()),
            readout_bias: 0.0,
            norm,
        }
    }

    /// Every parameter as a flat mutable slice, in a fixed order (for the optimizer and tests).
    pub fn parameters_mut(&mut self) -> Vec<&mut [f64]> {
        let mut all: Vec<&mut [f64]> = vec![
            self.recurrent.as_slice_mut().expect("standard layout"),
            self.input.as_slice_mut().expect("standard layout"),
            self.readout.as_slice_mut().expect("standard layout"),
            std::slice::from_mut(&mut self.readout_bias),
        ];
        match &mut self.norm {
            Norm::Layer(ln) => {
                let (gain, bias) = gain_and_bias_mut(ln);
                all.push(gain.into_slice().expect("standard layout"));
                all.push(bias.into_slice().expect("standard layout"));
            }
            Norm::Bias(bias) => all.push(bias.as_slice_mut().expect("standard layout")),
        }
        all
    }
}

/// The gain and bias of a layer built with both.
fn gain_and_bias_mut(
    ln: &mut LayerNorm<f64>,
) -> (
    ndarray::ArrayViewMut1<'_, f64>,
    ndarray::ArrayViewMut1<'_, f64>,
) {
    let (gain, bias) = ln.parameters_mut();
    (
        gain.expect("layer has a gain"),
        bias.expect("layer has a bias"),
    )
}

/// Adam (Kingma & Ba, 2015) over the flat parameter slices, with global-norm gradient clipping.
pub struct Adam {
    learning_rate: f64,
    clip_norm: f64,
    step: i32,
    first: Vec<Vec<f64>>,
    second: Vec<Vec<f64>>,
}

impl Adam {
    pub fn new(model: &mut Rnn, learning_rate: f64, clip_norm: f64) -> Self {
        let shapes: Vec<usize> = model.parameters_mut().iter().map(|p| p.len()).collect();
        Adam {
            learning_rate,
            clip_norm,
            step: 0,
            first: shapes.iter().map(|&n| vec![0.0; n]).collect(),
            second: shapes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    pub fn update(&mut self, model: &mut Rnn, grads: &mut Rnn) {
        let (beta1, beta2, epsilon): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        self.step += 1;
        let grads = grads.parameters_mut();
        let norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|g| g * g)
            .sum::<f64>()
            .sqrt();
        let scale = if norm > self.clip_norm {
            self.clip_norm / norm
        } else {
            1.0
        };
        let correction1 = 1.0 - beta1.powi(self.step);
        let correction2 = 1.0 - beta2.powi(self.step);
        for (((param, grad), first), second) in model
            .parameters_mut()
            .into_iter()
            .zip(grads)
            .zip(&mut self.first)
            .zip(&mut self.second)
        {
            for (((p, g), m), v) in param.iter_mut().zip(grad.iter()).zip(first).zip(second) {
                let g = g * scale;
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p -=
                    self.learning_rate * (*m / correction1) / ((*v / correction2).sqrt() + epsilon);
            }
        }
    }
}
