//! TwelveLabs Marengo Embed 2.7 and 3.0 (one answer format, `data[].embedding`; their request
//! bodies differ): InvokeModel embeds a text or an image (2.7 through a profile id only; 3.0
//! also text with image); StartAsyncInvoke embeds a video or audio in S3 and writes
//! `output.json`.

use super::common::{
    decode_b64, image_bytes, object, one_of, only, poisoned, required, string, Obj, POISONED,
};
use super::{AsyncRoute, Service};
use crate::async_invoke::run::{round3, segments};
use crate::async_invoke::{s3_location, Finished, Task};
use crate::catalog::{Invoke, Model};
use crate::json::{self, Floats};
use crate::s3_client::S3Uri;
use crate::vectors;
use crate::wire::{count_tokens, validation, Accepted, ApiError};
use serde_json::{json, Value};

#[derive(serde::Serialize)]
struct MarengoOut<'a> {
    data: [MarengoEntry<'a>; 1],
}

#[derive(serde::Serialize)]
struct MarengoEntry<'a> {
    embedding: Floats<'a>,
}

/// Which of the two versions a row is: their bodies differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V2_7,
    V3_0,
}

/// Image formats: none listed on their pages; PNG and JPEG are what every family takes.
const IMAGE_FORMATS: &[&str] = &["png", "jpeg"];

/// The family's catalog rows.
pub(crate) const MODELS: &[Model] = &[
    Model {
        id: "twelvelabs.marengo-embed-2-7-v1:0",
        aliases: &[],
        // (A Seoul prefix is unconfirmed: not served.)
        profiles: &["us.", "eu."],
        invoke: Invoke::ProfileOnly,
        asynchronous: true,
        batch: false,
        dimensions: &[1024],
        image_formats: IMAGE_FORMATS,
        service: &V2_7,
    },
    Model {
        id: "twelvelabs.marengo-embed-3-0-v1:0",
        aliases: &[],
        profiles: &["us.", "eu."],
        invoke: Invoke::BaseOrProfile,
        asynchronous: true,
        batch: false,
        dimensions: &[512],
        image_formats: IMAGE_FORMATS,
        service: &V3_0,
    },
];

const V2_7: Service = Service {
    invoke: |model, o, poison| invoke(Version::V2_7, model, o, poison),
    async_route: Some(AsyncRoute {
        task: |model, input| async_task(Version::V2_7, model, input),
        results: |f| async_results(Version::V2_7, f),
    }),
};

const V3_0: Service = Service {
    invoke: |model, o, poison| invoke(Version::V3_0, model, o, poison),
    async_route: Some(AsyncRoute {
        task: |model, input| async_task(Version::V3_0, model, input),
        results: |f| async_results(Version::V3_0, f),
    }),
};

fn invoke(
    version: Version,
    model: &Model,
    o: &Obj,
    poison: Option<&str>,
) -> Result<Accepted, ApiError> {
    // (Read first: a missing or non-string inputType is refused before anything else.)
    string(required(o, "inputType", "#")?, "#/inputType")?;
    let (vector, tokens) = if version == Version::V2_7 {
        v27(model, o, poison)?
    } else {
        v30(model, o, poison)?
    };
    let resp = MarengoOut {
        data: [MarengoEntry {
            embedding: Floats(&vector),
        }],
    };
    Ok(Accepted {
        body: json::to_body(&resp),
        inputs: 1,
        tokens,
        input_type: None,
    })
}

/// Marengo 2.7: `text` (77 tokens, `textTruncate`) or `image` by `mediaSource`.
fn v27(model: &Model, o: &Obj, poison: Option<&str>) -> Result<(Vec<f32>, u64), ApiError> {
    let seed = model.id;
    let dim = model.dimensions[0];
    Ok(
        match one_of(
            required(o, "inputType", "#")?,
            &["text", "image", "video", "audio"],
            "#/inputType",
        )? {
            "text" => {
                only(o, &["inputType", "inputText", "textTruncate"], "#")?;
                let t = string(required(o, "inputText", "#")?, "#/inputText")?;
                let trunc = match o.get("textTruncate") {
                    Some(x) => one_of(x, &["end", "none"], "#/textTruncate")?,
                    None => "end",
                };
                if poisoned(poison, t) {
                    return Err(validation(POISONED));
                }
                let n = count_tokens(t);
                if n > 77 && trunc == "none" {
                    return Err(validation(format!(
                        "Input is too long ({n} tokens, limit 77)"
                    )));
                }
                let kept: Vec<&str> = t
                    .split_whitespace()
                    .take(if n > 77 { 77 } else { usize::MAX })
                    .collect();
                (vectors::text(seed, &kept.join(" "), dim, false), n.min(77))
            }
            "image" => {
                only(o, &["inputType", "mediaSource"], "#")?;
                let b = media_source(
                    required(o, "mediaSource", "#")?,
                    "#/mediaSource",
                    model.image_formats,
                    false,
                )?;
                (vectors::bytes(seed, &b, dim, false), 0)
            }
            other => {
                return Err(validation(format!(
                    "inputType {other} is only available through StartAsyncInvoke"
                )))
            }
        },
    )
}

/// Marengo 3.0: `text` (500 tokens), `image` or `text_image`, each in an object of its own;
/// 2.7's parameters are refused.
fn v30(model: &Model, o: &Obj, poison: Option<&str>) -> Result<(Vec<f32>, u64), ApiError> {
    let seed = model.id;
    let dim = model.dimensions[0];
    let formats = model.image_formats;
    if let Some(k) = [
        "textTruncate",
        "lengthSec",
        "useFixedLengthSec",
        "minClipSec",
    ]
    .iter()
    .find(|k| o.contains_key(**k))
    {
        return Err(validation(format!("Malformed input request: #: extraneous key [{k}] is not permitted (a Marengo 2.7 parameter)")));
    }
    Ok(
        match one_of(
            required(o, "inputType", "#")?,
            &[
                "text",
                "image",
                "text_image",
                "multi_input",
                "video",
                "audio",
            ],
            "#/inputType",
        )? {
            "text" => {
                only(o, &["inputType", "text", "inferenceId"], "#")?;
                let x = object(required(o, "text", "#")?, "#/text")?;
                only(&x, &["inputText"], "#/text")?;
                let t = string(required(&x, "inputText", "#/text")?, "#/text/inputText")?;
                if poisoned(poison, t) {
                    return Err(validation(POISONED));
                }
                let n = count_tokens(t);
                if n > 500 {
                    return Err(validation(format!(
                        "Input is too long ({n} tokens, limit 500)"
                    )));
                }
                (vectors::text(seed, t, dim, false), n)
            }
            "image" => {
                only(o, &["inputType", "image", "inferenceId"], "#")?;
                let x = object(required(o, "image", "#")?, "#/image")?;
                only(&x, &["mediaSource"], "#/image")?;
                let b = media_source(
                    required(&x, "mediaSource", "#/image")?,
                    "#/image/mediaSource",
                    formats,
                    true,
                )?;
                (vectors::bytes(seed, &b, dim, false), 0)
            }
            "text_image" => {
                only(o, &["inputType", "text_image", "inferenceId"], "#")?;
                let x = object(required(o, "text_image", "#")?, "#/text_image")?;
                only(&x, &["inputText", "mediaSource"], "#/text_image")?;
                let t = string(
                    required(&x, "inputText", "#/text_image")?,
                    "#/text_image/inputText",
                )?;
                let b = media_source(
                    required(&x, "mediaSource", "#/text_image")?,
                    "#/text_image/mediaSource",
                    formats,
                    true,
                )?;
                let parts = [
                    vectors::text(seed, t, dim, true),
                    vectors::bytes(seed, &b, dim, true),
                ];
                (vectors::average(&parts, false), count_tokens(t))
            }
            other => {
                return Err(validation(format!(
                    "inputType {other} is only available through StartAsyncInvoke"
                )))
            }
        },
    )
}

/// A `mediaSource`: `base64String` image bytes, or an `s3Location` (its URI stands in for the
/// bytes; 3.0 also needs `bucketOwner`).
fn media_source(
    v: &Value,
    at: &str,
    formats: &[&str],
    need_owner: bool,
) -> Result<Vec<u8>, ApiError> {
    let m = object(v, at)?;
    only(&m, &["base64String", "s3Location"], at)?;
    match (m.get("base64String"), m.get("s3Location")) {
        (Some(b), None) => {
            let bytes = decode_b64(string(b, &format!("{at}/base64String"))?, at)?;
            if bytes.len() > 5 * 1024 * 1024 {
                return Err(validation(format!("{at}: images must be at most 5 MB")));
            }
            image_bytes(&bytes, formats, at)?;
            Ok(bytes)
        }
        (None, Some(l)) => {
            let l = object(l, &format!("{at}/s3Location"))?;
            only(&l, &["uri", "bucketOwner"], &format!("{at}/s3Location"))?;
            let uri = string(required(&l, "uri", &format!("{at}/s3Location"))?, "uri")?;
            if need_owner && !l.contains_key("bucketOwner") {
                return Err(validation(format!(
                    "{at}/s3Location: required key [bucketOwner] not found"
                )));
            }
            Ok(uri.as_bytes().to_vec())
        }
        _ => Err(validation(format!(
            "{at}: exactly one of base64String and s3Location is required"
        ))),
    }
}

/// StartAsyncInvoke: a video or audio in S3, with the embedding options asked for (by default
/// every option the modality has).
fn async_task(version: Version, model: &'static Model, input: &Value) -> Result<Task, ApiError> {
    let modality = match input["inputType"].as_str() {
        Some("video") => "video",
        Some("audio") => "audio",
        _ => {
            return Err(validation(
                "inputType must be video or audio for this emulator's async invoke",
            ))
        }
    };
    if version == Version::V2_7 {
        v27_task(model, modality, input)
    } else {
        v30_task(model, modality, input)
    }
}

fn v27_task(
    model: &'static Model,
    modality: &'static str,
    input: &Value,
) -> Result<Task, ApiError> {
    let fixed = input.get("useFixedLengthSec").and_then(Value::as_f64);
    if fixed.is_some_and(|f| !(2.0..=10.0).contains(&f)) {
        return Err(validation("useFixedLengthSec must be between 2 and 10"));
    }
    let valid = ["visual-text", "visual-image", "audio"];
    let options = string_list(&input["embeddingOption"], &valid, "embeddingOption")?;
    no_visual_for_audio(modality, &options)?;
    Ok(Task {
        model,
        input_uri: s3_location(&input["mediaSource"], "mediaSource")?,
        modality,
        dimension: model.dimensions[0],
        segment: fixed,
        separate: false,
        options: if options.is_empty() {
            if modality == "audio" {
                vec!["audio".into()]
            } else {
                valid.iter().map(|s| s.to_string()).collect()
            }
        } else {
            options
        },
    })
}

fn v30_task(
    model: &'static Model,
    modality: &'static str,
    input: &Value,
) -> Result<Task, ApiError> {
    let m = &input[modality];
    for k in [
        "textTruncate",
        "lengthSec",
        "useFixedLengthSec",
        "minClipSec",
    ] {
        if m.get(k).is_some() || input.get(k).is_some() {
            return Err(validation(format!(
                "Marengo 3.0 does not accept the Marengo 2.7 parameter {k}"
            )));
        }
    }
    let segment = match m["segmentation"]["method"].as_str() {
        Some("fixed") => m["segmentation"]["fixed"]["durationSec"].as_f64(),
        _ => None,
    };
    let valid = ["visual", "audio", "transcription"];
    let options = string_list(&m["embeddingOption"], &valid, "embeddingOption")?;
    no_visual_for_audio(modality, &options)?;
    Ok(Task {
        model,
        input_uri: s3_location(&m["mediaSource"], &format!("{modality}.mediaSource"))?,
        modality,
        dimension: model.dimensions[0],
        segment,
        separate: false,
        options: if options.is_empty() {
            if modality == "audio" {
                vec!["audio".into()]
            } else {
                vec!["visual".into(), "audio".into()]
            }
        } else {
            options
        },
    })
}

/// Visual embeddings of an audio file are refused, as the service does.
fn no_visual_for_audio(modality: &str, options: &[String]) -> Result<(), ApiError> {
    match options.iter().find(|o| o.starts_with("visual")) {
        Some(o) if modality == "audio" => Err(validation(format!(
            "embeddingOption {o} needs video; audio inputs take audio embeddings only"
        ))),
        _ => Ok(()),
    }
}

fn string_list(v: &Value, valid: &[&str], what: &str) -> Result<Vec<String>, ApiError> {
    let Some(a) = v.as_array() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(validation(format!("{what} must be a list")))
        };
    };
    a.iter()
        .map(|x| match x.as_str() {
            Some(s) if valid.contains(&s) => Ok(s.to_string()),
            _ => Err(validation(format!(
                "{what} values must be among {}",
                valid.join(", ")
            ))),
        })
        .collect()
}

/// A finished job's files: `output.json` (one item per option and segment: fixed segments
/// when asked, else ~6 s shots for video, ~10 s for audio) and a `manifest.json`.
fn async_results(version: Version, f: &Finished<'_>) -> Vec<(S3Uri, Vec<u8>)> {
    let task = f.task;
    let len = task
        .segment
        .unwrap_or(if task.modality == "video" { 6.0 } else { 10.0 });
    let mut data = Vec::new();
    for option in &task.options {
        for (i, (s, e)) in segments(f.duration, len).into_iter().enumerate() {
            let mut item = json!({
                "embedding": f.vector(option, i),
                "embeddingOption": option,
                "startSec": round3(s),
                "endSec": round3(e),
            });
            if version == Version::V3_0 {
                item["embeddingScope"] = json!("clip");
            }
            data.push(item);
        }
    }
    vec![
        (
            f.folder.join("output.json"),
            json!({ "data": data }).to_string().into_bytes(),
        ),
        (
            f.folder.join("manifest.json"),
            json!({"outputDataConfig": f.output})
                .to_string()
                .into_bytes(),
        ),
    ]
}
