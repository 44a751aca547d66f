//! Pacing by the budget a server reports (`x-ratelimit-remaining-*` and `-reset-*` on its
//! answers), so the sender slows before the server starts refusing, even when the pipeline file
//! sets no rate limits.
//!
//! The last report is believed minus what was sent since (counting the calls in flight when it
//! came, which the server may not have seen yet). When it says nothing is left, sends wait for
//! its reset time; then one call goes alone, and its answer's report lets the others go.

use crate::clients::ServerBudget;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting sender looks for a newer report.
const RECHECK: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    /// The last report and when it came.
    last: Option<(ServerBudget, Instant)>,
    /// Requests and tokens sent since the last report (plus those in flight when it came).
    sent_requests: u64,
    sent_tokens: u64,
    in_flight_requests: u64,
    in_flight_tokens: u64,
    /// A lone call is out after the reset time, its answer awaited.
    probing: bool,
    pauses: u64,
    paused: Duration,
}

/// What the pacer has seen, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacerStats {
    pub last: Option<ServerBudget>,
    /// Sends that waited for the server's budget, and how long in all.
    pub pauses: u64,
    pub paused: Duration,
}

#[derive(Default)]
pub(crate) struct Pacer {
    state: Mutex<State>,
}

impl Pacer {
    /// Waits until the server's last report leaves room for a call of `tokens`, then counts
    /// the call as sent.
    pub(crate) async fn ready(&self, tokens: u64) {
        let mut waited: Option<Instant> = None;
        loop {
            let until = {
                let mut s = self.state.lock().expect("pacer lock");
                match s.blocked_until(tokens, Instant::now()) {
                    None => {
                        s.sent_requests += 1;
                        s.sent_tokens += tokens;
                        s.in_flight_requests += 1;
                        s.in_flight_tokens += tokens;
                        if let Some(start) = waited {
                            s.pauses += 1;
                            s.paused += start.elapsed();
                        }
                        return;
                    }
                    Some(t) => t,
                }
            };
            waited.get_or_insert_with(Instant::now);
            tokio::time::sleep_until(until.min(Instant::now() + RECHECK)).await;
        }
    }

    /// A call of `tokens` came back, with the server's report if it sent one.
    pub(crate) fn done(&self, tokens: u64, budget: Option<ServerBudget>) {
        let mut s = self.state.lock().expect("pacer lock");
        s.in_flight_requests = s.in_flight_requests.saturating_sub(1);
        s.in_flight_tokens = s.in_flight_tokens.saturating_sub(tokens);
        s.probing = false;
        match budget {
            // Answers overtake each other: a report older than the one in force may leave more
            // room than is left. Until the one in force resets, the tighter of the two holds.
            Some(b) if s.tighter_than(&b) => {}
            Some(b) => {
                s.last = Some((b, Instant::now()));
                s.sent_requests = s.in_flight_requests;
                s.sent_tokens = s.in_flight_tokens;
            }
            // (Silence after a pause: the old report is stale; send unpaced.)
            None if s.last.is_some_and(|(_, at)| s.is_stale(at)) => s.last = None,
            None => {}
        }
    }

    pub(crate) fn stats(&self) -> PacerStats {
        let s = self.state.lock().expect("pacer lock");
        PacerStats {
            last: s.last.map(|(b, _)| b),
            pauses: s.pauses,
            paused: s.paused,
        }
    }
}

impl State {
    /// When a call of `tokens` may go (`None`: now).
    fn blocked_until(&mut self, tokens: u64, now: Instant) -> Option<Instant> {
        let (b, at) = self.last?;
        let out_of_requests = b
            .remaining_requests
            .is_some_and(|r| self.sent_requests >= r);
        let out_of_tokens = b
            .remaining_tokens
            .is_some_and(|r| self.sent_tokens + tokens > r && self.sent_tokens > 0);
        let reset = |exhausted: bool, after: Option<Duration>| {
            exhausted.then(|| at + after.unwrap_or(Duration::from_secs(1)))
        };
        let until = [
            reset(out_of_requests, b.reset_requests),
            reset(out_of_tokens, b.reset_tokens),
        ]
        .into_iter()
        .flatten()
        .max()?;
        if now < until {
            return Some(until);
        }
        // Past the reset: one call goes alone; its answer brings a new report.
        if self.probing {
            return Some(now + RECHECK);
        }
        self.probing = true;
        None
    }

    /// Whether the report in force, not yet reset, leaves less room than `b` would.
    fn tighter_than(&self, b: &ServerBudget) -> bool {
        let Some((old, at)) = self.last else {
            return false;
        };
        let resets = [old.reset_requests, old.reset_tokens]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(Duration::from_secs(1));
        if Instant::now() >= at + resets {
            return false;
        }
        let less = |a: Option<u64>, b: Option<u64>| matches!((a, b), (Some(a), Some(b)) if a < b);
        let left = |r: Option<u64>, sent: u64| r.map(|r| r.saturating_sub(sent));
        less(
            left(old.remaining_requests, self.sent_requests),
            left(b.remaining_requests, self.in_flight_requests),
        ) || less(
            left(old.remaining_tokens, self.sent_tokens),
            left(b.remaining_tokens, self.in_flight_tokens),
        )
    }

    fn is_stale(&self, at: Instant) -> bool {
        at.elapsed() > Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(requests: u64, reset_ms: u64) -> ServerBudget {
        ServerBudget {
            remaining_requests: Some(requests),
            reset_requests: Some(Duration::from_millis(reset_ms)),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn waits_for_the_reset_when_the_budget_is_spent() {
        let p = Pacer::default();
        // No report: nothing waits.
        p.ready(1).await;
        let t0 = Instant::now();
        p.done(1, Some(budget(2, 300)));
        p.ready(1).await;
        p.ready(1).await;
        assert!(
            t0.elapsed() < Duration::from_millis(250),
            "two left: both go at once"
        );
        // The third waits for the reset, then goes alone.
        p.ready(1).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(p.stats().pauses, 1);
        // A fourth waits for the lone call's answer...
        let fourth = tokio::time::timeout(Duration::from_millis(200), p.ready(1)).await;
        assert!(fourth.is_err(), "only one call goes after the reset");
        // ...which reports room again.
        p.done(1, Some(budget(5, 10_000)));
        let t1 = Instant::now();
        p.ready(1).await;
        assert!(t1.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn calls_in_flight_count_against_a_new_report() {
        let p = Pacer::default();
        p.ready(1).await;
        p.ready(1).await;
        p.ready(1).await;
        // One answer says 2 are left, while two calls are still out: none may go.
        let t0 = Instant::now();
        p.done(1, Some(budget(2, 500)));
        p.ready(1).await;
        assert!(t0.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn an_older_report_arriving_late_does_not_loosen_the_budget() {
        let p = Pacer::default();
        for _ in 0..3 {
            p.ready(1).await;
        }
        // The newest report: 1 left.
        let t0 = Instant::now();
        p.done(1, Some(budget(1, 400)));
        // An answer computed earlier, arriving later: 10 left.
        p.done(1, Some(budget(10, 400)));
        // The 1 left may be the call still out: the next waits for the reset.
        p.ready(1).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn tokens_pace_too() {
        let p = Pacer::default();
        p.ready(100).await;
        let t0 = Instant::now();
        p.done(
            100,
            Some(ServerBudget {
                remaining_tokens: Some(150),
                reset_tokens: Some(Duration::from_millis(300)),
                ..Default::default()
            }),
        );
        p.ready(100).await;
        assert!(t0.elapsed() < Duration::from_millis(250));
        p.ready(100).await;
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }
}
