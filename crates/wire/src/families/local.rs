//! The local models (run in-process on ONNX Runtime by the pipeline's `engines`): only their
//! registry facts are here. They have no wire format; the engine's catalogue
//! (`engines::catalogue`) adds pooling, prefixes and where the files come from.

use crate::codec::Codec;
use crate::spec::{AsyncLimits, Limits, ModelSpec, Params, Routes};
use crate::vocab::{wire_err, Input, Modality, Parsed, Prices, ProviderKind, WireError};
use serde_json::Value;

/// The local model's codec: every wire call is an error (the engine embeds in-process).
#[derive(Debug)]
pub struct Local;

impl Codec for Local {
    fn build_request(
        &self,
        _spec: &ModelSpec,
        _params: &Params,
        _inputs: &[Input<'_>],
    ) -> Result<Value, WireError> {
        wire_err("the local model has no wire format")
    }

    fn parse_response(
        &self,
        _spec: &ModelSpec,
        _params: &Params,
        _body: &[u8],
    ) -> Result<Parsed, WireError> {
        wire_err("the local model has no wire format")
    }

    /// Queries take the model's query prefix (e5's `query: `, BGE's instruction).
    fn query_params(&self, params: &Params) -> Params {
        Params {
            input_type: Some("query".into()),
            ..params.clone()
        }
    }
}

/// A local model's registry facts; everything else is the all-MiniLM-L6-v2 entry's.
const fn local(
    id: &'static str,
    aliases: &'static [&'static str],
    dimensions: &'static [usize],
    max_input_tokens: usize,
    normalized: bool,
) -> ModelSpec {
    ModelSpec {
        id,
        aliases,
        dimensions,
        max_input_tokens,
        normalized,
        ..SPEC
    }
}

/// The quickstart's model: English, small and fast.
pub const SPEC: ModelSpec = ModelSpec {
    id: "sentence-transformers/all-MiniLM-L6-v2",
    aliases: &["all-MiniLM-L6-v2", "minilm"],
    provider: ProviderKind::Local,
    codec: &Local,
    modalities: &[Modality::Text],
    dimensions: &[384],
    max_inputs_per_call: 1024,
    default_batch_size: 32,
    max_input_tokens: 256,
    normalized: true,
    service_normalizes: false,
    profiles: &[],
    text_image: false,
    limits: Limits::NONE,
    routes: Routes {
        sync: true,
        asynchronous: false,
        sync_needs_profile: false,
        batch: false,
    },
    async_limits: AsyncLimits::NONE,
    prices: Prices::FREE,
    params: &[],
    deprecation: None,
};

/// 50+ languages, paraphrase-trained; its vectors are not normalised by the model.
pub const PARAPHRASE_MULTILINGUAL: ModelSpec = local(
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
    &[
        "paraphrase-multilingual-MiniLM-L12-v2",
        "multilingual-minilm",
    ],
    &[384],
    128,
    false,
);

/// ~100 languages, retrieval-trained; inputs carry `query: ` / `passage: ` prefixes.
pub const MULTILINGUAL_E5_SMALL: ModelSpec = local(
    "intfloat/multilingual-e5-small",
    &["multilingual-e5-small", "e5-small-multilingual"],
    &[384],
    512,
    true,
);

/// English retrieval (BGE); CLS pooling and an instruction before queries.
pub const BGE_SMALL_EN: ModelSpec = local(
    "BAAI/bge-small-en-v1.5",
    &["bge-small-en-v1.5", "bge-small"],
    &[384],
    512,
    true,
);

/// Any other sentence-transformers ONNX export (or BERT checkpoint) in a local `path`: its
/// dimension is the file's `dimensions` (checked against the model when it loads), its pooling
/// and limits the model folder's.
pub const CUSTOM: ModelSpec = local(
    "local-onnx",
    &["custom", "onnx"],
    &[
        128, 256, 312, 384, 512, 768, 1024, 1152, 1280, 1536, 2048, 2560, 3072, 4096,
    ],
    512,
    true,
);
