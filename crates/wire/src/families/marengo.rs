//! TwelveLabs Marengo Embed 2.7 (`twelvelabs.marengo-embed-2-7-v1:0`, 1024-d, being retired) and
//! 3.0 (`twelvelabs.marengo-embed-3-0-v1:0`, 512-d; its vectors are not comparable with 2.7's).
//! Sync text and image; video and audio are async only.

use crate::codec::{billed_usage, AsyncResults, Codec};
use crate::json::{f32_vec, from_json};
use crate::spec::{
    AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, SegmentSeconds, MAX_BODY_BYTES,
};
use crate::vocab::{
    wire_err, Image, ImageFormat, Input, MediaRef, Modality, Parsed, Prices, ProviderKind, Segment,
    Usage, WireError,
};
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
    provider: ProviderKind::Bedrock,
    codec: &Marengo { v27: true },
    modalities: &[Modality::Text, Modality::Image],
    text_image: false,
    dimensions: &[1024],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 77,
    normalized: false,
    service_normalizes: false,
    limits: Limits {
        max_chars: None,
        max_tokens: Some(77),
        max_image_bytes: Some(5 * 1024 * 1024),
        max_image_side: None,
        image_formats: IMAGE_FORMATS,
        images_per_call: None,
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: Routes {
        sync: true,
        asynchronous: true,
        sync_needs_profile: true,
        batch: false,
    },
    async_limits: AsyncLimits {
        segment_seconds: Some(SegmentSeconds {
            min: 2.0,
            max: 10.0,
            whole: false,
        }),
        segment_chars: None,
        long_text: false,
    },
    prices: PRICES,
    params: &[
        ParamSpec {
            key: "truncate",
            values: &["end", "none"],
            default: Some("end"),
        },
        ParamSpec {
            key: "embedding_options",
            values: &["visual-text", "visual-image", "audio"],
            default: None,
        },
        ParamSpec {
            key: "bucket_owner",
            values: &[],
            default: None,
        },
    ],
    deprecation: Some(
        "Marengo Embed 2.7 is being retired (2026-11-30); move to twelvelabs.marengo-embed-3-0-v1:0 \
         (512-d, its vectors are not comparable with 2.7's, so re-embed everything)",
    ),
};

pub const V3_0: ModelSpec = ModelSpec {
    id: "twelvelabs.marengo-embed-3-0-v1:0",
    codec: &Marengo { v27: false },
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
        batch: false,
    },
    async_limits: AsyncLimits {
        segment_seconds: Some(SegmentSeconds {
            min: 1.0,
            max: 3600.0,
            whole: true,
        }),
        segment_chars: None,
        long_text: false,
    },
    params: &[
        ParamSpec {
            key: "embedding_options",
            values: &["visual", "audio", "transcription"],
            default: None,
        },
        ParamSpec {
            key: "bucket_owner",
            values: &[],
            default: None,
        },
    ],
    deprecation: None,
    ..V2_7
};

/// Marengo's codec; `v27` selects 2.7's flat request shapes. Text inputs are billed as queries;
/// async jobs write one `output.json`.
#[derive(Debug)]
pub struct Marengo {
    v27: bool,
}

/// The file a finished async job writes its segments to.
const OUTPUT_FILE: &str = "output.json";

impl Codec for Marengo {
    fn build_request(
        &self,
        _spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        build(self.v27, params, inputs)
    }

    fn parse_response(
        &self,
        spec: &ModelSpec,
        _params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError> {
        parse(&from_json(spec, body)?)
    }

    fn build_async(
        &self,
        _spec: &ModelSpec,
        params: &Params,
        media: &MediaRef<'_>,
    ) -> Result<Value, WireError> {
        Ok(build_async(self.v27, params, media))
    }

    /// Marengo bills text per query, not per token.
    fn usage(
        &self,
        inputs: &[Input<'_>],
        parsed: &Parsed,
        _pixels: &dyn Fn(&Image<'_>) -> Option<u64>,
    ) -> Usage {
        let mut u = billed_usage(inputs, parsed);
        u.queries = inputs.iter().filter(|i| i.text().is_some()).count() as u64;
        u
    }

    fn async_results(&self) -> Option<AsyncResults> {
        Some(AsyncResults::Segments(OUTPUT_FILE))
    }

    /// Every segment is in `output.json` (none is skipped).
    fn parse_async_segments(
        &self,
        _kind: &str,
        body: &[u8],
    ) -> Result<(Vec<Segment>, usize), WireError> {
        Ok((parse_async(body)?, 0))
    }
}

fn media(img: &Image<'_>) -> Value {
    json!({ "base64String": img.base64() })
}

fn build(v27: bool, params: &Params, inputs: &[Input<'_>]) -> Result<Value, WireError> {
    let [input] = inputs else {
        return wire_err("Marengo takes one input per call");
    };
    if v27 {
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

/// The `modelInput` of an async job for a video or audio file in S3 (base model id).
fn build_async(v27: bool, params: &Params, media: &MediaRef<'_>) -> Value {
    let mut location = json!({"uri": media.uri});
    if let Some(owner) = &params.bucket_owner {
        location["bucketOwner"] = json!(owner);
    }
    let source = json!({"s3Location": location});
    let kind = media.modality.as_str();
    // Visual embeddings need pictures: an audio file gets only the sound options.
    let options: Vec<&String> = params
        .embedding_options
        .iter()
        .filter(|o| media.modality == Modality::Video || !o.starts_with("visual"))
        .collect();
    if v27 {
        let mut v = json!({"inputType": kind, "mediaSource": source});
        if let Some(s) = params.segment_seconds {
            v["useFixedLengthSec"] = json!(s);
        }
        if !options.is_empty() {
            v["embeddingOption"] = json!(options);
        }
        return v;
    }
    let mut m = json!({"mediaSource": source});
    if let Some(s) = params.segment_seconds {
        m["segmentation"] = json!({"method": "fixed", "fixed": {"durationSec": s as u64}});
    }
    if !options.is_empty() {
        m["embeddingOption"] = json!(options);
    }
    let mut v = json!({"inputType": kind});
    v[kind] = m;
    v
}

/// A finished job's `output.json`: `{"data": [{embedding, embeddingOption, startSec, endSec}]}`
/// (also `embeddings[]` or a bare list). Segments are numbered per embedding option, in order.
pub fn parse_async(output: &[u8]) -> Result<Vec<Segment>, WireError> {
    let v: Value = serde_json::from_slice(output)
        .map_err(|e| WireError(format!("output.json is not readable: {e}")))?;
    let items = match &v {
        Value::Array(a) => a,
        _ => match v.get("data").or_else(|| v.get("embeddings")) {
            Some(Value::Array(a)) => a,
            _ => return wire_err("output.json has no `data` list"),
        },
    };
    let mut next: std::collections::HashMap<String, u32> = Default::default();
    items
        .iter()
        .map(|it| {
            let kind = it["embeddingOption"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let i = next.entry(kind.clone()).or_default();
            let seg = Segment {
                index: *i,
                start_sec: it["startSec"].as_f64(),
                end_sec: it["endSec"].as_f64().or_else(|| it["endsec"].as_f64()),
                start_char: None,
                end_char: None,
                vector: f32_vec(&it["embedding"], "embedding")?,
                kind,
            };
            *i += 1;
            Ok(seg)
        })
        .collect()
}

/// Accepts `{"data": [{"embedding": ..}]}`, `{"embedding": ..}` and
/// `{"embeddings": [{"embedding": ..}]}` (Marengo 3.0's shape is not pinned down).
fn parse(v: &Value) -> Result<Parsed, WireError> {
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
    use crate::{build_request, parse_response};

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
    fn golden_async_requests_and_output() {
        let mut p = Params::defaults(&V2_7);
        p.segment_seconds = Some(4.0);
        p.embedding_options = vec!["visual-text".into(), "audio".into()];
        p.bucket_owner = Some("111122223333".into());
        let m = MediaRef {
            uri: "s3://b/v.mp4",
            modality: Modality::Video,
            format: "mp4",
        };
        assert_eq!(
            crate::build_async(&V2_7, &p, &m).unwrap(),
            json!({"inputType": "video", "useFixedLengthSec": 4.0,
                   "embeddingOption": ["visual-text", "audio"],
                   "mediaSource": {"s3Location": {"uri": "s3://b/v.mp4", "bucketOwner": "111122223333"}}})
        );
        let p3 = Params::defaults(&V3_0);
        let a = MediaRef {
            modality: Modality::Audio,
            format: "wav",
            ..m
        };
        assert_eq!(
            crate::build_async(&V3_0, &p3, &a).unwrap(),
            json!({"inputType": "audio", "audio": {"mediaSource": {"s3Location": {"uri": "s3://b/v.mp4"}}}})
        );
        let segs = parse_async(
            br#"{"data":[
            {"embedding":[1,2],"embeddingOption":"visual-text","startSec":0,"endSec":6},
            {"embedding":[3,4],"embeddingOption":"audio","startSec":0,"endSec":6},
            {"embedding":[5,6],"embeddingOption":"visual-text","startSec":6,"endSec":9.5}]}"#,
        )
        .unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            (segs[2].index, segs[2].kind.as_str(), segs[2].end_sec),
            (1, "visual-text", Some(9.5))
        );
        assert_eq!(segs[1].index, 0);
        assert!(parse_async(b"{}").is_err());
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
