//! The models the OpenAI-compatible endpoint serves, each with the limits and quirks of the
//! server that really serves it (OpenAI, Ollama, vLLM, TEI, a LiteLLM proxy route). The
//! emulator's own table: nothing here comes from the client.

use super::Refusal;
use serde_json::Value;

/// What a model makes of the `dimensions` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dims {
    /// Any size from 1 to the native one (Matryoshka models: the vector is made at that size).
    UpToNative,
    /// Not accepted at all (OpenAI's ada-002).
    Refused,
    /// Only the native size (vLLM and TEI refuse to cut a model not trained for it).
    NativeOnly,
    /// One of these sizes (Bedrock's Titan v2 behind LiteLLM).
    OneOf(&'static [u64]),
}

/// How a request with too many inputs is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batch {
    /// OpenAI: 400 `invalid_request_error`.
    OpenAi,
    /// TEI: 422 with its own `{"error","error_type"}` body.
    Tei,
}

/// One served model.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) name: &'static str,
    pub(crate) native_dim: usize,
    pub(crate) dims: Dims,
    pub(crate) max_inputs: usize,
    /// Most tokens per input (estimated: see [`super::request::tokens`]).
    pub(crate) max_tokens: u64,
    pub(crate) normalized: bool,
    pub(crate) batch: Batch,
    /// `encoding_format: "base64"` is answered with an array of 0/1 integers: LiteLLM 1.108's
    /// mapping of it onto Titan's binary embeddings, which a client must refuse.
    pub(crate) base64_is_binary: bool,
}

const fn openai(name: &'static str, native_dim: usize, dims: Dims) -> Served {
    Served {
        name,
        native_dim,
        dims,
        max_inputs: 2048,
        max_tokens: 8191,
        normalized: true,
        batch: Batch::OpenAi,
        base64_is_binary: false,
    }
}

/// The served models, by exact (case-sensitive) name.
pub(crate) const MODELS: &[Served] = &[
    openai("text-embedding-3-small", 1536, Dims::UpToNative),
    openai("text-embedding-3-large", 3072, Dims::UpToNative),
    openai("text-embedding-ada-002", 1536, Dims::Refused),
    // Ollama's OpenAI-compatible endpoint (context 2048).
    Served {
        name: "nomic-embed-text",
        native_dim: 768,
        dims: Dims::NativeOnly,
        max_inputs: 2048,
        max_tokens: 2048,
        normalized: true,
        batch: Batch::OpenAi,
        base64_is_binary: false,
    },
    // Text Embeddings Inference with its default `--max-client-batch-size 32`.
    Served {
        name: "BAAI/bge-small-en-v1.5",
        native_dim: 384,
        dims: Dims::NativeOnly,
        max_inputs: 32,
        max_tokens: 512,
        normalized: true,
        batch: Batch::Tei,
        base64_is_binary: false,
    },
    // A LiteLLM proxy route to Bedrock.
    Served {
        name: "bedrock/amazon.titan-embed-text-v2:0",
        native_dim: 1024,
        dims: Dims::OneOf(&[256, 512, 1024]),
        max_inputs: 2048,
        max_tokens: 8192,
        normalized: true,
        batch: Batch::OpenAi,
        base64_is_binary: true,
    },
];

/// The served model of this exact name.
pub(crate) fn find(name: &str) -> Option<&'static Served> {
    MODELS.iter().find(|m| m.name == name)
}

impl Served {
    /// The vector size a request asks for (`None`: the native size), or why it is refused.
    pub(crate) fn dimensions(&self, v: Option<&Value>) -> Result<Option<u64>, Refusal> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let below = |d: i64| {
            Refusal::invalid_param(
                format!("Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {d} instead."),
                "dimensions",
            )
        };
        let d = match (v.as_u64(), v.as_i64()) {
            (Some(0), _) => return Err(below(0)),
            (Some(d), _) => d,
            (None, Some(negative)) => return Err(below(negative)),
            _ => {
                return Err(Refusal::invalid_param(
                    format!(
                        "Invalid type for 'dimensions': expected an integer, but got {} instead.",
                        super::request::kind(v)
                    ),
                    "dimensions",
                ))
            }
        };
        match self.dims {
            Dims::UpToNative if d <= self.native_dim as u64 => Ok(Some(d)),
            Dims::UpToNative => Err(Refusal::invalid_param(
                format!(
                    "Invalid 'dimensions': integer above maximum value. Expected a value <= {}, but got {d} instead.",
                    self.native_dim
                ),
                "dimensions",
            )),
            Dims::Refused => Err(Refusal::invalid_param(
                "This model does not support specifying dimensions.",
                "dimensions",
            )),
            Dims::NativeOnly if d == self.native_dim as u64 => Ok(Some(d)),
            Dims::NativeOnly => Err(Refusal::vllm(format!(
                "Model \"{}\" does not support matryoshka representation, changing output dimensions will lead to poor results.",
                self.name
            ))),
            Dims::OneOf(sizes) if sizes.contains(&d) => Ok(Some(d)),
            Dims::OneOf(_) => Err(Refusal::invalid_param(
                format!(
                    "litellm.BadRequestError: BedrockException - {{\"message\":\"Malformed input request: #/dimensions: {d} is not a valid enum value, please reformat your input and try again.\"}}"
                ),
                "dimensions",
            )),
        }
    }

    /// The refusal of a request with `n` inputs, more than the model takes.
    pub(crate) fn too_many(&self, n: usize) -> Refusal {
        match self.batch {
            // (TEI's router answers a batch over `--max-client-batch-size` with 422.)
            Batch::Tei => Refusal::tei(
                422,
                "batch_too_large",
                format!(
                    "batch size {n} > maximum allowed batch size {}",
                    self.max_inputs
                ),
                "Validation",
            ),
            Batch::OpenAi => Refusal::invalid_param(
                format!(
                    "'$.input' is invalid: {n} inputs were sent, maximum {} per request.",
                    self.max_inputs
                ),
                "input",
            ),
        }
    }
}
