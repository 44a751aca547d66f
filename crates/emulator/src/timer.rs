//! A sleep precise to a fraction of a millisecond, for the emulator's simulated latency.
//!
//! tokio's timer rounds every deadline up to its next 1 ms tick, and the wake-up adds more, so
//! a plain `sleep_until` answers 1-2 ms late: 2-4 % of a 50 ms latency, enough to skew any
//! throughput measurement against it. Spinning (yielding until the deadline) is precise but
//! keeps a core busy, which on a small machine slows the very client being measured. Here one
//! thread per process keeps the pending deadlines in a heap and waits on a condition variable
//! with the earliest one as its timeout (the kernel's high-resolution timers: tens of
//! microseconds late), then wakes the waiting task.
//!
//! Even so, the task resumes a little after its deadline (the timer thread's wake-up, the hand-off
//! to the runtime, and on a busy machine the wait for a core): [`Lead`] learns that delay and the
//! emulator asks to be woken that much earlier, so answers leave on time on average.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

struct Pending {
    deadline: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("emulator-timer".into())
            .spawn(move || fire(t))
            .expect("spawn the emulator's timer thread");
        t
    })
}

/// The timer thread: wakes every task whose deadline has passed, then waits for the next one
/// (or for an earlier deadline to be added).
fn fire(t: &Timer) {
    let mut q = t.queue.lock().expect("timer lock");
    loop {
        let now = Instant::now();
        while q.heap.peek().is_some_and(|p| p.0.deadline <= now) {
            let Reverse(p) = q.heap.pop().expect("peeked");
            // The task may have gone (its request was dropped): nothing to wake.
            let _ = p.wake.send(());
        }
        q = match q.heap.peek() {
            Some(p) => {
                let wait = p.0.deadline - now;
                t.changed.wait_timeout(q, wait).expect("timer lock").0
            }
            None => t.changed.wait(q).expect("timer lock"),
        };
    }
}

/// Sleeps until `deadline`, waking at most a fraction of a millisecond after it.
pub async fn sleep_until(deadline: Instant) {
    if deadline <= Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let t = timer();
    {
        let mut q = t.queue.lock().expect("timer lock");
        let earliest = q.heap.peek().is_none_or(|p| deadline < p.0.deadline);
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(Pending {
            deadline,
            seq,
            wake: tx,
        }));
        if earliest {
            t.changed.notify_one();
        }
    }
    let _ = rx.await;
}

/// How long after its deadline a sleeper resumes, learned as a moving average (µs): sleeping
/// until `due - lead` then resumes at `due` on average.
#[derive(Default)]
pub struct Lead(AtomicU64);

impl Lead {
    /// The lead is never more than a tenth of the latency, nor more than this.
    const MAX: Duration = Duration::from_millis(5);

    /// When to wake for an answer due at `due` after a request that arrived at `arrived`.
    pub fn target(&self, arrived: Instant, due: Instant) -> Instant {
        let lead = Duration::from_micros(self.0.load(Ordering::Relaxed))
            .min(Self::MAX)
            .min((due - arrived) / 10);
        due - lead
    }

    /// A sleeper asked to wake at `target` resumed at `woke`.
    pub fn observe(&self, target: Instant, woke: Instant) {
        let delay = woke.saturating_duration_since(target).as_micros() as u64;
        // Concurrent updates may lose one another's sample; an average does not mind.
        let old = self.0.load(Ordering::Relaxed);
        self.0.store((old * 7 + delay) / 8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_learns_the_delay_within_bounds() {
        let lead = Lead::default();
        let arrived = Instant::now();
        let due = arrived + Duration::from_millis(50);
        // Nothing learned yet: wake at the deadline.
        assert_eq!(lead.target(arrived, due), due);
        for _ in 0..100 {
            let target = lead.target(arrived, due);
            // The sleeper resumes 300 µs after whatever it asked for.
            lead.observe(target, target + Duration::from_micros(300));
        }
        let early = due - lead.target(arrived, due);
        assert!(
            (Duration::from_micros(290)..=Duration::from_micros(300)).contains(&early),
            "{early:?}"
        );
        // Never more than a tenth of the latency...
        let short = arrived + Duration::from_millis(2);
        assert_eq!(
            short - lead.target(arrived, short),
            Duration::from_micros(200)
        );
        // ...nor more than the cap, however late sleepers resume.
        for _ in 0..100 {
            lead.observe(arrived, arrived + Duration::from_millis(40));
        }
        assert_eq!(due - lead.target(arrived, due), Lead::MAX);
        // Resuming early (a past deadline returns at once) teaches a smaller lead.
        for _ in 0..100 {
            lead.observe(due, due);
        }
        assert_eq!(lead.target(arrived, due), due);
    }

    #[tokio::test]
    async fn every_sleeper_wakes_and_none_before_its_deadline() {
        let start = Instant::now();
        let deadlines: Vec<Instant> = [30u64, 5, 20, 5, 12]
            .iter()
            .map(|ms| start + Duration::from_millis(*ms))
            .collect();
        let woke = futures::future::join_all(deadlines.iter().map(|&d| async move {
            sleep_until(d).await;
            Instant::now()
        }))
        .await;
        for (d, w) in deadlines.iter().zip(&woke) {
            assert!(w >= d, "woke before its deadline");
        }
        // A deadline in the past returns at once.
        sleep_until(start).await;
    }
}
