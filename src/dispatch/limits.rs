//! Per-model rate limits with `governor`: requests per minute and (estimated) tokens per minute,
//! shared by every step that uses the model. Bursts are kept small so that no trailing minute
//! sees more than the quota plus one call.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// The limiters of one model (either may be absent).
pub struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl RateLimits {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        let per = |n: u32| Duration::from_secs(60).div_f64(n as f64);
        let requests = requests_per_minute.and_then(NonZeroU32::new).map(|n| {
            let q = Quota::with_period(per(n.get()))
                .expect("positive period")
                .allow_burst(NonZeroU32::MIN);
            RateLimiter::direct(q)
        });
        let tokens = tokens_per_minute.and_then(NonZeroU32::new).map(|n| {
            // One second's worth of tokens may go at once (at least one).
            let burst = NonZeroU32::new(n.get() / 60).unwrap_or(NonZeroU32::MIN);
            let q = Quota::with_period(per(n.get()))
                .expect("positive period")
                .allow_burst(burst);
            (RateLimiter::direct(q), burst)
        });
        Self { requests, tokens }
    }

    /// Waits until one request of about `tokens` tokens may be sent.
    pub async fn acquire(&self, tokens: u64) {
        if let Some((t, burst)) = &self.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, burst.get() as u64) as u32)
                .unwrap_or(NonZeroU32::MIN);
            // `n` never exceeds the burst, so capacity is always sufficient.
            let _ = t.until_n_ready(n).await;
        }
        if let Some(r) = &self.requests {
            r.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn requests_are_spaced_after_a_burst_of_one() {
        let l = RateLimits::new(Some(1200), None); // one per 50 ms
        let t = Instant::now();
        for _ in 0..5 {
            l.acquire(1).await;
        }
        // The first goes at once, the next four wait 50 ms each.
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn oversized_token_requests_do_not_fail() {
        let l = RateLimits::new(None, Some(60)); // burst 1 token
        l.acquire(10_000).await;
    }
}
