//! Retry policy: exponential backoff with full jitter, a cap on attempts and a deadline.
//!
//! Throttling is not a failure of the request but a signal to slow down: throttled attempts are
//! retried until the deadline (the adaptive concurrency and the rate limits slow the sender
//! meanwhile) and do not use up `max_attempts`, which counts the other retryable failures
//! (5xx, timeouts, resets, model not ready).

use crate::providers::bedrock::ErrorClass;
use std::time::Duration;

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

/// Default attempts per call.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Default time a call may spend retrying.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
            deadline: DEFAULT_DEADLINE,
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
        let p = RetryPolicy::default();
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
