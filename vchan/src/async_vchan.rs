//! An async vchan for tokio: [`AsyncVchan`] implements `AsyncRead` and `AsyncWrite` over the
//! endpoint's event fd, registered with the runtime through `AsyncFd`.
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
//! the pending events (which a would-block attempt does before its final look at the ring) can
//! take an event the other direction was waiting for, a direction that took events wakes the
//! other one: no task sleeps on news that another task swallowed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use xen_types::DomId;

use crate::backend::Backend;
use crate::endpoint::{Address, RingSizes, State, Vchan};
use crate::error::{Result, VchanError};

/// The endpoint's event fd, as the runtime sees it. It does not own the fd: the endpoint does,
/// and [`AsyncVchan`] drops the registration before the endpoint.
struct EventFd(RawFd);

impl AsRawFd for EventFd {
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
/// side ([`Vchan::shutdown_write`]): the peer reads end-of-stream, and this end can still read
/// its reply. Dropping it closes the channel.
///
/// Create it with [`AsyncVchan::server`] or [`AsyncVchan::client`] (which run the blocking
/// set-up, including a client's wait for its server, off the runtime's worker threads), or wrap
/// a connected [`Vchan`] with [`AsyncVchan::new`]. It must be used inside a tokio runtime with
/// I/O enabled.
pub struct AsyncVchan<B: Backend> {
    /// Declared before `vchan`, so the registration goes before the endpoint closes the fd.
    fd: AsyncFd<EventFd>,
    vchan: Vchan<B>,
    wakers: Arc<Wakers>,
    /// A waker that wakes both directions, given to the runtime.
    both: Waker,
}

impl<B: Backend> AsyncVchan<B> {
    /// Wrap a connected (or serving) endpoint. It is switched to non-blocking mode.
    pub fn new(vchan: Vchan<B>) -> io::Result<Self> {
        vchan.set_nonblocking(true);
        let raw = EventFd(vchan.as_fd().as_raw_fd());
        // SAFETY: the fd is the endpoint's event-channel fd, owned by `vchan`'s handle, which
        // neither closes nor replaces it while the endpoint lives. The registration is dropped
        // before the endpoint: `fd` is declared before `vchan` in the struct (fields drop in
        // order) and `into_inner` drops it first.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(raw, Interest::READABLE) }?;
        let wakers = Arc::new(Wakers::default());
        let both = Waker::from(Arc::clone(&wakers));
        Ok(AsyncVchan {
            fd,
            vchan,
            wakers,
            both,
        })
    }

    /// The endpoint underneath (in non-blocking mode).
    pub fn get_ref(&self) -> &Vchan<B> {
        &self.vchan
    }

    /// Take the endpoint back, in blocking mode.
    pub fn into_inner(self) -> Vchan<B> {
        let AsyncVchan { fd, vchan, .. } = self;
        drop(fd);
        vchan.set_nonblocking(false);
        vchan
    }

    /// Wait until the peer has read everything written (or has closed). A libxenvchan peer sees
    /// the end of the stream only when the channel closes, and may drop what its ring still
    /// holds when it sees the close: waiting for this before closing delivers every byte.
    pub async fn drained(&self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_drained(cx)).await
    }

    /// Poll form of [`drained`](AsyncVchan::drained), for hand-written futures.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let capacity = self.vchan.write_capacity();
        self.poll_io(cx, Way::Write, |vchan| {
            // `buffer_space` asks the peer for an event when it frees more.
            if vchan.buffer_space()? >= capacity || vchan.state()? == State::PeerClosed {
                Ok(())
            } else {
                Err(VchanError::WouldBlock)
            }
        })
        .map_err(|source| VchanError::Backend {
            op: "wait for the peer to read what was written",
            source,
        })
    }

    /// Wait until the client has connected (server) or the peer has closed.
    pub async fn wait_connected(&self) -> Result<State> {
        std::future::poll_fn(|cx| self.poll_connected(cx)).await
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<Result<State>> {
        // No direction waits here; the caller's waker goes in the read slot, which every event
        // wakes.
        self.poll_io(cx, Way::Read, |vchan| {
            // Take the events first, so the fd turns readable only for news after the look.
            vchan.take_pending_events()?;
            match vchan.state()? {
                State::WaitingForPeer => Err(VchanError::WouldBlock),
                state => Ok(state),
            }
        })
        .map_err(|source| VchanError::Backend {
            op: "wait for the peer to connect",
            source,
        })
    }

    /// Run a non-blocking attempt; on `WouldBlock`, wait for news and try again.
    ///
    /// Two rules keep a reader task and a writer task on the one event channel from losing
    /// each other's wake-ups:
    /// - Whoever takes events wakes the other direction. An attempt takes the pending events
    ///   before its final look at the ring (and so may take an event the other direction is
    ///   waiting for); taken events move the waiter's generation, so a moved generation across
    ///   an attempt, whatever its outcome, wakes the other direction. A moved generation between
    ///   the ticket and the registration of our own waker means an event taken then may have
    ///   been ours: try again rather than sleep. One taken after the registration wakes us
    ///   through our slot (the slot's mutex orders the two).
    /// - Whoever clears the runtime's readiness takes the events it announced. Otherwise an
    ///   event could stay in the fd with its port masked (so no new edge can come) while the
    ///   other direction sleeps.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        way: Way,
        mut attempt: impl FnMut(&Vchan<B>) -> Result<T>,
    ) -> Poll<io::Result<T>> {
        let other = match way {
            Way::Read => Way::Write,
            Way::Write => Way::Read,
        };
        for _ in 0..MAX_RETRIES {
            let ticket = self.vchan.waiter_ticket();
            let outcome = attempt(&self.vchan);
            if self.vchan.waiter_ticket() != ticket {
                self.wakers.wake_one(other);
            }
            match outcome {
                Err(VchanError::WouldBlock) => {}
                other => return Poll::Ready(other.map_err(io::Error::from)),
            }
            self.wakers.register(way, cx.waker());
            if self.vchan.waiter_ticket() != ticket {
                continue;
            }
            let mut both = Context::from_waker(&self.both);
            match self.fd.poll_read_ready(&mut both) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    if self.vchan.take_pending_events()? > 0 {
                        self.wakers.wake_one(other);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A peer that sends events without end must not keep this task from yielding: let the
        // runtime run others, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How many attempts one poll makes before it yields to the runtime.
const MAX_RETRIES: usize = 16;

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
        AsyncVchan::new(vchan).map_err(VchanError::backend("register the event channel"))
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
        AsyncVchan::new(vchan).map_err(VchanError::backend("register the event channel"))
    }
}

/// Run blocking set-up on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VchanError::Backend {
            op: "run the blocking set-up",
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
        let this: &Self = &self;
        let n = match this.poll_io(cx, Way::Read, |v| v.read(buf.initialize_unfilled())) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
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
        let this: &Self = &self;
        this.poll_io(cx, Way::Write, |v| v.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the ring, visible to the peer: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this: &Self = &self;
        Poll::Ready(this.vchan.shutdown_write().map_err(io::Error::from))
    }
}

impl<B: Backend> std::fmt::Debug for AsyncVchan<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncVchan")
            .field("vchan", &self.vchan)
            .finish_non_exhaustive()
    }
}
