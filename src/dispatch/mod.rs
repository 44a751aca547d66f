//! Dispatch: schedules model calls per model and keeps per-model statistics.
//!
//! It checks inputs before sending (pre-flight), splits a step's inputs into calls of the model's
//! batch size, runs them through the provider (local: length-sorted, on rayon; Bedrock: several
//! calls in flight, retried with backoff, validation failures split until the bad input is
//! isolated), and joins results back in input order.

mod limits;
mod retry;

use crate::config::{Pipeline, PriceOverride, Provider};
use crate::models::{self, Family, Image, ImageFormat, Input, ModelSpec, Params, Prices, Usage};
use crate::plan::Inputs;
use crate::providers::bedrock::{Bedrock, CallError, Connection, ErrorClass};
use crate::providers::local::LocalModel;
use anyhow::{anyhow, bail, Result};
use futures::stream::{self, StreamExt};
pub use limits::RateLimits;
pub use retry::RetryPolicy;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default calls in flight per Bedrock model.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Run-wide overrides of how models are reached (`--emulator`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Send every Bedrock call here.
    pub endpoint_url: Option<String>,
    /// Sign with dummy credentials (the emulator accepts any).
    pub emulator_credentials: bool,
}

/// Counters for one model.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub model_id: String,
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
    pub cost_usd: f64,
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub busy: Duration,
}

enum Backend {
    Local(LocalModel),
    Bedrock(Bedrock),
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
    retry: RetryPolicy,
    limits: RateLimits,
    stats: Mutex<ModelStats>,
}

/// Vectors for a step's inputs, row-major, in input order; or one error per failed input.
pub struct StepOutput {
    pub vectors: Vec<f32>,
    /// Inputs (by position) that failed: (position, dead-letter kind, reason).
    pub failed: Vec<(usize, String, String)>,
}

/// Owned inputs of one call, movable to a worker thread.
#[derive(Clone)]
enum Owned {
    Text(String),
    Image(Arc<[u8]>, ImageFormat),
    TextImage(String, Arc<[u8]>, ImageFormat),
}

impl Owned {
    fn as_input(&self) -> Input<'_> {
        match self {
            Owned::Text(t) => Input::Text(t),
            Owned::Image(b, f) => Input::Image(Image {
                bytes: b,
                format: *f,
            }),
            Owned::TextImage(t, b, f) => Input::TextImage(
                t,
                Image {
                    bytes: b,
                    format: *f,
                },
            ),
        }
    }
}

/// The outcome of one position of a Bedrock step.
type Slot = std::result::Result<Vec<f32>, (String, String)>;

impl ModelHandle {
    /// Loads model `index` of the pipeline (call from a blocking thread inside the runtime).
    pub fn load(pipeline: &Pipeline, index: usize, overrides: &Overrides) -> Result<Self> {
        let mut info = ModelInfo::from_config(pipeline, index);
        if let Some(e) = &overrides.endpoint_url {
            info.connection.endpoint_url = Some(e.clone());
        }
        info.connection.emulator_credentials = overrides.emulator_credentials;
        let cfg = pipeline.model(index);
        let backend = match info.spec.provider {
            Provider::Local => {
                let path = cfg.path.as_ref().map(|p| pipeline.resolve(p.get_ref()));
                let download = cfg.download.as_ref().is_none_or(|d| *d.get_ref())
                    && std::env::var_os("EMBEDPIPE_OFFLINE").is_none();
                Backend::Local(LocalModel::load(path.as_deref(), download, info.normalize)?)
            }
            Provider::Bedrock => {
                let conn = info.connection.clone();
                let client = tokio::runtime::Handle::current()
                    .block_on(async move { Bedrock::connect(&conn).await })
                    .map_err(|e| anyhow!("model `{}` ({}): {e:#}", info.name, info.spec.id))?;
                Backend::Bedrock(client)
            }
        };
        Ok(Self {
            stats: Mutex::new(ModelStats {
                model: info.name.clone(),
                model_id: info.invoke_id.clone(),
                ..Default::default()
            }),
            info,
            backend,
            limits: RateLimits::new(
                cfg.requests_per_minute.as_ref().map(|r| *r.get_ref()),
                cfg.tokens_per_minute.as_ref().map(|r| *r.get_ref()),
            ),
            retry: RetryPolicy {
                max_attempts: cfg
                    .max_attempts
                    .as_ref()
                    .map_or(RetryPolicy::default().max_attempts, |a| *a.get_ref()),
                ..RetryPolicy::default()
            },
        })
    }

    pub fn stats(&self) -> ModelStats {
        self.stats.lock().expect("stats lock").clone()
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
            Backend::Bedrock(b) => self.embed_bedrock(b, inputs, on_call).await,
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
        client: &Bedrock,
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
        let mut slots: Vec<Option<Slot>> = vec![None; n];
        // Pre-flight: nothing that would be refused is sent.
        let mut ready: Vec<(usize, Owned)> = Vec::with_capacity(n);
        for i in 0..n {
            let owned = match inputs {
                Inputs::Text(t) => Owned::Text(t[i].clone()),
                Inputs::Image(imgs) => match ImageFormat::detect(&imgs[i]) {
                    Some(f) => Owned::Image(imgs[i].clone(), f),
                    None => {
                        slots[i] = not_an_image();
                        continue;
                    }
                },
                Inputs::TextImage(pairs) => match ImageFormat::detect(&pairs[i].1) {
                    Some(f) => Owned::TextImage(pairs[i].0.clone(), pairs[i].1.clone(), f),
                    None => {
                        slots[i] = not_an_image();
                        continue;
                    }
                },
            };
            match models::preflight(spec, params, &owned.as_input()) {
                Ok(None) => ready.push((i, owned)),
                Ok(Some(cut)) => ready.push((
                    i,
                    match owned {
                        Owned::TextImage(_, b, f) => Owned::TextImage(cut, b, f),
                        _ => Owned::Text(cut),
                    },
                )),
                Err((kind, msg)) => slots[i] = Some(Err((kind.into(), msg))),
            }
        }
        let rejected = n - ready.len();
        if rejected > 0 {
            self.stats.lock().expect("stats lock").rejected_inputs += rejected as u64;
        }
        // Calls: up to batch_size inputs (Cohere v3 images: one per call) and under the body
        // limit.
        let mut calls: Vec<Vec<(usize, Owned)>> = Vec::new();
        let mut cur: Vec<(usize, Owned)> = Vec::new();
        let mut cur_bytes = 0usize;
        let per_call = match (spec.family, inputs) {
            (Family::CohereV3, Inputs::Image(_)) => 1,
            _ => self.info.batch_size,
        };
        for (i, o) in ready {
            let size = match &o {
                Owned::Text(t) => t.len() + 16,
                Owned::Image(b, _) => b.len().div_ceil(3) * 4 + 64,
                Owned::TextImage(t, b, _) => t.len() + b.len().div_ceil(3) * 4 + 96,
            };
            if !cur.is_empty()
                && (cur.len() >= per_call || cur_bytes + size > spec.limits.max_body_bytes)
            {
                calls.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += size;
            cur.push((i, o));
        }
        if !cur.is_empty() {
            calls.push(cur);
        }
        let mut results = stream::iter(calls)
            .map(|call| async move {
                let len = call.len();
                let out = self.call_splitting(client, call).await;
                on_call(len);
                out
            })
            .buffer_unordered(self.info.concurrency);
        while let Some(r) = results.next().await {
            for (i, slot) in r? {
                slots[i] = Some(slot);
            }
        }
        let dim = self.info.dimension;
        let mut vectors = vec![0f32; n * dim];
        let mut failed = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            match s.expect("every input has an outcome") {
                Ok(v) => vectors[i * dim..(i + 1) * dim].copy_from_slice(&v),
                Err((kind, msg)) => failed.push((i, kind, msg)),
            }
        }
        Ok(StepOutput { vectors, failed })
    }

    /// Runs one call; when the service rejects a multi-input call as invalid, splits it in halves
    /// until the bad inputs are isolated, so the others still get their vectors.
    async fn call_splitting(
        &self,
        client: &Bedrock,
        call: Vec<(usize, Owned)>,
    ) -> Result<Vec<(usize, Slot)>> {
        let mut out = Vec::with_capacity(call.len());
        let mut work = vec![call];
        while let Some(call) = work.pop() {
            match self.call_with_retries(client, &call).await {
                Ok(vectors) => out.extend(
                    call.iter()
                        .map(|(i, _)| *i)
                        .zip(vectors.into_iter().map(Ok)),
                ),
                Err(e) if e.class == ErrorClass::Validation && call.len() > 1 => {
                    let mut a = call;
                    let b = a.split_off(a.len() / 2);
                    work.push(b);
                    work.push(a);
                }
                Err(e) if fatal(e.class) => {
                    bail!(
                        "model `{}` ({}) cannot be called: {}{}",
                        self.info.name,
                        self.info.invoke_id,
                        e.message,
                        fatal_help(e.class)
                    )
                }
                Err(e) => {
                    let kind = e.class.as_str().to_string();
                    out.extend(
                        call.iter()
                            .map(|(i, _)| (*i, Err((kind.clone(), e.message.clone())))),
                    );
                }
            }
        }
        Ok(out)
    }

    /// One call with retries for throttling, server errors, timeouts and model-not-ready.
    async fn call_with_retries(
        &self,
        client: &Bedrock,
        call: &[(usize, Owned)],
    ) -> std::result::Result<Vec<Vec<f32>>, CallError> {
        let spec = self.info.spec;
        let params = self.info.params.clone();
        let owned: Vec<Owned> = call.iter().map(|(_, o)| o.clone()).collect();
        // Building the body (base64 of images) is CPU work.
        let (body, inputs_owned) = crate::run::cpu(move || {
            let inputs: Vec<Input> = owned.iter().map(Owned::as_input).collect();
            let body = models::build_request(spec, &params, &inputs)
                .map(|v| serde_json::to_vec(&v).expect("JSON values serialise"));
            (body, owned)
        })
        .await
        .map_err(|e| CallError {
            class: ErrorClass::Other,
            message: e.to_string(),
        })?;
        let body = body.map_err(|e| CallError {
            class: ErrorClass::Validation,
            message: e.0,
        })?;
        let est_tokens: u64 = inputs_owned
            .iter()
            .filter_map(|o| o.as_input().text().map(models::estimate_tokens))
            .sum();
        let mut attempt = 0u32;
        loop {
            // Every attempt counts against the quota, retries too.
            self.limits.acquire(est_tokens).await;
            let started = Instant::now();
            let result = client.invoke(&self.info.invoke_id, body.clone()).await;
            let result = result.and_then(|resp| {
                models::parse_response(spec, &self.info.params, &resp, call.len()).map_err(|e| {
                    CallError {
                        class: ErrorClass::ServerError,
                        message: format!("unusable response: {e}"),
                    }
                })
            });
            let elapsed = started.elapsed();
            let wait = {
                let mut stats = self.stats.lock().expect("stats lock");
                stats.busy += elapsed;
                match result {
                    Ok(mut parsed) => {
                        stats.calls += 1;
                        stats.inputs += call.len() as u64;
                        let inputs: Vec<Input> = inputs_owned.iter().map(Owned::as_input).collect();
                        let u = models::usage(spec, &inputs, &parsed);
                        stats.usage.add(&u);
                        stats.cost_usd += u.cost(&self.info.prices);
                        drop(stats);
                        if self.info.normalize && spec.family != Family::TitanTextV2 {
                            parsed
                                .vectors
                                .iter_mut()
                                .for_each(|v| models::l2_normalize(v));
                        }
                        return Ok(parsed.vectors);
                    }
                    Err(mut e) => {
                        *stats
                            .errors
                            .entry(e.class.as_str().to_string())
                            .or_default() += 1;
                        if e.class == ErrorClass::Throttled {
                            stats.throttled += 1;
                        }
                        attempt += 1;
                        if !e.class.retryable() || attempt >= self.retry.max_attempts {
                            stats.failed_calls += 1;
                            if attempt > 1 {
                                e.message = format!("{} (after {attempt} attempts)", e.message);
                            }
                            return Err(e);
                        }
                        stats.retries += 1;
                        tracing::debug!(model = %self.info.name, class = e.class.as_str(), attempt, "retrying: {}", e.message);
                        self.retry.backoff(attempt, e.class)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Errors that no row can get past: the run stops instead of dead-lettering everything.
fn fatal(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::AccessDenied | ErrorClass::Credentials | ErrorClass::NotFound
    )
}

fn fatal_help(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::AccessDenied => "\n  help: grant bedrock:InvokeModel on this model to your role, and enable the model in the Bedrock console (Model access) for this region",
        ErrorClass::Credentials => "\n  help: embedpipe uses the AWS default credential chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE (incl. SSO: `aws sso login`), or an instance/task role",
        ErrorClass::NotFound => "\n  help: check the model id and that the model is offered in this region (`region` in [[model]])",
        _ => "",
    }
}

/// All models of a pipeline that some step uses, loaded once, indexed like `[[model]]`.
pub struct Models {
    handles: Vec<Option<ModelHandle>>,
}

impl Models {
    /// Loads the models that steps use (unused `[[model]]` tables are not loaded).
    pub fn load(pipeline: &Pipeline, overrides: &Overrides) -> Result<Self> {
        let handles = (0..pipeline.file.models.len())
            .map(|i| {
                pipeline
                    .steps
                    .iter()
                    .any(|s| s.model_index == i)
                    .then(|| ModelHandle::load(pipeline, i, overrides))
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
