//! Cohere Embed v3 (English, multilingual) and v4 (one format; v4 adds `inputs`,
//! `output_dimension` and `max_tokens`, and truncates LEFT/RIGHT): up to 96 texts, images as
//! data URIs, or (v4) mixed content per call, answered as `embeddings_floats` or, with
//! `embedding_types`, `embeddings_by_type`.

use super::common::{
    decode_b64, dims, image_bytes, image_format, object, one_of, only, poisoned, required, string,
    uint, Obj,
};
use super::Service;
use crate::catalog::{Invoke, Model};
use crate::json::{self, Floats};
use crate::vectors;
use crate::wire::{count_tokens, validation, Accepted, ApiError};
use serde_json::{json, Map, Value};

#[derive(serde::Serialize)]
struct CohereFloats<'a> {
    id: String,
    response_type: &'static str,
    embeddings: Vec<Floats<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    texts: Option<&'a Value>,
}

/// A request's parameters, checked.
struct Params<'a> {
    v4: bool,
    truncate: &'a str,
    /// `embedding_types`; empty: floats only (`embeddings_floats`).
    types: Vec<String>,
    dim: usize,
    max_tokens: u64,
}

/// Which of the two versions a row is: v4 adds `inputs`, `output_dimension` and `max_tokens`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V3,
    V4,
}

/// v3's one dimension.
const V3_DIMENSIONS: &[usize] = &[1024];
/// v3's image formats.
const V3_IMAGE_FORMATS: &[&str] = &["png", "jpeg"];

/// The family's catalog rows.
pub(crate) const MODELS: &[Model] = &[
    Model {
        id: "cohere.embed-english-v3",
        aliases: &[],
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
        batch: false,
        dimensions: V3_DIMENSIONS,
        image_formats: V3_IMAGE_FORMATS,
        service: &V3,
    },
    Model {
        id: "cohere.embed-multilingual-v3",
        aliases: &[],
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
        batch: false,
        dimensions: V3_DIMENSIONS,
        image_formats: V3_IMAGE_FORMATS,
        service: &V3,
    },
    Model {
        id: "cohere.embed-v4:0",
        // The id as AWS's v4 page writes it.
        aliases: &["cohere.embed-v4"],
        profiles: &["us.", "eu.", "global."],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
        batch: false,
        dimensions: &[1536, 1024, 512, 256],
        image_formats: &["png", "jpeg", "gif", "webp"],
        service: &V4,
    },
];

const V3: Service = Service {
    invoke: |model, o, poison| invoke(Version::V3, model, o, poison),
    async_route: None,
};

const V4: Service = Service {
    invoke: |model, o, poison| invoke(Version::V4, model, o, poison),
    async_route: None,
};

fn invoke(
    version: Version,
    model: &Model,
    o: &Obj,
    poison: Option<&str>,
) -> Result<Accepted, ApiError> {
    let p = params(version, model, o)?;
    let (key, list) = inputs(o)?;
    let seed = model.id;
    let dim = p.dim;
    let mut vectors_out = Vec::new();
    let mut tokens = 0u64;
    match key {
        "texts" => {
            for (i, t) in list.iter().enumerate() {
                let t = string(t, &format!("#/texts/{i}"))?;
                let kept = read_text(&p, poison, t, i, &mut tokens)?;
                vectors_out.push(vectors::text(seed, &kept, dim, true));
            }
        }
        "images" => {
            if !p.v4 && list.len() > 1 {
                return Err(validation(
                    "Malformed input request: #/images: expected maxItems: 1",
                ));
            }
            for (i, img) in list.iter().enumerate() {
                let at = format!("#/images/{i}");
                let bytes = data_uri(string(img, &at)?, model.image_formats, &at)?;
                if bytes.len() > 5 * 1024 * 1024 {
                    return Err(validation(format!("{at}: images must be at most 5 MB")));
                }
                vectors_out.push(vectors::bytes(seed, &bytes, dim, true));
            }
        }
        _ => vectors_out = embed_inputs(model, &p, list, poison, &mut tokens)?,
    }
    Ok(respond(o, key, &p.types, &vectors_out, tokens))
}

/// Allowed keys, `input_type`, `truncate`, `embedding_types`, `output_dimension` (v4) and
/// `max_tokens`, in that order.
fn params<'a>(version: Version, model: &Model, o: &'a Obj) -> Result<Params<'a>, ApiError> {
    let v4 = version == Version::V4;
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
            model.dimensions,
            "#/output_dimension",
        )?
        .unwrap_or(model.dimensions[0])
    } else {
        model.dimensions[0]
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
    Ok(Params {
        v4,
        truncate,
        types,
        dim,
        max_tokens,
    })
}

/// The one input list the body holds (`texts`, `images` or `inputs`): its key and items.
fn inputs(o: &Obj) -> Result<(&'static str, &Vec<Value>), ApiError> {
    let present: Vec<&str> = ["texts", "images", "inputs"]
        .into_iter()
        .filter(|k| o.contains_key(*k))
        .collect();
    if present.len() != 1 {
        return Err(validation(
            "Malformed input request: exactly one of texts, images or inputs is required",
        ));
    }
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
    Ok((present[0], list))
}

/// Text `i` as the model reads it: refused (poisoned, too long for v3, too many tokens without
/// truncation) or cut to `max_tokens`; adds the tokens it counts to `tokens`.
fn read_text(
    p: &Params,
    poison: Option<&str>,
    t: &str,
    i: usize,
    tokens: &mut u64,
) -> Result<String, ApiError> {
    if poisoned(poison, t) {
        return Err(validation(format!("Malformed input request: #/texts/{i}: the input was rejected by the model (poisoned input)")));
    }
    if !p.v4 && t.chars().count() > 2048 {
        return Err(validation(format!(
            "Malformed input request: #/texts/{i}: expected maxLength: 2048, actual: {}",
            t.chars().count()
        )));
    }
    let max_tokens = p.max_tokens;
    let n = count_tokens(t);
    let kept = if n > max_tokens {
        if p.truncate == "NONE" {
            return Err(validation(format!("Malformed input request: #/texts/{i}: too many tokens ({n} > {max_tokens}); set truncate")));
        }
        // Keep the right share of words.
        let words: Vec<&str> = t.split_whitespace().collect();
        let keep = (words.len() as u64 * max_tokens / n) as usize;
        *tokens += max_tokens;
        if p.truncate == "END" || p.truncate == "RIGHT" {
            words[..keep].join(" ")
        } else {
            words[words.len() - keep..].join(" ")
        }
    } else {
        *tokens += n;
        t.to_string()
    };
    Ok(kept)
}

/// v4 `inputs`: each item's content parts (texts, data-URI images) averaged into one vector.
fn embed_inputs(
    model: &Model,
    p: &Params,
    list: &[Value],
    poison: Option<&str>,
    tokens: &mut u64,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let (seed, dim) = (model.id, p.dim);
    let image_formats = model.image_formats;
    let mut vectors_out = Vec::new();
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
                    let kept = read_text(p, poison, t, i, tokens)?;
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
    Ok(vectors_out)
}

/// The answer: `embeddings_floats`, or `embeddings_by_type` when types were asked for (with
/// the texts echoed when the inputs were `texts`).
fn respond(
    o: &Obj,
    key: &str,
    types: &[String],
    vectors_out: &[Vec<f32>],
    tokens: u64,
) -> Accepted {
    let id = format!(
        "emu-{:016x}",
        vectors::fnv(format!("{:?}", o.get(key)).as_bytes())
    );
    let n = vectors_out.len() as u64;
    let input_type = o
        .get("input_type")
        .and_then(Value::as_str)
        .map(str::to_string);
    if types.is_empty() {
        let resp = CohereFloats {
            id,
            response_type: "embeddings_floats",
            embeddings: vectors_out.iter().map(|v| Floats(v)).collect(),
            texts: o.get("texts"),
        };
        return Accepted {
            body: json::to_body(&resp),
            inputs: n,
            tokens,
            input_type,
        };
    }
    let mut resp = Map::new();
    resp.insert("id".into(), json!(id));
    resp.insert("response_type".into(), json!("embeddings_by_type"));
    let mut by = Map::new();
    for t in types {
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
    if key == "texts" {
        resp.insert("texts".into(), o["texts"].clone());
    }
    Accepted {
        body: json::to_body(&resp),
        inputs: n,
        tokens,
        input_type,
    }
}

/// A `data:image/<type>;base64,...` URI: its bytes, which must be an accepted image of the type
/// the URI declares.
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
