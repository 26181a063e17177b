//! How the blocking driver waits: every operation's loop ([`Vchan::drive`]), the short spin
//! before sleeping, the sleep on the event fd with its liveness look, the timeouts, and the
//! events owed to the peer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{lock, Vchan};
use crate::backend::Backend;
use crate::channel::{Look, Notify, Step, Want, LIVENESS_CHECK};
use crate::error::{Op, Result, VchanError};
use crate::spin::spin_until;

/// Which half an operation uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Read,
    Write,
}

/// Whether an operation spins before its final look, and for how many bytes (of data to read,
/// or of room to write).
#[derive(Clone, Copy)]
pub(super) enum Spin {
    /// Spin until the bytes (of data, or of room) the operation wants are worth a look.
    For(Want),
    /// Go straight to the final look.
    No,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Read => Way::Write,
            Way::Write => Way::Read,
        }
    }
}

/// Which way operations completed lately, for what a blocked operation spins for. Any byte is
/// worth taking at once when the peer is answering: a reply to what this end wrote, or room
/// freed by a peer that reads because this end read what it wrote. In a one-way stream, taking
/// every chunk the moment it lands keeps both ends on the same lines: the reader keeps loading
/// the control page's line that the writer stores to after every chunk, and copies each chunk
/// while the writer's stores to it are still in flight. Waiting for a quarter of the ring lets
/// the writer get ahead, and the operations that follow find their bytes without waiting
/// (measured on the simulated host, 1 MiB rings and 4 KiB writes: 0.78x the C library taking
/// every chunk, above it waiting). So a blocked stream operation waits for any byte if the
/// other way completed an operation since this way last waited, and for a batch otherwise.
#[derive(Debug, Default)]
pub(super) struct Turns {
    read: AtomicBool,
    written: AtomicBool,
}

impl Turns {
    fn flag(&self, way: Way) -> &AtomicBool {
        match way {
            Way::Read => &self.read,
            Way::Write => &self.written,
        }
    }

    /// An operation the `way` way completed.
    fn done(&self, way: Way) {
        // ORDERING: Relaxed, here and below: a hint for a choice of waiting, never for what is
        // in the ring; a lost update only changes one wait from a spin to a sleep or back. Load
        // first, so that a flag already set costs no store (and its line stays shared).
        let flag = self.flag(way);
        if !flag.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the other way completed an operation since this way last asked (and forget it).
    fn answered(&self, way: Way) -> bool {
        let flag = self.flag(way.other());
        let answered = flag.load(Ordering::Relaxed);
        if answered {
            flag.store(false, Ordering::Relaxed);
        }
        answered
    }
}

/// A timeout slot's value for "none".
pub(super) const NO_TIMEOUT: u64 = u64::MAX;

impl<B: Backend> Vchan<B> {
    /// The loop every operation shares: a quick look; a short spin (blocking mode) or taking the
    /// pending events (non-blocking); the final look, which asks the peer for an event; then
    /// sleep until it comes (or `WouldBlock`), and again. The half's lock is held only while the
    /// core looks, never while spinning or sleeping, so `data_ready`, `buffer_space` and the other
    /// direction never wait for a sleeper.
    pub(super) fn drive<T, E, R>(
        &self,
        way: Way,
        spin: Spin,
        mut op: impl FnMut(Look) -> std::result::Result<Step<T>, E>,
    ) -> std::result::Result<T, R>
    where
        R: From<E> + From<VchanError>,
    {
        self.deferred.take()?;
        let p = self.parts();
        // Read the clock only once the first look is blocked: an operation the ring answers at
        // once (the common case) costs no clock read, even with a timeout set.
        let mut deadline = None;
        let nonblocking = self.nonblocking.load(Ordering::Relaxed);
        let mut look = Look::Quick;
        let mut next_check = None;
        loop {
            // Taken before the final look: an event that lands between it and the sleep moves
            // the generation, so the sleep returns at once.
            let ticket = self.waiter.ticket();
            match (op(look)?, look) {
                (Step::Done(value, notify), _) => {
                    self.notify(notify);
                    self.turns.done(way);
                    return Ok(value);
                }
                (Step::Blocked, Look::Quick) => {
                    if !nonblocking && deadline.is_none() {
                        // The timeout counts from here, before the spin.
                        deadline = Some(self.deadline(way));
                    }
                    look = if nonblocking {
                        // So the fd turns readable only for news after the final look.
                        self.waiter.take_pending(&p.events)?;
                        Look::Final
                    } else {
                        match spin {
                            Spin::For(want) => {
                                let want = match self.turns.answered(way) {
                                    true => want,
                                    false => want.batched(),
                                };
                                spin_until(|| match way {
                                    Way::Read => lock(&p.reader).next_look(&p.link, want),
                                    Way::Write => lock(&p.writer).next_look(&p.link, want),
                                })
                                .unwrap_or(Look::Final)
                            }
                            Spin::No => Look::Final,
                        }
                    };
                }
                (Step::Blocked, Look::Final) => {
                    if nonblocking {
                        return Err(VchanError::WouldBlock.into());
                    }
                    let deadline = *deadline.get_or_insert_with(|| self.deadline(way));
                    self.sleep(ticket, deadline, &mut next_check)?;
                    look = Look::Quick;
                }
            }
        }
    }

    /// Sleep until an event after `ticket`, `deadline` (`TimedOut`), or the next liveness look
    /// (every [`LIVENESS_CHECK`] of sleep; `next_check` keeps the time across wakes).
    pub(super) fn sleep(
        &self,
        ticket: u64,
        deadline: Option<Instant>,
        next_check: &mut Option<Instant>,
    ) -> Result<()> {
        let p = self.parts();
        let check_at = *next_check.get_or_insert_with(|| Instant::now() + LIVENESS_CHECK);
        let wake_by = deadline.map_or(check_at, |d| d.min(check_at));
        match self.waiter.wait(&p.events, ticket, Some(wake_by)) {
            Err(VchanError::TimedOut) if deadline.is_none_or(|d| Instant::now() < d) => {}
            other => other?,
        }
        let now = Instant::now();
        if now >= check_at {
            *next_check = Some(now + LIVENESS_CHECK);
            if let Some(liveness) = p.link.liveness() {
                let store = std::sync::Arc::clone(lock(&p.hold).store());
                liveness.look(&*store);
            }
        }
        Ok(())
    }

    fn deadline(&self, way: Way) -> Option<Instant> {
        let timeout = match way {
            Way::Read => &self.read_timeout,
            Way::Write => &self.write_timeout,
        };
        match timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            nanos => Some(Instant::now() + Duration::from_nanos(nanos)),
        }
    }

    /// Send the event an operation owes. The data is already committed, so a failure cannot be
    /// reported as "nothing written" (the C blocking write loses its position that way): it is
    /// kept and reported by the next call.
    #[inline]
    pub(super) fn notify(&self, notify: Notify) {
        // Most operations owe nothing: that case costs one test, here in the caller.
        if notify.is_owed() {
            self.send_owed(notify);
        }
    }

    #[inline(never)]
    fn send_owed(&self, notify: Notify) {
        let p = self.parts();
        if let Err(source) = p.link.send(&p.events, notify) {
            self.deferred.keep(VchanError::Backend {
                op: Op::Notify,
                source,
            });
        }
    }
}

pub(super) fn encode_timeout(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => NO_TIMEOUT,
        Some(t) => u64::try_from(t.as_nanos())
            .unwrap_or(NO_TIMEOUT - 1)
            .min(NO_TIMEOUT - 1),
    }
}
