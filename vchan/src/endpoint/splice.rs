//! Zero-copy I/O for the blocking driver: fill the ring straight from an fd, drain it straight
//! into one (one `read(2)` or `write(2)` on the ring's own memory).

use std::os::fd::BorrowedFd;

use xen_types::memory::fd as zero_copy;

use super::drive::{Spin, Way};
use super::{lock, Vchan};
use crate::backend::Backend;
use crate::channel::{Notify, Step, Want};
use crate::error::{SpliceError, VchanError};

impl<B: Backend> Vchan<B> {
    /// Fill the ring straight from `source` (a socket, a pipe, a file) with one `read(2)`, up to
    /// `max` bytes, waiting for room as [`write`](Self::write) does: the bytes read, 0 at the
    /// end of `source`. No buffer of ours is in between: the kernel copies into the ring. The
    /// writing half stays locked while the read blocks (it does not if `source` is
    /// non-blocking: then its `WouldBlock` comes back as an error).
    #[cfg(not(vchan_loom))]
    pub fn fill_from(&self, source: BorrowedFd<'_>, max: usize) -> Result<usize, SpliceError> {
        let p = self.parts();
        self.drive(Way::Write, Spin::For(Want::Stream), |look| {
            let mut writer = lock(&p.writer);
            let chunks = match writer.writable(&p.link, max, look) {
                Ok(Step::Done(chunks, _)) => chunks,
                Ok(Step::Blocked) => return Ok(Step::Blocked),
                Err(e) => return Err(SpliceError::Vchan(e.into())),
            };
            let n = zero_copy::read_into(source, &[chunks.first, chunks.second])
                .map_err(SpliceError::Fd)?;
            Ok(Step::Done(n, writer.commit(n)))
        })
    }

    /// Drain the ring straight into `sink` with one `write(2)`, up to `max` bytes, waiting for
    /// data as [`read`](Self::read) does: the bytes written, 0 at the end of the stream.
    #[cfg(not(vchan_loom))]
    pub fn drain_to(&self, sink: BorrowedFd<'_>, max: usize) -> Result<usize, SpliceError> {
        let p = self.parts();
        self.drive(Way::Read, Spin::For(Want::Stream), |look| {
            let mut reader = lock(&p.reader);
            let chunks = match reader.readable(&p.link, max, look) {
                Ok(Step::Done(chunks, _)) => chunks,
                Ok(Step::Blocked) => return Ok(Step::Blocked),
                Err(e) => return Err(SpliceError::Vchan(e.into())),
            };
            if chunks.is_empty() {
                return Ok(Step::Done(0, Notify::NONE));
            }
            let n = zero_copy::write_from(sink, &[chunks.first, chunks.second])
                .map_err(SpliceError::Fd)?;
            Ok(Step::Done(n, reader.consume(n)))
        })
    }
}

impl From<VchanError> for SpliceError {
    fn from(e: VchanError) -> SpliceError {
        SpliceError::Vchan(e)
    }
}
