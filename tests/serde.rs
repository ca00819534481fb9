//! Feature `serde`: the checkpoint format. Layers of every element type and configuration
//! round-trip through JSON; files that would lose or misplace parameters are clear errors.

#![cfg(feature = "serde")]

use layernorm::{LayerNorm, RmsNorm};
use ndarray::array;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn round_trip<L: Serialize + DeserializeOwned + PartialEq + Debug>(layer: &L) -> Result {
    let json = serde_json::to_string(layer)?;
    let loaded: L = serde_json::from_str(&json)?;
    assert_eq!(&loaded, layer, "{json}");
    Ok(())
}

#[test]
fn every_configuration_of_every_element_type_round_trips() -> Result {
    macro_rules! check {
        ($t:ty, $convert:expr) => {{
            let gain = array![1.5, -0.5, 2.0].mapv($convert);
            let bias = array![0.125, 0.25, -0.75].mapv($convert);
            round_trip(&LayerNorm::<$t>::new(3)?)?;
            round_trip(&LayerNorm::<$t>::new_without_bias(3)?)?;
            round_trip(&LayerNorm::<$t>::new_without_affine(3)?.with_eps(0.0)?)?;
            round_trip(&LayerNorm::from_params(gain.clone(), bias.clone(), 1e-6)?)?;
            round_trip(&LayerNorm::from_gain(gain.clone(), 1e-3)?)?;
            round_trip(&RmsNorm::<$t>::new(3)?)?;
            round_trip(&RmsNorm::<$t>::new_with_bias(3)?)?;
            round_trip(&RmsNorm::<$t>::new_without_affine(3)?)?;
            round_trip(&RmsNorm::from_params(gain.clone(), bias.clone(), 1e-6)?)?;
            round_trip(&RmsNorm::from_gain(gain, 0.0)?)?;
        }};
    }
    check!(f32, |v: f64| v as f32);
    check!(f64, |v: f64| v);
    #[cfg(feature = "half")]
    {
        use half::{bf16, f16};
        check!(f16, f16::from_f64);
        check!(bf16, bf16::from_f64);
        // Mixed precision: f32 parameters over half data.
        let mixed = LayerNorm::from_params(array![1.5f32, 0.1], array![0.0, 0.3], 1e-5)?;
        round_trip(&mixed.clone().for_activations::<f16>())?;
        round_trip(&mixed.for_activations::<bf16>())?;
        round_trip(&RmsNorm::from_gain(array![0.1f32, 7.0], 1e-5)?.for_activations::<f16>())?;
    }
    Ok(())
}

#[test]
fn the_format_names_its_version_and_kind_and_every_field() -> Result {
    let layer = LayerNorm::from_params(array![1.0f64, 2.0], array![0.0, 0.5], 1e-5)?;
    assert_eq!(
        serde_json::to_value(&layer)?,
        serde_json::json!({"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5,
                           "gain": [1.0, 2.0], "bias": [0.0, 0.5]})
    );
    let plain = RmsNorm::<f64>::new_without_affine(4)?;
    assert_eq!(
        serde_json::to_value(&plain)?,
        serde_json::json!({"format": 1, "kind": "rms_norm", "dim": 4, "eps": 1e-5,
                           "gain": null, "bias": null})
    );
    // f32 parameters are written as the shortest decimal that reads back exactly.
    let json = serde_json::to_string(&LayerNorm::from_gain(array![0.1f32], 1e-5)?)?;
    assert!(json.contains(r#""gain":[0.1]"#), "{json}");
    Ok(())
}

#[cfg(feature = "half")]
#[test]
fn half_parameters_are_json_numbers() -> Result {
    use half::{bf16, f16};
    let layer = LayerNorm::from_params(
        array![1.0, 0.5].mapv(f16::from_f32),
        array![-2.0, 0.25].mapv(f16::from_f32),
        1e-5,
    )?;
    let value = serde_json::to_value(&layer)?;
    assert_eq!(value["gain"], serde_json::json!([1.0, 0.5]));
    assert_eq!(value["bias"], serde_json::json!([-2.0, 0.25]));
    // Ordinary numbers load into half layers, rounded to nearest.
    let json = r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5,
                   "gain": [1, 0.1], "bias": null}"#;
    let loaded: LayerNorm<bf16> = serde_json::from_str(json)?;
    let gain = loaded.gain().expect("gain");
    assert_eq!((gain[0], gain[1]), (bf16::ONE, bf16::from_f32(0.1)));
    let loaded: LayerNorm<f16, f32> = serde_json::from_str(json)?;
    assert_eq!(loaded.gain().expect("gain")[1], 0.1f32);
    Ok(())
}

#[test]
fn a_layer_norm_checkpoint_keeps_its_behaviour() -> Result {
    let layer = RmsNorm::from_params(array![1.0f64, 0.5], array![0.25, 0.0], 0.0)?;
    let loaded: RmsNorm<f64> = serde_json::from_str(&serde_json::to_string(&layer)?)?;
    // A constant row is not centered by RmsNorm: 2/2 · gain + bias.
    assert_eq!(loaded.forward(&array![2.0, 2.0])?, array![1.25, 0.5]);
    Ok(())
}

/// Each broken file, and the message it must produce for LayerNorm<f32>.
const BROKEN: [(&str, &str); 12] = [
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 4, "eps": 1e-5}"#,
        "missing field `gain`",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": [1, 1]}"#,
        "missing field `bias`",
    ),
    (
        r#"{"kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null}"#,
        "missing field `format`",
    ),
    (
        r#"{"format": 2, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null}"#,
        "unsupported checkpoint format 2: this version of layernorm reads format 1",
    ),
    (
        r#"{"format": 1, "kind": "rms_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null}"#,
        "this is a rms_norm checkpoint, not a layer_norm",
    ),
    (
        r#"{"format": 1, "kind": "batch_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null}"#,
        "unknown variant `batch_norm`",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": [0, 0]}"#,
        "a layer_norm with a bias needs a gain: no constructor builds a bias without a gain",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 3, "eps": 1e-5, "gain": [1, 1, 1], "bias": [0, 0]}"#,
        "shape mismatch for bias: expected [3], found [2]",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": [1, 1, 1], "bias": null}"#,
        "shape mismatch for gain: expected [2], found [3]",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": -1.0, "gain": [1, 1], "bias": null}"#,
        "invalid eps: expected a finite value >= 0, found -1",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 0, "eps": 1e-5, "gain": null, "bias": null}"#,
        "invalid dim: expected at least 1 feature to normalize, found 0",
    ),
    (
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null, "mean": 0}"#,
        "unknown field `mean`",
    ),
];

#[test]
fn files_that_would_lose_or_misplace_parameters_are_clear_errors() {
    for (json, message) in BROKEN {
        let err = serde_json::from_str::<LayerNorm<f32>>(json)
            .expect_err(json)
            .to_string();
        assert!(err.contains(message), "{json}: {err}");
        // RmsNorm rejects the same files written for it, with the same messages (the kind
        // mismatch is checked below).
        if message.starts_with("this is a") {
            continue;
        }
        let rms_json = json.replace("layer_norm", "rms_norm");
        let rms_err = serde_json::from_str::<RmsNorm<f32>>(&rms_json)
            .expect_err(&rms_json)
            .to_string();
        let rms_message = message.replace("a layer_norm with", "a rms_norm with");
        assert!(rms_err.contains(&rms_message), "{rms_json}: {rms_err}");
    }
    let err = serde_json::from_str::<RmsNorm<f32>>(
        r#"{"format": 1, "kind": "layer_norm", "dim": 2, "eps": 1e-5, "gain": null, "bias": null}"#,
    )
    .expect_err("kind")
    .to_string();
    assert!(
        err.contains("this is a layer_norm checkpoint, not a rms_norm"),
        "{err}"
    );
}
