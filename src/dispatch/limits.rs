//! Per-model rate limits: requests per minute and tokens per minute, shared by every step that
//! uses the model (and, through a `[[quota]]` group, by several models). No trailing minute
//! holds more than the quota.
//!
//! Requests use `governor`'s GCRA. GCRA with period T and burst b admits n calls over no less
//! than (n − b)·T, so a window shorter than a minute holds at most 60/T + b − 1 of them.
//! Requests use a burst of a tenth of a second's worth (at least two) b at Q − b + 1 per window
//! of a minute and half a second (T rounded up to the nanosecond; the margin covers calls that
//! arrive later than those sent a minute after them): never more than Q in any minute, and a call that wakes
//! late (timer granularity, a busy machine) does not lose its slot, as it would with a burst of
//! one — at 30,000 a minute a slot is 2 ms, no longer than such delays.
//!
//! Tokens cannot use a GCRA: a call sends all its tokens at once, and may be larger than any
//! burst that still leaves room for the rate (a burst B at r per minute lets B + r through in a
//! minute, so B + r ≤ Q; a call of more than B tokens could never go, and paying for it in
//! parts lets the parts paid before it add to the minute after it). So the limiter keeps the
//! calls of the trailing minute, and a call of n tokens goes only when they and n together are
//! within the quota. Any call up to the whole quota can go (`max_call_tokens`); a larger one
//! goes alone, into an empty minute. On top of that, calls are paced at the quota's rate (a call
//! may go up to a second ahead of the pace, and then pays for its tokens), so that the quota is
//! spread over the minute rather than sent in its first second.
//!
//! Why no minute holds more than Q tokens: take any minute, and the last call counted in it.
//! When that call was checked, every other call of that minute had already been counted, at a
//! time less than a minute before the check, so the check saw them all, and let the call go
//! only if they and it were at most Q.
//!
//! Tokens are estimated before a call and corrected from the usage the service reports
//! (`correct`, with the `Grant` that `acquire` returned): the call's entry in the trailing
//! minute takes the reported count, and the pace is charged for the difference. A call that
//! used fewer tokens than estimated lets the next ones go sooner (counts only go down, so the
//! argument above holds); one that used more delays them (its minute may hold more than Q: the
//! estimate was all there was to go by).
//!
//! A call waits for both limits and takes from both at the same instant; one refused by either
//! takes nothing. Callers wait first come, first served, so small calls do not overtake a large
//! one that waits for room.

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A minute, in nanoseconds.
const MINUTE_NS: u64 = 60_000_000_000;
/// The window the limiter keeps: a minute and a half second. The service counts arrivals, not
/// sends, and a run's first calls arrive late (connection, credentials): with an exact minute,
/// the call a minute after them could arrive inside the same service-side minute.
const WINDOW_NS: u64 = MINUTE_NS + 500_000_000;

/// How far ahead of the tokens' pace a call may go, in nanoseconds (a second).
const TOKEN_PACE_TOLERANCE_NS: u64 = MINUTE_NS / 60;

/// The limiters' time, in nanoseconds since the limiter was made: the monotonic clock, or in
/// tests a fake clock advanced by hand.
#[derive(Clone, Debug)]
struct LimitClock {
    start: Instant,
    fake: Option<FakeRelativeClock>,
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.fake {
            Some(f) => f.now(),
            None => Nanos::from(self.start.elapsed()),
        }
    }
}

type RequestLimiter = RateLimiter<NotKeyed, InMemoryState, LimitClock, NoOpMiddleware<Nanos>>;

/// What `acquire` let through: give it back to `correct` with the usage the service reports.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    /// The call's entry in the trailing minute of tokens.
    id: u64,
    /// The tokens the call was estimated at.
    estimated: u64,
}

/// One call in the trailing minute of tokens.
struct Sent {
    /// When it went (nanoseconds on the limiter's clock).
    at: u64,
    id: u64,
    /// Its tokens: estimated, then as reported.
    tokens: u64,
}

/// The tokens-per-minute limit.
struct Tokens {
    /// Tokens allowed in any trailing minute.
    quota: u64,
    /// The pace: nanoseconds per token (a minute / quota, rounded up).
    per_token: u64,
    /// The pace's theoretical arrival time: when the tokens sent so far are paid for. A call
    /// may go when this is at most a second ahead of now.
    tat: u64,
    /// Calls sent in the trailing minute, oldest first, and their tokens in total.
    sent: VecDeque<Sent>,
    in_window: u64,
    next_id: u64,
}

impl Tokens {
    fn new(quota: u32) -> Self {
        let quota = u64::from(quota);
        Self {
            quota,
            per_token: MINUTE_NS.div_ceil(quota),
            tat: 0,
            sent: VecDeque::new(),
            in_window: 0,
            next_id: 0,
        }
    }

    /// What `n` tokens cost the pace (at most a minute: a call larger than the quota blocks
    /// the next minute, as it does the trailing window).
    fn cost(&self, n: u64) -> u64 {
        n.min(self.quota) * self.per_token
    }

    /// How long (nanoseconds) a call of `n` tokens must wait from `now`; zero: it may go.
    fn wait(&mut self, now: u64, n: u64) -> u64 {
        // Calls a minute old or more are out of every trailing minute from now on.
        while let Some(s) = self.sent.front() {
            if s.at.saturating_add(WINDOW_NS) > now {
                break;
            }
            self.in_window -= s.tokens;
            self.sent.pop_front();
        }
        let pace = self
            .tat
            .saturating_sub(TOKEN_PACE_TOLERANCE_NS)
            .saturating_sub(now);
        // Room in the trailing minute; a call larger than the quota waits for an empty one.
        let need = n.min(self.quota);
        let mut room = 0;
        if self.in_window.saturating_add(need) > self.quota {
            let mut left = self.in_window;
            for s in &self.sent {
                left -= s.tokens;
                if left + need <= self.quota {
                    room = (s.at + WINDOW_NS).saturating_sub(now);
                    break;
                }
            }
        }
        pace.max(room)
    }

    /// Records a call of `n` tokens sent at `now` (after `wait` said zero); returns its id.
    fn record(&mut self, now: u64, n: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tat = self.tat.max(now) + self.cost(n);
        self.sent.push_back(Sent {
            at: now,
            id,
            tokens: n,
        });
        self.in_window += n;
        id
    }

    fn correct(&mut self, grant: Grant, actual: u64) {
        // The pace is paid for what was really sent: a debt delays later calls, a refund lets
        // them go sooner (never beyond the tolerance: a pace in the past is as good as now).
        self.tat = (self.tat + self.cost(actual)).saturating_sub(self.cost(grant.estimated));
        // The call's entry, if still in the trailing minute, takes the real count.
        if let Ok(i) = self.sent.binary_search_by_key(&grant.id, |s| s.id) {
            let s = &mut self.sent[i];
            self.in_window = self.in_window - s.tokens + actual;
            s.tokens = actual;
        }
    }
}

/// The limiters of one model or quota group (either may be absent).
pub struct RateLimits {
    clock: LimitClock,
    requests: Option<RequestLimiter>,
    tokens: Option<Mutex<Tokens>>,
    /// Callers wait for the limits one at a time, in order of arrival.
    turn: tokio::sync::Mutex<()>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

impl RateLimits {
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        Self::with_clock(
            requests_per_minute,
            tokens_per_minute,
            LimitClock {
                start: Instant::now(),
                fake: None,
            },
        )
    }

    fn with_clock(
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u32>,
        clock: LimitClock,
    ) -> Self {
        let requests_per_minute = requests_per_minute.filter(|&n| n > 0);
        let tokens_per_minute = tokens_per_minute.filter(|&n| n > 0);
        // `n` per minute in bursts of a tenth of a second's worth, at most `n` in any minute
        // (see the module docs).
        let requests = requests_per_minute.map(|n| {
            let burst = (n / 600).max(2);
            let (rate, burst) = if n > burst {
                (n - burst + 1, burst)
            } else {
                (n, 1)
            };
            // Rounded up, so that a window holds at most `rate` periods.
            let period = Duration::from_nanos(WINDOW_NS.div_ceil(u64::from(rate)));
            let q = Quota::with_period(period)
                .expect("positive period")
                .allow_burst(NonZeroU32::new(burst).expect("positive burst"));
            RateLimiter::direct_with_clock(q, clock.clone())
        });
        let tokens = tokens_per_minute.map(|n| Mutex::new(Tokens::new(n)));
        Self {
            clock,
            requests,
            tokens,
            turn: tokio::sync::Mutex::new(()),
            requests_per_minute,
            tokens_per_minute,
        }
    }

    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// The largest call (in tokens) that can go without breaking the token quota: the whole
    /// quota. A larger call still goes, alone into an empty minute, so that minute holds more
    /// than the quota. `None` without a token limit.
    pub fn max_call_tokens(&self) -> Option<u64> {
        self.tokens_per_minute.map(u64::from)
    }

    /// Waits until one request of about `tokens` tokens may be sent, and counts it. Give the
    /// returned grant to `correct` once the service has reported the call's usage.
    pub async fn acquire(&self, tokens: u64) -> Grant {
        if self.is_unlimited() {
            return Grant {
                id: 0,
                estimated: tokens,
            };
        }
        let _turn = self.turn.lock().await;
        if let Some(q) = self.tokens_per_minute.filter(|&q| tokens > u64::from(q)) {
            tracing::warn!(
                tokens,
                tokens_per_minute = q,
                "a call larger than the token quota waits for an empty minute and goes alone"
            );
        }
        loop {
            match self.try_acquire(tokens) {
                Ok(grant) => return grant,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Takes one request of `tokens` tokens from both limits if both allow it now; otherwise
    /// takes nothing and says how long to wait before trying again.
    fn try_acquire(&self, tokens: u64) -> Result<Grant, Duration> {
        // Held throughout, so that the check and the record are one step, also for `correct`.
        let mut window = self
            .tokens
            .as_ref()
            .map(|t| t.lock().expect("token limit lock"));
        if let Some(t) = window.as_deref_mut() {
            let wait = t.wait(self.clock.now().as_u64(), tokens);
            if wait > 0 {
                return Err(Duration::from_nanos(wait));
            }
        }
        if let Some(r) = &self.requests {
            if let Err(not_until) = r.check() {
                return Err(not_until.wait_time_from(self.clock.now()));
            }
        }
        // The time of the record is not earlier than that of the check: the trailing minute
        // it counts in holds no call the check did not count.
        let id = window
            .as_deref_mut()
            .map_or(0, |t| t.record(self.clock.now().as_u64(), tokens));
        Ok(Grant {
            id,
            estimated: tokens,
        })
    }

    /// The call `grant` let through used `actual` tokens (once per grant).
    pub fn correct(&self, grant: Grant, actual: u64) {
        if grant.estimated == actual {
            return;
        }
        if let Some(t) = &self.tokens {
            t.lock().expect("token limit lock").correct(grant, actual);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    const SECOND: Duration = Duration::from_secs(1);
    const HALF_SECOND: Duration = Duration::from_millis(500);
    const MINUTE: Duration = Duration::from_secs(60);

    /// Limits on a fake clock, which stands still until the test advances it.
    fn fake(rpm: Option<u32>, tpm: Option<u32>) -> (RateLimits, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = RateLimits::with_clock(
            rpm,
            tpm,
            LimitClock {
                start: Instant::now(),
                fake: Some(clock.clone()),
            },
        );
        (l, clock)
    }

    fn now(clock: &FakeRelativeClock) -> Duration {
        clock.now().into()
    }

    /// A call that went: when, and its tokens (as reported).
    type Call = (Duration, u64);

    /// Sends calls one after the other, each as soon as the limits let it go, on the fake
    /// clock, until `until`. A caller told to wait wakes `late()` after the time it was given;
    /// `usage` turns a call's estimate into the usage the service reports for it.
    fn drive(
        l: &RateLimits,
        clock: &FakeRelativeClock,
        until: Duration,
        mut size: impl FnMut() -> u64,
        mut late: impl FnMut() -> Duration,
        mut usage: impl FnMut(u64) -> u64,
    ) -> Vec<Call> {
        let mut calls = Vec::new();
        while now(clock) < until {
            let n = size();
            let grant = loop {
                match l.try_acquire(n) {
                    Ok(g) => break g,
                    Err(wait) => {
                        assert!(wait > Duration::ZERO, "told to wait for nothing");
                        clock.advance(wait + late());
                    }
                }
            };
            let used = usage(n);
            l.correct(grant, used);
            calls.push((now(clock), used));
        }
        calls
    }

    /// The most calls, and the most tokens, that any minute holds. (Windows `[t, t + 60 s)`
    /// starting at a call hold every maximum.)
    fn busiest_minute(calls: &[Call]) -> (usize, u64) {
        let (mut most_calls, mut most_tokens) = (0usize, 0u64);
        let (mut end, mut tokens) = (0usize, 0u64);
        for (start, &(t, n)) in calls.iter().enumerate() {
            while end < calls.len() && calls[end].0 < t + MINUTE {
                tokens += calls[end].1;
                end += 1;
            }
            most_calls = most_calls.max(end - start);
            most_tokens = most_tokens.max(tokens);
            tokens -= n;
        }
        (most_calls, most_tokens)
    }

    fn before(calls: &[Call], t: Duration) -> impl Iterator<Item = &Call> {
        calls.iter().filter(move |c| c.0 < t)
    }

    #[test]
    fn tokens_never_exceed_the_quota_in_any_trailing_minute() {
        // 6,000 tokens a minute in calls of 500: twelve calls a minute, at most.
        let (l, clock) = fake(None, Some(6000));
        let calls = drive(&l, &clock, 3 * MINUTE, || 500, || Duration::ZERO, |n| n);
        let (n, tokens) = busiest_minute(&calls);
        assert!(
            tokens <= 6000,
            "up to {n} calls, {tokens} tokens in one minute"
        );
        // And the quota is used: 24 calls fit in two minutes, one every 5 s.
        let first_two = before(&calls, 2 * MINUTE).count();
        assert!((22..=24).contains(&first_two), "{first_two} calls in 2 min");
        // Paced, not sent at the start of each minute.
        let first_ten_seconds = before(&calls, 10 * SECOND).count();
        assert!(first_ten_seconds <= 3, "{first_ten_seconds} calls in 10 s");
    }

    #[test]
    fn calls_of_any_size_up_to_the_quota_keep_every_minute_within_it() {
        // Calls from 1 token to the whole quota (most larger than a second's worth), callers
        // waking up to 50 ms late, usage reported at three quarters of the estimate.
        let mut sizes = fastrand::Rng::with_seed(17);
        let mut lateness = fastrand::Rng::with_seed(18);
        let (l, clock) = fake(None, Some(6000));
        let calls = drive(
            &l,
            &clock,
            10 * MINUTE,
            || sizes.u64(1..=6000),
            || Duration::from_millis(lateness.u64(0..=50)),
            |n| n * 3 / 4,
        );
        let (n, tokens) = busiest_minute(&calls);
        assert!(
            tokens <= 6000,
            "up to {n} calls, {tokens} tokens in one minute"
        );
        // Calls this large, first come first served, cannot fill every minute (each waits
        // until the minute has room for all of it), but they use a good part of the quota.
        let sent: u64 = before(&calls, 10 * MINUTE).map(|c| c.1).sum();
        assert!(sent >= 24_000, "{sent} tokens in 10 min");
    }

    #[test]
    fn a_call_larger_than_the_quota_goes_alone_into_an_empty_minute() {
        let (l, clock) = fake(None, Some(60));
        assert_eq!(l.max_call_tokens(), Some(60));
        assert_eq!(RateLimits::new(Some(10), None).max_call_tokens(), None);
        l.try_acquire(10_000).expect("an empty minute takes it");
        // The next call waits until that one has left the window (a minute and a margin).
        let window = Duration::from_nanos(WINDOW_NS);
        assert_eq!(l.try_acquire(1).unwrap_err(), window);
        clock.advance(window);
        l.try_acquire(1).expect("a minute later");
        // A call of the whole quota waits for an empty minute, then goes.
        let (l, clock) = fake(None, Some(60));
        l.try_acquire(1).unwrap();
        assert_eq!(l.try_acquire(60).unwrap_err(), window);
        clock.advance(window);
        l.try_acquire(60).expect("room for the whole quota");
    }

    #[tokio::test]
    async fn oversized_token_requests_do_not_fail() {
        let l = RateLimits::new(None, Some(60)); // 60 tokens a minute
        assert!(l.acquire(10_000).now_or_never().is_some(), "goes at once");
    }

    #[test]
    fn usage_corrections_are_paid_by_later_calls() {
        // 6,000 tokens a minute: 10 ms a token; a call may go a second ahead of the pace.
        let (l, clock) = fake(None, Some(6000));
        let a = l.try_acquire(3000).unwrap();
        assert_eq!(l.try_acquire(1000).unwrap_err(), 29 * SECOND);
        // The call really used 4,500 tokens: the next one waits for those 1,500 more.
        l.correct(a, 4500);
        assert_eq!(l.try_acquire(1000).unwrap_err(), 44 * SECOND);
        clock.advance(44 * SECOND);
        let b = l.try_acquire(1000).unwrap();
        // 4,500 + 1,000 + 1,500 would overfill the minute: this call waits 16 s...
        assert_eq!(l.try_acquire(1500).unwrap_err(), 16 * SECOND + HALF_SECOND);
        // ...unless the last call is found to have used nothing: refunded to the pace and to
        // the minute, it goes at once.
        l.correct(b, 0);
        l.try_acquire(1500).expect("the refund makes room");
        // The minute now holds 4,500 + 0 + 1,500: full. The next token waits until the first
        // call is a minute old (its 4,500 counted as reported), though the pace alone would let
        // it go a second sooner.
        assert_eq!(l.try_acquire(1).unwrap_err(), 16 * SECOND + HALF_SECOND);
    }

    #[test]
    fn a_call_refused_by_one_limit_takes_nothing_from_the_other() {
        // One request a minute, 1,000 tokens a minute (60 ms a token).
        let (l, clock) = fake(Some(1), Some(1000));
        l.try_acquire(10).unwrap();
        clock.advance(SECOND);
        for _ in 0..200 {
            // Tokens would allow it; the request limit does not.
            assert_eq!(l.try_acquire(10).unwrap_err(), 59 * SECOND + HALF_SECOND);
        }
        clock.advance(59 * SECOND + HALF_SECOND);
        // Had the 200 refused calls counted 2,000 tokens, the pace would refuse this one.
        l.try_acquire(10).expect("refused calls took no tokens");

        // Two requests a minute (one per 30 s), 100 tokens a minute.
        let (l, clock) = fake(Some(2), Some(100));
        l.try_acquire(100).unwrap();
        clock.advance(45 * SECOND);
        for _ in 0..5 {
            // The request limit would allow it; tokens do not.
            assert_eq!(l.try_acquire(100).unwrap_err(), 15 * SECOND + HALF_SECOND);
        }
        clock.advance(15 * SECOND + HALF_SECOND);
        // Had a refused call taken a request at 45 s, the next would wait until 75 s.
        l.try_acquire(100).expect("refused calls took no request");
    }

    #[test]
    fn requests_are_spaced_after_a_burst_of_two() {
        // 1,200 a minute: a burst of two, then one per 60 s / 1,199 (≈ 50 ms).
        let (l, clock) = fake(Some(1200), None);
        let period = Duration::from_nanos(WINDOW_NS.div_ceil(1199));
        assert!(l.try_acquire(1).is_ok());
        assert!(l.try_acquire(1).is_ok());
        assert_eq!(l.try_acquire(1).unwrap_err(), period);
        clock.advance(period - Duration::from_nanos(1));
        assert!(l.try_acquire(1).is_err());
        clock.advance(Duration::from_nanos(1));
        assert!(l.try_acquire(1).is_ok());
        assert!(l.try_acquire(1).is_err(), "one per period after the burst");
        // As fast as allowed: exactly the quota in the busiest minute.
        let (l, clock) = fake(Some(1200), None);
        let calls = drive(&l, &clock, 3 * MINUTE, || 1, || Duration::ZERO, |n| n);
        // Nearly the quota in the busiest minute, never more (the window is half a second
        // longer than a minute).
        let busiest = busiest_minute(&calls).0;
        assert!((1185..=1200).contains(&busiest), "{busiest}");
    }

    #[test]
    fn large_quotas_absorb_a_tenth_of_a_second_of_lateness() {
        // 60,000 a minute: a burst of 100, then 59,901 a minute (one per ~1 ms).
        let (l, _clock) = fake(Some(60_000), None);
        for i in 0..100 {
            assert!(l.try_acquire(1).is_ok(), "call {i} of the burst");
        }
        assert!(l.try_acquire(1).is_err(), "the 101st waits for the pace");
        // Callers that wake up to 90 ms late lose no slot (but for the last wake's): two
        // minutes hold nearly every slot the pace has, and no minute more than the quota.
        // (With a burst of one, every wake would lose its lateness: some 2,600 calls in two
        // minutes.)
        let (l, clock) = fake(Some(60_000), None);
        let mut lateness = fastrand::Rng::with_seed(25);
        let calls = drive(
            &l,
            &clock,
            3 * MINUTE,
            || 1,
            || Duration::from_millis(lateness.u64(0..=90)),
            |n| n,
        );
        let (n, _) = busiest_minute(&calls);
        assert!(n <= 60_000, "{n} calls in a minute");
        let in_two_minutes = before(&calls, 2 * MINUTE).count();
        let slots = 100 + (2 * MINUTE_NS * (60_000 - 100 + 1) / WINDOW_NS) as usize;
        assert!(
            in_two_minutes + 100 >= slots,
            "{in_two_minutes} calls of {slots} in 2 min"
        );
    }
}
