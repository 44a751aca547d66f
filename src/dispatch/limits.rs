//! Per-model rate limits with `governor`: requests per minute and tokens per minute, shared by
//! every step that uses the model (and, through a `[[quota]]` group, by several models).
//!
//! GCRA with period T and burst b admits n calls over no less than (n − b)·T, so a window
//! shorter than a minute holds at most 60/T + b − 1 of them. Requests use a burst of a tenth of
//! a second's worth (at least two) b at Q − b + 1 per minute: never more than Q in any minute,
//! and a call that wakes late (timer granularity, a busy machine) does not lose its slot, as it
//! would with a burst of one — at 30,000 a minute a slot is 2 ms, no longer than such delays.
//! Tokens use a burst of one second's worth b, at Q − b + 1 per minute: never more than Q in
//! any minute.
//!
//! Tokens are estimated before a call and corrected from the usage the service reports: a call
//! that used more than estimated leaves a debt that the next call pays before it goes; one that
//! used fewer leaves a credit.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

/// The limiters of one model or quota group (either may be absent).
pub struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    /// Tokens owed (positive) or prepaid (negative) by earlier estimates.
    debt: Mutex<i64>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

impl RateLimits {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        // `n` per minute in bursts of `burst`, at most `n` in any minute (see the module docs).
        let gcra = |n: u32, burst: u32| {
            let (rate, burst) = if n > burst {
                (n - burst + 1, burst)
            } else {
                (n, 1)
            };
            let q = Quota::with_period(Duration::from_secs(60).div_f64(rate as f64))
                .expect("positive period")
                .allow_burst(NonZeroU32::new(burst).expect("positive burst"));
            (RateLimiter::direct(q), burst)
        };
        let requests = requests_per_minute
            .filter(|&n| n > 0)
            .map(|n| gcra(n, (n / 600).max(2)).0);
        let tokens = tokens_per_minute.filter(|&n| n > 0).map(|n| {
            let (limiter, burst) = gcra(n, (n / 60).max(1));
            (limiter, NonZeroU32::new(burst).expect("positive burst"))
        });
        Self {
            requests,
            tokens,
            debt: Mutex::new(0),
            requests_per_minute: requests_per_minute.filter(|&n| n > 0),
            tokens_per_minute: tokens_per_minute.filter(|&n| n > 0),
        }
    }

    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Waits until one request of about `tokens` tokens may be sent.
    pub async fn acquire(&self, tokens: u64) {
        if let Some((t, burst)) = &self.tokens {
            // Pay the estimate plus what earlier calls owe, at most one burst now; the rest
            // stays owed and is paid by the next call.
            let pay = {
                let mut debt = self.debt.lock().expect("debt lock");
                let due = *debt + tokens as i64;
                if due <= 0 {
                    *debt = due;
                    0
                } else {
                    let pay = due.min(burst.get() as i64);
                    *debt = due - pay;
                    pay as u32
                }
            };
            if let Some(n) = NonZeroU32::new(pay) {
                // `n` never exceeds the burst, so capacity is always sufficient.
                let _ = t.until_n_ready(n).await;
            }
        }
        if let Some(r) = &self.requests {
            r.until_ready().await;
        }
    }

    /// A call estimated at `estimated` tokens used `actual`.
    pub fn correct(&self, estimated: u64, actual: u64) {
        if self.tokens.is_some() && estimated != actual {
            *self.debt.lock().expect("debt lock") += actual as i64 - estimated as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn requests_are_spaced_after_a_burst_of_two() {
        let l = RateLimits::new(Some(1200), None); // one per 50 ms
        let t = Instant::now();
        for _ in 0..6 {
            l.acquire(1).await;
        }
        // The first two go at once, the next four wait 50 ms each.
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn large_quotas_absorb_a_tenth_of_a_second_of_lateness() {
        // 60,000 a minute (one per ms): a burst of 100 goes at once, then one per ~1 ms.
        let l = RateLimits::new(Some(60_000), None);
        let t = Instant::now();
        for _ in 0..100 {
            l.acquire(1).await;
        }
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // The 101st waits for the pace: never more than the quota in any minute.
        for _ in 0..50 {
            l.acquire(1).await;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn oversized_token_requests_do_not_fail() {
        let l = RateLimits::new(None, Some(60)); // burst 1 token
        l.acquire(10_000).await;
    }

    #[tokio::test]
    async fn usage_corrections_are_paid_by_later_calls() {
        // 6,000 tokens/min: 100 per second, burst 100.
        let l = RateLimits::new(None, Some(6000));
        let t = Instant::now();
        l.acquire(100).await; // the burst: at once
        assert!(t.elapsed() < Duration::from_millis(50));
        // The call really used 150 tokens: the next call (estimated 50) pays 100, i.e. waits
        // a second's worth of tokens.
        l.correct(100, 150);
        l.acquire(50).await;
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // An overestimate is credited: this call is free.
        l.correct(50, 0);
        let t2 = Instant::now();
        l.acquire(50).await;
        assert!(
            t2.elapsed() < Duration::from_millis(50),
            "{:?}",
            t2.elapsed()
        );
    }
}
