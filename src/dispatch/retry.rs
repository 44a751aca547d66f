//! Retry policy: exponential backoff with full jitter.

use crate::providers::bedrock::ErrorClass;
use std::time::Duration;

/// How often and how patiently a failed call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry (doubles each time, capped by `max_backoff`).
    pub base: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
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
}
