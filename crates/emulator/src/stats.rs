//! What the emulator counts: per-model and overall counters (`GET /_emulator/stats`), and the
//! trailing windows quotas and the `max_*` counters are measured over.

use crate::async_invoke::AsyncCounters;
use crate::batch::BatchCounters;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the emulator received, per model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelCounters {
    pub requests: u64,
    pub ok: u64,
    pub inputs: u64,
    pub tokens: u64,
    /// Answers by error code (`ThrottlingException`, ...), plus `ConnectionReset` and
    /// `MalformedBody`.
    pub errors: BTreeMap<String, u64>,
    /// Most successful requests seen in any trailing 60-second window.
    pub max_requests_per_minute: u64,
    /// Most tokens seen in any trailing 60-second window.
    pub max_tokens_per_minute: u64,
    /// Most successful requests seen in any trailing 1-second window.
    pub max_requests_per_second: u64,
    /// Most requests received (answered or refused) in any trailing 60-second window.
    pub max_received_per_minute: u64,
    /// Requests by the region in their SigV4 credential scope.
    pub regions: BTreeMap<String, u64>,
    /// Answered requests by their `input_type` (families that have one: document or query
    /// embeddings).
    #[serde(default)]
    pub input_types: BTreeMap<String, u64>,
}

/// What the emulator received, in all (`GET /_emulator/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// Most model requests received, over all models, in any trailing 60-second window.
    pub max_received_per_minute: u64,
    /// The same over any trailing 1-second window.
    pub max_received_per_second: u64,
    pub unauthenticated: u64,
    /// Answers held for a simulated latency, and by how much (in all, µs; negative: early) they
    /// missed their due time: the emulator's own timing error.
    pub timed_answers: u64,
    pub timed_error_micros: i64,
    pub models: BTreeMap<String, ModelCounters>,
    /// StartAsyncInvoke / GetAsyncInvoke / ListAsyncInvokes.
    pub async_invoke: AsyncCounters,
    /// CreateModelInvocationJob / Get… / List… / StopModelInvocationJob and the jobs' records.
    #[serde(default)]
    pub batch: BatchCounters,
    /// The OpenAI-compatible endpoint (`POST /v1/embeddings`).
    #[serde(default)]
    pub openai: OpenAiCounters,
}

/// What the OpenAI-compatible endpoint received: enough for tests to check what a client sends
/// (batch sizes, formats, dimensions, headers) and how it retries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiCounters {
    /// `POST /v1/embeddings` requests received (refused ones too).
    pub requests: u64,
    pub ok: u64,
    /// Inputs and tokens of answered requests.
    pub inputs: u64,
    pub tokens: u64,
    /// Refusals by short code: `rate_limit_exceeded`, `server_busy`, `server_error`, `timeout`,
    /// `overloaded`, `malformed`, `reset`, `invalid_request`, `payload_too_large`, `batch_too_large`,
    /// `model_not_found`, `invalid_api_key`.
    pub errors: BTreeMap<String, u64>,
    /// The largest number of inputs in one well-formed request.
    pub max_inputs_per_request: u64,
    /// Well-formed requests by their number of inputs.
    pub inputs_per_request: BTreeMap<u64, u64>,
    /// Well-formed requests by `encoding_format` (`float` when absent).
    pub encoding_formats: BTreeMap<String, u64>,
    /// Well-formed requests by `dimensions` (`none` when absent).
    pub dimensions_sent: BTreeMap<String, u64>,
    /// Every header name seen on `/v1/...` requests (lowercase).
    pub header_names: BTreeSet<String>,
    /// Values of the header named by `openai_echo_header` (the first 100).
    pub echoed_header_values: Vec<String>,
    /// Most requests one model accepted in any trailing quota window (`quota_window_ms`).
    pub max_requests_per_window: u64,
    /// For each resend of a refused body (429, 5xx, 504, dropped connection): the ms since that
    /// refusal, i.e. the client's backoff (the first 10,000).
    pub retry_gaps_ms: Vec<u64>,
    /// Refusals that carried `Retry-After`.
    pub retry_after_sent: u64,
    /// Answered requests by model name.
    pub models: BTreeMap<String, u64>,
    /// The refused bodies a resend is looked up in (not reported).
    #[serde(skip)]
    pub(crate) refused: RefusedBodies,
}

/// Refused request bodies (blake3) and when they were refused, so that a resend of the same
/// body is recognised as a retry and its gap measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusedBodies(HashMap<[u8; 32], Instant>);

impl RefusedBodies {
    /// Most refusals remembered; when full, the oldest is forgotten.
    const MAX: usize = 10_000;

    pub(crate) fn remember(&mut self, body: [u8; 32], at: Instant) {
        if self.0.len() >= Self::MAX && !self.0.contains_key(&body) {
            let oldest = self.0.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.0.remove(&k);
            }
        }
        self.0.insert(body, at);
    }

    /// The refusal of this body, forgotten as it is taken.
    pub(crate) fn take(&mut self, body: &[u8; 32]) -> Option<Instant> {
        self.0.remove(body)
    }
}

/// Arrival times within a trailing window.
pub(crate) struct Arrivals {
    span: Duration,
    times: VecDeque<Instant>,
}

impl Arrivals {
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            span,
            times: VecDeque::new(),
        }
    }

    /// Records an arrival now; returns how many arrived within the trailing window.
    pub(crate) fn arrive(&mut self, now: Instant) -> u64 {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() as u64
    }
}

/// One model's quota window.
#[derive(Default)]
pub(crate) struct Window {
    /// (time, tokens) of accepted requests within the last minute.
    pub(crate) events: VecDeque<(Instant, u64)>,
    pub(crate) tokens: u64,
    /// Accepted requests within the last second.
    pub(crate) second: VecDeque<Instant>,
    /// Every request received within the last minute.
    pub(crate) received: Option<Arrivals>,
}

impl Window {
    pub(crate) fn prune(&mut self, now: Instant) {
        self.prune_within(now, Duration::from_secs(60));
    }

    /// Drops the events older than `span` (the OpenAI side's window is configurable).
    pub(crate) fn prune_within(&mut self, now: Instant, span: Duration) {
        while let Some(&(t, k)) = self.events.front() {
            if now.duration_since(t) >= span {
                self.events.pop_front();
                self.tokens -= k;
            } else {
                break;
            }
        }
    }
}

/// Empty windows of requests to any model: the last minute and the last second.
pub(crate) fn all_arrivals() -> Mutex<(Arrivals, Arrivals)> {
    Mutex::new((
        Arrivals::new(Duration::from_secs(60)),
        Arrivals::new(Duration::from_secs(1)),
    ))
}
