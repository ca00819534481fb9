//! The UCI "Optical Recognition of Handwritten Digits" data: 1797 images of 8×8 pixels with
//! grey levels 0..16, ten classes, as shipped inside the `smartcore` crate (no download).

use ndarray::Array2;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Pixels per image (8 × 8).
pub const PIXELS: usize = 64;
/// Digits 0 to 9.
pub const CLASSES: usize = 10;

/// Images as rows of pixels scaled to [0, 1], with their labels.
#[derive(Clone)]
pub struct Digits {
    pub images: Array2<f32>,
    pub labels: Vec<usize>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The images and labels at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Digits {
        Digits {
            images: self.images.select(ndarray::Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// All 1797 images, pixels divided by 16.
pub fn load() -> Digits {
    let dataset = smartcore::dataset::digits::load_dataset();
    let images = Array2::from_shape_vec((dataset.num_samples, dataset.num_features), dataset.data)
        .expect("the data set holds num_samples × num_features values");
    let labels = dataset
        .target
        .iter()
        .map(|&label| {
            assert!(label.fract() == 0.0 && (0.0..10.0).contains(&label));
            label as usize
        })
        .collect();
    Digits {
        images: images / 16.0,
        labels,
    }
}

/// A training and a test set.
pub struct Split {
    pub train: Digits,
    pub test: Digits,
}

/// Shuffles the images with `seed` and holds out the first `test` of them.
pub fn split(digits: &Digits, test: usize, seed: u64) -> Split {
    let mut order: Vec<usize> = (0..digits.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    Split {
        test: digits.select(&order[..test]),
        train: digits.select(&order[test..]),
    }
}
