//! The crate's one error type.

use std::fmt;

/// Everything a caller can get wrong when building or calling a normalization layer.
///
/// Every public function that takes shapes or values from the caller returns
/// `Result<_, NormError>` instead of panicking. Messages are lowercase, name the argument and,
/// for shapes, show both the expected and the found shape.
///
/// Non-finite *data* (NaN, ±Inf) is never an error: it propagates to the rows that hold it.
///
/// ```
/// use layernorm::{LayerNorm, NormError};
/// use ndarray::Array2;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ln = LayerNorm::<f32>::new(768)?;
/// let x = Array2::<f32>::zeros((4, 512));
/// let err = ln.forward(&x).unwrap_err();
/// assert_eq!(err.to_string(), "shape mismatch for x: expected [4, 768], found [4, 512]");
/// assert!(matches!(err, NormError::ShapeMismatch { argument: "x", .. }));
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum NormError {
    /// An array argument does not have the shape the call needs.
    ShapeMismatch {
        /// Name of the argument, as in the method's signature (`x`, `dy`, `out`, `stats`, …).
        argument: &'static str,
        /// The shape the call needed.
        expected: Vec<usize>,
        /// The shape that was passed.
        found: Vec<usize>,
    },
    /// An array argument is 0-dimensional, so it has no last axis to normalize.
    NoFeatureAxis {
        /// Name of the argument.
        argument: &'static str,
    },
    /// `eps` is NaN, infinite or negative.
    InvalidEps {
        /// The rejected value.
        eps: f64,
    },
    /// A layer was asked to normalize zero features.
    ZeroDim,
    /// A gradient accumulator was passed for a parameter the layer does not have.
    MissingParameter {
        /// `"gain"` or `"bias"`.
        parameter: &'static str,
    },
}

impl fmt::Display for NormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormError::ShapeMismatch {
                argument,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch for {argument}: expected {expected:?}, found {found:?}"
            ),
            NormError::NoFeatureAxis { argument } => write!(
                f,
                "{argument} has no axis to normalize: expected at least 1 dimension, found 0"
            ),
            NormError::InvalidEps { eps } => {
                write!(f, "invalid eps: expected a finite value >= 0, found {eps}")
            }
            NormError::ZeroDim => write!(
                f,
                "invalid dim: expected at least 1 feature to normalize, found 0"
            ),
            NormError::MissingParameter { parameter } => write!(
                f,
                "a gradient accumulator for {parameter} was given, but the layer has no {parameter}"
            ),
        }
    }
}

impl std::error::Error for NormError {}

#[cfg(test)]
mod tests {
    use super::NormError;

    #[test]
    fn error_is_send_sync_and_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<NormError>();
    }

    #[test]
    fn messages_are_lowercase_without_trailing_period() {
        let all = [
            NormError::ShapeMismatch {
                argument: "dy",
                expected: vec![4, 768],
                found: vec![4, 512],
            },
            NormError::NoFeatureAxis { argument: "x" },
            NormError::InvalidEps { eps: f64::NAN },
            NormError::ZeroDim,
            NormError::MissingParameter { parameter: "bias" },
        ];
        for err in all {
            let text = err.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
