//! An embeddings request body read as strictly as the OpenAI API reads it, in its order, and
//! the answer written for an accepted one.

use super::models::{self, Served};
use super::Refusal;
use crate::json::{self, Floats};
use crate::vectors;
use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

/// The keys the endpoint knows; any other is refused (OpenAI does not ignore them).
const ALLOWED: &[&str] = &["input", "model", "encoding_format", "dimensions", "user"];

const NOT_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Float,
    Base64,
}

impl Encoding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Float => "float",
            Encoding::Base64 => "base64",
        }
    }
}

/// A request that passed every check.
struct Valid {
    model: &'static Served,
    inputs: Vec<String>,
    /// Each input's token estimate.
    tokens: Vec<u64>,
    encoding: Encoding,
    dimensions: Option<u64>,
}

/// An accepted request's answer, and what the counters keep of it.
pub(crate) struct Prepared {
    pub(crate) model: &'static Served,
    pub(crate) inputs: u64,
    pub(crate) tokens: u64,
    pub(crate) encoding: Encoding,
    pub(crate) dimensions: Option<u64>,
    pub(crate) body: Bytes,
}

/// Validates `body` and writes its answer (`shuffle`: `data` in reverse index order).
pub(crate) fn prepare(
    body: &[u8],
    poison: Option<&str>,
    shuffle: bool,
) -> Result<Prepared, Refusal> {
    let v = validate(body, poison)?;
    let answer = render(&v, shuffle);
    Ok(Prepared {
        model: v.model,
        inputs: v.inputs.len() as u64,
        tokens: v.tokens.iter().sum(),
        encoding: v.encoding,
        dimensions: v.dimensions,
        body: Bytes::from(answer),
    })
}

/// The emulator's token estimate of one input (a quarter of its characters, at least one): the
/// same number is checked against the model's limit, charged to the quota and reported as usage.
pub(crate) fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// A JSON value's type as OpenAI's messages name it.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The checks, in the order the API makes them.
fn validate(body: &[u8], poison: Option<&str>) -> Result<Valid, Refusal> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else {
        return Err(Refusal::invalid(NOT_JSON));
    };
    if let Some(k) = o.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(Refusal::invalid(format!(
            "Unrecognized request argument supplied: {k}"
        )));
    }
    let model = model(&o)?;
    let inputs = inputs(o.remove("input"), model)?;
    let tokens: Vec<u64> = inputs.iter().map(|t| tokens(t)).collect();
    if let Some(&t) = tokens.iter().find(|&&t| t > model.max_tokens) {
        return Err(Refusal::invalid_param(
            format!(
                "This model's maximum context length is {} tokens, however you requested {t} tokens ({t} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
                model.max_tokens
            ),
            "input",
        ));
    }
    let encoding = encoding(o.get("encoding_format"))?;
    let dimensions = model.dimensions(o.get("dimensions"))?;
    user(o.get("user"))?;
    if let Some(p) = poison.filter(|p| !p.is_empty()) {
        if let Some(i) = inputs.iter().position(|t| t.contains(p)) {
            return Err(Refusal::invalid_param(
                format!("input {i} was refused (poison)"),
                "input",
            ));
        }
    }
    Ok(Valid {
        model,
        inputs,
        tokens,
        encoding,
        dimensions,
    })
}

/// `model`: a string naming a served model.
fn model(o: &Map<String, Value>) -> Result<&'static Served, Refusal> {
    match o.get("model") {
        None | Some(Value::Null) => Err(Refusal::invalid_param(
            "you must provide a model parameter",
            "model",
        )),
        Some(Value::String(name)) => {
            models::find(name).ok_or_else(|| Refusal::model_not_found(name))
        }
        Some(other) => Err(Refusal::invalid_param(
            format!(
                "Invalid type for 'model': expected a string, but got {} instead.",
                kind(other)
            ),
            "model",
        )),
    }
}

fn bad_input(what: impl std::fmt::Display) -> Refusal {
    Refusal::invalid_param(format!("'$.input' is invalid: {what}."), "input")
}

/// `input`: one non-blank string, or a non-empty array of them within the model's batch size.
/// Token arrays (integers) are refused: the emulator takes text only.
fn inputs(v: Option<Value>, model: &Served) -> Result<Vec<String>, Refusal> {
    let items = match v {
        None | Some(Value::Null) => return Err(bad_input("'input' is a required property")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(bad_input("the input is an empty string"))
        }
        Some(Value::String(s)) => return Ok(vec![s]),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(bad_input(format_args!(
                "expected a string or an array of strings, but got {}",
                kind(&other)
            )))
        }
    };
    if items.is_empty() {
        return Err(bad_input("the input is an empty array"));
    }
    if items.len() > model.max_inputs {
        return Err(model.too_many(items.len()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::String(s) if s.trim().is_empty() => {
                return Err(bad_input(format_args!("input[{i}] is an empty string")))
            }
            Value::String(s) => out.push(s),
            Value::Number(_) | Value::Array(_) => {
                return Err(bad_input(format_args!(
                    "input[{i}] is a token array; this server takes text only"
                )))
            }
            other => {
                return Err(bad_input(format_args!(
                    "input[{i}] should be a string, but got {}",
                    kind(&other)
                )))
            }
        }
    }
    Ok(out)
}

/// `encoding_format`: `float` (the default) or `base64`.
fn encoding(v: Option<&Value>) -> Result<Encoding, Refusal> {
    match v {
        None | Some(Value::Null) => Ok(Encoding::Float),
        Some(Value::String(s)) if s == "float" => Ok(Encoding::Float),
        Some(Value::String(s)) if s == "base64" => Ok(Encoding::Base64),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), String::from);
            Err(Refusal::invalid_param(
                format!("Invalid value for 'encoding_format': '{shown}'. Supported values are: 'float' and 'base64'."),
                "encoding_format",
            ))
        }
    }
}

/// `user`: an optional string (kept by OpenAI for abuse monitoring; ignored here).
fn user(v: Option<&Value>) -> Result<(), Refusal> {
    match v {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(other) => Err(Refusal::invalid_param(
            format!(
                "Invalid type for 'user': expected a string, but got {} instead.",
                kind(other)
            ),
            "user",
        )),
    }
}

#[derive(Serialize)]
struct Out<'a> {
    object: &'static str,
    data: Vec<Item<'a>>,
    model: &'static str,
    usage: Usage,
}

#[derive(Serialize)]
struct Item<'a> {
    object: &'static str,
    index: usize,
    embedding: Embedding<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding<'a> {
    Floats(Floats<'a>),
    /// Little-endian f32 bytes, standard base64 with padding.
    Base64(String),
    /// LiteLLM's Titan quirk: 1 where the component is positive, else 0.
    Bits(Vec<u8>),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// The answer body: each input's deterministic vector at the asked size.
fn render(v: &Valid, shuffle: bool) -> Vec<u8> {
    let model = v.model;
    let dim = v.dimensions.map_or(model.native_dim, |d| d as usize);
    let vectors: Vec<Vec<f32>> = v
        .inputs
        .iter()
        .map(|t| vectors::text(model.name, t, dim, model.normalized))
        .collect();
    let mut data: Vec<Item> = vectors
        .iter()
        .enumerate()
        .map(|(index, x)| Item {
            object: "embedding",
            index,
            embedding: embedding(model, v.encoding, x),
        })
        .collect();
    if shuffle {
        data.reverse();
    }
    let total = v.tokens.iter().sum();
    json::to_body(&Out {
        object: "list",
        data,
        model: model.name,
        usage: Usage {
            prompt_tokens: total,
            total_tokens: total,
        },
    })
}

fn embedding<'a>(model: &Served, encoding: Encoding, x: &'a [f32]) -> Embedding<'a> {
    match encoding {
        Encoding::Float => Embedding::Floats(Floats(x)),
        Encoding::Base64 if model.base64_is_binary => {
            Embedding::Bits(x.iter().map(|c| u8::from(*c > 0.0)).collect())
        }
        Encoding::Base64 => {
            let bytes: Vec<u8> = x.iter().flat_map(|c| c.to_le_bytes()).collect();
            Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}
