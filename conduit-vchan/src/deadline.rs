//! Deadlines for the async TLS handshakes, kept without the runtime's timer.
//!
//! `tokio::time` panics in a runtime built without `enable_time`, and nothing in tokio's API
//! says whether the current runtime has a timer; this crate's async API needs only I/O. So the
//! handshake deadlines are kept here: one thread for the whole process (as `futures-timer`
//! does), started when the first deadline is armed, sleeps until the earliest deadline and
//! wakes the task waiting on it. Arming, re-arming and disarming take one short lock; nothing
//! is on the data path (a deadline exists only while a handshake is under way).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A point in time a task waits for.
pub(crate) struct Deadline {
    /// `None`: never (a timeout too long to add to the clock).
    at: Option<Instant>,
    /// This deadline's entry in the timer, while armed.
    entry: Option<Key>,
}

/// An entry in the timer: its time, and a number that tells apart entries of the same time.
type Key = (Instant, u64);

impl Deadline {
    /// `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now().checked_add(timeout),
            entry: None,
        }
    }

    /// `Ready(Ok(()))` once the deadline has passed; until then the task of `cx` is woken when
    /// it passes. An error if the timer's thread cannot be started.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        if Instant::now() >= at {
            self.disarm();
            return Poll::Ready(Ok(()));
        }
        let mut entries = match TIMER.entries() {
            Ok(entries) => entries,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match self.entry.and_then(|key| entries.wakers.get_mut(&key)) {
            Some(waker) => waker.clone_from(cx.waker()),
            // Not armed yet, or the timer fired it between our look at the clock and now (it
            // woke whoever polled last; arm again for this task, and the timer fires at once).
            None => {
                let key = (at, entries.next_id);
                entries.next_id += 1;
                let earliest = entries
                    .wakers
                    .first_key_value()
                    .is_none_or(|(k, _)| key < *k);
                entries.wakers.insert(key, cx.waker().clone());
                self.entry = Some(key);
                if earliest {
                    TIMER.changed.notify_one();
                }
            }
        }
        Poll::Pending
    }

    fn disarm(&mut self) {
        if let Some(key) = self.entry.take() {
            TIMER.lock().wakers.remove(&key);
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The process's deadlines and the thread that fires them.
struct Timer {
    entries: Mutex<Entries>,
    /// Signalled when an entry becomes the earliest.
    changed: Condvar,
}

struct Entries {
    /// The tasks to wake, earliest first.
    wakers: BTreeMap<Key, Waker>,
    next_id: u64,
    /// The thread is running.
    started: bool,
}

static TIMER: Timer = Timer {
    entries: Mutex::new(Entries {
        wakers: BTreeMap::new(),
        next_id: 0,
        started: false,
    }),
    changed: Condvar::new(),
};

impl Timer {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entries, with the thread started.
    fn entries(&'static self) -> io::Result<MutexGuard<'static, Entries>> {
        let mut entries = self.lock();
        if !entries.started {
            std::thread::Builder::new()
                .name("conduit-tls-timer".to_owned())
                .spawn(move || self.run())
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot start the TLS handshake timer's thread: {e}"),
                    )
                })?;
            entries.started = true;
        }
        Ok(entries)
    }

    /// Wake each task when its deadline passes, for ever (the thread lives as long as the
    /// process; it sleeps while no deadline is armed).
    fn run(&self) {
        let mut entries = self.lock();
        loop {
            let now = Instant::now();
            let earliest = entries.wakers.first_key_value().map(|(&(at, _), _)| at);
            entries = match earliest {
                None => self
                    .changed
                    .wait(entries)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) if at <= now => {
                    let fired = entries.wakers.pop_first();
                    // Woken without the lock: a waker may poll, and so re-arm, at once.
                    drop(entries);
                    if let Some((_, waker)) = fired {
                        waker.wake();
                    }
                    self.lock()
                }
                Some(at) => {
                    self.changed
                        .wait_timeout(entries, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Run `work` until it completes or `timeout` passes (then `timed_out()` is the error).
pub(crate) async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = io::Result<T>>,
    timed_out: impl Fn() -> io::Error,
) -> io::Result<T> {
    let mut work = std::pin::pin!(work);
    let mut deadline = Deadline::after(timeout);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(outcome) = work.as_mut().poll(cx) {
            return Poll::Ready(outcome);
        }
        match deadline.poll_expired(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(timed_out())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that reports each wake on a channel.
    struct Report(Mutex<mpsc::Sender<()>>);

    impl Wake for Report {
        fn wake(self: Arc<Self>) {
            let _ = self.0.lock().unwrap().send(());
        }
    }

    #[test]
    fn a_deadline_wakes_its_task_when_it_passes_and_a_dropped_one_leaves_nothing() {
        let (tx, woken) = mpsc::channel();
        let waker = Waker::from(Arc::new(Report(Mutex::new(tx))));
        let mut cx = Context::from_waker(&waker);
        // The later one first, so that the earlier one becomes the earliest and moves the
        // timer's sleep.
        let mut late = Deadline::after(Duration::from_secs(3600));
        let mut soon = Deadline::after(Duration::from_millis(50));
        assert!(late.poll_expired(&mut cx).is_pending());
        assert!(soon.poll_expired(&mut cx).is_pending());
        woken
            .recv_timeout(Duration::from_secs(30))
            .expect("the deadline never woke its task");
        assert!(matches!(soon.poll_expired(&mut cx), Poll::Ready(Ok(()))));
        assert!(late.poll_expired(&mut cx).is_pending());
        let key = late.entry.expect("armed");
        drop(late);
        assert!(!TIMER.lock().wakers.contains_key(&key));
        // A timeout too long for the clock never expires, and arms nothing.
        let mut never = Deadline::after(Duration::MAX);
        assert!(never.poll_expired(&mut cx).is_pending());
        assert!(never.entry.is_none());
    }
}
