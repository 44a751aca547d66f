//! Layer 6, dispatch (above prepare): schedules model calls per model and keeps per-model
//! statistics.
//!
//! It checks inputs before sending (pre-flight) and hands them to the model: the local model
//! embeds length-sorted calls on rayon; a remote model's (Bedrock, OpenAI-compatible) batcher fills calls across steps and
//! source batches, under per-model (and quota-group) rate limits and an adaptive cap on calls in
//! flight, retries with backoff, and splits invalid calls until the bad input is isolated.
//! Results are joined back to their inputs whatever order calls finish in.

mod batcher;
mod concurrency;
mod limits;
mod pacer;
mod telemetry;

use crate::clients::Remote;
use crate::engines::local::LocalModel;
use crate::prepare::image_check::check_image;
use crate::prepare::Inputs;
use crate::resolve::{ModelSettings, QuotaSettings};
use crate::util::{ErrorClass, FailureKind};
use anyhow::{anyhow, bail, Result};
use batcher::{Caller, Item, Outcome, Owned};
use concurrency::AdaptiveLimit;
use embedpipe_wire::{ImageFormat, ProviderKind as Provider, Rejection, Usage};
pub use limits::RateLimits;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry::Telemetry;
use tokio::sync::mpsc;

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
    #[serde(serialize_with = "crate::util::ser_secs")]
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
    /// The server's own rate-limit budget as last reported (`x-ratelimit-*`; OpenAI-compatible
    /// servers that send them), and how often and long sends waited for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_budget: Option<ServerBudgetStats>,
}

/// The last `x-ratelimit-*` report of a server, and the pauses it caused.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerBudgetStats {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub pauses: u64,
    #[serde(serialize_with = "crate::util::ser_secs")]
    pub paused: Duration,
}

/// A model ready to take calls.
pub struct ModelHandle {
    pub info: ModelSettings,
    backend: Backend,
    stats: Arc<Mutex<ModelStats>>,
}

/// Vectors for a step's inputs, row-major, in input order; or one error per failed input.
pub struct StepOutput {
    pub vectors: Vec<f32>,
    /// Inputs (by position) that failed: (position, why, reason).
    pub failed: Vec<(usize, FailureKind, String)>,
}

/// What became of one input of a remote model's step: embedded (its vector is in place already),
/// refused or failed (why, reason), or `None` while it is still under way.
type InputOutcome = Option<Result<(), (FailureKind, String)>>;

/// The pre-flight of one input: the text cut to fit (`Some`), or why it would be refused;
/// `None` for an input that has no owned copy.
type Check = Option<Result<Option<String>, Rejection>>;

enum Backend {
    Local(LocalModel),
    /// Bedrock or an OpenAI-compatible server: the same batcher, limits and retries.
    Remote {
        caller: Arc<Caller>,
        queue: mpsc::UnboundedSender<Item>,
    },
}

impl ModelHandle {
    /// The model's own token counter, when embedpipe has its tokenizer (local models).
    pub fn token_counter(&self) -> Option<Arc<dyn crate::util::tokens::TokenCounter>> {
        match &self.backend {
            Backend::Local(m) => Some(m.token_counter()),
            Backend::Remote { .. } => None,
        }
    }

    /// Loads a model (call from a blocking thread inside the runtime). `group` holds the limits
    /// of the model's `[[quota]]` group, shared with the other models in it.
    pub fn load(info: ModelSettings, group: Option<Arc<RateLimits>>) -> Result<Self> {
        let own = RateLimits::new(info.rates.requests_per_minute, info.rates.tokens_per_minute);
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
            quota: info.quota.clone(),
            concurrency: if remote { info.concurrency } else { 1 },
            concurrency_lowest: if remote { info.concurrency } else { 1 },
            ..Default::default()
        }));
        let backend = match info.spec.provider {
            Provider::Local => Backend::Local(LocalModel::load(&info)?),
            Provider::Bedrock | Provider::OpenAi => {
                let rt = tokio::runtime::Handle::current();
                let client = rt
                    .block_on(Remote::connect(&info))
                    .map_err(|e| anyhow!("model `{}` ({}): {e:#}", info.name, info.invoke_id))?;
                let caller = Arc::new(Caller {
                    info: info.clone(),
                    client,
                    retry: info.retry,
                    limits,
                    concurrency: AdaptiveLimit::new(info.concurrency),
                    linger: info.linger,
                    stats: stats.clone(),
                    telemetry: Arc::new(Mutex::new(Telemetry::default())),
                    pacer: Default::default(),
                });
                let queue = {
                    let _guard = rt.enter();
                    batcher::spawn(caller.clone())
                };
                Backend::Remote { caller, queue }
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
        if let Backend::Remote { caller, .. } = &self.backend {
            let r = caller.telemetry.lock().expect("telemetry lock").rates();
            let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
            s.latency_p50_ms = ms(r.latency_p50);
            s.latency_p95_ms = ms(r.latency_p95);
            s.latency_mean_ms = ms(r.latency_mean);
            s.requests_per_minute = r.requests_per_minute.round();
            s.tokens_per_minute = r.tokens_per_minute.round();
            s.concurrency_lowest = caller.concurrency.lowest();
            let p = caller.pacer.stats();
            if let Some(b) = p.last {
                s.server_budget = Some(ServerBudgetStats {
                    limit_requests: b.limit_requests,
                    remaining_requests: b.remaining_requests,
                    limit_tokens: b.limit_tokens,
                    remaining_tokens: b.remaining_tokens,
                    pauses: p.pauses,
                    paused: p.paused,
                });
            }
        }
        s
    }

    /// Calls in flight allowed right now (remote models: the adaptive cap).
    pub fn concurrency_now(&self) -> usize {
        match &self.backend {
            Backend::Remote { caller, .. } => caller.concurrency.current(),
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
            Backend::Remote { queue, .. } => self.embed_remote(queue, inputs, on_call).await,
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
                    // The local model's own error: a problem of these inputs, like Bedrock's 424.
                    let kind = FailureKind::Call(ErrorClass::ModelError);
                    failed.extend(call.iter().map(|&i| (i, kind, msg.clone())));
                }
            }
        }
        failed.sort_by_key(|f| f.0);
        Ok(StepOutput { vectors, failed })
    }

    /// Embeds a step through the model's batcher: pre-flight, queue, join vectors to inputs.
    async fn embed_remote(
        &self,
        queue: &mpsc::UnboundedSender<Item>,
        inputs: &Inputs,
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<StepOutput> {
        let n = inputs.len();
        // Each input's outcome: embedded (its vector is already in place) or why not.
        let mut slots: Vec<InputOutcome> = vec![None; n];
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Pre-flight: nothing that would be refused is sent; the rest joins the model's queue.
        let owned = self.owned_inputs(inputs, &mut slots)?;
        let (owned, checks) = self.preflight(inputs, owned).await?;
        let queued = self.queue_checked(queue, owned, checks, &mut slots, &tx)?;
        drop(tx);
        let rejected = n - queued;
        if rejected > 0 {
            self.stats.lock().expect("stats lock").rejected_inputs += rejected as u64;
        }
        tracing::trace!(model = %self.info.name, queued, "inputs queued");
        let vectors = self
            .join_vectors(&mut rx, queued, &mut slots, on_call)
            .await?;
        let mut failed = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            if let Err((kind, msg)) = s.expect("every input has an outcome") {
                failed.push((i, kind, msg));
            }
        }
        Ok(StepOutput { vectors, failed })
    }

    /// Owned copies of the inputs for the batcher; an image in no known format is refused here.
    fn owned_inputs(
        &self,
        inputs: &Inputs,
        slots: &mut [InputOutcome],
    ) -> Result<Vec<Option<Owned>>> {
        let n = inputs.len();
        let not_an_image = || {
            Some(Err((
                FailureKind::UnsupportedImageFormat,
                "the bytes are not a PNG, JPEG, GIF or WebP image".to_string(),
            )))
        };
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
        Ok(owned)
    }

    /// The wire pre-flight of each input (a refusal, or its text cut); images decode on rayon.
    async fn preflight(
        &self,
        inputs: &Inputs,
        owned: Vec<Option<Owned>>,
    ) -> Result<(Vec<Option<Owned>>, Vec<Check>)> {
        let spec = self.info.spec;
        let params = &self.info.params;
        if matches!(inputs, Inputs::Text(_)) {
            let checks: Vec<_> = owned
                .iter()
                .map(|o| {
                    o.as_ref().map(|o| {
                        embedpipe_wire::preflight(spec, params, &o.as_input(), check_image)
                    })
                })
                .collect();
            Ok((owned, checks))
        } else {
            let params = params.clone();
            crate::util::cpu(move || {
                use rayon::prelude::*;
                let checks: Vec<_> = owned
                    .par_iter()
                    .map(|o| {
                        o.as_ref().map(|o| {
                            embedpipe_wire::preflight(spec, &params, &o.as_input(), check_image)
                        })
                    })
                    .collect();
                (owned, checks)
            })
            .await
        }
    }

    /// Queues the inputs that passed pre-flight, noting why the others did not; returns how many.
    fn queue_checked(
        &self,
        queue: &mpsc::UnboundedSender<Item>,
        owned: Vec<Option<Owned>>,
        checks: Vec<Check>,
        slots: &mut [InputOutcome],
        tx: &mpsc::UnboundedSender<Outcome>,
    ) -> Result<usize> {
        // An input larger than a minute's token quota could never be sent within it.
        let max_tokens = self.max_call_tokens();
        let mut queued = 0usize;
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
                // The one place wire rejection codes become kinds.
                Err((code, msg)) => {
                    slots[i] = Some(Err((FailureKind::from_wire(code), msg)));
                    continue;
                }
            };
            let tokens = o
                .as_input()
                .text()
                .map_or(0, embedpipe_wire::estimate_tokens);
            if let Some(limit) = self.info.max_input_tokens {
                if tokens > limit as u64 {
                    slots[i] = Some(Err((
                        FailureKind::InputTooLong,
                        format!("the text is ~{tokens} tokens, over max_input_tokens = {limit} of model `{}`; chunk the text (`[chunk]`) or raise the limit if the server reads more", self.info.name),
                    )));
                    continue;
                }
            }
            if tokens > max_tokens {
                slots[i] = Some(Err((
                    FailureKind::InputTooLong,
                    format!("the text is ~{tokens} tokens, more than one call may carry ({max_tokens} tokens: what tokens_per_minute lets through in a minute, or max_request_tokens), so it could never be sent; raise the limit or cut the text (`truncate`, `[chunk]`)"),
                )));
                continue;
            }
            queue
                .send(Item::new(&self.info, o, tx.clone(), i))
                .map_err(|_| self.queue_stopped())?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Puts each vector in its place as its call finishes; a fatal outcome stops the step.
    async fn join_vectors(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Outcome>,
        queued: usize,
        slots: &mut [InputOutcome],
        on_call: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<f32>> {
        let dim = self.info.dimension;
        let mut vectors = vec![0f32; slots.len() * dim];
        for _ in 0..queued {
            match rx.recv().await.ok_or_else(|| self.queue_stopped())? {
                Outcome::Done(i, Ok(v)) => {
                    vectors[i * dim..(i + 1) * dim].copy_from_slice(&v);
                    slots[i] = Some(Ok(()));
                }
                Outcome::Done(i, Err(why)) => slots[i] = Some(Err(why)),
                Outcome::Fatal(msg) => bail!(msg),
            }
            on_call(1);
        }
        Ok(vectors)
    }

    /// The largest call, in tokens, the model's rate limits let through: no input may be larger.
    fn max_call_tokens(&self) -> u64 {
        match &self.backend {
            Backend::Remote { caller, .. } => caller.max_call_tokens(),
            _ => u64::MAX,
        }
    }

    /// The error of a step whose model's call queue has gone away.
    fn queue_stopped(&self) -> anyhow::Error {
        anyhow!("model `{}`: its call queue has stopped", self.info.name)
    }
}

/// All models of a pipeline that some step uses, loaded once, indexed like `[[model]]`.
pub struct Models {
    handles: Vec<Option<ModelHandle>>,
}

impl Models {
    /// Loads the models that steps use (`used(index)`; unused `[[model]]` tables are not
    /// loaded), indexed like `models`.
    pub fn load(
        models: &[ModelSettings],
        quotas: &[QuotaSettings],
        used: impl Fn(usize) -> bool,
    ) -> Result<Self> {
        // One set of limiters per `[[quota]]` group, shared by its models.
        let groups: BTreeMap<&str, Arc<RateLimits>> = quotas
            .iter()
            .map(|q| {
                (
                    q.name.as_str(),
                    Arc::new(RateLimits::new(
                        q.rates.requests_per_minute,
                        q.rates.tokens_per_minute,
                    )),
                )
            })
            .collect();
        let handles = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let group = m.quota.as_deref().and_then(|q| groups.get(q).cloned());
                used(i)
                    .then(|| ModelHandle::load(m.clone(), group))
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
