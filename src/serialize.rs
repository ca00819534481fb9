//! Feature `serde`: LayerNorm and RmsNorm as `{ dim, eps, gain, bias }`, validated on load.
//!
//! A loaded layer goes through the same checks as one built in code, so an inconsistent file
//! (gain and bias of different lengths, a length other than `dim`, a bad `eps`, `dim = 0`) is
//! a deserialization error naming the problem, never a layer that fails later.

use crate::element::Element;
use crate::error::NormError;
use crate::layer_norm::LayerNorm;
use crate::norm::{Centering, NormCore};
use crate::rms_norm::RmsNorm;
use ndarray::Array1;
use serde::{Deserialize, Serialize};

/// The serialized form of a layer: absent parameters are `null`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) struct NormRecord<A> {
    dim: usize,
    eps: f64,
    gain: Option<Vec<A>>,
    bias: Option<Vec<A>>,
}

impl<A: Element> NormRecord<A> {
    fn from_core(core: &NormCore<A>) -> Self {
        NormRecord {
            dim: core.dim(),
            eps: core.eps(),
            gain: core.gain().map(|gain| gain.to_vec()),
            bias: core.bias().map(|bias| bias.to_vec()),
        }
    }

    fn into_core(self, centering: Centering) -> Result<NormCore<A>, NormError> {
        let (gain, bias) = (self.gain.map(Array1::from), self.bias.map(Array1::from));
        NormCore::new(centering, self.dim, gain, bias, self.eps)
    }
}

macro_rules! impl_serde {
    ($layer:ident, $centering:expr) => {
        impl<A: Element + Serialize> Serialize for $layer<A> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                NormRecord::from_core(self.core()).serialize(serializer)
            }
        }

        impl<'de, A: Element + Deserialize<'de>> Deserialize<'de> for $layer<A> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let record = NormRecord::<A>::deserialize(deserializer)?;
                let core = record
                    .into_core($centering)
                    .map_err(serde::de::Error::custom)?;
                Ok($layer::from_core(core))
            }
        }
    };
}

impl_serde!(LayerNorm, Centering::Mean);
impl_serde!(RmsNorm, Centering::None);
