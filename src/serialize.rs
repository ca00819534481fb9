//! Feature `serde`: LayerNorm and RmsNorm as `{ dim, eps, gain, bias }`, validated on load.
//!
//! A loaded layer goes through the same checks as one built in code, so an inconsistent file
//! (gain and bias of different lengths, a length other than `dim`, a bad `eps`, `dim = 0`) is
//! a deserialization error naming the problem, never a layer that fails later.

use crate::core::NormCore;
use crate::element::Element;
use crate::error::NormError;
use crate::layer_norm::LayerNorm;
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

    fn into_core(self, centered: bool) -> Result<NormCore<A>, NormError> {
        let check = |argument: &'static str, values: &Option<Vec<A>>| match values {
            Some(values) if values.len() != self.dim => Err(NormError::ShapeMismatch {
                argument,
                expected: vec![self.dim],
                found: vec![values.len()],
            }),
            _ => Ok(()),
        };
        if self.dim == 0 {
            return Err(NormError::ZeroDim);
        }
        check("gain", &self.gain)?;
        check("bias", &self.bias)?;
        let (gain, bias) = (self.gain.map(Array1::from), self.bias.map(Array1::from));
        if gain.is_none() && bias.is_none() {
            return NormCore::without_affine(self.dim, centered)
                .and_then(|mut core| core.set_eps(self.eps).map(|()| core));
        }
        NormCore::from_params(gain, bias, self.eps, centered)
    }
}

macro_rules! impl_serde {
    ($layer:ident, $centered:expr) => {
        impl<A: Element + Serialize> Serialize for $layer<A> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                NormRecord::from_core(self.core()).serialize(serializer)
            }
        }

        impl<'de, A: Element + Deserialize<'de>> Deserialize<'de> for $layer<A> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let record = NormRecord::<A>::deserialize(deserializer)?;
                let core = record
                    .into_core($centered)
                    .map_err(serde::de::Error::custom)?;
                Ok($layer::from_core(core))
            }
        }
    };
}

impl_serde!(LayerNorm, true);
impl_serde!(RmsNorm, false);
