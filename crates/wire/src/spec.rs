//! Static facts about a model ([`ModelSpec`]: limits, routes, prices, parameters, its codec) and
//! the typed parameters of one configured model ([`Params`]). Everything the pipeline decides
//! per family is read from here or asked of the spec's codec.

use crate::codec::Codec;
use crate::vocab::{ImageFormat, Modality, Prices, ProviderKind, Truncate};
use serde::Serialize;

/// Per-input limits the model enforces (checked before sending).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Characters per text input.
    pub max_chars: Option<usize>,
    /// Tokens per text input (the model's context; enforced by the service).
    pub max_tokens: Option<usize>,
    /// Bytes per image (raw, before base64).
    pub max_image_bytes: Option<u64>,
    /// Largest image side in pixels.
    pub max_image_side: Option<u32>,
    /// Accepted image encodings.
    pub image_formats: &'static [ImageFormat],
    /// Images in one call, when fewer than `max_inputs_per_call` (Cohere v3: one, so an image
    /// travels alone).
    pub images_per_call: Option<usize>,
    /// InvokeModel body limit.
    pub max_body_bytes: usize,
}

/// Bedrock's InvokeModel body limit.
pub const MAX_BODY_BYTES: usize = 25_000_000;

impl Limits {
    pub const NONE: Limits = Limits {
        max_chars: None,
        max_tokens: None,
        max_image_bytes: None,
        max_image_side: None,
        image_formats: &[],
        images_per_call: None,
        max_body_bytes: usize::MAX,
    };

    /// Largest image side in pixels: the family's, or [`DEFAULT_MAX_IMAGE_SIDE`].
    pub fn image_side(&self) -> u32 {
        self.max_image_side.unwrap_or(DEFAULT_MAX_IMAGE_SIDE)
    }
}

/// Largest image side sent to a family that documents none (Cohere v3/v4, Nova, Marengo):
/// 8,000 px, the "maximum resolution of 8,000x8,000 pixels" the Amazon Nova user guide gives for
/// image inputs, the only side limit AWS documents besides Titan Multimodal's 2,048. Cohere v4
/// scales anything over 2,458,624 pixels down anyway, so nothing it could use is refused.
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 8000;

/// How a model can be called.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    /// InvokeModel.
    pub sync: bool,
    /// StartAsyncInvoke.
    pub asynchronous: bool,
    /// InvokeModel needs a cross-region inference profile id (`us.`/`eu.`), not the base id.
    pub sync_needs_profile: bool,
    /// Batch inference (CreateModelInvocationJob: JSONL records in S3, half price); only the
    /// models on AWS's batch list.
    pub batch: bool,
}

/// The `segment_seconds` a family's async route accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentSeconds {
    pub min: f64,
    pub max: f64,
    /// Only whole seconds.
    pub whole: bool,
}

/// What the async route (StartAsyncInvoke) of a family accepts besides the media file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsyncLimits {
    /// `segment_seconds` range; `None` without an async route.
    pub segment_seconds: Option<SegmentSeconds>,
    /// `segment_chars` range (long text split into segments); `None` when not a parameter.
    pub segment_chars: Option<(u32, u32)>,
    /// Long text files can be embedded through async jobs (segmented text).
    pub long_text: bool,
}

impl AsyncLimits {
    /// No async route.
    pub const NONE: AsyncLimits = AsyncLimits {
        segment_seconds: None,
        segment_chars: None,
        long_text: false,
    };
}

/// A pipeline-file parameter a family accepts: its key and, for enumerations, the values.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub key: &'static str,
    /// Allowed values (exact spelling); empty for free-form numbers/booleans.
    pub values: &'static [&'static str],
    /// Default value shown in help (`None` when the service's default applies silently).
    pub default: Option<&'static str>,
}

/// Static facts about one model.
#[derive(Debug)]
pub struct ModelSpec {
    /// Canonical (base) id, as written in pipeline files.
    pub id: &'static str,
    /// Other accepted spellings of the id.
    pub aliases: &'static [&'static str],
    /// Cross-region inference profile prefixes accepted in front of the id (`us.`, `eu.`, ...).
    pub profiles: &'static [&'static str],
    pub provider: ProviderKind,
    /// The family's wire format and quirks.
    pub codec: &'static dyn Codec,
    pub modalities: &'static [Modality],
    /// Modalities sent as text+image pairs into one vector.
    pub text_image: bool,
    /// Output dimensions the model can produce; the first is the default.
    pub dimensions: &'static [usize],
    /// Largest number of inputs in one call.
    pub max_inputs_per_call: usize,
    /// Default inputs per call.
    pub default_batch_size: usize,
    /// Tokens per input the model reads.
    pub max_input_tokens: usize,
    /// Whether the model's vectors are unit length by default.
    pub normalized: bool,
    /// The service L2-normalises on request (Titan Text v2's `normalize`), so the client does
    /// not normalise its vectors.
    pub service_normalizes: bool,
    pub limits: Limits,
    pub routes: Routes,
    /// What the async route accepts (segment lengths, long text).
    pub async_limits: AsyncLimits,
    pub prices: Prices,
    /// Model parameters the pipeline file may set for this model.
    pub params: &'static [ParamSpec],
    /// Retirement note shown by `validate`.
    pub deprecation: Option<&'static str>,
}

impl ModelSpec {
    pub fn default_dimension(&self) -> usize {
        self.dimensions[0]
    }

    pub fn param(&self, key: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.key == key)
    }
}

/// Embedding types a model can return besides float.
pub const EMBEDDING_TYPES: &[&str] = &["float", "int8", "uint8", "binary", "ubinary"];

/// Media container formats a family's async route accepts, by modality.
pub fn media_formats(modality: Modality) -> &'static [&'static str] {
    match modality {
        Modality::Video => &[
            "mp4", "mov", "mkv", "webm", "flv", "mpeg", "mpg", "wmv", "3gp",
        ],
        Modality::Audio => &["mp3", "wav", "ogg"],
        Modality::Text => &["txt"],
        _ => &[],
    }
}

/// Typed, validated model parameters (from `[[model]]`).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub dimension: usize,
    /// L2-normalise (Titan v2 on the service; other families on the client).
    pub normalize: bool,
    /// Extra embedding types to request (besides float, which is always requested).
    pub embedding_types: Vec<String>,
    /// Cohere `input_type` / Nova `embeddingPurpose`.
    pub input_type: Option<String>,
    /// Wire value of the truncation mode, if any (`END`, `RIGHT`, `end`, ...).
    pub truncate: Option<String>,
    /// Cohere v4 `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Nova `detailLevel` for images.
    pub detail_level: Option<String>,
    /// Marengo `embeddingOption`.
    pub embedding_options: Vec<String>,
    /// Nova video `embeddingMode`.
    pub embedding_mode: Option<String>,
    /// Async segment length (seconds).
    pub segment_seconds: Option<f64>,
    /// Nova long text: longest segment (characters).
    pub segment_chars: Option<u32>,
    /// Marengo `bucketOwner` for S3 media.
    pub bucket_owner: Option<String>,
    /// OpenAI-compatible: the model name the body carries (servers route on it).
    pub model: Option<String>,
    /// OpenAI-compatible `encoding_format` (`float`, `base64`).
    pub encoding_format: Option<String>,
    /// OpenAI-compatible: send `dimensions` (servers of fixed-size models may refuse it).
    pub send_dimensions: bool,
    /// OpenAI-compatible: text put before queries (`input_type = "query"`) and before every
    /// other input.
    pub query_prefix: Option<String>,
    pub document_prefix: Option<String>,
}

impl Params {
    /// The family defaults at `dimension`.
    pub fn defaults(spec: &ModelSpec) -> Self {
        let default = |k: &str| spec.param(k).and_then(|p| p.default).map(|s| s.to_string());
        Params {
            dimension: spec.default_dimension(),
            normalize: spec.normalized,
            embedding_types: Vec::new(),
            input_type: default("input_type"),
            truncate: default("truncate"),
            max_tokens: None,
            detail_level: None,
            embedding_options: Vec::new(),
            embedding_mode: None,
            segment_seconds: None,
            segment_chars: None,
            bucket_owner: None,
            model: None,
            encoding_format: None,
            send_dimensions: true,
            query_prefix: None,
            document_prefix: None,
        }
    }

    /// The parameters for embedding a search query against vectors made with `self`: the
    /// query-side input type where the family has one (Cohere `search_query`, Nova
    /// `GENERIC_RETRIEVAL`); everything that shapes the space stays. See
    /// [`Codec::query_params`].
    pub fn for_query(&self, spec: &ModelSpec) -> Params {
        spec.codec.query_params(self)
    }

    /// Embedding types to ask for: float always (it is what the table stores), then the extras.
    pub fn requested_types(&self) -> Vec<&str> {
        std::iter::once("float")
            .chain(
                self.embedding_types
                    .iter()
                    .map(String::as_str)
                    .filter(|t| *t != "float"),
            )
            .collect()
    }

    pub fn truncation(&self) -> Truncate {
        self.truncate
            .as_deref()
            .and_then(Truncate::from_wire)
            .unwrap_or(Truncate::None)
    }
}
