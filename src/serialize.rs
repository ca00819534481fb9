//! Feature `serde`: the checkpoint format of [`LayerNorm`] and [`RmsNorm`].
//!
//! ```text
//! { "format": 1, "kind": "layer_norm", "dim": 3, "eps": 1e-5,
//!   "gain": [1.0, 1.0, 1.0], "bias": [0.0, 0.0, 0.0] }
//! ```
//!
//! Every field must be there: an absent parameter is an explicit `null`, so a truncated file
//! cannot load as a layer that silently lost its gain or bias. `kind` names the layer
//! (`"layer_norm"` or `"rms_norm"`), and loading one kind as the other is an error. Parameters
//! are JSON numbers in every element type (f16 and bf16 values are written as the f32 numbers
//! they equal, and read back rounded to nearest). A loaded layer goes through the same checks
//! as one built in code (lengths, `eps`, `dim`), and only the parameter combinations a
//! constructor builds load (a bias without a gain does not). `format` is the version of this
//! layout, so that later versions can keep reading it.

use crate::element::{Element, Parameter};
use crate::error::NormError;
use crate::layer_norm::LayerNorm;
use crate::norm::{Centering, NormCore};
use crate::rms_norm::RmsNorm;
use ndarray::Array1;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version of the layout this crate writes and reads.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    LayerNorm,
    RmsNorm,
}

impl Kind {
    fn of(centering: Centering) -> Kind {
        match centering {
            Centering::Mean => Kind::LayerNorm,
            Centering::None => Kind::RmsNorm,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::LayerNorm => "layer_norm",
            Kind::RmsNorm => "rms_norm",
        }
    }
}

/// The serialized form of a layer, with its parameters as numbers of type `N`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "N: Deserialize<'de>"))]
struct Record<N> {
    format: u32,
    kind: Kind,
    dim: usize,
    eps: f64,
    /// Required, possibly `null` (an `Option` field would otherwise default to `None`).
    #[serde(deserialize_with = "Option::deserialize")]
    gain: Option<Vec<N>>,
    #[serde(deserialize_with = "Option::deserialize")]
    bias: Option<Vec<N>>,
}

impl<N> Record<N> {
    fn from_core<A: Element, P: Parameter<A>>(
        core: &NormCore<A, P>,
        number: impl Fn(P) -> N,
    ) -> Self {
        let values = |parameter: Option<ndarray::ArrayView1<'_, P>>| {
            parameter.map(|values| values.iter().map(|&v| number(v)).collect())
        };
        Record {
            format: FORMAT,
            kind: Kind::of(core.centering()),
            dim: core.dim(),
            eps: core.eps(),
            gain: values(core.gain()),
            bias: values(core.bias()),
        }
    }

    /// The layer this record describes, checked as a constructor checks its arguments.
    fn into_core<A: Element, P: Parameter<A>>(
        self,
        centering: Centering,
        parameter: impl Fn(N) -> P,
    ) -> Result<NormCore<A, P>, String> {
        if self.format != FORMAT {
            return Err(format!(
                "unsupported checkpoint format {}: this version of layernorm reads format {FORMAT}",
                self.format
            ));
        }
        let expected = Kind::of(centering);
        if self.kind != expected {
            return Err(format!(
                "this is a {} checkpoint, not a {}",
                self.kind.name(),
                expected.name()
            ));
        }
        if self.gain.is_none() && self.bias.is_some() {
            return Err(format!(
                "a {} with a bias needs a gain: no constructor builds a bias without a gain",
                expected.name()
            ));
        }
        let values = |values: Option<Vec<N>>| {
            values.map(|values| values.into_iter().map(&parameter).collect::<Array1<P>>())
        };
        let (gain, bias) = (values(self.gain), values(self.bias));
        NormCore::new(centering, self.dim, gain, bias, self.eps)
            .map_err(|error: NormError| error.to_string())
    }
}

/// `Serialize` and `Deserialize` for a layer type over data `$data` with parameters `$param`,
/// written as JSON numbers of type `$number`.
macro_rules! checkpoint {
    ($layer:ident, $centering:expr, $data:ty, $param:ty, $number:ty,
     $to_number:expr, $from_number:expr) => {
        impl Serialize for $layer<$data, $param> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                Record::<$number>::from_core(self.core(), $to_number).serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $layer<$data, $param> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let record = Record::<$number>::deserialize(deserializer)?;
                let core = record
                    .into_core($centering, $from_number)
                    .map_err(D::Error::custom)?;
                Ok($layer::from_core(core))
            }
        }
    };
}

/// Both layer types for one combination of data and parameter types.
macro_rules! checkpoints {
    ($data:ty, $param:ty, $number:ty, $to_number:expr, $from_number:expr) => {
        checkpoint!(
            LayerNorm,
            Centering::Mean,
            $data,
            $param,
            $number,
            $to_number,
            $from_number
        );
        checkpoint!(
            RmsNorm,
            Centering::None,
            $data,
            $param,
            $number,
            $to_number,
            $from_number
        );
    };
}

checkpoints!(f32, f32, f32, |v: f32| v, |v: f32| v);
checkpoints!(f64, f64, f64, |v: f64| v, |v: f64| v);
#[cfg(feature = "half")]
checkpoints!(
    half::f16,
    half::f16,
    f32,
    half::f16::to_f32,
    half::f16::from_f32
);
#[cfg(feature = "half")]
checkpoints!(
    half::bf16,
    half::bf16,
    f32,
    half::bf16::to_f32,
    half::bf16::from_f32
);
#[cfg(feature = "half")]
checkpoints!(half::f16, f32, f32, |v: f32| v, |v: f32| v);
#[cfg(feature = "half")]
checkpoints!(half::bf16, f32, f32, |v: f32| v, |v: f32| v);
