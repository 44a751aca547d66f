//! Cohere Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`) and v4
//! (`cohere.embed-v4:0`): up to 96 texts per call; images (v3: one per call); v4 also
//! interleaved text+image inputs and a choice of dimensions.

use crate::codec::{billed_usage, Codec};
use crate::floats::Vector;
use crate::json::from_json_fast;
use crate::spec::{AsyncLimits, Limits, ModelSpec, ParamSpec, Params, Routes, MAX_BODY_BYTES};
use crate::vocab::{
    wire_err, Image, ImageFormat, Input, Modality, Parsed, Prices, ProviderKind, Usage, WireError,
};
use serde_json::{json, Map, Value};

const INPUT_TYPES_V3: &[&str] = &[
    "search_document",
    "search_query",
    "classification",
    "clustering",
];

const V3_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "input_type",
        values: INPUT_TYPES_V3,
        default: Some("search_document"),
    },
    ParamSpec {
        key: "truncate",
        values: &["NONE", "START", "END"],
        default: Some("NONE"),
    },
    ParamSpec {
        key: "embedding_types",
        values: &["float", "int8", "uint8", "binary", "ubinary"],
        default: None,
    },
];

const V3_LIMITS: Limits = Limits {
    max_chars: Some(2048),
    max_tokens: Some(512),
    max_image_bytes: Some(5 * 1024 * 1024),
    max_image_side: None,
    image_formats: &[ImageFormat::Png, ImageFormat::Jpeg],
    // v3 takes one image per call.
    images_per_call: Some(1),
    max_body_bytes: MAX_BODY_BYTES,
};

const V3_PRICES: Prices = Prices {
    per_1k_tokens: 0.0001,
    per_image: 0.0,
    per_query: 0.0,
    per_video_second: 0.0,
    per_audio_second: 0.0,
};

const SYNC: Routes = Routes {
    sync: true,
    asynchronous: false,
    sync_needs_profile: false,
    batch: false,
};

pub const V3_ENGLISH: ModelSpec = ModelSpec {
    id: "cohere.embed-english-v3",
    aliases: &[],
    profiles: &[],
    provider: ProviderKind::Bedrock,
    codec: &Cohere { v4: false },
    modalities: &[Modality::Text, Modality::Image],
    text_image: false,
    dimensions: &[1024],
    max_inputs_per_call: 96,
    default_batch_size: 96,
    max_input_tokens: 512,
    normalized: false,
    service_normalizes: false,
    limits: V3_LIMITS,
    routes: SYNC,
    async_limits: AsyncLimits::NONE,
    prices: V3_PRICES,
    params: V3_PARAMS,
    deprecation: None,
};

pub const V3_MULTILINGUAL: ModelSpec = ModelSpec {
    id: "cohere.embed-multilingual-v3",
    ..V3_ENGLISH
};

pub const V4: ModelSpec = ModelSpec {
    id: "cohere.embed-v4:0",
    aliases: &["cohere.embed-v4"],
    profiles: &["us.", "eu.", "global."],
    provider: ProviderKind::Bedrock,
    codec: &Cohere { v4: true },
    modalities: &[Modality::Text, Modality::Image],
    text_image: true,
    dimensions: &[1536, 1024, 512, 256],
    max_inputs_per_call: 96,
    default_batch_size: 96,
    max_input_tokens: 128_000,
    normalized: false,
    service_normalizes: false,
    limits: Limits {
        max_chars: None,
        max_tokens: Some(128_000),
        max_image_bytes: Some(5 * 1024 * 1024),
        max_image_side: None,
        image_formats: &[
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Webp,
            ImageFormat::Gif,
        ],
        images_per_call: None,
        // Cohere v4's payload limit is ~20 MB, below Bedrock's 25 MB.
        max_body_bytes: 20_000_000,
    },
    routes: SYNC,
    async_limits: AsyncLimits::NONE,
    prices: Prices {
        per_1k_tokens: 0.00012,
        per_image: 0.0,
        per_query: 0.0,
        per_video_second: 0.0,
        per_audio_second: 0.0,
    },
    params: &[
        ParamSpec {
            key: "input_type",
            values: INPUT_TYPES_V3,
            default: Some("search_document"),
        },
        ParamSpec {
            key: "truncate",
            values: &["NONE", "LEFT", "RIGHT"],
            default: Some("NONE"),
        },
        ParamSpec {
            key: "embedding_types",
            values: &["float", "int8", "uint8", "binary", "ubinary"],
            default: None,
        },
        ParamSpec {
            key: "max_tokens",
            values: &[],
            default: None,
        },
    ],
    deprecation: None,
};

/// Most pixels Cohere v4 bills for an image (larger ones are scaled down), and what it assumes
/// when the size cannot be read.
const MAX_BILLED_PIXELS: u64 = 2_458_624;
/// Fewest pixels Cohere v4 bills for an image (smaller ones are scaled up).
const MIN_BILLED_PIXELS: u64 = 3_136;

/// Cohere Embed's codec; `v4` adds interleaved inputs, dimensions, `max_tokens` and image tokens.
#[derive(Debug)]
pub struct Cohere {
    v4: bool,
}

impl Codec for Cohere {
    fn build_request(
        &self,
        _spec: &ModelSpec,
        params: &Params,
        inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        build(self.v4, params, inputs)
    }

    fn parse_response(
        &self,
        spec: &ModelSpec,
        params: &Params,
        body: &[u8],
    ) -> Result<Parsed, WireError> {
        parse(params, from_json_fast(spec, body)?)
    }

    /// Queries are embedded as `search_query` when the documents were `search_document`.
    fn query_params(&self, params: &Params) -> Params {
        let mut q = params.clone();
        if matches!(params.input_type.as_deref(), Some("search_document") | None) {
            q.input_type = Some("search_query".into());
        }
        q
    }

    fn usage(
        &self,
        inputs: &[Input<'_>],
        parsed: &Parsed,
        pixels: &dyn Fn(&Image<'_>) -> Option<u64>,
    ) -> Usage {
        let mut u = billed_usage(inputs, parsed);
        if self.v4 && parsed.input_tokens.is_none() {
            // Cohere v4 bills images as tokens: pixels ÷ 784 × 4, after resizing into
            // [3,136, 2,458,624] pixels.
            for img in inputs.iter().filter_map(|i| i.image()) {
                let px = pixels(img)
                    .unwrap_or(MAX_BILLED_PIXELS)
                    .clamp(MIN_BILLED_PIXELS, MAX_BILLED_PIXELS);
                u.input_tokens += px / 784 * 4;
                u.tokens_estimated = true;
            }
        }
        u
    }
}

fn build(v4: bool, params: &Params, inputs: &[Input<'_>]) -> Result<Value, WireError> {
    let mut body = Map::new();
    let input_type = params.input_type.as_deref().unwrap_or("search_document");
    match inputs[0] {
        Input::Text(_) => {
            let texts: Vec<&str> = inputs
                .iter()
                .map(|i| match i {
                    Input::Text(t) => Ok(*t),
                    _ => wire_err("a Cohere call cannot mix texts with images"),
                })
                .collect::<Result<_, _>>()?;
            body.insert("texts".into(), json!(texts));
            body.insert("input_type".into(), json!(input_type));
        }
        Input::Image(_) => {
            if !v4 && inputs.len() > 1 {
                return wire_err("Cohere Embed v3 takes one image per call");
            }
            let images: Vec<String> = inputs
                .iter()
                .map(|i| match i {
                    Input::Image(img) => Ok(img.data_uri()),
                    _ => wire_err("a Cohere call cannot mix images with texts"),
                })
                .collect::<Result<_, _>>()?;
            body.insert("images".into(), json!(images));
            // v3 requires `image`; v4 lists no image input type and takes the indexing one.
            body.insert(
                "input_type".into(),
                json!(if v4 { input_type } else { "image" }),
            );
        }
        Input::TextImage(..) => {
            if !v4 {
                return wire_err("Cohere Embed v3 cannot embed text and image together");
            }
            // `image_url` is the data-URI string Bedrock's v4 page documents, not the
            // `{"url": ...}` object of Cohere's own API.
            let items: Vec<Value> = inputs
                .iter()
                .map(|i| match i {
                    Input::TextImage(t, img) => Ok(json!({"content": [
                        {"type": "text", "text": t},
                        {"type": "image_url", "image_url": img.data_uri()},
                    ]})),
                    _ => wire_err("a Cohere call cannot mix interleaved inputs with others"),
                })
                .collect::<Result<_, _>>()?;
            body.insert("inputs".into(), json!(items));
            body.insert("input_type".into(), json!(input_type));
        }
    }
    if let Some(t) = &params.truncate {
        body.insert("truncate".into(), json!(t));
    }
    if !params.embedding_types.is_empty() {
        body.insert("embedding_types".into(), json!(params.requested_types()));
    }
    if v4 {
        body.insert("output_dimension".into(), json!(params.dimension));
        if let Some(m) = params.max_tokens {
            body.insert("max_tokens".into(), json!(m));
        }
    }
    Ok(Value::Object(body))
}

#[derive(serde::Deserialize)]
struct Response {
    embeddings: Embeddings,
    meta: Option<Meta>,
}

#[derive(serde::Deserialize)]
struct Meta {
    billed_units: Option<Billed>,
}

#[derive(serde::Deserialize)]
struct Billed {
    input_tokens: Option<f64>,
}

/// `embeddings`: a list of float vectors (`embeddings_floats`) or a map from type to vectors
/// (`embeddings_by_type`).
enum Embeddings {
    List(Vec<Vector>),
    ByType {
        float: Option<Vec<Vector>>,
        other: Vec<(String, Vec<Vector>)>,
    },
}

impl<'de> serde::Deserialize<'de> for Embeddings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Embeddings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of vectors or a map from embedding type to vectors")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Embeddings, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(v) = seq.next_element::<Vector>()? {
                    out.push(v);
                }
                Ok(Embeddings::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Embeddings, A::Error> {
                let mut float = None;
                let mut other = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if k == "float" {
                        float = Some(map.next_value()?);
                    } else {
                        other.push((k, map.next_value()?));
                    }
                }
                Ok(Embeddings::ByType { float, other })
            }
        }
        d.deserialize_any(V)
    }
}

fn parse(params: &Params, r: Response) -> Result<Parsed, WireError> {
    let mut out = Parsed {
        input_tokens: r
            .meta
            .and_then(|m| m.billed_units)
            .and_then(|b| b.input_tokens)
            .map(|t| t as u64),
        ..Default::default()
    };
    match r.embeddings {
        Embeddings::List(v) => out.vectors = v.into_iter().map(|v| v.0).collect(),
        Embeddings::ByType { float, mut other } => {
            let Some(f) = float else {
                return wire_err("`embeddings` has no `float` vectors");
            };
            out.vectors = f.into_iter().map(|v| v.0).collect();
            for t in params.embedding_types.iter().filter(|t| *t != "float") {
                let Some(pos) = other.iter().position(|(k, _)| k == t) else {
                    return wire_err(format!("`embeddings.{t}` is missing"));
                };
                let (name, vs) = other.swap_remove(pos);
                let at = format!("embeddings.{name}");
                let ints = vs
                    .into_iter()
                    .map(|v| v.into_integers(&at))
                    .collect::<Result<_, _>>()?;
                out.other_types.push((name, ints));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_request, parse_response};

    #[test]
    fn v3_golden_requests() {
        let p = Params::defaults(&V3_ENGLISH);
        assert_eq!(
            build_request(&V3_ENGLISH, &p, &[Input::Text("a"), Input::Text("b")]).unwrap(),
            json!({"texts": ["a", "b"], "input_type": "search_document", "truncate": "NONE"})
        );
        let mut p = p;
        p.input_type = Some("search_query".into());
        p.truncate = Some("END".into());
        p.embedding_types = vec!["int8".into()];
        assert_eq!(
            build_request(&V3_ENGLISH, &p, &[Input::Text("q")]).unwrap(),
            json!({"texts": ["q"], "input_type": "search_query", "truncate": "END",
                   "embedding_types": ["float", "int8"]})
        );
        let img = Image {
            bytes: b"\xFF\xD8\xFFxx",
            format: ImageFormat::Jpeg,
        };
        let b = build_request(&V3_ENGLISH, &p, &[Input::Image(img)]).unwrap();
        assert_eq!(b["images"], json!(["data:image/jpeg;base64,/9j/eHg="]));
        assert_eq!(b["input_type"], "image");
        assert!(build_request(&V3_ENGLISH, &p, &[Input::Image(img), Input::Image(img)]).is_err());
        assert!(build_request(&V3_ENGLISH, &p, &[Input::TextImage("x", img)]).is_err());
        let too_many: Vec<Input> = (0..97).map(|_| Input::Text("x")).collect();
        assert!(build_request(&V3_ENGLISH, &p, &too_many).is_err());
    }

    #[test]
    fn v4_golden_requests() {
        let mut p = Params::defaults(&V4);
        p.dimension = 512;
        p.truncate = Some("RIGHT".into());
        p.max_tokens = Some(1000);
        assert_eq!(
            build_request(&V4, &p, &[Input::Text("a")]).unwrap(),
            json!({"texts": ["a"], "input_type": "search_document", "truncate": "RIGHT",
                   "output_dimension": 512, "max_tokens": 1000})
        );
        let img = Image {
            bytes: b"GIF89a",
            format: ImageFormat::Gif,
        };
        let b = build_request(&V4, &p, &[Input::TextImage("caption", img)]).unwrap();
        assert_eq!(
            b["inputs"],
            json!([{"content": [
                {"type": "text", "text": "caption"},
                {"type": "image_url", "image_url": "data:image/gif;base64,R0lGODlh"}
            ]}])
        );
        assert_eq!(b["input_type"], "search_document");
        let b = build_request(&V4, &p, &[Input::Image(img), Input::Image(img)]).unwrap();
        assert_eq!(b["images"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn parses_list_and_by_type_shapes() {
        let mut p = Params::defaults(&V3_ENGLISH);
        p.dimension = 2;
        let list = br#"{"id":"x","response_type":"embeddings_floats",
            "embeddings":[[1,0],[0,1]],"texts":["a","b"]}"#;
        let r = parse_response(&V3_ENGLISH, &p, list, 2).unwrap();
        assert_eq!(r.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(r.input_tokens, None);
        p.embedding_types = vec!["int8".into()];
        let typed = br#"{"id":"x","response_type":"embeddings_by_type",
            "embeddings":{"float":[[0.5,0.5]],"int8":[[12,-7]]},
            "meta":{"billed_units":{"input_tokens":4}}}"#;
        let r = parse_response(&V3_ENGLISH, &p, typed, 1).unwrap();
        assert_eq!(r.vectors, vec![vec![0.5, 0.5]]);
        assert_eq!(
            r.other_types,
            vec![("int8".to_string(), vec![vec![12, -7]])]
        );
        assert_eq!(r.input_tokens, Some(4));
        // Count mismatch is an error.
        assert!(parse_response(&V3_ENGLISH, &p, typed, 2).is_err());
    }
}
