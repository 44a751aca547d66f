//! The pipeline file: parsing, `${ENV}` interpolation, and every check that needs no data.
//!
//! Checks that need the source schema or the sink live in [`crate::validate`].

mod env;
mod error;

pub use env::{expand, is_credential_variable, EnvString};
pub use error::{did_you_mean, ConfigError, ConfigErrorDetail};

use crate::models::{self, Modality, ModelSpec};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// Default rows per source batch.
pub const DEFAULT_BATCH_ROWS: usize = 1024;
/// Rows per commit of an incremental run.
pub const DEFAULT_COMMIT_ROWS: usize = 10_000;

/// Default per-image size limit (Bedrock's largest image limit is 25 MB; local files above this are
/// almost certainly not meant to be embedded).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 25 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub source: Spanned<SourceConfig>,
    #[serde(default, rename = "model")]
    pub models: Vec<Spanned<ModelConfig>>,
    #[serde(default, rename = "embed")]
    pub embeds: Vec<Spanned<EmbedConfig>>,
    pub sink: Spanned<SinkConfig>,
    /// Named rate limits shared by several models (`quota = "name"` in `[[model]]`).
    #[serde(default, rename = "quota")]
    pub quotas: Vec<Spanned<QuotaConfig>>,
}

/// A `[[quota]]` group: limits shared by every model that names it, on top of their own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub name: Spanned<String>,
    pub requests_per_minute: Option<Spanned<u32>>,
    pub tokens_per_minute: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Parquet,
    Csv,
    Images,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: Spanned<SourceKind>,
    /// A file, a glob (`data/*.parquet`) or, for `images`, a folder.
    pub path: Option<Spanned<EnvString>>,
    /// Several files or globs.
    pub paths: Option<Vec<Spanned<EnvString>>>,
    /// Column holding a stable row id; when absent ids are derived (see README).
    pub id_column: Option<Spanned<String>>,
    /// Columns to read (projection); default: the columns the pipeline uses.
    pub columns: Option<Vec<Spanned<String>>>,
    /// Rows per batch.
    pub batch_size: Option<Spanned<usize>>,
    // CSV
    pub delimiter: Option<Spanned<String>>,
    pub quote: Option<Spanned<String>>,
    pub has_header: Option<Spanned<bool>>,
    /// Explicit column types; columns not listed are inferred.
    pub schema: Option<Spanned<BTreeMap<String, Spanned<ColumnType>>>>,
    /// Rows read to infer CSV column types.
    pub infer_rows: Option<Spanned<usize>>,
    // Images
    pub include: Option<Vec<Spanned<String>>>,
    pub exclude: Option<Vec<Spanned<String>>>,
    pub recursive: Option<Spanned<bool>>,
    pub max_image_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    Bool,
    Date,
    Timestamp,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Local,
    Bedrock,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Bedrock => "bedrock",
        }
    }
}

/// Price overrides for a model (USD); unset fields keep the built-in list price.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub per_1k_tokens: Option<f64>,
    pub per_image: Option<f64>,
    pub per_query: Option<f64>,
    pub per_video_second: Option<f64>,
    pub per_audio_second: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name embed steps use to refer to this model.
    pub name: Spanned<String>,
    pub provider: Spanned<Provider>,
    /// The provider's model id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub id: Spanned<String>,
    /// Local provider: folder holding the model files.
    pub path: Option<Spanned<EnvString>>,
    /// Local provider: fetch the weights when they are not found (default true).
    pub download: Option<Spanned<bool>>,
    /// Inputs per model call.
    pub batch_size: Option<Spanned<usize>>,
    /// Output dimension (models with a choice of dimensions).
    pub dimensions: Option<Spanned<usize>>,
    /// L2-normalise vectors (default: the model's own convention).
    pub normalize: Option<Spanned<bool>>,
    // Bedrock connection.
    /// AWS region (default: the AWS config chain, `AWS_REGION` / profile).
    pub region: Option<Spanned<EnvString>>,
    /// Endpoint override (an emulator, a VPC endpoint); `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` also works.
    pub endpoint_url: Option<Spanned<EnvString>>,
    /// Per-call timeout in seconds (default 60).
    pub timeout_secs: Option<Spanned<f64>>,
    /// Calls in flight at once (default 8).
    pub concurrency: Option<Spanned<usize>>,
    /// Attempts per call that may fail with 5xx, timeouts, resets or model-not-ready (default 8);
    /// throttled attempts are bounded by `retry_deadline_secs` instead.
    pub max_attempts: Option<Spanned<u32>>,
    /// No retry of a call starts later than this after its first attempt (default 600).
    pub retry_deadline_secs: Option<Spanned<f64>>,
    /// How long a partly filled call waits for more inputs, in milliseconds (default 20).
    pub linger_ms: Option<Spanned<u64>>,
    /// A `[[quota]]` group whose limits this model shares with others.
    pub quota: Option<Spanned<String>>,
    /// Requests per minute this pipeline may send to the model (default: unlimited).
    pub requests_per_minute: Option<Spanned<u32>>,
    /// Input tokens per minute (estimated before each call; default: unlimited).
    pub tokens_per_minute: Option<Spanned<u32>>,
    // Model parameters (which ones apply depends on the family; `validate` says).
    /// Cohere `input_type`.
    pub input_type: Option<Spanned<String>>,
    /// Nova `embeddingPurpose`.
    pub purpose: Option<Spanned<String>>,
    /// Over-long text: the family's own values (`NONE`/`START`/`END`, Cohere v4 `LEFT`/`RIGHT`).
    pub truncate: Option<Spanned<String>>,
    /// Extra embedding types to request (`int8`, `binary`, ...); float is always requested.
    pub embedding_types: Option<Spanned<Vec<String>>>,
    /// Cohere v4 per-input token budget.
    pub max_tokens: Option<Spanned<u32>>,
    /// Nova image detail level.
    pub detail_level: Option<Spanned<String>>,
    /// Price table overrides (USD).
    pub prices: Option<Spanned<PriceOverride>>,
    /// Async invoke (video/audio): where jobs write their results, `s3://bucket/prefix`.
    pub output_s3_uri: Option<Spanned<EnvString>>,
    /// Where local media files are uploaded (default `<output_s3_uri>/inputs/`).
    pub staging_s3_uri: Option<Spanned<EnvString>>,
    /// S3 endpoint override (an S3-compatible server); requests become path-style.
    pub s3_endpoint_url: Option<Spanned<EnvString>>,
    /// Async jobs in flight at once (default 16).
    pub max_jobs: Option<Spanned<usize>>,
    /// A job still running after this long is dead-lettered (default 3600 s); it keeps running
    /// and the next run picks it up.
    pub job_timeout_secs: Option<Spanned<f64>>,
    /// First wait between GetAsyncInvoke polls; grows to 30 s (default 5 s).
    pub poll_secs: Option<Spanned<f64>>,
    /// Segment length in seconds (Nova `durationSeconds` 1-30, Marengo 2.7 `useFixedLengthSec`
    /// 2-10, Marengo 3.0 fixed segmentation).
    pub segment_seconds: Option<Spanned<f64>>,
    /// Nova long text (media steps with text files): longest segment, 800-50,000 characters
    /// (default 32,000).
    pub segment_chars: Option<Spanned<u32>>,
    /// Nova video: `AUDIO_VIDEO_COMBINED` (default) or `AUDIO_VIDEO_SEPARATE`.
    pub embedding_mode: Option<Spanned<String>>,
    /// Marengo: which embeddings per segment (2.7: visual-text, visual-image, audio; 3.0:
    /// visual, audio, transcription).
    pub embedding_options: Option<Spanned<Vec<String>>>,
    /// Account id owning the media bucket (Marengo `bucketOwner`).
    pub bucket_owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// Step name, used in reports and dead letters (default: the vector column).
    pub name: Option<Spanned<String>>,
    /// Name of a `[[model]]`.
    pub model: Spanned<String>,
    /// Text input: one column...
    pub column: Option<Spanned<String>>,
    /// ...or a template over columns, `"{title}\n{body}"` (`{{` and `}}` for literal braces)...
    pub text: Option<Spanned<String>>,
    /// ...or a binary column of image bytes.
    pub image: Option<Spanned<String>>,
    /// ...or a column of video/audio files: local paths or `s3://` URIs (async invoke).
    pub media: Option<Spanned<String>>,
    /// With `media`: `video`, `audio`, or `auto` (default: from the extension, then the file's
    /// magic bytes), or the name of a column holding `video`/`audio` per row.
    pub modality: Option<Spanned<String>>,
    /// Output vector column (default `vector`).
    pub vector: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Lancedb,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Fail if the table exists.
    #[default]
    Create,
    /// Replace the table (atomically, at the end of the run).
    Overwrite,
    /// Add rows to an existing table (created if missing).
    Append,
    /// Re-embed only new and changed rows (by content hash) and upsert them by id, committing
    /// in chunks; with `cleanup = "full"`, delete rows gone from the source.
    Incremental,
}

/// What an incremental run does with table rows whose id is no longer in the source (the names
/// of LangChain's indexing API).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cleanup {
    /// Keep them.
    #[default]
    None,
    /// Delete them (after the whole source was read).
    Full,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Create => "create",
            WriteMode::Overwrite => "overwrite",
            WriteMode::Append => "append",
            WriteMode::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type", default)]
    pub kind: Option<Spanned<SinkKind>>,
    /// LanceDB database folder (relative to the pipeline file; object stores are not supported
    /// yet).
    pub uri: Spanned<EnvString>,
    pub table: Spanned<String>,
    pub mode: Option<Spanned<WriteMode>>,
    /// Source columns copied next to the vectors; default: every non-binary source column.
    pub metadata: Option<Vec<Spanned<String>>>,
    /// Dead-letter JSONL file; default `<uri>/<table>_failures.jsonl`.
    pub failures: Option<Spanned<EnvString>>,
    /// Incremental mode: delete rows gone from the source (`full`) or keep them (`none`).
    pub cleanup: Option<Spanned<Cleanup>>,
    /// Incremental mode: rows per commit (a killed run re-embeds at most this many).
    pub commit_rows: Option<Spanned<usize>>,
    /// Vector index per vector column once the table has `index_after_rows` rows: `auto`
    /// (IVF_PQ), `ivf_pq`, `ivf_hnsw_sq` or `none`. Cosine distance.
    pub vector_index: Option<Spanned<VectorIndex>>,
    /// Rows from which the vector index is built (default 100,000; below, search is exact).
    pub index_after_rows: Option<Spanned<usize>>,
    /// Compact the table after a run once it has this many fragments (default 64).
    pub compact_after_fragments: Option<Spanned<usize>>,
    /// A text column to keep a full-text index on (enables `search --hybrid`).
    pub fts_column: Option<Spanned<String>>,
    /// Rows that may fail because of the service (network, timeouts, 5xx or throttling past
    /// their retries) before the run stops without committing (default 0).
    pub max_service_failures: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum VectorIndex {
    #[default]
    Auto,
    IvfPq,
    IvfHnswSq,
    None,
}

/// A loaded, statically checked pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    pub path: PathBuf,
    pub text: Arc<str>,
    pub file: PipelineFile,
    /// Resolved embed steps, in file order.
    pub steps: Vec<Step>,
}

impl Pipeline {
    /// Whether the (single) step embeds video/audio into segments.
    pub fn has_media_step(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.input, StepInput::Media(..)))
    }
}

/// One embed step, resolved against its model.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub model_index: usize,
    pub input: StepInput,
    pub vector: String,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepInput {
    Column(String),
    Template(Template),
    Image(String),
    /// A text (template) and an image embedded together into one vector.
    TextImage(Template, String),
    /// Video or audio files (paths or `s3://` URIs), embedded by async jobs into segments.
    Media(String, MediaModality),
}

/// How a media step tells video from audio.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaModality {
    /// From the extension, then magic bytes.
    Auto,
    Fixed(Modality),
    /// A column holding `video` or `audio`.
    Column(String),
}

impl StepInput {
    pub fn modality(&self) -> Modality {
        match self {
            StepInput::Image(_) | StepInput::TextImage(..) => Modality::Image,
            StepInput::Media(..) => Modality::Video,
            _ => Modality::Text,
        }
    }

    /// Source columns this input reads.
    pub fn columns(&self) -> Vec<String> {
        match self {
            StepInput::Column(c) | StepInput::Image(c) => vec![c.clone()],
            StepInput::Media(c, MediaModality::Column(m)) => vec![c.clone(), m.clone()],
            StepInput::Media(c, _) => vec![c.clone()],
            StepInput::Template(t) => t.columns(),
            StepInput::TextImage(t, i) => {
                let mut c = t.columns();
                c.push(i.clone());
                c
            }
        }
    }
}

/// A text template: literal text and `{column}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Literal(String),
    Column(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed `{{{name}` in template (write `{{{{` for a literal brace)")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(
                            "empty `{}` placeholder in template: put a column name inside".into(),
                        );
                    }
                    if !lit.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(TemplatePart::Column(name));
                }
                '}' => return Err("stray `}` in template (write `}}` for a literal brace)".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(lit));
        }
        if !parts.iter().any(|p| matches!(p, TemplatePart::Column(_))) {
            return Err(
                "template has no `{column}` placeholder, so every row would embed the same text"
                    .into(),
            );
        }
        Ok(Self { parts })
    }

    pub fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.parts {
            if let TemplatePart::Column(c) = p {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}

/// Keys that would hold literal credentials; never allowed in a pipeline file.
const SECRET_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "access_key",
    "secret_key",
    "secret",
    "password",
];

const CREDENTIAL_HELP: &str = "remove it: embedpipe takes AWS credentials only from the AWS credential chain \
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables, AWS_PROFILE with ~/.aws/credentials or SSO, \
or an instance/ECS/EKS role)";

/// Byte offsets where an AWS access key id (`AKIA`/`ASIA` and 16 more capitals or digits, as a
/// word of its own) starts in `s`.
fn aws_key_id_starts(s: &str) -> impl Iterator<Item = usize> + '_ {
    let b = s.as_bytes();
    let key_char = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    (0..b.len().saturating_sub(19)).filter(move |&i| {
        (b[i..].starts_with(b"AKIA") || b[i..].starts_with(b"ASIA"))
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && b[i..i + 20].iter().all(|&c| key_char(c))
            && b.get(i + 20).is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

/// Whether `s` holds an AWS access key id anywhere, e.g. inside a template.
fn contains_aws_key_id(s: &str) -> bool {
    aws_key_id_starts(s).next().is_some()
}

/// `s` with every AWS access key id masked (for log lines).
pub fn redact_key_ids(s: &str) -> String {
    let starts: Vec<usize> = aws_key_id_starts(s).collect();
    if starts.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    for i in starts {
        out.push_str(&s[from..i + 4]);
        out.push_str("****************");
        from = i + 20;
    }
    out.push_str(&s[from..]);
    out
}

impl Pipeline {
    /// Reads and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::whole_file(path, format!("cannot read pipeline file: {e}"))
                .with_help("check the path; pipeline files usually live in `pipelines/`")
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks pipeline text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut table = toml::de::DeTable::parse(text).map_err(|e| {
            ConfigError::at(
                path,
                text,
                e.span(),
                format!("invalid TOML: {}", e.message().trim()),
            )
        })?;
        // Every string value, whatever its key, expands `${VAR}` the same way; spans still
        // point at the text as written.
        env::expand_table(table.get_mut(), &|name| std::env::var(name).ok())
            .map_err(|(span, message)| ConfigError::at(path, text, Some(span), message))?;
        check_no_secrets(path, text, table.get_ref())?;
        let file: PipelineFile = PipelineFile::deserialize(toml::de::Deserializer::from(table))
            .map_err(|e| {
                let (message, help) = error::explain_serde_message(e.message());
                let mut err = ConfigError::at(path, text, e.span(), message);
                err.help = help;
                err
            })?;
        let mut pipeline = Pipeline {
            path: path.to_path_buf(),
            text: Arc::from(text),
            file,
            steps: Vec::new(),
        };
        pipeline.steps = pipeline.check()?;
        Ok(pipeline)
    }

    /// An error pointing at `span` of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, &self.text, Some(span), message)
    }

    /// Folder that relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Resolves a path from the file against [`Self::base_dir`].
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            normalize(&self.base_dir().join(p))
        }
    }

    pub fn source(&self) -> &SourceConfig {
        self.file.source.get_ref()
    }

    pub fn sink(&self) -> &SinkConfig {
        self.file.sink.get_ref()
    }

    pub fn model(&self, index: usize) -> &ModelConfig {
        self.file.models[index].get_ref()
    }

    /// The registry entry of model `index`.
    pub fn model_spec(&self, index: usize) -> &'static ModelSpec {
        let m = self.model(index);
        models::lookup(m.id.get_ref()).expect("model ids are checked at load")
    }

    pub fn batch_rows(&self) -> usize {
        self.source()
            .batch_size
            .as_ref()
            .map_or(DEFAULT_BATCH_ROWS, |b| *b.get_ref())
    }

    pub fn cleanup(&self) -> Cleanup {
        self.sink()
            .cleanup
            .as_ref()
            .map_or(Cleanup::default(), |c| *c.get_ref())
    }

    /// Rows per commit of an incremental run.
    pub fn commit_rows(&self) -> usize {
        self.sink()
            .commit_rows
            .as_ref()
            .map_or(DEFAULT_COMMIT_ROWS, |c| *c.get_ref())
    }

    /// Rows that may fail because of the service before a run stops (default 0).
    pub fn max_service_failures(&self) -> u64 {
        self.sink()
            .max_service_failures
            .as_ref()
            .map_or(0, |m| *m.get_ref())
    }

    pub fn write_mode(&self) -> WriteMode {
        self.sink()
            .mode
            .as_ref()
            .map_or(WriteMode::default(), |m| *m.get_ref())
    }

    /// The source inputs (files, globs or the image folder) as written.
    pub fn source_paths(&self) -> Vec<&Spanned<EnvString>> {
        let s = self.source();
        s.path.iter().chain(s.paths.iter().flatten()).collect()
    }

    fn check(&self) -> Result<Vec<Step>, ConfigError> {
        self.check_source()?;
        self.check_models()?;
        let steps = self.check_steps()?;
        self.check_sink(&steps)?;
        Ok(steps)
    }

    fn check_source(&self) -> Result<(), ConfigError> {
        let src = self.file.source.get_ref();
        let kind = *src.kind.get_ref();
        if src.path.is_none() && src.paths.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(self
                .error(self.file.source.span(), "[source] needs `path` (a file, glob or folder) or `paths` (a list)")
                .with_help("e.g. path = \"../sample_data/articles.parquet\" (relative to the pipeline file)"));
        }
        if let Some(b) = &src.batch_size {
            if *b.get_ref() == 0 || *b.get_ref() > 1_000_000 {
                return Err(self.error(b.span(), "batch_size must be between 1 and 1000000"));
            }
        }
        let only = |opt: Option<Range<usize>>, key: &str, kinds: &str| -> Result<(), ConfigError> {
            match opt {
                Some(span) => Err(self.error(
                    span,
                    format!(
                        "`{key}` applies only to {kinds} sources, not `{}`",
                        kind_name(kind)
                    ),
                )),
                None => Ok(()),
            }
        };
        if kind != SourceKind::Csv {
            only(src.delimiter.as_ref().map(|s| s.span()), "delimiter", "csv")?;
            only(src.quote.as_ref().map(|s| s.span()), "quote", "csv")?;
            only(
                src.has_header.as_ref().map(|s| s.span()),
                "has_header",
                "csv",
            )?;
            only(src.schema.as_ref().map(|s| s.span()), "schema", "csv")?;
            only(
                src.infer_rows.as_ref().map(|s| s.span()),
                "infer_rows",
                "csv",
            )?;
        }
        if kind != SourceKind::Images {
            only(
                src.include
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "include",
                "images",
            )?;
            only(
                src.exclude
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "exclude",
                "images",
            )?;
            only(
                src.recursive.as_ref().map(|s| s.span()),
                "recursive",
                "images",
            )?;
            only(
                src.max_image_bytes.as_ref().map(|s| s.span()),
                "max_image_bytes",
                "images",
            )?;
        } else {
            only(
                src.columns
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
                "columns",
                "parquet and csv",
            )?;
            only(
                src.id_column.as_ref().map(|s| s.span()),
                "id_column",
                "parquet and csv",
            )?;
        }
        for (key, v) in [("delimiter", &src.delimiter), ("quote", &src.quote)] {
            if let Some(v) = v {
                if v.get_ref().len() != 1 {
                    return Err(self.error(
                        v.span(),
                        format!("`{key}` must be a single ASCII character, e.g. \",\" or \"\\t\""),
                    ));
                }
            }
        }
        for pats in [&src.include, &src.exclude].into_iter().flatten() {
            for p in pats {
                if let Err(e) = globset::Glob::new(p.get_ref()) {
                    return Err(self.error(p.span(), format!("invalid glob: {e}")));
                }
            }
        }
        Ok(())
    }

    fn check_quotas(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for q in &self.file.quotas {
            let g = q.get_ref();
            if !names.insert(g.name.get_ref().as_str()) {
                return Err(self.error(
                    g.name.span(),
                    format!("quota group `{}` is declared twice", g.name.get_ref()),
                ));
            }
            if g.requests_per_minute.is_none() && g.tokens_per_minute.is_none() {
                return Err(self
                    .error(
                        q.span(),
                        format!("quota group `{}` sets no limit", g.name.get_ref()),
                    )
                    .with_help("set requests_per_minute, tokens_per_minute or both"));
            }
            self.check_rates(&g.requests_per_minute, &g.tokens_per_minute)?;
        }
        Ok(())
    }

    /// Requests and tokens per minute, when set, are at least one.
    fn check_rates(
        &self,
        requests: &Option<Spanned<u32>>,
        tokens: &Option<Spanned<u32>>,
    ) -> Result<(), ConfigError> {
        match [requests, tokens]
            .into_iter()
            .flatten()
            .find(|r| *r.get_ref() == 0)
        {
            Some(r) => Err(self.error(r.span(), "a rate limit must be at least 1 per minute")),
            None => Ok(()),
        }
    }

    fn check_models(&self) -> Result<(), ConfigError> {
        self.check_quotas()?;
        let mut names = HashSet::new();
        for m in &self.file.models {
            let cfg = m.get_ref();
            if !names.insert(cfg.name.get_ref().as_str()) {
                return Err(self.error(
                    cfg.name.span(),
                    format!("model name `{}` is used twice", cfg.name.get_ref()),
                ));
            }
            let known: Vec<&str> = models::registry()
                .iter()
                .filter(|s| s.provider == *cfg.provider.get_ref())
                .map(|s| s.id)
                .collect();
            let Some(spec) =
                models::lookup(cfg.id.get_ref()).filter(|s| s.provider == *cfg.provider.get_ref())
            else {
                if let Some(other) = models::lookup(cfg.id.get_ref()) {
                    return Err(self
                        .error(
                            cfg.provider.span(),
                            format!("`{}` is a {} model", other.id, other.provider.as_str()),
                        )
                        .with_help(format!("set provider = \"{}\"", other.provider.as_str())));
                }
                let mut help = String::new();
                if let Some(best) = did_you_mean(cfg.id.get_ref(), known.iter().copied()) {
                    help.push_str(&format!("did you mean `{best}`? "));
                }
                help.push_str(&format!(
                    "known model ids for this provider: {}",
                    known.join(", ")
                ));
                return Err(self
                    .error(
                        cfg.id.span(),
                        format!("unknown model id `{}`", cfg.id.get_ref()),
                    )
                    .with_help(help));
            };
            if let Some(d) = &cfg.dimensions {
                if !spec.dimensions.contains(d.get_ref()) {
                    let allowed: Vec<String> =
                        spec.dimensions.iter().map(|d| d.to_string()).collect();
                    return Err(self
                        .error(
                            d.span(),
                            format!(
                                "`{}` does not produce {}-dimensional vectors",
                                spec.id,
                                d.get_ref()
                            ),
                        )
                        .with_help(format!("allowed dimensions: {}", allowed.join(", "))));
                }
            }
            if let Some(b) = &cfg.batch_size {
                if *b.get_ref() == 0 || *b.get_ref() > spec.max_inputs_per_call {
                    return Err(self.error(
                        b.span(),
                        format!(
                            "batch_size for `{}` must be between 1 and {}",
                            spec.id, spec.max_inputs_per_call
                        ),
                    ));
                }
            }
            self.check_model_params(cfg, spec)?;
            if spec.provider != Provider::Local {
                for (key, span) in [
                    ("path", cfg.path.as_ref().map(|s| s.span())),
                    ("download", cfg.download.as_ref().map(|s| s.span())),
                ] {
                    if let Some(span) = span {
                        return Err(
                            self.error(span, format!("`{key}` applies only to local models"))
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Family parameters: only the ones the family has, with its allowed values.
    fn check_model_params(&self, cfg: &ModelConfig, spec: &ModelSpec) -> Result<(), ConfigError> {
        let known: Vec<&str> = spec.params.iter().map(|p| p.key).collect();
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let strings: [(&str, Option<&Spanned<String>>); 6] = [
            ("input_type", cfg.input_type.as_ref()),
            ("purpose", cfg.purpose.as_ref()),
            ("truncate", cfg.truncate.as_ref()),
            ("detail_level", cfg.detail_level.as_ref()),
            ("embedding_mode", cfg.embedding_mode.as_ref()),
            ("bucket_owner", cfg.bucket_owner.as_ref()),
        ];
        let mut present: Vec<(&str, Range<usize>, Vec<&str>)> = strings
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, v.span(), vec![v.get_ref().as_str()])))
            .collect();
        if let Some(t) = &cfg.embedding_types {
            present.push((
                "embedding_types",
                t.span(),
                t.get_ref().iter().map(String::as_str).collect(),
            ));
        }
        if let Some(m) = &cfg.max_tokens {
            present.push(("max_tokens", m.span(), vec![]));
        }
        if let Some(t) = &cfg.embedding_options {
            present.push((
                "embedding_options",
                t.span(),
                t.get_ref().iter().map(String::as_str).collect(),
            ));
        }
        if let Some(o) = &cfg.bucket_owner {
            if o.get_ref().len() != 12 || !o.get_ref().bytes().all(|b| b.is_ascii_digit()) {
                return Err(self.error(o.span(), "bucket_owner is a 12-digit AWS account id"));
            }
        }
        for (key, uri) in [
            ("output_s3_uri", &cfg.output_s3_uri),
            ("staging_s3_uri", &cfg.staging_s3_uri),
        ] {
            if let Some(u) = uri {
                if let Err(e) = crate::providers::s3::S3Uri::parse(&u.get_ref().to_string()) {
                    return Err(self
                        .error(u.span(), format!("`{key}`: {e}"))
                        .with_help("write it as s3://<bucket>/<prefix>"));
                }
            }
        }
        if let Some(m) = &cfg.max_jobs {
            if !(1..=1000).contains(m.get_ref()) {
                return Err(self.error(m.span(), "max_jobs must be between 1 and 1000"));
            }
        }
        for (key, v, lo, hi) in [
            (
                "job_timeout_secs",
                &cfg.job_timeout_secs,
                0.0,
                7.0 * 86400.0,
            ),
            ("poll_secs", &cfg.poll_secs, 0.0, 3600.0),
        ] {
            if let Some(v) = v {
                if !(*v.get_ref() > lo && *v.get_ref() <= hi) {
                    return Err(self.error(
                        v.span(),
                        format!("{key} must be above {lo} and at most {hi}"),
                    ));
                }
            }
        }
        if let Some(v) = &cfg.segment_chars {
            if spec.family != models::Family::Nova2 || !(800..=50_000).contains(v.get_ref()) {
                return Err(self.error(
                    v.span(),
                    "segment_chars applies to Nova (long text) and is between 800 and 50000",
                ));
            }
        }
        if let Some(v) = &cfg.segment_seconds {
            let (lo, hi, whole) = match spec.family {
                models::Family::Nova2 => (1.0, 30.0, true),
                models::Family::Marengo27 => (2.0, 10.0, false),
                models::Family::Marengo30 => (1.0, 3600.0, true),
                _ => {
                    return Err(self.error(
                        v.span(),
                        format!(
                            "`segment_seconds` is not a parameter of `{}` (it has no async route)",
                            spec.id
                        ),
                    ))
                }
            };
            let x = *v.get_ref();
            if !(lo..=hi).contains(&x) || (whole && x.fract() != 0.0) {
                return Err(self.error(
                    v.span(),
                    format!(
                        "segment_seconds for `{}` must be {}between {lo} and {hi}",
                        spec.id,
                        if whole { "a whole number " } else { "" }
                    ),
                ));
            }
        }
        for (key, span, values) in present {
            let Some(p) = spec.param(key) else {
                return Err(self
                    .error(span, format!("`{key}` is not a parameter of `{}`", spec.id))
                    .with_help(format!("its parameters: {}", list(&known))));
            };
            for v in values {
                if !p.values.is_empty() && !p.values.contains(&v) {
                    let mut help = String::new();
                    if let Some(best) = did_you_mean(v, p.values.iter().copied()) {
                        help.push_str(&format!("did you mean `{best}`? "));
                    }
                    help.push_str(&format!("allowed values: {}", p.values.join(", ")));
                    return Err(self
                        .error(
                            span,
                            format!("`{v}` is not a valid `{key}` for `{}`", spec.id),
                        )
                        .with_help(help));
                }
            }
        }
        if let Some(t) = &cfg.embedding_types {
            if let Some(other) = t.get_ref().iter().find(|t| *t != "float") {
                return Err(self
                    .error(
                        t.span(),
                        format!("`{other}` embeddings cannot be stored yet: the table holds float vectors"),
                    )
                    .with_help("remove `embedding_types` (float vectors are always requested and stored)"));
            }
        }
        if let Some(m) = &cfg.max_tokens {
            if *m.get_ref() == 0 || *m.get_ref() as usize > spec.max_input_tokens {
                return Err(self.error(
                    m.span(),
                    format!("max_tokens must be between 1 and {}", spec.max_input_tokens),
                ));
            }
        }
        if let Some(t) = &cfg.timeout_secs {
            if !(*t.get_ref() > 0.0 && *t.get_ref() <= 3600.0) {
                return Err(self.error(
                    t.span(),
                    "timeout_secs must be more than 0 and at most 3600 (an hour)",
                ));
            }
        }
        for (key, url) in [
            ("endpoint_url", &cfg.endpoint_url),
            ("s3_endpoint_url", &cfg.s3_endpoint_url),
        ] {
            if let Some(u) = url {
                if let Err(why) = check_endpoint_url(u.get_ref()) {
                    return Err(self
                        .error(u.span(), format!("`{key}` {why}"))
                        .with_help("give the scheme, host and port only, e.g. \"https://bedrock-runtime.us-east-1.amazonaws.com\" or \"http://127.0.0.1:4566\" (the emulator)"));
                }
            }
        }
        if let Some(c) = &cfg.concurrency {
            if *c.get_ref() == 0 || *c.get_ref() > 1024 {
                return Err(self.error(c.span(), "concurrency must be between 1 and 1024"));
            }
        }
        self.check_rates(&cfg.requests_per_minute, &cfg.tokens_per_minute)?;
        if let Some(a) = &cfg.max_attempts {
            if *a.get_ref() == 0 || *a.get_ref() > 100 {
                return Err(self.error(a.span(), "max_attempts must be between 1 and 100"));
            }
        }
        if let Some(d) = &cfg.retry_deadline_secs {
            if !(*d.get_ref() > 0.0 && *d.get_ref() <= 86_400.0) {
                return Err(self.error(
                    d.span(),
                    "retry_deadline_secs must be more than 0 and at most 86400 (a day)",
                ));
            }
        }
        if let Some(l) = &cfg.linger_ms {
            if *l.get_ref() > 60_000 {
                return Err(self.error(l.span(), "linger_ms must be at most 60000 (a minute)"));
            }
        }
        if let Some(q) = &cfg.quota {
            let names = self
                .file
                .quotas
                .iter()
                .map(|g| g.get_ref().name.get_ref().as_str());
            if !names.clone().any(|n| n == q.get_ref()) {
                let mut help = String::new();
                if let Some(best) = did_you_mean(q.get_ref(), names.clone()) {
                    help.push_str(&format!("did you mean `{best}`? "));
                }
                let known: Vec<&str> = names.collect();
                help.push_str(&if known.is_empty() {
                    format!(
                        "declare it: [[quota]] name = \"{}\" requests_per_minute = ...",
                        q.get_ref()
                    )
                } else {
                    format!("declared quota groups: {}", known.join(", "))
                });
                return Err(self
                    .error(q.span(), format!("unknown quota group `{}`", q.get_ref()))
                    .with_help(help));
            }
        }
        if let Some(p) = &cfg.prices {
            let o = p.get_ref();
            let all = [
                o.per_1k_tokens,
                o.per_image,
                o.per_query,
                o.per_video_second,
                o.per_audio_second,
            ];
            if all.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(self.error(p.span(), "prices must be zero or positive numbers"));
            }
        }
        if spec.provider == Provider::Local {
            let bedrock_only = [
                ("region", cfg.region.as_ref().map(|s| s.span())),
                ("endpoint_url", cfg.endpoint_url.as_ref().map(|s| s.span())),
                ("timeout_secs", cfg.timeout_secs.as_ref().map(|s| s.span())),
                ("concurrency", cfg.concurrency.as_ref().map(|s| s.span())),
                ("max_attempts", cfg.max_attempts.as_ref().map(|s| s.span())),
                (
                    "retry_deadline_secs",
                    cfg.retry_deadline_secs.as_ref().map(|s| s.span()),
                ),
                ("linger_ms", cfg.linger_ms.as_ref().map(|s| s.span())),
                ("quota", cfg.quota.as_ref().map(|s| s.span())),
                (
                    "requests_per_minute",
                    cfg.requests_per_minute.as_ref().map(|s| s.span()),
                ),
                (
                    "tokens_per_minute",
                    cfg.tokens_per_minute.as_ref().map(|s| s.span()),
                ),
                ("prices", cfg.prices.as_ref().map(|s| s.span())),
                (
                    "output_s3_uri",
                    cfg.output_s3_uri.as_ref().map(|s| s.span()),
                ),
                (
                    "staging_s3_uri",
                    cfg.staging_s3_uri.as_ref().map(|s| s.span()),
                ),
                (
                    "s3_endpoint_url",
                    cfg.s3_endpoint_url.as_ref().map(|s| s.span()),
                ),
                ("max_jobs", cfg.max_jobs.as_ref().map(|s| s.span())),
                (
                    "job_timeout_secs",
                    cfg.job_timeout_secs.as_ref().map(|s| s.span()),
                ),
                ("poll_secs", cfg.poll_secs.as_ref().map(|s| s.span())),
                (
                    "segment_seconds",
                    cfg.segment_seconds.as_ref().map(|s| s.span()),
                ),
            ];
            if let Some((key, Some(span))) = bedrock_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.error(span, format!("`{key}` applies only to Bedrock models")));
            }
        }
        // A model only media steps use is called through StartAsyncInvoke (base id) alone.
        let only_async = {
            let mut uses = self
                .file
                .embeds
                .iter()
                .filter(|e| e.get_ref().model.get_ref() == cfg.name.get_ref())
                .peekable();
            uses.peek().is_some() && uses.all(|e| e.get_ref().media.is_some())
        };
        if let Some(r) = models::resolve(cfg.id.get_ref()) {
            if spec.routes.sync_needs_profile && r.profile.is_none() && !only_async {
                let profiles: Vec<String> = spec
                    .profiles
                    .iter()
                    .map(|p| format!("`{p}{}`", spec.id))
                    .collect();
                return Err(self
                    .error(
                        cfg.id.span(),
                        format!(
                            "`{}` is called through InvokeModel only with a cross-region inference profile id",
                            spec.id
                        ),
                    )
                    .with_help(format!("use {} (the profile of your region)", profiles.join(" or "))));
            }
        }
        Ok(())
    }

    fn check_steps(&self) -> Result<Vec<Step>, ConfigError> {
        if self.file.embeds.is_empty() {
            return Err(self
                .error(
                    0..0,
                    "the pipeline has no [[embed]] step, so there is nothing to do",
                )
                .with_help(
                    "add one: [[embed]] model = \"<model name>\", column = \"<text column>\"",
                ));
        }
        let model_names: Vec<&str> = self
            .file
            .models
            .iter()
            .map(|m| m.get_ref().name.get_ref().as_str())
            .collect();
        let mut steps = Vec::new();
        let mut vectors = HashSet::new();
        let mut step_names = HashSet::new();
        for e in &self.file.embeds {
            let cfg = e.get_ref();
            let model_name = cfg.model.get_ref();
            let Some(model_index) = model_names.iter().position(|n| n == model_name) else {
                let mut help = match did_you_mean(model_name, model_names.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`? "),
                    None => String::new(),
                };
                if model_names.is_empty() {
                    help.push_str("declare it in a [[model]] table with name, provider and id");
                } else {
                    help.push_str(&format!(
                        "models declared in this file: {}",
                        model_names.join(", ")
                    ));
                }
                return Err(self
                    .error(
                        cfg.model.span(),
                        format!("no [[model]] named `{model_name}`"),
                    )
                    .with_help(help));
            };
            let inputs: Vec<(&str, &Spanned<String>)> = [
                ("column", &cfg.column),
                ("text", &cfg.text),
                ("image", &cfg.image),
                ("media", &cfg.media),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let input = match inputs.as_slice() {
                [("column", c)] => StepInput::Column(c.get_ref().clone()),
                [("image", c)] => StepInput::Image(c.get_ref().clone()),
                [("media", c)] => StepInput::Media(
                    c.get_ref().clone(),
                    match cfg.modality.as_ref().map(|m| m.get_ref().as_str()) {
                        None | Some("auto") => MediaModality::Auto,
                        Some("video") => MediaModality::Fixed(Modality::Video),
                        Some("audio") => MediaModality::Fixed(Modality::Audio),
                        Some("text") => MediaModality::Fixed(Modality::Text),
                        Some(col) => MediaModality::Column(col.to_string()),
                    },
                ),
                [(_, t)] => StepInput::Template(
                    Template::parse(t.get_ref()).map_err(|m| self.error(t.span(), format!("invalid text template: {m}")))?,
                ),
                [("column", c), ("image", i)] => StepInput::TextImage(
                    Template {
                        parts: vec![TemplatePart::Column(c.get_ref().clone())],
                    },
                    i.get_ref().clone(),
                ),
                [("text", t), ("image", i)] => StepInput::TextImage(
                    Template::parse(t.get_ref()).map_err(|m| self.error(t.span(), format!("invalid text template: {m}")))?,
                    i.get_ref().clone(),
                ),
                [] => {
                    return Err(self
                        .error(e.span(), "this [[embed]] step has no input")
                        .with_help("give exactly one of `column` (a text column), `text` (a template like \"{title}\\n{body}\") or `image` (a column of image bytes)"))
                }
                [_, (key, second), ..] => {
                    return Err(self
                        .error(second.span(), format!("`{key}` conflicts with another input key of this step"))
                        .with_help("give one of `column`, `text` or `image` (or `image` with one of `column`/`text`, for models that embed text and image together)"))
                }
            };
            let spec = self.model_spec(model_index);
            if let (Some(m), false) = (&cfg.modality, matches!(input, StepInput::Media(..))) {
                return Err(self
                    .error(m.span(), "`modality` applies only to `media` steps")
                    .with_help("remove it, or embed a column of video/audio files with `media = \"<column>\"`"));
            }
            if let StepInput::Media(..) = &input {
                self.check_media_step(cfg, e.span(), model_index)?;
            }
            if matches!(input, StepInput::TextImage(..)) && !spec.text_image {
                let both: Vec<&str> = models::registry()
                    .iter()
                    .filter(|s| s.text_image)
                    .map(|s| s.id)
                    .collect();
                let span = cfg.image.as_ref().map_or(e.span(), |s| s.span());
                return Err(self
                    .error(
                        span,
                        format!(
                            "model `{}` ({}) cannot embed a text and an image together",
                            model_name, spec.id
                        ),
                    )
                    .with_help(format!(
                        "use two steps (one `text`, one `image`), or a model that can: {}",
                        both.join(", ")
                    )));
            }
            if !matches!(input, StepInput::Media(..))
                && !spec.modalities.contains(&input.modality())
            {
                let span = cfg
                    .image
                    .as_ref()
                    .or(cfg.column.as_ref())
                    .or(cfg.text.as_ref())
                    .map_or(e.span(), |s| s.span());
                return Err(self
                    .error(
                        span,
                        format!(
                            "model `{}` ({}) does not accept {} input",
                            model_name,
                            spec.id,
                            input.modality().as_str()
                        ),
                    )
                    .with_help(format!(
                        "it accepts: {}",
                        spec.modalities
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
            }
            let (vector, vspan) = match &cfg.vector {
                Some(v) => (v.get_ref().clone(), v.span()),
                None => ("vector".to_string(), e.span()),
            };
            if !is_identifier(&vector) {
                return Err(self.error(vspan, format!("vector column `{vector}` must be letters, digits and `_`, not starting with a digit")));
            }
            if let Some(taken) = crate::sink::step_columns(&vector)
                .into_iter()
                .find(|c| crate::sink::RESERVED_COLUMNS.contains(&c.as_str()))
            {
                return Err(self
                    .error(
                        vspan,
                        format!("vector column `{vector}` would make a column `{taken}`, which embedpipe writes itself"),
                    )
                    .with_help("name the vector column otherwise, e.g. vector = \"vector\" or \"title_vector\""));
            }
            if matches!(input, StepInput::Media(..)) {
                if let Some(taken) = crate::sink::step_columns(&vector)
                    .into_iter()
                    .find(|c| crate::sink::SEGMENT_COLUMNS.contains(&c.as_str()))
                {
                    return Err(self
                        .error(vspan, format!("vector column `{vector}` would make a column `{taken}`, which media tables use for segments"))
                        .with_help("name the vector column otherwise, e.g. vector = \"vector\""));
                }
            }
            if !vectors.insert(vector.clone()) {
                return Err(self
                    .error(
                        vspan,
                        format!("two embed steps write the vector column `{vector}`"),
                    )
                    .with_help("give each step its own `vector = \"...\"`"));
            }
            let name = cfg
                .name
                .as_ref()
                .map_or_else(|| vector.clone(), |n| n.get_ref().clone());
            if !step_names.insert(name.clone()) {
                let span = cfg.name.as_ref().map_or(e.span(), |n| n.span());
                return Err(self.error(span, format!("step name `{name}` is used twice")));
            }
            steps.push(Step {
                name,
                model_index,
                input,
                vector,
                span: e.span(),
            });
        }
        Ok(steps)
    }

    /// A media step: an async-capable model with somewhere to write results, alone in its file.
    fn check_media_step(
        &self,
        cfg: &EmbedConfig,
        span: Range<usize>,
        model_index: usize,
    ) -> Result<(), ConfigError> {
        let spec = self.model_spec(model_index);
        let model = self.model(model_index);
        let media_span = cfg.media.as_ref().map_or(span.clone(), |m| m.span());
        if !spec.routes.asynchronous {
            let can: Vec<&str> = models::registry()
                .iter()
                .filter(|s| s.routes.asynchronous)
                .map(|s| s.id)
                .collect();
            return Err(self
                .error(
                    media_span,
                    format!(
                        "model `{}` ({}) cannot embed video or audio: it has no async invoke route",
                        model.name.get_ref(),
                        spec.id
                    ),
                )
                .with_help(format!(
                    "use a model that can (through StartAsyncInvoke): {}",
                    can.join(", ")
                )));
        }
        if model.output_s3_uri.is_none() {
            return Err(self
                .error(
                    model.id.span(),
                    format!(
                        "model `{}` embeds video/audio through async jobs, which write their results to S3",
                        model.name.get_ref()
                    ),
                )
                .with_help("add `output_s3_uri = \"s3://<bucket>/<prefix>\"` to its [[model]] table"));
        }
        if self.file.embeds.len() > 1 {
            return Err(self
                .error(span, "a `media` step must be the only [[embed]] step of its pipeline")
                .with_help("media rows become one table row per segment; embed other columns in a pipeline of their own"));
        }
        if let Some(m) = &cfg.modality {
            let v = m.get_ref();
            if v == "text" && spec.family != models::Family::Nova2 {
                return Err(self
                    .error(m.span(), format!("`{}` cannot embed long text through async jobs", spec.id))
                    .with_help("use amazon.nova-2-multimodal-embeddings-v1:0 (segmented text), or a `text` step"));
            }
            if !matches!(v.as_str(), "auto" | "video" | "audio" | "text") && !is_identifier(v) {
                return Err(self
                    .error(m.span(), format!("`{v}` is not a modality"))
                    .with_help(
                        "use `video`, `audio`, `auto`, or the name of a column holding video/audio",
                    ));
            }
        }
        Ok(())
    }

    fn check_sink(&self, steps: &[Step]) -> Result<(), ConfigError> {
        let sink = self.sink();
        let table = sink.table.get_ref();
        if table.is_empty()
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            || table.starts_with('.')
        {
            return Err(self.error(
                sink.table.span(),
                format!("table name `{table}` must be letters, digits, `_`, `-` or `.`"),
            ));
        }
        if let Some(owner) = table.strip_suffix(crate::sink::RUN_LOG_SUFFIX) {
            return Err(self
                .error(
                    sink.table.span(),
                    format!(
                        "table names ending in `{}` are reserved: `{table}` would be the run log of table `{owner}`",
                        crate::sink::RUN_LOG_SUFFIX
                    ),
                )
                .with_help("choose another name; each table's run history is kept next to it as `<table>_runs`"));
        }
        if sink.uri.get_ref().is_empty() {
            return Err(self.error(sink.uri.span(), "sink uri is empty").with_help(
                "e.g. uri = \"../.embedpipe/db\" (a folder, relative to the pipeline file)",
            ));
        }
        let incremental = self.write_mode() == WriteMode::Incremental;
        // Appends refuse ids the table has; a media step's rows are segments, not checked so.
        if self.write_mode() == WriteMode::Append {
            if let Some(step) = steps
                .iter()
                .find(|s| matches!(s.input, StepInput::Media(..)))
            {
                return Err(self
                    .error(step.span.clone(), "append runs do not cover media steps yet")
                    .with_help("use mode = \"overwrite\": the job ledger already avoids paying twice for a job"));
            }
        }
        for (key, span) in [
            ("cleanup", sink.cleanup.as_ref().map(|c| c.span())),
            ("commit_rows", sink.commit_rows.as_ref().map(|c| c.span())),
        ] {
            if let (Some(span), false) = (span, incremental) {
                return Err(self
                    .error(
                        span,
                        format!("`{key}` applies only to `mode = \"incremental\"`"),
                    )
                    .with_help("set mode = \"incremental\" or remove it"));
            }
        }
        if let Some(c) = &sink.commit_rows {
            if *c.get_ref() == 0 {
                return Err(self.error(c.span(), "commit_rows must be at least 1"));
            }
        }
        if incremental {
            if let Some(step) = steps
                .iter()
                .find(|s| matches!(s.input, StepInput::Media(..)))
            {
                return Err(self
                    .error(step.span.clone(), "incremental runs do not cover media steps yet")
                    .with_help("use mode = \"overwrite\": the job ledger already avoids paying twice for a job"));
            }
            let src = self.source();
            if src.kind.get_ref() != &SourceKind::Images && src.id_column.is_none() {
                let span = sink.mode.as_ref().map_or(sink.uri.span(), |m| m.span());
                return Err(self
                    .error(span, "incremental runs need a stable row id: set `id_column` in [source]")
                    .with_help("without it ids are file + row number, which shift when rows are added or removed"));
            }
        }
        if let Some(meta) = &sink.metadata {
            let mut seen = HashSet::new();
            for m in meta {
                let name = m.get_ref();
                if !seen.insert(name) {
                    return Err(self.error(
                        m.span(),
                        format!("metadata column `{name}` is listed twice"),
                    ));
                }
                if crate::sink::RESERVED_COLUMNS.contains(&name.as_str()) && name != "id" {
                    return Err(self.error(m.span(), format!("`{name}` is a column embedpipe writes itself; rename it in the source or leave it out")));
                }
                if steps
                    .iter()
                    .any(|s| crate::sink::step_columns(&s.vector).contains(name))
                {
                    return Err(self.error(
                        m.span(),
                        format!(
                            "metadata column `{name}` collides with an embed step's output column"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Removes `.` and resolvable `..` components without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// An endpoint override must be a plain `http(s)://host[:port]` URL: anything else fails every
/// call of the run (a service failure), so it is refused before any.
fn check_endpoint_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("uses `{other}://`; only http:// and https:// work")),
        None => return Err(format!("`{url}` has no scheme (http:// or https://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` has a path or query; the SDK adds the operation's own path"
        ));
    }
    Ok(())
}

fn kind_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Parquet => "parquet",
        SourceKind::Csv => "csv",
        SourceKind::Images => "images",
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_no_secrets(
    path: &Path,
    text: &str,
    table: &toml::de::DeTable<'_>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter() {
        let k = key.get_ref().to_ascii_lowercase();
        if SECRET_KEYS.contains(&k.as_str()) {
            return Err(ConfigError::at(
                path,
                text,
                Some(key.span()),
                format!(
                    "`{}` would put a literal secret in the pipeline file",
                    key.get_ref()
                ),
            )
            .with_help(CREDENTIAL_HELP));
        }
        check_value(path, text, value)?;
    }
    Ok(())
}

fn check_value(
    path: &Path,
    text: &str,
    value: &Spanned<toml::de::DeValue<'_>>,
) -> Result<(), ConfigError> {
    use toml::de::DeValue;
    match value.get_ref() {
        DeValue::String(s) if contains_aws_key_id(s) => Err(ConfigError::at(
            path,
            text,
            Some(value.span()),
            "this value looks like a literal AWS access key id; pipeline files must not contain credentials",
        )
        .with_help(CREDENTIAL_HELP)),
        DeValue::Table(t) => check_no_secrets(path, text, t),
        DeValue::Array(items) => items.iter().try_for_each(|v| check_value(path, text, v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
