//! A sleep precise to a fraction of a millisecond, for the emulator's simulated latency.
//!
//! tokio's timer rounds every deadline up to its next 1 ms tick, and the wake-up adds more, so
//! a plain `sleep_until` answers 1-2 ms late: 2-4 % of a 50 ms latency, enough to skew any
//! throughput measurement against it. Spinning (yielding until the deadline) is precise but
//! keeps a core busy, which on a small machine slows the very client being measured. Here one
//! thread per process keeps the pending deadlines in a heap and waits on a condition variable
//! with the earliest one as its timeout (the kernel's high-resolution timers: tens of
//! microseconds late), then wakes the waiting task.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
