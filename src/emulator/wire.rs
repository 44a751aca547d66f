//! The emulator's own reading of each family's InvokeModel body: as strict as the reference
//! describes, written independently of the client transformers (so each checks the other), and
//! the response each family sends back. Its facts (ids, routes, dimensions, formats) come from
//! [`super::catalog`], never from the client's registry.

use super::catalog::{self, Called, Family, Invoke, Model};
use super::json::{self, Floats};
use super::vectors;
use base64::Engine;
use serde_json::{json, Map, Value};

/// A Bedrock error to send back: exception name, HTTP status, message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

pub fn validation(msg: impl Into<String>) -> ApiError {
    ApiError {
        code: "ValidationException",
        status: 400,
        message: msg.into(),
    }
}

/// What one accepted request asks for: inputs to embed and how to answer.
pub struct Accepted {
    pub body: Vec<u8>,
    pub inputs: u64,
    pub tokens: u64,
}

/// The emulator's token count: words, with long words costing more (deterministic, roughly
/// like a subword tokenizer).
pub fn count_tokens(text: &str) -> u64 {
    text.split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| (w.chars().count() as u64).div_ceil(6).max(1))
        .sum::<u64>()
        .max(1)
}

type Obj = Map<String, Value>;

fn object(v: &Value, at: &str) -> Result<Obj, ApiError> {
    v.as_object().cloned().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: JSONObject, found: {}",
            kind(v)
        ))
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "JSONArray",
        Value::Object(_) => "JSONObject",
    }
}

/// Fails on keys outside `allowed`.
fn only(o: &Obj, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(validation(format!(
                "Malformed input request: {at}: extraneous key [{k}] is not permitted, please reformat your input and try again."
            )));
        }
    }
    Ok(())
}

fn required<'a>(o: &'a Obj, key: &str, at: &str) -> Result<&'a Value, ApiError> {
    o.get(key).ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: required key [{key}] not found, please reformat your input and try again."
        ))
    })
}

fn string<'a>(v: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: String, found: {}",
            kind(v)
        ))
    })
}

fn one_of<'a>(v: &'a Value, allowed: &[&str], at: &str) -> Result<&'a str, ApiError> {
    let s = string(v, at)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(validation(format!(
            "Malformed input request: {at}: {s} is not a valid enum value; expected one of [{}]",
            allowed.join(", ")
        )))
    }
}

fn uint(v: &Value, at: &str) -> Result<u64, ApiError> {
    v.as_u64().ok_or_else(|| {
        validation(format!(
            "Malformed input request: {at}: expected type: Integer, found: {}",
            kind(v)
        ))
    })
}

fn dims(v: Option<&Value>, allowed: &[usize], at: &str) -> Result<Option<usize>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let d = uint(v, at)? as usize;
    if allowed.contains(&d) {
        Ok(Some(d))
    } else {
        let list: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
        Err(validation(format!(
            "Malformed input request: {at}: {d} is not a valid value; expected one of [{}]",
            list.join(", ")
        )))
    }
}

fn decode_b64(s: &str, at: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| validation(format!("Malformed input request: {at}: invalid base64")))
}

/// An image's encoding from its magic bytes (the service reads the bytes, not the label).
fn image_format(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// Image bytes must be a real image of an accepted format.
fn image_bytes(bytes: &[u8], formats: &[&str], at: &str) -> Result<(), ApiError> {
    let f = image_format(bytes);
    match f {
        Some(f) if formats.contains(&f) => Ok(()),
        _ => Err(validation(format!(
            "{at}: unsupported or unreadable image; supported formats: {}",
            formats.join(", ")
        ))),
    }
}

fn data_uri(s: &str, formats: &[&str], at: &str) -> Result<Vec<u8>, ApiError> {
    let Some(rest) = s.strip_prefix("data:") else {
        return Err(validation(format!(
            "{at}: images must be data URIs (data:image/<type>;base64,...)"
        )));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(validation(format!(
            "{at}: invalid data URI (missing comma)"
        )));
    };
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(validation(format!(
            "{at}: data URIs must be base64-encoded"
        )));
    };
    let bytes = decode_b64(data, at)?;
    image_bytes(&bytes, formats, at)?;
    let declared = mime.strip_prefix("image/").unwrap_or("");
    let actual = image_format(&bytes);
    if Some(if declared == "jpg" { "jpeg" } else { declared }) != actual {
        return Err(validation(format!(
            "{at}: the data URI says {mime} but holds {}",
            actual.unwrap_or("unknown")
        )));
    }
    Ok(bytes)
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanOut<'a> {
    embedding: Floats<'a>,
    input_text_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings_by_type: Option<TitanByType<'a>>,
}

#[derive(serde::Serialize)]
struct TitanByType<'a> {
    float: Floats<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<Vec<u8>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanMmOut<'a> {
    embedding: Floats<'a>,
    input_text_token_count: u64,
    message: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct CohereFloats<'a> {
    id: String,
    response_type: &'static str,
    embeddings: Vec<Floats<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    texts: Option<&'a Value>,
}

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

#[derive(serde::Serialize)]
struct MarengoOut<'a> {
    data: [MarengoEntry<'a>; 1],
}

#[derive(serde::Serialize)]
struct MarengoEntry<'a> {
    embedding: Floats<'a>,
}

/// Validates `body` for the model `called` names (and the route its id takes) and builds the
/// response.
pub fn invoke(called: Called, body: &[u8], poison: Option<&str>) -> Result<Accepted, ApiError> {
    let model = called.model;
    if model.invoke == Invoke::ProfileOnly && called.profile.is_none() {
        return Err(validation(format!(
            "Invocation of model ID {} with on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
            model.id
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        validation("Malformed input request, please reformat your input and try again.")
    })?;
    let o = object(&v, "#")?;
    let check_poison = |t: &str| -> Result<(), ApiError> {
        match poison {
            Some(p) if !p.is_empty() && t.contains(p) => Err(validation(
                "Malformed input request: the input was rejected by the model (poisoned input)",
            )),
            _ => Ok(()),
        }
    };
    let seed = model.id;
    let family = model.family;
    match family {
        Family::TitanTextV1 | Family::TitanTextV2 => {
            let v2 = family == Family::TitanTextV2;
            only(
                &o,
                if v2 {
                    &["inputText", "dimensions", "normalize", "embeddingTypes"]
                } else {
                    &["inputText"]
                },
                "#",
            )?;
            let text = string(required(&o, "inputText", "#")?, "#/inputText")?;
            if text.is_empty() {
                return Err(validation(
                    "Malformed input request: #/inputText: expected minLength: 1, actual: 0",
                ));
            }
            if text.chars().count() > 50_000 {
                return Err(validation(
                    "Malformed input request: #/inputText: expected maxLength: 50000",
                ));
            }
            check_poison(text)?;
            let tokens = count_tokens(text);
            if tokens > 8192 {
                return Err(validation(format!(
                    "Input is too long for requested model ({tokens} tokens, limit 8192)"
                )));
            }
            let dim = if v2 {
                dims(o.get("dimensions"), family.dimensions(), "#/dimensions")?
                    .unwrap_or(family.dimensions()[0])
            } else {
                family.dimensions()[0]
            };
            let normalize = match o.get("normalize") {
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(validation(format!(
                        "Malformed input request: #/normalize: expected type: Boolean, found: {}",
                        kind(other)
                    )))
                }
                None => v2,
            };
            let mut types = vec!["float".to_string()];
            if let Some(t) = o.get("embeddingTypes") {
                let Some(a) = t.as_array() else {
                    return Err(validation(format!("Malformed input request: #/embeddingTypes: expected type: JSONArray, found: {}", kind(t))));
                };
                if a.is_empty() {
                    return Err(validation(
                        "Malformed input request: #/embeddingTypes: expected minItems: 1",
                    ));
                }
                types = a
                    .iter()
                    .map(|x| {
                        one_of(x, &["float", "binary"], "#/embeddingTypes").map(str::to_string)
                    })
                    .collect::<Result<_, _>>()?;
            }
            let vector = vectors::text(seed, text, dim, normalize);
            let binary: Option<Vec<u8>> = types
                .iter()
                .any(|t| t == "binary")
                .then(|| vector.iter().map(|x| u8::from(*x > 0.0)).collect());
            let resp = TitanOut {
                embedding: Floats(&vector),
                input_text_token_count: tokens,
                embeddings_by_type: v2.then(|| TitanByType {
                    float: Floats(&vector),
                    binary,
                }),
            };
            Ok(Accepted {
                body: json::to_body(&resp),
                inputs: 1,
                tokens,
            })
        }
        Family::TitanMultimodal => {
            only(&o, &["inputText", "inputImage", "embeddingConfig"], "#")?;
            let text = o
                .get("inputText")
                .map(|t| string(t, "#/inputText"))
                .transpose()?;
            let image = o
                .get("inputImage")
                .map(|i| string(i, "#/inputImage"))
                .transpose()?;
            if text.is_none() && image.is_none() {
                return Err(validation(
                    "Malformed input request: at least one of inputText and inputImage is required",
                ));
            }
            let mut dim = family.dimensions()[0];
            if let Some(c) = o.get("embeddingConfig") {
                let c = object(c, "#/embeddingConfig")?;
                only(&c, &["outputEmbeddingLength"], "#/embeddingConfig")?;
                dim = dims(
                    c.get("outputEmbeddingLength"),
                    family.dimensions(),
                    "#/embeddingConfig/outputEmbeddingLength",
                )?
                .unwrap_or(dim);
            }
            let mut tokens = 0;
            let mut parts = Vec::new();
            if let Some(t) = text {
                check_poison(t)?;
                tokens = count_tokens(t);
                if tokens > 128 {
                    return Err(validation(format!(
                        "Input is too long for requested model ({tokens} tokens, limit 128)"
                    )));
                }
                parts.push(vectors::text(seed, t, dim, true));
            }
            if let Some(i) = image {
                let bytes = decode_b64(i, "#/inputImage")?;
                image_bytes(&bytes, family.image_formats(), "#/inputImage")?;
                if bytes.len() > 25 * 1024 * 1024 {
                    return Err(validation("#/inputImage: the image is larger than 25 MB"));
                }
                parts.push(vectors::bytes(seed, &bytes, dim, true));
            }
            let vector = vectors::average(&parts, false);
            let resp = TitanMmOut {
                embedding: Floats(&vector),
                input_text_token_count: tokens,
                message: None,
            };
            Ok(Accepted {
                body: json::to_body(&resp),
                inputs: 1,
                tokens,
            })
        }
        Family::CohereV3 | Family::CohereV4 => cohere(model, &o, poison),
        Family::Nova2 => nova(model, &o, poison),
        Family::Marengo27 | Family::Marengo30 => marengo(model, &o, poison),
    }
}

fn cohere(model: &Model, o: &Obj, poison: Option<&str>) -> Result<Accepted, ApiError> {
    let family = model.family;
    let v4 = family == Family::CohereV4;
    let seed = model.id;
    let mut allowed = vec![
        "texts",
        "images",
        "input_type",
        "truncate",
        "embedding_types",
    ];
    if v4 {
        allowed.extend(["inputs", "output_dimension", "max_tokens"]);
    }
    only(o, &allowed, "#")?;
    let input_types: &[&str] = if v4 {
        &[
            "search_document",
            "search_query",
            "classification",
            "clustering",
        ]
    } else {
        &[
            "search_document",
            "search_query",
            "classification",
            "clustering",
            "image",
        ]
    };
    one_of(required(o, "input_type", "#")?, input_types, "#/input_type")?;
    let truncate = match o.get("truncate") {
        Some(t) => one_of(
            t,
            if v4 {
                &["NONE", "LEFT", "RIGHT"]
            } else {
                &["NONE", "START", "END"]
            },
            "#/truncate",
        )?,
        None => "NONE",
    };
    let mut types: Vec<String> = Vec::new();
    if let Some(t) = o.get("embedding_types") {
        let Some(a) = t.as_array() else {
            return Err(validation(
                "Malformed request. Please check your parameter/values and try again.",
            ));
        };
        types = a
            .iter()
            .map(|x| {
                one_of(
                    x,
                    &["float", "int8", "uint8", "binary", "ubinary"],
                    "#/embedding_types",
                )
                .map(str::to_string)
            })
            .collect::<Result<_, _>>()?;
    }
    let dim = if v4 {
        dims(
            o.get("output_dimension"),
            family.dimensions(),
            "#/output_dimension",
        )?
        .unwrap_or(family.dimensions()[0])
    } else {
        family.dimensions()[0]
    };
    let max_tokens = match o.get("max_tokens") {
        Some(m) => uint(m, "#/max_tokens")?,
        None => {
            if v4 {
                128_000
            } else {
                512
            }
        }
    };
    let present: Vec<&str> = ["texts", "images", "inputs"]
        .into_iter()
        .filter(|k| o.contains_key(*k))
        .collect();
    if present.len() != 1 {
        return Err(validation(
            "Malformed input request: exactly one of texts, images or inputs is required",
        ));
    }
    let image_formats = family.image_formats();
    let mut vectors_out = Vec::new();
    let mut tokens = 0u64;
    let list = o[present[0]].as_array().ok_or_else(|| {
        validation(format!(
            "Malformed input request: #/{}: expected type: JSONArray",
            present[0]
        ))
    })?;
    if list.is_empty() || list.len() > 96 {
        return Err(validation(format!(
            "Malformed input request: #/{}: expected between 1 and 96 items, got {}",
            present[0],
            list.len()
        )));
    }
    let check_text = |t: &str, i: usize, tokens: &mut u64| -> Result<String, ApiError> {
        if let Some(p) = poison.filter(|p| !p.is_empty() && t.contains(*p)) {
            let _ = p;
            return Err(validation(format!("Malformed input request: #/texts/{i}: the input was rejected by the model (poisoned input)")));
        }
        if !v4 && t.chars().count() > 2048 {
            return Err(validation(format!(
                "Malformed input request: #/texts/{i}: expected maxLength: 2048, actual: {}",
                t.chars().count()
            )));
        }
        let n = count_tokens(t);
        let kept = if n > max_tokens {
            if truncate == "NONE" {
                return Err(validation(format!("Malformed input request: #/texts/{i}: too many tokens ({n} > {max_tokens}); set truncate")));
            }
            // Keep the right share of words.
            let words: Vec<&str> = t.split_whitespace().collect();
            let keep = (words.len() as u64 * max_tokens / n) as usize;
            *tokens += max_tokens;
            if truncate == "END" || truncate == "RIGHT" {
                words[..keep].join(" ")
            } else {
                words[words.len() - keep..].join(" ")
            }
        } else {
            *tokens += n;
            t.to_string()
        };
        Ok(kept)
    };
    match present[0] {
        "texts" => {
            for (i, t) in list.iter().enumerate() {
                let t = string(t, &format!("#/texts/{i}"))?;
                let kept = check_text(t, i, &mut tokens)?;
                vectors_out.push(vectors::text(seed, &kept, dim, true));
            }
        }
        "images" => {
            if !v4 && list.len() > 1 {
                return Err(validation(
                    "Malformed input request: #/images: expected maxItems: 1",
                ));
            }
            for (i, img) in list.iter().enumerate() {
                let at = format!("#/images/{i}");
                let bytes = data_uri(string(img, &at)?, image_formats, &at)?;
                if bytes.len() > 5 * 1024 * 1024 {
                    return Err(validation(format!("{at}: images must be at most 5 MB")));
                }
                vectors_out.push(vectors::bytes(seed, &bytes, dim, true));
            }
        }
        _ => {
            for (i, item) in list.iter().enumerate() {
                let at = format!("#/inputs/{i}");
                let item = object(item, &at)?;
                only(&item, &["content"], &at)?;
                let content = required(&item, "content", &at)?
                    .as_array()
                    .ok_or_else(|| validation(format!("{at}/content: expected type: JSONArray")))?;
                let mut parts = Vec::new();
                for (j, c) in content.iter().enumerate() {
                    let cat = format!("{at}/content/{j}");
                    let c = object(c, &cat)?;
                    match one_of(
                        required(&c, "type", &cat)?,
                        &["text", "image_url"],
                        &format!("{cat}/type"),
                    )? {
                        "text" => {
                            only(&c, &["type", "text"], &cat)?;
                            let t = string(required(&c, "text", &cat)?, &format!("{cat}/text"))?;
                            let kept = check_text(t, i, &mut tokens)?;
                            parts.push(vectors::text(seed, &kept, dim, true));
                        }
                        _ => {
                            only(&c, &["type", "image_url"], &cat)?;
                            // Bedrock's v4 page documents a data-URI string; Cohere's own
                            // API's `{"url": ...}` object is not what Bedrock lists.
                            let url = string(
                                required(&c, "image_url", &cat)?,
                                &format!("{cat}/image_url"),
                            )?;
                            let bytes = data_uri(url, image_formats, &cat)?;
                            parts.push(vectors::bytes(seed, &bytes, dim, true));
                        }
                    }
                }
                if parts.is_empty() {
                    return Err(validation(format!("{at}/content: expected minItems: 1")));
                }
                vectors_out.push(vectors::average(&parts, true));
            }
        }
    }
    let id = format!(
        "emu-{:016x}",
        vectors::fnv(format!("{:?}", o.get(present[0])).as_bytes())
    );
    let n = vectors_out.len() as u64;
    if types.is_empty() {
        let resp = CohereFloats {
            id,
            response_type: "embeddings_floats",
            embeddings: vectors_out.iter().map(|v| Floats(v)).collect(),
            texts: o.get("texts"),
        };
        return Ok(Accepted {
            body: json::to_body(&resp),
            inputs: n,
            tokens,
        });
    }
    let mut resp = Map::new();
    resp.insert("id".into(), json!(id));
    resp.insert("response_type".into(), json!("embeddings_by_type"));
    let mut by = Map::new();
    for t in &types {
        let vs: Vec<Value> = vectors_out
            .iter()
            .map(|v| match t.as_str() {
                "float" => json!(v),
                other => json!(vectors::quantize(v, other)),
            })
            .collect();
        by.insert(t.clone(), Value::Array(vs));
    }
    resp.insert("embeddings".into(), Value::Object(by));
    if present[0] == "texts" {
        resp.insert("texts".into(), o["texts"].clone());
    }
    Ok(Accepted {
        body: json::to_body(&resp),
        inputs: n,
        tokens,
    })
}

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

fn nova(model: &Model, o: &Obj, poison: Option<&str>) -> Result<Accepted, ApiError> {
    let family = model.family;
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
        catalog::NOVA_PURPOSES,
        &format!("{at}/embeddingPurpose"),
    )?;
    let dim = dims(
        p.get("embeddingDimension"),
        family.dimensions(),
        &format!("{at}/embeddingDimension"),
    )?
    .unwrap_or(family.dimensions()[0]);
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
    let mut tokens = 0;
    let mut resp_entry = Map::new();
    let vector = match m {
        "text" => {
            only(&mo, &["truncationMode", "value", "source"], &mat)?;
            let mode = one_of(
                required(&mo, "truncationMode", &mat)?,
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
                    if let Some(p) = poison.filter(|p| !p.is_empty() && t.contains(*p)) {
                        let _ = p;
                        return Err(validation("Malformed input request: the input was rejected by the model (poisoned input)"));
                    }
                    tokens = count_tokens(t);
                    let kept: String = if tokens > 8192 {
                        if mode == "NONE" {
                            return Err(validation(format!(
                                "Input is too long ({tokens} tokens, limit 8192)"
                            )));
                        }
                        let cut = n * 8192 / tokens as usize;
                        resp_entry.insert("truncatedCharLength".into(), json!(cut));
                        if mode == "END" {
                            t.chars().take(cut).collect()
                        } else {
                            t.chars().skip(n - cut).collect()
                        }
                    } else {
                        t.to_string()
                    };
                    resp_entry.insert("embeddingType".into(), json!("TEXT"));
                    vectors::text(seed, &kept, dim, false)
                }
                (None, Some(s)) => {
                    source_bytes(s, &format!("{mat}/source"), false)?;
                    resp_entry.insert("embeddingType".into(), json!("TEXT"));
                    vectors::bytes(seed, format!("{s}").as_bytes(), dim, false)
                }
                _ => {
                    return Err(validation(format!(
                        "{mat}: exactly one of value and source is required"
                    )))
                }
            }
        }
        "image" => {
            only(&mo, &["format", "source", "detailLevel"], &mat)?;
            let fmt = one_of(
                required(&mo, "format", &mat)?,
                family.image_formats(),
                &format!("{mat}/format"),
            )?;
            if let Some(d) = mo.get("detailLevel") {
                one_of(
                    d,
                    &["STANDARD_IMAGE", "DOCUMENT_IMAGE"],
                    &format!("{mat}/detailLevel"),
                )?;
            }
            resp_entry.insert("embeddingType".into(), json!("IMAGE"));
            match source_bytes(
                required(&mo, "source", &mat)?,
                &format!("{mat}/source"),
                true,
            )? {
                Some(bytes) => {
                    image_bytes(&bytes, &[fmt], &format!("{mat}/source/bytes"))?;
                    vectors::bytes(seed, &bytes, dim, false)
                }
                None => vectors::bytes(seed, format!("{}", mo["source"]).as_bytes(), dim, false),
            }
        }
        _ => {
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
                    required(&mo, "embeddingMode", &mat)?,
                    &["AUDIO_VIDEO_COMBINED", "AUDIO_VIDEO_SEPARATE"],
                    &format!("{mat}/embeddingMode"),
                )?;
            }
            only(&mo, &keys, &mat)?;
            one_of(
                required(&mo, "format", &mat)?,
                formats,
                &format!("{mat}/format"),
            )?;
            let src = required(&mo, "source", &mat)?;
            let bytes = source_bytes(src, &format!("{mat}/source"), true)?
                .unwrap_or_else(|| format!("{src}").into_bytes());
            resp_entry.insert(
                "embeddingType".into(),
                json!(if m == "audio" {
                    "AUDIO"
                } else {
                    "AUDIO_VIDEO_COMBINED"
                }),
            );
            vectors::bytes(seed, &bytes, dim, false)
        }
    };
    let resp = NovaOut {
        embeddings: [NovaEntry {
            embedding_type: resp_entry
                .get("embeddingType")
                .and_then(Value::as_str)
                .unwrap_or("TEXT"),
            embedding: Floats(&vector),
            truncated_char_length: resp_entry
                .get("truncatedCharLength")
                .and_then(Value::as_u64),
        }],
    };
    Ok(Accepted {
        body: json::to_body(&resp),
        inputs: 1,
        tokens,
    })
}

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

fn marengo(model: &Model, o: &Obj, poison: Option<&str>) -> Result<Accepted, ApiError> {
    let family = model.family;
    let v27 = family == Family::Marengo27;
    let seed = model.id;
    let dim = family.dimensions()[0];
    let formats = family.image_formats();
    let input_type = string(required(o, "inputType", "#")?, "#/inputType")?;
    let poisoned = |t: &str| poison.is_some_and(|p| !p.is_empty() && t.contains(p));
    let (vector, tokens) = if v27 {
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
                if poisoned(t) {
                    return Err(validation("Malformed input request: the input was rejected by the model (poisoned input)"));
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
                    formats,
                    false,
                )?;
                (vectors::bytes(seed, &b, dim, false), 0)
            }
            other => {
                return Err(validation(format!(
                    "inputType {other} is only available through StartAsyncInvoke"
                )))
            }
        }
    } else {
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
                if poisoned(t) {
                    return Err(validation("Malformed input request: the input was rejected by the model (poisoned input)"));
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
        }
    };
    let _ = input_type;
    let resp = MarengoOut {
        data: [MarengoEntry {
            embedding: Floats(&vector),
        }],
    };
    Ok(Accepted {
        body: json::to_body(&resp),
        inputs: 1,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TITAN_V1: &str = "amazon.titan-embed-text-v1";
    const TITAN_V2: &str = "amazon.titan-embed-text-v2:0";
    const TITAN_MM: &str = "amazon.titan-embed-image-v1";
    const COHERE_V3: &str = "cohere.embed-english-v3";
    const COHERE_V4: &str = "cohere.embed-v4:0";
    const NOVA: &str = "amazon.nova-2-multimodal-embeddings-v1:0";
    const MARENGO_27: &str = "twelvelabs.marengo-embed-2-7-v1:0";
    const MARENGO_30: &str = "twelvelabs.marengo-embed-3-0-v1:0";

    fn call(id: &str, body: &str) -> Result<Accepted, ApiError> {
        let called = catalog::resolve(id).unwrap_or_else(|| panic!("{id} is not in the catalog"));
        invoke(called, body.as_bytes(), None)
    }

    fn err(id: &str, body: &str) -> ApiError {
        match call(id, body) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    fn ok(id: &str, body: &str) -> Value {
        let a = call(id, body).unwrap_or_else(|e| panic!("{body}: {}", e.message));
        serde_json::from_slice(&a.body).unwrap()
    }

    #[test]
    fn titan_rules() {
        let r = ok(
            TITAN_V2,
            r#"{"inputText":"hello world","dimensions":256,"embeddingTypes":["float","binary"]}"#,
        );
        assert_eq!(r["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(
            r["embeddingsByType"]["binary"].as_array().unwrap().len(),
            256
        );
        assert_eq!(r["inputTextTokenCount"], 2);
        for (body, needle) in [
            (
                r#"{"inputText":"a","dimensions":768}"#,
                "768 is not a valid value",
            ),
            (r#"{"inputText":"a","extra":1}"#, "extraneous key [extra]"),
            (r#"{"dimensions":256}"#, "required key [inputText]"),
            (r#"{"inputText":""}"#, "minLength"),
            (r#"{"inputText":5}"#, "expected type: String"),
            (r#"{"inputText":"a","normalize":"yes"}"#, "Boolean"),
            (r#"{"inputText":"a","embeddingTypes":"float"}"#, "JSONArray"),
            ("not json", "Malformed input request"),
        ] {
            let e = err(TITAN_V2, body);
            assert_eq!((e.code, e.status), ("ValidationException", 400));
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        // v1 takes inputText only.
        assert!(err(TITAN_V1, r#"{"inputText":"a","dimensions":256}"#)
            .message
            .contains("extraneous"));
        assert!(err(
            TITAN_MM,
            r#"{"embeddingConfig":{"outputEmbeddingLength":384}}"#
        )
        .message
        .contains("at least one"));
    }

    #[test]
    fn cohere_rules_differ_by_version() {
        let r = ok(
            COHERE_V3,
            r#"{"texts":["a","b"],"input_type":"search_query","truncate":"END"}"#,
        );
        assert_eq!(r["response_type"], "embeddings_floats");
        assert_eq!(r["embeddings"].as_array().unwrap().len(), 2);
        let r = ok(
            "us.cohere.embed-v4:0",
            r#"{"texts":["a"],"input_type":"search_document","truncate":"LEFT","output_dimension":256,"embedding_types":["float","int8"]}"#,
        );
        assert_eq!(r["response_type"], "embeddings_by_type");
        assert_eq!(r["embeddings"]["int8"][0].as_array().unwrap().len(), 256);
        for (id, body, needle) in [
            (
                COHERE_V3,
                r#"{"texts":["a"],"input_type":"search_query","truncate":"LEFT"}"#,
                "[NONE, START, END]",
            ),
            (
                COHERE_V4,
                r#"{"texts":["a"],"input_type":"search_query","truncate":"END"}"#,
                "[NONE, LEFT, RIGHT]",
            ),
            (COHERE_V3, r#"{"texts":["a"]}"#, "required key [input_type]"),
            (
                COHERE_V4,
                r#"{"texts":["a"],"input_type":"image"}"#,
                "not a valid enum value",
            ),
            (
                COHERE_V3,
                r#"{"texts":["a"],"input_type":"search_query","output_dimension":256}"#,
                "extraneous key [output_dimension]",
            ),
            (
                COHERE_V4,
                r#"{"texts":["a"],"input_type":"search_query","output_dimension":768}"#,
                "768",
            ),
            (
                COHERE_V3,
                r#"{"texts":["a"],"input_type":"search_query","embedding_types":"float"}"#,
                "Malformed request",
            ),
            (
                COHERE_V3,
                r#"{"input_type":"search_query"}"#,
                "exactly one of texts",
            ),
        ] {
            let e = err(id, body);
            assert_eq!(e.code, "ValidationException");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        let many: Vec<String> = (0..97).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({"texts": many, "input_type": "search_document"}).to_string();
        assert!(err(COHERE_V3, &body).message.contains("between 1 and 96"));
        let long = "x".repeat(2049);
        let body =
            serde_json::json!({"texts": [long], "input_type": "search_document"}).to_string();
        assert!(err(COHERE_V3, &body).message.contains("2048"));
    }

    #[test]
    fn cohere_v4_image_url_is_a_data_uri_string() {
        let png = "data:image/png;base64,iVBORw0KGgo=";
        let item = |image_url: Value| {
            json!({"input_type": "search_document", "inputs": [{"content": [
                {"type": "text", "text": "a caption"},
                {"type": "image_url", "image_url": image_url},
            ]}]})
            .to_string()
        };
        let r = ok(COHERE_V4, &item(json!(png)));
        assert_eq!(r["embeddings"].as_array().unwrap().len(), 1);
        // Cohere's own API shape is not what Bedrock documents: refused.
        let e = err(COHERE_V4, &item(json!({ "url": png })));
        assert_eq!((e.code, e.status), ("ValidationException", 400));
        assert!(
            e.message.contains("image_url: expected type: String"),
            "{}",
            e.message
        );
    }

    #[test]
    fn nova_and_marengo_routes() {
        let r = ok(
            NOVA,
            r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","embeddingDimension":384,"text":{"truncationMode":"END","value":"hi"}}}"#,
        );
        assert_eq!(
            r["embeddings"][0]["embedding"].as_array().unwrap().len(),
            384
        );
        assert_eq!(r["embeddings"][0]["embeddingType"], "TEXT");
        for (body, needle) in [
            (
                r#"{"taskType":"SEGMENTED_EMBEDDING","segmentedEmbeddingParams":{}}"#,
                "StartAsyncInvoke",
            ),
            (
                r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","text":{"value":"hi"}}}"#,
                "required key [truncationMode]",
            ),
            (
                r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"X","text":{"truncationMode":"END","value":"hi"}}}"#,
                "not a valid enum value",
            ),
            (
                r#"{"taskType":"SINGLE_EMBEDDING","singleEmbeddingParams":{"embeddingPurpose":"GENERIC_INDEX","text":{"truncationMode":"END","source":{"bytes":"aGk="}}}}"#,
                "use s3Location",
            ),
        ] {
            let e = err(NOVA, body);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        // Marengo 2.7: InvokeModel needs the inference profile; video is async only.
        let e = err(MARENGO_27, r#"{"inputType":"text","inputText":"a dog"}"#);
        assert!(e.message.contains("inference profile"), "{}", e.message);
        let r = ok(
            "us.twelvelabs.marengo-embed-2-7-v1:0",
            r#"{"inputType":"text","inputText":"a dog"}"#,
        );
        assert_eq!(r["data"][0]["embedding"].as_array().unwrap().len(), 1024);
        let e = err(
            "us.twelvelabs.marengo-embed-2-7-v1:0",
            r#"{"inputType":"video","mediaSource":{"s3Location":{"uri":"s3://b/v.mp4"}}}"#,
        );
        assert!(e.message.contains("StartAsyncInvoke"), "{}", e.message);
        // Marengo 3.0: the base id is served, 512 dimensions; 2.7 parameters are refused.
        let r = ok(
            MARENGO_30,
            r#"{"inputType":"text","text":{"inputText":"a"}}"#,
        );
        assert_eq!(r["data"][0]["embedding"].as_array().unwrap().len(), 512);
        let e = err(
            MARENGO_30,
            r#"{"inputType":"text","text":{"inputText":"a"},"textTruncate":"end"}"#,
        );
        assert!(e.message.contains("textTruncate"), "{}", e.message);
    }

    #[test]
    fn poisoned_inputs_are_refused() {
        let called = catalog::resolve(COHERE_V3).unwrap();
        let body = br#"{"texts":["fine","BAD one"],"input_type":"search_document"}"#;
        assert!(invoke(called, body, Some("BAD")).is_err());
        assert!(invoke(called, body, Some("nothing")).is_ok());
    }
}
