//! `sentence-transformers/all-MiniLM-L6-v2`, run in-process (the engine lives in the pipeline's
//! `engines::minilm`): only its facts are here, for the registry. It has no wire format.

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
}

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
    },
    async_limits: AsyncLimits::NONE,
    prices: Prices {
        per_1k_tokens: 0.0,
        per_image: 0.0,
        per_query: 0.0,
        per_video_second: 0.0,
        per_audio_second: 0.0,
    },
    params: &[],
    deprecation: None,
};
