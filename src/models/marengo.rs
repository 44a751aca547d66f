//! TwelveLabs Marengo Embed 2.7 (`twelvelabs.marengo-embed-2-7-v1:0`, 1024-d, being retired) and
//! 3.0 (`twelvelabs.marengo-embed-3-0-v1:0`, 512-d; its vectors are not comparable with 2.7's).
//! Sync text and image; video and audio are async only.

use super::{
    f32_vec, wire_err, Family, ImageFormat, Input, Limits, Modality, ModelSpec, ParamSpec, Params,
    Parsed, Prices, Routes, WireError, MAX_BODY_BYTES,
};
use crate::config::Provider;
use serde_json::{json, Value};

const PRICES: Prices = Prices {
    per_1k_tokens: 0.0,
    per_image: 0.0001,
    per_query: 0.00007,
    per_video_second: 0.0007,
    per_audio_second: 0.00014,
};

const IMAGE_FORMATS: &[ImageFormat] = &[ImageFormat::Png, ImageFormat::Jpeg];

pub const V2_7: ModelSpec = ModelSpec {
    id: "twelvelabs.marengo-embed-2-7-v1:0",
    aliases: &[],
    profiles: &["us.", "eu."],
    provider: Provider::Bedrock,
    family: Family::Marengo27,
    modalities: &[Modality::Text, Modality::Image],
    text_image: false,
    dimensions: &[1024],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 77,
    normalized: false,
    limits: Limits {
        max_chars: None,
        max_tokens: Some(77),
        max_image_bytes: Some(5 * 1024 * 1024),
        max_image_side: None,
        image_formats: IMAGE_FORMATS,
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: Routes {
        sync: true,
        asynchronous: true,
        sync_needs_profile: true,
    },
    prices: PRICES,
    params: &[ParamSpec {
        key: "truncate",
        values: &["end", "none"],
        default: Some("end"),
    }],
    deprecation: Some(
        "Marengo Embed 2.7 is being retired (2026-11-30); move to twelvelabs.marengo-embed-3-0-v1:0 \
         (512-d, its vectors are not comparable with 2.7's, so re-embed everything)",
    ),
};

pub const V3_0: ModelSpec = ModelSpec {
    id: "twelvelabs.marengo-embed-3-0-v1:0",
    family: Family::Marengo30,
    text_image: true,
    dimensions: &[512],
    max_input_tokens: 500,
    limits: Limits {
        max_tokens: Some(500),
        ..V2_7.limits
    },
    routes: Routes {
        sync: true,
        asynchronous: true,
        sync_needs_profile: false,
    },
    params: &[],
    deprecation: None,
    ..V2_7
};

fn media(img: &super::Image<'_>) -> Value {
    json!({ "base64String": img.base64() })
}

pub(super) fn build(
    spec: &ModelSpec,
    params: &Params,
    inputs: &[Input<'_>],
) -> Result<Value, WireError> {
    let [input] = inputs else {
        return wire_err("Marengo takes one input per call");
    };
    if spec.family == Family::Marengo27 {
        return Ok(match input {
            Input::Text(t) => json!({
                "inputType": "text",
                "inputText": t,
                "textTruncate": params.truncate.as_deref().unwrap_or("end"),
            }),
            Input::Image(img) => json!({"inputType": "image", "mediaSource": media(img)}),
            Input::TextImage(..) => {
                return wire_err("Marengo 2.7 cannot embed text and image together")
            }
        });
    }
    Ok(match input {
        Input::Text(t) => json!({"inputType": "text", "text": {"inputText": t}}),
        Input::Image(img) => json!({"inputType": "image", "image": {"mediaSource": media(img)}}),
        Input::TextImage(t, img) => json!({
            "inputType": "text_image",
            "text_image": {"inputText": t, "mediaSource": media(img)},
        }),
    })
}

/// Accepts `{"data": [{"embedding": ..}]}`, `{"embedding": ..}` and
/// `{"embeddings": [{"embedding": ..}]}` (Marengo 3.0's shape is not pinned down).
pub(super) fn parse(v: &Value) -> Result<Parsed, WireError> {
    let first = if let Some(d) = v.get("data") {
        match d {
            Value::Array(a) => a.first(),
            Value::Object(_) => Some(d),
            _ => None,
        }
    } else if let Some(a) = v.get("embeddings").and_then(Value::as_array) {
        a.first()
    } else {
        Some(v)
    };
    let Some(e) = first.and_then(|f| f.get("embedding")) else {
        return wire_err("the response has no `embedding`");
    };
    Ok(Parsed {
        vectors: vec![f32_vec(e, "embedding")?],
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
        let p = Params::defaults(&V2_7);
        assert_eq!(
            build_request(&V2_7, &p, &[Input::Text("a dog")]).unwrap(),
            json!({"inputType": "text", "inputText": "a dog", "textTruncate": "end"})
        );
        let img = Image {
            bytes: b"\x89PNG\r\n\x1a\n",
            format: ImageFormat::Png,
        };
        assert_eq!(
            build_request(&V2_7, &p, &[Input::Image(img)]).unwrap(),
            json!({"inputType": "image", "mediaSource": {"base64String": "iVBORw0KGgo="}})
        );
        let p3 = Params::defaults(&V3_0);
        assert_eq!(
            build_request(&V3_0, &p3, &[Input::Text("a dog")]).unwrap(),
            json!({"inputType": "text", "text": {"inputText": "a dog"}})
        );
        assert_eq!(
            build_request(&V3_0, &p3, &[Input::TextImage("a dog", img)]).unwrap(),
            json!({"inputType": "text_image", "text_image": {"inputText": "a dog",
                   "mediaSource": {"base64String": "iVBORw0KGgo="}}})
        );
    }

    #[test]
    fn parses_every_known_shape() {
        let mut p = Params::defaults(&V3_0);
        p.dimension = 2;
        for body in [
            &br#"{"data":[{"embedding":[1,2]}]}"#[..],
            br#"{"embedding":[1,2]}"#,
            br#"{"embeddings":[{"embedding":[1,2]}]}"#,
        ] {
            let r = parse_response(&V3_0, &p, body, 1).unwrap();
            assert_eq!(r.vectors, vec![vec![1.0, 2.0]]);
        }
    }
}
