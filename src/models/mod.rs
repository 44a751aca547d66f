//! The model registry and the request/response transformers: what each embedding model accepts
//! and produces, and how its JSON looks on the wire. One file per family.
//!
//! Models know JSON, not HTTP: a family turns typed [`Input`]s and [`Params`] into an InvokeModel
//! body and parses the answer into vectors and [`Usage`]. Providers move the bytes.
//!
//! Adding a model family means one file here and one line in [`registry`] (plus its arms in
//! [`build_request`] / [`parse_response`]).

pub mod cohere;
mod floats;
pub mod local_minilm;
pub mod marengo;
pub mod nova;
pub mod titan_multimodal;
pub mod titan_text;

use crate::config::Provider;
use serde::Serialize;
use serde_json::Value;

/// Kinds of model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Image,
    Video,
    Audio,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Video => "video",
            Modality::Audio => "audio",
        }
    }
}

/// Model families: each has its own wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Family {
    LocalMiniLm,
    TitanTextV1,
    TitanTextV2,
    TitanMultimodal,
    CohereV3,
    CohereV4,
    Nova2,
    Marengo27,
    Marengo30,
}

/// Image encodings a model may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl ImageFormat {
    /// Detects the format from magic bytes.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }
}

/// An image ready to send: bytes plus their detected format.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub bytes: &'a [u8],
    pub format: ImageFormat,
}

impl Image<'_> {
    pub fn base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    pub fn data_uri(&self) -> String {
        format!("data:{};base64,{}", self.format.mime(), self.base64())
    }
}

/// One typed model input.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Text(&'a str),
    Image(Image<'a>),
    /// Text and image embedded together into one vector (Cohere v4 interleaved, Titan
    /// multimodal averaged, Marengo 3.0 `text_image`).
    TextImage(&'a str, Image<'a>),
}

impl Input<'_> {
    pub fn text(&self) -> Option<&str> {
        match self {
            Input::Text(t) | Input::TextImage(t, _) => Some(t),
            Input::Image(_) => None,
        }
    }

    pub fn image(&self) -> Option<&Image<'_>> {
        match self {
            Input::Image(i) | Input::TextImage(_, i) => Some(i),
            Input::Text(_) => None,
        }
    }
}

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

/// Most memory one image may take while it is decoded (16-bit RGBA at 8,000x8,000 px fits).
const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest GIF frame the GIF decoder unpacks (its own fixed budget, 50 MB of RGBA, about
/// 3,500x3,500 px): a larger GIF gets the header checks only, rather than be refused as corrupt.
const GIF_DECODE_BYTES: u64 = 50_000_000;

/// How a model can be called.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    /// InvokeModel.
    pub sync: bool,
    /// StartAsyncInvoke.
    pub asynchronous: bool,
    /// InvokeModel needs a cross-region inference profile id (`us.`/`eu.`), not the base id.
    pub sync_needs_profile: bool,
}

/// List prices in USD (on-demand, us-east-1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Prices {
    pub per_1k_tokens: f64,
    pub per_image: f64,
    /// Marengo bills text inputs per query.
    pub per_query: f64,
    pub per_video_second: f64,
    pub per_audio_second: f64,
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
    pub provider: Provider,
    pub family: Family,
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
    pub limits: Limits,
    pub routes: Routes,
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

/// Every model embedpipe knows.
pub fn registry() -> &'static [ModelSpec] {
    static REGISTRY: [ModelSpec; 10] = [
        local_minilm::SPEC,
        titan_text::V1,
        titan_text::V2,
        titan_multimodal::SPEC,
        cohere::V3_ENGLISH,
        cohere::V3_MULTILINGUAL,
        cohere::V4,
        nova::SPEC,
        marengo::V2_7,
        marengo::V3_0,
    ];
    &REGISTRY
}

/// A model id as written, resolved against the registry.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub spec: &'static ModelSpec,
    /// The inference-profile prefix (`us.`), if the id carried one.
    pub profile: Option<&'static str>,
}

/// Finds a model by id, alias or profile id (`us.cohere.embed-v4:0`), case-insensitively.
pub fn resolve(id: &str) -> Option<Resolved> {
    let matches = |s: &ModelSpec, id: &str| {
        s.id.eq_ignore_ascii_case(id) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(id))
    };
    for s in registry() {
        if matches(s, id) {
            return Some(Resolved {
                spec: s,
                profile: None,
            });
        }
        for p in s.profiles {
            if id.len() > p.len()
                && id[..p.len()].eq_ignore_ascii_case(p)
                && matches(s, &id[p.len()..])
            {
                return Some(Resolved {
                    spec: s,
                    profile: Some(p),
                });
            }
        }
    }
    None
}

/// Finds a model by id or alias (case-insensitive), with or without a profile prefix.
pub fn lookup(id: &str) -> Option<&'static ModelSpec> {
    resolve(id).map(|r| r.spec)
}

/// Embedding types a model can return besides float.
pub const EMBEDDING_TYPES: &[&str] = &["float", "int8", "uint8", "binary", "ubinary"];

/// How over-long text is handled (the family's own vocabulary maps onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Truncate {
    /// Too long is an error: the row is dead-lettered.
    None,
    /// Keep the beginning (cut the end).
    End,
    /// Keep the end (cut the beginning).
    Start,
}

impl Truncate {
    /// Maps a family's wire value (`END`, `RIGHT`, `end`, ...) onto the policy.
    pub fn from_wire(v: &str) -> Option<Self> {
        match v.to_ascii_uppercase().as_str() {
            "NONE" => Some(Self::None),
            "END" | "RIGHT" => Some(Self::End),
            "START" | "LEFT" => Some(Self::Start),
            _ => None,
        }
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
        }
    }

    /// The parameters for embedding a search query against vectors made with `self`: the
    /// query-side input type where the family has one (Cohere `search_query`, Nova
    /// `GENERIC_RETRIEVAL`); everything that shapes the space stays.
    pub fn for_query(&self, spec: &ModelSpec) -> Params {
        let mut q = self.clone();
        match (spec.family, self.input_type.as_deref()) {
            (Family::CohereV3 | Family::CohereV4, Some("search_document") | None) => {
                q.input_type = Some("search_query".into())
            }
            (Family::Nova2, Some("GENERIC_INDEX") | None) => {
                q.input_type = Some("GENERIC_RETRIEVAL".into())
            }
            _ => {}
        }
        q
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

/// Billable units of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    /// `input_tokens` is a client-side estimate (the service returned no count).
    pub tokens_estimated: bool,
    pub images: u64,
    /// Marengo text queries.
    pub queries: u64,
    pub video_seconds: f64,
    pub audio_seconds: f64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.tokens_estimated |= o.tokens_estimated;
        self.images += o.images;
        self.queries += o.queries;
        self.video_seconds += o.video_seconds;
        self.audio_seconds += o.audio_seconds;
    }

    pub fn cost(&self, p: &Prices) -> f64 {
        self.input_tokens as f64 / 1000.0 * p.per_1k_tokens
            + self.images as f64 * p.per_image
            + self.queries as f64 * p.per_query
            + self.video_seconds * p.per_video_second
            + self.audio_seconds * p.per_audio_second
    }
}

/// A parsed InvokeModel response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One float vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Other requested embedding types, per type one integer vector per input.
    pub other_types: Vec<(String, Vec<Vec<i64>>)>,
    /// Input tokens, when the service reports them.
    pub input_tokens: Option<u64>,
}

/// A request could not be built or a response not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

pub(crate) fn wire_err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

/// Builds the InvokeModel JSON body for `inputs` (all of one kind, at most
/// `max_inputs_per_call`).
pub fn build_request(
    spec: &ModelSpec,
    params: &Params,
    inputs: &[Input<'_>],
) -> Result<Value, WireError> {
    if inputs.is_empty() || inputs.len() > spec.max_inputs_per_call {
        return wire_err(format!(
            "{} takes 1 to {} inputs per call, got {}",
            spec.id,
            spec.max_inputs_per_call,
            inputs.len()
        ));
    }
    match spec.family {
        Family::LocalMiniLm => wire_err("the local model has no wire format"),
        Family::TitanTextV1 | Family::TitanTextV2 => titan_text::build(spec, params, inputs),
        Family::TitanMultimodal => titan_multimodal::build(params, inputs),
        Family::CohereV3 | Family::CohereV4 => cohere::build(spec, params, inputs),
        Family::Nova2 => nova::build(params, inputs),
        Family::Marengo27 | Family::Marengo30 => marengo::build(spec, params, inputs),
    }
}

/// Parses an InvokeModel response body for a call of `n` inputs.
pub fn parse_response(
    spec: &ModelSpec,
    params: &Params,
    body: &[u8],
    n: usize,
) -> Result<Parsed, WireError> {
    let parsed = match spec.family {
        Family::LocalMiniLm => return wire_err("the local model has no wire format"),
        Family::TitanTextV1 | Family::TitanTextV2 => {
            titan_text::parse(params, from_json_fast(spec, body)?)?
        }
        Family::TitanMultimodal => titan_multimodal::parse(from_json_fast(spec, body)?)?,
        Family::CohereV3 | Family::CohereV4 => cohere::parse(params, from_json_fast(spec, body)?)?,
        Family::Nova2 => nova::parse(from_json_fast(spec, body)?)?,
        Family::Marengo27 | Family::Marengo30 => marengo::parse(&from_json(spec, body)?)?,
    };
    if parsed.vectors.len() != n {
        return wire_err(format!(
            "{} returned {} vectors for {} inputs",
            spec.id,
            parsed.vectors.len(),
            n
        ));
    }
    if let Some(v) = parsed.vectors.iter().find(|v| v.len() != params.dimension) {
        return wire_err(format!(
            "{} returned a {}-dimensional vector, expected {}",
            spec.id,
            v.len(),
            params.dimension
        ));
    }
    Ok(parsed)
}

/// A video or audio file in S3, the input of one async job.
#[derive(Debug, Clone, Copy)]
pub struct MediaRef<'a> {
    pub uri: &'a str,
    pub modality: Modality,
    /// Container format token (`mp4`, `wav`, ...).
    pub format: &'a str,
}

/// One embedded segment of a media file.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Position within its embedding kind, from 0.
    pub index: u32,
    /// Bounds in seconds (video, audio) or characters (long text: `start_char`/`end_char`).
    pub start_sec: Option<f64>,
    pub end_sec: Option<f64>,
    pub start_char: Option<u64>,
    pub end_char: Option<u64>,
    /// What the vector embeds: Nova `embeddingType` (`audio_video_combined`, `video`, `audio`),
    /// Marengo `embeddingOption` (`visual-text`, `visual-image`, `audio`, ...).
    pub kind: String,
    pub vector: Vec<f32>,
}

/// The `modelInput` of StartAsyncInvoke for one media file.
pub fn build_async(
    spec: &ModelSpec,
    params: &Params,
    media: &MediaRef<'_>,
) -> Result<Value, WireError> {
    match spec.family {
        Family::Nova2 => Ok(nova::build_async(params, media)),
        Family::Marengo27 | Family::Marengo30 => Ok(marengo::build_async(spec, params, media)),
        _ => wire_err(format!("{} has no async invoke route", spec.id)),
    }
}

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

/// Deserialises a response body into a family's response type (typed, so vectors go straight
/// into `Vec<f32>` without an intermediate JSON tree).
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(
    spec: &ModelSpec,
    body: &'a [u8],
) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| not_the_format(spec, body, e))
}

/// [`from_json`] for response types whose vectors are [`floats::Vector`]s: the numbers are read
/// without serde (most of a response is numbers).
fn from_json_fast<T: serde::de::DeserializeOwned>(
    spec: &ModelSpec,
    body: &[u8],
) -> Result<T, WireError> {
    floats::from_json(body).map_err(|e| not_the_format(spec, body, e))
}

fn not_the_format(spec: &ModelSpec, body: &[u8], e: serde_json::Error) -> WireError {
    WireError(format!(
        "{} answered with a body that is not its response format ({e}): {}",
        spec.id,
        snippet(body)
    ))
}

/// The first bytes of a body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    if body.len() > 200 {
        format!("{s}…")
    } else {
        s.into_owned()
    }
}

/// Reads a JSON array of numbers as f32.
pub(crate) fn f32_vec(v: &Value, what: &str) -> Result<Vec<f32>, WireError> {
    let Some(a) = v.as_array() else {
        return wire_err(format!("`{what}` is not an array"));
    };
    a.iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| WireError(format!("`{what}` holds a non-number")))
        })
        .collect()
}

/// Client-side token estimate for services that return no count (≈ 4 characters per token).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// L2-normalises in place (zero vectors stay zero).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Why an input is not sent (dead-letter kind, reason).
pub type Rejection = (&'static str, String);

/// Checks one input against the model's limits before anything is sent. Returns the text to send
/// when it had to be cut (the truncation policy allows it), or the reason to dead-letter it.
/// An image is decoded (see [`check_image`]): for images, call this on rayon.
pub fn preflight(
    spec: &ModelSpec,
    params: &Params,
    input: &Input<'_>,
) -> Result<Option<String>, Rejection> {
    let mut cut = None;
    if let Some(text) = input.text() {
        if !spec.modalities.contains(&Modality::Text) {
            return Err(("wrong_modality", format!("{} does not take text", spec.id)));
        }
        if text.trim().is_empty() {
            return Err(("empty_input", "the text is empty".into()));
        }
        if let Some(max) = spec.limits.max_chars {
            let n = text.chars().count();
            if n > max {
                cut = Some(match params.truncation() {
                    Truncate::None => {
                        return Err((
                            "input_too_long",
                            format!(
                            "the text has {n} characters, over the {max}-character limit of {}; \
                                 set `truncate` in its [[model]] table to cut it instead",
                            spec.id
                        ),
                        ))
                    }
                    Truncate::End => text.chars().take(max).collect(),
                    Truncate::Start => text.chars().skip(n - max).collect(),
                });
            }
        }
    }
    if let Some(img) = input.image() {
        if !spec.modalities.contains(&Modality::Image) {
            return Err((
                "wrong_modality",
                format!("{} does not take images", spec.id),
            ));
        }
        let allowed = spec.limits.image_formats;
        if !allowed.contains(&img.format) {
            let names: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
            return Err((
                "unsupported_image_format",
                format!(
                    "{} images are not accepted by {}; it takes {}",
                    img.format.as_str(),
                    spec.id,
                    names.join(", ")
                ),
            ));
        }
        if let Some(max) = spec.limits.max_image_bytes {
            if img.bytes.len() as u64 > max {
                return Err((
                    "image_too_large",
                    format!(
                        "the image has {} bytes, over the {max}-byte limit of {}",
                        img.bytes.len(),
                        spec.id
                    ),
                ));
            }
        }
        if img.bytes.len().div_ceil(3) * 4 > spec.limits.max_body_bytes {
            return Err((
                "image_too_large",
                format!(
                    "the image is too large for one request ({} bytes after base64; the limit is {})",
                    img.bytes.len().div_ceil(3) * 4,
                    spec.limits.max_body_bytes
                ),
            ));
        }
        check_image(spec, img)?;
    }
    Ok(cut)
}

/// Checks that an image is within the family's pixel limit and decodes, so that a cut-off or
/// corrupt file is not sent (and paid for). The size is read from the header first: a file that
/// declares giant dimensions (a decompression bomb) is refused without decoding. The one full
/// decode is CPU work: call this on rayon.
pub fn check_image(spec: &ModelSpec, img: &Image<'_>) -> Result<(), Rejection> {
    let side = spec.limits.image_side();
    let size = imagesize::blob_size(img.bytes).map_err(|e| {
        (
            "unreadable_image",
            format!("the image header cannot be read: {e}"),
        )
    })?;
    if size.width > side as usize || size.height > side as usize {
        return Err((
            "image_too_large",
            format!(
                "the image is {}x{} pixels, over the {side}x{side} limit of {}",
                size.width, size.height, spec.id
            ),
        ));
    }
    if img.format == ImageFormat::Jpeg && !jpeg_is_complete(img.bytes) {
        return Err((
            "unreadable_image",
            "the JPEG is cut short: its image data has no end-of-image marker".into(),
        ));
    }
    if img.format == ImageFormat::Gif
        && size.width as u64 * size.height as u64 * 4 > GIF_DECODE_BYTES
    {
        return Ok(());
    }
    let format = match img.format {
        ImageFormat::Png => ::image::ImageFormat::Png,
        ImageFormat::Jpeg => ::image::ImageFormat::Jpeg,
        ImageFormat::Gif => ::image::ImageFormat::Gif,
        ImageFormat::Webp => ::image::ImageFormat::WebP,
    };
    // The decoder checks the header against these before it allocates anything.
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = ::image::ImageReader::with_format(std::io::Cursor::new(img.bytes), format);
    reader.limits(limits);
    // A decoder that panics on a hostile file costs that row, not the run.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    match decoded {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(::image::ImageError::Limits(e))) => Err((
            "image_too_large",
            format!(
                "the image cannot be decoded within {} MiB: {e}",
                MAX_DECODE_BYTES >> 20
            ),
        )),
        Ok(Err(e)) => Err((
            "unreadable_image",
            format!("the {} image cannot be decoded: {e}", img.format.as_str()),
        )),
        Err(_) => Err((
            "unreadable_image",
            format!("the {} image cannot be decoded", img.format.as_str()),
        )),
    }
}

/// Whether a JPEG's image data runs to its end-of-image marker. JPEG decoders fill a cut-off
/// scan with grey rather than fail, so a truncated file would decode.
fn jpeg_is_complete(b: &[u8]) -> bool {
    // Step over the marker segments up to the first start of scan (an EXIF thumbnail, with an
    // end marker of its own, sits inside its APP1 segment), then look for the end marker: in
    // scan data 0xFF is followed only by 0x00 or a restart marker, so FF D9 there is the end.
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        match marker {
            // A fill byte.
            0xFF => i += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => i += 2,
            0xD9 => return false,
            _ => {
                let next = i + 2 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                if marker == 0xDA {
                    return b.get(next..).is_some_and(|scan| {
                        scan.windows(2).rev().any(|w| w[0] == 0xFF && w[1] == 0xD9)
                    });
                }
                i = next;
            }
        }
    }
    false
}

/// The billable units of one successful call.
pub fn usage(spec: &ModelSpec, inputs: &[Input<'_>], parsed: &Parsed) -> Usage {
    let mut u = Usage::default();
    match parsed.input_tokens {
        Some(t) => u.input_tokens = t,
        None => {
            u.input_tokens = inputs
                .iter()
                .filter_map(|i| i.text())
                .map(estimate_tokens)
                .sum();
            u.tokens_estimated = u.input_tokens > 0;
        }
    }
    u.images = inputs.iter().filter(|i| i.image().is_some()).count() as u64;
    if spec.family == Family::CohereV4 && parsed.input_tokens.is_none() {
        // Cohere v4 bills images as tokens: pixels ÷ 784 × 4, after resizing into
        // [3,136, 2,458,624] pixels.
        for img in inputs.iter().filter_map(|i| i.image()) {
            let px = imagesize::blob_size(img.bytes)
                .map_or(2_458_624, |s| (s.width * s.height) as u64)
                .clamp(3_136, 2_458_624);
            u.input_tokens += px / 784 * 4;
            u.tokens_estimated = true;
        }
    }
    if matches!(spec.family, Family::Marengo27 | Family::Marengo30) {
        // Marengo bills text per query, not per token.
        u.queries = inputs.iter().filter(|i| i.text().is_some()).count() as u64;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_id_alias_and_profile() {
        assert_eq!(
            lookup("sentence-transformers/all-MiniLM-L6-v2").unwrap().id,
            local_minilm::SPEC.id
        );
        assert_eq!(
            lookup("all-minilm-l6-v2").unwrap().id,
            local_minilm::SPEC.id
        );
        let r = resolve("us.cohere.embed-v4:0").unwrap();
        assert_eq!(r.spec.id, "cohere.embed-v4:0");
        assert_eq!(r.profile, Some("us."));
        assert!(resolve("xx.cohere.embed-v4:0").is_none());
        // Titan has no profiles.
        assert!(resolve("us.amazon.titan-embed-text-v2:0").is_none());
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn registry_entries_are_consistent() {
        let mut ids = std::collections::HashSet::new();
        for s in registry() {
            assert!(ids.insert(s.id), "duplicate {}", s.id);
            assert!(!s.dimensions.is_empty(), "{}", s.id);
            assert!(s.default_batch_size <= s.max_inputs_per_call, "{}", s.id);
            assert!(!s.modalities.is_empty(), "{}", s.id);
            if s.modalities.contains(&Modality::Image) {
                assert!(!s.limits.image_formats.is_empty(), "{}", s.id);
            }
        }
    }

    #[test]
    fn image_formats_by_magic() {
        assert_eq!(
            ImageFormat::detect(b"\x89PNG\r\n\x1a\n...."),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            ImageFormat::detect(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::Webp)
        );
        assert_eq!(ImageFormat::detect(b"BM...."), None);
    }

    #[test]
    fn preflight_rejects_and_truncates() {
        let mut p = Params::defaults(&cohere::V3_ENGLISH);
        let long = "x".repeat(3000);
        let e = preflight(&cohere::V3_ENGLISH, &p, &Input::Text(&long)).unwrap_err();
        assert_eq!(e.0, "input_too_long");
        assert!(e.1.contains("2048"), "{}", e.1);
        p.truncate = Some("END".into());
        let cut = preflight(&cohere::V3_ENGLISH, &p, &Input::Text(&long)).unwrap();
        assert_eq!(cut.unwrap().len(), 2048);
        assert_eq!(
            preflight(&cohere::V3_ENGLISH, &p, &Input::Text(" "))
                .unwrap_err()
                .0,
            "empty_input"
        );
        let gif = Image {
            bytes: b"GIF89a\x01\0\x01\0",
            format: ImageFormat::Gif,
        };
        let e = preflight(&titan_multimodal::SPEC, &p, &Input::Image(gif)).unwrap_err();
        assert_eq!(e.0, "unsupported_image_format");
        assert!(e.1.contains("png, jpeg"), "{}", e.1);
        let e = preflight(&titan_text::V2, &p, &Input::Image(gif)).unwrap_err();
        assert_eq!(e.0, "wrong_modality");
        // A PNG header claiming 4000x10 pixels is over Titan multimodal's 2048 px side.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&4000u32.to_be_bytes());
        png.extend_from_slice(&10u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        let big = Image {
            bytes: &png,
            format: ImageFormat::Png,
        };
        let e = preflight(&titan_multimodal::SPEC, &p, &Input::Image(big)).unwrap_err();
        assert_eq!(e.0, "image_too_large");
        assert!(e.1.contains("4000x10"), "{}", e.1);
    }

    /// A small PNG or JPEG of noise (so its data does not compress to almost nothing).
    fn encoded(format: ::image::ImageFormat) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        let img = ::image::RgbImage::from_fn(64, 48, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let [r, g, b, _] = x.to_le_bytes();
            ::image::Rgb([r, g, b])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn preflight_decodes_images_and_checks_their_pixels() {
        let p = Params::defaults(&nova::SPEC);
        let check = |spec: &ModelSpec, bytes: &[u8]| -> Result<(), &'static str> {
            let format = ImageFormat::detect(bytes).unwrap();
            preflight(spec, &p, &Input::Image(Image { bytes, format }))
                .map(|_| ())
                .map_err(|e| e.0)
        };
        let png = encoded(::image::ImageFormat::Png);
        let jpeg = encoded(::image::ImageFormat::Jpeg);
        // The signature and IHDR (33 bytes) are sound, what follows is not PNG.
        let mut garbage = png[..33].to_vec();
        garbage.extend_from_slice(&[0xAB; 512]);
        // Bytes after the end marker (camera trailers) are no reason to refuse a JPEG.
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"\0\0trailer");
        for spec in [&nova::SPEC, &cohere::V4, &titan_multimodal::SPEC] {
            assert_eq!(check(spec, &png), Ok(()), "{}", spec.id);
            assert_eq!(check(spec, &jpeg), Ok(()), "{}", spec.id);
            assert_eq!(check(spec, &trailer), Ok(()), "{}", spec.id);
            // Cut short: the header is intact, the image data is not.
            let half = &png[..png.len() / 2];
            assert_eq!(check(spec, half), Err("unreadable_image"), "{}", spec.id);
            let cut = &jpeg[..jpeg.len() * 2 / 3];
            assert_eq!(check(spec, cut), Err("unreadable_image"), "{}", spec.id);
            assert_eq!(
                check(spec, &garbage),
                Err("unreadable_image"),
                "{}",
                spec.id
            );
        }
        // A header declaring 60000x60000 pixels is refused from the header, for every family.
        let mut giant = png.clone();
        giant[16..20].copy_from_slice(&60000u32.to_be_bytes());
        giant[20..24].copy_from_slice(&60000u32.to_be_bytes());
        for spec in [
            &nova::SPEC,
            &cohere::V4,
            &cohere::V3_ENGLISH,
            &marengo::V3_0,
            &titan_multimodal::SPEC,
        ] {
            let img = Image {
                bytes: &giant,
                format: ImageFormat::Png,
            };
            let e = preflight(spec, &p, &Input::Image(img)).unwrap_err();
            assert_eq!(e.0, "image_too_large", "{}", spec.id);
            assert!(e.1.contains("60000x60000"), "{}", e.1);
        }
        // Text and image together: the image is checked the same way.
        let cut = Image {
            bytes: &png[..png.len() / 2],
            format: ImageFormat::Png,
        };
        let e = preflight(&cohere::V4, &p, &Input::TextImage("a caption", cut)).unwrap_err();
        assert_eq!(e.0, "unreadable_image");
    }

    #[test]
    fn jpeg_completeness_looks_past_the_headers() {
        let jpeg = encoded(::image::ImageFormat::Jpeg);
        assert!(jpeg_is_complete(&jpeg));
        // Cut just before the end marker.
        assert!(!jpeg_is_complete(&jpeg[..jpeg.len() - 2]));
        // An end marker inside a header segment (a thumbnail in APP1) does not count.
        let mut app1 = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        app1.extend_from_slice(&jpeg[2..jpeg.len() - 2]);
        assert!(!jpeg_is_complete(&app1));
    }

    #[test]
    fn usage_uses_reported_tokens_or_estimates() {
        let parsed = Parsed {
            input_tokens: Some(9),
            ..Default::default()
        };
        let u = usage(&titan_text::V2, &[Input::Text("abcdefgh")], &parsed);
        assert_eq!((u.input_tokens, u.tokens_estimated), (9, false));
        let u = usage(&nova::SPEC, &[Input::Text("abcdefgh")], &Parsed::default());
        assert_eq!((u.input_tokens, u.tokens_estimated), (2, true));
        let u = usage(&marengo::V3_0, &[Input::Text("abc")], &Parsed::default());
        assert_eq!(u.queries, 1);
    }

    #[test]
    fn queries_use_the_query_side_input_type() {
        let p = Params::defaults(&cohere::V4);
        assert_eq!(p.input_type.as_deref(), Some("search_document"));
        let q = p.for_query(&cohere::V4);
        assert_eq!(q.input_type.as_deref(), Some("search_query"));
        assert_eq!(q.dimension, p.dimension);
        let n = Params::defaults(&nova::SPEC).for_query(&nova::SPEC);
        assert_eq!(n.input_type.as_deref(), Some("GENERIC_RETRIEVAL"));
        let mut c = Params::defaults(&cohere::V3_ENGLISH);
        c.input_type = Some("clustering".into());
        assert_eq!(
            c.for_query(&cohere::V3_ENGLISH).input_type.as_deref(),
            Some("clustering")
        );
    }

    #[test]
    fn cost_adds_every_unit() {
        let u = Usage {
            input_tokens: 2000,
            images: 3,
            queries: 1,
            ..Default::default()
        };
        let p = Prices {
            per_1k_tokens: 0.5,
            per_image: 1.0,
            per_query: 10.0,
            ..Default::default()
        };
        assert!((u.cost(&p) - 14.0).abs() < 1e-9);
    }
}
