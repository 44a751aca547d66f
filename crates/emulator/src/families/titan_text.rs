//! Titan Text Embeddings v1 and v2 (one format; v1 takes `inputText` only): one text per call,
//! answered with `embedding` and, from v2, `embeddingsByType`.

use super::common::{dims, kind, one_of, only, poisoned, required, string, Obj, POISONED};
use super::Service;
use crate::catalog::{Invoke, Model};
use crate::json::{self, Floats};
use crate::vectors;
use crate::wire::{count_tokens, validation, Accepted, ApiError};
use serde_json::Value;

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

/// Which of the two versions a row is: v1 reads `inputText` only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The family's catalog rows.
pub(crate) const MODELS: &[Model] = &[
    Model {
        id: "amazon.titan-embed-text-v1",
        // The legacy id LiteLLM still knows; pipelines written with it keep working.
        aliases: &["amazon.titan-embed-g1-text-02"],
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
        batch: false,
        dimensions: &[1536],
        image_formats: &[],
        service: &V1,
    },
    Model {
        id: "amazon.titan-embed-text-v2:0",
        aliases: &[],
        profiles: &[],
        invoke: Invoke::BaseOrProfile,
        asynchronous: false,
        batch: true,
        dimensions: &[1024, 512, 256],
        image_formats: &[],
        service: &V2,
    },
];

const V1: Service = Service {
    invoke: |model, o, poison| invoke(Version::V1, model, o, poison),
    async_route: None,
};

const V2: Service = Service {
    invoke: |model, o, poison| invoke(Version::V2, model, o, poison),
    async_route: None,
};

fn invoke(
    version: Version,
    model: &Model,
    o: &Obj,
    poison: Option<&str>,
) -> Result<Accepted, ApiError> {
    let seed = model.id;
    let v2 = version == Version::V2;
    only(
        o,
        if v2 {
            &["inputText", "dimensions", "normalize", "embeddingTypes"]
        } else {
            &["inputText"]
        },
        "#",
    )?;
    let text = string(required(o, "inputText", "#")?, "#/inputText")?;
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
    if poisoned(poison, text) {
        return Err(validation(POISONED));
    }
    let tokens = count_tokens(text);
    if tokens > 8192 {
        return Err(validation(format!(
            "Input is too long for requested model ({tokens} tokens, limit 8192)"
        )));
    }
    let dim = if v2 {
        dims(o.get("dimensions"), model.dimensions, "#/dimensions")?.unwrap_or(model.dimensions[0])
    } else {
        model.dimensions[0]
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
    let types = embedding_types(o)?;
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
        input_type: None,
    })
}

/// `embeddingTypes` (v2): `float` when absent.
fn embedding_types(o: &Obj) -> Result<Vec<String>, ApiError> {
    let mut types = vec!["float".to_string()];
    if let Some(t) = o.get("embeddingTypes") {
        let Some(a) = t.as_array() else {
            return Err(validation(format!(
                "Malformed input request: #/embeddingTypes: expected type: JSONArray, found: {}",
                kind(t)
            )));
        };
        if a.is_empty() {
            return Err(validation(
                "Malformed input request: #/embeddingTypes: expected minItems: 1",
            ));
        }
        types = a
            .iter()
            .map(|x| one_of(x, &["float", "binary"], "#/embeddingTypes").map(str::to_string))
            .collect::<Result<_, _>>()?;
    }
    Ok(types)
}
