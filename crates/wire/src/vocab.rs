//! The vocabulary every layer shares: inputs, their kinds and encodings, what a call returns and
//! costs, and the errors of the wire layer. Plain types, no family knowledge.

use serde::{Deserialize, Serialize};

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

/// Where a model runs: in-process, on Amazon Bedrock, or on a server speaking OpenAI's
/// `POST /v1/embeddings` (a LiteLLM proxy, TEI, vLLM, Ollama, OpenAI). Spelled as the pipeline
/// file's `provider` (`local`, `bedrock`, `openai`); the pipeline's config re-exports it as
/// `Provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename = "Provider", rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Bedrock,
    #[serde(rename = "openai")]
    OpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::OpenAi => "openai",
        }
    }
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

impl Prices {
    /// Nothing per unit: in-process and self-hosted models.
    pub const FREE: Prices = Prices {
        per_1k_tokens: 0.0,
        per_image: 0.0,
        per_query: 0.0,
        per_video_second: 0.0,
        per_audio_second: 0.0,
    };
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

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not the response format (cut, garbled, an error page): the call may go better again.
    Unusable(WireError),
    /// A well-formed answer that can never be what the pipeline asked for (vectors of another
    /// dimension, binary vectors when floats were asked): a setting is wrong, and every call
    /// will answer the same.
    Mismatch(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Unusable(e) => e.fmt(f),
            ParseError::Mismatch(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ParseError {}

impl From<WireError> for ParseError {
    fn from(e: WireError) -> Self {
        ParseError::Unusable(e)
    }
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

/// Why an input is not sent (dead-letter kind, reason).
pub type Rejection = (&'static str, String);

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

impl Segment {
    /// What the segment's vector embeds, for a media input of modality `input`: the audio track
    /// of a video (Nova's and Marengo's `audio`, Marengo 3.0's `transcription`) is audio.
    pub fn modality(&self, input: Modality) -> Modality {
        if self.kind == "audio" || self.kind == "transcription" {
            Modality::Audio
        } else {
            input
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
