//! The emulator's own reading of each family's InvokeModel body: as strict as the reference
//! describes, written independently of the client transformers (so each checks the other), and
//! the response each family sends back. Its facts (ids, routes, dimensions, formats) come from
//! [`super::catalog`], never from the client's registry.
//!
//! This module is the entry point and what every family shares (the error and answer types);
//! each family's rules live in a file of their own (`families/`).

use super::catalog::{Called, Invoke};
use super::families::common::object;
use serde_json::Value;

#[cfg(test)]
mod tests;

/// A Bedrock error to send back: exception name, HTTP status, message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

pub fn validation(msg: impl Into<String>) -> ApiError {
    ApiError {
        code: "ValidationException",
        status: 400,
        message: msg.into(),
    }
}

/// Any other error answer.
pub(crate) fn api(code: &'static str, status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        status,
        message: message.into(),
    }
}

/// What one accepted request asks for: inputs to embed and how to answer.
pub struct Accepted {
    pub body: Vec<u8>,
    pub inputs: u64,
    pub tokens: u64,
    /// The request's `input_type`, for families that have one (counted per model).
    pub input_type: Option<String>,
}

/// The emulator's token count: words, with long words costing more (deterministic, roughly
/// like a subword tokenizer).
pub fn count_tokens(text: &str) -> u64 {
    text.split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| (w.chars().count() as u64).div_ceil(6).max(1))
        .sum::<u64>()
        .max(1)
}

/// Validates `body` for the model `called` names (and the route its id takes) and builds the
/// response.
pub fn invoke(called: Called, body: &[u8], poison: Option<&str>) -> Result<Accepted, ApiError> {
    let model = called.model;
    if model.invoke == Invoke::ProfileOnly && called.profile.is_none() {
        return Err(validation(format!(
            "Invocation of model ID {} with on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
            model.id
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        validation("Malformed input request, please reformat your input and try again.")
    })?;
    let o = object(&v, "#")?;
    (model.service.invoke)(model, &o, poison)
}
