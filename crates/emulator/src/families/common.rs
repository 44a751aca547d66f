//! The plumbing every family's reading of a body shares: typed access to JSON values with the
//! service's `Malformed input request` messages, allowed keys, enums, dimensions, base64 and
//! image bytes. No family's rules live here.

use crate::wire::{validation, ApiError};
use base64::Engine;
use serde_json::{Map, Value};

/// The message of an input refused for containing the configured poison string.
pub(crate) const POISONED: &str =
    "Malformed input request: the input was rejected by the model (poisoned input)";

/// Whether `text` contains the (non-empty) poison string.
pub(crate) fn poisoned(poison: Option<&str>, text: &str) -> bool {
    poison.is_some_and(|p| !p.is_empty() && text.contains(p))
}

/// A JSON object of a request body.
pub(crate) type Obj = Map<String, Value>;

pub(crate) fn object(v: &Value, at: &str) -> Result<Obj, ApiError> {
    v.as_object().cloned().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: JSONObject, found: {}",
            kind(v)
        ))
    })
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "JSONArray",
        Value::Object(_) => "JSONObject",
    }
}

/// Fails on keys outside `allowed`.
pub(crate) fn only(o: &Obj, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(validation(format!(
                "Malformed input request: {at}: extraneous key [{k}] is not permitted, please reformat your input and try again."
            )));
        }
    }
    Ok(())
}

pub(crate) fn required<'a>(o: &'a Obj, key: &str, at: &str) -> Result<&'a Value, ApiError> {
    o.get(key).ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: required key [{key}] not found, please reformat your input and try again."
        ))
    })
}

pub(crate) fn string<'a>(v: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: String, found: {}",
            kind(v)
        ))
    })
}

pub(crate) fn one_of<'a>(v: &'a Value, allowed: &[&str], at: &str) -> Result<&'a str, ApiError> {
    let s = string(v, at)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(validation(format!(
            "Malformed input request: {at}: {s} is not a valid enum value; expected one of [{}]",
            allowed.join(", ")
        )))
    }
}

pub(crate) fn uint(v: &Value, at: &str) -> Result<u64, ApiError> {
    v.as_u64().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: Integer, found: {}",
            kind(v)
        ))
    })
}

pub(crate) fn dims(
    v: Option<&Value>,
    allowed: &[usize],
    at: &str,
) -> Result<Option<usize>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let d = uint(v, at)? as usize;
    if allowed.contains(&d) {
        Ok(Some(d))
    } else {
        let list: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
        Err(validation(format!(
            "Malformed input request: {at}: {d} is not a valid value; expected one of [{}]",
            list.join(", ")
        )))
    }
}

pub(crate) fn decode_b64(s: &str, at: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| validation(format!("Malformed input request: {at}: invalid base64")))
}

/// An image's encoding from its magic bytes (the service reads the bytes, not the label).
pub(crate) fn image_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// Image bytes must be a real image of an accepted format.
pub(crate) fn image_bytes(bytes: &[u8], formats: &[&str], at: &str) -> Result<(), ApiError> {
    let f = image_format(bytes);
    match f {
        Some(f) if formats.contains(&f) => Ok(()),
        _ => Err(validation(format!(
            "{at}: unsupported or unreadable image; supported formats: {}",
            formats.join(", ")
        ))),
    }
}
