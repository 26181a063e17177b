//! The liveness look of a sleeping [`AsyncVchan`](super::AsyncVchan): a destroyed peer domain
//! says nothing on the ring or the event channel, so every
//! [`LIVENESS_CHECK`](crate::channel::LIVENESS_CHECK) while a task sleeps the store is asked
//! whether the peer's domain still exists. Timed by a timerfd registered with the runtime like
//! the event fd (a runtime built without tokio's timers serves too); the store read runs on
//! tokio's blocking pool.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::poll::Io;
use crate::backend::Backend;
use crate::channel::LIVENESS_CHECK;
use crate::error::{Op, Result, VchanError};

/// The timer of the liveness look, and the look in flight.
pub(super) struct LivenessTimer {
    timer: AsyncFd<Timer>,
    armed: bool,
    look: Option<tokio::task::JoinHandle<()>>,
}

impl LivenessTimer {
    /// A disarmed timer, registered with the current runtime (made with the endpoint, so that
    /// sleeping allocates nothing).
    pub(super) fn new() -> std::io::Result<LivenessTimer> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the registration owns the timer, whose fd stays open and the same until the
        // registration (with it) is dropped.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) };
        Ok(LivenessTimer {
            timer: registered.map_err(|e| e.into_parts().1)?,
            armed: false,
            look: None,
        })
    }
}

/// A timerfd, as the runtime polls it.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl<B: Backend> Io<B> {
    /// While a task sleeps: time the next liveness look and make it. Ready once a look has
    /// finished (the caller looks at the ring and the state again).
    pub(super) fn poll_liveness(&self, cx: &mut Context<'_>) -> Result<Poll<()>> {
        let Some(liveness) = self.link.liveness() else {
            return Ok(Poll::Pending);
        };
        let mut guard = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
        let LivenessTimer { timer, armed, look } = &mut *guard;
        let timer_error = |e: nix::errno::Errno| VchanError::Backend {
            op: Op::WaitForEvent,
            source: e.into(),
        };
        if let Some(running) = look {
            if Pin::new(running).poll(cx).is_pending() {
                return Ok(Poll::Pending);
            }
            *look = None;
            return Ok(Poll::Ready(()));
        }
        if !*armed {
            timer
                .get_ref()
                .0
                .set(
                    Expiration::OneShot(TimeSpec::from_duration(LIVENESS_CHECK)),
                    TimerSetTimeFlags::empty(),
                )
                .map_err(timer_error)?;
            *armed = true;
        }
        match timer.poll_read_ready(cx) {
            Poll::Ready(Ok(mut ready)) => {
                // Take the expiry (the count itself does not matter).
                let _ = nix::unistd::read(ready.get_inner().0.as_fd(), &mut [0u8; 8]);
                ready.clear_ready();
                *armed = false;
                let (liveness, store) = (Arc::clone(liveness), Arc::clone(&self.store));
                let mut running = tokio::task::spawn_blocking(move || {
                    liveness.look(&*store);
                });
                if Pin::new(&mut running).poll(cx).is_ready() {
                    return Ok(Poll::Ready(()));
                }
                *look = Some(running);
                Ok(Poll::Pending)
            }
            Poll::Ready(Err(source)) => Err(VchanError::Backend {
                op: Op::WaitForEvent,
                source,
            }),
            Poll::Pending => Ok(Poll::Pending),
        }
    }
}
