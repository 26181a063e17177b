//! The tokio driver: [`AsyncVchan`], the channel core driven by a runtime. The event fd is
//! registered with the runtime (`AsyncFd`, read readiness only); everything else is the core's.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use vchan::sim::SimXen;
//! use vchan::{Address, AsyncVchan, RingSizes};
//! use xen_types::DomId;
//!
//! let xen = SimXen::new();
//! let dom0 = xen.domain(DomId(0));
//! let guest = xen.create_domain(DomId(1))?;
//! let mut server = AsyncVchan::server(&dom0, DomId(1), &Address::Port(5), RingSizes::default()).await?;
//! let mut client = AsyncVchan::client(&guest, DomId(0), &Address::Port(5), None).await?;
//! client.write_all(b"hello, dom0").await?;
//! client.shutdown().await?;
//! let mut received = String::new();
//! server.read_to_string(&mut received).await?;
//! assert_eq!(received, "hello, dom0");
//! # drop((server, client));
//! # xen.check_leaks().unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! One event channel carries the news of both directions, and tokio keeps one waker per
//! direction of interest on an fd, so a reader task and a writer task (`tokio::io::split`) that
//! both waited on the fd directly would overwrite each other's waker. Instead each direction
//! keeps its own waker here, and the fd is polled with a waker that wakes both. And since taking
//! the pending events (which a blocked attempt does before its final look at the ring) can take
//! an event the other direction was waiting for, a direction that took events wakes the other
//! one: no task sleeps on news that another task swallowed.
//!
//! The liveness look (a destroyed peer domain says nothing on the ring) runs every
//! [`LIVENESS_CHECK`](crate::channel::LIVENESS_CHECK) while a task sleeps, timed by a timerfd
//! registered like the event fd (so a runtime built without tokio's timers serves too), the
//! store read itself on tokio's blocking pool.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use xen_types::memory::fd as zero_copy;
use xen_types::DomId;

use crate::backend::Backend;
use crate::channel::{
    Address, Channel, ChannelError, Hold, LinkOf, Look, Notify, ReaderOf, RingSizes, State, Step,
    WriterOf, LIVENESS_CHECK,
};
use crate::endpoint::Vchan;
use crate::error::{Op, Result, VchanError};
use crate::ring::Role;

/// A file descriptor the runtime polls, owned elsewhere (the event channel's by the endpoint's
/// handle, which `AsyncVchan` closes only after the registration is gone).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Which way a task is waiting.
#[derive(Clone, Copy, Debug)]
enum Way {
    Read = 0,
    Write = 1,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Read => Way::Write,
            Way::Write => Way::Read,
        }
    }
}

/// The wakers of the task waiting to read and the task waiting to write. Woken as one by the
/// runtime when the event fd turns readable.
#[derive(Default)]
struct Wakers {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl Wakers {
    fn register(&self, way: Way, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[way as usize];
        match slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake_one(&self, way: Way) {
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

/// A vchan endpoint for tokio: `AsyncRead + AsyncWrite`; `poll_shutdown` shuts down the writing
/// side (the peer reads end-of-stream, and this end can still read its reply). Dropping it
/// closes the channel.
///
/// Create it with [`AsyncVchan::server`] or [`AsyncVchan::client`] (which run the set-up,
/// including a client's wait for its server, off the runtime's worker threads), or move a
/// blocking endpoint over with [`AsyncVchan::new`]. It must be used inside a tokio runtime with
/// I/O enabled (timers are not needed).
pub struct AsyncVchan<B: Backend> {
    /// `Some` until drop or `into_inner`.
    open: Option<Open<B>>,
}

struct Open<B: Backend> {
    /// First: its registration goes before the channel closes the fd.
    io: Io<B>,
    reader: ReaderOf<B>,
    writer: WriterOf<B>,
    hold: Hold<B>,
}

/// What both directions share: the registration, the link, the event channel, the wakers.
struct Io<B: Backend> {
    fd: AsyncFd<Fd>,
    link: LinkOf<B>,
    events: B::Events,
    store: Arc<B::Store>,
    wakers: Arc<Wakers>,
    /// A waker that wakes both directions, given to the runtime.
    both: Waker,
    /// Moves whenever events are taken (by either direction).
    generation: AtomicU64,
    liveness: Mutex<LivenessTimer>,
    /// Set when a notify failed after data was committed; reported by the next call.
    deferred: Mutex<Option<VchanError>>,
    notify_failed: AtomicBool,
}

/// The timer of the liveness look, and the look in flight.
#[derive(Default)]
struct LivenessTimer {
    timer: Option<AsyncFd<Timer>>,
    armed: bool,
    look: Option<tokio::task::JoinHandle<()>>,
}

/// A timerfd, as the runtime polls it.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// How many attempts one poll makes before it yields to the runtime.
const MAX_RETRIES: usize = 16;

impl<B: Backend> AsyncVchan<B> {
    /// Move a blocking endpoint over (inside a runtime).
    pub fn new(vchan: Vchan<B>) -> io::Result<Self> {
        AsyncVchan::from_channel(vchan.into_channel())
    }

    /// Drive a channel the core built (inside a runtime). On failure the channel is closed.
    pub fn from_channel(channel: Channel<B>) -> io::Result<Self> {
        let raw = Fd(channel.events.as_fd().as_raw_fd());
        // SAFETY: the fd is the event channel's, owned by `channel.events`, which neither closes
        // nor replaces it while it lives; the registration is dropped before it (`take_channel`
        // drops `fd` before handing the channel on or closing it, and `Io` declares `fd` before
        // `events`, so it drops first too).
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(raw, Interest::READABLE) };
        let fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                let _ = channel.close();
                return Err(e.into_parts().1);
            }
        };
        let Channel {
            link,
            reader,
            writer,
            events,
            hold,
        } = channel;
        let wakers = Arc::new(Wakers::default());
        Ok(AsyncVchan {
            open: Some(Open {
                io: Io {
                    fd,
                    link,
                    events,
                    store: Arc::clone(hold.store()),
                    both: Waker::from(Arc::clone(&wakers)),
                    wakers,
                    generation: AtomicU64::new(0),
                    liveness: Mutex::default(),
                    deferred: Mutex::new(None),
                    notify_failed: AtomicBool::new(false),
                },
                reader,
                writer,
                hold,
            }),
        })
    }

    fn open(&self) -> &Open<B> {
        match &self.open {
            Some(open) => open,
            None => unreachable!("an endpoint is used only until drop or into_inner"),
        }
    }

    fn open_mut(&mut self) -> &mut Open<B> {
        match &mut self.open {
            Some(open) => open,
            None => unreachable!("an endpoint is used only until drop or into_inner"),
        }
    }

    /// The parts, the registration gone; `None` once taken.
    fn take_channel(&mut self) -> Option<Channel<B>> {
        let Open {
            io,
            reader,
            writer,
            hold,
        } = self.open.take()?;
        let Io {
            fd, link, events, ..
        } = io;
        drop(fd);
        Some(Channel {
            link,
            reader,
            writer,
            events,
            hold,
        })
    }

    /// Take the endpoint back, as a blocking one.
    pub fn into_inner(mut self) -> Vchan<B> {
        match self.take_channel() {
            Some(channel) => Vchan::from_channel(channel),
            None => unreachable!("an endpoint is used only until drop or into_inner"),
        }
    }

    /// Whether this is the serving end.
    pub fn is_server(&self) -> bool {
        self.open().io.link.role() == Role::Server
    }

    /// The connection's state, from the peer's live byte.
    pub fn state(&self) -> Result<State> {
        Ok(self.open().io.link.state()?)
    }

    /// The capacity of the ring this end reads.
    pub fn read_capacity(&self) -> usize {
        self.open().reader.capacity()
    }

    /// The capacity of the ring this end writes.
    pub fn write_capacity(&self) -> usize {
        self.open().writer.capacity()
    }

    /// Bytes ready to read now; also asks the peer for an event when it writes more.
    pub fn data_ready(&self) -> Result<usize> {
        Ok(self.open().reader.data_ready()?)
    }

    /// Bytes that can be written now; also asks the peer for an event when it frees more.
    pub fn buffer_space(&self) -> Result<usize> {
        Ok(self.open().writer.buffer_space()?)
    }

    /// Wait until the peer has read everything written (or has closed). A libxenvchan peer sees
    /// the end of the stream only when the channel closes, and may drop what its ring still
    /// holds when it sees the close: waiting for this before closing delivers every byte.
    pub async fn drained(&self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_drained(cx)).await
    }

    /// Poll form of [`drained`](AsyncVchan::drained), for hand-written futures.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Open { io, writer, .. } = self.open();
        io.poll_io(cx, Way::Write, |_| {
            Ok(match writer.drained(&io.link)? {
                true => Step::Done((), Notify::NONE),
                false => Step::Blocked,
            })
        })
    }

    /// Wait until the client has connected (server) or the peer has closed.
    pub async fn wait_connected(&self) -> Result<State> {
        std::future::poll_fn(|cx| self.poll_connected(cx)).await
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<Result<State>> {
        let io = &self.open().io;
        // No direction waits here; the caller's waker goes in the read slot, which every event
        // wakes.
        io.poll_io(cx, Way::Read, |_| {
            Ok(match io.link.state()? {
                State::WaitingForPeer => Step::Blocked,
                state => Step::Done(state, Notify::NONE),
            })
        })
    }

    /// Fill the ring straight from `source` (a tokio socket), up to `max` bytes, with one
    /// `read(2)` into the ring's free space and no buffer in between: the bytes read, 0 at the
    /// end of `source`. Waits for room in the ring and for `source` to be readable.
    pub fn poll_fill_from<S: AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        source: &S,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let Open { io, writer, .. } = self.open_mut();
        loop {
            ready!(source.poll_read_ready(cx))?;
            let room = ready!(io.poll_io(cx, Way::Write, |look| Ok(
                match writer.writable(&io.link, max, look)? {
                    Step::Done(chunks, _) => Step::Done(chunks.len(), Notify::NONE),
                    Step::Blocked => Step::Blocked,
                }
            )))?;
            // The room found stays ours: nobody else writes this ring.
            let chunks = match writer.writable(&io.link, room, Look::Quick)? {
                Step::Done(chunks, _) => chunks,
                Step::Blocked => continue,
            };
            match source.try_read_io(|fd| zero_copy::read_into(fd, &[chunks.first, chunks.second]))
            {
                Ok(n) => {
                    io.notify(writer.commit(n));
                    return Poll::Ready(Ok(n));
                }
                // Readiness was cleared: the next turn registers for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Drain the ring straight into `sink` (a tokio socket), up to `max` bytes, with one
    /// `write(2)` from the ring and no buffer in between: the bytes written, 0 at the end of the
    /// stream. Waits for data in the ring and for `sink` to be writable.
    pub fn poll_drain_to<S: AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &S,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let Open { io, reader, .. } = self.open_mut();
        loop {
            let ready_bytes = ready!(io.poll_io(cx, Way::Read, |look| Ok(
                match reader.readable(&io.link, max, look)? {
                    Step::Done(chunks, _) => Step::Done(chunks.len(), Notify::NONE),
                    Step::Blocked => Step::Blocked,
                }
            )))?;
            if ready_bytes == 0 {
                return Poll::Ready(Ok(0));
            }
            ready!(sink.poll_write_ready(cx))?;
            let chunks = match reader.readable(&io.link, ready_bytes, Look::Quick)? {
                Step::Done(chunks, _) if !chunks.is_empty() => chunks,
                _ => continue,
            };
            match sink.try_write_io(|fd| zero_copy::write_from(fd, &[chunks.first, chunks.second]))
            {
                Ok(n) => {
                    io.notify(reader.consume(n));
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A tokio socket the async driver can move bytes to and from with no buffer in between
/// (`TcpStream`, `UnixStream`): its readiness, and a raw I/O call on its fd that clears the
/// readiness when it would block.
pub trait AsyncSource {
    /// Wait until it may be readable.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Wait until it may be writable.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Run a read on its fd (`WouldBlock` clears the read readiness).
    fn try_read_io(
        &self,
        op: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize>;
    /// Run a write on its fd (`WouldBlock` clears the write readiness).
    fn try_write_io(
        &self,
        op: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize>;
}

macro_rules! async_source {
    ($($ty:ty),*) => {$(
        impl AsyncSource for $ty {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$ty>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$ty>::poll_write_ready(self, cx)
            }
            fn try_read_io(
                &self,
                op: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<usize>,
            ) -> io::Result<usize> {
                self.try_io(Interest::READABLE, || op(self.as_fd()))
            }
            fn try_write_io(
                &self,
                op: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<usize>,
            ) -> io::Result<usize> {
                self.try_io(Interest::WRITABLE, || op(self.as_fd()))
            }
        }
    )*};
}
async_source!(tokio::net::TcpStream, tokio::net::UnixStream);

impl<B: Backend> Io<B> {
    fn ticket(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release increment in `take_pending`: a direction that
        // sees the new generation also sees the ring state the events announced.
        self.generation.load(Ordering::Acquire)
    }

    /// Take the delivered events and re-arm their ports; move the generation if any were taken.
    fn take_pending(&self) -> Result<usize> {
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
    fn notify(&self, notify: Notify) {
        if let Err(source) = self.link.send(&self.events, notify) {
            *self.deferred.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(VchanError::Backend {
                    op: Op::Notify,
                    source,
                });
            self.notify_failed.store(true, Ordering::Release);
        }
    }

    fn check_deferred(&self) -> Result<()> {
        if !self.notify_failed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        match self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
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
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        way: Way,
        mut op: impl FnMut(Look) -> std::result::Result<Step<T>, ChannelError>,
    ) -> Poll<Result<T>> {
        self.check_deferred()?;
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

    /// While a task sleeps: time the next liveness look and make it. Ready once a look has
    /// finished (the caller looks at the ring and the state again).
    fn poll_liveness(&self, cx: &mut Context<'_>) -> Result<Poll<()>> {
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
        let timer = match timer {
            Some(timer) => timer,
            None => {
                let fd = TimerFd::new(
                    ClockId::CLOCK_MONOTONIC,
                    TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
                )
                .map_err(timer_error)?;
                // SAFETY: the registration owns the timer, whose fd stays open and the same
                // until the registration (with it) is dropped.
                #[allow(unsafe_code)]
                let registered =
                    unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) };
                timer.insert(registered.map_err(|e| VchanError::Backend {
                    op: Op::Register,
                    source: e.into_parts().1,
                })?)
            }
        };
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

use std::future::Future as _;

impl<B> AsyncVchan<B>
where
    B: Backend + Clone + Send + 'static,
    Vchan<B>: Send,
{
    /// Serve `client` at `address` (see [`Vchan::server`]). Returns at once, before the client
    /// connects; see [`wait_connected`](Self::wait_connected).
    pub async fn server(
        backend: &B,
        client: DomId,
        address: &Address,
        sizes: RingSizes,
    ) -> Result<Self> {
        let (backend, address) = (backend.clone(), address.clone());
        let vchan = blocking(move || Vchan::server(&backend, client, &address, sizes)).await?;
        AsyncVchan::new(vchan).map_err(VchanError::backend(Op::Register))
    }

    /// Connect to `server`'s vchan at `address` (see [`Vchan::client`]), waiting up to `wait`
    /// for the server to publish itself. The wait runs on tokio's blocking pool, not on a
    /// worker thread.
    pub async fn client(
        backend: &B,
        server: DomId,
        address: &Address,
        wait: Option<Duration>,
    ) -> Result<Self> {
        let (backend, address) = (backend.clone(), address.clone());
        let vchan = blocking(move || Vchan::client(&backend, server, &address, wait)).await?;
        AsyncVchan::new(vchan).map_err(VchanError::backend(Op::Register))
    }
}

/// Run blocking set-up on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VchanError::Backend {
            op: Op::RunSetup,
            source: io::Error::other(e.to_string()),
        })?
}

impl<B: Backend> AsyncRead for AsyncVchan<B> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Open { io, reader, .. } = self.get_mut().open_mut();
        let unfilled = buf.initialize_unfilled();
        let n = ready!(io.poll_io(cx, Way::Read, |look| reader.read(&io.link, unfilled, look)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<B: Backend> AsyncWrite for AsyncVchan<B> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Open { io, writer, .. } = self.get_mut().open_mut();
        io.poll_io(cx, Way::Write, |look| writer.write(&io.link, buf, look))
            .map_err(io::Error::from)
    }

    /// Gathers with no copy of ours: the slices go into the ring one after another.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Open { io, writer, .. } = self.get_mut().open_mut();
        // At most a handful of slices are looked at per call (no allocation for the list).
        let mut slices: [&[u8]; 8] = [&[]; 8];
        for (slot, buf) in slices.iter_mut().zip(bufs) {
            *slot = buf;
        }
        let count = bufs.len().min(slices.len());
        io.poll_io(cx, Way::Write, |look| {
            writer.write_vectored(&io.link, &slices[..count], look)
        })
        .map_err(io::Error::from)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the ring, visible to the peer: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Open { io, writer, .. } = self.get_mut().open_mut();
        let notify = writer.shutdown(&io.link);
        Poll::Ready(io.link.send(&io.events, notify).map_err(|source| {
            VchanError::Backend {
                op: Op::NotifyShutdown,
                source,
            }
            .into()
        }))
    }
}

// Nothing is pinned structurally: the endpoint moves freely between polls.
impl<B: Backend> Unpin for AsyncVchan<B> {}

impl<B: Backend> Drop for AsyncVchan<B> {
    fn drop(&mut self) {
        if let Some(channel) = self.take_channel() {
            // Errors cannot be reported from drop.
            let _ = channel.close();
        }
    }
}

impl<B: Backend> std::fmt::Debug for AsyncVchan<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("AsyncVchan");
        if let Some(open) = &self.open {
            s.field("link", &open.io.link);
        }
        s.finish_non_exhaustive()
    }
}
