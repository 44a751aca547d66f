//! Amazon Titan Text Embeddings G1 (`amazon.titan-embed-text-v1`) and V2
//! (`amazon.titan-embed-text-v2:0`): one text per call, token count in the response.

use crate::codec::Codec;
use crate::floats::Vector;
use crate::json::from_json_fast;
use crate::spec::{AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, MAX_BODY_BYTES};
use crate::vocab::{
    wire_err, ImageFormat, Input, Modality, Parsed, Prices, ProviderKind, WireError,
};
use serde_json::{json, Map, Value};

const ROUTES: Routes = Routes {
    sync: true,
    asynchronous: false,
    sync_needs_profile: false,
    batch: false,
};

/// V2 is on AWS's batch inference list; V1 is not.
const ROUTES_V2: Routes = Routes {
    batch: true,
    ..ROUTES
};

const NO_IMAGES: &[ImageFormat] = &[];

pub const V1: ModelSpec = ModelSpec {
    id: "amazon.titan-embed-text-v1",
    aliases: &["amazon.titan-embed-g1-text-02"],
    profiles: &[],
    provider: ProviderKind::Bedrock,
    codec: &TitanText { v2: false },
    modalities: &[Modality::Text],
    text_image: false,
    dimensions: &[1536],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 8192,
    normalized: false,
    service_normalizes: false,
    limits: Limits {
        max_chars: Some(50_000),
        max_tokens: Some(8192),
        max_image_bytes: None,
        max_image_side: None,
        image_formats: NO_IMAGES,
        images_per_call: None,
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: ROUTES,
    async_limits: AsyncLimits::NONE,
    prices: Prices {
        per_1k_tokens: 0.0001,
        per_image: 0.0,
        per_query: 0.0,
        per_video_second: 0.0,
        per_audio_second: 0.0,
    },
    params: &[ParamSpec {
        key: "truncate",
        values: &["NONE", "END", "START"],
        default: Some("NONE"),
    }],
    deprecation: None,
};

pub const V2: ModelSpec = ModelSpec {
    id: "amazon.titan-embed-text-v2:0",
    aliases: &[],
    profiles: &[],
    provider: ProviderKind::Bedrock,
    codec: &TitanText { v2: true },
    modalities: &[Modality::Text],
    text_image: false,
    dimensions: &[1024, 512, 256],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 8192,
    normalized: true,
    // `normalize` is a request parameter: the service normalises.
    service_normalizes: true,
    limits: V1.limits,
    routes: ROUTES_V2,
    async_limits: AsyncLimits::NONE,
    prices: Prices {
        per_1k_tokens: 0.00002,
        per_image: 0.0,
        per_query: 0.0,
        per_video_second: 0.0,
        per_audio_second: 0.0,
    },
    params: &[
        ParamSpec {
            key: "truncate",
            values: &["NONE", "END", "START"],
            default: Some("NONE"),
        },
        ParamSpec {
            key: "embedding_types",
            values: &["float", "binary"],
            default: None,
        },
    ],
    deprecation: None,
};

/// Titan Text's codec; `v2` adds dimensions, normalisation and embedding types to the body.
#[derive(Debug)]
pub struct TitanText {
    v2: bool,
}

impl Codec for TitanText {
    fn build_request(
        &self,
        spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        build(self.v2, spec, params, inputs)
    }

    fn parse_response(
        &self,
        spec: &ModelSpec,
        params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError> {
        parse(params, from_json_fast(spec, body)?)
    }
}

fn build(
    v2: bool,
    spec: &ModelSpec,
    params: &Params,
    inputs: &[Input<'_>],
) -> Result<Value, WireError> {
    let [Input::Text(text)] = inputs else {
        return wire_err(format!("{} takes one text per call", spec.id));
    };
    let mut body = Map::new();
    body.insert("inputText".into(), json!(text));
    if v2 {
        body.insert("dimensions".into(), json!(params.dimension));
        body.insert("normalize".into(), json!(params.normalize));
        if !params.embedding_types.is_empty() {
            body.insert("embeddingTypes".into(), json!(params.requested_types()));
        }
    }
    Ok(Value::Object(body))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    embedding: Option<Vector>,
    input_text_token_count: Option<u64>,
    embeddings_by_type: Option<ByType>,
}

#[derive(serde::Deserialize)]
struct ByType {
    float: Option<Vector>,
    binary: Option<Vector>,
}

fn parse(params: &Params, r: Response) -> Result<Parsed, WireError> {
    let (float, binary) = match r.embeddings_by_type {
        Some(b) => (b.float.or(r.embedding), b.binary),
        None => (r.embedding, None),
    };
    let Some(float) = float else {
        return wire_err("the response has neither `embedding` nor `embeddingsByType`");
    };
    let mut other_types = Vec::new();
    if params.embedding_types.iter().any(|t| t == "binary") {
        match binary {
            Some(b) => other_types.push((
                "binary".to_string(),
                vec![b.into_integers("embeddingsByType.binary")?],
            )),
            None => return wire_err("`embeddingsByType.binary` is missing"),
        }
    }
    Ok(Parsed {
        vectors: vec![float.0],
        other_types,
        input_tokens: r.input_text_token_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_request, parse_response};

    #[test]
    fn v1_body_is_only_input_text() {
        let p = Params::defaults(&V1);
        let body = build_request(&V1, &p, &[Input::Text("hello")]).unwrap();
        assert_eq!(body, json!({"inputText": "hello"}));
    }

    #[test]
    fn v2_golden_requests() {
        let mut p = Params::defaults(&V2);
        assert_eq!(
            build_request(&V2, &p, &[Input::Text("hi")]).unwrap(),
            json!({"inputText": "hi", "dimensions": 1024, "normalize": true})
        );
        p.dimension = 256;
        p.normalize = false;
        p.embedding_types = vec!["binary".into()];
        assert_eq!(
            build_request(&V2, &p, &[Input::Text("hi")]).unwrap(),
            json!({"inputText": "hi", "dimensions": 256, "normalize": false,
                   "embeddingTypes": ["float", "binary"]})
        );
        assert!(build_request(&V2, &p, &[Input::Text("a"), Input::Text("b")]).is_err());
    }

    #[test]
    fn v2_parses_embedding_and_by_type() {
        let mut p = Params::defaults(&V2);
        p.dimension = 3;
        let plain = br#"{"embedding":[0.1,0.2,0.3],"inputTextTokenCount":7}"#;
        let r = parse_response(&V2, &p, plain, 1).unwrap();
        assert_eq!(r.vectors, vec![vec![0.1, 0.2, 0.3]]);
        assert_eq!(r.input_tokens, Some(7));
        p.embedding_types = vec!["binary".into()];
        let typed = br#"{"embedding":[9,9,9],"inputTextTokenCount":2,
            "embeddingsByType":{"float":[0.5,0.5,0.5],"binary":[1,0,1]}}"#;
        let r = parse_response(&V2, &p, typed, 1).unwrap();
        assert_eq!(r.vectors, vec![vec![0.5, 0.5, 0.5]]);
        assert_eq!(
            r.other_types,
            vec![("binary".to_string(), vec![vec![1, 0, 1]])]
        );
        // Wrong dimension and missing fields are errors, not garbage vectors.
        p.dimension = 4;
        assert!(parse_response(&V2, &p, plain, 1).is_err());
        assert!(parse_response(&V2, &p, br#"{"x":1}"#, 1).is_err());
        assert!(parse_response(&V2, &p, b"<html>", 1).is_err());
    }
}
