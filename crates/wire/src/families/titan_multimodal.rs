//! Amazon Titan Multimodal Embeddings G1 (`amazon.titan-embed-image-v1`): a text, an image, or
//! both (one vector averaging the two), one input per call.

use crate::codec::Codec;
use crate::floats::Vector;
use crate::json::from_json_fast;
use crate::spec::{AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, MAX_BODY_BYTES};
use crate::vocab::{
    wire_err, ImageFormat, Input, Modality, Parsed, Prices, ProviderKind, WireError,
};
use serde_json::{json, Map, Value};

pub const SPEC: ModelSpec = ModelSpec {
    id: "amazon.titan-embed-image-v1",
    aliases: &[],
    profiles: &[],
    provider: ProviderKind::Bedrock,
    codec: &TitanMultimodal,
    modalities: &[Modality::Text, Modality::Image],
    text_image: true,
    dimensions: &[1024, 384, 256],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    // The reference lists 128 (LiteLLM) and 256 (AWS) tokens; the smaller is the safe limit.
    max_input_tokens: 128,
    normalized: false,
    service_normalizes: false,
    limits: Limits {
        max_chars: None,
        max_tokens: Some(128),
        // AWS lists 25 MB and, on one page, 5 MB; 25 MB is the documented limit.
        max_image_bytes: Some(25 * 1024 * 1024),
        max_image_side: Some(2048),
        image_formats: &[ImageFormat::Png, ImageFormat::Jpeg],
        images_per_call: None,
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: Routes {
        sync: true,
        asynchronous: false,
        sync_needs_profile: false,
        batch: false,
    },
    async_limits: AsyncLimits::NONE,
    prices: Prices {
        per_1k_tokens: 0.0008,
        per_image: 0.00006,
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

/// Titan Multimodal's codec.
#[derive(Debug)]
pub struct TitanMultimodal;

impl Codec for TitanMultimodal {
    fn build_request(
        &self,
        _spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        build(params, inputs)
    }

    fn parse_response(
        &self,
        spec: &ModelSpec,
        _params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError> {
        parse(from_json_fast(spec, body)?)
    }
}

fn build(params: &Params, inputs: &[Input<'_>]) -> Result<Value, WireError> {
    let [input] = inputs else {
        return wire_err("amazon.titan-embed-image-v1 takes one input per call");
    };
    let mut body = Map::new();
    if let Some(t) = input.text() {
        body.insert("inputText".into(), json!(t));
    }
    if let Some(i) = input.image() {
        body.insert("inputImage".into(), json!(i.base64()));
    }
    body.insert(
        "embeddingConfig".into(),
        json!({ "outputEmbeddingLength": params.dimension }),
    );
    Ok(Value::Object(body))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    embedding: Option<Vector>,
    input_text_token_count: Option<u64>,
    message: Option<String>,
}

fn parse(r: Response) -> Result<Parsed, WireError> {
    let Some(e) = r.embedding else {
        return match r.message.filter(|m| !m.is_empty()) {
            Some(m) => wire_err(format!("the model reported: {m}")),
            None => wire_err("the response has no `embedding`"),
        };
    };
    Ok(Parsed {
        vectors: vec![e.0],
        other_types: Vec::new(),
        input_tokens: r.input_text_token_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_request, parse_response, Image};

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nxx";

    #[test]
    fn golden_requests() {
        let mut p = Params::defaults(&SPEC);
        p.dimension = 384;
        let img = Image {
            bytes: PNG,
            format: ImageFormat::Png,
        };
        assert_eq!(
            build_request(&SPEC, &p, &[Input::Text("a cat")]).unwrap(),
            json!({"inputText": "a cat", "embeddingConfig": {"outputEmbeddingLength": 384}})
        );
        assert_eq!(
            build_request(&SPEC, &p, &[Input::Image(img)]).unwrap(),
            json!({"inputImage": "iVBORw0KGgp4eA==", "embeddingConfig": {"outputEmbeddingLength": 384}})
        );
        let both = build_request(&SPEC, &p, &[Input::TextImage("a cat", img)]).unwrap();
        assert_eq!(both["inputText"], "a cat");
        assert_eq!(both["inputImage"], "iVBORw0KGgp4eA==");
    }

    #[test]
    fn parses_and_reports_model_messages() {
        let mut p = Params::defaults(&SPEC);
        p.dimension = 2;
        let r = parse_response(
            &SPEC,
            &p,
            br#"{"embedding":[1,0],"inputTextTokenCount":3,"message":null}"#,
            1,
        )
        .unwrap();
        assert_eq!(r.vectors, vec![vec![1.0, 0.0]]);
        assert_eq!(r.input_tokens, Some(3));
        let e = parse_response(&SPEC, &p, br#"{"message":"bad image"}"#, 1).unwrap_err();
        assert!(e.to_string().contains("bad image"));
    }
}
