//! The pipeline file as written: the serde structs and enums its tables deserialise into, every
//! value still raw (with its span, `None` when unset). Defaults are applied by the resolve layer,
//! not here; the checks that need no data live in the `check_*` files of this module.

use super::EnvString;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

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
    /// How object storage is reached (S3 sources, an S3 sink and its side files).
    pub storage: Option<Spanned<StorageConfig>>,
    /// Split a long text of each source row into chunks, one table row each (RAG).
    pub chunk: Option<Spanned<super::chunk::ChunkConfig>>,
}

/// `[storage]`: where S3 requests go. Credentials are never here: they come from the AWS chain.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// AWS region of the buckets (default: the AWS config chain, `AWS_REGION` / profile).
    pub region: Option<Spanned<EnvString>>,
    /// An S3-compatible server (MinIO, a local server): requests become path-style. Default
    /// `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`. Plain `http://` only on loopback.
    pub s3_endpoint_url: Option<Spanned<EnvString>>,
}

/// A `[[quota]]` group: limits shared by every model that names it, on top of their own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub name: Spanned<String>,
    pub requests_per_minute: Option<Spanned<u32>>,
    pub tokens_per_minute: Option<Spanned<u32>>,
    /// Sharded runs: whether the limits are the whole job's (default) or each shard's.
    pub quota_scope: Option<Spanned<QuotaScope>>,
}

/// How a model's inputs are sent.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Invoke {
    /// InvokeModel per call (the default).
    #[default]
    OnDemand,
    /// Bedrock batch inference: records in JSONL files in S3, jobs outside the on-demand
    /// quotas, billed at the batch price.
    Batch,
}

/// What a rate limit covers in a sharded run.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuotaScope {
    /// The whole job: each of N shards takes 1/N (the account's quota is one).
    #[default]
    Job,
    /// Each shard (e.g. each worker calls its own endpoint).
    Shard,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Parquet,
    Csv,
    Images,
    /// A folder of `.txt`, `.md`, `.html` and `.pdf` files, one row per document.
    Documents,
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
    // Documents (also `include`, `exclude`, `recursive`)
    pub max_document_bytes: Option<Spanned<u64>>,
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

/// Where a model runs (`provider = "local" | "bedrock"`): the wire layer's kind, with the same
/// spelling and messages.
pub use embedpipe_wire::ProviderKind as Provider;

/// Kinds of model input (a media step's `modality`): the wire layer's vocabulary. With
/// [`Provider`], the only names config takes from the wire crate (never its registry or specs).
pub use embedpipe_wire::Modality;

/// Price overrides for a model (USD); unset fields keep the built-in list price.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub per_1k_tokens: Option<f64>,
    pub per_image: Option<f64>,
    pub per_query: Option<f64>,
    pub per_video_second: Option<f64>,
    pub per_audio_second: Option<f64>,
    /// Batch inference prices (default: half the on-demand ones).
    pub batch_per_1k_tokens: Option<f64>,
    pub batch_per_image: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name embed steps use to refer to this model.
    pub name: Spanned<String>,
    pub provider: Spanned<Provider>,
    /// The provider's model id, e.g. `sentence-transformers/all-MiniLM-L6-v2`; for
    /// `provider = "openai"` the model name as the server knows it (written `model = ...`).
    #[serde(alias = "model")]
    pub id: Spanned<String>,
    /// OpenAI-compatible: the server's base URL, e.g. `http://localhost:4000/v1`
    /// (`/embeddings` is added).
    pub base_url: Option<Spanned<EnvString>>,
    /// OpenAI-compatible: the name of the environment variable holding the API key (sent as
    /// `Authorization: Bearer`); never the key itself.
    pub api_key_env: Option<Spanned<String>>,
    /// OpenAI-compatible: extra request headers, each from an environment variable
    /// (`{ "x-litellm-api-key" = "LITELLM_KEY" }`: header name = variable name).
    pub headers_env: Option<Spanned<BTreeMap<String, String>>>,
    /// OpenAI-compatible: `float` (default) or `base64`.
    pub encoding_format: Option<Spanned<String>>,
    /// OpenAI-compatible: send `dimensions` in each request (default true); `false` for servers
    /// that refuse it for fixed-size models (vLLM, OpenAI's ada-002).
    pub send_dimensions: Option<Spanned<bool>>,
    /// OpenAI-compatible: the model's tokens per input, when known (longer inputs are
    /// dead-lettered before sending; chunk sizes default to it).
    pub max_input_tokens: Option<Spanned<usize>>,
    /// OpenAI-compatible: the most tokens one request may carry (OpenAI: 300,000).
    pub max_request_tokens: Option<Spanned<u64>>,
    /// Local provider: folder holding the model files.
    pub path: Option<Spanned<EnvString>>,
    /// Local provider: fetch the weights when they are not found (default true).
    pub download: Option<Spanned<bool>>,
    /// Local provider: `fp32` (default) or `int8` (a quantized export: faster, a different
    /// vector space).
    pub variant: Option<Spanned<String>>,
    /// Local provider: `mean` or `cls` (default: the catalogue's, or the model folder's
    /// `1_Pooling/config.json`).
    pub pooling: Option<Spanned<String>>,
    /// Local provider: text put before search queries (default: the catalogue's).
    pub query_prefix: Option<Spanned<String>>,
    /// Local provider: text put before every indexed input (default: the catalogue's).
    pub document_prefix: Option<Spanned<String>>,
    /// Local provider: ONNX Runtime threads (default: the machine's cores).
    pub threads: Option<Spanned<usize>>,
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
    /// Sharded runs: whether these limits are the whole job's (default) or each shard's.
    pub quota_scope: Option<Spanned<QuotaScope>>,
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
    /// `on_demand` (default) or `batch` (Bedrock batch inference).
    pub invoke: Option<Spanned<Invoke>>,
    /// Batch: the service role Bedrock assumes to read the records and write the results.
    pub role_arn: Option<Spanned<EnvString>>,
    /// Batch: where the JSONL records go and the jobs write their results, `s3://bucket/prefix`.
    pub batch_s3_uri: Option<Spanned<EnvString>>,
    /// Batch: records per job (default 10,000; AWS allows up to 50,000 by default).
    pub records_per_job: Option<Spanned<usize>>,
    /// Batch: the service's minimum records per job (default 100); a smaller rest goes on-demand.
    pub min_records_per_job: Option<Spanned<usize>>,
    /// Batch: a job still running after this long is dead-lettered (default 24 h); it is
    /// picked up by the next run if it completes later.
    pub job_timeout_hours: Option<Spanned<f64>>,
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

    /// The mode [`Self::as_str`] names.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Create,
            Self::Overwrite,
            Self::Append,
            Self::Incremental,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type", default)]
    pub kind: Option<Spanned<SinkKind>>,
    /// LanceDB database: a folder (relative to the pipeline file) or `s3://bucket/prefix`.
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
    /// Old table versions kept after a successful run: a duration (`"7d"`, the default), a
    /// count of versions (`3`), or `"all"`.
    pub keep_versions: Option<Spanned<KeepVersions>>,
}

/// `keep_versions` as written.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum KeepVersions {
    Count(i64),
    Text(String),
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
