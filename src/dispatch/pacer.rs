//! Pacing by the budget a server reports (`x-ratelimit-remaining-*` and `-reset-*` on its
//! answers), so the sender slows before the server starts refusing, even when the pipeline file
//! sets no rate limits.
//!
//! Every send takes a ticket. The report in force is the one answering the latest-sent call
//! (answers overtake each other: an older report arriving late is ignored), believed minus what
//! was sent after that call. When it leaves nothing, sends wait for its reset time; then one
//! call goes alone, and its answer's report lets the others go.

use crate::clients::ServerBudget;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting sender looks for a newer report.
const RECHECK: Duration = Duration::from_millis(50);

/// A lone call sent after a reset whose answer has not come in this long no longer holds the
/// others back (it may have been lost).
const PROBE_PATIENCE: Duration = Duration::from_secs(10);

/// A send's place in the order of sends.
pub(crate) type Ticket = u64;

#[derive(Default)]
struct State {
    /// Sends so far, and their tokens.
    sent_requests: u64,
    sent_tokens: u64,
    /// Calls out: their ticket → (sends, tokens) counted up to and including them, and their
    /// own tokens.
    out: HashMap<Ticket, (u64, u64, u64)>,
    /// The report in force: it, when it came, its call's ticket and counts at its send.
    last: Option<Report>,
    /// A lone call out after a reset: its ticket and when it went.
    probe: Option<(Ticket, Instant)>,
    pauses: u64,
    paused: Duration,
}

#[derive(Clone, Copy)]
struct Report {
    budget: ServerBudget,
    at: Instant,
    ticket: Ticket,
    requests_then: u64,
    tokens_then: u64,
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
    /// Waits until the server's report in force leaves room for a call of `tokens`, then counts
    /// the call as sent; its ticket goes back with [`Pacer::done`].
    pub(crate) async fn ready(&self, tokens: u64) -> Ticket {
        let mut waited: Option<Instant> = None;
        loop {
            let until = {
                let mut s = self.state.lock().expect("pacer lock");
                match s.blocked_until(tokens, Instant::now()) {
                    None => {
                        s.sent_requests += 1;
                        s.sent_tokens += tokens;
                        let ticket = s.sent_requests;
                        let counts = (s.sent_requests, s.sent_tokens, tokens);
                        s.out.insert(ticket, counts);
                        if s.probe.is_some_and(|(t, _)| t == 0) {
                            s.probe = Some((ticket, Instant::now()));
                        }
                        if let Some(start) = waited {
                            s.pauses += 1;
                            s.paused += start.elapsed();
                        }
                        return ticket;
                    }
                    Some(t) => t,
                }
            };
            waited.get_or_insert_with(Instant::now);
            tokio::time::sleep_until(until.min(Instant::now() + RECHECK)).await;
        }
    }

    /// The call of `ticket` came back, with the server's report if it sent one.
    pub(crate) fn done(&self, ticket: Ticket, budget: Option<ServerBudget>) {
        let mut s = self.state.lock().expect("pacer lock");
        let counts = s.out.remove(&ticket);
        if s.probe.is_some_and(|(t, _)| t == ticket) {
            s.probe = None;
        }
        let (Some(budget), Some((mut requests_then, mut tokens_then, _))) = (budget, counts) else {
            return;
        };
        // Only a report about a call sent after the one in force is newer news.
        if s.last.is_some_and(|r| r.ticket > ticket) {
            return;
        }
        // Calls sent before this one and still out may have reached the server after it (they
        // travel on other connections): count them as not in the report.
        for (_, _, tokens) in s.out.iter().filter(|(t, _)| **t < ticket).map(|(_, c)| c) {
            requests_then -= 1;
            tokens_then -= tokens;
        }
        s.last = Some(Report {
            budget,
            at: Instant::now(),
            ticket,
            requests_then,
            tokens_then,
        });
    }

    pub(crate) fn stats(&self) -> PacerStats {
        let s = self.state.lock().expect("pacer lock");
        PacerStats {
            last: s.last.map(|r| r.budget),
            pauses: s.pauses,
            paused: s.paused,
        }
    }
}

impl State {
    /// When a call of `tokens` may go (`None`: now).
    fn blocked_until(&mut self, tokens: u64, now: Instant) -> Option<Instant> {
        let r = self.last?;
        let b = r.budget;
        let sent_requests = self.sent_requests - r.requests_then;
        let sent_tokens = self.sent_tokens - r.tokens_then;
        let out_of_requests = b
            .remaining_requests
            .is_some_and(|left| sent_requests >= left);
        let out_of_tokens = b
            .remaining_tokens
            .is_some_and(|left| left == 0 || sent_tokens + tokens > left);
        // Each budget waits for its own reset.
        let reset = |exhausted: bool, after: Option<Duration>| {
            exhausted.then(|| r.at + after.unwrap_or(Duration::from_secs(1)))
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
        // Long past the reset with no newer report (the server stopped sending them): forget it.
        if now.duration_since(until) > PROBE_PATIENCE {
            self.last = None;
            return None;
        }
        // Past the reset: one call goes alone; its answer brings a new report.
        match self.probe {
            Some((_, went)) if now.duration_since(went) < PROBE_PATIENCE => Some(now + RECHECK),
            _ => {
                // (Ticket 0: the caller fills in the probe's own.)
                self.probe = Some((0, now));
                None
            }
        }
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
        let first = p.ready(1).await;
        let t0 = Instant::now();
        p.done(first, Some(budget(2, 300)));
        p.ready(1).await;
        p.ready(1).await;
        assert!(
            t0.elapsed() < Duration::from_millis(250),
            "two left: both go at once"
        );
        // The third waits for the reset, then goes alone.
        let probe = p.ready(1).await;
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
        p.done(probe, Some(budget(5, 10_000)));
        let t1 = Instant::now();
        p.ready(1).await;
        assert!(t1.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn calls_sent_after_the_reported_one_count_against_it() {
        let p = Pacer::default();
        let a = p.ready(1).await;
        p.ready(1).await;
        p.ready(1).await;
        // The first call's answer says 2 are left; two calls went after it: none may go.
        let t0 = Instant::now();
        p.done(a, Some(budget(2, 500)));
        p.ready(1).await;
        assert!(t0.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn an_older_report_arriving_late_does_not_loosen_the_budget() {
        let p = Pacer::default();
        let older = p.ready(1).await;
        let newer = p.ready(1).await;
        // The newest call's report: nothing left.
        let t0 = Instant::now();
        p.done(newer, Some(budget(0, 400)));
        // The older call's report, arriving later: 10 left.
        p.done(older, Some(budget(10, 400)));
        p.ready(1).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_newer_report_replaces_one_with_a_longer_reset() {
        let p = Pacer::default();
        let a = p.ready(1).await;
        // Requests reset in 200 ms, tokens in 30 s: the requests are spent.
        p.done(
            a,
            Some(ServerBudget {
                remaining_requests: Some(0),
                reset_requests: Some(Duration::from_millis(200)),
                remaining_tokens: Some(1000),
                reset_tokens: Some(Duration::from_secs(30)),
                ..Default::default()
            }),
        );
        let probe = p.ready(1).await;
        // The probe's answer: 5 requests left; they go at once, not one at a time.
        p.done(probe, Some(budget(5, 200)));
        let t0 = Instant::now();
        for _ in 0..5 {
            p.ready(1).await;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(150),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn tokens_pace_too() {
        let p = Pacer::default();
        let a = p.ready(100).await;
        let t0 = Instant::now();
        p.done(
            a,
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

    #[tokio::test]
    async fn a_spent_token_budget_holds_even_with_nothing_out() {
        let p = Pacer::default();
        let a = p.ready(10).await;
        let t0 = Instant::now();
        p.done(
            a,
            Some(ServerBudget {
                remaining_tokens: Some(0),
                reset_tokens: Some(Duration::from_millis(300)),
                ..Default::default()
            }),
        );
        p.ready(10).await;
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }
}
