//! The adding problem (Hochreiter & Schmidhuber, 1997): each step carries a value in [0, 1)
//! and a marker; exactly two steps are marked, one in each half of the sequence, and the target
//! is the sum of their values. Predicting the mean target (1.0) scores a mean squared error of
//! 1/6 ≈ 0.167; plain recurrent networks struggle as the sequence grows, because the answer
//! depends on inputs many steps back.

use ndarray::{Array1, Array3};
use rand::rngs::StdRng;
use rand::RngExt;

/// A batch: inputs of shape (steps, batch, 2) and targets of shape (batch).
pub struct Batch {
    pub inputs: Array3<f64>,
    pub targets: Array1<f64>,
}

/// `batch` sequences of length `steps`, drawn from `rng`.
pub fn adding_problem(rng: &mut StdRng, steps: usize, batch: usize) -> Batch {
    let mut inputs = Array3::zeros((steps, batch, 2));
    let mut targets = Array1::zeros(batch);
    let half = steps / 2;
    for b in 0..batch {
        for t in 0..steps {
            inputs[[t, b, 0]] = rng.random_range(0.0..1.0);
        }
        let first = rng.random_range(0..half);
        let second = half + rng.random_range(0..steps - half);
        inputs[[first, b, 1]] = 1.0;
        inputs[[second, b, 1]] = 1.0;
        targets[b] = inputs[[first, b, 0]] + inputs[[second, b, 0]];
    }
    Batch { inputs, targets }
}
