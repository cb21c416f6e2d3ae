//! Lets an expensive Check's answer go out before the next expensive Check starts.
//!
//! On the single-threaded runtime (the default) tasks run in the order they were woken. When a
//! connection task reads a batch of requests it spawns one task per Check, and a finished Check
//! wakes the connection task at the back of that queue: with uncached ES256 tokens, every answer
//! of a batch waited for all the batch's signature checks before the first one was written. The
//! caller (Envoy) sat idle meanwhile, and then had the whole batch to handle at once.
//!
//! The gate closes when a Check checked a signature, and opens when bytes next go out on a Check
//! connection. A Check that finds it closed waits (at most [`MAX_WAIT`]) before deciding, which
//! lets the connection task write first. Cheap Checks (cache hits, early denials) never close
//! it, so a workload of cached tokens never waits. The multi-threaded runtime needs no gate:
//! there tokio runs the task that a finished Check wakes next, on the same worker.
//!
//! The price: answers to expensive Checks no longer share system calls. Behind Envoy, uncached
//! Checks gained about a third in throughput and halved their p50; a load generator that never
//! waits (the raw closed loop) lost about a tenth (BENCHMARKS.md, fourth round).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a Check waits at a closed gate: the gate only orders work, it never holds an
/// answer back for long (say, when a connection cannot be written to).
pub const MAX_WAIT: Duration = Duration::from_millis(1);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AnswerGate {
    /// An expensive Check's answer has not been written yet.
    closed: AtomicBool,
    waiting: AtomicUsize,
    turn: Notify,
}

impl AnswerGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether Checks must wait: an expensive answer is unwritten.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Before deciding: waits while the gate is closed, up to [`MAX_WAIT`].
    pub async fn enter(&self) {
        if !self.is_closed() {
            return;
        }
        let deadline = Instant::now() + MAX_WAIT;
        while self.is_closed() {
            // Counted while waiting, also when Envoy gives up on the Check and drops it here.
            let _waiting = Waiting::new(&self.waiting);
            if tokio::time::timeout_at(deadline, self.turn.notified())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// After deciding: an expensive Check (one that checked a signature) closes the gate; a
    /// cheap one passes the turn to the next waiting Check, if the gate is open.
    pub fn leave(&self, expensive: bool) {
        if expensive {
            self.closed.store(true, Ordering::Release);
        } else if !self.is_closed() {
            self.wake_one();
        }
    }

    /// Bytes went out on a Check connection: the answer that closed the gate is on its way.
    pub fn written(&self) {
        if self.closed.swap(false, Ordering::AcqRel) {
            self.wake_one();
        }
    }

    fn wake_one(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.turn.notify_one();
        }
    }
}

/// One waiting Check, counted for as long as it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant as StdInstant;

    use super::*;

    const CHEAP: bool = false;
    const SLOW: bool = true;

    #[tokio::test]
    async fn cheap_checks_never_close_it() {
        let gate = AnswerGate::new();
        for _ in 0..3 {
            gate.enter().await;
            gate.leave(CHEAP);
        }
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn an_expensive_check_closes_it_until_bytes_are_written() {
        let gate = AnswerGate::new();
        gate.enter().await;
        gate.leave(SLOW);
        assert!(gate.is_closed());
        gate.written();
        assert!(!gate.is_closed());
        // Open again: the next Check goes straight in.
        gate.enter().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_check_goes_in_after_the_write_not_before() {
        let gate = Arc::new(AnswerGate::new());
        gate.leave(SLOW);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiter = {
            let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
            tokio::spawn(async move {
                gate.enter().await;
                order.lock().unwrap().push("check");
            })
        };
        // Let the waiter reach the gate, then write.
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting.load(Ordering::Acquire), 1);
        order.lock().unwrap().push("write");
        gate.written();
        waiter.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["write", "check"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_lets_one_waiter_in_and_a_cheap_check_passes_the_turn_on() {
        let gate = Arc::new(AnswerGate::new());
        gate.leave(SLOW);
        let passed = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (gate, passed) = (Arc::clone(&gate), Arc::clone(&passed));
                tokio::spawn(async move {
                    gate.enter().await;
                    passed.fetch_add(1, Ordering::AcqRel);
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting.load(Ordering::Acquire), 2);
        gate.written();
        tokio::task::yield_now().await;
        assert_eq!(passed.load(Ordering::Acquire), 1, "one waiter per write");
        // The Check that went in was cheap: the turn passes to the other waiter.
        gate.leave(CHEAP);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(passed.load(Ordering::Acquire), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_check_dropped_while_waiting_is_no_longer_counted() {
        let gate = Arc::new(AnswerGate::new());
        gate.leave(SLOW);
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.enter().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting.load(Ordering::Acquire), 1);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_check_gives_up_waiting_after_max_wait() {
        let gate = AnswerGate::new();
        gate.leave(SLOW);
        let started = StdInstant::now();
        gate.enter().await;
        assert!(started.elapsed() >= MAX_WAIT);
        assert!(gate.is_closed(), "nothing was written");
    }
}
