//! Per-model call telemetry: latency percentiles (HdrHistogram, constant memory) and the
//! request and token rates actually achieved.

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

pub struct Telemetry {
    /// Latency of every attempt that got an answer, in microseconds.
    latency: Histogram<u64>,
    first_sent: Option<Instant>,
    last_done: Option<Instant>,
    /// Requests sent (every attempt: they all count against the quota).
    requests: u64,
    /// Input tokens billed (or estimated).
    tokens: u64,
}

/// What [`Telemetry`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub latency_p50: Duration,
    pub latency_p95: Duration,
    pub latency_mean: Duration,
    pub latency_max: Duration,
    pub requests_per_minute: f64,
    pub tokens_per_minute: f64,
    /// From the first request sent to the last answer.
    pub active: Duration,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            // 1 µs .. 1 h at 2 significant digits: ~20 KB, whatever the number of calls.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            first_sent: None,
            last_done: None,
            requests: 0,
            tokens: 0,
        }
    }
}

impl Telemetry {
    /// An attempt went out at `sent` and ended now (answered or not).
    pub fn attempt(&mut self, sent: Instant, answered: bool) {
        let now = Instant::now();
        self.requests += 1;
        self.first_sent = Some(self.first_sent.map_or(sent, |f| f.min(sent)));
        self.last_done = Some(self.last_done.map_or(now, |l| l.max(now)));
        if answered {
            let us = now.duration_since(sent).as_micros() as u64;
            self.latency.saturating_record(us.max(1));
        }
    }

    pub fn tokens(&mut self, n: u64) {
        self.tokens += n;
    }

    pub fn rates(&self) -> Rates {
        let active = match (self.first_sent, self.last_done) {
            (Some(f), Some(l)) => l.saturating_duration_since(f),
            _ => Duration::ZERO,
        };
        let minutes = active.as_secs_f64() / 60.0;
        let per_minute = |n: u64| {
            if minutes > 0.0 {
                n as f64 / minutes
            } else {
                0.0
            }
        };
        let q = |p: f64| {
            if self.latency.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.latency.value_at_quantile(p))
            }
        };
        Rates {
            latency_p50: q(0.5),
            latency_p95: q(0.95),
            latency_mean: Duration::from_secs_f64(self.latency.mean() / 1e6),
            latency_max: Duration::from_micros(self.latency.max()),
            requests_per_minute: per_minute(self.requests),
            tokens_per_minute: per_minute(self.tokens),
            active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut t = Telemetry::default();
        let start = Instant::now() - Duration::from_secs(60);
        // 100 attempts sent over the last minute with latencies 1..=100 ms.
        for i in 1..=100u64 {
            t.latency.record(i * 1000).unwrap();
            t.requests += 1;
        }
        t.first_sent = Some(start);
        t.last_done = Some(start + Duration::from_secs(60));
        t.tokens(3000);
        let r = t.rates();
        assert!((49..=51).contains(&r.latency_p50.as_millis()), "{r:?}");
        assert!((94..=96).contains(&r.latency_p95.as_millis()), "{r:?}");
        assert!((50..=51).contains(&r.latency_mean.as_millis()), "{r:?}");
        assert!((r.requests_per_minute - 100.0).abs() < 0.01, "{r:?}");
        assert!((r.tokens_per_minute - 3000.0).abs() < 0.1, "{r:?}");
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Telemetry::default().rates(), Rates::default());
    }
}
