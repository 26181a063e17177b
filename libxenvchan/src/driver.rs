//! The driver: the channel core driven with libxenvchan's C semantics.
//!
//! Every behaviour of the channel (the notify protocol, the close race, corrupt indices, the
//! liveness look) is the core's; this adds what the C API asks of a driver:
//!
//! - the mode of each call from the flags the program writes into the struct (read by the
//!   caller, `crate::ctrl`, afresh on every call): blocking calls wait, non-blocking ones return
//!   0 where they cannot proceed;
//! - waiting on the event fd (a short spin first, then `poll(2)` and `xenevtchn_pending`), with
//!   a look at the peer's domain every [`LIVENESS_CHECK`] of sleep;
//! - errno values for every failure, and the fixes the C library lacks (`libxenvchan/ABI.md`
//!   §6).
//!
//! Locks: the reading and the writing half each have their own, held only while the core looks,
//! never while sleeping, so one thread can read while another writes, and `data_ready` or
//! `buffer_space` never wait for a sleeper. One thread at a time polls the event fd; whoever
//! takes an event moves a generation count, so a thread that was about to sleep for the other
//! direction looks again instead (the C library lets one thread take the other's wake-up).

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use nix::errno::Errno;
use vchan::channel::{
    self, Channel, ChannelError, Hold, LinkOf, Look, Memory, Notify, ReaderOf, State, Step,
    WriterOf, LIVENESS_CHECK,
};
use vchan::layout::Side;
use vchan::platform::EventChannels;
use vchan::ring::{RingGeometry, Role};
use vchan::spin::spin_until;
use xen_types::memory::AsSharedRegion;
use xen_types::Port;

use crate::abi::{Libxenvchan, RingDescriptor, FLAG_IS_SERVER, LEFT_INDICES, RIGHT_INDICES};
use crate::sys::{self, io_errno, Events, Libs};

/// The mode a call runs in, from the struct's flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// `blocking`: wait until the call can proceed.
    pub blocking: bool,
    /// `server_persist`: a server that stays open when its client leaves.
    pub persist: bool,
}

/// What a call came to.
enum Progress<T> {
    Done(T),
    /// Non-blocking, and nothing could be done: the C calls return 0.
    WouldBlock,
}

/// Which ring a blocking call waits on, and for how many bytes (data to read, or room to write).
#[derive(Clone, Copy)]
enum Want {
    Data(usize),
    Room(usize),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `errno` of a failed set-up or call. A layout the server cannot use is the caller's
/// `EINVAL`; one the server wrote is the peer's doing, like every other piece of nonsense it
/// publishes or writes: `EPROTO`.
pub fn vchan_errno(e: &vchan::channel::ErrorOf<Libs>, role: Role) -> Errno {
    use vchan::Error;
    match e {
        Error::Layout(_) if role == Role::Server => Errno::EINVAL,
        Error::Layout(_)
        | Error::RingCorrupted(_)
        | Error::BadLiveByte(_)
        | Error::BadKey { .. } => Errno::EPROTO,
        Error::NoServer { .. } => Errno::ENOENT,
        Error::NotWaiting { .. } => Errno::EBUSY,
        Error::MessageTooLarge { .. } => Errno::EMSGSIZE,
        Error::PeerClosed | Error::ShutDown => Errno::EPIPE,
        Error::WouldBlock => Errno::EAGAIN,
        Error::TimedOut => Errno::ETIMEDOUT,
        Error::Xenstore(e) => sys::store_errno(e),
        Error::Backend { source, .. } => io_errno(source),
        _ => Errno::EIO,
    }
}

/// One thread at a time polls the event fd; a generation count says that events were taken.
struct Waiting {
    generation: AtomicU64,
    poller: Mutex<()>,
}

impl Waiting {
    /// Taken before the final look at the ring: if it has moved by the time we would sleep, an
    /// event was taken meanwhile (perhaps the one we need) and we look again instead.
    fn ticket(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release increment in `took_event`, so a thread that
        // sees the new generation looks at the ring after the taker did. (The poller mutex also
        // orders the two.)
        self.generation.load(Ordering::Acquire)
    }

    fn took_event(&self) {
        // ORDERING: see `ticket`.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// C threads share one handle: what it holds must be safe to share (the compiler checks it
/// here, as nothing else would: the C side reaches it through raw pointers).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Dropin>();
};

/// One open channel, as the C API drives it.
pub struct Dropin {
    link: LinkOf<Libs>,
    reader: Mutex<ReaderOf<Libs>>,
    writer: Mutex<WriterOf<Libs>>,
    events: Events,
    hold: Mutex<Hold<Libs>>,
    waiting: Waiting,
    /// Set once the peer wrote indices or a live byte no honest peer writes: the channel is
    /// over for good, every call fails with `EPROTO` and `is_open` says 0.
    corrupt: AtomicBool,
    /// The errno of a notify that failed after its data was committed (the call reported its
    /// count): the next call reports it.
    deferred: AtomicI32,
    /// What a blocking write's spin waits for, at most (`Want::batch_size` of the ring).
    write_batch: usize,
    /// When `is_open` last looked at the peer's domain.
    last_look: Mutex<Instant>,
}

impl Dropin {
    /// Drive a channel the core built. The store connection the set-up used is closed: the
    /// driver connects again only to look at the peer's domain, and to withdraw a server's keys.
    pub fn new(channel: Channel<Libs>) -> Dropin {
        let Channel {
            link,
            reader,
            writer,
            events,
            hold,
        } = channel;
        hold.store().disconnect();
        let write_batch = channel::Want::batch_size(writer.capacity()).max(1);
        Dropin {
            write_batch,
            link,
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            events,
            hold: Mutex::new(hold),
            waiting: Waiting {
                generation: AtomicU64::new(0),
                poller: Mutex::new(()),
            },
            corrupt: AtomicBool::new(false),
            deferred: AtomicI32::new(0),
            last_look: Mutex::new(Instant::now()),
        }
    }

    /// The public struct's fields, true to this channel: the handles of the process's Xen
    /// libraries, the control page as mapped here, each ring's indices and bytes, `is_server`
    /// for a server (and `blocking`, `server_persist` clear: the C library left them
    /// uninitialised), and `xs_path` as given.
    pub fn fields(&self, xs_path: *mut c_char) -> Libxenvchan {
        let control = self.link.page().memory();
        let ring = control.region().as_ptr().as_ptr();
        let gnt = match control {
            Memory::Granted(pages) => pages.handle_ptr(),
            Memory::Mapped(mapping) => mapping.handle_ptr(),
        };
        let descriptor = |(memory, geometry): (&Memory<Libs>, RingGeometry)| RingDescriptor {
            shr: ring
                .wrapping_add(match geometry.side {
                    Side::Left => LEFT_INDICES,
                    Side::Right => RIGHT_INDICES,
                })
                .cast(),
            buffer: memory
                .region()
                .as_ptr()
                .as_ptr()
                .wrapping_add(geometry.offset)
                .cast(),
            order: geometry.size.trailing_zeros() as c_int,
        };
        let read = descriptor(lock(&self.reader).placement());
        let write = descriptor(lock(&self.writer).placement());
        Libxenvchan {
            gnt,
            ring: ring.cast(),
            event: self.events.as_ptr().cast(),
            event_port: self.link.port().0,
            flags: match self.link.role() {
                Role::Server => u32::from(FLAG_IS_SERVER),
                Role::Client => 0,
            },
            read,
            write,
            xs_path,
        }
    }

    /// The event channel's fd (`libxenvchan_fd_for_select`).
    pub fn fd(&self) -> c_int {
        self.events.fd()
    }

    /// A failure the core reported. Corruption is for good.
    fn fail(&self, e: ChannelError) -> Errno {
        if matches!(
            e,
            ChannelError::RingCorrupted(_) | ChannelError::BadLiveByte(_)
        ) {
            // ORDERING: a flag with no data behind it; each call reads it once.
            self.corrupt.store(true, Ordering::Relaxed);
        }
        vchan_errno(&e.into(), self.link.role())
    }

    /// What every data call checks first: a corrupt channel, a deferred notify failure.
    fn check(&self) -> Result<(), Errno> {
        // ORDERING: see `fail`.
        if self.corrupt.load(Ordering::Relaxed) {
            return Err(Errno::EPROTO);
        }
        // ORDERING: a value with no data behind it.
        match self.deferred.swap(0, Ordering::Relaxed) {
            0 => Ok(()),
            raw => Err(Errno::from_raw(raw)),
        }
    }

    /// Send the event a completed operation owes. Its data is committed whatever happens, so a
    /// failure is kept for the next call (the C library's blocking write lost its count that
    /// way, and added -1 to its position).
    fn notify(&self, notify: Notify) {
        if let Err(e) = self.link.send(&self.events, notify) {
            // ORDERING: see `check`.
            self.deferred.store(io_errno(&e) as i32, Ordering::Relaxed);
        }
    }

    /// The core said the peer will send (or take) nothing more. Final for a C caller only if
    /// the peer has closed, or its domain is gone: a server with `server_persist` set stays
    /// open for its next client (as C's `is_open` says), and a half-close, a flag only a peer of
    /// the Rust crate sets, has no meaning in the C API, where the stream ends when the channel
    /// closes (as it does for the C library, which ignores the flag).
    fn settle_end<T>(&self, mode: Mode) -> Result<Step<T>, Errno> {
        if self.link.role() == Role::Server && mode.persist {
            return Ok(Step::Blocked);
        }
        match self.link.state() {
            Ok(State::PeerClosed) => Err(Errno::EPIPE),
            Ok(_) => Ok(Step::Blocked),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Read what is there, up to `buf.len()` bytes: the count, or 0 (non-blocking, nothing
    /// there). Blocking, waits for one byte at least. Buffered data is read after the peer
    /// closed; then `EPIPE`.
    pub fn read(&self, buf: &mut [u8], mode: Mode) -> Result<usize, Errno> {
        self.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let wanted = buf.len();
        let progress = self.drive(mode, Want::Data(1), |look| {
            match lock(&self.reader).read(&self.link, buf, look) {
                Ok(Step::Done(0, _)) => self.settle_end(mode),
                Ok(step) => Ok(step),
                Err(e) => Err(self.fail(e)),
            }
        })?;
        Ok(match progress {
            Progress::Done(n) => {
                if n < wanted && !mode.blocking {
                    // As the C library does when it finds less than asked: the caller will want
                    // more, so ask the writer for an event when it writes (a program that then
                    // waits in select() depends on it). In blocking mode the next read asks
                    // before it sleeps; asking now would make the writer send an event for
                    // every write while the reader keeps up (spinning), the cost the spin is
                    // there to save.
                    self.request_data();
                }
                n
            }
            Progress::WouldBlock => 0,
        })
    }

    /// Receive exactly `buf.len()` bytes, or nothing: the count, or 0 (non-blocking, not
    /// enough there). `EMSGSIZE` if the ring can never hold that much (in both modes: the C
    /// library's non-blocking call returned 0 for ever); `EPIPE` once the peer closed with
    /// fewer bytes left.
    pub fn recv(&self, buf: &mut [u8], mode: Mode) -> Result<usize, Errno> {
        self.check()?;
        let len = buf.len();
        if len == 0 {
            return Ok(0);
        }
        let progress = self.drive(mode, Want::Data(len), |look| {
            match lock(&self.reader).recv(&self.link, buf, look) {
                Ok(step) => Ok(step),
                Err(ChannelError::PeerClosed) => self.settle_end(mode),
                Err(e) => Err(self.fail(e)),
            }
        })?;
        Ok(match progress {
            Progress::Done(()) => len,
            Progress::WouldBlock => 0,
        })
    }

    /// Write `buf`: blocking, all of it, or what was written before a failure (a signal, the
    /// peer closing, a corrupt ring: the next call reports it), or the failure itself if
    /// nothing was; non-blocking, what fits now (0 if the ring is full). `EPIPE` once the peer
    /// has closed.
    pub fn write(&self, buf: &[u8], mode: Mode) -> Result<usize, Errno> {
        self.check()?;
        if buf.is_empty() {
            return self.nothing_to_send(mode);
        }
        if !mode.blocking {
            return self.write_now(buf, mode);
        }
        let mut written = 0;
        while written < buf.len() {
            let rest = &buf[written..];
            // The spin waits for a batch of room, or for what is left if less: not for all of a
            // write as large as the ring, which would spin its whole budget unless the reader
            // emptied the ring.
            let room = rest.len().min(self.write_batch);
            match self.drive(mode, Want::Room(room), |look| {
                self.write_step(rest, look, mode)
            }) {
                Ok(Progress::Done(n)) => written += n,
                // Blocking calls never come back empty-handed.
                Ok(Progress::WouldBlock) => break,
                Err(e) if written == 0 => return Err(e),
                // Cut short after some bytes: the count is the answer now. A corrupt ring or a
                // closed peer fails the next call again by itself; an interruption was the
                // signal's, and is over.
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// A non-blocking write: what fits now. If not everything does, the final look asks the
    /// reader for an event when it frees room (as the C library does when it finds too little),
    /// and writes what that look finds.
    fn write_now(&self, buf: &[u8], mode: Mode) -> Result<usize, Errno> {
        let first = match self.write_step(buf, Look::Quick, mode)? {
            Step::Done(n, notify) => {
                self.notify(notify);
                n
            }
            Step::Blocked => 0,
        };
        if first == buf.len() {
            return Ok(first);
        }
        match self.write_step(&buf[first..], Look::Final, mode) {
            Ok(Step::Done(n, notify)) => {
                self.notify(notify);
                Ok(first + n)
            }
            Ok(Step::Blocked) => Ok(first),
            Err(_) if first > 0 => Ok(first),
            Err(e) => Err(e),
        }
    }

    fn write_step(&self, buf: &[u8], look: Look, mode: Mode) -> Result<Step<usize>, Errno> {
        match lock(&self.writer).write(&self.link, buf, look) {
            Ok(step) => Ok(step),
            Err(ChannelError::PeerClosed) => self.settle_end(mode),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Send all of `buf` as one unit, or nothing: the count, or 0 (non-blocking, no room).
    /// `EMSGSIZE` if the ring can never hold it, in both modes; `EPIPE` once the peer closed.
    pub fn send(&self, buf: &[u8], mode: Mode) -> Result<usize, Errno> {
        self.check()?;
        let len = buf.len();
        if len == 0 {
            return self.nothing_to_send(mode);
        }
        let progress = self.drive(mode, Want::Room(len), |look| {
            match lock(&self.writer).send(&self.link, buf, look) {
                Ok(step) => Ok(step),
                Err(ChannelError::PeerClosed) => self.settle_end(mode),
                Err(e) => Err(self.fail(e)),
            }
        })?;
        Ok(match progress {
            Progress::Done(()) => len,
            Progress::WouldBlock => 0,
        })
    }

    /// A write or send of nothing: 0, or `EPIPE` if the peer has closed (the C library checks
    /// `is_open` before anything else).
    fn nothing_to_send(&self, mode: Mode) -> Result<usize, Errno> {
        match self.is_open(mode)? {
            0 => Err(Errno::EPIPE),
            _ => Ok(0),
        }
    }

    /// Bytes ready to read, within 0..=ring size; also asks the writer for an event when it
    /// writes more (programs rely on it before `select()`). A corrupt ring is `EPROTO`, which
    /// the caller turns into 0 (a size must stay a size).
    pub fn data_ready(&self) -> Result<usize, Errno> {
        self.check_corrupt()?;
        lock(&self.reader).data_ready().map_err(|e| self.fail(e))
    }

    /// Bytes that can be written, within 0..=ring size; also asks the reader for an event when
    /// it frees room. A corrupt ring is `EPROTO` (0 for the caller).
    pub fn buffer_space(&self) -> Result<usize, Errno> {
        self.check_corrupt()?;
        lock(&self.writer).buffer_space().map_err(|e| self.fail(e))
    }

    fn check_corrupt(&self) -> Result<(), Errno> {
        // ORDERING: see `fail`.
        match self.corrupt.load(Ordering::Relaxed) {
            true => Err(Errno::EPROTO),
            false => Ok(()),
        }
    }

    /// Ask the writer for an event when it writes more (after a read that found less than
    /// asked). A corrupt ring found here fails the next call.
    fn request_data(&self) {
        if let Err(e) = lock(&self.reader).data_ready() {
            self.fail(e);
        }
    }

    /// 2 (a server whose client has not connected yet), 1 (connected) or 0 (closed, gone, or
    /// corrupt: `EPROTO`): never the raw live byte. A server with `server_persist` set is always
    /// 1, as in C. The indices are checked too (two loads): a program that asks after each
    /// event, as vchan-socket-proxy does before draining with `data_ready`, learns of a corrupt
    /// ring here, where `data_ready` can only say 0. At most every [`LIVENESS_CHECK`], this also
    /// looks whether the peer's domain still exists (one store read).
    pub fn is_open(&self, mode: Mode) -> Result<c_int, Errno> {
        self.check_corrupt()?;
        lock(&self.reader).available().map_err(|e| self.fail(e))?;
        lock(&self.writer).space().map_err(|e| self.fail(e))?;
        if self.link.role() == Role::Server && mode.persist {
            return Ok(1);
        }
        self.look_if_due();
        match self.link.state() {
            Ok(State::WaitingForPeer) => Ok(2),
            Ok(State::Connected) => Ok(1),
            Ok(State::PeerClosed) => Ok(0),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Take one event, waiting for it (`libxenvchan_wait`: `xenevtchn_pending`, then re-arm the
    /// port). As in C, a signal handler without `SA_RESTART` interrupts it (`EINTR`).
    pub fn wait(&self) -> Result<(), Errno> {
        let _poller = lock(&self.waiting.poller);
        self.take_event()
    }

    /// Take one delivered event (the fd is readable, or we wait for it) and re-arm its port.
    fn take_event(&self) -> Result<(), Errno> {
        let port = self.events.pending().map_err(|e| io_errno(&e))?;
        self.waiting.took_event();
        self.events.unmask(Port(port)).map_err(|e| io_errno(&e))
    }

    /// Look at the peer's domain now (one store read through a connection opened for it).
    fn look_at_peer(&self) {
        if let Some(liveness) = self.link.liveness() {
            let hold = lock(&self.hold);
            let store = hold.store();
            liveness.look(&**store);
            store.disconnect();
        }
    }

    /// [`look_at_peer`](Self::look_at_peer), if the last look from `is_open` was at least
    /// [`LIVENESS_CHECK`] ago.
    fn look_if_due(&self) {
        let now = Instant::now();
        {
            let mut last = lock(&self.last_look);
            if now.duration_since(*last) < LIVENESS_CHECK {
                return;
            }
            *last = now;
        }
        self.look_at_peer();
    }

    /// The loop every data call shares: a quick look; in blocking mode a short spin; the final
    /// look, which asks the peer for an event; then, blocking, sleep until one comes (looking at
    /// the peer's domain every [`LIVENESS_CHECK`] of sleep) and again, or, non-blocking, give up.
    fn drive<T>(
        &self,
        mode: Mode,
        want: Want,
        mut op: impl FnMut(Look) -> Result<Step<T>, Errno>,
    ) -> Result<Progress<T>, Errno> {
        let mut look = Look::Quick;
        let mut spun = false;
        let mut next_check: Option<Instant> = None;
        loop {
            // Taken before the final look: see `Waiting::ticket`.
            let ticket = self.waiting.ticket();
            match (op(look)?, look) {
                (Step::Done(value, notify), _) => {
                    self.notify(notify);
                    return Ok(Progress::Done(value));
                }
                (Step::Blocked, Look::Quick) => {
                    look = Look::Final;
                    if mode.blocking && !spun {
                        spun = true;
                        if let Some(next) = spin_until(|| self.next_look(want)) {
                            look = next;
                        }
                    }
                }
                (Step::Blocked, Look::Final) => {
                    if !mode.blocking {
                        return Ok(Progress::WouldBlock);
                    }
                    let due = *next_check.get_or_insert_with(|| Instant::now() + LIVENESS_CHECK);
                    self.sleep(ticket, due)?;
                    if Instant::now() >= due {
                        self.look_at_peer();
                        next_check = Some(Instant::now() + LIVENESS_CHECK);
                    }
                    look = Look::Quick;
                    spun = false;
                }
            }
        }
    }

    /// For the spin: whether a look would now get somewhere.
    fn next_look(&self, want: Want) -> Option<Look> {
        match want {
            // All of what the call waits for (a stream read waits for one byte).
            Want::Data(n) => lock(&self.reader).next_look(&self.link, channel::Want::Packet(n)),
            Want::Room(n) => lock(&self.writer).next_look(&self.link, channel::Want::Packet(n)),
        }
    }

    /// Sleep until an event arrives after `ticket` was taken, or `until`. A signal handler
    /// interrupts the sleep as it would the C library's (see `sys::handlers_restart`).
    fn sleep(&self, ticket: u64, until: Instant) -> Result<(), Errno> {
        let _poller = lock(&self.waiting.poller);
        loop {
            if self.waiting.ticket() != ticket {
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.events.poll_readable(left) {
                Ok(true) => return self.take_event(),
                Ok(false) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if !sys::handlers_restart() {
                        return Err(Errno::EINTR);
                    }
                }
                Err(e) => return Err(io_errno(&e)),
            }
        }
    }

    /// Remove a server's keys now (`close_xs_srv`).
    pub fn unpublish(&self) {
        let mut hold = lock(&self.hold);
        // The C function returns nothing; the close tries again.
        let _ = hold.unpublish();
        hold.store().disconnect();
    }

    /// Close: the peer reads what was written, then the end; a server's keys go.
    pub fn close(self) {
        let Dropin {
            link,
            reader,
            writer,
            events,
            hold,
            ..
        } = self;
        let channel = Channel {
            link,
            reader: reader.into_inner().unwrap_or_else(PoisonError::into_inner),
            writer: writer.into_inner().unwrap_or_else(PoisonError::into_inner),
            events,
            hold: hold.into_inner().unwrap_or_else(PoisonError::into_inner),
        };
        // `libxenvchan_close` returns nothing: every step is tried, and there is nobody to tell.
        let _ = channel.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vchan::Error;

    fn io(raw: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(raw)
    }

    /// Each set-up failure has the errno a C caller can act on; none is left at 0.
    #[test]
    fn setup_failures_map_to_errno() {
        let layout = || vchan::layout::Layout::for_min_sizes(2 << 20, 0).unwrap_err();
        let cases: Vec<(vchan::channel::ErrorOf<Libs>, Role, Errno)> = vec![
            (Error::Layout(layout()), Role::Server, Errno::EINVAL),
            (Error::Layout(layout()), Role::Client, Errno::EPROTO),
            (
                Error::BadKey {
                    key: "ring-ref",
                    value: "0".into(),
                },
                Role::Client,
                Errno::EPROTO,
            ),
            (
                Error::NoServer { path: "p".into() },
                Role::Client,
                Errno::ENOENT,
            ),
            (
                Error::NotWaiting { path: "p".into() },
                Role::Client,
                Errno::EBUSY,
            ),
            (
                Error::Backend {
                    op: vchan::Op::MapControlPage,
                    source: io(libc::EACCES),
                },
                Role::Client,
                Errno::EACCES,
            ),
            (
                Error::Backend {
                    op: vchan::Op::OpenSharer,
                    source: io(0),
                },
                Role::Server,
                Errno::EIO,
            ),
            (
                Error::Xenstore(sys::store_failure(io(libc::EACCES))),
                Role::Server,
                Errno::EACCES,
            ),
        ];
        for (error, role, errno) in cases {
            assert_eq!(vchan_errno(&error, role), errno, "{error} ({role:?})");
        }
    }
}
