//! Adaptive cap on calls in flight: additive increase, multiplicative decrease (AIMD).
//!
//! Every successful call raises the cap by `1/cap` (one whole call per round of calls); a
//! throttled call halves it, at most once per round: a throttle counts only if its call was sent
//! after the last decrease, so a burst of throttles from calls that were already on the wire
//! halves the cap once. The cap never exceeds the configured `concurrency` nor drops below one.
//!
//! A call counts against the cap while the service works on it. Once its answer has started
//! to arrive (a successful response's headers) it moves to "receiving": its slot is free for
//! the next call while the body is still read. No new call starts while as many calls as the
//! maximum cap are being read, so a slow network cannot pile up response bodies.

use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct AdaptiveLimit {
    max: usize,
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    limit: f64,
    /// Calls the service is working on.
    in_flight: usize,
    /// Answered calls whose response body is still being read.
    receiving: usize,
    /// When the cap was last decreased.
    decreased_at: Option<Instant>,
    lowest: f64,
}

/// One call's slot; dropping it frees the slot.
pub struct Permit {
    owner: Arc<AdaptiveLimit>,
    sent: Instant,
    answered: bool,
}

impl AdaptiveLimit {
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                receiving: 0,
                decreased_at: None,
                lowest: max as f64,
            }),
            notify: Notify::new(),
        })
    }

    /// Waits for a free slot under the current cap.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().expect("limit lock");
                if s.in_flight < (s.limit as usize).max(1) && s.receiving < self.max {
                    s.in_flight += 1;
                    return Permit {
                        owner: self.clone(),
                        sent: Instant::now(),
                        answered: false,
                    };
                }
            }
            notified.await;
        }
    }

    /// Additive increase: one call more per round of successes, up to the maximum.
    fn grow(&self, s: &mut State) {
        s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
    }

    /// The current cap (whole calls).
    pub fn current(&self) -> usize {
        (self.state.lock().expect("limit lock").limit as usize).max(1)
    }

    /// The lowest cap reached so far.
    pub fn lowest(&self) -> usize {
        (self.state.lock().expect("limit lock").lowest as usize).max(1)
    }
}

impl Permit {
    /// Marks the moment the call goes on the wire (after rate-limit waits).
    pub fn sent_now(&mut self) {
        self.sent = Instant::now();
    }

    /// The service has answered (successfully) and the response is being read: the slot is
    /// free for the next call, and the cap grows as for a success.
    pub fn answered(&mut self) {
        if self.answered {
            return;
        }
        self.answered = true;
        {
            let mut s = self.owner.state.lock().expect("limit lock");
            self.owner.grow(&mut s);
            s.in_flight -= 1;
            s.receiving += 1;
        }
        self.owner.notify.notify_waiters();
    }

    /// The call succeeded: additive increase (once, if it was already answered).
    pub fn success(self) {
        if !self.answered {
            self.owner
                .grow(&mut self.owner.state.lock().expect("limit lock"));
        }
        // Dropping `self` frees the slot and wakes waiters.
    }

    /// The call was throttled: multiplicative decrease, once per round.
    pub fn throttled(self) {
        {
            let mut s = self.owner.state.lock().expect("limit lock");
            if s.decreased_at.is_none_or(|d| self.sent >= d) {
                s.limit = (s.limit / 2.0).max(1.0);
                s.lowest = s.lowest.min(s.limit);
                s.decreased_at = Some(Instant::now());
                tracing::debug!(limit = s.limit, "throttled: fewer calls in flight");
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut s = self.owner.state.lock().expect("limit lock");
            if self.answered {
                s.receiving -= 1;
            } else {
                s.in_flight -= 1;
            }
        }
        self.owner.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_calls_in_flight() {
        let l = AdaptiveLimit::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::time::timeout(std::time::Duration::from_millis(30), l.acquire()).await;
        assert!(third.is_err(), "a third call waits");
        drop(a);
        let c = tokio::time::timeout(std::time::Duration::from_millis(300), l.acquire()).await;
        assert!(c.is_ok(), "a freed slot is taken");
    }

    #[tokio::test]
    async fn an_answered_call_frees_its_slot_and_receiving_is_bounded() {
        let wait = std::time::Duration::from_millis(30);
        let l = AdaptiveLimit::new(2);
        let mut a = l.acquire().await;
        let mut b = l.acquire().await;
        assert!(tokio::time::timeout(wait, l.acquire()).await.is_err());
        a.answered();
        a.answered(); // once only
        let c = tokio::time::timeout(wait, l.acquire())
            .await
            .expect("the answered call's slot is free");
        b.answered();
        assert!(
            tokio::time::timeout(wait, l.acquire()).await.is_err(),
            "a slot is free, but no new call starts while the maximum are being read"
        );
        a.success();
        let _d = tokio::time::timeout(wait, l.acquire())
            .await
            .expect("a call fully read makes room");
        drop((b, c));
        assert_eq!(l.current(), 2, "answers count as successes, once each");
    }

    #[tokio::test]
    async fn halves_once_per_round_and_recovers() {
        let l = AdaptiveLimit::new(16);
        let permits: Vec<Permit> = futures::future::join_all((0..16).map(|_| l.acquire())).await;
        // Sixteen calls sent before the first throttle: all their throttles count as one.
        for p in permits {
            p.throttled();
        }
        assert_eq!(l.current(), 8);
        // A call sent after the decrease may decrease again.
        l.acquire().await.throttled();
        assert_eq!(l.current(), 4);
        assert_eq!(l.lowest(), 4);
        // Successes climb back one call per round, never above the maximum.
        for _ in 0..1000 {
            l.acquire().await.success();
        }
        assert_eq!(l.current(), 16);
    }

    #[tokio::test]
    async fn never_below_one() {
        let l = AdaptiveLimit::new(4);
        for _ in 0..10 {
            l.acquire().await.throttled();
        }
        assert_eq!(l.current(), 1);
        let _p = l.acquire().await;
    }
}
