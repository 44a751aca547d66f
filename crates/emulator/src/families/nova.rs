//! Nova 2 Multimodal Embeddings: InvokeModel takes `SINGLE_EMBEDDING` of one text, image, audio
//! or video (media by S3 location or inline bytes); StartAsyncInvoke takes
//! `SEGMENTED_EMBEDDING` of a text, audio or video in S3 and writes
//! `segmented-embedding-result.json` and one `embedding-<modality>.jsonl` per embedding type.

use super::common::{
    decode_b64, dims, image_bytes, object, one_of, only, poisoned, required, string, Obj, POISONED,
};
use super::{AsyncRoute, Service};
use crate::async_invoke::run::{round3, segments, text_segments};
use crate::async_invoke::{s3_location, Finished, Task};
use crate::catalog::{Invoke, Model};
use crate::json::{self, Floats};
use crate::s3_client::S3Uri;
use crate::vectors;
use crate::wire::{count_tokens, validation, Accepted, ApiError};
use serde_json::{json, Value};

#[derive(serde::Serialize)]
struct NovaOut<'a> {
    embeddings: [NovaEntry<'a>; 1],
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NovaEntry<'a> {
    embedding_type: &'a str,
    embedding: Floats<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated_char_length: Option<u64>,
}

/// One input's embedding.
struct Embedded {
    vector: Vec<f32>,
    /// `embeddingType` of the answer.
    kind: &'static str,
    /// Characters kept of a truncated text.
    truncated: Option<u64>,
    tokens: u64,
}

/// The family's catalog row.
pub(crate) const MODELS: &[Model] = &[Model {
    id: "amazon.nova-2-multimodal-embeddings-v1:0",
    aliases: &[],
    profiles: &[],
    invoke: Invoke::BaseOrProfile,
    asynchronous: true,
    batch: true,
    dimensions: &[3072, 1024, 384, 256],
    image_formats: &["png", "jpeg", "gif", "webp"],
    service: &SERVICE,
}];

const SERVICE: Service = Service {
    invoke,
    async_route: Some(AsyncRoute {
        task: async_task,
        results: async_results,
    }),
};

/// `embeddingPurpose` values (AWS Nova `embeddings-schema`), sync and async alike.
const PURPOSES: &[&str] = &[
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

fn invoke(model: &Model, o: &Obj, poison: Option<&str>) -> Result<Accepted, ApiError> {
    only(
        o,
        &[
            "schemaVersion",
            "taskType",
            "singleEmbeddingParams",
            "segmentedEmbeddingParams",
        ],
        "#",
    )?;
    if let Some(s) = o.get("schemaVersion") {
        one_of(s, &["nova-multimodal-embed-v1"], "#/schemaVersion")?;
    }
    match one_of(
        required(o, "taskType", "#")?,
        &["SINGLE_EMBEDDING", "SEGMENTED_EMBEDDING"],
        "#/taskType",
    )? {
        "SINGLE_EMBEDDING" => {}
        _ => {
            return Err(validation(
                "SEGMENTED_EMBEDDING is only available through StartAsyncInvoke",
            ))
        }
    }
    if o.contains_key("segmentedEmbeddingParams") {
        return Err(validation("Malformed input request: #: extraneous key [segmentedEmbeddingParams] is not permitted for SINGLE_EMBEDDING"));
    }
    let p = object(
        required(o, "singleEmbeddingParams", "#")?,
        "#/singleEmbeddingParams",
    )?;
    let at = "#/singleEmbeddingParams";
    only(
        &p,
        &[
            "embeddingPurpose",
            "embeddingDimension",
            "text",
            "image",
            "audio",
            "video",
        ],
        at,
    )?;
    one_of(
        required(&p, "embeddingPurpose", at)?,
        PURPOSES,
        &format!("{at}/embeddingPurpose"),
    )?;
    let dim = dims(
        p.get("embeddingDimension"),
        model.dimensions,
        &format!("{at}/embeddingDimension"),
    )?
    .unwrap_or(model.dimensions[0]);
    let present: Vec<&str> = ["text", "image", "audio", "video"]
        .into_iter()
        .filter(|k| p.contains_key(*k))
        .collect();
    if present.len() != 1 {
        return Err(validation(format!(
            "{at}: exactly one of text, image, audio or video is required"
        )));
    }
    let m = present[0];
    let mat = format!("{at}/{m}");
    let mo = object(&p[m], &mat)?;
    let seed = model.id;
    let e = match m {
        "text" => text(seed, &mo, &mat, dim, poison)?,
        "image" => image(model.image_formats, seed, &mo, &mat, dim)?,
        _ => media(seed, m, &mo, &mat, dim)?,
    };
    let resp = NovaOut {
        embeddings: [NovaEntry {
            embedding_type: e.kind,
            embedding: Floats(&e.vector),
            truncated_char_length: e.truncated,
        }],
    };
    Ok(Accepted {
        body: json::to_body(&resp),
        inputs: 1,
        tokens: e.tokens,
        input_type: None,
    })
}

/// `text`: a `value` (truncated as `truncationMode` says) or a `source` in S3.
fn text(
    seed: &str,
    mo: &Obj,
    mat: &str,
    dim: usize,
    poison: Option<&str>,
) -> Result<Embedded, ApiError> {
    only(mo, &["truncationMode", "value", "source"], mat)?;
    let mode = one_of(
        required(mo, "truncationMode", mat)?,
        &["START", "END", "NONE"],
        &format!("{mat}/truncationMode"),
    )?;
    match (mo.get("value"), mo.get("source")) {
        (Some(v), None) => {
            let t = string(v, &format!("{mat}/value"))?;
            if t.is_empty() {
                return Err(validation(format!("{mat}/value: expected minLength: 1")));
            }
            let n = t.chars().count();
            if n > 8192 {
                return Err(validation(format!(
                    "{mat}/value: expected maxLength: 8192, actual: {n}"
                )));
            }
            if poisoned(poison, t) {
                return Err(validation(POISONED));
            }
            let tokens = count_tokens(t);
            let mut truncated = None;
            let kept: String = if tokens > 8192 {
                if mode == "NONE" {
                    return Err(validation(format!(
                        "Input is too long ({tokens} tokens, limit 8192)"
                    )));
                }
                let cut = n * 8192 / tokens as usize;
                truncated = Some(cut as u64);
                if mode == "END" {
                    t.chars().take(cut).collect()
                } else {
                    t.chars().skip(n - cut).collect()
                }
            } else {
                t.to_string()
            };
            Ok(Embedded {
                vector: vectors::text(seed, &kept, dim, false),
                kind: "TEXT",
                truncated,
                tokens,
            })
        }
        (None, Some(s)) => {
            source_bytes(s, &format!("{mat}/source"), false)?;
            Ok(Embedded {
                vector: vectors::bytes(seed, format!("{s}").as_bytes(), dim, false),
                kind: "TEXT",
                truncated: None,
                tokens: 0,
            })
        }
        _ => Err(validation(format!(
            "{mat}: exactly one of value and source is required"
        ))),
    }
}

/// `image`: inline bytes of the declared format, or a `source` in S3.
fn image(
    image_formats: &[&str],
    seed: &str,
    mo: &Obj,
    mat: &str,
    dim: usize,
) -> Result<Embedded, ApiError> {
    only(mo, &["format", "source", "detailLevel"], mat)?;
    let fmt = one_of(
        required(mo, "format", mat)?,
        image_formats,
        &format!("{mat}/format"),
    )?;
    if let Some(d) = mo.get("detailLevel") {
        one_of(
            d,
            &["STANDARD_IMAGE", "DOCUMENT_IMAGE"],
            &format!("{mat}/detailLevel"),
        )?;
    }
    let vector = match source_bytes(required(mo, "source", mat)?, &format!("{mat}/source"), true)? {
        Some(bytes) => {
            image_bytes(&bytes, &[fmt], &format!("{mat}/source/bytes"))?;
            vectors::bytes(seed, &bytes, dim, false)
        }
        None => vectors::bytes(seed, format!("{}", mo["source"]).as_bytes(), dim, false),
    };
    Ok(Embedded {
        vector,
        kind: "IMAGE",
        truncated: None,
        tokens: 0,
    })
}

/// `audio` or `video` (`m`): a format, and inline bytes or a `source` in S3.
fn media(seed: &str, m: &str, mo: &Obj, mat: &str, dim: usize) -> Result<Embedded, ApiError> {
    let formats: &[&str] = if m == "audio" {
        &["mp3", "wav", "ogg"]
    } else {
        &[
            "mp4", "mov", "mkv", "webm", "flv", "mpeg", "mpg", "wmv", "3gp",
        ]
    };
    let mut keys = vec!["format", "source"];
    if m == "video" {
        keys.push("embeddingMode");
        one_of(
            required(mo, "embeddingMode", mat)?,
            &["AUDIO_VIDEO_COMBINED", "AUDIO_VIDEO_SEPARATE"],
            &format!("{mat}/embeddingMode"),
        )?;
    }
    only(mo, &keys, mat)?;
    one_of(
        required(mo, "format", mat)?,
        formats,
        &format!("{mat}/format"),
    )?;
    let src = required(mo, "source", mat)?;
    let bytes = source_bytes(src, &format!("{mat}/source"), true)?
        .unwrap_or_else(|| format!("{src}").into_bytes());
    Ok(Embedded {
        vector: vectors::bytes(seed, &bytes, dim, false),
        kind: if m == "audio" {
            "AUDIO"
        } else {
            "AUDIO_VIDEO_COMBINED"
        },
        truncated: None,
        tokens: 0,
    })
}

/// A `source`: inline `bytes` (where allowed) or an `s3Location` (`None`: the bytes are in S3).
fn source_bytes(src: &Value, at: &str, allow_bytes: bool) -> Result<Option<Vec<u8>>, ApiError> {
    let s = object(src, at)?;
    only(&s, &["bytes", "s3Location"], at)?;
    match (s.get("bytes"), s.get("s3Location")) {
        (Some(b), None) if allow_bytes => {
            Ok(Some(decode_b64(string(b, &format!("{at}/bytes"))?, at)?))
        }
        (Some(_), None) => Err(validation(format!(
            "{at}: inline bytes are not allowed here; use s3Location"
        ))),
        (None, Some(l)) => {
            let l = object(l, &format!("{at}/s3Location"))?;
            only(&l, &["uri", "bucketOwner"], &format!("{at}/s3Location"))?;
            let uri = string(
                required(&l, "uri", &format!("{at}/s3Location"))?,
                &format!("{at}/s3Location/uri"),
            )?;
            if !uri.starts_with("s3://") {
                return Err(validation(format!(
                    "{at}/s3Location/uri: must be an s3:// URI"
                )));
            }
            Ok(None)
        }
        _ => Err(validation(format!(
            "{at}: exactly one of bytes and s3Location is required"
        ))),
    }
}

/// StartAsyncInvoke: `SEGMENTED_EMBEDDING` of a text, audio or video in S3.
fn async_task(model: &'static Model, input: &Value) -> Result<Task, ApiError> {
    if input["taskType"] != "SEGMENTED_EMBEDDING" {
        return Err(validation(
            "taskType must be SEGMENTED_EMBEDDING for async invoke",
        ));
    }
    let p = &input["segmentedEmbeddingParams"];
    let dims = model.dimensions;
    let dimension = p["embeddingDimension"]
        .as_u64()
        .map_or(dims[0], |d| d as usize);
    if !dims.contains(&dimension) {
        return Err(validation(
            "embeddingDimension must be 256, 384, 1024 or 3072",
        ));
    }
    match p["embeddingPurpose"].as_str() {
        None => return Err(validation("embeddingPurpose is required")),
        Some(purpose) if !PURPOSES.contains(&purpose) => {
            return Err(validation(format!(
                "embeddingPurpose {purpose} is not one of {}",
                PURPOSES.join(", ")
            )))
        }
        Some(_) => {}
    }
    let (modality, m) = ["video", "audio", "text"]
        .into_iter()
        .find_map(|k| p.get(k).map(|m| (k, m)))
        .ok_or_else(|| validation("one of video, audio or text is required"))?;
    if modality == "text" {
        return text_task(model, m, dimension);
    }
    let formats: &[&str] = if modality == "video" {
        &[
            "mp4", "mov", "mkv", "webm", "flv", "mpeg", "mpg", "wmv", "3gp",
        ]
    } else {
        &["mp3", "wav", "ogg"]
    };
    if !m["format"].as_str().is_some_and(|f| formats.contains(&f)) {
        return Err(validation(format!(
            "{modality}.format must be one of {}",
            formats.join(", ")
        )));
    }
    let Some(seg) = m.get("segmentationConfig") else {
        return Err(validation(format!(
            "{modality}.segmentationConfig is required"
        )));
    };
    let secs = seg["durationSeconds"].as_u64().unwrap_or(5);
    if !(1..=30).contains(&secs) {
        return Err(validation("durationSeconds must be between 1 and 30"));
    }
    let separate = if modality == "video" {
        match m["embeddingMode"].as_str() {
            Some("AUDIO_VIDEO_COMBINED") => false,
            Some("AUDIO_VIDEO_SEPARATE") => true,
            _ => {
                return Err(validation(
                    "video.embeddingMode must be AUDIO_VIDEO_COMBINED or AUDIO_VIDEO_SEPARATE",
                ))
            }
        }
    } else {
        false
    };
    Ok(Task {
        model,
        input_uri: s3_location(&m["source"], &format!("{modality}.source"))?,
        modality,
        dimension,
        segment: Some(secs as f64),
        separate,
        options: Vec::new(),
    })
}

/// A segmented text: segments of at most `maxLengthChars` characters.
fn text_task(model: &'static Model, m: &Value, dimension: usize) -> Result<Task, ApiError> {
    if !matches!(m["truncationMode"].as_str(), Some("START" | "END" | "NONE")) {
        return Err(validation("text.truncationMode must be START, END or NONE"));
    }
    let Some(seg) = m.get("segmentationConfig") else {
        return Err(validation("text.segmentationConfig is required"));
    };
    let chars = seg["maxLengthChars"].as_u64().unwrap_or(32_000);
    if !(800..=50_000).contains(&chars) {
        return Err(validation("maxLengthChars must be between 800 and 50000"));
    }
    Ok(Task {
        model,
        input_uri: s3_location(&m["source"], "text.source")?,
        modality: "text",
        dimension,
        segment: Some(chars as f64),
        separate: false,
        options: Vec::new(),
    })
}

/// A finished job's files: one `embedding-<modality>.jsonl` per embedding type, the
/// `segmented-embedding-result.json` listing them, and (media) a `manifest.json`.
fn async_results(f: &Finished<'_>) -> Vec<(S3Uri, Vec<u8>)> {
    if f.task.modality == "text" {
        text_results(f)
    } else {
        media_results(f)
    }
}

fn text_results(f: &Finished<'_>) -> Vec<(S3Uri, Vec<u8>)> {
    let task = f.task;
    let text = String::from_utf8_lossy(f.media);
    let uri = f.folder.join("embedding-text.jsonl");
    let mut lines = String::new();
    for (i, (s, e)) in text_segments(&text, task.segment.unwrap_or(32_000.0) as usize)
        .into_iter()
        .enumerate()
    {
        let line = json!({
            "embedding": f.vector("TEXT", i),
            "segmentMetadata": {
                "segmentIndex": i,
                "segmentStartCharPosition": s,
                "segmentEndCharPosition": e,
            },
            "status": "SUCCESS",
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let result = json!({
        "sourceFileUri": task.input_uri,
        "embeddingDimension": task.dimension,
        "embeddingResults": [{
            "embeddingType": "TEXT", "status": "SUCCESS", "outputFileUri": uri.to_string(),
        }],
    });
    vec![
        (uri, lines.into_bytes()),
        (
            f.folder.join("segmented-embedding-result.json"),
            result.to_string().into_bytes(),
        ),
    ]
}

fn media_results(f: &Finished<'_>) -> Vec<(S3Uri, Vec<u8>)> {
    let task = f.task;
    let kinds: &[&str] = match (task.modality, task.separate) {
        ("video", false) => &["AUDIO_VIDEO_COMBINED"],
        ("video", true) => &["VIDEO", "AUDIO"],
        _ => &["AUDIO"],
    };
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for kind in kinds {
        let name = match *kind {
            "AUDIO" => "embedding-audio.jsonl",
            _ => "embedding-video.jsonl",
        };
        let uri = f.folder.join(name);
        let mut lines = String::new();
        for (i, (s, e)) in segments(f.duration, task.segment.unwrap_or(5.0))
            .into_iter()
            .enumerate()
        {
            let line = json!({
                "embedding": f.vector(kind, i),
                "segmentMetadata": {
                    "segmentIndex": i,
                    "segmentStartSeconds": round3(s),
                    "segmentEndSeconds": round3(e),
                },
                "status": "SUCCESS",
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        entries.push(json!({
            "embeddingType": kind, "status": "SUCCESS", "outputFileUri": uri.to_string(),
        }));
        files.push((uri, lines.into_bytes()));
    }
    let result = json!({
        "sourceFileUri": task.input_uri,
        "embeddingDimension": task.dimension,
        "embeddingResults": entries,
    });
    files.push((
        f.folder.join("segmented-embedding-result.json"),
        result.to_string().into_bytes(),
    ));
    files.push((
        f.folder.join("manifest.json"),
        json!({"outputDataConfig": f.output})
            .to_string()
            .into_bytes(),
    ));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_match_the_reference() {
        assert_eq!(PURPOSES.len(), 9);
        assert!(PURPOSES.contains(&"DOCUMENT_RETRIEVAL"));
    }
}
