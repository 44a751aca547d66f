//! Dispatch: schedules model calls per model and keeps per-model statistics.
//!
//! It checks inputs before sending (pre-flight) and hands them to the model: the local model
//! embeds length-sorted calls on rayon; a Bedrock model's batcher fills calls across steps and
//! source batches, under per-model (and quota-group) rate limits and an adaptive cap on calls in
//! flight, retries with backoff, and splits invalid calls until the bad input is isolated.
//! Results are joined back to their inputs whatever order calls finish in.

mod batcher;
mod concurrency;
mod limits;
pub mod retry;
mod telemetry;

use crate::config::{Pipeline, PriceOverride, Provider};
use crate::models::{self, ImageFormat, ModelSpec, Params, Prices, Usage};
use crate::plan::Inputs;
use crate::providers::bedrock::{Bedrock, Connection};
use crate::providers::local::LocalModel;
use anyhow::{anyhow, bail, Result};
use batcher::{Caller, Item, Outcome, Owned};
use concurrency::AdaptiveLimit;
pub use limits::RateLimits;
pub use retry::{RetryPolicy, DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry::Telemetry;
use tokio::sync::mpsc;

/// Default calls in flight per Bedrock model (the adaptive cap starts here and never exceeds it).
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a partly filled call waits for more inputs.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);

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

/// Counters for one model.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub model_id: String,
    /// Successful calls.
    pub calls: u64,
    pub inputs: u64,
    /// Billable units: input tokens (`tokens_estimated` when the service returned no count),
    /// images, queries, media seconds.
    #[serde(flatten)]
    pub usage: Usage,
    pub failed_calls: u64,
    pub retries: u64,
    pub throttled: u64,
    /// Failed attempts by error class.
    pub errors: BTreeMap<String, u64>,
    /// Inputs rejected before sending.
    pub rejected_inputs: u64,
    /// Input tokens of the answered calls as estimated before sending (the same estimate
    /// `embedpipe plan` makes): compare with `usage.input_tokens`, what the service billed.
    pub estimated_tokens: u64,
    pub cost_usd: f64,
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub busy: Duration,
    /// Call latency (answered attempts), milliseconds.
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_mean_ms: f64,
    /// Requests (every attempt) and input tokens per minute, from the first request to the last
    /// answer.
    pub requests_per_minute: f64,
    pub tokens_per_minute: f64,
    /// The limits in force (the tighter of the model's and its quota group's).
    pub limit_requests_per_minute: Option<u32>,
    pub limit_tokens_per_minute: Option<u32>,
    /// The quota group the model shares, if any.
    pub quota: Option<String>,
    /// Configured cap on calls in flight, and the lowest the adaptive cap went.
    pub concurrency: usize,
    pub concurrency_lowest: usize,
}

/// What a `[[model]]` produces, known from the pipeline file without loading anything.
#[derive(Debug, Clone)]
pub struct ModelInfo {
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
    pub jobs: Option<crate::jobs::JobConfig>,
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

impl ModelInfo {
    pub fn from_config(pipeline: &Pipeline, index: usize) -> Self {
        let cfg = pipeline.model(index);
        let spec = pipeline.model_spec(index);
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
        let batch_size = cfg
            .batch_size
            .as_ref()
            .map_or(spec.default_batch_size, |b| *b.get_ref());
        let env = |s: &toml::Spanned<crate::config::EnvString>| s.get_ref().to_string();
        let connection = Connection {
            region: cfg.region.as_ref().map(env),
            endpoint_url: cfg.endpoint_url.as_ref().map(env),
            timeout: cfg
                .timeout_secs
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs_f64(*t.get_ref())),
            emulator_credentials: false,
        };
        // The vector space: base id (profiles serve the same model) and every parameter that
        // changes vectors. Truncation and embedding types are included: they change what is
        // embedded or stored.
        let fingerprint = serde_json::json!({
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
        })
        .to_string();
        Self {
            name: cfg.name.get_ref().clone(),
            spec,
            invoke_id: cfg.id.get_ref().clone(),
            dimension: params.dimension,
            normalize: params.normalize,
            params,
            batch_size,
            concurrency: cfg
                .concurrency
                .as_ref()
                .map_or(DEFAULT_CONCURRENCY, |c| *c.get_ref()),
            prices: apply_prices(spec.prices, cfg.prices.as_ref().map(|p| p.get_ref())),
            jobs: crate::jobs::JobConfig::from_model(cfg),
            connection,
            fingerprint,
        }
    }

    /// Infos of every `[[model]]`, indexed like the file.
    pub fn all(pipeline: &Pipeline) -> Vec<Self> {
        (0..pipeline.file.models.len())
            .map(|i| Self::from_config(pipeline, i))
            .collect()
    }
}

/// A model ready to take calls.
pub struct ModelHandle {
    pub info: ModelInfo,
    backend: Backend,
    stats: Arc<Mutex<ModelStats>>,
}

/// Vectors for a step's inputs, row-major, in input order; or one error per failed input.
pub struct StepOutput {
    pub vectors: Vec<f32>,
    /// Inputs (by position) that failed: (position, dead-letter kind, reason).
    pub failed: Vec<(usize, String, String)>,
}

enum Backend {
    Local(LocalModel),
    Bedrock {
        caller: Arc<Caller>,
        queue: mpsc::UnboundedSender<Item>,
    },
}

impl ModelHandle {
    /// Loads model `index` of the pipeline (call from a blocking thread inside the runtime).
    /// `group` is the model's `[[quota]]` group, shared with the other models in it.
    pub fn load(
        pipeline: &Pipeline,
        index: usize,
        overrides: &Overrides,
        group: Option<Arc<RateLimits>>,
    ) -> Result<Self> {
        let mut info = ModelInfo::from_config(pipeline, index);
        if let Some(e) = &overrides.endpoint_url {
            info.connection.endpoint_url = Some(e.clone());
        }
        info.connection.emulator_credentials = overrides.emulator_credentials;
        if let (Some(e), Some(j)) = (&overrides.s3_endpoint_url, info.jobs.as_mut()) {
            j.s3_endpoint = Some(e.clone());
        }
        let cfg = pipeline.model(index);
        let own = RateLimits::new(
            cfg.requests_per_minute.as_ref().map(|r| *r.get_ref()),
            cfg.tokens_per_minute.as_ref().map(|r| *r.get_ref()),
        );
        let limits: Vec<Arc<RateLimits>> = std::iter::once(Arc::new(own))
            .chain(group)
            .filter(|l| !l.is_unlimited())
            .collect();
        let remote = info.spec.provider != Provider::Local;
        let tightest = |f: fn(&RateLimits) -> Option<u32>| limits.iter().filter_map(|l| f(l)).min();
        let stats = Arc::new(Mutex::new(ModelStats {
            model: info.name.clone(),
            model_id: info.invoke_id.clone(),
            limit_requests_per_minute: tightest(|l| l.requests_per_minute),
            limit_tokens_per_minute: tightest(|l| l.tokens_per_minute),
            quota: cfg.quota.as_ref().map(|q| q.get_ref().clone()),
            concurrency: if remote { info.concurrency } else { 1 },
            concurrency_lowest: if remote { info.concurrency } else { 1 },
            ..Default::default()
        }));
        let backend = match info.spec.provider {
            Provider::Local => {
                let path = cfg.path.as_ref().map(|p| pipeline.resolve(p.get_ref()));
                let download = cfg.download.as_ref().is_none_or(|d| *d.get_ref())
                    && std::env::var_os("EMBEDPIPE_OFFLINE").is_none();
                Backend::Local(LocalModel::load(path.as_deref(), download, info.normalize)?)
            }
            Provider::Bedrock => {
                let conn = info.connection.clone();
                let rt = tokio::runtime::Handle::current();
                let client = rt
                    .block_on(async move { Bedrock::connect(&conn).await })
                    .map_err(|e| anyhow!("model `{}` ({}): {e:#}", info.name, info.spec.id))?;
                let retry = RetryPolicy {
                    max_attempts: cfg
                        .max_attempts
                        .as_ref()
                        .map_or(DEFAULT_MAX_ATTEMPTS, |a| *a.get_ref()),
                    deadline: cfg
                        .retry_deadline_secs
                        .as_ref()
                        .map_or(DEFAULT_DEADLINE, |d| Duration::from_secs_f64(*d.get_ref())),
                    ..RetryPolicy::default()
                };
                let caller = Arc::new(Caller {
                    info: info.clone(),
                    client,
                    retry,
                    limits,
                    concurrency: AdaptiveLimit::new(info.concurrency),
                    linger: cfg
                        .linger_ms
                        .as_ref()
                        .map_or(DEFAULT_LINGER, |l| Duration::from_millis(*l.get_ref())),
                    stats: stats.clone(),
                    telemetry: Arc::new(Mutex::new(Telemetry::default())),
                });
                let queue = {
                    let _guard = rt.enter();
                    batcher::spawn(caller.clone())
                };
                Backend::Bedrock { caller, queue }
            }
        };
        Ok(Self {
            stats,
            info,
            backend,
        })
    }

    /// Counters so far, with latency percentiles and achieved rates.
    pub fn stats(&self) -> ModelStats {
        let mut s = self.stats.lock().expect("stats lock").clone();
        if let Backend::Bedrock { caller, .. } = &self.backend {
            let r = caller.telemetry.lock().expect("telemetry lock").rates();
            let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
            s.latency_p50_ms = ms(r.latency_p50);
            s.latency_p95_ms = ms(r.latency_p95);
            s.latency_mean_ms = ms(r.latency_mean);
            s.requests_per_minute = r.requests_per_minute.round();
            s.tokens_per_minute = r.tokens_per_minute.round();
            s.concurrency_lowest = caller.concurrency.lowest();
        }
        s
    }

    /// Calls in flight allowed right now (Bedrock: the adaptive cap).
    pub fn concurrency_now(&self) -> usize {
        match &self.backend {
            Backend::Bedrock { caller, .. } => caller.concurrency.current(),
            Backend::Local(_) => 1,
        }
    }

    /// Embeds all `inputs` of a step; `on_call` hears how many inputs each finished call covered.
    ///
    /// Per-input problems (pre-flight rejections, validation errors, retries exhausted) come back
    /// in [`StepOutput::failed`]; an error means the run cannot go on (credentials, access, wrong
    /// model id or region).
    pub async fn embed(
        &self,
        inputs: &Inputs,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        match &self.backend {
            Backend::Local(m) => self.embed_local(m, inputs, on_call).await,
            Backend::Bedrock { queue, .. } => self.embed_bedrock(queue, inputs, on_call).await,
        }
    }

    async fn embed_local(
        &self,
        model: &LocalModel,
        inputs: &Inputs,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let Inputs::Text(texts) = inputs else {
            bail!(
                "model `{}` ({}) takes text only",
                self.info.name,
                self.info.spec.id
            );
        };
        let n = texts.len();
        let dim = self.info.dimension;
        let mut vectors = vec![0f32; n * dim];
        let mut failed = Vec::new();
        // Group similar lengths into the same call: padding is wasted compute.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| texts[i].len());
        for call in order.chunks(self.info.batch_size) {
            let call_texts: Vec<String> = call.iter().map(|&i| texts[i].clone()).collect();
            let started = Instant::now();
            let result = model.embed(call_texts).await;
            on_call(call.len());
            let mut stats = self.stats.lock().expect("stats lock");
            stats.calls += 1;
            stats.inputs += call.len() as u64;
            stats.busy += started.elapsed();
            match result {
                Ok(out) => {
                    stats.usage.input_tokens += out.tokens;
                    for (k, &i) in call.iter().enumerate() {
                        vectors[i * dim..(i + 1) * dim]
                            .copy_from_slice(&out.vectors[k * dim..(k + 1) * dim]);
                    }
                }
                Err(e) => {
                    stats.failed_calls += 1;
                    let msg = format!("{e:#}");
                    failed.extend(
                        call.iter()
                            .map(|&i| (i, "model_error".to_string(), msg.clone())),
                    );
                }
            }
        }
        failed.sort_by_key(|f| f.0);
        Ok(StepOutput { vectors, failed })
    }

    async fn embed_bedrock(
        &self,
        queue: &mpsc::UnboundedSender<Item>,
        inputs: &Inputs,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let spec = self.info.spec;
        let params = &self.info.params;
        let n = inputs.len();
        let not_an_image = || {
            Some(Err((
                "unsupported_image_format".to_string(),
                "the bytes are not a PNG, JPEG, GIF or WebP image".to_string(),
            )))
        };
        // An input larger than a minute's token quota could never be sent within it.
        let max_tokens = match &self.backend {
            Backend::Bedrock { caller, .. } => caller
                .limits
                .iter()
                .filter_map(|l| l.max_call_tokens())
                .min()
                .unwrap_or(u64::MAX),
            _ => u64::MAX,
        };
        // Each input's outcome: embedded (its vector is already in place) or why not.
        let mut slots: Vec<Option<Result<(), (String, String)>>> = vec![None; n];
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queued = 0usize;
        let closed = || anyhow!("model `{}`: its call queue has stopped", self.info.name);
        // Pre-flight: nothing that would be refused is sent; the rest joins the model's queue.
        let mut owned: Vec<Option<Owned>> = Vec::with_capacity(n);
        for i in 0..n {
            let o = match inputs {
                Inputs::Text(t) => Some(Owned::Text(t[i].clone())),
                Inputs::Image(imgs) => {
                    ImageFormat::detect(&imgs[i]).map(|f| Owned::Image(imgs[i].clone(), f))
                }
                Inputs::TextImage(pairs) => ImageFormat::detect(&pairs[i].1)
                    .map(|f| Owned::TextImage(pairs[i].0.clone(), pairs[i].1.clone(), f)),
                Inputs::Media(_) => bail!(
                    "model `{}`: video/audio inputs go through the async route, not InvokeModel",
                    self.info.name
                ),
            };
            if o.is_none() {
                slots[i] = not_an_image();
            }
            owned.push(o);
        }
        // Texts are checked here; images are decoded, which is CPU work for rayon.
        let (owned, checks) = if matches!(inputs, Inputs::Text(_)) {
            let checks: Vec<_> = owned
                .iter()
                .map(|o| {
                    o.as_ref()
                        .map(|o| models::preflight(spec, params, &o.as_input()))
                })
                .collect();
            (owned, checks)
        } else {
            let params = params.clone();
            crate::run::cpu(move || {
                use rayon::prelude::*;
                let checks: Vec<_> = owned
                    .par_iter()
                    .map(|o| {
                        o.as_ref()
                            .map(|o| models::preflight(spec, &params, &o.as_input()))
                    })
                    .collect();
                (owned, checks)
            })
            .await?
        };
        for (i, (o, check)) in owned.into_iter().zip(checks).enumerate() {
            let (Some(o), Some(check)) = (o, check) else {
                continue;
            };
            let o = match check {
                Ok(None) => o,
                Ok(Some(cut)) => match o {
                    Owned::TextImage(_, b, f) => Owned::TextImage(cut, b, f),
                    _ => Owned::Text(cut),
                },
                Err((kind, msg)) => {
                    slots[i] = Some(Err((kind.into(), msg)));
                    continue;
                }
            };
            let tokens = o.as_input().text().map_or(0, models::estimate_tokens);
            if tokens > max_tokens {
                slots[i] = Some(Err((
                    "input_too_long".into(),
                    format!("the text is ~{tokens} tokens, more than tokens_per_minute = {max_tokens} lets through in a minute, so it could never be sent within the quota; raise the quota or cut the text (`truncate`)"),
                )));
                continue;
            }
            queue
                .send(Item::new(&self.info, o, tx.clone(), i))
                .map_err(|_| closed())?;
            queued += 1;
        }
        drop(tx);
        let rejected = n - queued;
        if rejected > 0 {
            self.stats.lock().expect("stats lock").rejected_inputs += rejected as u64;
        }
        tracing::trace!(model = %self.info.name, queued, "inputs queued");
        // Each vector goes to its place as it arrives (and its own allocation is freed).
        let dim = self.info.dimension;
        let mut vectors = vec![0f32; n * dim];
        for _ in 0..queued {
            match rx.recv().await.ok_or_else(closed)? {
                Outcome::Done(i, Ok(v)) => {
                    vectors[i * dim..(i + 1) * dim].copy_from_slice(&v);
                    slots[i] = Some(Ok(()));
                }
                Outcome::Done(i, Err(why)) => slots[i] = Some(Err(why)),
                Outcome::Fatal(msg) => bail!(msg),
            }
            on_call(1);
        }
        let mut failed = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            if let Err((kind, msg)) = s.expect("every input has an outcome") {
                failed.push((i, kind, msg));
            }
        }
        Ok(StepOutput { vectors, failed })
    }
}

/// All models of a pipeline that some step uses, loaded once, indexed like `[[model]]`.
pub struct Models {
    handles: Vec<Option<ModelHandle>>,
}

impl Models {
    /// Loads the models that steps use (unused `[[model]]` tables are not loaded).
    pub fn load(pipeline: &Pipeline, overrides: &Overrides) -> Result<Self> {
        // One set of limiters per `[[quota]]` group, shared by its models.
        let groups: BTreeMap<&str, Arc<RateLimits>> = pipeline
            .file
            .quotas
            .iter()
            .map(|q| {
                let q = q.get_ref();
                (
                    q.name.get_ref().as_str(),
                    Arc::new(RateLimits::new(
                        q.requests_per_minute.as_ref().map(|r| *r.get_ref()),
                        q.tokens_per_minute.as_ref().map(|r| *r.get_ref()),
                    )),
                )
            })
            .collect();
        let handles = (0..pipeline.file.models.len())
            .map(|i| {
                let group = pipeline
                    .model(i)
                    .quota
                    .as_ref()
                    .and_then(|q| groups.get(q.get_ref().as_str()).cloned());
                pipeline
                    .steps
                    .iter()
                    .any(|s| s.model_index == i)
                    .then(|| ModelHandle::load(pipeline, i, overrides, group))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self { handles })
    }

    /// The handle of model `index` (which a step uses).
    pub fn get(&self, index: usize) -> &ModelHandle {
        self.handles[index]
            .as_ref()
            .expect("only models used by steps are looked up")
    }

    /// Loaded models, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ModelHandle> {
        self.handles.iter().flatten()
    }
}
