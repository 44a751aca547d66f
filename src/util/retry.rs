//! Ground floor: how failed calls are classified and retried — exponential backoff with full
//! jitter, a cap on attempts and a deadline — shared by dispatch (model calls) and jobs (async
//! invoke), whatever the provider.
//!
//! Throttling is not a failure of the request but a signal to slow down: throttled attempts are
//! retried until the deadline (the adaptive concurrency and the rate limits slow the sender
//! meanwhile) and do not use up `max_attempts`, which counts the other retryable failures
//! (5xx, timeouts, resets, model not ready).

use serde::Serialize;
use std::time::Duration;

/// What went wrong with a call, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// ThrottlingException (429): slow down and retry.
    Throttled,
    /// ModelNotReadyException: retry after a pause.
    ModelNotReady,
    /// InternalServer / ServiceUnavailable / other 5xx, or an unreadable response: retry.
    ServerError,
    /// ModelTimeoutException or a client-side timeout: retry.
    Timeout,
    /// The connection failed or was reset: retry.
    Network,
    /// ValidationException: the input is wrong; never retried.
    Validation,
    /// AccessDeniedException: IAM or model access; stops nothing else, never retried.
    AccessDenied,
    /// Missing or invalid credentials.
    Credentials,
    /// ResourceNotFoundException: wrong model id or region.
    NotFound,
    /// ServiceQuotaExceededException.
    QuotaExceeded,
    /// ModelErrorException (424).
    ModelError,
    /// Well-formed answers that can never fit the pipeline (another dimension, binary vectors
    /// when floats were asked): a setting is wrong; the run stops.
    Mismatch,
    Other,
}

impl ErrorClass {
    /// Failures of the service or of the way to it, not of one input: a run stops on them
    /// instead of dead-lettering (and committing without) every row.
    pub const SERVICE_LEVEL: &[ErrorClass] = &[
        Self::Throttled,
        Self::ModelNotReady,
        Self::ServerError,
        Self::Timeout,
        Self::Network,
        Self::QuotaExceeded,
        Self::Other,
    ];

    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled
                | Self::ModelNotReady
                | Self::ServerError
                | Self::Timeout
                | Self::Network
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::ModelNotReady => "model_not_ready",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::Validation => "validation",
            Self::AccessDenied => "access_denied",
            Self::Credentials => "credentials",
            Self::NotFound => "not_found",
            Self::QuotaExceeded => "quota_exceeded",
            Self::ModelError => "model_error",
            Self::Mismatch => "mismatch",
            Self::Other => "other",
        }
    }
}

/// How often and how patiently a failed call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call that may end in a non-throttling error, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry (doubles each time, capped by `max_backoff`).
    pub base: Duration,
    pub max_backoff: Duration,
    /// No retry starts later than this after the call's first attempt.
    pub deadline: Duration,
}

impl RetryPolicy {
    /// A policy with the backoff every call uses: 100 ms doubling up to 20 s, fully jittered.
    pub fn new(max_attempts: u32, deadline: Duration) -> Self {
        Self {
            max_attempts,
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            deadline,
        }
    }
}

/// Where a call stands after a failed attempt.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempts {
    /// Failed attempts other than throttles.
    pub failures: u32,
    pub throttles: u32,
}

impl Attempts {
    pub fn total(&self) -> u32 {
        self.failures + self.throttles
    }
}

impl RetryPolicy {
    /// Records a failed attempt of class `class` and says how long to wait before the next one,
    /// or `None` when the call should give up (not retryable, attempts or deadline used up).
    pub fn next(
        &self,
        attempts: &mut Attempts,
        class: ErrorClass,
        elapsed: Duration,
    ) -> Option<Duration> {
        if class == ErrorClass::Throttled {
            attempts.throttles += 1;
        } else {
            attempts.failures += 1;
        }
        if !class.retryable() || attempts.failures >= self.max_attempts {
            return None;
        }
        let wait = self.backoff(attempts.total(), class);
        (elapsed + wait < self.deadline).then_some(wait)
    }

    /// Sleep before retry number `attempt` (1-based): uniform in `[0, min(cap, base·2^attempt))`
    /// ("full jitter"); a model that is not ready waits at least a second.
    pub fn backoff(&self, attempt: u32, class: ErrorClass) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        let jittered = exp.mul_f64(fastrand::f64());
        if class == ErrorClass::ModelNotReady {
            jittered.max(Duration::from_secs(1))
        } else {
            jittered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::new(8, Duration::from_secs(600));
        for attempt in 1..40 {
            let d = p.backoff(attempt, ErrorClass::Throttled);
            assert!(d <= p.max_backoff, "{attempt}: {d:?}");
        }
        let ds: std::collections::HashSet<_> = (0..20)
            .map(|_| p.backoff(5, ErrorClass::Throttled))
            .collect();
        assert!(ds.len() > 1, "jitter varies the delay");
        assert!(p.backoff(1, ErrorClass::ModelNotReady) >= Duration::from_secs(1));
    }

    #[test]
    fn attempts_count_failures_and_the_deadline_bounds_throttles() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            deadline: Duration::from_secs(1),
        };
        let mut a = Attempts::default();
        // Throttles do not use up attempts...
        for _ in 0..50 {
            assert!(p
                .next(&mut a, ErrorClass::Throttled, Duration::ZERO)
                .is_some());
        }
        // ...but the deadline ends them.
        assert!(p
            .next(&mut a, ErrorClass::Throttled, Duration::from_secs(2))
            .is_none());
        let mut a = Attempts::default();
        assert!(p
            .next(&mut a, ErrorClass::ServerError, Duration::ZERO)
            .is_some());
        assert!(p
            .next(&mut a, ErrorClass::Timeout, Duration::ZERO)
            .is_some());
        assert!(p
            .next(&mut a, ErrorClass::ServerError, Duration::ZERO)
            .is_none());
        let mut a = Attempts::default();
        assert!(p
            .next(&mut a, ErrorClass::Validation, Duration::ZERO)
            .is_none());
    }
}
