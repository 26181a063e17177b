//! Zero-copy transfers between an [`AsyncVchan`](super::AsyncVchan) and a tokio socket: the
//! kernel reads from the socket straight into the ring's free space, or writes from the ring
//! straight to the socket, with no buffer of ours in between (one copy where a buffer makes two).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use xen_types::memory::fd as zero_copy;

use super::poll::Way;
use super::{AsyncVchan, Open};
use crate::backend::Backend;
use crate::channel::{Look, Notify, Step};
use crate::error::{SpliceError, VchanError};

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

impl<B: Backend> AsyncVchan<B> {
    /// Fill the ring straight from `source` (a tokio socket), up to `max` bytes, with one
    /// `read(2)` into the ring's free space and no buffer in between: the bytes read, 0 at the
    /// end of `source`. Waits for room in the ring and for `source` to be readable. The error
    /// says which side failed.
    pub fn poll_fill_from<S: AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        source: &S,
        max: usize,
    ) -> Poll<Result<usize, SpliceError>> {
        let Open { io, writer, .. } = self.open_mut();
        loop {
            ready!(source.poll_read_ready(cx)).map_err(SpliceError::Fd)?;
            let room = match ready!(io.poll_io(cx, Way::Write, |look| Ok(
                match writer.writable(&io.link, max, look)? {
                    Step::Done(chunks, _) => Step::Done(chunks.len(), Notify::NONE),
                    Step::Blocked => Step::Blocked,
                }
            ))) {
                Ok(room) => room,
                // Nothing can go into the ring any more. A source at its end is still a clean
                // end, as a read through a buffer would have found before it tried the ring.
                Err(e @ (VchanError::PeerClosed | VchanError::ShutDown)) => {
                    match source.try_read_io(peek) {
                        Ok(0) => return Poll::Ready(Ok(0)),
                        Ok(_) => return Poll::Ready(Err(SpliceError::Vchan(e))),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(SpliceError::Fd(e))),
                    }
                }
                Err(e) => return Poll::Ready(Err(SpliceError::Vchan(e))),
            };
            // The room found stays ours: nobody else writes this ring.
            let chunks = match writer.writable(&io.link, room, Look::Quick) {
                Ok(Step::Done(chunks, _)) => chunks,
                Ok(Step::Blocked) => continue,
                Err(e) => return Poll::Ready(Err(SpliceError::Vchan(e.into()))),
            };
            match source.try_read_io(|fd| zero_copy::read_into(fd, &[chunks.first, chunks.second]))
            {
                Ok(n) => {
                    io.notify(writer.commit(n));
                    return Poll::Ready(Ok(n));
                }
                // Readiness was cleared: the next turn registers for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(SpliceError::Fd(e))),
            }
        }
    }

    /// Drain the ring straight into `sink` (a tokio socket), up to `max` bytes, with one
    /// `write(2)` from the ring and no buffer in between: the bytes written, 0 at the end of the
    /// stream. Waits for data in the ring and for `sink` to be writable. The error says which
    /// side failed.
    pub fn poll_drain_to<S: AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &S,
        max: usize,
    ) -> Poll<Result<usize, SpliceError>> {
        let Open { io, reader, .. } = self.open_mut();
        loop {
            let ready_bytes = ready!(io.poll_io(cx, Way::Read, |look| Ok(
                match reader.readable(&io.link, max, look)? {
                    Step::Done(chunks, _) => Step::Done(chunks.len(), Notify::NONE),
                    Step::Blocked => Step::Blocked,
                }
            )))
            .map_err(SpliceError::Vchan)?;
            if ready_bytes == 0 {
                return Poll::Ready(Ok(0));
            }
            ready!(sink.poll_write_ready(cx)).map_err(SpliceError::Fd)?;
            let chunks = match reader.readable(&io.link, ready_bytes, Look::Quick) {
                Ok(Step::Done(chunks, _)) if !chunks.is_empty() => chunks,
                Ok(_) => continue,
                Err(e) => return Poll::Ready(Err(SpliceError::Vchan(e.into()))),
            };
            match sink.try_write_io(|fd| zero_copy::write_from(fd, &[chunks.first, chunks.second]))
            {
                Ok(n) => {
                    io.notify(reader.consume(n));
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(SpliceError::Fd(e))),
            }
        }
    }
}

/// Whether a socket has reached its end, without taking a byte: 0 at the end, 1 if a byte waits.
fn peek(fd: BorrowedFd<'_>) -> io::Result<usize> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    recv(
        fd.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)
}
