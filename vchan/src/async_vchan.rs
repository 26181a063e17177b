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
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use xen_types::DomId;

use crate::backend::Backend;
use crate::channel::{Address, Channel, Hold, Notify, ReaderOf, RingSizes, State, Step, WriterOf};
use crate::endpoint::Vchan;
use crate::error::{Deferred, Op, Result, VchanError};
use crate::ring::Role;

mod liveness;
mod poll;
// The ring's chunks are not modelled under the model checker.
#[cfg(not(vchan_loom))]
mod splice;

use self::liveness::LivenessTimer;
use self::poll::{Fd, Io, Wakers, Way};
#[cfg(not(vchan_loom))]
pub use splice::AsyncSource;

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
        let (fd, timer) = match registered
            .map_err(|e| e.into_parts().1)
            .and_then(|fd| Ok((fd, LivenessTimer::new()?)))
        {
            Ok(registered) => registered,
            Err(e) => {
                let _ = channel.close();
                return Err(e);
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
                    liveness: Mutex::new(timer),
                    deferred: Deferred::default(),
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
}

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
