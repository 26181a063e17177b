//! Sleeping until the peer's event arrives, shared by the reading and the writing thread.
//!
//! One handle has one event fd for both directions. If two threads each polled it, one could take
//! the event the other was waiting for and leave it asleep. So one waiter at a time polls the fd
//! (the leader); when it wakes it takes the events, re-arms the port and bumps a generation
//! counter, and every other waiter, parked on a condition variable, wakes and re-checks its ring.
//! A waiter takes a ticket (the generation) *before* its final look at the ring, so an event that
//! lands between that look and its sleep is never missed: the generation will have moved.

use std::os::fd::AsFd;
#[cfg(not(vchan_loom))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(vchan_loom))]
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

// Under the model checker the same code runs on loom's atomics, mutex and condition variable
// (see the `loom_model` tests below).
#[cfg(vchan_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(vchan_loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(vchan_loom)]
use std::sync::PoisonError;

use evtchn::EventChannel;

/// What the waiter needs of an event channel: sleep until an event is pending, and take one.
/// Every [`EventChannel`] is one (its fd is polled); the loom model has its own.
pub(crate) trait EventSource {
    /// Wait until an event is pending or `timeout` passes; whether one is.
    fn wait_pending(&self, timeout: Option<Duration>) -> Result<bool>;
    /// Take one delivered event and re-arm its port; whether there was one.
    fn take_one(&self) -> Result<bool>;
}

impl<E: EventChannel> EventSource for E {
    fn wait_pending(&self, timeout: Option<Duration>) -> Result<bool> {
        poll_readable(self, timeout).map_err(VchanError::backend(Op::WaitForEvent))
    }

    fn take_one(&self) -> Result<bool> {
        match self.pending().map_err(VchanError::backend(Op::TakeEvent))? {
            Some(port) => {
                self.unmask(port).map_err(VchanError::backend(Op::Unmask))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

use crate::error::{Op, Result, VchanError};

/// At most this many deliveries are taken per wake, so a peer that notifies in a tight loop cannot
/// keep a waiter from returning to its ring.
const MAX_EVENTS_PER_WAKE: usize = 64;

pub(crate) struct Waiter {
    generation: AtomicU64,
    leader_present: Mutex<bool>,
    followers: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Waiter {
    pub(crate) fn new() -> Waiter {
        Waiter {
            generation: AtomicU64::new(0),
            leader_present: Mutex::new(false),
            followers: Condvar::new(),
        }
    }

    /// The current generation: take it before the last look at the ring.
    pub(crate) fn ticket(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release increment in `finish_round`: a waiter that sees
        // the new generation also sees the ring state the leader's wake-up reflected.
        self.generation.load(Ordering::Acquire)
    }

    /// Sleep until an event arrives after `ticket` was taken, or `deadline` passes
    /// (`VchanError::TimedOut`). Returns early on any wake: the caller re-checks its ring.
    pub(crate) fn wait<E: EventSource>(
        &self,
        events: &E,
        ticket: u64,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut leader_present = lock(&self.leader_present);
        loop {
            if self.ticket() != ticket {
                return Ok(());
            }
            let timeout = remaining(deadline)?;
            if !*leader_present {
                *leader_present = true;
                drop(leader_present);
                let outcome = events.wait_pending(timeout).and_then(|ready| {
                    if ready {
                        take_events(events).map(drop)
                    } else {
                        Ok(())
                    }
                });
                self.finish_round();
                return outcome;
            }
            leader_present = match timeout {
                None => self
                    .followers
                    .wait(leader_present)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(t) => {
                    self.followers
                        .wait_timeout(leader_present, t)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Take whatever events are pending without sleeping (non-blocking mode), waking any other
    /// waiters so none of them misses what was taken. Returns how many were taken.
    pub(crate) fn take_pending<E: EventSource>(&self, events: &E) -> Result<usize> {
        let taken = take_events(events);
        if !matches!(taken, Ok(0)) {
            let _guard = lock(&self.leader_present);
            // ORDERING: as in `finish_round`.
            self.generation.fetch_add(1, Ordering::Release);
            self.followers.notify_all();
        }
        taken
    }

    fn finish_round(&self) {
        let mut leader_present = lock(&self.leader_present);
        *leader_present = false;
        // ORDERING: Release pairs with the Acquire in `ticket`; the increment happens under the
        // mutex, so a follower checking the generation before sleeping cannot miss it.
        self.generation.fetch_add(1, Ordering::Release);
        self.followers.notify_all();
    }
}

fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(VchanError::TimedOut)
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// Take delivered events and re-arm their ports; returns how many were taken.
fn take_events<E: EventSource>(events: &E) -> Result<usize> {
    let mut taken = 0;
    while taken < MAX_EVENTS_PER_WAKE && events.take_one()? {
        taken += 1;
    }
    Ok(taken)
}

/// Wait for the event fd to become readable. `Ok(false)` on timeout or interruption.
pub(crate) fn poll_readable(fd: &impl AsFd, timeout: Option<Duration>) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Round up so a sub-millisecond remainder does not spin.
        Some(t) => {
            let ms = i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(ready) => Ok(ready > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A loom model of the waiter (`--cfg vchan_loom`, see DESIGN.md "The model checker"): two
/// threads sleep on one handle, each for its own condition (a reader for data, a writer for
/// room), while the peer makes each true and sends an event, as it does after publishing an
/// index. Whoever leads takes both events; neither may sleep on after its condition is true.
#[cfg(all(test, vchan_loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::sync::{Arc, Notify};
    use loom::thread;

    /// An event channel as the model has it: delivered events counted, and a bell the leader
    /// sleeps on (a pending notification is kept, as an event channel keeps its pending bit).
    struct Events {
        pending: AtomicUsize,
        bell: Notify,
    }

    impl Events {
        fn deliver(&self) {
            self.pending.fetch_add(1, Ordering::SeqCst);
            self.bell.notify();
        }
    }

    impl EventSource for Events {
        fn wait_pending(&self, _timeout: Option<Duration>) -> Result<bool> {
            while self.pending.load(Ordering::SeqCst) == 0 {
                self.bell.wait();
            }
            Ok(true)
        }

        fn take_one(&self) -> Result<bool> {
            let mut seen = self.pending.load(Ordering::SeqCst);
            loop {
                if seen == 0 {
                    return Ok(false);
                }
                match self.pending.compare_exchange(
                    seen,
                    seen - 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return Ok(true),
                    Err(now) => seen = now,
                }
            }
        }
    }

    #[test]
    fn two_waiters_on_one_handle_never_sleep_past_their_event() {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(|| {
            let waiter = Arc::new(Waiter::new());
            let events = Arc::new(Events {
                pending: AtomicUsize::new(0),
                bell: Notify::new(),
            });
            let conditions = [
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            ];
            let sleepers: Vec<_> = conditions
                .iter()
                .map(|condition| {
                    let (waiter, events, condition) = (
                        Arc::clone(&waiter),
                        Arc::clone(&events),
                        Arc::clone(condition),
                    );
                    thread::spawn(move || loop {
                        // As the endpoint does: the ticket before the last look, then sleep.
                        let ticket = waiter.ticket();
                        if condition.load(Ordering::SeqCst) {
                            break;
                        }
                        waiter
                            .wait(&*events, ticket, None)
                            .expect("no error in the model");
                    })
                })
                .collect();
            for condition in &conditions {
                condition.store(true, Ordering::SeqCst);
                events.deliver();
            }
            for sleeper in sleepers {
                sleeper.join().expect("a sleeper");
            }
        });
    }
}
