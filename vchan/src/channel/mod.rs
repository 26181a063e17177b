//! The channel core: a vchan endpoint as state machines that never wait, never read a clock and
//! do no I/O of their own. `no_std` (with `alloc` for the handshake's paths; the data path
//! allocates nothing).
//!
//! - [`setup`]: the handshakes. [`serve`] shares the pages, binds the port, writes the page and
//!   publishes the keys, and returns a [`Channel`] whose client may come later; a [`Dial`] looks
//!   for a server's keys and, once they are there, binds, maps, validates and joins. Each step is
//!   one call of the [`Platform`]; where the peer must act first (the keys are not published
//!   yet) the core says so and the driver waits (a store watch, a deadline).
//! - [`Reader`] and [`Writer`]: the two halves of the data path, over the ring's [`Consumer`]
//!   and [`Producer`], with the notify protocol, the close race, packets, half-close and
//!   `drained`. An operation takes a [`Look`] and answers a [`Step`]: done (with the [`Notify`]
//!   the peer is owed), or blocked: after a [`Look::Final`] the peer has been asked for an event
//!   and the driver may sleep until it comes.
//! - [`Link`]: what both halves share (the control page, the role, the port, what is known of the
//!   peer's liveness).
//!
//! The drivers are thin loops around this: [`Vchan`](crate::Vchan) (blocking, threads),
//! [`AsyncVchan`](crate::AsyncVchan) (tokio) and [`bare::BareVchan`](crate::bare::BareVchan)
//! (a guest with no OS). Each sends the notify obligations, sleeps the way its world sleeps, and
//! looks at the peer's liveness when the core asks it to (see [`Link::liveness`]).

pub mod setup;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use core::str::FromStr;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, Port};

use crate::abi;
pub use crate::error::ChannelError;
use crate::platform::{
    EventChannels, GrantMap, GrantShare, Platform, TxId, XenStore, XenstoreError,
};
#[cfg(not(vchan_loom))]
pub use crate::ring::Chunks;
pub use crate::ring::Notify;
use crate::ring::{Consumer, ControlPage, Producer, Role};
pub use setup::{serve, Dial, Publication};

/// Where a server publishes itself in xenstore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// The conventional path for an integer port: the server publishes at
    /// `/local/domain/<server>/data/vchan/<client>/<port>`.
    Port(u32),
    /// An explicit xenstore path (relative paths resolve under the caller's own domain).
    Path(String),
}

impl Address {
    /// The path a server serving `client` publishes at.
    pub fn server_path(&self, client: DomId) -> String {
        match self {
            Address::Port(port) => format!("data/vchan/{client}/{port}"),
            Address::Path(path) => path.clone(),
        }
    }

    /// The path a client (`me`) looks up to find `server`.
    pub fn client_path(&self, server: DomId, me: DomId) -> String {
        match self {
            Address::Port(port) => format!("/local/domain/{server}/data/vchan/{me}/{port}"),
            Address::Path(path) => path.clone(),
        }
    }
}

impl FromStr for Address {
    type Err = core::convert::Infallible;
    /// All digits is a port; anything else a path.
    fn from_str(s: &str) -> Result<Address, Self::Err> {
        Ok(match s.parse::<u32>() {
            Ok(port) if s.bytes().all(|b| b.is_ascii_digit()) => Address::Port(port),
            _ => Address::Path(s.into()),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Port(port) => write!(f, "{port}"),
            Address::Path(path) => f.write_str(path),
        }
    }
}

/// The minimum ring sizes a server asks for. The actual sizes follow libxenvchan's rule and may
/// be larger; `(0, 0)` gives the smallest channel (1024 and 2048 bytes inside one page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingSizes {
    /// Bytes the server can receive without the client waiting (the left ring).
    pub server_read: usize,
    /// Bytes the server can send without waiting (the right ring).
    pub server_write: usize,
}

/// Where a connection stands, from the peer's live byte (and its domain's liveness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A server whose client has not connected yet.
    WaitingForPeer,
    /// Both sides are connected.
    Connected,
    /// The peer closed the channel or died. What it wrote may still be read.
    PeerClosed,
}

/// How hard an operation looks before it gives up for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Look at the ring as it is and ask the peer for nothing: the fast path, and what a driver
    /// repeats while it spins.
    Quick,
    /// The last look before sleeping: ask the peer for an event when it makes progress, then look
    /// again (a full fence between, paired with the peer's: either this look sees its progress,
    /// or it sees the request and sends the event), and settle a close or a half-close (a ring
    /// that can never fill up again ends the operation).
    Final,
}

/// What an operation waits for, for a driver that spins between looks ([`Reader::next_look`],
/// [`Writer::next_look`]): bytes of data to read, or of room to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Any bytes: a stream's read or write, when the peer is answering (see [`batched`]).
    ///
    /// [`batched`]: Want::batched
    Stream,
    /// A quarter of the ring: a stream's read or write in a one-way flow, which lets the peer
    /// get ahead (the final look still takes any bytes).
    Batch,
    /// This many at once, or nothing: a packet's `recv` or `send`.
    Packet(usize),
}

impl Want {
    /// What to wait for when the peer is not answering this end but streaming one way: a batch
    /// for a stream, the same for a packet.
    pub fn batched(self) -> Want {
        match self {
            Want::Stream | Want::Batch => Want::Batch,
            Want::Packet(len) => Want::Packet(len),
        }
    }

    /// The bytes a [`Batch`](Want::Batch) waits for in a ring of `capacity`: a quarter of it, at
    /// most 64 KiB.
    pub fn batch_size(capacity: usize) -> usize {
        (capacity / 4).min(BATCH)
    }

    /// Whether `n` bytes (of data or of room) in a ring of `capacity` are enough for a look.
    fn met_by(self, n: usize, capacity: usize) -> bool {
        match self {
            Want::Stream => n > 0,
            Want::Batch => n > 0 && n >= Want::batch_size(capacity),
            Want::Packet(len) => n >= len,
        }
    }
}

/// The most a batch waits for (see [`Want::Batch`]).
const BATCH: usize = 64 << 10;

/// What an operation came to.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a step may carry an event owed to the peer"]
pub enum Step<T> {
    /// It completed; send the [`Notify`] if one is owed.
    Done(T, Notify),
    /// Nothing could be done now. After [`Look::Quick`], look harder; after [`Look::Final`], the
    /// peer will send an event when it makes progress: sleep until then (or until the liveness
    /// look is due, or the caller's deadline), then start again from a quick look.
    Blocked,
}

/// How often a sleeping driver looks whether the peer's domain still exists (a destroyed domain
/// says nothing on the ring or the event channel): see [`Link::liveness`].
pub const LIVENESS_CHECK: Duration = Duration::from_millis(500);

/// What is known of whether the peer's domain still exists, and how to look.
///
/// A destroyed domain runs no unmap notification, so neither its live byte nor an event says
/// it went; the toolstack removes its xenstore home, which a privileged domain (dom0) can see.
/// A guest cannot read another guest's home (xenstored answers `EACCES` whether it exists or
/// not), so there the look always says it exists. Shared (an `Arc`) so a driver can make the
/// look off its own thread.
#[derive(Debug)]
pub struct Liveness {
    /// `/local/domain/<peer>`.
    home: String,
    /// Set once the home was seen gone.
    gone: AtomicBool,
}

impl Liveness {
    /// Look at the peer's home (one store read): false, and remembered, if it is gone.
    pub fn look<S: XenStore + ?Sized>(&self, store: &S) -> bool {
        match store.read(TxId::NONE, &self.home) {
            Err(e) if e.errno() == Some(xenstore::Errno::ENOENT) => {
                // ORDERING: Release pairs with the Acquire load in `is_gone`; the flag carries
                // no other data.
                self.gone.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }

    /// Whether a look found the peer's domain gone.
    pub fn is_gone(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `look`.
        self.gone.load(Ordering::Acquire)
    }
}

/// What both halves of an endpoint share: the control page, the role and the port, and what is
/// known of the peer. Reads only; the halves are the writers.
pub struct Link<M> {
    page: ControlPage<M>,
    role: Role,
    port: Port,
    peer: DomId,
    liveness: Arc<Liveness>,
}

impl<M: AsSharedRegion> Link<M> {
    /// The link of an endpoint in `role`, with our `port`, to `peer`.
    pub fn new(page: ControlPage<M>, role: Role, port: Port, peer: DomId) -> Link<M> {
        Link {
            page,
            role,
            port,
            peer,
            liveness: Arc::new(Liveness {
                home: format!("/local/domain/{peer}"),
                gone: AtomicBool::new(false),
            }),
        }
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Our event-channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The peer's domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The control page.
    pub fn page(&self) -> &ControlPage<M> {
        &self.page
    }

    /// Send the event `notify` owes on our port, if it owes one.
    #[inline]
    pub fn send<E: EventChannels + ?Sized>(
        &self,
        events: &E,
        notify: Notify,
    ) -> Result<(), E::Error> {
        if notify.is_owed() {
            events.notify(self.port)
        } else {
            Ok(())
        }
    }

    /// The connection's state, from the peer's live byte (read once) and its domain's liveness.
    pub fn state(&self) -> Result<State, ChannelError> {
        if self.liveness.is_gone() {
            return Ok(State::PeerClosed);
        }
        match (self.role, self.page.live(self.role.peer_live())) {
            (_, abi::LIVE_EXITED) => Ok(State::PeerClosed),
            (_, abi::LIVE_CONNECTED) => Ok(State::Connected),
            (Role::Server, abi::LIVE_WAITING) => Ok(State::WaitingForPeer),
            (_, other) => Err(ChannelError::BadLiveByte(other)),
        }
    }

    fn peer_closed(&self) -> Result<bool, ChannelError> {
        Ok(self.state()? == State::PeerClosed)
    }

    /// Whether a reader can expect nothing more than what the ring holds: the peer has closed, or
    /// shut down its writing side.
    fn read_is_over(&self) -> Result<bool, ChannelError> {
        Ok(self.page.write_shut(self.role.own_notify()) || self.peer_closed()?)
    }

    /// The liveness of the peer's domain, when a sleeping driver should look at it: every
    /// [`LIVENESS_CHECK`] of sleep, with [`Liveness::look`] on the endpoint's store. `None`
    /// when no look is worth making: the domain is known gone, or this is a server whose client
    /// has not connected yet (a toolstack may start a server before it creates the client's
    /// domain, so only a client that has connected, whose domain existed, can be gone).
    pub fn liveness(&self) -> Option<&Arc<Liveness>> {
        let waiting =
            self.role == Role::Server && self.page.live(self.role.peer_live()) == abi::LIVE_WAITING;
        (!waiting && !self.liveness.is_gone()).then_some(&self.liveness)
    }

    /// Mark this end gone (its live byte 0), the first step of a close.
    fn mark_exited(&self) {
        self.page.set_live(self.role.own_live(), abi::LIVE_EXITED);
    }
}

impl<M> fmt::Debug for Link<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("port", &self.port)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The reading half of an endpoint: the consumer of the ring the peer writes.
pub struct Reader<M> {
    ring: Consumer<M>,
}

impl<M: AsSharedRegion> Reader<M> {
    /// The reading half over `ring`.
    pub fn new(ring: Consumer<M>) -> Reader<M> {
        Reader { ring }
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Where the ring this half reads lies: the owner of its region and its geometry there.
    pub fn placement(&self) -> (&M, crate::ring::RingGeometry) {
        self.ring.placement()
    }

    /// Bytes ready to read now; also asks the peer for an event when it writes more.
    pub fn data_ready(&self) -> Result<usize, ChannelError> {
        Ok(self.ring.request_and_recheck()?)
    }

    /// Bytes ready to read now, asking nothing of the peer (a look that only checks the ring:
    /// corrupt indices are an error).
    pub fn available(&self) -> Result<usize, ChannelError> {
        Ok(self.ring.available()?)
    }

    /// For a driver that spins between looks: which look an operation wanting `want` should make
    /// next, if one would now get somewhere: a quick one if the bytes are there (or the ring is
    /// corrupt: the operation reports it), the final one if the end is known (which only the
    /// final look settles); `None` while neither.
    pub fn next_look(&self, link: &Link<M>, want: Want) -> Option<Look> {
        if self
            .ring
            .available()
            .map_or(true, |n| want.met_by(n, self.capacity()))
        {
            Some(Look::Quick)
        } else if link.read_is_over().unwrap_or(true) {
            Some(Look::Final)
        } else {
            None
        }
    }

    /// Read what is available, up to `buf.len()` (at least one byte): `Done(0)` is the end of
    /// the stream (the peer closed, or shut down its writing side, and everything it wrote has
    /// been read).
    #[inline]
    pub fn read(
        &mut self,
        link: &Link<M>,
        buf: &mut [u8],
        look: Look,
    ) -> Result<Step<usize>, ChannelError> {
        if buf.is_empty() {
            return Ok(Step::Done(0, Notify::NONE));
        }
        self.step(
            link,
            look,
            |ring| {
                let (n, notify) = ring.read(buf)?;
                Ok((n > 0).then_some((n, notify)))
            },
            || Ok(0),
        )
    }

    /// Receive exactly `buf.len()` bytes as one unit, or nothing: `MessageTooLarge` if the ring
    /// can never hold that much, `PeerClosed` once the peer closed with fewer bytes left.
    pub fn recv(
        &mut self,
        link: &Link<M>,
        buf: &mut [u8],
        look: Look,
    ) -> Result<Step<()>, ChannelError> {
        let capacity = self.capacity();
        if buf.len() > capacity {
            return Err(ChannelError::MessageTooLarge {
                len: buf.len(),
                capacity,
            });
        }
        self.step(
            link,
            look,
            |ring| Ok(ring.read_exact(buf)?.map(|notify| ((), notify))),
            || Err(ChannelError::PeerClosed),
        )
    }

    /// The bytes ready to read, up to `max` (at least one), as the ring's own memory, for a
    /// caller that moves them elsewhere without a copy in between; then
    /// [`consume`](Self::consume) what it moved. `Done` with empty chunks is the end of the
    /// stream. (The `Notify` of a `Done` is always empty: `consume` makes the obligation.)
    #[cfg(not(vchan_loom))]
    pub fn readable(
        &mut self,
        link: &Link<M>,
        max: usize,
        look: Look,
    ) -> Result<Step<Chunks<'_>>, ChannelError> {
        // Decide first, then borrow the chunks for the answer.
        let ready = match self.step(
            link,
            look,
            |ring| {
                let n = ring.readable(max.max(1))?.len();
                Ok((n > 0).then_some((n, Notify::NONE)))
            },
            || Ok(0),
        )? {
            Step::Done(n, _) => n,
            Step::Blocked => return Ok(Step::Blocked),
        };
        Ok(Step::Done(self.ring.readable(ready)?, Notify::NONE))
    }

    /// Hand the first `n` bytes of the last [`readable`](Self::readable) chunks back to the
    /// writer.
    #[cfg(not(vchan_loom))]
    pub fn consume(&mut self, n: usize) -> Notify {
        self.ring.consume(n)
    }

    /// The decision shared by every read: try; on a final look ask for an event, try again, and
    /// settle the end (re-checking the ring after seeing it, so data written just before a close
    /// is never lost).
    #[inline]
    fn step<T>(
        &mut self,
        link: &Link<M>,
        look: Look,
        mut attempt: impl FnMut(&mut Consumer<M>) -> Result<Option<(T, Notify)>, ChannelError>,
        ended: impl FnOnce() -> Result<T, ChannelError>,
    ) -> Result<Step<T>, ChannelError> {
        if let Some((value, notify)) = attempt(&mut self.ring)? {
            return Ok(Step::Done(value, notify));
        }
        if look == Look::Quick {
            return Ok(Step::Blocked);
        }
        self.ring.request_write_notify();
        if let Some((value, notify)) = attempt(&mut self.ring)? {
            return Ok(Step::Done(value, notify));
        }
        if link.read_is_over()? {
            // Close race: the peer may have written and then closed after our last look. The
            // live byte and the half-close flag are read with SeqCst, so this look sees
            // everything written before them.
            if let Some((value, notify)) = attempt(&mut self.ring)? {
                return Ok(Step::Done(value, notify));
            }
            return ended().map(|value| Step::Done(value, Notify::NONE));
        }
        Ok(Step::Blocked)
    }
}

/// The writing half of an endpoint: the producer of the ring the peer reads.
pub struct Writer<M> {
    ring: Producer<M>,
    /// Set by `shutdown`: writes fail with `ShutDown`.
    shut: bool,
}

impl<M: AsSharedRegion> Writer<M> {
    /// The writing half over `ring`.
    pub fn new(ring: Producer<M>) -> Writer<M> {
        Writer { ring, shut: false }
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Where the ring this half writes lies: the owner of its region and its geometry there.
    pub fn placement(&self) -> (&M, crate::ring::RingGeometry) {
        self.ring.placement()
    }

    /// Bytes that can be written now; also asks the peer for an event when it frees more.
    pub fn buffer_space(&self) -> Result<usize, ChannelError> {
        Ok(self.ring.request_and_recheck()?)
    }

    /// Bytes that can be written now, asking nothing of the peer (see [`Reader::available`]).
    pub fn space(&self) -> Result<usize, ChannelError> {
        Ok(self.ring.space()?)
    }

    /// For a driver that spins between looks: which look an operation wanting room for `want`
    /// should make next, if one would now get somewhere (see [`Reader::next_look`]). Writing
    /// being over is settled by a quick look as well.
    pub fn next_look(&self, link: &Link<M>, want: Want) -> Option<Look> {
        (self.shut
            || self
                .ring
                .space()
                .map_or(true, |n| want.met_by(n, self.capacity()))
            || link.peer_closed().unwrap_or(true))
        .then_some(Look::Quick)
    }

    /// Write as much of `buf` as fits (at least one byte). `PeerClosed` once the peer has gone,
    /// `ShutDown` after [`shutdown`](Self::shutdown).
    #[inline]
    pub fn write(
        &mut self,
        link: &Link<M>,
        buf: &[u8],
        look: Look,
    ) -> Result<Step<usize>, ChannelError> {
        if buf.is_empty() {
            return Ok(Step::Done(0, Notify::NONE));
        }
        self.step(link, buf.len(), look, |ring| {
            let (n, notify) = ring.write(buf)?;
            Ok((n > 0).then_some((n, notify)))
        })
    }

    /// Write the slices of `bufs` one after another while they fit (at least one byte): a
    /// gathering write, with no copy into a buffer of ours first (TLS hands its records over
    /// this way). Stops at the first slice that does not fit whole.
    pub fn write_vectored(
        &mut self,
        link: &Link<M>,
        bufs: &[&[u8]],
        look: Look,
    ) -> Result<Step<usize>, ChannelError> {
        let wanted = bufs.iter().map(|b| b.len()).sum::<usize>();
        if wanted == 0 {
            return Ok(Step::Done(0, Notify::NONE));
        }
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(0, |b| b.len());
        self.step(link, first, look, |ring| {
            let (mut total, mut notify) = (0, Notify::NONE);
            for buf in bufs {
                let (n, owed) = ring.write(buf)?;
                total += n;
                notify = notify.or(owed);
                if n < buf.len() {
                    break;
                }
            }
            Ok((total > 0).then_some((total, notify)))
        })
    }

    /// Send all of `buf` as one unit, or nothing: `MessageTooLarge` if the ring can never hold
    /// it (in either mode).
    pub fn send(
        &mut self,
        link: &Link<M>,
        buf: &[u8],
        look: Look,
    ) -> Result<Step<()>, ChannelError> {
        let capacity = self.capacity();
        if buf.len() > capacity {
            return Err(ChannelError::MessageTooLarge {
                len: buf.len(),
                capacity,
            });
        }
        self.step(link, buf.len(), look, |ring| {
            Ok(ring.write_all_or_nothing(buf)?.map(|notify| ((), notify)))
        })
    }

    /// The free space, up to `max` (at least one byte), as the ring's own memory, for a caller
    /// that fills it without a copy in between; then [`commit`](Self::commit) what it wrote.
    #[cfg(not(vchan_loom))]
    pub fn writable(
        &mut self,
        link: &Link<M>,
        max: usize,
        look: Look,
    ) -> Result<Step<Chunks<'_>>, ChannelError> {
        let room = match self.step(link, max.max(1), look, |ring| {
            let n = ring.writable(max.max(1))?.len();
            Ok((n > 0).then_some((n, Notify::NONE)))
        })? {
            Step::Done(n, _) => n,
            Step::Blocked => return Ok(Step::Blocked),
        };
        Ok(Step::Done(self.ring.writable(room)?, Notify::NONE))
    }

    /// Publish the first `n` bytes of the last [`writable`](Self::writable) chunks.
    #[cfg(not(vchan_loom))]
    pub fn commit(&mut self, n: usize) -> Notify {
        self.ring.commit(n)
    }

    /// Shut down writing (half-close): later writes fail with `ShutDown`, and a peer of this
    /// crate reads the end of the stream once it has read everything written before. The flag
    /// travels in the peer's notify byte ([`abi::NOTIFY_WRITE_SHUT`]); the event that announces
    /// it is owed. Idempotent (a second call owes nothing).
    pub fn shutdown(&mut self, link: &Link<M>) -> Notify {
        if self.shut {
            return Notify::NONE;
        }
        self.shut = true;
        link.page.set_write_shut(link.role.peer_notify());
        Notify::OWED
    }

    /// Whether the peer has read everything written (or has gone); also asks it for an event
    /// when it reads more. A libxenvchan peer may drop what its ring holds when it sees a close:
    /// waiting for this before closing delivers every byte.
    pub fn drained(&self, link: &Link<M>) -> Result<bool, ChannelError> {
        Ok(self.ring.request_and_recheck()? >= self.capacity() || link.peer_closed()?)
    }

    /// The decision shared by every write.
    #[inline]
    fn step<T>(
        &mut self,
        link: &Link<M>,
        wanted: usize,
        look: Look,
        mut attempt: impl FnMut(&mut Producer<M>) -> Result<Option<(T, Notify)>, ChannelError>,
    ) -> Result<Step<T>, ChannelError> {
        if self.shut {
            return Err(ChannelError::ShutDown);
        }
        // A write that fits the room already known reads no shared cache line before it copies
        // (the peer's live byte shares the line with its index); it looks afterwards.
        if !self.ring.known_room_covers(wanted) && link.peer_closed()? {
            return Err(ChannelError::PeerClosed);
        }
        if look == Look::Final {
            self.ring.request_read_notify();
        }
        let written_from = self.ring.index();
        if let Some((value, notify)) = attempt(&mut self.ring)? {
            // A write that skipped the look at the peer's live byte looks now, when the line
            // holding it is in our cache (we just published our index in it): a peer that has
            // gone will never read what we wrote, and the writer hears so at once. Unless it
            // read everything first: a peer that takes our last bytes and closes at once (a TLS
            // peer after our close_notify) got them, and the write succeeded. (A gone peer is
            // owed no event.)
            if link.peer_closed()? && !self.ring.consumed_since(written_from)? {
                return Err(ChannelError::PeerClosed);
            }
            return Ok(Step::Done(value, notify));
        }
        if look == Look::Final && link.peer_closed()? {
            return Err(ChannelError::PeerClosed);
        }
        Ok(Step::Blocked)
    }
}

/// The owner of one region of an endpoint's shared memory: the server's granted pages or the
/// client's mapping. Every view that uses a region holds a clone (the control page's is held by
/// the link, both halves, and an in-page ring), so none can reach the memory once it is
/// released; [`Channel::close`] drops the views first, then releases each region from its last
/// owner.
pub enum Memory<P: Platform> {
    /// Pages we granted (server).
    Granted(Arc<<P::Sharer as GrantShare>::Pages>),
    /// Pages we mapped (client).
    Mapped(Arc<<P::Mapper as GrantMap>::Mapping>),
}

impl<P: Platform> Clone for Memory<P> {
    fn clone(&self) -> Self {
        match self {
            Memory::Granted(pages) => Memory::Granted(Arc::clone(pages)),
            Memory::Mapped(mapping) => Memory::Mapped(Arc::clone(mapping)),
        }
    }
}

impl<P: Platform> AsSharedRegion for Memory<P> {
    #[inline]
    fn region(&self) -> SharedRegion<'_> {
        match self {
            Memory::Granted(pages) => pages.region(),
            Memory::Mapped(mapping) => mapping.region(),
        }
    }
}

impl<P: Platform> Memory<P> {
    /// Drop this, the last owner of its region: the memory is ungranted or unmapped now.
    fn release(self) {
        let last = match self {
            Memory::Granted(pages) => Arc::into_inner(pages).map(drop),
            Memory::Mapped(mapping) => Arc::into_inner(mapping).map(drop),
        };
        debug_assert!(last.is_some(), "a view outlived the endpoint's close");
    }
}

/// The link of platform `P`'s endpoints.
pub type LinkOf<P> = Link<Memory<P>>;
/// The reading half of platform `P`'s endpoints.
pub type ReaderOf<P> = Reader<Memory<P>>;
/// The writing half of platform `P`'s endpoints.
pub type WriterOf<P> = Writer<Memory<P>>;
/// The error of platform `P`'s endpoints.
pub type ErrorOf<P> = crate::error::Error<<P as Platform>::DeviceError>;

/// The grant-sharing or grant-mapping handle an endpoint opened.
enum Device<P: Platform> {
    Sharer(P::Sharer),
    Mapper(P::Mapper),
}

/// What an endpoint holds besides its views and its event channel: the owners of its memory,
/// its device handle and store connection, and (a server) what it published.
pub struct Hold<P: Platform> {
    control: Memory<P>,
    rings: alloc::vec::Vec<Memory<P>>,
    _device: Device<P>,
    store: Arc<P::Store>,
    publication: Option<Publication>,
}

impl<P: Platform> Hold<P> {
    /// The endpoint's store connection (the one the liveness look uses).
    pub fn store(&self) -> &Arc<P::Store> {
        &self.store
    }

    /// Remove a server's xenstore keys now, rather than at close: once its client has connected,
    /// nobody else should find them. Idempotent; a client has nothing to remove.
    pub fn unpublish(&mut self) -> Result<(), XenstoreError> {
        if let Some(publication) = &self.publication {
            // Kept on failure: the close tries again.
            publication.withdraw(&*self.store)?;
            self.publication = None;
        }
        Ok(())
    }
}

/// A whole endpoint as the handshake built it: the link, the two halves, the event channel and
/// what it holds. Drivers keep the parts where their world wants them (the halves behind locks,
/// say) and give them back to [`close`](Channel::close).
pub struct Channel<P: Platform> {
    /// What both halves share.
    pub link: LinkOf<P>,
    /// The reading half.
    pub reader: ReaderOf<P>,
    /// The writing half.
    pub writer: WriterOf<P>,
    /// The event-channel handle our port is bound on.
    pub events: P::Events,
    /// Memory owners, device, store, publication.
    pub hold: Hold<P>,
}

impl<P: Platform> Channel<P> {
    /// Close: mark this end gone, release the rings and the control page (ungrant or unmap, before
    /// the event, as libxenvchan does), tell the peer, withdraw a server's keys and release the
    /// port. The peer can still read what was written. Every step is tried; the first error is
    /// returned.
    pub fn close(self) -> Result<(), ErrorOf<P>> {
        let Channel {
            link,
            reader,
            writer,
            events,
            hold,
        } = self;
        link.mark_exited();
        let port = link.port;
        // The views go first, so that `hold` holds the last owner of each region and releasing
        // it unmaps (or ungrants) the memory at this step.
        drop((link, reader, writer));
        let Hold {
            control,
            rings,
            _device,
            store,
            publication,
        } = hold;
        rings.into_iter().for_each(Memory::release);
        control.release();
        let mut first: Option<ErrorOf<P>> = None;
        if let Err(source) = events.notify(port) {
            first.get_or_insert(crate::error::Error::Backend {
                op: crate::error::Op::NotifyClose,
                source,
            });
        }
        if let Some(publication) = publication {
            if let Err(e) = publication.withdraw(&*store) {
                first.get_or_insert(crate::error::Error::Xenstore(e));
            }
        }
        if let Err(source) = events.unbind(port) {
            first.get_or_insert(crate::error::Error::Backend {
                op: crate::error::Op::Unbind,
                source,
            });
        }
        first.map_or(Ok(()), Err)
    }
}

// The core on a heap page, no platform: what the drivers rely on, step by step (Miri runs these).
#[cfg(all(test, not(vchan_loom)))]
mod tests {
    extern crate std;
    use super::*;
    use crate::layout::Side;
    use crate::ring::RingGeometry;
    use std::vec;
    use std::vec::Vec;

    /// Private memory standing in for a granted control page with two in-page rings.
    #[repr(C, align(4096))]
    struct Page([u8; abi::PAGE_SIZE]);

    type Region<'a> = SharedRegion<'a>;

    /// Both ends of a channel with the 1024-byte left ring and the 2048-byte right ring in the
    /// page, as a server and a client would see them once connected.
    struct Ends<'a> {
        server: (Link<Region<'a>>, Reader<Region<'a>>, Writer<Region<'a>>),
        client: (Link<Region<'a>>, Reader<Region<'a>>, Writer<Region<'a>>),
    }

    fn ends(page: &mut Page) -> Ends<'_> {
        let region = SharedRegion::from(&mut page.0[..]);
        let control = ControlPage::new(region);
        control.set_live(abi::CLI_LIVE, abi::LIVE_CONNECTED);
        control.set_live(abi::SRV_LIVE, abi::LIVE_CONNECTED);
        let left = RingGeometry {
            side: Side::Left,
            offset: 1024,
            size: 1024,
        };
        let right = RingGeometry {
            side: Side::Right,
            offset: 2048,
            size: 2048,
        };
        let end = |role: Role| {
            let (read, write) = match role {
                Role::Server => (left, right),
                Role::Client => (right, left),
            };
            (
                Link::new(control.clone(), role, Port(3), DomId(9)),
                Reader::new(Consumer::new(control.clone(), region, read, role, 0)),
                Writer::new(Producer::new(control.clone(), region, write, role, 0)),
            )
        };
        Ends {
            server: end(Role::Server),
            client: end(Role::Client),
        }
    }

    fn done<T: core::fmt::Debug>(step: Result<Step<T>, ChannelError>) -> (T, Notify) {
        match step {
            Ok(Step::Done(value, notify)) => (value, notify),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_ring_blocks_and_the_final_look_makes_the_writer_owe_an_event() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, _),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        let mut buf = [0u8; 8];
        assert_eq!(sread.read(&slink, &mut buf, Look::Quick), Ok(Step::Blocked));
        let (_, notify) = done(cwrite.write(&clink, b"a", Look::Quick));
        assert!(!notify.is_owed(), "nobody asked");
        let (n, _) = done(sread.read(&slink, &mut buf, Look::Quick));
        assert_eq!(n, 1);
        assert_eq!(sread.read(&slink, &mut buf, Look::Final), Ok(Step::Blocked));
        let (_, notify) = done(cwrite.write(&clink, b"b", Look::Quick));
        assert!(notify.is_owed(), "the final look asked for an event");
    }

    #[test]
    fn data_written_before_a_close_is_read_before_the_end() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, mut swrite),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        let _ = done(cwrite.write(&clink, b"last words", Look::Quick));
        clink.mark_exited();
        assert_eq!(slink.state(), Ok(State::PeerClosed));
        let mut buf = [0u8; 64];
        let (n, _) = done(sread.read(&slink, &mut buf, Look::Final));
        assert_eq!(&buf[..n], b"last words");
        assert_eq!(
            done(sread.read(&slink, &mut buf, Look::Final)).0,
            0,
            "then the end"
        );
        assert_eq!(
            sread.recv(&slink, &mut buf[..4], Look::Final),
            Err(ChannelError::PeerClosed)
        );
        assert_eq!(
            swrite.write(&slink, b"x", Look::Final),
            Err(ChannelError::PeerClosed)
        );
    }

    #[test]
    fn a_half_close_ends_the_stream_for_the_peer_only_and_owes_one_event() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, mut swrite),
            client: (clink, mut cread, mut cwrite),
        } = ends(&mut page);
        let _ = done(cwrite.write(&clink, b"request", Look::Quick));
        assert!(cwrite.shutdown(&clink).is_owed());
        assert!(!cwrite.shutdown(&clink).is_owed(), "idempotent");
        assert_eq!(
            cwrite.write(&clink, b"x", Look::Quick),
            Err(ChannelError::ShutDown)
        );
        let mut buf = [0u8; 64];
        assert_eq!(done(sread.read(&slink, &mut buf, Look::Quick)).0, 7);
        assert_eq!(
            sread.read(&slink, &mut buf, Look::Quick),
            Ok(Step::Blocked),
            "quick never ends"
        );
        assert_eq!(
            done(sread.read(&slink, &mut buf, Look::Final)).0,
            0,
            "the final look does"
        );
        // The other direction goes on.
        let _ = done(swrite.write(&slink, b"reply", Look::Quick));
        assert_eq!(done(cread.read(&clink, &mut buf, Look::Quick)).0, 5);
        assert_eq!(slink.state(), Ok(State::Connected));
    }

    #[test]
    fn a_gathering_write_takes_the_slices_in_turn_while_they_fit() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, _),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        let slices: [&[u8]; 4] = [b"abc", b"", b"defg", b"hijkl"];
        assert_eq!(
            done(cwrite.write_vectored(&clink, &slices, Look::Quick)).0,
            12
        );
        // Fill the 1024-byte ring to 5 bytes short, then gather: the ring fills mid-slice.
        let _ = done(cwrite.write(&clink, &[0u8; 1024 - 12 - 5], Look::Quick));
        assert_eq!(
            done(cwrite.write_vectored(&clink, &slices, Look::Quick)).0,
            5
        );
        assert_eq!(
            cwrite.write_vectored(&clink, &slices, Look::Quick),
            Ok(Step::Blocked)
        );
        let mut all = vec![0u8; 1024];
        assert_eq!(done(sread.read(&slink, &mut all, Look::Quick)).0, 1024);
        assert_eq!(&all[..12], b"abcdefghijkl");
        assert_eq!(&all[1019..], b"abcde");
    }

    #[test]
    fn packets_are_all_or_nothing_and_never_larger_than_the_ring() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, _),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        assert_eq!(
            cwrite.send(&clink, &[1u8; 1025], Look::Final),
            Err(ChannelError::MessageTooLarge {
                len: 1025,
                capacity: 1024
            })
        );
        let _ = done(cwrite.send(&clink, &[2u8; 1000], Look::Quick));
        assert_eq!(
            cwrite.send(&clink, &[3u8; 100], Look::Quick),
            Ok(Step::Blocked)
        );
        let mut buf = vec![0u8; 1001];
        assert_eq!(sread.recv(&slink, &mut buf, Look::Final), Ok(Step::Blocked));
        let _ = done(sread.recv(&slink, &mut buf[..1000], Look::Quick));
        assert!(buf[..1000].iter().all(|&b| b == 2));
    }

    #[test]
    fn chunks_fill_and_drain_the_ring_across_its_wrap_without_a_copy_of_ours() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, _),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for round in 0..40u8 {
            let chunks = done(cwrite.writable(&clink, 300, Look::Quick)).0;
            let n = chunks.len();
            let bytes: Vec<u8> = (0..n)
                .map(|i| round.wrapping_mul(7).wrapping_add(i as u8))
                .collect();
            chunks.first.copy_in(0, &bytes[..chunks.first.len()]);
            chunks.second.copy_in(0, &bytes[chunks.first.len()..]);
            let _ = cwrite.commit(n);
            expect.extend_from_slice(&bytes);
            let chunks = done(sread.readable(&slink, 1024, Look::Quick)).0;
            let mut out = vec![0u8; chunks.len()];
            let first = chunks.first.len();
            chunks.first.copy_out(0, &mut out[..first]);
            chunks.second.copy_out(0, &mut out[first..]);
            let taken = out.len();
            got.extend_from_slice(&out);
            let _ = sread.consume(taken);
        }
        assert_eq!(got, expect);
        assert!(expect.len() > 3 * 1024, "wrapped several times");
        assert_eq!(
            sread
                .readable(&slink, 10, Look::Quick)
                .map(|s| matches!(s, Step::Blocked)),
            Ok(true)
        );
    }

    #[test]
    #[should_panic(expected = "committed 2000 bytes of the 1024 offered")]
    fn committing_more_than_was_offered_is_a_bug_that_panics() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            client: (clink, _, mut cwrite),
            ..
        } = ends(&mut page);
        assert_eq!(
            done(cwrite.writable(&clink, 4096, Look::Quick)).0.len(),
            1024
        );
        let _ = cwrite.commit(2000);
    }

    #[test]
    fn drained_and_next_look_follow_the_peer() {
        let mut page = Page([0; abi::PAGE_SIZE]);
        let Ends {
            server: (slink, mut sread, _),
            client: (clink, _, mut cwrite),
        } = ends(&mut page);
        assert_eq!(cwrite.drained(&clink), Ok(true));
        let _ = done(cwrite.write(&clink, b"xyz", Look::Quick));
        assert_eq!(cwrite.drained(&clink), Ok(false));
        // Three bytes: enough for a stream and a 3-byte packet; not for a 4-byte packet, nor
        // for a batch (a quarter of the server's 1024-byte in-page ring) until 256 are there.
        assert_eq!(sread.next_look(&slink, Want::Stream), Some(Look::Quick));
        assert_eq!(sread.next_look(&slink, Want::Packet(3)), Some(Look::Quick));
        assert_eq!(sread.next_look(&slink, Want::Packet(4)), None);
        assert_eq!(sread.next_look(&slink, Want::Batch), None);
        let _ = done(cwrite.write(&clink, &[7; 252], Look::Quick));
        assert_eq!(sread.next_look(&slink, Want::Batch), None);
        let _ = done(cwrite.write(&clink, &[7; 1], Look::Quick));
        assert_eq!(sread.next_look(&slink, Want::Batch), Some(Look::Quick));
        let _ = done(sread.read(&slink, &mut [0u8; 256], Look::Quick));
        assert_eq!(cwrite.drained(&clink), Ok(true));
        assert_eq!(sread.next_look(&slink, Want::Stream), None);
        clink.mark_exited();
        assert_eq!(
            sread.next_look(&slink, Want::Stream),
            Some(Look::Final),
            "only the final look ends"
        );
    }
}
