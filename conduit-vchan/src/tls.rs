//! TLS over any blocking transport (feature `tls`): a rustls session shared by one reading and
//! one writing thread, so a TLS [`Connection`](crate::Connection) keeps the promise of the plain
//! ones (`Read`/`Write` for `&Connection`).
//!
//! rustls' own `StreamOwned` needs `&mut` for both directions: a thread blocked reading would
//! hold the session and starve the writer. Here the transport is read and written *outside* the
//! session's lock: the reader takes the session only to hand it the bytes it received and to
//! take plaintext out; the writer takes it only to encrypt, and sends the records holding a
//! separate write lock, so they leave in the order the session made them.
//!
//! Locks are always taken in the order `inbox` (reading), `outbox` (writing), `session`, and the
//! session's lock is never held across I/O on the transport.
//!
//! The handshake has a deadline: every read and write it makes on the transport is bounded by
//! the time left (the transport's own timeouts, cleared once it is over), so a peer that sends
//! nothing, or a byte now and then, cannot hold the connection for ever. Dropping the stream
//! sends `close_notify` unless [`TlsStream::shutdown_write`] did.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::blocking::Stream;

/// Room for one TLS record (16 KiB of payload, its header and the AEAD's expansion).
const RECORD: usize = 16 * 1024 + 2048;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error of a handshake that took longer than `timeout`.
pub(crate) fn handshake_timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the handshake did not complete within {timeout:?}"),
    )
}

/// A TLS session over a transport.
pub(crate) struct TlsStream {
    transport: Stream,
    session: Mutex<rustls::Connection>,
    /// Held by the reader: bytes received from the transport that the session has not taken.
    inbox: Mutex<Inbox>,
    /// Held while records leave for the transport.
    outbox: Mutex<Outbox>,
    /// The handshake is complete: reading and writing may proceed independently.
    handshaken: AtomicBool,
    /// The handshake failed (its error went to whoever drove it): nothing more can be done.
    failed: AtomicBool,
    /// How long the handshake may take, from its start; also how long a drop waits for room
    /// to send `close_notify`.
    handshake_timeout: Duration,
}

struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

#[derive(Default)]
struct Outbox {
    records: Vec<u8>,
    /// `close_notify` was sent and the transport's write side shut down.
    closed: bool,
}

impl TlsStream {
    /// Wrap `transport` in `session`. Nothing is sent until [`TlsStream::handshake`] or the first
    /// read or write; from then the handshake has `handshake_timeout` to complete.
    pub(crate) fn new(
        session: rustls::Connection,
        transport: Stream,
        handshake_timeout: Duration,
    ) -> TlsStream {
        TlsStream {
            transport,
            session: Mutex::new(session),
            inbox: Mutex::new(Inbox {
                buf: vec![0; RECORD].into_boxed_slice(),
                start: 0,
                end: 0,
            }),
            outbox: Mutex::new(Outbox::default()),
            handshaken: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            handshake_timeout,
        }
    }

    /// The protocol agreed through ALPN, once the handshake is done.
    pub(crate) fn alpn_protocol(&self) -> Option<Vec<u8>> {
        lock(&self.session).alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Complete the handshake, if it is not yet done: a peer whose certificate the
    /// configuration refuses fails here, with rustls' reason; a peer that does not complete it
    /// within the handshake timeout, with `TimedOut`. After a failure every call fails.
    pub(crate) fn handshake(&self) -> io::Result<()> {
        // ORDERING: Acquire pairs with the Release below: a thread that sees the handshake done
        // also sees the session state it left (the session's mutex orders it anyway).
        if self.handshaken.load(Ordering::Acquire) {
            return Ok(());
        }
        let _inbox = lock(&self.inbox);
        let _outbox = lock(&self.outbox);
        let mut session = lock(&self.session);
        if self.handshaken.load(Ordering::Acquire) {
            return Ok(());
        }
        // ORDERING: Relaxed: set and read under the locks held here.
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ));
        }
        // Both directions are held: the session may do I/O on the transport itself.
        let mut transport = Bounded::new(&self.transport, self.handshake_timeout);
        let outcome = drive_handshake(&mut session, &mut transport);
        // The deadline was the handshake's: from here on the transport waits as long as it takes.
        let cleared = transport.clear();
        let outcome = outcome.and(cleared);
        match &outcome {
            // ORDERING: Release pairs with the Acquire loads above.
            Ok(()) => self.handshaken.store(true, Ordering::Release),
            // ORDERING: Relaxed: read under the locks held here.
            Err(_) => self.failed.store(true, Ordering::Relaxed),
        }
        outcome
    }

    /// Read plaintext: what the session holds, else what the next records bring. `Ok(0)` after
    /// the peer's `close_notify`; an `UnexpectedEof` error if the transport ended without one.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.handshake()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut inbox = lock(&self.inbox);
        loop {
            {
                let mut session = lock(&self.session);
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if inbox.start < inbox.end {
                    let Inbox { buf, start, end } = &mut *inbox;
                    let taken = session.read_tls(&mut &buf[*start..*end])?;
                    *start += taken;
                    if taken == 0 {
                        // After close_notify the session takes nothing more: drop the rest.
                        *start = *end;
                    }
                    let processed = session.process_new_packets();
                    let reply = session.wants_write();
                    drop(session);
                    if reply {
                        // An alert, or an answer to a key update: the writer's path sends it.
                        self.send_records(&mut lock(&self.outbox))?;
                    }
                    processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            // Nothing buffered: wait for the transport without holding the session.
            let Inbox { buf, start, end } = &mut *inbox;
            let n = (&self.transport).read(buf)?;
            (*start, *end) = (0, n);
            if n == 0 {
                // The transport ended: tell the session, whose reader then says whether that was
                // after close_notify (Ok(0)) or not (UnexpectedEof).
                lock(&self.session).read_tls(&mut io::empty())?;
            }
        }
    }

    /// Encrypt and send some of `buf`.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.handshake()?;
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS write side is shut down",
            ));
        }
        let n = lock(&self.session).writer().write(buf)?;
        self.send_records(&mut outbox)?;
        Ok(n)
    }

    /// Send `close_notify`, then shut down the transport's write side: the peer reads a clean
    /// end of stream, and this end can still read.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        self.handshake()?;
        let mut outbox = lock(&self.outbox);
        if outbox.closed {
            return Ok(());
        }
        lock(&self.session).send_close_notify();
        self.send_records(&mut outbox)?;
        outbox.closed = true;
        self.transport.shutdown_write()
    }

    /// Send every record the session has ready, in order (the caller holds the outbox).
    fn send_records(&self, outbox: &mut Outbox) -> io::Result<()> {
        {
            let mut session = lock(&self.session);
            while session.wants_write() {
                session.write_tls(&mut outbox.records)?;
            }
        }
        let sent = (&self.transport).write_all(&outbox.records);
        outbox.records.clear();
        sent
    }
}

/// Sends `close_notify` unless [`TlsStream::shutdown_write`] did, so that the peer reads a clean
/// end of stream (rustls reports an unexpected end otherwise), and everything written before it,
/// then lingers briefly over a socket ([`TlsStream::linger`]). It waits for room in the transport
/// at most the handshake timeout (a peer that does not read cannot hold the drop for ever);
/// errors are ignored: the peer may be gone.
impl Drop for TlsStream {
    fn drop(&mut self) {
        if !*self.handshaken.get_mut() {
            return;
        }
        let outbox = self
            .outbox
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if !outbox.closed {
            let session = self
                .session
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            session.send_close_notify();
            while session.wants_write() {
                if session.write_tls(&mut outbox.records).is_err() {
                    return;
                }
            }
            // The transport closes right after: its timeout needs no clearing.
            let sent =
                Bounded::new(&self.transport, self.handshake_timeout).write_all(&outbox.records);
            if sent.is_err() {
                return;
            }
        }
        self.linger();
    }
}

/// How long a dropped connection over a socket waits for its peer's end (see
/// [`TlsStream::linger`]).
const LINGER: Duration = Duration::from_millis(200);

/// The most a dropped connection reads (and discards) while it lingers.
const LINGER_BYTES: usize = 256 << 10;

impl TlsStream {
    /// After `close_notify`, on drop: end the write side and read what the peer still sends,
    /// until its end, [`LINGER`] or [`LINGER_BYTES`]. A socket closed with bytes unread is reset
    /// rather than ended (TCP: RFC 1122 4.2.2.13; a Unix socket gives its peer `ECONNRESET`),
    /// and the reset can destroy what the peer has not yet read, `close_notify` and the data
    /// before it included. A TLS 1.3 server sends session tickets a client may never read, so
    /// a client that writes, then drops, would otherwise often be reset. A vchan has no reset.
    fn linger(&self) {
        if !matches!(self.transport, Stream::Tcp(_) | Stream::Unix(_)) {
            return;
        }
        // Already shut down if `shutdown_write` sent the `close_notify`.
        let _ = self.transport.shutdown_write();
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 4096];
        let mut taken = 0;
        while taken < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.transport.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match (&self.transport).read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => taken += n,
            }
        }
    }
}

/// Drive the handshake to its end over `transport`.
fn drive_handshake(
    session: &mut rustls::Connection,
    transport: &mut Bounded<'_>,
) -> io::Result<()> {
    while session.is_handshaking() {
        let (read, written) = match session.complete_io(transport) {
            Ok(progress) => progress,
            Err(e) => {
                // complete_io makes one last write for the alert that says why; the queue may
                // hold more than one write takes (a ChangeCipherSpec before it). Send all, so the
                // peer learns the reason rather than seeing the connection end.
                while session.wants_write() {
                    if session.write_tls(transport).is_err() {
                        break;
                    }
                }
                return Err(e);
            }
        };
        if read == 0 && written == 0 && session.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            ));
        }
    }
    while session.wants_write() {
        session.write_tls(transport)?;
    }
    Ok(())
}

/// The transport with each read and write bounded by the time left until a deadline: its read
/// and write timeouts are set to that before each, and an expiry is the deadline's error.
struct Bounded<'a> {
    transport: &'a Stream,
    timeout: Duration,
    /// `None`: no deadline (a timeout too long to add to the clock).
    deadline: Option<Instant>,
}

impl<'a> Bounded<'a> {
    /// `timeout` from now.
    fn new(transport: &'a Stream, timeout: Duration) -> Bounded<'a> {
        Bounded {
            transport,
            timeout,
            deadline: Instant::now().checked_add(timeout),
        }
    }

    /// Bound the next operation by the time left: `set` is the transport's read or write
    /// timeout.
    fn arm(&self, set: fn(&Stream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        match deadline.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(handshake_timed_out(self.timeout)),
            left => set(self.transport, Some(left)),
        }
    }

    /// An operation's outcome, its timeout read as the deadline's (sockets report an expired
    /// timeout as `WouldBlock`, a vchan as `TimedOut`).
    fn outcome<T>(&self, outcome: io::Result<T>) -> io::Result<T> {
        match outcome {
            Err(e)
                if self.deadline.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                Err(handshake_timed_out(self.timeout))
            }
            outcome => outcome,
        }
    }

    /// Leave the transport without timeouts.
    fn clear(&self) -> io::Result<()> {
        if self.deadline.is_none() {
            return Ok(());
        }
        self.transport.set_read_timeout(None)?;
        self.transport.set_write_timeout(None)
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(Stream::set_read_timeout)?;
        self.outcome((&*self.transport).read(buf))
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(Stream::set_write_timeout)?;
        self.outcome((&*self.transport).write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.arm(Stream::set_write_timeout)?;
        self.outcome((&*self.transport).write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
