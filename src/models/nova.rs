//! Amazon Nova 2 Multimodal Embeddings (`amazon.nova-2-multimodal-embeddings-v1:0`): one input
//! per call; sync `SINGLE_EMBEDDING` for text and images (video/audio go async).

use super::{
    wire_err, Family, ImageFormat, Input, Limits, Modality, ModelSpec, ParamSpec, Params, Parsed,
    Prices, Routes, WireError, MAX_BODY_BYTES,
};
use crate::config::Provider;
use serde_json::{json, Value};

pub const PURPOSES: &[&str] = &[
    "GENERIC_INDEX",
    "GENERIC_RETRIEVAL",
    "TEXT_RETRIEVAL",
    "IMAGE_RETRIEVAL",
    "VIDEO_RETRIEVAL",
    "DOCUMENT_RETRIEVAL",
    "AUDIO_RETRIEVAL",
    "CLASSIFICATION",
    "CLUSTERING",
];

pub const SPEC: ModelSpec = ModelSpec {
    id: "amazon.nova-2-multimodal-embeddings-v1:0",
    aliases: &[],
    profiles: &[],
    provider: Provider::Bedrock,
    family: Family::Nova2,
    modalities: &[Modality::Text, Modality::Image],
    text_image: false,
    dimensions: &[3072, 1024, 384, 256],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 8192,
    normalized: false,
    limits: Limits {
        max_chars: Some(8192),
        max_tokens: Some(8192),
        // 25 MB after base64 (4/3 inflation).
        max_image_bytes: Some(18_750_000),
        max_image_side: None,
        image_formats: &[
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Webp,
        ],
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: Routes {
        sync: true,
        asynchronous: true,
        sync_needs_profile: false,
    },
    prices: Prices {
        per_1k_tokens: 0.000135,
        per_image: 0.00006,
        per_query: 0.0,
        per_video_second: 0.0007,
        per_audio_second: 0.00014,
    },
    params: &[
        ParamSpec {
            key: "purpose",
            values: PURPOSES,
            default: Some("GENERIC_INDEX"),
        },
        ParamSpec {
            key: "truncate",
            values: &["END", "START", "NONE"],
            default: Some("END"),
        },
        ParamSpec {
            key: "detail_level",
            values: &["STANDARD_IMAGE", "DOCUMENT_IMAGE"],
            default: Some("STANDARD_IMAGE"),
        },
    ],
    deprecation: None,
};

pub(super) fn build(params: &Params, inputs: &[Input<'_>]) -> Result<Value, WireError> {
    let [input] = inputs else {
        return wire_err("Nova takes one input per call");
    };
    let mut single = json!({
        "embeddingPurpose": params.input_type.as_deref().unwrap_or("GENERIC_INDEX"),
        "embeddingDimension": params.dimension,
    });
    match input {
        Input::Text(t) => {
            single["text"] = json!({
                "truncationMode": params.truncate.as_deref().unwrap_or("END"),
                "value": t,
            });
        }
        Input::Image(img) => {
            single["image"] = json!({
                "format": img.format.as_str(),
                "detailLevel": params.detail_level.as_deref().unwrap_or("STANDARD_IMAGE"),
                "source": {"bytes": img.base64()},
            });
        }
        Input::TextImage(..) => return wire_err("Nova embeds text and images separately"),
    }
    Ok(json!({
        "schemaVersion": "nova-multimodal-embed-v1",
        "taskType": "SINGLE_EMBEDDING",
        "singleEmbeddingParams": single,
    }))
}

#[derive(serde::Deserialize)]
pub(super) struct Response {
    embeddings: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    embedding: Vec<f32>,
}

pub(super) fn parse(r: Response) -> Result<Parsed, WireError> {
    let Some(first) = r.embeddings.into_iter().next() else {
        return wire_err("the response's `embeddings` list is empty");
    };
    Ok(Parsed {
        vectors: vec![first.embedding],
        other_types: Vec::new(),
        input_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{build_request, parse_response, Image};

    #[test]
    fn golden_requests() {
        let mut p = Params::defaults(&SPEC);
        assert_eq!(
            build_request(&SPEC, &p, &[Input::Text("hello")]).unwrap(),
            json!({"schemaVersion": "nova-multimodal-embed-v1", "taskType": "SINGLE_EMBEDDING",
                   "singleEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX",
                     "embeddingDimension": 3072,
                     "text": {"truncationMode": "END", "value": "hello"}}})
        );
        p.dimension = 256;
        p.input_type = Some("DOCUMENT_RETRIEVAL".into());
        p.detail_level = Some("DOCUMENT_IMAGE".into());
        let img = Image {
            bytes: b"RIFF\0\0\0\0WEBP",
            format: ImageFormat::Webp,
        };
        let b = build_request(&SPEC, &p, &[Input::Image(img)]).unwrap();
        assert_eq!(
            b["singleEmbeddingParams"],
            json!({"embeddingPurpose": "DOCUMENT_RETRIEVAL", "embeddingDimension": 256,
                   "image": {"format": "webp", "detailLevel": "DOCUMENT_IMAGE",
                             "source": {"bytes": "UklGRgAAAABXRUJQ"}}})
        );
    }

    #[test]
    fn parses_single_embedding() {
        let mut p = Params::defaults(&SPEC);
        p.dimension = 2;
        let r = parse_response(
            &SPEC,
            &p,
            br#"{"embeddings":[{"embeddingType":"TEXT","embedding":[0.6,0.8],"truncatedCharLength":5}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(r.vectors, vec![vec![0.6, 0.8]]);
        assert_eq!(r.input_tokens, None);
        assert!(parse_response(&SPEC, &p, br#"{"embeddings":[]}"#, 1).is_err());
    }
}
