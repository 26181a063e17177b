//! One direction of a relay: [`Pump`] moves bytes from one [`AsyncConnection`] to another until
//! the input ends, then passes the end on as a half-close. What `vchan-proxy` runs, twice per
//! connection.
//!
//! Between a socket (TCP or Unix) and a vchan the bytes move with no buffer of ours in between:
//! the kernel reads from the socket straight into the ring's free space, or writes from the ring
//! straight to the socket ([`vchan::AsyncVchan::poll_fill_from`], `poll_drain_to`). A byte from
//! a client socket through two proxies to a server socket is then copied twice (socket to ring in
//! one proxy, ring to socket in the other) where a buffer in each would copy it four times
//! (socket, buffer, ring, buffer, socket). Other pairs (TLS, socket to socket, vchan to vchan)
//! go through a buffer, allocated on first use.

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::asynch::{AsyncConnection, AsyncStream};

/// The buffer of a direction that cannot move bytes without one, and the most one zero-copy
/// call moves.
const CHUNK: usize = 64 * 1024;

/// How many moves one direction makes in one poll before it lets others run: a vchan with data
/// always answers at once, without tokio's budget.
const MOVES_PER_POLL: usize = 16;

/// Which side of a direction failed, and how.
#[derive(Debug)]
pub enum PumpError {
    /// Reading the input failed.
    Read(io::Error),
    /// Writing the output (or passing the end on) failed.
    Write(io::Error),
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PumpError::Read(_) => f.write_str("reading failed"),
            PumpError::Write(_) => f.write_str("writing failed"),
        }
    }
}

impl std::error::Error for PumpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PumpError::Read(e) | PumpError::Write(e) => Some(e),
        }
    }
}

/// One direction of a relay, from one connection to another: poll it until it is ready.
#[derive(Default)]
pub struct Pump {
    /// Only for pairs that need one.
    buf: Option<Box<[u8]>>,
    /// The part of `buf` read and not yet written.
    pending: Range<usize>,
    /// The input has ended.
    ended: bool,
    /// The end has been passed on: this direction is done.
    done: bool,
    copied: u64,
}

impl Pump {
    /// A direction that has moved nothing yet.
    pub fn new() -> Pump {
        Pump::default()
    }

    /// The bytes written to the output so far.
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Whether the end has been passed on.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Move what can be moved now from `from` to `to`; ready once the input has ended and the
    /// end has been passed on (`to`'s half-close; a peer that has gone already needs none).
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut AsyncConnection,
        to: &mut AsyncConnection,
    ) -> Poll<Result<(), PumpError>> {
        for _ in 0..MOVES_PER_POLL {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.ended {
                match self.poll_move(cx, &mut from.stream, &mut to.stream) {
                    Poll::Ready(Ok(0)) => self.ended = true,
                    Poll::Ready(Ok(n)) => {
                        self.copied += n as u64;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut to.stream).poll_shutdown(cx) {
                // The other side has gone already: there is nobody left to tell.
                Poll::Ready(Err(e))
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Poll::Ready(Err(PumpError::Write(e)))
                }
                Poll::Ready(_) => self.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Not finished, but others' turn: come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One move: the bytes written to `to` (0: the input ended, with nothing left to write).
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut AsyncStream,
        to: &mut AsyncStream,
    ) -> Poll<Result<usize, PumpError>> {
        #[cfg(feature = "vchan")]
        if self.pending.is_empty() {
            if let Some(moved) = splice(cx, from, to) {
                return moved;
            }
        }
        self.poll_buffered(cx, from, to)
    }

    /// A move through the buffer: read into it when it is empty, write out what it holds, and
    /// flush (TLS holds a record until flushed).
    fn poll_buffered(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut AsyncStream,
        to: &mut AsyncStream,
    ) -> Poll<Result<usize, PumpError>> {
        let buf = self
            .buf
            .get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
        if self.pending.is_empty() {
            let mut read = ReadBuf::new(buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Read(e))),
                Poll::Pending => return Poll::Pending,
            }
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            self.pending = 0..n;
        }
        let mut written = 0;
        while !self.pending.is_empty() {
            match Pin::new(&mut *to).poll_write(cx, &buf[self.pending.clone()]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.start += n;
                    written += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Write(e))),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut *to).poll_flush(cx) {
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(written)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(PumpError::Write(e))),
        }
    }
}

/// A move between a socket and a vchan with no buffer in between, if the pair is one.
#[cfg(feature = "vchan")]
fn splice(
    cx: &mut Context<'_>,
    from: &mut AsyncStream,
    to: &mut AsyncStream,
) -> Option<Poll<Result<usize, PumpError>>> {
    use vchan::SpliceError;
    let into_ring = |outcome: Poll<Result<usize, SpliceError>>| {
        outcome.map_err(|e| match e {
            SpliceError::Fd(e) => PumpError::Read(e),
            SpliceError::Vchan(e) => PumpError::Write(e.into()),
        })
    };
    let out_of_ring = |outcome: Poll<Result<usize, SpliceError>>| {
        outcome.map_err(|e| match e {
            SpliceError::Vchan(e) => PumpError::Read(e.into()),
            SpliceError::Fd(e) => PumpError::Write(e),
        })
    };
    Some(match (from, to) {
        (AsyncStream::Tcp(s), AsyncStream::Vchan(v)) => into_ring(v.poll_fill_from(cx, s, CHUNK)),
        (AsyncStream::Unix(s), AsyncStream::Vchan(v)) => into_ring(v.poll_fill_from(cx, s, CHUNK)),
        (AsyncStream::Vchan(v), AsyncStream::Tcp(s)) => out_of_ring(v.poll_drain_to(cx, s, CHUNK)),
        (AsyncStream::Vchan(v), AsyncStream::Unix(s)) => out_of_ring(v.poll_drain_to(cx, s, CHUNK)),
        _ => return None,
    })
}
