//! What both directions of an [`AsyncVchan`](super::AsyncVchan) share, and the loop that
//! drives the core's operations on the runtime.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::unix::AsyncFd;

use super::liveness::LivenessTimer;
use crate::backend::Backend;
use crate::channel::{ChannelError, LinkOf, Look, Notify, Step};
use crate::error::{Deferred, Op, Result, VchanError};

/// A file descriptor the runtime polls, owned elsewhere (the event channel's by the endpoint's
/// handle, which `AsyncVchan` closes only after the registration is gone).
pub(super) struct Fd(pub(super) RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Which way a task is waiting.
#[derive(Clone, Copy, Debug)]
pub(super) enum Way {
    Read = 0,
    Write = 1,
}

impl Way {
    pub(super) fn other(self) -> Way {
        match self {
            Way::Read => Way::Write,
            Way::Write => Way::Read,
        }
    }
}

/// The wakers of the task waiting to read and the task waiting to write. Woken as one by the
/// runtime when the event fd turns readable.
#[derive(Default)]
pub(super) struct Wakers {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl Wakers {
    pub(super) fn register(&self, way: Way, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[way as usize];
        match slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    pub(super) fn wake_one(&self, way: Way) {
        let waker = self.slots.lock().unwrap_or_else(PoisonError::into_inner)[way as usize].take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_one(Way::Read);
        self.wake_one(Way::Write);
    }
}

/// What both directions share: the registration, the link, the event channel, the wakers.
pub(super) struct Io<B: Backend> {
    pub(super) fd: AsyncFd<Fd>,
    pub(super) link: LinkOf<B>,
    pub(super) events: B::Events,
    pub(super) store: Arc<B::Store>,
    pub(super) wakers: Arc<Wakers>,
    /// A waker that wakes both directions, given to the runtime.
    pub(super) both: Waker,
    /// Moves whenever events are taken (by either direction).
    pub(super) generation: AtomicU64,
    pub(super) liveness: Mutex<LivenessTimer>,
    /// A notify that failed after its data was committed; reported by the next call.
    pub(super) deferred: Deferred,
}

/// How many attempts one poll makes before it yields to the runtime.
const MAX_RETRIES: usize = 16;

impl<B: Backend> Io<B> {
    fn ticket(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release increment in `take_pending`: a direction that
        // sees the new generation also sees the ring state the events announced.
        self.generation.load(Ordering::Acquire)
    }

    /// Take the delivered events and re-arm their ports; move the generation if any were taken.
    pub(super) fn take_pending(&self) -> Result<usize> {
        let mut taken = 0;
        // At most a bounded number per call, so a peer that notifies in a tight loop cannot keep
        // us here.
        while taken < 64 {
            match evtchn::EventChannel::pending(&self.events)
                .map_err(VchanError::backend(Op::TakeEvent))?
            {
                Some(port) => {
                    evtchn::EventChannel::unmask(&self.events, port)
                        .map_err(VchanError::backend(Op::Unmask))?;
                    taken += 1;
                }
                None => break,
            }
        }
        if taken > 0 {
            // ORDERING: see `ticket`.
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(taken)
    }

    /// Send the event an operation owes; a failure is kept for the next call (the data is
    /// already committed).
    pub(super) fn notify(&self, notify: Notify) {
        if let Err(source) = self.link.send(&self.events, notify) {
            self.deferred.keep(VchanError::Backend {
                op: Op::Notify,
                source,
            });
        }
    }

    /// Run the core's operation; when it is blocked, wait for news and try again.
    ///
    /// An attempt is a quick look, then (taking the pending events first, so the fd turns
    /// readable only for news after it) the final look. Two rules keep a reader task and a
    /// writer task on the one event channel from losing each other's wake-ups:
    /// - Whoever takes events wakes the other direction: taken events move the generation, so a
    ///   moved generation across an attempt, whatever its outcome, wakes the other direction. A
    ///   moved generation between the attempt and the registration of our own waker means an
    ///   event taken then may have been ours: try again rather than sleep. One taken after the
    ///   registration wakes us through our slot (the slot's mutex orders the two).
    /// - Whoever clears the runtime's readiness takes the events it announced. Otherwise an
    ///   event could stay in the fd with its port masked (so no new edge can come) while the
    ///   other direction sleeps.
    pub(super) fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        way: Way,
        mut op: impl FnMut(Look) -> std::result::Result<Step<T>, ChannelError>,
    ) -> Poll<Result<T>> {
        self.deferred.take()?;
        for _ in 0..MAX_RETRIES {
            let ticket = self.ticket();
            let outcome = self.attempt(&mut op);
            if self.ticket() != ticket {
                self.wakers.wake_one(way.other());
            }
            if let Some(value) = outcome? {
                return Poll::Ready(Ok(value));
            }
            self.wakers.register(way, cx.waker());
            if self.ticket() != ticket {
                continue;
            }
            let mut both = Context::from_waker(&self.both);
            match self.fd.poll_read_ready(&mut both) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    if self.take_pending()? > 0 {
                        self.wakers.wake_one(way.other());
                    }
                }
                Poll::Ready(Err(source)) => {
                    return Poll::Ready(Err(VchanError::Backend {
                        op: Op::WaitForEvent,
                        source,
                    }))
                }
                Poll::Pending => match self.poll_liveness(&mut both)? {
                    // The look is done: the state may have changed.
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
        // A peer that sends events without end must not keep this task from yielding: let the
        // runtime run others, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A quick look; then, taking the pending events first, the final one.
    fn attempt<T>(
        &self,
        op: &mut impl FnMut(Look) -> std::result::Result<Step<T>, ChannelError>,
    ) -> Result<Option<T>> {
        for look in [Look::Quick, Look::Final] {
            if look == Look::Final {
                self.take_pending()?;
            }
            if let Step::Done(value, notify) = op(look)? {
                self.notify(notify);
                return Ok(Some(value));
            }
        }
        Ok(None)
    }
}
