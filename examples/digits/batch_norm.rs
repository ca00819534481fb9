//! Batch normalization, the baseline the paper compares layer normalization with. It is written
//! here, in the example, because it is not part of the crate: each feature (column) is
//! normalized with the mean and variance over the rows of the batch in training, and with
//! running averages of those at test time.
//!
//! ```text
//! μⱼ = mean over the batch of xᵢⱼ     σⱼ² = mean over the batch of (xᵢⱼ − μⱼ)²
//! rⱼ = 1 / √(σⱼ² + ε)                 x̂ᵢⱼ = (xᵢⱼ − μⱼ) · rⱼ       yᵢⱼ = gainⱼ · x̂ᵢⱼ + biasⱼ
//! gᵢⱼ = gainⱼ · dyᵢⱼ                  dxᵢⱼ = rⱼ · (gᵢⱼ − mean_i(g) − x̂ᵢⱼ · mean_i(g ⊙ x̂))
//! ```
//!
//! The backward pass is layer normalization's with rows and columns exchanged.

use crate::mlp::Real;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// The running averages move this fraction of the way to each batch's statistics.
const MOMENTUM: f64 = 0.1;

pub struct BatchNorm<A> {
    pub gain: Array1<A>,
    pub bias: Array1<A>,
    pub eps: A,
    running_mean: Array1<A>,
    running_var: Array1<A>,
}

/// What the training forward pass keeps for the backward pass.
pub struct BatchNormCache<A> {
    pub x_hat: Array2<A>,
    pub inv_std: Array1<A>,
}

impl<A: Real> BatchNorm<A> {
    /// Gain 1, bias 0, running mean 0 and variance 1.
    pub fn new(dim: usize) -> Self {
        BatchNorm {
            gain: Array1::ones(dim),
            bias: Array1::zeros(dim),
            eps: A::from_f64(1e-5).expect("representable"),
            running_mean: Array1::zeros(dim),
            running_var: Array1::ones(dim),
        }
    }

    /// Training forward: normalizes with the batch's statistics and updates the running
    /// averages (with the unbiased variance, as PyTorch does).
    pub fn forward_train(&mut self, x: ArrayView2<'_, A>) -> (Array2<A>, BatchNormCache<A>) {
        let rows = A::from_usize(x.nrows()).expect("representable");
        let mean = x.mean_axis(Axis(0)).expect("a batch has rows");
        let centered = &x - &mean;
        let variance = centered.mapv(|v| v * v).sum_axis(Axis(0)) / rows;
        let inv_std = variance.mapv(|v| (v + self.eps).sqrt().recip());
        let x_hat = centered * &inv_std;
        let y = &x_hat * &self.gain + &self.bias;
        let momentum = A::from_f64(MOMENTUM).expect("representable");
        let unbiased = if x.nrows() > 1 {
            rows / (rows - A::one())
        } else {
            A::one()
        };
        self.running_mean = &self.running_mean * (A::one() - momentum) + mean * momentum;
        self.running_var =
            &self.running_var * (A::one() - momentum) + variance * (unbiased * momentum);
        (y, BatchNormCache { x_hat, inv_std })
    }

    /// Test-time forward: normalizes with the running averages.
    pub fn forward_eval(&self, x: ArrayView2<'_, A>) -> Array2<A> {
        let inv_std = self.running_var.mapv(|v| (v + self.eps).sqrt().recip());
        (&x - &self.running_mean) * &(inv_std * &self.gain) + &self.bias
    }

    /// `(dx, dgain, dbias)` for the upstream gradient `dy` of the last training forward.
    pub fn backward(
        &self,
        cache: &BatchNormCache<A>,
        dy: ArrayView2<'_, A>,
    ) -> (Array2<A>, Array1<A>, Array1<A>) {
        let rows = A::from_usize(dy.nrows()).expect("representable");
        let g = &dy * &self.gain;
        let mean_g = g.sum_axis(Axis(0)) / rows;
        let mean_g_x_hat = (&g * &cache.x_hat).sum_axis(Axis(0)) / rows;
        let dx = (g - &mean_g - &cache.x_hat * &mean_g_x_hat) * &cache.inv_std;
        let dgain = (&dy * &cache.x_hat).sum_axis(Axis(0));
        let dbias = dy.sum_axis(Axis(0));
        (dx, dgain, dbias)
    }
}
