//! Reading response bodies: typed deserialisation (fast for vector-heavy responses), error
//! messages that show what the service sent instead, and JSON number arrays as vectors.

use crate::floats;
use crate::spec::ModelSpec;
use crate::vocab::{wire_err, WireError};
use serde_json::Value;

/// Deserialises a response body into a family's response type (typed, so vectors go straight
/// into `Vec<f32>` without an intermediate JSON tree).
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(
    spec: &ModelSpec,
    body: &'a [u8],
) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| not_the_format(spec, body, e))
}

/// [`from_json`] for response types whose vectors are [`floats::Vector`]s: the numbers are read
/// without serde (most of a response is numbers).
pub(crate) fn from_json_fast<T: serde::de::DeserializeOwned>(
    spec: &ModelSpec,
    body: &[u8],
) -> Result<T, WireError> {
    floats::from_json(body).map_err(|e| not_the_format(spec, body, e))
}

pub(crate) fn not_the_format(spec: &ModelSpec, body: &[u8], e: serde_json::Error) -> WireError {
    WireError(format!(
        "{} answered with a body that is not its response format ({e}): {}",
        spec.id,
        snippet(body)
    ))
}

/// The first bytes of a body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    if body.len() > 200 {
        format!("{s}…")
    } else {
        s.into_owned()
    }
}

/// Reads a JSON array of numbers as f32.
pub(crate) fn f32_vec(v: &Value, what: &str) -> Result<Vec<f32>, WireError> {
    let Some(a) = v.as_array() else {
        return wire_err(format!("`{what}` is not an array"));
    };
    a.iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| WireError(format!("`{what}` holds a non-number")))
        })
        .collect()
}
