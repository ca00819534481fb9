//! Feature `serde`: layers round-trip through JSON and inconsistent files are errors.

#![cfg(feature = "serde")]

use layernorm::{LayerNorm, RmsNorm};
use ndarray::array;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn layer_norms_round_trip_through_json() -> Result {
    let layers = [
        LayerNorm::from_params(array![1.5f32, -0.5, 2.0], array![0.1, 0.2, 0.3], 1e-6)?,
        LayerNorm::from_gain(array![1.0f32, 2.0, 3.0], 1e-5)?,
        LayerNorm::<f32>::new_without_affine(3)?.with_eps(0.0)?,
    ];
    for layer in layers {
        let json = serde_json::to_string(&layer)?;
        let loaded: LayerNorm<f32> = serde_json::from_str(&json)?;
        assert_eq!(loaded, layer, "{json}");
        let x = array![[1.0f32, 4.0, -2.0]];
        assert_eq!(loaded.forward(&x)?, layer.forward(&x)?);
    }
    Ok(())
}

#[test]
fn the_format_is_dim_eps_gain_bias() -> Result {
    let layer = LayerNorm::from_params(array![1.0f64, 2.0], array![0.0, 0.5], 1e-5)?;
    let value: serde_json::Value = serde_json::to_value(&layer)?;
    assert_eq!(
        value,
        serde_json::json!({"dim": 2, "eps": 1e-5, "gain": [1.0, 2.0], "bias": [0.0, 0.5]})
    );
    let plain: serde_json::Value = serde_json::to_value(RmsNorm::<f64>::new_without_affine(4)?)?;
    assert_eq!(
        plain,
        serde_json::json!({"dim": 4, "eps": 1e-5, "gain": null, "bias": null})
    );
    Ok(())
}

#[test]
fn rms_norms_round_trip_and_stay_uncentered() -> Result {
    let layer = RmsNorm::from_params(array![1.0f64, 0.5], array![0.25, 0.0], 0.0)?;
    let loaded: RmsNorm<f64> = serde_json::from_str(&serde_json::to_string(&layer)?)?;
    assert_eq!(loaded, layer);
    // A constant row is not centered by RmsNorm: 2/2 · gain + bias.
    assert_eq!(loaded.forward(&array![2.0, 2.0])?, array![1.25, 0.5]);
    Ok(())
}

#[test]
fn inconsistent_files_are_clear_errors() {
    let cases = [
        (
            r#"{"dim": 3, "eps": 1e-5, "gain": [1, 1, 1], "bias": [0, 0]}"#,
            "shape mismatch for bias: expected [3], found [2]",
        ),
        (
            r#"{"dim": 2, "eps": 1e-5, "gain": [1, 1, 1], "bias": null}"#,
            "shape mismatch for gain: expected [2], found [3]",
        ),
        (
            r#"{"dim": 2, "eps": -1.0, "gain": [1, 1], "bias": null}"#,
            "invalid eps: expected a finite value >= 0, found -1",
        ),
        (
            r#"{"dim": 0, "eps": 1e-5, "gain": null, "bias": null}"#,
            "invalid dim: expected at least 1 feature to normalize, found 0",
        ),
        (
            r#"{"dim": 2, "eps": -1.0, "gain": null, "bias": null}"#,
            "invalid eps: expected a finite value >= 0, found -1",
        ),
        (
            r#"{"eps": 1e-5, "gain": null, "bias": null}"#,
            "missing field `dim`",
        ),
        (
            r#"{"dim": 2, "eps": 1e-5, "gain": null, "bias": null, "mean": 0}"#,
            "unknown field `mean`",
        ),
    ];
    for (json, message) in cases {
        let layer = serde_json::from_str::<LayerNorm<f32>>(json);
        let err = layer.expect_err(json).to_string();
        assert!(err.contains(message), "{json}: {err}");
        assert!(
            serde_json::from_str::<RmsNorm<f32>>(json).is_err(),
            "{json}"
        );
    }
}
