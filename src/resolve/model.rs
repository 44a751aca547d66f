//! Resolve layer: a `[[model]]` table → the settings of everything that serves it (the client's
//! connection, dispatch's batching, limits and retries, the async route), with every default
//! applied here, once.

use crate::config::{EnvString, ModelConfig, Pipeline, PriceOverride, QuotaConfig};
use crate::util::{RetryPolicy, S3Uri};
use embedpipe_wire::{ModelSpec, Params, Prices};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Calls in flight per remote model (the adaptive cap starts here and never exceeds it).
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a partly filled call waits for more inputs.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);
/// Attempts per call that may fail with 5xx, timeouts, resets or model-not-ready.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// No retry of a call starts later than this after its first attempt.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Async jobs in flight at once.
pub const DEFAULT_MAX_JOBS: usize = 16;
/// A job still running after this long is dead-lettered (it keeps running; the next run picks
/// it up).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// First wait between polls of an async job.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// Run-wide overrides of how models are reached (`--emulator`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Send every Bedrock call here.
    pub endpoint_url: Option<String>,
    /// Sign with dummy credentials (the emulator accepts any).
    pub emulator_credentials: bool,
    /// Send S3 requests (media staging, job results) here.
    pub s3_endpoint_url: Option<String>,
}

/// How a remote model is reached.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub timeout: Duration,
    /// Sign with the emulator's dummy credentials instead of the AWS chain.
    pub emulator_credentials: bool,
    /// OpenAI-compatible: the server's URL up to `/v1` (`/embeddings` is added).
    pub base_url: Option<String>,
    /// OpenAI-compatible: the environment variable holding the API key (its name only).
    pub api_key_env: Option<String>,
    /// OpenAI-compatible: extra headers, (header name, environment variable holding its value).
    pub headers_env: Vec<(String, String)>,
}

/// Where the local engine finds its files.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    /// `path` of the `[[model]]` table, resolved against the pipeline file.
    pub path: Option<PathBuf>,
    /// Fetch the files when they are not found (`download`, unless `EMBEDPIPE_OFFLINE` is set).
    pub download: bool,
    /// `fp32` or `int8` (validated).
    pub variant: String,
    /// `mean` / `cls` from the file (validated), over the catalogue's and the folder's.
    pub pooling: Option<String>,
    pub query_prefix: Option<String>,
    pub document_prefix: Option<String>,
    /// ONNX Runtime threads; `None`: the machine's cores.
    pub threads: Option<usize>,
}

/// A model's async-invoke settings (video/audio), when it has `output_s3_uri`.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub output: S3Uri,
    pub staging: S3Uri,
    pub s3_endpoint: Option<String>,
    pub max_jobs: usize,
    pub timeout: Duration,
    pub poll: Duration,
    /// How StartAsyncInvoke / GetAsyncInvoke calls are retried.
    pub retry: RetryPolicy,
}

/// Default records per batch job: a tenth of AWS's default maximum (50,000), so a job's
/// results (read back one job at a time) stay small.
pub const DEFAULT_RECORDS_PER_JOB: usize = 10_000;
/// The minimum records per batch job assumed when the file does not say (AWS's quota is
/// per account and model; 100 is the smallest value seen documented).
pub const DEFAULT_MIN_RECORDS_PER_JOB: usize = 100;
/// Batch jobs in flight at once (AWS's default "jobs in progress" quota is in this order).
pub const DEFAULT_MAX_BATCH_JOBS: usize = 10;
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// First wait between GetModelInvocationJob polls (jobs take minutes to hours).
pub const DEFAULT_BATCH_POLL: Duration = Duration::from_secs(30);

/// Batch inference (`invoke = "batch"`).
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub role_arn: String,
    /// Records go to `<prefix>/inputs/`, jobs write under `<prefix>/outputs/`.
    pub prefix: S3Uri,
    pub s3_endpoint: Option<String>,
    pub records_per_job: usize,
    pub min_records_per_job: usize,
    pub max_jobs: usize,
    pub timeout: Duration,
    pub poll: Duration,
    /// Batch prices (half the on-demand ones unless the file says).
    pub prices: Prices,
    pub retry: RetryPolicy,
}

impl BatchSettings {
    /// `None` unless `invoke = "batch"` (validation has checked the keys).
    fn resolve(cfg: &ModelConfig, spec: &ModelSpec, overrides: &Overrides) -> Option<Self> {
        if cfg.invoke.as_ref().map(|i| *i.get_ref()) != Some(crate::config::Invoke::Batch) {
            return None;
        }
        let prefix = S3Uri::parse(&env(cfg.batch_s3_uri.as_ref()?))
            .ok()?
            .folder();
        let on_demand = apply_prices(spec.prices, cfg.prices.as_ref().map(|p| p.get_ref()));
        let o = cfg.prices.as_ref().map(|p| p.get_ref());
        let prices = Prices {
            per_1k_tokens: o
                .and_then(|o| o.batch_per_1k_tokens)
                .unwrap_or(on_demand.per_1k_tokens / 2.0),
            per_image: o
                .and_then(|o| o.batch_per_image)
                .unwrap_or(on_demand.per_image / 2.0),
            per_query: on_demand.per_query / 2.0,
            per_video_second: on_demand.per_video_second / 2.0,
            per_audio_second: on_demand.per_audio_second / 2.0,
        };
        Some(Self {
            role_arn: env(cfg.role_arn.as_ref()?),
            prefix,
            s3_endpoint: overrides
                .s3_endpoint_url
                .clone()
                .or_else(|| cfg.s3_endpoint_url.as_ref().map(env)),
            records_per_job: cfg
                .records_per_job
                .as_ref()
                .map_or(DEFAULT_RECORDS_PER_JOB, |n| *n.get_ref()),
            min_records_per_job: cfg
                .min_records_per_job
                .as_ref()
                .map_or(DEFAULT_MIN_RECORDS_PER_JOB, |n| *n.get_ref()),
            max_jobs: cfg
                .max_jobs
                .as_ref()
                .map_or(DEFAULT_MAX_BATCH_JOBS, |m| *m.get_ref()),
            timeout: cfg
                .job_timeout_hours
                .as_ref()
                .map_or(DEFAULT_BATCH_TIMEOUT, |h| {
                    Duration::from_secs_f64(*h.get_ref() * 3600.0)
                }),
            poll: cfg.poll_secs.as_ref().map_or(DEFAULT_BATCH_POLL, |t| {
                Duration::from_secs_f64(*t.get_ref())
            }),
            prices,
            retry: RetryPolicy::new(DEFAULT_MAX_ATTEMPTS, DEFAULT_DEADLINE),
        })
    }
}

/// Rate limits of a `[[quota]]` group or of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSettings {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// The limits are each shard's, not the whole job's (`quota_scope = "shard"`).
    pub per_shard: bool,
}

impl RateSettings {
    /// One shard's part of the job's limits: 1/`shards` of each (at least one per minute),
    /// unless they are per shard already.
    pub fn shard_share(self, shards: u32) -> Self {
        if self.per_shard || shards <= 1 {
            return self;
        }
        let share = |v: Option<u32>| v.map(|v| (v / shards).max(1));
        Self {
            requests_per_minute: share(self.requests_per_minute),
            tokens_per_minute: share(self.tokens_per_minute),
            per_shard: true,
        }
    }
}

/// A `[[quota]]` group: limits shared by every model that names it.
#[derive(Debug, Clone)]
pub struct QuotaSettings {
    pub name: String,
    pub rates: RateSettings,
}

impl QuotaSettings {
    pub fn resolve(q: &QuotaConfig) -> Self {
        Self {
            name: q.name.get_ref().clone(),
            rates: RateSettings {
                requests_per_minute: q.requests_per_minute.as_ref().map(|r| *r.get_ref()),
                tokens_per_minute: q.tokens_per_minute.as_ref().map(|r| *r.get_ref()),
                per_shard: q
                    .quota_scope
                    .as_ref()
                    .is_some_and(|s| *s.get_ref() == crate::config::QuotaScope::Shard),
            },
        }
    }
}

/// Everything about one `[[model]]`, known from the pipeline file without loading anything.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub name: String,
    pub spec: &'static ModelSpec,
    /// The id sent to the provider (may carry an inference-profile prefix).
    pub invoke_id: String,
    pub params: Params,
    pub dimension: usize,
    pub normalize: bool,
    pub batch_size: usize,
    pub concurrency: usize,
    pub prices: Prices,
    pub connection: Connection,
    /// Model id, dimension and parameters: the identity of the vector space, part of every
    /// content hash.
    pub fingerprint: String,
    /// Async-invoke settings (video/audio), when the model has `output_s3_uri`.
    pub jobs: Option<JobSettings>,
    /// Batch inference settings, when the model has `invoke = "batch"`.
    pub batch: Option<BatchSettings>,
    pub retry: RetryPolicy,
    pub linger: Duration,
    /// The model's own limits (its quota group's come on top).
    pub rates: RateSettings,
    /// The `[[quota]]` group the model shares, if any.
    pub quota: Option<String>,
    pub local: LocalFiles,
    /// Tokens one input may hold (OpenAI-compatible `max_input_tokens`): longer inputs are
    /// dead-lettered before sending.
    pub max_input_tokens: Option<usize>,
    /// Tokens one call may hold (OpenAI-compatible `max_request_tokens`).
    pub max_request_tokens: Option<u64>,
}

fn env(s: &Spanned<EnvString>) -> String {
    s.get_ref().to_string()
}

fn apply_prices(base: Prices, o: Option<&PriceOverride>) -> Prices {
    let Some(o) = o else { return base };
    Prices {
        per_1k_tokens: o.per_1k_tokens.unwrap_or(base.per_1k_tokens),
        per_image: o.per_image.unwrap_or(base.per_image),
        per_query: o.per_query.unwrap_or(base.per_query),
        per_video_second: o.per_video_second.unwrap_or(base.per_video_second),
        per_audio_second: o.per_audio_second.unwrap_or(base.per_audio_second),
    }
}

/// The model parameters the file sets, over the family's defaults.
fn params(cfg: &ModelConfig, spec: &ModelSpec) -> Params {
    let mut params = Params::defaults(spec);
    if let Some(d) = &cfg.dimensions {
        params.dimension = *d.get_ref();
    }
    if let Some(n) = &cfg.normalize {
        params.normalize = *n.get_ref();
    }
    if let Some(t) = cfg.input_type.as_ref().or(cfg.purpose.as_ref()) {
        params.input_type = Some(t.get_ref().clone());
    }
    if let Some(t) = &cfg.truncate {
        params.truncate = Some(t.get_ref().clone());
    }
    if let Some(t) = &cfg.embedding_types {
        params.embedding_types = t.get_ref().clone();
    }
    params.max_tokens = cfg.max_tokens.as_ref().map(|m| *m.get_ref());
    params.detail_level = cfg.detail_level.as_ref().map(|d| d.get_ref().clone());
    params.embedding_mode = cfg.embedding_mode.as_ref().map(|d| d.get_ref().clone());
    params.segment_seconds = cfg.segment_seconds.as_ref().map(|d| *d.get_ref());
    params.segment_chars = cfg.segment_chars.as_ref().map(|d| *d.get_ref());
    params.bucket_owner = cfg.bucket_owner.as_ref().map(|d| d.get_ref().clone());
    if let Some(o) = &cfg.embedding_options {
        params.embedding_options = o.get_ref().clone();
    }
    if spec.provider == embedpipe_wire::ProviderKind::OpenAi {
        params.model = Some(cfg.id.get_ref().clone());
        params.encoding_format = cfg.encoding_format.as_ref().map(|f| f.get_ref().clone());
        params.send_dimensions = cfg.send_dimensions.as_ref().is_none_or(|s| *s.get_ref());
        params.query_prefix = cfg.query_prefix.as_ref().map(|p| p.get_ref().clone());
        params.document_prefix = cfg.document_prefix.as_ref().map(|p| p.get_ref().clone());
    }
    params
}

/// The vector space: base id (profiles serve the same model) and every parameter that changes
/// vectors. Truncation and embedding types are included: they change what is embedded or
/// stored.
fn fingerprint(spec: &ModelSpec, params: &Params, cfg: &ModelConfig) -> String {
    let mut space = serde_json::json!({
        "model": spec.id,
        "dimension": params.dimension,
        "normalize": params.normalize,
        "input_type": params.input_type,
        "truncate": params.truncate,
        "max_tokens": params.max_tokens,
        "detail_level": params.detail_level,
        "embedding_mode": params.embedding_mode,
        "segment_seconds": params.segment_seconds,
        "segment_chars": params.segment_chars,
        "embedding_options": params.embedding_options,
    });
    // A local model's choices that change its vectors; absent when left at the catalogue's, so
    // tables made before they existed keep their hashes.
    let local = [
        (
            "variant",
            cfg.variant
                .as_ref()
                .map(|v| v.get_ref().to_ascii_lowercase()),
        ),
        (
            "pooling",
            cfg.pooling
                .as_ref()
                .map(|v| v.get_ref().to_ascii_lowercase()),
        ),
        (
            "document_prefix",
            cfg.document_prefix.as_ref().map(|v| v.get_ref().clone()),
        ),
    ];
    for (key, value) in local {
        match value {
            Some(v) if !(key == "variant" && v == "fp32") => space[key] = v.into(),
            _ => {}
        }
    }
    if spec.id == embedpipe_wire::families::local::CUSTOM.id {
        if let Some(p) = &cfg.path {
            space["path"] = p.get_ref().to_string().into();
        }
    }
    // The server's model is the space; which server (gateway, URL) serves it is not.
    if let Some(m) = &params.model {
        space["server_model"] = m.clone().into();
    }
    space.to_string()
}

impl JobSettings {
    /// `None` without `output_s3_uri` (validation has checked the URIs).
    fn resolve(cfg: &ModelConfig, overrides: &Overrides) -> Option<Self> {
        let output = S3Uri::parse(&env(cfg.output_s3_uri.as_ref()?)).ok()?;
        let staging = cfg
            .staging_s3_uri
            .as_ref()
            .and_then(|s| S3Uri::parse(&env(s)).ok())
            .unwrap_or_else(|| output.join("inputs/"));
        Some(Self {
            staging: staging.folder(),
            output: output.folder(),
            s3_endpoint: overrides
                .s3_endpoint_url
                .clone()
                .or_else(|| cfg.s3_endpoint_url.as_ref().map(env)),
            max_jobs: cfg
                .max_jobs
                .as_ref()
                .map_or(DEFAULT_MAX_JOBS, |m| *m.get_ref()),
            timeout: cfg
                .job_timeout_secs
                .as_ref()
                .map_or(DEFAULT_JOB_TIMEOUT, |t| {
                    Duration::from_secs_f64(*t.get_ref())
                }),
            poll: cfg
                .poll_secs
                .as_ref()
                .map_or(DEFAULT_POLL, |t| Duration::from_secs_f64(*t.get_ref())),
            retry: RetryPolicy::new(DEFAULT_MAX_ATTEMPTS, DEFAULT_DEADLINE),
        })
    }
}

impl ModelSettings {
    /// The settings of model `index` of the pipeline, with the run's overrides applied.
    pub fn resolve(pipeline: &Pipeline, index: usize, overrides: &Overrides) -> Self {
        let cfg = pipeline.model(index);
        let spec = super::spec_of(pipeline, index);
        let params = params(cfg, spec);
        let connection = Connection {
            region: cfg.region.as_ref().map(env),
            endpoint_url: overrides
                .endpoint_url
                .clone()
                .or_else(|| cfg.endpoint_url.as_ref().map(env)),
            timeout: cfg
                .timeout_secs
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs_f64(*t.get_ref())),
            emulator_credentials: overrides.emulator_credentials,
            // `--emulator` serves /v1/embeddings too.
            base_url: match (&overrides.endpoint_url, overrides.emulator_credentials) {
                (Some(e), true) => Some(format!("{}/v1", e.trim_end_matches('/'))),
                _ => cfg.base_url.as_ref().map(env),
            },
            api_key_env: cfg.api_key_env.as_ref().map(|k| k.get_ref().clone()),
            headers_env: cfg
                .headers_env
                .as_ref()
                .map(|h| {
                    h.get_ref()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let retry = RetryPolicy::new(
            cfg.max_attempts
                .as_ref()
                .map_or(DEFAULT_MAX_ATTEMPTS, |a| *a.get_ref()),
            cfg.retry_deadline_secs
                .as_ref()
                .map_or(DEFAULT_DEADLINE, |d| Duration::from_secs_f64(*d.get_ref())),
        );
        Self {
            name: cfg.name.get_ref().clone(),
            spec,
            invoke_id: cfg.id.get_ref().clone(),
            dimension: params.dimension,
            normalize: params.normalize,
            fingerprint: fingerprint(spec, &params, cfg),
            params,
            batch_size: cfg
                .batch_size
                .as_ref()
                .map_or(spec.default_batch_size, |b| *b.get_ref()),
            concurrency: cfg
                .concurrency
                .as_ref()
                .map_or(DEFAULT_CONCURRENCY, |c| *c.get_ref()),
            prices: apply_prices(spec.prices, cfg.prices.as_ref().map(|p| p.get_ref())),
            jobs: JobSettings::resolve(cfg, overrides),
            batch: BatchSettings::resolve(cfg, spec, overrides),
            connection,
            retry,
            linger: cfg
                .linger_ms
                .as_ref()
                .map_or(DEFAULT_LINGER, |l| Duration::from_millis(*l.get_ref())),
            rates: RateSettings {
                requests_per_minute: cfg.requests_per_minute.as_ref().map(|r| *r.get_ref()),
                tokens_per_minute: cfg.tokens_per_minute.as_ref().map(|r| *r.get_ref()),
                per_shard: cfg
                    .quota_scope
                    .as_ref()
                    .is_some_and(|s| *s.get_ref() == crate::config::QuotaScope::Shard),
            },
            quota: cfg.quota.as_ref().map(|q| q.get_ref().clone()),
            local: LocalFiles {
                path: cfg.path.as_ref().map(|p| pipeline.resolve(p.get_ref())),
                download: cfg.download.as_ref().is_none_or(|d| *d.get_ref())
                    && std::env::var_os("EMBEDPIPE_OFFLINE").is_none(),
                variant: cfg
                    .variant
                    .as_ref()
                    .map_or("fp32".into(), |v| v.get_ref().to_ascii_lowercase()),
                pooling: cfg
                    .pooling
                    .as_ref()
                    .map(|p| p.get_ref().to_ascii_lowercase()),
                query_prefix: cfg.query_prefix.as_ref().map(|p| p.get_ref().clone()),
                document_prefix: cfg.document_prefix.as_ref().map(|p| p.get_ref().clone()),
                threads: cfg.threads.as_ref().map(|t| *t.get_ref()),
            },
            max_input_tokens: cfg.max_input_tokens.as_ref().map(|t| *t.get_ref()),
            max_request_tokens: cfg.max_request_tokens.as_ref().map(|t| *t.get_ref()),
        }
    }

    /// The model's id as reports and table metadata show it: the registry's base id, or for
    /// an OpenAI-compatible model the server's model name.
    pub fn model_id(&self) -> &str {
        if self.spec.provider == embedpipe_wire::ProviderKind::OpenAi {
            &self.invoke_id
        } else {
            self.spec.id
        }
    }

    /// Tokens one input may hold: the file's `max_input_tokens`, else the model's.
    pub fn input_token_limit(&self) -> usize {
        self.max_input_tokens.unwrap_or(self.spec.max_input_tokens)
    }

    /// Settings of every `[[model]]`, indexed like the file.
    pub fn all(pipeline: &Pipeline, overrides: &Overrides) -> Vec<Self> {
        (0..pipeline.file.models.len())
            .map(|i| Self::resolve(pipeline, i, overrides))
            .collect()
    }
}
