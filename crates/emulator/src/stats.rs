//! What the emulator counts: per-model and overall counters (`GET /_emulator/stats`), and the
//! trailing windows quotas and the `max_*` counters are measured over.

use crate::async_invoke::AsyncCounters;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
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
        while let Some(&(t, k)) = self.events.front() {
            if now.duration_since(t) >= Duration::from_secs(60) {
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
