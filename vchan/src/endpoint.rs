//! The blocking driver: [`Vchan`], the channel core driven by threads. It adds only what the
//! core leaves to a driver: locks around the two halves (one thread can read while another
//! writes), a short spin before sleeping, sleeping on the event fd (the [`Waiter`] shares it
//! between threads), timeouts, non-blocking mode, and the liveness look every
//! [`LIVENESS_CHECK`] of sleep.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use xen_types::{DomId, Port};

use crate::backend::Backend;
use crate::channel::{
    self, Address, Channel, ChannelError, Dial, Hold, LinkOf, Notify, ReaderOf, RingSizes, State,
    Step, Want, WriterOf,
};
use crate::error::{Deferred, Op, Result, VchanError};
use crate::ring::Role;
use crate::wait::Waiter;

mod drive;
#[cfg(not(vchan_loom))]
mod splice;

use drive::{encode_timeout, Spin, Turns, Way, NO_TIMEOUT};

/// One end of a vchan: a byte stream (or a packet channel) to the peer domain.
///
/// Like `TcpStream`, `Read` and `Write` are implemented for the value and for a shared reference,
/// so one thread can read while another writes. Blocking by default; see
/// [`set_nonblocking`](Vchan::set_nonblocking). The fd from [`AsFd`] becomes readable when the peer
/// sends an event.
pub struct Vchan<B: Backend> {
    /// `Some` from construction until `close` or `drop` (or `into_channel`), after which nothing
    /// uses the endpoint.
    parts: Option<Parts<B>>,
    waiter: Waiter,
    nonblocking: AtomicBool,
    /// Which way operations completed lately: whether a blocked one spins or sleeps.
    turns: Turns,
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
    /// A notify that failed after its data was committed; reported by the next call.
    deferred: Deferred,
}

/// The core's parts, as this driver keeps them.
struct Parts<B: Backend> {
    link: LinkOf<B>,
    /// The two halves on cache lines of their own: a reading and a writing thread take their
    /// locks and move their private indices without bouncing one line between CPUs.
    reader: CachePadded<Mutex<ReaderOf<B>>>,
    writer: CachePadded<Mutex<WriterOf<B>>>,
    events: B::Events,
    hold: Mutex<Hold<B>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Backend> Vchan<B> {
    /// Serve `client` at `address`: share the control page and rings, publish the keys and
    /// return at once. The client may connect later: see [`state`](Self::state) and
    /// [`wait_connected`](Self::wait_connected). Data written before it connects waits in the ring.
    pub fn server(backend: &B, client: DomId, address: &Address, sizes: RingSizes) -> Result<Self> {
        channel::serve(backend, client, address, sizes).map(Vchan::from_channel)
    }

    /// Connect to `server`'s vchan at `address`. With `wait` set, wait up to that long for the
    /// server to publish itself; with `None`, fail at once if it has not.
    pub fn client(
        backend: &B,
        server: DomId,
        address: &Address,
        wait: Option<Duration>,
    ) -> Result<Self> {
        let deadline = wait.map(|t| Instant::now() + t);
        let mut dial = Dial::new(backend, server, address)?;
        loop {
            if let Some(channel) = dial.attempt(backend, deadline.is_some())? {
                return Ok(Vchan::from_channel(channel));
            }
            let left = deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Err(dial.no_server());
            }
            // The store tells of the next change under the path (or the time runs out).
            xenstore::XenStore::next_watch_event(dial.store(), Some(left))
                .map_err(VchanError::Xenstore)?;
        }
    }

    /// Drive a channel the core built (or took back from another driver).
    pub fn from_channel(channel: Channel<B>) -> Self {
        let Channel {
            link,
            reader,
            writer,
            events,
            hold,
        } = channel;
        Vchan {
            parts: Some(Parts {
                link,
                reader: CachePadded::new(Mutex::new(reader)),
                writer: CachePadded::new(Mutex::new(writer)),
                events,
                hold: Mutex::new(hold),
            }),
            waiter: Waiter::new(),
            nonblocking: AtomicBool::new(false),
            turns: Turns::default(),
            read_timeout: AtomicU64::new(NO_TIMEOUT),
            write_timeout: AtomicU64::new(NO_TIMEOUT),
            deferred: Deferred::default(),
        }
    }

    /// Give the channel back to the core (for another driver), still open.
    pub fn into_channel(mut self) -> Channel<B> {
        match self.take_channel() {
            Some(channel) => channel,
            None => unreachable!("an endpoint is open until close or drop"),
        }
    }

    /// The parts, out of their locks; `None` once taken.
    fn take_channel(&mut self) -> Option<Channel<B>> {
        let Parts {
            link,
            reader,
            writer,
            events,
            hold,
        } = self.parts.take()?;
        fn into<T>(mutex: Mutex<T>) -> T {
            mutex.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
        Some(Channel {
            link,
            reader: into(CachePadded::into_inner(reader)),
            writer: into(CachePadded::into_inner(writer)),
            events,
            hold: into(hold),
        })
    }

    /// The open endpoint's parts: there from construction until `close`, `drop` or
    /// `into_channel`, which take the endpoint, so no call can come after them.
    #[inline]
    fn parts(&self) -> &Parts<B> {
        match &self.parts {
            Some(parts) => parts,
            None => unreachable!("an endpoint is used only until close or drop"),
        }
    }

    /// Whether this is the serving end.
    pub fn is_server(&self) -> bool {
        self.parts().link.role() == Role::Server
    }

    /// This end's event-channel port.
    pub fn port(&self) -> Port {
        self.parts().link.port()
    }

    /// The capacity of the ring this end reads.
    pub fn read_capacity(&self) -> usize {
        lock(&self.parts().reader).capacity()
    }

    /// The capacity of the ring this end writes.
    pub fn write_capacity(&self) -> usize {
        lock(&self.parts().writer).capacity()
    }

    /// The connection's state, from the peer's live byte.
    pub fn state(&self) -> Result<State> {
        Ok(self.parts().link.state()?)
    }

    /// Switch between blocking (the default) and non-blocking mode, where operations that cannot
    /// proceed fail with `WouldBlock` and the caller polls the fd.
    pub fn set_nonblocking(&self, nonblocking: bool) {
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
    }

    /// Limit how long a blocking read or `recv` waits (`None`: for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        self.read_timeout
            .store(encode_timeout(timeout), Ordering::Relaxed);
    }

    /// Limit how long a blocking write or `send` waits (`None`: for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.write_timeout
            .store(encode_timeout(timeout), Ordering::Relaxed);
    }

    /// Bytes ready to read now; also asks the peer for an event when it writes more. Never waits
    /// for a blocked `read` or `recv` on another thread.
    pub fn data_ready(&self) -> Result<usize> {
        Ok(lock(&self.parts().reader).data_ready()?)
    }

    /// Bytes that can be written now; also asks the peer for an event when it frees more. Never
    /// waits for a blocked `write` or `send` on another thread.
    pub fn buffer_space(&self) -> Result<usize> {
        Ok(lock(&self.parts().writer).buffer_space()?)
    }

    /// Read what is available, up to `buf.len()` bytes. Blocks (in blocking mode) until at least
    /// one byte is ready; `Ok(0)` means the peer closed (or shut down writing) and everything it
    /// wrote has been read.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        let p = self.parts();
        self.drive(Way::Read, Spin::For(Want::Stream), |look| {
            lock(&p.reader).read(&p.link, buf, look)
        })
    }

    /// Receive exactly `buf.len()` bytes as one unit, or nothing. Fails with `MessageTooLarge`
    /// if the ring can never hold that much, and `PeerClosed` if the peer closed with fewer
    /// bytes left in the ring.
    pub fn recv(&self, buf: &mut [u8]) -> Result<()> {
        let p = self.parts();
        self.drive(Way::Read, Spin::For(Want::Packet(buf.len())), |look| {
            lock(&p.reader).recv(&p.link, buf, look)
        })
    }

    /// Write as much of `buf` as fits now. Blocks (in blocking mode) until at least one byte fits.
    /// Fails with `PeerClosed` once the peer has gone, `ShutDown` after `shutdown_write`.
    pub fn write(&self, buf: &[u8]) -> Result<usize> {
        let p = self.parts();
        self.drive(Way::Write, Spin::For(Want::Stream), |look| {
            lock(&p.writer).write(&p.link, buf, look)
        })
    }

    /// Send all of `buf` as one unit, or nothing. Fails with `MessageTooLarge` if the ring can
    /// never hold it (in either mode), and `PeerClosed` once the peer has gone.
    pub fn send(&self, buf: &[u8]) -> Result<()> {
        let p = self.parts();
        self.drive(Way::Write, Spin::For(Want::Packet(buf.len())), |look| {
            lock(&p.writer).send(&p.link, buf, look)
        })
    }

    /// Wait until the peer has read everything written, or has gone (up to the write timeout).
    /// A libxenvchan peer sees the end of the stream only when the channel closes, and may drop
    /// what its ring still holds when it sees the close: waiting for this before closing
    /// delivers every byte.
    pub fn drained(&self) -> Result<()> {
        let p = self.parts();
        self.drive(Way::Write, Spin::No, |_| {
            Ok::<_, ChannelError>(match lock(&p.writer).drained(&p.link)? {
                true => Step::Done((), Notify::NONE),
                false => Step::Blocked,
            })
        })
    }

    /// Wait until the client has connected (server) or the peer has closed, up to `timeout`.
    pub fn wait_connected(&self, timeout: Option<Duration>) -> Result<State> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut next_check = None;
        loop {
            let ticket = self.waiter.ticket();
            let state = self.state()?;
            if state != State::WaitingForPeer {
                return Ok(state);
            }
            self.sleep(ticket, deadline, &mut next_check)?;
        }
    }

    /// Wait for the next event from the peer, up to `timeout` (libxenvchan_wait): `Ok(false)` if
    /// the timeout passed first. For callers that poll the fd themselves: after it becomes
    /// readable, call this with a zero timeout to take the event, then look at the ring.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ticket = self.waiter.ticket();
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.waiter.wait(&self.parts().events, ticket, deadline) {
            Ok(()) => Ok(true),
            Err(VchanError::TimedOut) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove a server's xenstore keys now, rather than at close: once its client has
    /// connected, nobody else should find them (a second client would join a channel that is
    /// taken, or, later, one that is closing). Idempotent; a client has nothing to remove.
    pub fn unpublish(&self) -> Result<()> {
        lock(&self.parts().hold)
            .unpublish()
            .map_err(VchanError::Xenstore)
    }

    /// Shut down the writing side (half-close): writes fail with `ShutDown` from now on, and a
    /// peer of this crate reads end-of-stream once it has read everything written before, while
    /// both sides can go on reading what the other writes. The flag travels in the peer's notify
    /// byte ([`abi::NOTIFY_WRITE_SHUT`](crate::abi::NOTIFY_WRITE_SHUT)); a libxenvchan peer
    /// ignores it and sees the end of the stream only when the channel closes. Idempotent.
    pub fn shutdown_write(&self) -> Result<()> {
        let p = self.parts();
        // A write in progress on another thread finishes first; any later one sees the flag
        // under the same lock and writes nothing.
        let notify = lock(&p.writer).shutdown(&p.link);
        p.link
            .send(&p.events, notify)
            .map_err(VchanError::backend(Op::NotifyShutdown))
    }

    /// Close the channel: release the rings, mark this side gone, tell the peer, and (server)
    /// remove the xenstore keys. The peer can still read what was written before. Dropping the
    /// endpoint does the same but cannot report errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.take_channel().map_or(Ok(()), Channel::close)
    }
}

impl<B: Backend> Drop for Vchan<B> {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `close` reports them.
        let _ = self.shutdown();
    }
}

impl<B: Backend> fmt::Debug for Vchan<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Vchan");
        if let Some(p) = &self.parts {
            s.field("role", &p.link.role())
                .field("port", &p.link.port());
        }
        s.field("open", &self.parts.is_some()).finish()
    }
}

impl<B: Backend> AsFd for Vchan<B> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.parts().events.as_fd()
    }
}

impl<B: Backend> AsRawFd for Vchan<B> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl<B: Backend> io::Read for &Vchan<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(Vchan::read(self, buf)?)
    }
}

impl<B: Backend> io::Read for Vchan<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(Vchan::read(self, buf)?)
    }
}

impl<B: Backend> io::Write for &Vchan<B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(Vchan::write(self, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<B: Backend> io::Write for Vchan<B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(Vchan::write(self, buf)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
