//! The ring protocol over shared memory: the control-page view, and the producer and consumer
//! halves of a ring with libxenvchan's notify protocol.
//!
//! This module is the only one that touches memory the peer can write, and it does so only
//! through [`SharedRegion`](xen_types::memory::SharedRegion): control words are reached through
//! atomics at fixed, aligned offsets, and ring bytes are moved with raw copies into or out of
//! private buffers, each bounds-checked. Every value the peer can write is read once per decision
//! and validated; what must be trusted (ring sizes, ring offsets, our own indices) is kept in
//! private memory.
//!
//! The views ([`ControlPage`], [`Consumer`], [`Producer`]) hold the *owner* of their memory, any
//! [`AsSharedRegion`]: a borrowed region (`SharedRegion<'a>`, so the view borrows for `'a`), or
//! something that keeps the mapping alive (the endpoint's shared handle on a grant mapping). They
//! take a fresh view of the region from it for each operation, so none can outlive the memory.

use core::fmt;
#[cfg(not(vchan_loom))]
use core::sync::atomic::{fence, Ordering};
// Under the model checker the same code runs on loom's atomics and fences (see `loom_page`).
#[cfg(vchan_loom)]
use loom::sync::atomic::{fence, Ordering};
use xen_types::memory::AsSharedRegion;
#[cfg(not(vchan_loom))]
use xen_types::memory::SharedRegion as Region;

#[cfg(vchan_loom)]
use loom_page::Region;

use crate::abi;
use crate::layout::Side;

/// The view of `mem`'s region the ring code works on: the region itself, or under the model
/// checker its loom stand-in (same methods, loom's atomics and checked cells).
#[inline(always)]
fn view<M: AsSharedRegion + ?Sized>(mem: &M) -> Region<'_> {
    #[cfg(not(vchan_loom))]
    {
        mem.region()
    }
    #[cfg(vchan_loom)]
    {
        Region::model(mem.region())
    }
}

/// A view of a mapped vchan control page, holding `M`, the owner of its memory.
///
/// Every field is reached through an atomic at its fixed offset (`abi`); the structs of `abi` are
/// never placed over the page.
#[derive(Clone)]
pub struct ControlPage<M> {
    mem: M,
}

impl<M: AsSharedRegion> fmt::Debug for ControlPage<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPage")
            .field("base", &self.mem.region().as_ptr())
            .finish()
    }
}

impl<M: AsSharedRegion> ControlPage<M> {
    /// A view of the control page at the start of `mem`'s region.
    ///
    /// Panics if the region is shorter than a page ([`abi::PAGE_SIZE`]): every offset used is
    /// then in bounds (a backend's region is checked by the endpoint before it gets here).
    pub fn new(mem: M) -> ControlPage<M> {
        #[cfg(not(vchan_loom))]
        assert!(
            mem.region().len() >= abi::PAGE_SIZE,
            "a control page needs {} bytes, the region has {}",
            abi::PAGE_SIZE,
            mem.region().len()
        );
        ControlPage { mem }
    }

    /// The owner of the page's memory (an in-page ring lives in it too).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The page's region, for one operation.
    #[inline(always)]
    fn region(&self) -> Region<'_> {
        view(&self.mem)
    }

    /// Zero the whole page (the server does this before filling it in).
    pub fn zero(&self) {
        // The model's page has only the control words, which this zeroes too.
        self.region().fill(0, abi::PAGE_SIZE, 0);
    }

    /// Read a ring's order (once: the caller keeps the value).
    pub fn order(&self, side: Side) -> u16 {
        let offset = match side {
            Side::Left => abi::LEFT_ORDER,
            Side::Right => abi::RIGHT_ORDER,
        };
        // ORDERING: Relaxed; read once before the rings are used, after the mapping itself.
        self.region().load_u16(offset, Ordering::Relaxed)
    }

    /// Write a ring's order (the server, before publishing the page).
    pub fn set_order(&self, side: Side, order: u16) {
        let offset = match side {
            Side::Left => abi::LEFT_ORDER,
            Side::Right => abi::RIGHT_ORDER,
        };
        // ORDERING: Relaxed; the page is published to the peer through xenstore afterwards,
        // which orders it.
        self.region().store_u16(offset, order, Ordering::Relaxed);
    }

    /// Read entry `index` of the grant list (once).
    pub fn grant(&self, index: usize) -> u32 {
        // ORDERING: Relaxed; as for `order`.
        self.region()
            .load_u32(abi::GRANTS + 4 * index, Ordering::Relaxed)
    }

    /// Write entry `index` of the grant list.
    pub fn set_grant(&self, index: usize, gref: u32) {
        // ORDERING: Relaxed; as for `set_order`.
        self.region()
            .store_u32(abi::GRANTS + 4 * index, gref, Ordering::Relaxed);
    }

    /// Read a live byte (`abi::CLI_LIVE` or `abi::SRV_LIVE`).
    pub fn live(&self, offset: usize) -> u8 {
        // ORDERING: SeqCst; a close is "set live = 0, then notify", and the reader that woke on
        // that notification re-checks the ring after reading the byte (see the endpoint's EOF
        // re-check), so this load must not be reordered with the index loads around it.
        self.region().load_u8(offset, Ordering::SeqCst)
    }

    /// Write a live byte.
    pub fn set_live(&self, offset: usize, value: u8) {
        // ORDERING: SeqCst; pairs with the peer's `live` load: every index store before this one
        // (our last data) is visible to a peer that sees the new value.
        self.region().store_u8(offset, value, Ordering::SeqCst);
    }

    /// Set the half-close flag ([`abi::NOTIFY_WRITE_SHUT`]) in a notify byte.
    pub fn set_write_shut(&self, offset: usize) {
        // ORDERING: SeqCst, after our last index store (Release): a peer that sees the flag with
        // its SeqCst load in `write_shut` and then looks at the ring sees all we wrote.
        self.region()
            .fetch_or_u8(offset, abi::NOTIFY_WRITE_SHUT, Ordering::SeqCst);
    }

    /// Whether a notify byte carries the half-close flag.
    pub fn write_shut(&self, offset: usize) -> bool {
        // ORDERING: SeqCst, pairs with `set_write_shut`; like `live`, the reader re-checks the
        // ring after seeing it, so it must not be reordered with the index loads around it.
        self.region().load_u8(offset, Ordering::SeqCst) & abi::NOTIFY_WRITE_SHUT != 0
    }

    /// Write a notify byte outright (the handshake's initial request).
    pub fn set_notify(&self, offset: usize, bits: u8) {
        // ORDERING: SeqCst; the handshake's writes are then published with the event or xenstore.
        self.region().store_u8(offset, bits, Ordering::SeqCst);
    }

    /// Read an index with no ordering (the handshake's initial copy of our own indices).
    pub fn index_relaxed(&self, offset: usize) -> u32 {
        // ORDERING: Relaxed; used once at connect, before any data moves.
        self.region().load_u32(offset, Ordering::Relaxed)
    }

    /// Read an index (once), with Acquire: bytes the peer published before it are visible.
    fn load_index(&self, offset: usize) -> u32 {
        load_index(self.region(), offset)
    }

    /// Publish one of our own indices, with Release.
    #[cfg(test)]
    fn store_index(&self, offset: usize, value: u32) {
        store_index(self.region(), offset, value);
    }

    /// Ask the peer for a notification: OR `bit` into the peer's notify byte, then a full fence.
    fn request_notify(&self, peer_notify: usize, bit: u8) {
        // ORDERING: the RMW itself may be Relaxed; what matters is the SeqCst fence after it,
        // which pairs with the fence in `take_notify_request` on the peer's side. Without it the
        // caller's re-read of the peer's index could be satisfied before our request is visible,
        // the peer could publish in between, see no request, send no event, and we would sleep
        // on data that is already there: the lost wake-up this protocol exists to prevent.
        self.region()
            .fetch_or_u8(peer_notify, bit, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}

/// Read an index (once), with Acquire.
#[inline(always)]
fn load_index(page: Region<'_>, offset: usize) -> u32 {
    // ORDERING: Acquire pairs with the peer's Release store of the same index: for `prod`, the
    // ring bytes it wrote are visible before we copy them; for `cons`, its reads of the bytes it
    // consumed are done before we overwrite them.
    page.load_u32(offset, Ordering::Acquire)
}

/// Publish one of our own indices, with Release.
#[inline(always)]
fn store_index(page: Region<'_>, offset: usize, value: u32) {
    // ORDERING: Release pairs with the peer's Acquire load in `load_index`: our copies into or
    // out of the ring happen-before the peer sees the index move.
    page.store_u32(offset, value, Ordering::Release);
}

/// An event owed to the peer: an operation published an index and found the peer's request for
/// news of it. Whoever holds it must send the event (on the channel's port), or the peer may
/// sleep on news it will never hear of; it is a value so that it cannot be forgotten silently
/// (virtio-queue's `needs_notification` is the model).
#[must_use = "the peer asked to be told: send the event (or it may sleep for ever)"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(bool);

impl Notify {
    /// Nothing owed.
    pub const NONE: Notify = Notify(false);
    /// An event owed (a half-close or a close is always announced).
    pub const OWED: Notify = Notify(true);

    /// Whether an event is owed.
    #[inline]
    pub fn is_owed(self) -> bool {
        self.0
    }

    /// Owed if either is.
    #[inline]
    pub fn or(self, other: Notify) -> Notify {
        Notify(self.0 | other.0)
    }
}

/// After publishing an index: a full fence, then fetch-and-clear `bit` in our own notify byte.
/// Returns whether the peer asked for an event.
#[inline(always)]
fn take_notify_request(page: Region<'_>, own_notify: usize, bit: u8) -> Notify {
    // ORDERING: the SeqCst fence orders our index store (just made) before the load of the
    // request bit; it pairs with the fence in the peer's `request_notify`. Either the peer
    // re-reads our index after our store, or we see its request and send the event.
    fence(Ordering::SeqCst);
    // Look before touching: while the peer keeps up it has no request outstanding, and a plain
    // load leaves the cache line shared where a read-modify-write would take it exclusive on
    // every call. Only we clear bits in this byte, so a set bit seen here is still set for the
    // fetch-and-clear below (a hostile peer that clears it only loses its own event).
    // ORDERING: Relaxed; the fence above already ordered this load after our index store.
    if page.load_u8(own_notify, Ordering::Relaxed) & bit == 0 {
        return Notify::NONE;
    }
    Notify(page.fetch_and_u8(own_notify, !bit, Ordering::Relaxed) & bit != 0)
}

/// A peer broke the ring's invariants: its index claims more bytes than the ring holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCorrupted {
    /// Which ring.
    pub ring: Side,
    /// The producer index seen.
    pub prod: u32,
    /// The consumer index seen.
    pub cons: u32,
    /// The ring's size.
    pub size: u32,
}

impl fmt::Display for RingCorrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} ring's indices (prod {}, cons {}) claim {} bytes in a ring of {}",
            self.ring,
            self.prod,
            self.cons,
            self.prod.wrapping_sub(self.cons),
            self.size
        )
    }
}

impl core::error::Error for RingCorrupted {}

/// The shape of one ring as seen from one endpoint, all in private memory.
#[derive(Clone, Copy, Debug)]
pub struct RingGeometry {
    /// Which ring.
    pub side: Side,
    /// Where the ring's data starts in the region that holds it (1024 or 2048 for a ring in the
    /// control page, 0 for a ring on pages of its own).
    pub offset: usize,
    /// Size in bytes, a power of two.
    pub size: u32,
}

/// Which notify bytes belong to which endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The server (granted the pages; reads left, writes right).
    Server,
    /// The client (mapped the pages; writes left, reads right).
    Client,
}

impl Role {
    /// The notify byte this side must honour.
    pub fn own_notify(self) -> usize {
        match self {
            Role::Server => abi::SRV_NOTIFY,
            Role::Client => abi::CLI_NOTIFY,
        }
    }

    /// The notify byte the peer must honour.
    pub fn peer_notify(self) -> usize {
        match self {
            Role::Server => abi::CLI_NOTIFY,
            Role::Client => abi::SRV_NOTIFY,
        }
    }

    /// This side's live byte.
    pub fn own_live(self) -> usize {
        match self {
            Role::Server => abi::SRV_LIVE,
            Role::Client => abi::CLI_LIVE,
        }
    }

    /// The peer's live byte.
    pub fn peer_live(self) -> usize {
        match self {
            Role::Server => abi::CLI_LIVE,
            Role::Client => abi::SRV_LIVE,
        }
    }

    /// The ring this side reads.
    pub fn read_side(self) -> Side {
        match self {
            Role::Server => Side::Left,
            Role::Client => Side::Right,
        }
    }

    /// The ring this side writes.
    pub fn write_side(self) -> Side {
        match self {
            Role::Server => Side::Right,
            Role::Client => Side::Left,
        }
    }
}

fn index_offsets(side: Side) -> (usize, usize) {
    match side {
        Side::Left => (abi::LEFT_PROD, abi::LEFT_CONS),
        Side::Right => (abi::RIGHT_PROD, abi::RIGHT_CONS),
    }
}

/// What both halves of a ring know: where it is, where its indices are, which notify byte is
/// whose. All private, all fixed at connect; the memory is reached through its owners.
struct RingEnd<M> {
    page: ControlPage<M>,
    /// The owner of the region holding the ring's bytes (the control page's, for an in-page ring).
    data: M,
    ring: RingGeometry,
    prod_offset: usize,
    cons_offset: usize,
    own_notify: usize,
    peer_notify: usize,
}

impl<M: AsSharedRegion> RingEnd<M> {
    fn new(page: ControlPage<M>, data: M, ring: RingGeometry, role: Role) -> RingEnd<M> {
        assert!(
            ring.size.is_power_of_two(),
            "a ring's size is a power of two"
        );
        let (prod_offset, cons_offset) = index_offsets(ring.side);
        let end = RingEnd {
            page,
            data,
            ring,
            prod_offset,
            cons_offset,
            own_notify: role.own_notify(),
            peer_notify: role.peer_notify(),
        };
        // The ring must lie inside its region: checked once here (a panic names the bug), and
        // again, as one comparison, by each operation's view.
        end.bytes();
        end
    }

    /// The ring's bytes, for one operation.
    #[inline(always)]
    fn bytes(&self) -> Region<'_> {
        view(&self.data).subregion(self.ring.offset, self.ring.size as usize)
    }
}

/// The reading half of a ring: owns the consumer index. `M` owns the memory (see the module).
pub struct Consumer<M> {
    end: RingEnd<M>,
    /// Our consumer index: we are its only writer, so the private copy is the truth.
    cons: u32,
    /// The peer's producer index as last loaded (and validated). Data up to it is ready, so a
    /// read that it already covers needs no load of the control page's cache line, which the
    /// peer is writing: one cross-CPU transfer fewer per operation.
    seen_prod: u32,
}

/// The writing half of a ring: owns the producer index. `M` owns the memory (see the module).
pub struct Producer<M> {
    end: RingEnd<M>,
    /// Our producer index: we are its only writer, so the private copy is the truth.
    prod: u32,
    /// The peer's consumer index as last loaded (and validated). Space up to it is free, so a
    /// write that fits it needs no load of the control page's cache line.
    seen_cons: u32,
}

impl<M: AsSharedRegion> Consumer<M> {
    /// The consumer of `ring`, whose bytes are in `data`'s region at `ring.offset`, for `role`,
    /// starting from consumer index `cons`.
    ///
    /// Panics if the ring does not lie inside that region, or its size is not a power of two.
    pub fn new(page: ControlPage<M>, data: M, ring: RingGeometry, role: Role, cons: u32) -> Self {
        Consumer {
            end: RingEnd::new(page, data, ring, role),
            cons,
            seen_prod: cons,
        }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.end.ring.size as usize
    }

    /// Where the ring lies: the owner of the region that holds its bytes, and the ring's
    /// geometry in it (a driver that must name the ring's address to others, such as the C
    /// ABI's `struct libxenvchan_ring`, takes it from here; the bytes are reached only through
    /// this half).
    pub fn placement(&self) -> (&M, RingGeometry) {
        (&self.end.data, self.end.ring)
    }

    /// Our consumer index: where the next byte is read from.
    pub fn index(&self) -> u32 {
        self.cons
    }

    /// Bytes ready to read: the peer's producer index is read once and checked.
    #[inline]
    pub fn available(&self) -> Result<usize, RingCorrupted> {
        let prod = self.end.page.load_index(self.end.prod_offset);
        let ready = prod.wrapping_sub(self.cons);
        if ready > self.end.ring.size {
            return Err(RingCorrupted {
                ring: self.end.ring.side,
                prod,
                cons: self.cons,
                size: self.end.ring.size,
            });
        }
        Ok(ready as usize)
    }

    /// Ask the writer to notify us when it writes, then look again: the answer is what a caller
    /// that is about to sleep must use.
    pub fn request_and_recheck(&self) -> Result<usize, RingCorrupted> {
        self.request_write_notify();
        self.available()
    }

    /// Ask the writer to notify us when it writes (followed by a full fence): a caller that then
    /// finds the ring still short may sleep until the event.
    pub fn request_write_notify(&self) {
        self.end
            .page
            .request_notify(self.end.peer_notify, abi::NOTIFY_WRITE);
    }

    /// Bytes ready for a read of `wanted`: from the last producer index seen if that covers
    /// it, else from a fresh load (kept for next time).
    #[inline]
    fn ready_for(&mut self, wanted: usize) -> Result<usize, RingCorrupted> {
        // The last index seen was validated then; our own index only moved up to it since.
        let known = self.seen_prod.wrapping_sub(self.cons) as usize;
        if known >= wanted {
            return Ok(known);
        }
        let ready = self.available()?;
        self.seen_prod = self.cons.wrapping_add(ready as u32);
        Ok(ready)
    }

    /// Copy up to `buf.len()` bytes out. Returns the count and the event owed to the writer, if
    /// it asked to be told that space was freed.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(usize, Notify), RingCorrupted> {
        let n = self.ready_for(buf.len())?.min(buf.len());
        if n == 0 {
            return Ok((0, Notify::NONE));
        }
        Ok((n, self.take(&mut buf[..n])))
    }

    /// Copy exactly `buf.len()` bytes out, or nothing if fewer are ready.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<Option<Notify>, RingCorrupted> {
        if self.ready_for(buf.len())? < buf.len() {
            return Ok(None);
        }
        Ok(Some(self.take(buf)))
    }

    /// Copy `buf.len()` bytes (known to be ready) out and publish the new index.
    #[inline]
    fn take(&mut self, buf: &mut [u8]) -> Notify {
        let mask = self.end.ring.size - 1;
        let start = (self.cons & mask) as usize;
        let first = buf.len().min(self.end.ring.size as usize - start);
        // `start + first <= size`, and the wrapped part, `buf.len() - first` bytes from 0, is at
        // most `size - first` (as `buf.len() <= size`): both copies stay inside the ring, and
        // the region checks it again. The bytes are ours to read: the peer's Release store of
        // `prod` (loaded with Acquire in `available`) published them, and it will not touch them
        // again until our store of `cons` below. A hostile peer that writes them anyway only
        // changes the bytes we copy; it cannot reach our memory.
        let bytes = self.end.bytes();
        let (head, tail) = buf.split_at_mut(first);
        bytes.copy_out(start, head);
        // Most reads do not wrap: no second copy (nor its bounds check) then.
        if !tail.is_empty() {
            bytes.copy_out(0, tail);
        }
        self.advance(buf.len())
    }

    /// Move our index past `n` bytes (known to be ready: at most the ring's size) and publish it.
    #[inline]
    fn advance(&mut self, n: usize) -> Notify {
        // Ring sizes are at most 1 MiB and `n` is at most the ready count.
        self.cons = self.cons.wrapping_add(n as u32);
        let page = self.end.page.region();
        store_index(page, self.end.cons_offset, self.cons);
        take_notify_request(page, self.end.own_notify, abi::NOTIFY_READ)
    }

    /// The bytes ready to read, up to `max`, as the ring's own memory: for a caller that moves
    /// them somewhere without a copy of ours in between (a `write(2)` to a socket straight from
    /// the ring). Read a prefix of the chunks, then [`consume`](Self::consume) that many bytes.
    /// Empty chunks mean nothing is ready.
    #[cfg(not(vchan_loom))]
    pub fn readable(&mut self, max: usize) -> Result<Chunks<'_>, RingCorrupted> {
        let n = self.ready_for(max.max(1))?.min(max);
        let start = (self.cons & (self.end.ring.size - 1)) as usize;
        Ok(self.end.chunks(start, n))
    }

    /// Give the first `n` bytes of the last [`readable`](Self::readable) chunks back to the
    /// writer. Panics if `n` is more than they held (a bug of the caller's).
    #[cfg(not(vchan_loom))]
    pub fn consume(&mut self, n: usize) -> Notify {
        let ready = self.seen_prod.wrapping_sub(self.cons) as usize;
        assert!(n <= ready, "consumed {n} bytes of the {ready} offered");
        if n == 0 {
            return Notify::NONE;
        }
        self.advance(n)
    }
}

/// Up to two runs of a ring's bytes, in ring order (the second is where the first wraps to): the
/// ring's own memory, for zero-copy I/O. Borrowed from the half that made them.
#[cfg(not(vchan_loom))]
#[derive(Debug, Clone, Copy)]
pub struct Chunks<'a> {
    /// The run from the current position up to the end of the ring (or fewer bytes).
    pub first: xen_types::memory::SharedRegion<'a>,
    /// The run from the ring's start, after the wrap (often empty).
    pub second: xen_types::memory::SharedRegion<'a>,
}

#[cfg(not(vchan_loom))]
impl Chunks<'_> {
    /// The bytes in both runs.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Whether both runs are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(not(vchan_loom))]
impl<M: AsSharedRegion> RingEnd<M> {
    /// `len` bytes of the ring from position `start`, split at the wrap.
    fn chunks(&self, start: usize, len: usize) -> Chunks<'_> {
        let bytes = self.bytes();
        let first = len.min(self.ring.size as usize - start);
        Chunks {
            first: bytes.subregion(start, first),
            second: bytes.subregion(0, len - first),
        }
    }
}

impl<M: AsSharedRegion> Producer<M> {
    /// The producer of `ring`, whose bytes are in `data`'s region at `ring.offset`, for `role`,
    /// starting from producer index `prod`.
    ///
    /// Panics if the ring does not lie inside that region, or its size is not a power of two.
    pub fn new(page: ControlPage<M>, data: M, ring: RingGeometry, role: Role, prod: u32) -> Self {
        Producer {
            end: RingEnd::new(page, data, ring, role),
            prod,
            seen_cons: prod.wrapping_sub(ring.size),
        }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.end.ring.size as usize
    }

    /// Where the ring lies (see [`Consumer::placement`]).
    pub fn placement(&self) -> (&M, RingGeometry) {
        (&self.end.data, self.end.ring)
    }

    /// Free space in bytes: the peer's consumer index is read once and checked.
    pub fn space(&self) -> Result<usize, RingCorrupted> {
        let cons = self.end.page.load_index(self.end.cons_offset);
        let used = self.prod.wrapping_sub(cons);
        if used > self.end.ring.size {
            return Err(RingCorrupted {
                ring: self.end.ring.side,
                prod: self.prod,
                cons,
                size: self.end.ring.size,
            });
        }
        Ok((self.end.ring.size - used) as usize)
    }

    /// Ask the reader to notify us when it consumes, then look again.
    pub fn request_and_recheck(&self) -> Result<usize, RingCorrupted> {
        self.request_read_notify();
        self.space()
    }

    /// Ask the reader to notify us when it consumes (followed by a full fence): a caller that
    /// then finds the ring still full may sleep until the event.
    pub fn request_read_notify(&self) {
        self.end
            .page
            .request_notify(self.end.peer_notify, abi::NOTIFY_READ);
    }

    /// Our producer index: where the next byte goes.
    pub fn index(&self) -> u32 {
        self.prod
    }

    /// Whether the reader has consumed everything written, and at least one byte written after
    /// producer index `before`: it was still reading when those bytes arrived.
    pub fn consumed_since(&self, before: u32) -> Result<bool, RingCorrupted> {
        Ok(self.prod != before && self.space()? == self.capacity())
    }

    /// Whether a write of `wanted` bytes fits the space known from the last consumer index
    /// seen, so that it will not read the control page at all.
    #[inline]
    pub fn known_room_covers(&self, wanted: usize) -> bool {
        self.known_room() >= wanted
    }

    #[inline]
    fn known_room(&self) -> usize {
        // The last index seen was validated then; our own index only moved since, by at most
        // the free space it showed.
        (self.end.ring.size - self.prod.wrapping_sub(self.seen_cons)) as usize
    }

    /// Free space for a write of `wanted`: from the last consumer index seen if that leaves
    /// room, else from a fresh load (kept for next time).
    #[inline]
    fn room_for(&mut self, wanted: usize) -> Result<usize, RingCorrupted> {
        let known = self.known_room();
        if known >= wanted {
            return Ok(known);
        }
        let free = self.space()?;
        self.seen_cons = self
            .prod
            .wrapping_add(free as u32)
            .wrapping_sub(self.end.ring.size);
        Ok(free)
    }

    /// Copy up to `buf.len()` bytes in. Returns the count and the event owed to the reader, if it
    /// asked to be told about new data.
    #[inline]
    pub fn write(&mut self, buf: &[u8]) -> Result<(usize, Notify), RingCorrupted> {
        let n = self.room_for(buf.len())?.min(buf.len());
        if n == 0 {
            return Ok((0, Notify::NONE));
        }
        Ok((n, self.put(&buf[..n])))
    }

    /// Copy all of `buf` in, or nothing if there is not room for all of it.
    pub fn write_all_or_nothing(&mut self, buf: &[u8]) -> Result<Option<Notify>, RingCorrupted> {
        if self.room_for(buf.len())? < buf.len() {
            return Ok(None);
        }
        Ok(Some(self.put(buf)))
    }

    /// Copy `buf` (known to fit) in and publish the new index.
    #[inline]
    fn put(&mut self, buf: &[u8]) -> Notify {
        let mask = self.end.ring.size - 1;
        let start = (self.prod & mask) as usize;
        let first = buf.len().min(self.end.ring.size as usize - start);
        // Both copies stay inside the ring (as in `take`; the region checks it again) and
        // read from a private buffer. The bytes are free: the peer's Release store of `cons`
        // (loaded with Acquire in `space`) says it has finished reading them.
        let bytes = self.end.bytes();
        let (head, tail) = buf.split_at(first);
        bytes.copy_in(start, head);
        if !tail.is_empty() {
            bytes.copy_in(0, tail);
        }
        self.advance(buf.len())
    }

    /// Move our index past `n` bytes (known to fit: at most the ring's size) and publish it.
    #[inline]
    fn advance(&mut self, n: usize) -> Notify {
        // Ring sizes are at most 1 MiB and `n` is at most the free space.
        self.prod = self.prod.wrapping_add(n as u32);
        let page = self.end.page.region();
        store_index(page, self.end.prod_offset, self.prod);
        take_notify_request(page, self.end.own_notify, abi::NOTIFY_WRITE)
    }

    /// The free space, up to `max` bytes, as the ring's own memory: for a caller that fills it
    /// without a copy of ours in between (a `read(2)` from a socket straight into the ring).
    /// Fill a prefix of the chunks, then [`commit`](Self::commit) that many bytes. Empty chunks
    /// mean the ring is full.
    #[cfg(not(vchan_loom))]
    pub fn writable(&mut self, max: usize) -> Result<Chunks<'_>, RingCorrupted> {
        let n = self.room_for(max.max(1))?.min(max);
        let start = (self.prod & (self.end.ring.size - 1)) as usize;
        Ok(self.end.chunks(start, n))
    }

    /// Publish the first `n` bytes of the last [`writable`](Self::writable) chunks. Panics if
    /// `n` is more than they held (a bug of the caller's).
    #[cfg(not(vchan_loom))]
    pub fn commit(&mut self, n: usize) -> Notify {
        let room = self.known_room();
        assert!(n <= room, "committed {n} bytes of the {room} offered");
        if n == 0 {
            return Notify::NONE;
        }
        self.advance(n)
    }
}

/// The control page and ring bytes as the model checker's objects (`--cfg vchan_loom`): the
/// ring code above runs unchanged on them, through [`Region`], which has the methods of
/// `SharedRegion` that the ring uses, on loom's atomics and checked cells.
///
/// A [`Page`] or [`Cells`] lends, through `AsSharedRegion`, an empty `SharedRegion` that only
/// carries its address (no byte of it can be accessed as shared memory); [`Region::model`] turns
/// that address back into the model's object. So under `vchan_loom` every owner given to the
/// ring views must lend the region of a `Page` (for a control page) or of a `Cells` (for ring
/// bytes); the endpoints, which map real memory, are built but never run there.
#[cfg(vchan_loom)]
pub mod loom_page {
    use core::marker::PhantomData;
    use core::ptr::NonNull;

    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};
    use xen_types::memory::{AsSharedRegion, SharedRegion};

    use crate::abi;

    /// The control words of a vchan page (indices, orders, live and notify bytes).
    pub struct Page {
        indices: [AtomicU32; 4],
        orders: [AtomicU16; 2],
        bytes: [AtomicU8; 4],
    }

    impl Page {
        /// A zeroed page, both sides live.
        pub fn new() -> Page {
            let page = Page {
                indices: core::array::from_fn(|_| AtomicU32::new(0)),
                orders: core::array::from_fn(|_| AtomicU16::new(0)),
                bytes: core::array::from_fn(|_| AtomicU8::new(0)),
            };
            page.u8_at(abi::CLI_LIVE).store(1, Ordering::Relaxed);
            page.u8_at(abi::SRV_LIVE).store(1, Ordering::Relaxed);
            page
        }

        fn u32_at(&self, offset: usize) -> &AtomicU32 {
            assert!(offset.is_multiple_of(4));
            &self.indices[offset / 4]
        }

        fn u16_at(&self, offset: usize) -> &AtomicU16 {
            assert!(offset.is_multiple_of(2));
            &self.orders[(offset - abi::LEFT_ORDER) / 2]
        }

        fn u8_at(&self, offset: usize) -> &AtomicU8 {
            &self.bytes[offset - abi::CLI_LIVE]
        }

        fn zero(&self) {
            for word in &self.indices {
                word.store(0, Ordering::Relaxed);
            }
            for word in &self.orders {
                word.store(0, Ordering::Relaxed);
            }
            for byte in &self.bytes {
                byte.store(0, Ordering::Relaxed);
            }
        }
    }

    impl Default for Page {
        fn default() -> Page {
            Page::new()
        }
    }

    impl AsSharedRegion for Page {
        fn region(&self) -> SharedRegion<'_> {
            // SAFETY: an empty region is valid for every access it allows (none); it only
            // carries the page's address, for `Region::model`, for as long as `self` is borrowed.
            unsafe { SharedRegion::from_raw_parts(NonNull::from(self).cast(), 0) }
        }
    }

    /// The data bytes of one ring.
    pub struct Cells(Vec<UnsafeCell<u8>>);

    impl Cells {
        /// `size` zero bytes.
        pub fn new(size: usize) -> Cells {
            Cells((0..size).map(|_| UnsafeCell::new(0)).collect())
        }
    }

    impl AsSharedRegion for Cells {
        fn region(&self) -> SharedRegion<'_> {
            // SAFETY: as for `Page`.
            unsafe { SharedRegion::from_raw_parts(NonNull::from(self).cast(), 0) }
        }
    }

    /// The model's stand-in for `SharedRegion`: atomics reach a [`Page`]'s control words, copies
    /// a [`Cells`]' bytes (`offset` and `len` select a part of them).
    #[derive(Clone, Copy)]
    pub struct Region<'a> {
        base: NonNull<u8>,
        offset: usize,
        len: usize,
        _model: PhantomData<&'a ()>,
    }

    impl<'a> Region<'a> {
        /// The model's object behind a region lent by a [`Page`] or a [`Cells`] (see the module).
        pub(super) fn model(region: SharedRegion<'a>) -> Region<'a> {
            assert!(
                region.is_empty(),
                "under vchan_loom the ring runs only on the model's pages and cells"
            );
            Region {
                base: region.as_ptr(),
                offset: 0,
                len: usize::MAX,
                _model: PhantomData,
            }
        }

        fn page(&self) -> &'a Page {
            // SAFETY: atomics are used only on control pages, which under `vchan_loom` are
            // `Page`s (the module's rule), borrowed for `'a` by the region this came from.
            unsafe { self.base.cast::<Page>().as_ref() }
        }

        fn cells(&self) -> &'a Cells {
            // SAFETY: copies are used only on ring bytes, which under `vchan_loom` are `Cells`
            // (the module's rule), borrowed for `'a`.
            unsafe { self.base.cast::<Cells>().as_ref() }
        }

        pub(super) fn subregion(&self, offset: usize, len: usize) -> Region<'a> {
            let cells = self.cells().0.len();
            assert!(
                offset <= cells && len <= cells - offset,
                "outside the cells"
            );
            Region {
                base: self.base,
                offset: self.offset + offset,
                len,
                _model: PhantomData,
            }
        }

        pub(super) fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
            self.page().u8_at(offset).load(order)
        }

        pub(super) fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
            self.page().u16_at(offset).load(order)
        }

        pub(super) fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
            self.page().u32_at(offset).load(order)
        }

        pub(super) fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
            self.page().u8_at(offset).store(value, order);
        }

        pub(super) fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
            self.page().u16_at(offset).store(value, order);
        }

        pub(super) fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
            self.page().u32_at(offset).store(value, order);
        }

        pub(super) fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
            self.page().u8_at(offset).fetch_or(bits, order)
        }

        pub(super) fn fetch_and_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
            self.page().u8_at(offset).fetch_and(bits, order)
        }

        /// Only ever a whole control page, zeroed: the model's page has only control words.
        pub(super) fn fill(&self, offset: usize, len: usize, value: u8) {
            assert_eq!((offset, len, value), (0, abi::PAGE_SIZE, 0));
            self.page().zero();
        }

        /// Ring bytes out, each a loom cell read, which loom checks is ordered after the index
        /// store that published it.
        pub(super) fn copy_out(&self, offset: usize, out: &mut [u8]) {
            assert!(offset <= self.len && out.len() <= self.len - offset);
            let cells = &self.cells().0[self.offset + offset..][..out.len()];
            for (byte, cell) in out.iter_mut().zip(cells) {
                *byte = cell.with(|p| {
                    // SAFETY: loom checks this read does not race with a write.
                    unsafe { *p }
                });
            }
        }

        /// See `copy_out`.
        pub(super) fn copy_in(&self, offset: usize, bytes: &[u8]) {
            assert!(offset <= self.len && bytes.len() <= self.len - offset);
            let cells = &self.cells().0[self.offset + offset..][..bytes.len()];
            for (byte, cell) in bytes.iter().zip(cells) {
                cell.with_mut(|p| {
                    // SAFETY: loom checks this write does not race with a read or a write.
                    unsafe { *p = *byte }
                });
            }
        }
    }
}

// The unit tests use heap pages as control pages, which the loom build does not read.
#[cfg(all(test, not(vchan_loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;
    use xen_types::memory::SharedRegion;

    /// Private memory standing in for a granted control page.
    #[repr(C, align(4096))]
    struct Page([u8; abi::PAGE_SIZE]);

    impl Page {
        fn new() -> Page {
            Page([0; abi::PAGE_SIZE])
        }
        /// The page as shared memory, borrowed exclusively for as long as the views use it.
        fn region(&mut self) -> SharedRegion<'_> {
            SharedRegion::from(&mut self.0[..])
        }
    }

    type Region<'a> = SharedRegion<'a>;

    /// The halves of the left ring, in the page at 1024 (order 10) or 2048 (order 11).
    fn pair(region: Region<'_>, order: u16) -> (Producer<Region<'_>>, Consumer<Region<'_>>) {
        pair_from(region, order, 0)
    }

    fn pair_from(
        region: Region<'_>,
        order: u16,
        start: u32,
    ) -> (Producer<Region<'_>>, Consumer<Region<'_>>) {
        let page = ControlPage::new(region);
        let ring = RingGeometry {
            side: Side::Left,
            offset: 1 << order,
            size: 1 << order,
        };
        (
            Producer::new(page.clone(), region, ring, Role::Client, start),
            Consumer::new(page, region, ring, Role::Server, start),
        )
    }

    #[test]
    fn bytes_written_come_out_in_order_across_the_wrap() {
        let mut page = Page::new();
        let (mut tx, mut rx) = pair(page.region(), 10);
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..50 {
            let chunk: Vec<u8> = (0..(round * 37 % 700 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let (n, _notify) = tx.write(&chunk).unwrap();
            assert_eq!(n, chunk.len());
            let mut out = vec![0u8; 1024];
            let (m, _) = rx.read(&mut out).unwrap();
            assert_eq!(m, n);
            for b in &out[..m] {
                expect = expect.wrapping_add(1);
                assert_eq!(*b, expect);
            }
        }
    }

    #[test]
    fn a_full_ring_accepts_nothing_and_an_empty_one_gives_nothing() {
        let mut page = Page::new();
        let (mut tx, mut rx) = pair(page.region(), 10);
        assert_eq!(tx.write(&[1u8; 2000]).unwrap().0, 1024);
        assert_eq!(tx.space().unwrap(), 0);
        assert_eq!(tx.write(&[1]).unwrap().0, 0);
        assert_eq!(tx.write_all_or_nothing(&[1]).unwrap(), None);
        let mut buf = [0u8; 4096];
        assert_eq!(rx.read(&mut buf).unwrap().0, 1024);
        assert_eq!(rx.read(&mut buf).unwrap().0, 0);
        assert_eq!(rx.read_exact(&mut buf[..1]).unwrap(), None);
    }

    #[test]
    fn notify_is_requested_only_when_asked_and_consumed_once() {
        let mut page = Page::new();
        let (mut tx, rx) = pair(page.region(), 10);
        assert!(!tx.write(b"a").unwrap().1.is_owed(), "no request, no event");
        assert_eq!(rx.request_and_recheck().unwrap(), 1);
        assert!(tx.write(b"b").unwrap().1.is_owed(), "the reader asked");
        assert!(
            !tx.write(b"c").unwrap().1.is_owed(),
            "the request was consumed"
        );
    }

    #[test]
    fn a_producer_index_past_the_ring_is_reported_not_hidden() {
        let mut page = Page::new();
        let region = page.region();
        let view = ControlPage::new(region);
        let (_tx, rx) = pair(region, 10);
        view.store_index(abi::LEFT_PROD, 1025);
        let err = rx.available().unwrap_err();
        assert_eq!((err.prod, err.cons, err.size), (1025, 0, 1024));
        view.store_index(abi::LEFT_PROD, u32::MAX);
        assert!(
            rx.available().is_err(),
            "a producer behind the consumer is corrupt too"
        );
    }

    #[test]
    fn a_consumer_index_ahead_of_the_producer_is_reported() {
        let mut page = Page::new();
        let region = page.region();
        let view = ControlPage::new(region);
        let (tx, _rx) = pair(region, 10);
        view.store_index(abi::LEFT_CONS, 5);
        assert!(tx.space().is_err());
    }

    #[test]
    fn a_remembered_peer_index_is_conservative_and_reloaded_when_short() {
        let mut page = Page::new();
        let region = page.region();
        let view = ControlPage::new(region);
        let (mut tx, mut rx) = pair(region, 10);
        assert_eq!(tx.write(&[1u8; 600]).unwrap().0, 600);
        let mut buf = [0u8; 1024];
        assert_eq!(rx.read(&mut buf).unwrap().0, 600);
        // The writer still remembers cons = 0: room for 424, which this write fits.
        assert_eq!(tx.write(&[2u8; 400]).unwrap().0, 400);
        // 24 known: this one reloads cons (600) and finds 624 free.
        assert_eq!(tx.write(&[3u8; 100]).unwrap().0, 100);
        // A corrupt index is seen the next time one is loaded, never trusted.
        view.store_index(abi::LEFT_CONS, 5000);
        assert_eq!(tx.write(&[4u8; 10]).unwrap().0, 10, "known room, no load");
        assert!(tx.write(&[5u8; 1000]).is_err(), "reloaded: corrupt");
        // The reader likewise: what it has seen published stays readable without a reload.
        let mut page2 = Page::new();
        let (mut tx2, mut rx2) = pair(page2.region(), 10);
        assert_eq!(tx2.write(&[6u8; 100]).unwrap().0, 100);
        assert_eq!(rx2.read(&mut buf[..10]).unwrap().0, 10);
        assert_eq!(rx2.read(&mut buf[..90]).unwrap().0, 90);
        assert_eq!(&buf[..90], &[6u8; 90][..]);
    }

    #[test]
    fn indices_wrap_at_u32_max() {
        let mut page = Page::new();
        let region = page.region();
        let view = ControlPage::new(region);
        let start = u32::MAX - 10;
        view.store_index(abi::LEFT_PROD, start);
        view.store_index(abi::LEFT_CONS, start);
        let (mut tx, mut rx) = pair_from(region, 10, start);
        let data: Vec<u8> = (0..100).collect();
        assert_eq!(tx.write(&data).unwrap().0, 100);
        let mut out = [0u8; 100];
        assert_eq!(rx.read_exact(&mut out).unwrap(), Some(Notify::NONE));
        assert_eq!(&out[..], &data[..]);
        assert_eq!(view.index_relaxed(abi::LEFT_CONS), start.wrapping_add(100));
    }

    #[test]
    #[should_panic(expected = "outside the region of 4096 bytes")]
    fn a_ring_outside_its_region_is_refused_when_built() {
        let mut page = Page::new();
        let region = page.region();
        let ring = RingGeometry {
            side: Side::Left,
            offset: 2048,
            size: 4096,
        };
        let _ = Consumer::new(ControlPage::new(region), region, ring, Role::Server, 0);
    }

    #[test]
    #[should_panic(expected = "a control page needs 4096 bytes, the region has 100")]
    fn a_short_control_page_is_refused() {
        let mut bytes = [0u8; 100];
        let _ = ControlPage::new(SharedRegion::from(&mut bytes[..]));
    }
}
