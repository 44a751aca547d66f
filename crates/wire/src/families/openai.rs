//! OpenAI-compatible servers (`POST /v1/embeddings`): OpenAI itself, a LiteLLM proxy, Hugging
//! Face TEI, vLLM, Ollama. One spec for all of them: the server's model name, its dimension and
//! limits come from the pipeline file, since only the server knows them.
//!
//! Request: `{"input": [...], "model": ..., "encoding_format": "float" | "base64",
//! "dimensions": n}`. Response: `{"data": [{"index": i, "embedding": [...] | "<base64>"}],
//! "usage": {"prompt_tokens": t}}`; `data` is put back in input order by `index`.

use crate::codec::Codec;
use crate::floats::Vector;
use crate::json::from_json_fast;
use crate::spec::{AsyncLimits, Limits, ModelSpec, Params, Routes};
use crate::vocab::{
    wire_err, Input, Modality, ParseError, Parsed, Prices, ProviderKind, WireError,
};
use serde_json::{json, Map, Value};

/// The largest request body sent: TEI's default `--payload-limit` (2 MB); calls are filled
/// below it, and a server that takes less answers 413, which splits the call.
pub const MAX_BODY_BYTES: usize = 2_000_000;

/// Inputs per request OpenAI accepts (TEI's default is 32, the default `batch_size`).
pub const MAX_INPUTS: usize = 2048;

/// Every OpenAI-compatible model: the file names the server's model and its dimension.
pub const SPEC: ModelSpec = ModelSpec {
    id: "openai-compatible",
    aliases: &[],
    profiles: &[],
    provider: ProviderKind::OpenAi,
    codec: &OpenAi,
    modalities: &[Modality::Text],
    text_image: false,
    // Not a choice: the pipeline file's `dimensions` is required for these models.
    dimensions: &[1536],
    max_inputs_per_call: MAX_INPUTS,
    default_batch_size: 32,
    // Unknown here; `max_input_tokens` in the file when the server's is known.
    max_input_tokens: 8192,
    normalized: true,
    service_normalizes: false,
    limits: Limits {
        max_body_bytes: MAX_BODY_BYTES,
        ..Limits::NONE
    },
    routes: Routes {
        sync: true,
        asynchronous: false,
        sync_needs_profile: false,
        batch: false,
    },
    async_limits: AsyncLimits::NONE,
    // Self-hosted servers cost nothing per token; `[model.prices]` for OpenAI's list prices.
    prices: Prices::FREE,
    params: &[],
    deprecation: None,
};

/// Values `encoding_format` may take.
pub const ENCODING_FORMATS: &[&str] = &["float", "base64"];

/// The OpenAI embeddings codec.
#[derive(Debug)]
pub struct OpenAi;

impl Codec for OpenAi {
    fn build_request(
        &self,
        spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        let prefix = if params.input_type.as_deref() == Some("query") {
            params.query_prefix.as_deref()
        } else {
            params.document_prefix.as_deref()
        }
        .unwrap_or("");
        let texts = inputs
            .iter()
            .map(|i| match i {
                Input::Text(t) => Ok(Value::String(format!("{prefix}{t}"))),
                _ => wire_err(format!("{} takes text only", spec.id)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(model) = &params.model else {
            return wire_err("an OpenAI-compatible request needs the server's model name");
        };
        let mut body = Map::new();
        body.insert("input".into(), Value::Array(texts));
        body.insert("model".into(), json!(model));
        body.insert(
            "encoding_format".into(),
            json!(params.encoding_format.as_deref().unwrap_or("float")),
        );
        if params.send_dimensions {
            body.insert("dimensions".into(), json!(params.dimension));
        }
        Ok(Value::Object(body))
    }

    fn parse_response(
        &self,
        spec: &ModelSpec,
        _params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError> {
        let r: Response = from_json_fast(spec, body)?;
        let n = r.data.len();
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
        for (k, item) in r.data.into_iter().enumerate() {
            let i = item.index.unwrap_or(k);
            let slot = vectors.get_mut(i).ok_or_else(|| {
                WireError(format!("`data` has index {i}, beyond its {n} entries"))
            })?;
            if slot.is_some() {
                return wire_err(format!("`data` has index {i} twice"));
            }
            *slot = Some(item.embedding.into_floats()?);
        }
        Ok(Parsed {
            vectors: vectors.into_iter().map(|v| v.unwrap_or_default()).collect(),
            other_types: Vec::new(),
            input_tokens: r.usage.and_then(|u| u.prompt_tokens.or(u.total_tokens)),
        })
    }

    /// Floats were asked; vectors of only 0s and 1s are binary embeddings (a LiteLLM proxy in
    /// front of Titan Text v2 answers `encoding_format = "base64"` so), never to be stored.
    /// (Every vector of the call: one odd vector is no setting's fault.)
    fn check_answer(&self, params: &Params, parsed: &Parsed) -> Result<(), ParseError> {
        let binary = |v: &Vec<f32>| {
            v.len() >= 8
                && v.iter().all(|&x| x == 0.0 || x == 1.0)
                && v.contains(&0.0)
                && v.contains(&1.0)
        };
        if !parsed.vectors.is_empty() && parsed.vectors.iter().all(binary) {
            let format = params.encoding_format.as_deref().unwrap_or("float");
            return Err(ParseError::Mismatch(format!(
                "the server answered with binary vectors (every value 0 or 1) where \
                 encoding_format = \"{format}\" asked for floats; a LiteLLM proxy in front of \
                 Titan Text v2 does this for \"base64\": set encoding_format = \"float\""
            )));
        }
        Ok(())
    }

    /// Queries take the query prefix.
    fn query_params(&self, params: &Params) -> Params {
        Params {
            input_type: Some("query".into()),
            ..params.clone()
        }
    }
}

#[derive(serde::Deserialize)]
struct Response {
    data: Vec<Item>,
    usage: Option<UsageBody>,
}

#[derive(serde::Deserialize)]
struct Item {
    index: Option<usize>,
    embedding: Embedding,
}

#[derive(serde::Deserialize)]
struct UsageBody {
    prompt_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// A float array, or (`encoding_format = "base64"`) the base64 of little-endian f32s.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Embedding {
    Floats(Vector),
    Base64(String),
}

impl Embedding {
    fn into_floats(self) -> Result<Vec<f32>, WireError> {
        match self {
            Embedding::Floats(v) => Ok(v.0),
            Embedding::Base64(s) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| WireError(format!("an `embedding` is not base64: {e}")))?;
                if bytes.len() % 4 != 0 {
                    return wire_err(format!(
                        "a base64 `embedding` has {} bytes, not a whole number of float32s",
                        bytes.len()
                    ));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_request, parse_response};

    fn params(dim: usize) -> Params {
        let mut p = Params::defaults(&SPEC);
        p.dimension = dim;
        p.model = Some("text-embedding-3-small".into());
        p
    }

    #[test]
    fn golden_requests() {
        let mut p = params(512);
        let body = build_request(&SPEC, &p, &[Input::Text("a"), Input::Text("b")]).unwrap();
        assert_eq!(
            body,
            json!({"input": ["a", "b"], "model": "text-embedding-3-small",
                   "encoding_format": "float", "dimensions": 512})
        );
        p.send_dimensions = false;
        p.encoding_format = Some("base64".into());
        p.document_prefix = Some("passage: ".into());
        p.query_prefix = Some("query: ".into());
        let body = build_request(&SPEC, &p, &[Input::Text("a")]).unwrap();
        assert_eq!(
            body,
            json!({"input": ["passage: a"], "model": "text-embedding-3-small",
                   "encoding_format": "base64"})
        );
        let q = p.for_query(&SPEC);
        let body = build_request(&SPEC, &q, &[Input::Text("a")]).unwrap();
        assert_eq!(body["input"], json!(["query: a"]));
    }

    #[test]
    fn parses_floats_and_base64_in_index_order() {
        let p = params(2);
        let floats = br#"{"object":"list","data":[
            {"object":"embedding","index":1,"embedding":[0.5,0.25]},
            {"object":"embedding","index":0,"embedding":[-1.0,2.0]}],
            "model":"m","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let r = parse_response(&SPEC, &p, floats, 2).unwrap();
        assert_eq!(r.vectors, vec![vec![-1.0, 2.0], vec![0.5, 0.25]]);
        assert_eq!(r.input_tokens, Some(7));
        use base64::Engine;
        let b64 = |v: &[f32]| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let body = json!({"data": [
            {"index": 0, "embedding": b64(&[-1.0, 2.0])},
            {"index": 1, "embedding": b64(&[0.5, 0.25])}]});
        let r = parse_response(&SPEC, &p, body.to_string().as_bytes(), 2).unwrap();
        assert_eq!(r.vectors, vec![vec![-1.0, 2.0], vec![0.5, 0.25]]);
        assert_eq!(r.input_tokens, None);
    }

    #[test]
    fn refuses_what_cannot_be_used() {
        let p = params(2);
        let unusable = |body: &str| {
            matches!(
                parse_response(&SPEC, &p, body.as_bytes(), 1),
                Err(ParseError::Unusable(_))
            )
        };
        assert!(unusable(r#"{"data":[{"index":3,"embedding":[1.5,2.5]}]}"#));
        assert!(unusable(r#"{"data":[{"index":0,"embedding":"AAA"}]}"#));
        assert!(unusable(r#"{"error":{"message":"x"}}"#));
        assert!(unusable(r#"{"data":[{"index":0,"embedding":[1.5,2.5]},"#));
        // Another dimension: a mismatch, not a retry.
        let e = parse_response(&SPEC, &p, br#"{"data":[{"embedding":[1.5,2.5,3.5]}]}"#, 1);
        assert!(matches!(e, Err(ParseError::Mismatch(_))), "{e:?}");
    }

    #[test]
    fn binary_vectors_are_a_mismatch() {
        let mut p = params(8);
        p.encoding_format = Some("base64".into());
        let body = br#"{"data":[{"index":0,"embedding":[1,0,0,1,1,1,0,1]}]}"#;
        let e = parse_response(&SPEC, &p, body, 1).unwrap_err();
        let ParseError::Mismatch(m) = e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains("binary") && m.contains("encoding_format = \"float\""),
            "{m}"
        );
        // Floats that happen to hold a 0 or a 1 are fine, and so is an all-zero vector.
        let ok = br#"{"data":[{"index":0,"embedding":[1,0,0.5,1,1,1,0,1]}]}"#;
        assert!(parse_response(&SPEC, &p, ok, 1).is_ok());
        let zeros = br#"{"data":[{"index":0,"embedding":[0,0,0,0,0,0,0,0]}]}"#;
        assert!(parse_response(&SPEC, &p, zeros, 1).is_ok());
    }
}
