//! How vchan connects keep within their domain's xenstore quotas: process-wide gates on what
//! the connects hold at once (a first-come first-served counting semaphore with a deadline),
//! a backoff for retries, and which store errors are a quota or a busy store worth waiting out.
//! The bounds themselves are documented in [`crate::rendezvous`].

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use xenstore::{Errno, XenstoreError};

use crate::error::Limit;
use crate::rendezvous::{MAX_CONNECTS_IN_FLIGHT, MAX_TRANSACTIONS};

/// The connects of this process that may hold a watch and a request node at once.
pub(crate) static CONNECTS: Gate = Gate::new(MAX_CONNECTS_IN_FLIGHT);
/// The rendezvous transactions of this process open at once.
pub(crate) static TRANSACTIONS: Gate = Gate::new(MAX_TRANSACTIONS);

/// A counting semaphore that serves its waiters in the order they came, each up to its own
/// deadline (a waiter that gives up is skipped, never waited for).
pub(crate) struct Gate {
    max: usize,
    queue: Mutex<Queue>,
    turn: Condvar,
}

struct Queue {
    /// Places taken.
    held: usize,
    /// The ticket the next waiter draws.
    next_ticket: u64,
    /// The ticket whose turn it is.
    serving: u64,
    /// Tickets whose waiters gave up before their turn came.
    gave_up: BTreeSet<u64>,
}

impl Queue {
    /// Move the turn past the waiters that gave up.
    fn skip_gone(&mut self) {
        while self.gave_up.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

impl Gate {
    const fn new(max: usize) -> Gate {
        Gate {
            max,
            queue: Mutex::new(Queue {
                held: 0,
                next_ticket: 0,
                serving: 0,
                gave_up: BTreeSet::new(),
            }),
            turn: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is a few counters, each change complete under the lock.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait for a place, in turn, until `deadline`; `None` if the deadline came first.
    pub(crate) fn enter(&'static self, deadline: Instant) -> Option<Place> {
        let mut queue = self.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        loop {
            if queue.serving == ticket && queue.held < self.max {
                queue.held += 1;
                queue.serving += 1;
                queue.skip_gone();
                // The next in line may fit too.
                self.turn.notify_all();
                return Some(Place(self));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                queue.gave_up.insert(ticket);
                queue.skip_gone();
                self.turn.notify_all();
                return None;
            }
            queue = self
                .turn
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A place taken in a [`Gate`], given back when dropped.
pub(crate) struct Place(&'static Gate);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.lock().held -= 1;
        self.0.turn.notify_all();
    }
}

/// The pause before each retry: from 2 ms, doubling up to 200 ms, each drawn at random from
/// its upper half so that connects that met a limit together do not come back together.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(2);
    const LONGEST: Duration = Duration::from_millis(200);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// Sleep before the next attempt; false (at once) if the pause would end past `deadline`.
    pub(crate) fn pause(&mut self, deadline: Instant) -> bool {
        let half = self.next / 2;
        let pause = half + half.mul_f64(random_fraction());
        self.next = (self.next * 2).min(Self::LONGEST);
        if Instant::now() + pause >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        true
    }
}

/// A number in [0, 1) that differs between calls and between processes (each `RandomState`
/// has keys of its own).
fn random_fraction() -> f64 {
    let bits = RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// What a store operation was doing, to tell which quota an `ENOSPC` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    /// Starting a transaction.
    StartTransaction,
    /// Writing (a value, permissions, or a transaction's commit): creates nodes.
    Change,
    /// Registering a watch, or reading.
    Watch,
}

/// The limit a store error shows, if it is one worth waiting out: a quota this domain is at
/// (another connect or process will give back) or a busy store. Anything else is `None`.
pub(crate) fn limit_met(op: StoreOp, error: &XenstoreError) -> Option<Limit> {
    match (error.errno()?, op) {
        (Errno::EAGAIN | Errno::EBUSY, _) => Some(Limit::StoreBusy),
        (Errno::ENOSPC, StoreOp::StartTransaction) => Some(Limit::StoreTransactions),
        (Errno::ENOSPC, StoreOp::Change) => Some(Limit::StoreNodes),
        (Errno::E2BIG, StoreOp::Watch) => Some(Limit::StoreWatches),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_gate_never_lets_more_than_its_bound_in_and_serves_everyone() {
        static GATE: Gate = Gate::new(3);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
                std::thread::spawn(move || {
                    let place = GATE.enter(Instant::now() + Duration::from_secs(60));
                    assert!(place.is_some(), "a waiter was never let in");
                    // ORDERING: SeqCst: a plain counter checked across the threads.
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // ORDERING: SeqCst, as above.
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_waiter_that_gives_up_does_not_hold_up_the_next() {
        static GATE: Gate = Gate::new(1);
        let held = GATE
            .enter(Instant::now())
            .expect("a free gate lets in at once");
        // Gives up while the place is held.
        assert!(GATE
            .enter(Instant::now() + Duration::from_millis(20))
            .is_none());
        drop(held);
        // The next waiter is not stuck behind the one that left.
        assert!(GATE
            .enter(Instant::now() + Duration::from_secs(5))
            .is_some());
    }

    #[test]
    fn quotas_are_told_apart_by_the_operation_that_met_them() {
        let errno = |e| XenstoreError::Errno(e);
        let cases = [
            (
                StoreOp::StartTransaction,
                Errno::ENOSPC,
                Some(Limit::StoreTransactions),
            ),
            (StoreOp::Change, Errno::ENOSPC, Some(Limit::StoreNodes)),
            (StoreOp::Watch, Errno::E2BIG, Some(Limit::StoreWatches)),
            (StoreOp::Change, Errno::EAGAIN, Some(Limit::StoreBusy)),
            (StoreOp::Watch, Errno::EBUSY, Some(Limit::StoreBusy)),
            // A value too long is no quota to wait out, nor is a refusal.
            (StoreOp::Change, Errno::E2BIG, None),
            (StoreOp::Change, Errno::EACCES, None),
        ];
        for (op, e, limit) in cases {
            assert_eq!(limit_met(op, &errno(e)), limit, "{op:?} {e}");
        }
    }
}
