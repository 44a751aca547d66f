//! Titan Multimodal Embeddings G1: a text, an image or both per call (one vector for the pair),
//! answered with `embedding`, `inputTextTokenCount` and `message`.

use super::common::{decode_b64, dims, image_bytes, object, only, poisoned, string, Obj, POISONED};
use super::Service;
use crate::catalog::{Invoke, Model};
use crate::json::{self, Floats};
use crate::vectors;
use crate::wire::{count_tokens, validation, Accepted, ApiError};

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TitanMmOut<'a> {
    embedding: Floats<'a>,
    input_text_token_count: u64,
    message: Option<&'a str>,
}

/// The family's catalog row.
pub(crate) const MODELS: &[Model] = &[Model {
    id: "amazon.titan-embed-image-v1",
    aliases: &[],
    profiles: &[],
    invoke: Invoke::BaseOrProfile,
    asynchronous: false,
    batch: false,
    dimensions: &[1024, 384, 256],
    // None listed on its page; PNG and JPEG are what every family takes.
    image_formats: &["png", "jpeg"],
    service: &SERVICE,
}];

const SERVICE: Service = Service {
    invoke,
    async_route: None,
};

fn invoke(model: &Model, o: &Obj, poison: Option<&str>) -> Result<Accepted, ApiError> {
    let seed = model.id;
    only(o, &["inputText", "inputImage", "embeddingConfig"], "#")?;
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
    let mut dim = model.dimensions[0];
    if let Some(c) = o.get("embeddingConfig") {
        let c = object(c, "#/embeddingConfig")?;
        only(&c, &["outputEmbeddingLength"], "#/embeddingConfig")?;
        dim = dims(
            c.get("outputEmbeddingLength"),
            model.dimensions,
            "#/embeddingConfig/outputEmbeddingLength",
        )?
        .unwrap_or(dim);
    }
    let mut tokens = 0;
    let mut parts = Vec::new();
    if let Some(t) = text {
        if poisoned(poison, t) {
            return Err(validation(POISONED));
        }
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
        image_bytes(&bytes, model.image_formats, "#/inputImage")?;
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
        input_type: None,
    })
}
