//! Amazon Nova 2 Multimodal Embeddings (`amazon.nova-2-multimodal-embeddings-v1:0`): one input
//! per call; sync `SINGLE_EMBEDDING` for text and images (video/audio go async).

use crate::codec::{AsyncResults, Codec};
use crate::floats::Vector;
use crate::json::from_json_fast;
use crate::spec::{
    AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, SegmentSeconds, MAX_BODY_BYTES,
};
use crate::vocab::{
    wire_err, ImageFormat, Input, MediaRef, Modality, Parsed, Prices, ProviderKind, Segment,
    WireError,
};
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
    provider: ProviderKind::Bedrock,
    codec: &Nova,
    modalities: &[Modality::Text, Modality::Image],
    text_image: false,
    dimensions: &[3072, 1024, 384, 256],
    max_inputs_per_call: 1,
    default_batch_size: 1,
    max_input_tokens: 8192,
    normalized: false,
    service_normalizes: false,
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
        images_per_call: None,
        max_body_bytes: MAX_BODY_BYTES,
    },
    routes: Routes {
        sync: true,
        asynchronous: true,
        sync_needs_profile: false,
        batch: true,
    },
    async_limits: AsyncLimits {
        segment_seconds: Some(SegmentSeconds {
            min: 1.0,
            max: 30.0,
            whole: true,
        }),
        segment_chars: Some((800, 50_000)),
        long_text: true,
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
        ParamSpec {
            key: "embedding_mode",
            values: &["AUDIO_VIDEO_COMBINED", "AUDIO_VIDEO_SEPARATE"],
            default: Some("AUDIO_VIDEO_COMBINED"),
        },
    ],
    deprecation: None,
};

/// Nova's codec: sync single embeddings, segmented async jobs with a result manifest.
#[derive(Debug)]
pub struct Nova;

/// The manifest a segmented job writes, listing its result files.
const RESULT_MANIFEST: &str = "segmented-embedding-result.json";

impl Codec for Nova {
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

    fn build_async(
        &self,
        _spec: &ModelSpec,
        params: &Params,
        media: &MediaRef<'_>,
    ) -> Result<Value, WireError> {
        Ok(build_async(params, media))
    }

    /// Queries are embedded as `GENERIC_RETRIEVAL` when the documents were `GENERIC_INDEX`.
    fn query_params(&self, params: &Params) -> Params {
        let mut q = params.clone();
        if matches!(params.input_type.as_deref(), Some("GENERIC_INDEX") | None) {
            q.input_type = Some("GENERIC_RETRIEVAL".into());
        }
        q
    }

    fn async_results(&self) -> Option<AsyncResults> {
        Some(AsyncResults::Manifest(RESULT_MANIFEST))
    }

    fn parse_async_manifest(&self, body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
        result_files(body)
    }

    fn parse_async_segments(
        &self,
        kind: &str,
        body: &[u8],
    ) -> Result<(Vec<Segment>, usize), WireError> {
        parse_segments(kind, body)
    }
}

fn build(params: &Params, inputs: &[Input<'_>]) -> Result<Value, WireError> {
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

/// Default segment length of segmented video/audio (seconds).
pub const DEFAULT_SEGMENT_SECONDS: f64 = 5.0;
/// Default longest text segment (characters; Nova allows 800-50,000).
pub const DEFAULT_SEGMENT_CHARS: u32 = 32_000;

/// `SEGMENTED_EMBEDDING` for a video or audio file in S3 (async accepts only S3 sources, and
/// needs a `segmentationConfig`).
fn build_async(params: &Params, media: &MediaRef<'_>) -> Value {
    let secs = params.segment_seconds.unwrap_or(DEFAULT_SEGMENT_SECONDS) as u64;
    let mut m = if media.modality == Modality::Text {
        // Long text: the file in S3, split at word boundaries into segments of at most
        // `segment_chars` characters.
        json!({
            "truncationMode": params.truncate.as_deref().unwrap_or("END"),
            "source": {"s3Location": {"uri": media.uri}},
            "segmentationConfig": {
                "maxLengthChars": params.segment_chars.unwrap_or(DEFAULT_SEGMENT_CHARS),
            },
        })
    } else {
        json!({
            "format": media.format,
            "source": {"s3Location": {"uri": media.uri}},
            "segmentationConfig": {"durationSeconds": secs},
        })
    };
    if media.modality == Modality::Video {
        m["embeddingMode"] = json!(params
            .embedding_mode
            .as_deref()
            .unwrap_or("AUDIO_VIDEO_COMBINED"));
    }
    let mut p = json!({
        "embeddingPurpose": params.input_type.as_deref().unwrap_or("GENERIC_INDEX"),
        "embeddingDimension": params.dimension,
    });
    p[media.modality.as_str()] = m;
    json!({
        "schemaVersion": "nova-multimodal-embed-v1",
        "taskType": "SEGMENTED_EMBEDDING",
        "segmentedEmbeddingParams": p,
    })
}

/// The per-modality result files listed in `segmented-embedding-result.json`:
/// (embedding type, `outputFileUri`), or why the job produced none.
pub fn result_files(summary: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Summary {
        embedding_results: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        embedding_type: String,
        status: String,
        failure_reason: Option<String>,
        message: Option<String>,
        output_file_uri: Option<String>,
    }
    let s: Summary = serde_json::from_slice(summary).map_err(|e| {
        WireError(format!(
            "segmented-embedding-result.json is not readable: {e}"
        ))
    })?;
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for e in s.embedding_results {
        match (e.status.as_str(), e.output_file_uri) {
            ("SUCCESS" | "PARTIAL_SUCCESS", Some(uri)) => files.push((e.embedding_type, uri)),
            _ => failures.push(format!(
                "{} {}: {}",
                e.embedding_type,
                e.status,
                [e.failure_reason, e.message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        }
    }
    if files.is_empty() {
        return wire_err(if failures.is_empty() {
            "the job reported no embedding results".to_string()
        } else {
            failures.join("; ")
        });
    }
    Ok(files)
}

/// One `embedding-<modality>.jsonl` file: a segment per line, in file order. Lines whose status
/// is not SUCCESS are skipped (and counted in the second value).
pub fn parse_segments(kind: &str, jsonl: &[u8]) -> Result<(Vec<Segment>, usize), WireError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Line {
        embedding: Option<Vec<f32>>,
        #[serde(default)]
        segment_metadata: Meta,
        status: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        segment_index: Option<u32>,
        segment_start_seconds: Option<f64>,
        segment_end_seconds: Option<f64>,
        segment_start_char_position: Option<u64>,
        segment_end_char_position: Option<u64>,
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    for (n, line) in jsonl.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: Line = serde_json::from_slice(line)
            .map_err(|e| WireError(format!("line {} of the {kind} results: {e}", n + 1)))?;
        match (l.status.as_deref(), l.embedding) {
            (None | Some("SUCCESS"), Some(v)) => out.push(Segment {
                index: l.segment_metadata.segment_index.unwrap_or(out.len() as u32),
                start_sec: l.segment_metadata.segment_start_seconds,
                end_sec: l.segment_metadata.segment_end_seconds,
                start_char: l.segment_metadata.segment_start_char_position,
                end_char: l.segment_metadata.segment_end_char_position,
                kind: kind.to_ascii_lowercase(),
                vector: v,
            }),
            _ => skipped += 1,
        }
    }
    Ok((out, skipped))
}

#[derive(serde::Deserialize)]
struct Response {
    embeddings: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    embedding: Vector,
}

fn parse(r: Response) -> Result<Parsed, WireError> {
    let Some(first) = r.embeddings.into_iter().next() else {
        return wire_err("the response's `embeddings` list is empty");
    };
    Ok(Parsed {
        vectors: vec![first.embedding.0],
        other_types: Vec::new(),
        input_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_request, parse_response, Image};

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
    fn golden_async_request_and_results() {
        let mut p = Params::defaults(&SPEC);
        p.dimension = 1024;
        p.segment_seconds = Some(10.0);
        let media = MediaRef {
            uri: "s3://b/in/a.mp4",
            modality: Modality::Video,
            format: "mp4",
        };
        assert_eq!(
            crate::build_async(&SPEC, &p, &media).unwrap(),
            json!({"schemaVersion": "nova-multimodal-embed-v1", "taskType": "SEGMENTED_EMBEDDING",
                   "segmentedEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX",
                     "embeddingDimension": 1024,
                     "video": {"format": "mp4", "embeddingMode": "AUDIO_VIDEO_COMBINED",
                               "source": {"s3Location": {"uri": "s3://b/in/a.mp4"}},
                               "segmentationConfig": {"durationSeconds": 10}}}})
        );
        let files = result_files(
            br#"{"sourceFileUri":"s3://b/in/a.mp4","embeddingDimension":2,
            "embeddingResults":[{"embeddingType":"AUDIO_VIDEO_COMBINED","status":"SUCCESS",
            "outputFileUri":"s3://b/out/j/embedding-video.jsonl"}]}"#,
        )
        .unwrap();
        assert_eq!(
            files,
            vec![(
                "AUDIO_VIDEO_COMBINED".to_string(),
                "s3://b/out/j/embedding-video.jsonl".to_string()
            )]
        );
        let (segs, skipped) = parse_segments(
            "AUDIO_VIDEO_COMBINED",
            b"{\"embedding\":[1,0],\"segmentMetadata\":{\"segmentIndex\":0,\"segmentStartSeconds\":0,\"segmentEndSeconds\":5},\"status\":\"SUCCESS\"}\n\
              {\"segmentMetadata\":{\"segmentIndex\":1},\"status\":\"FAILURE\",\"failureReason\":\"INVALID_CONTENT\"}\n",
        )
        .unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(segs.len(), 1);
        assert_eq!(
            (segs[0].end_sec, segs[0].kind.as_str()),
            (Some(5.0), "audio_video_combined")
        );
        let failed = result_files(br#"{"embeddingResults":[{"embeddingType":"VIDEO","status":"FAILURE","failureReason":"INVALID_CONTENT"}]}"#);
        assert!(failed.unwrap_err().0.contains("INVALID_CONTENT"));
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
