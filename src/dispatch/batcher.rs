//! The per-model batcher and the call machinery of remote models (Bedrock, OpenAI-compatible).
//!
//! Every step that uses a model (in every source batch in flight) hands its inputs to the model's
//! queue. One batcher task per model takes a free slot under the adaptive concurrency cap, fills a
//! call up to the family's inputs per call and body limit (lingering briefly when the queue runs
//! dry, so tails do not wait forever and full calls are not sent half empty), and spawns the call.
//! A call waits for the rate limits, is sent, retried with backoff, or split in halves when the
//! service rejects it as invalid; each input's outcome goes back to the step that asked for it.

use super::concurrency::{AdaptiveLimit, Permit};
use super::limits::{Grant, RateLimits};
use super::pacer::Pacer;
use super::telemetry::Telemetry;
use super::ModelStats;
use crate::clients::{CallError, Remote};
use crate::prepare::image_check::pixel_count;
use crate::resolve::ModelSettings;
use crate::util::{Attempts, ErrorClass, FailureKind, RetryPolicy};
use embedpipe_wire::{Image, ImageFormat, Input, ParseError, Parsed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Owned inputs of one call, movable to a worker thread.
#[derive(Clone)]
pub(crate) enum Owned {
    Text(String),
    Image(Arc<[u8]>, ImageFormat),
    TextImage(String, Arc<[u8]>, ImageFormat),
}

impl Owned {
    pub(crate) fn as_input(&self) -> Input<'_> {
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

    /// Approximate bytes this input adds to a request body (images travel as base64).
    fn body_bytes(&self) -> usize {
        match self {
            Owned::Text(t) => t.len() + 16,
            Owned::Image(b, _) => b.len().div_ceil(3) * 4 + 64,
            Owned::TextImage(t, b, _) => t.len() + b.len().div_ceil(3) * 4 + 96,
        }
    }
}

/// The outcome of one input: its vector, or (why, reason).
pub(crate) type Slot = std::result::Result<Vec<f32>, (FailureKind, String)>;

/// What the batcher sends back for one input.
pub(crate) enum Outcome {
    Done(usize, Slot),
    /// The model cannot be called at all (credentials, access, id): the run stops.
    Fatal(String),
}

/// One input waiting in a model's queue.
pub(crate) struct Item {
    input: Owned,
    /// Estimated input tokens.
    tokens: u64,
    /// Must travel alone (an image of a model that takes one image per call: Cohere v3).
    solo: bool,
    reply: mpsc::UnboundedSender<Outcome>,
    pos: usize,
}

impl Item {
    pub(crate) fn new(
        info: &ModelSettings,
        input: Owned,
        reply: mpsc::UnboundedSender<Outcome>,
        pos: usize,
    ) -> Self {
        let solo = info.spec.limits.images_per_call == Some(1) && matches!(input, Owned::Image(..));
        let tokens = input
            .as_input()
            .text()
            .map_or(0, embedpipe_wire::estimate_tokens);
        Self {
            input,
            tokens,
            solo,
            reply,
            pos,
        }
    }
}

/// What calls need, shared by the batcher and its call tasks.
pub(crate) struct Caller {
    pub info: ModelSettings,
    pub client: Remote,
    pub retry: RetryPolicy,
    /// The model's own limits, then its quota group's.
    pub limits: Vec<Arc<RateLimits>>,
    pub concurrency: Arc<AdaptiveLimit>,
    pub linger: Duration,
    pub stats: Arc<Mutex<ModelStats>>,
    pub telemetry: Arc<Mutex<Telemetry>>,
    /// Slows the sender by the server's own budget reports (OpenAI-compatible servers).
    pub pacer: Pacer,
}

/// Starts the batcher of one model; inputs sent to the returned queue get their outcome back
/// through their own reply channel. The task ends when every sender is dropped.
pub(crate) fn spawn(caller: Arc<Caller>) -> mpsc::UnboundedSender<Item> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(batch_loop(caller, rx));
    tx
}

async fn batch_loop(caller: Arc<Caller>, mut rx: mpsc::UnboundedReceiver<Item>) {
    let per_call = caller.info.batch_size.max(1);
    let max_body = caller.info.spec.limits.max_body_bytes;
    // A call never holds more tokens than the tightest per-minute quota lets through at once.
    let max_tokens = caller.max_call_tokens();
    let mut carry: Option<Item> = None;
    loop {
        let first = match carry.take() {
            Some(i) => i,
            None => match rx.recv().await {
                Some(i) => i,
                None => return,
            },
        };
        // Then a slot (never held while idle: retries need slots too). Inputs keep arriving
        // meanwhile, so calls leave fuller.
        let permit = caller.concurrency.acquire().await;
        let mut bytes = first.input.body_bytes();
        let mut tokens = first.tokens;
        let mut call = vec![first];
        if !call[0].solo {
            let linger_until = Instant::now() + caller.linger;
            while call.len() < per_call {
                // (An input already queued is taken at once, even when the linger is over.)
                let next = tokio::time::timeout_at(linger_until, rx.recv())
                    .await
                    .ok()
                    .flatten();
                let Some(item) = next else { break };
                let size = item.input.body_bytes();
                if item.solo || bytes + size > max_body || tokens + item.tokens > max_tokens {
                    carry = Some(item);
                    break;
                }
                bytes += size;
                tokens += item.tokens;
                call.push(item);
            }
        }
        tracing::trace!(model = %caller.info.name, inputs = call.len(), "call formed");
        tokio::spawn(run_call(caller.clone(), call, permit));
    }
}

/// Runs one call (splitting and retrying as needed) and answers each of its inputs.
async fn run_call(caller: Arc<Caller>, items: Vec<Item>, permit: Permit) {
    let call: Vec<(usize, Owned, u64)> = items
        .iter()
        .enumerate()
        .map(|(k, it)| (k, it.input.clone(), it.tokens))
        .collect();
    let outcome = caller.call_splitting(call, permit).await;
    tracing::trace!(model = %caller.info.name, inputs = items.len(), ok = outcome.is_ok(), "call done");
    match outcome {
        Ok(results) => {
            for (k, slot) in results {
                let it = &items[k];
                let _ = it.reply.send(Outcome::Done(it.pos, slot));
            }
        }
        Err(msg) => {
            for it in &items {
                let _ = it.reply.send(Outcome::Fatal(msg.clone()));
            }
        }
    }
}

/// Errors that no row can get past: the run stops instead of dead-lettering everything.
fn fatal(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::AccessDenied
            | ErrorClass::Credentials
            | ErrorClass::NotFound
            | ErrorClass::Mismatch
    )
}

type CallInputs = Vec<(usize, Owned, u64)>;

/// Request bodies and responses up to this size are built and parsed on the calling task
/// (tens of microseconds); larger ones go to rayon.
const INLINE_BYTES: usize = 64 * 1024;

impl Caller {
    /// Runs one call; when the service rejects a multi-input call as invalid, splits it in halves
    /// until the bad inputs are isolated, so the others still get their vectors. An error means
    /// the model cannot be called at all.
    async fn call_splitting(
        &self,
        call: CallInputs,
        permit: Permit,
    ) -> Result<Vec<(usize, Slot)>, String> {
        let mut out = Vec::with_capacity(call.len());
        let mut work = vec![call];
        let mut permit = Some(permit);
        while let Some(call) = work.pop() {
            match self.call_with_retries(&call, permit.take()).await {
                Ok(vectors) => out.extend(
                    call.iter()
                        .map(|(i, _, _)| *i)
                        .zip(vectors.into_iter().map(Ok)),
                ),
                Err(e) if e.class == ErrorClass::Validation && call.len() > 1 => {
                    let mut a = call;
                    let b = a.split_off(a.len() / 2);
                    work.push(b);
                    work.push(a);
                }
                Err(e) if fatal(e.class) => {
                    let what = if e.class == ErrorClass::Mismatch {
                        "does not fit the pipeline's settings"
                    } else {
                        "cannot be called"
                    };
                    return Err(format!(
                        "model `{}` ({}) {what}: {}{}",
                        self.info.name,
                        self.info.invoke_id,
                        e.message,
                        self.client.fatal_help(e.class)
                    ));
                }
                Err(e) => {
                    let kind = FailureKind::Call(e.class);
                    out.extend(
                        call.iter()
                            .map(|(i, _, _)| (*i, Err((kind, e.message.clone())))),
                    );
                }
            }
        }
        Ok(out)
    }

    /// One call with retries for throttling, server errors, timeouts and model-not-ready. The
    /// first attempt may come with a slot already taken.
    async fn call_with_retries(
        &self,
        call: &[(usize, Owned, u64)],
        mut permit: Option<Permit>,
    ) -> Result<Vec<Vec<f32>>, CallError> {
        let (body, inputs_owned) = self.build_body(call).await?;
        let est_tokens: u64 = call.iter().map(|(_, _, t)| t).sum();
        let first_attempt = Instant::now();
        let mut attempts = Attempts::default();
        loop {
            let slot = match permit.take() {
                Some(p) => p,
                None => self.concurrency.acquire().await,
            };
            let (result, grants, sent) = self.send(slot, &body, est_tokens).await;
            let result = match result {
                Ok(resp) => self.parse_answer(resp, call.len()).await,
                Err(e) => Err(e),
            };
            let elapsed = sent.elapsed();
            match result {
                Ok(parsed) => {
                    return Ok(self.answered(parsed, &inputs_owned, &grants, elapsed, est_tokens))
                }
                Err(e) => {
                    let wait = self.retry_or_give_up(e, &mut attempts, first_attempt, elapsed)?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The call's request body, built once for all attempts (on rayon when large), and its inputs.
    async fn build_body(
        &self,
        call: &[(usize, Owned, u64)],
    ) -> Result<(Vec<u8>, Vec<Owned>), CallError> {
        let spec = self.info.spec;
        let params = self.info.params.clone();
        let owned: Vec<Owned> = call.iter().map(|(_, o, _)| o.clone()).collect();
        let build = move || {
            let inputs: Vec<Input> = owned.iter().map(Owned::as_input).collect();
            let body = embedpipe_wire::build_request(spec, &params, &inputs)
                .map(|v| serde_json::to_vec(&v).expect("JSON values serialise"));
            (body, owned)
        };
        let body_bytes: usize = call.iter().map(|(_, o, _)| o.body_bytes()).sum();
        // Building a large body (base64 of images) is CPU work for rayon; a few texts are
        // cheaper to build here than to hand over.
        let (body, inputs_owned) = if body_bytes <= INLINE_BYTES {
            build()
        } else {
            crate::util::cpu(build)
                .await
                .map_err(|e| CallError::new(ErrorClass::Other, e.to_string()))?
        };
        let body = body.map_err(|e| CallError::new(ErrorClass::Validation, e.0))?;
        Ok((body, inputs_owned))
    }

    /// One attempt: waits for the rate limits (and the server's own budget), sends, frees the
    /// slot on the answer, records it.
    async fn send(
        &self,
        mut slot: Permit,
        body: &[u8],
        est_tokens: u64,
    ) -> (Result<Vec<u8>, CallError>, Vec<Grant>, Instant) {
        // Every attempt counts against the quota, retries too.
        let mut grants = Vec::with_capacity(self.limits.len());
        for l in &self.limits {
            grants.push(l.acquire(est_tokens).await);
        }
        let ticket = self.pacer.ready(est_tokens).await;
        slot.sent_now();
        let sent = Instant::now();
        // The slot is freed as soon as the service answers, while the body is still read.
        let slot = Arc::new(Mutex::new(Some(slot)));
        let on_answer = {
            let slot = slot.clone();
            move || {
                if let Some(p) = slot.lock().expect("slot lock").as_mut() {
                    p.answered();
                }
            }
        };
        let result = self
            .client
            .invoke(&self.info.invoke_id, body.to_vec(), on_answer)
            .await;
        let slot = slot.lock().expect("slot lock").take().expect("the slot");
        let budget = match &result {
            Ok(r) => r.budget,
            Err(e) => e.budget.as_deref().copied(),
        };
        self.pacer.done(ticket, budget);
        let result = result.map(|r| r.body);
        // The call is off the wire: free its slot before parsing (local CPU work), and tell
        // the adaptive cap how it went.
        match &result {
            Err(e) if e.class == ErrorClass::Throttled => slot.throttled(),
            Err(_) => drop(slot),
            Ok(_) => slot.success(),
        }
        let answered = result.is_ok()
            || result
                .as_ref()
                .is_err_and(|e| !matches!(e.class, ErrorClass::Timeout | ErrorClass::Network));
        self.telemetry
            .lock()
            .expect("telemetry lock")
            .attempt(sent.into_std(), answered);
        (result, grants, sent)
    }

    /// Parses an answer (on rayon when large); an unusable response is a server error, retried.
    async fn parse_answer(&self, resp: Vec<u8>, n: usize) -> Result<Parsed, CallError> {
        let spec = self.info.spec;
        // Parsing a large response (up to 96 × 1,536 floats) is CPU work for rayon.
        let params = self.info.params.clone();
        let parsed = if resp.len() <= INLINE_BYTES {
            embedpipe_wire::parse_response(spec, &params, &resp, n)
        } else {
            crate::util::cpu(move || embedpipe_wire::parse_response(spec, &params, &resp, n))
                .await
                .unwrap_or_else(|e| {
                    Err(ParseError::Unusable(embedpipe_wire::WireError(
                        e.to_string(),
                    )))
                })
        };
        parsed.map_err(|e| match e {
            ParseError::Unusable(e) => {
                CallError::new(ErrorClass::ServerError, format!("unusable response: {e}"))
            }
            ParseError::Mismatch(m) => CallError::new(
                ErrorClass::Mismatch,
                format!("{m}; set `dimensions` to the size the server gives"),
            ),
        })
    }

    /// Books an answered call (limits, usage, cost, time); its vectors, normalised if asked.
    fn answered(
        &self,
        mut parsed: Parsed,
        inputs_owned: &[Owned],
        grants: &[Grant],
        elapsed: Duration,
        est_tokens: u64,
    ) -> Vec<Vec<f32>> {
        let spec = self.info.spec;
        let inputs: Vec<Input> = inputs_owned.iter().map(Owned::as_input).collect();
        let u = embedpipe_wire::usage(spec, &inputs, &parsed, &pixel_count);
        for (l, grant) in self.limits.iter().zip(grants) {
            l.correct(*grant, u.input_tokens);
        }
        self.telemetry
            .lock()
            .expect("telemetry lock")
            .tokens(u.input_tokens);
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.busy += elapsed;
            stats.calls += 1;
            // (`inputs_owned` holds one copy of each input of the call.)
            stats.inputs += inputs_owned.len() as u64;
            stats.usage.add(&u);
            stats.estimated_tokens += est_tokens;
            stats.cost_usd += u.cost(&self.info.prices);
        }
        // A service that normalises on request has done it already.
        if self.info.normalize && !spec.service_normalizes {
            parsed
                .vectors
                .iter_mut()
                .for_each(|v| embedpipe_wire::l2_normalize(v));
        }
        parsed.vectors
    }

    /// Books a failed attempt and decides: the wait before the next, or the error to give up.
    fn retry_or_give_up(
        &self,
        mut e: CallError,
        attempts: &mut Attempts,
        first_attempt: Instant,
        elapsed: Duration,
    ) -> Result<Duration, CallError> {
        let wait = self
            .retry
            .next(attempts, e.class, first_attempt.elapsed())
            .map(|backoff| match e.retry_after {
                // The server said how long: wait at least that (plus a little jitter, so calls
                // refused together do not return together; a `Retry-After: 0` still backs off).
                Some(ra) => (ra + ra.mul_f64(0.1 * fastrand::f64())).max(backoff),
                None => backoff,
            })
            .filter(|w| first_attempt.elapsed() + *w <= self.retry.deadline);
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.busy += elapsed;
            *stats
                .errors
                .entry(e.class.as_str().to_string())
                .or_default() += 1;
            if e.class == ErrorClass::Throttled {
                stats.throttled += 1;
            }
            if wait.is_some() {
                stats.retries += 1;
            } else {
                stats.failed_calls += 1;
            }
        }
        let Some(wait) = wait else {
            let n = attempts.total();
            if n > 1 {
                e.message = format!("{} (after {n} attempts)", e.message);
            }
            return Err(e);
        };
        tracing::debug!(model = %self.info.name, class = e.class.as_str(), attempt = attempts.total(), "retrying in {wait:?}: {}", e.message);
        Ok(wait)
    }

    /// The most tokens one call may hold: what the tightest per-minute token quota allows,
    /// and the server's `max_request_tokens`.
    pub(crate) fn max_call_tokens(&self) -> u64 {
        self.limits
            .iter()
            .filter_map(|l| l.max_call_tokens())
            .chain(self.info.max_request_tokens)
            .min()
            .unwrap_or(u64::MAX)
    }
}
