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
    use futures::FutureExt;

    /// A slot if one is free now (without waiting).
    fn try_acquire(l: &Arc<AdaptiveLimit>) -> Option<Permit> {
        l.acquire().now_or_never()
    }

    /// (calls the service is working on, answered calls being read)
    fn counts(l: &AdaptiveLimit) -> (usize, usize) {
        let s = l.state.lock().unwrap();
        (s.in_flight, s.receiving)
    }

    #[tokio::test]
    async fn caps_calls_in_flight() {
        let l = AdaptiveLimit::new(2);
        let a = try_acquire(&l).expect("a free slot");
        let _b = try_acquire(&l).expect("a free slot");
        assert!(try_acquire(&l).is_none(), "a third call waits");
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        drop(a);
        let c = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert!(c.is_ok(), "the waiting call takes the freed slot");
    }

    #[tokio::test]
    async fn an_answered_call_frees_its_slot_and_receiving_is_bounded() {
        let l = AdaptiveLimit::new(2);
        let mut a = try_acquire(&l).expect("a free slot");
        let mut b = try_acquire(&l).expect("a free slot");
        assert!(try_acquire(&l).is_none(), "both slots are taken");
        a.answered();
        a.answered(); // once only
        assert_eq!(counts(&l), (1, 1));
        let c = try_acquire(&l).expect("the answered call's slot is free");
        assert!(
            try_acquire(&l).is_none(),
            "answering twice frees one slot, not two"
        );
        b.answered();
        assert_eq!(counts(&l), (1, 2));
        assert!(
            try_acquire(&l).is_none(),
            "a slot is free, but no new call starts while the maximum are being read"
        );
        a.success();
        assert_eq!(counts(&l), (1, 1));
        let d = try_acquire(&l).expect("a call fully read makes room");
        assert!(try_acquire(&l).is_none(), "both slots are taken again");
        drop((b, c, d));
        assert_eq!(counts(&l), (0, 0), "every slot is given back");
    }

    #[tokio::test]
    async fn an_answered_call_counts_as_one_success() {
        let l = AdaptiveLimit::new(4);
        try_acquire(&l).unwrap().throttled();
        let limit = || l.state.lock().unwrap().limit;
        assert_eq!(limit(), 2.0);
        // Answered (twice) then read: one round of growth, 2 + 1/2.
        let mut p = try_acquire(&l).unwrap();
        p.answered();
        p.answered();
        assert_eq!(limit(), 2.5);
        p.success();
        assert_eq!(limit(), 2.5);
        // Not answered: the success grows the cap, 2.5 + 1/2.5.
        try_acquire(&l).unwrap().success();
        assert!((limit() - 2.9).abs() < 1e-9, "{}", limit());
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
