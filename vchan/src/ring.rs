//! The ring protocol over shared memory: the control-page view, and the producer and consumer
//! halves of a ring with libxenvchan's notify protocol.
//!
//! This module is the only one that touches memory the peer can write. Nothing here forms a
//! reference or slice into it: control words are reached through atomics at fixed, aligned
//! offsets, and ring bytes are moved with raw copies into or out of private buffers. Every value
//! the peer can write is read once per decision and validated; what must be trusted (ring sizes,
//! buffer addresses, our own indices) is kept in private memory.

use core::fmt;
#[cfg(not(vchan_loom))]
use core::ptr;
use core::ptr::NonNull;
#[cfg(not(vchan_loom))]
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU8, Ordering};
// Under the model checker the same code runs on loom's atomics and fences (see `loom_page`).
#[cfg(vchan_loom)]
use loom::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU8, Ordering};

use crate::abi;
use crate::layout::Side;

/// A view of a mapped vchan control page.
///
/// It is `Copy` and holds only the address: the owner of the mapping must keep it mapped for as
/// long as any copy of the view is used (the endpoint types guarantee this).
#[derive(Clone, Copy)]
pub struct ControlPage {
    base: NonNull<u8>,
}

// SAFETY: the view is an address of memory meant for concurrent use by several parties; every
// access through it is atomic or a raw copy, so sharing it between threads adds no new hazard.
unsafe impl Send for ControlPage {}
// SAFETY: as above.
unsafe impl Sync for ControlPage {}

impl fmt::Debug for ControlPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPage")
            .field("base", &self.base)
            .finish()
    }
}

impl ControlPage {
    /// A view of the control page at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be aligned to 4 bytes and valid for reads and writes of [`abi::PAGE_SIZE`] bytes
    /// for as long as the returned value or any copy of it is used. Other parties may access the
    /// memory concurrently, but only with atomics or raw copies (never through references).
    pub unsafe fn new(base: NonNull<u8>) -> ControlPage {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(4));
        ControlPage { base }
    }

    /// The first byte of the page.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    #[cfg(not(vchan_loom))]
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= abi::PAGE_SIZE);
        // SAFETY: the offset is in the page and 4-aligned (checked above; the page base is
        // 4-aligned by `new`'s contract). AtomicU32 has interior mutability, so the reference
        // permits the peer's concurrent writes; it lives only for this access.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    #[cfg(not(vchan_loom))]
    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        assert!(offset.is_multiple_of(2) && offset + 2 <= abi::PAGE_SIZE);
        // SAFETY: as for `u32_at`, with 2-byte alignment.
        unsafe { AtomicU16::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    #[cfg(not(vchan_loom))]
    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < abi::PAGE_SIZE);
        // SAFETY: as for `u32_at`; a byte needs no alignment.
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(offset)) }
    }

    #[cfg(vchan_loom)]
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.loom().u32_at(offset)
    }

    #[cfg(vchan_loom)]
    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        self.loom().u16_at(offset)
    }

    #[cfg(vchan_loom)]
    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        self.loom().u8_at(offset)
    }

    /// Under the model checker `base` is a [`loom_page::Page`], not a mapped page.
    #[cfg(vchan_loom)]
    fn loom(&self) -> &loom_page::Page {
        // SAFETY: under `vchan_loom` the only pages are `loom_page::Page`s, which the model keeps
        // alive for as long as the view is used (`ControlPage::new`'s contract there).
        unsafe { &*self.base.as_ptr().cast::<loom_page::Page>() }
    }

    /// Zero the whole page (the server does this before filling it in).
    #[cfg(not(vchan_loom))]
    pub fn zero(&self) {
        // SAFETY: the page is valid for writes of PAGE_SIZE bytes (see `new`); no reference to it
        // exists, and nobody else has mapped it yet when the server calls this.
        unsafe { ptr::write_bytes(self.base.as_ptr(), 0, abi::PAGE_SIZE) };
    }

    /// Zero the control words (the model's page has no grant list).
    #[cfg(vchan_loom)]
    pub fn zero(&self) {
        self.loom().zero();
    }

    /// Read a ring's order (once: the caller keeps the value).
    pub fn order(&self, side: Side) -> u16 {
        let offset = match side {
            Side::Left => abi::LEFT_ORDER,
            Side::Right => abi::RIGHT_ORDER,
        };
        // ORDERING: Relaxed; read once before the rings are used, after the mapping itself.
        self.u16_at(offset).load(Ordering::Relaxed)
    }

    /// Write a ring's order (the server, before publishing the page).
    pub fn set_order(&self, side: Side, order: u16) {
        let offset = match side {
            Side::Left => abi::LEFT_ORDER,
            Side::Right => abi::RIGHT_ORDER,
        };
        // ORDERING: Relaxed; the page is published to the peer through xenstore afterwards,
        // which orders it.
        self.u16_at(offset).store(order, Ordering::Relaxed);
    }

    /// Read entry `index` of the grant list (once).
    pub fn grant(&self, index: usize) -> u32 {
        // ORDERING: Relaxed; as for `order`.
        self.u32_at(abi::GRANTS + 4 * index).load(Ordering::Relaxed)
    }

    /// Write entry `index` of the grant list.
    pub fn set_grant(&self, index: usize, gref: u32) {
        // ORDERING: Relaxed; as for `set_order`.
        self.u32_at(abi::GRANTS + 4 * index)
            .store(gref, Ordering::Relaxed);
    }

    /// Read a live byte (`abi::CLI_LIVE` or `abi::SRV_LIVE`).
    pub fn live(&self, offset: usize) -> u8 {
        // ORDERING: SeqCst; a close is "set live = 0, then notify", and the reader that woke on
        // that notification re-checks the ring after reading the byte (see the endpoint's EOF
        // re-check), so this load must not be reordered with the index loads around it.
        self.u8_at(offset).load(Ordering::SeqCst)
    }

    /// Write a live byte.
    pub fn set_live(&self, offset: usize, value: u8) {
        // ORDERING: SeqCst; pairs with the peer's `live` load: every index store before this one
        // (our last data) is visible to a peer that sees the new value.
        self.u8_at(offset).store(value, Ordering::SeqCst);
    }

    /// Set the half-close flag ([`abi::NOTIFY_WRITE_SHUT`]) in a notify byte.
    pub fn set_write_shut(&self, offset: usize) {
        // ORDERING: SeqCst, after our last index store (Release): a peer that sees the flag with
        // its SeqCst load in `write_shut` and then looks at the ring sees all we wrote.
        self.u8_at(offset)
            .fetch_or(abi::NOTIFY_WRITE_SHUT, Ordering::SeqCst);
    }

    /// Whether a notify byte carries the half-close flag.
    pub fn write_shut(&self, offset: usize) -> bool {
        // ORDERING: SeqCst, pairs with `set_write_shut`; like `live`, the reader re-checks the
        // ring after seeing it, so it must not be reordered with the index loads around it.
        self.u8_at(offset).load(Ordering::SeqCst) & abi::NOTIFY_WRITE_SHUT != 0
    }

    /// Write a notify byte outright (the handshake's initial request).
    pub fn set_notify(&self, offset: usize, bits: u8) {
        // ORDERING: SeqCst; the handshake's writes are then published with the event or xenstore.
        self.u8_at(offset).store(bits, Ordering::SeqCst);
    }

    /// Read an index (once), with Acquire: bytes the peer published before it are visible.
    fn load_index(&self, offset: usize) -> u32 {
        // ORDERING: Acquire pairs with the peer's Release store of the same index: for `prod`,
        // the ring bytes it wrote are visible before we copy them; for `cons`, its reads of the
        // bytes it consumed are done before we overwrite them.
        self.u32_at(offset).load(Ordering::Acquire)
    }

    /// Read an index with no ordering (the handshake's initial copy of our own indices).
    pub fn index_relaxed(&self, offset: usize) -> u32 {
        // ORDERING: Relaxed; used once at connect, before any data moves.
        self.u32_at(offset).load(Ordering::Relaxed)
    }

    /// Publish one of our own indices, with Release.
    fn store_index(&self, offset: usize, value: u32) {
        // ORDERING: Release pairs with the peer's Acquire load in `load_index`: our copies into
        // or out of the ring happen-before the peer sees the index move.
        self.u32_at(offset).store(value, Ordering::Release);
    }

    /// Ask the peer for a notification: OR `bit` into the peer's notify byte, then a full fence.
    fn request_notify(&self, peer_notify: usize, bit: u8) {
        // ORDERING: the RMW itself may be Relaxed; what matters is the SeqCst fence after it,
        // which pairs with the fence in `take_notify_request` on the peer's side. Without it the
        // caller's re-read of the peer's index could be satisfied before our request is visible,
        // the peer could publish in between, see no request, send no event, and we would sleep
        // on data that is already there: the lost wake-up this protocol exists to prevent.
        self.u8_at(peer_notify).fetch_or(bit, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// After publishing an index: a full fence, then fetch-and-clear `bit` in our own notify
    /// byte. Returns whether the peer asked for an event.
    fn take_notify_request(&self, own_notify: usize, bit: u8) -> bool {
        // ORDERING: the SeqCst fence orders our index store (just made) before the load of the
        // request bit; it pairs with the fence in the peer's `request_notify`. Either the peer
        // re-reads our index after our store, or we see its request and send the event.
        fence(Ordering::SeqCst);
        let notify = self.u8_at(own_notify);
        // Look before touching: while the peer keeps up it has no request outstanding, and a plain
        // load leaves the cache line shared where a read-modify-write would take it exclusive on
        // every call. Only we clear bits in this byte, so a set bit seen here is still set for
        // the fetch-and-clear below (a hostile peer that clears it only loses its own event).
        // ORDERING: Relaxed; the fence above already ordered this load after our index store.
        if notify.load(Ordering::Relaxed) & bit == 0 {
            return false;
        }
        notify.fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }
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
    /// First byte of the ring's data.
    pub data: NonNull<u8>,
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
/// whose. All private, all fixed at connect.
struct RingEnd {
    page: ControlPage,
    ring: RingGeometry,
    prod_offset: usize,
    cons_offset: usize,
    own_notify: usize,
    peer_notify: usize,
}

impl RingEnd {
    fn new(page: ControlPage, ring: RingGeometry, role: Role) -> RingEnd {
        debug_assert!(ring.size.is_power_of_two());
        let (prod_offset, cons_offset) = index_offsets(ring.side);
        RingEnd {
            page,
            ring,
            prod_offset,
            cons_offset,
            own_notify: role.own_notify(),
            peer_notify: role.peer_notify(),
        }
    }
}

/// The reading half of a ring: owns the consumer index.
pub struct Consumer {
    end: RingEnd,
    /// Our consumer index: we are its only writer, so the private copy is the truth.
    cons: u32,
    /// The peer's producer index as last loaded (and validated). Data up to it is ready, so a
    /// read that it already covers needs no load of the control page's cache line, which the
    /// peer is writing: one cross-CPU transfer fewer per operation.
    seen_prod: u32,
}

/// The writing half of a ring: owns the producer index.
pub struct Producer {
    end: RingEnd,
    /// Our producer index: we are its only writer, so the private copy is the truth.
    prod: u32,
    /// The peer's consumer index as last loaded (and validated). Space up to it is free, so a
    /// write that fits it needs no load of the control page's cache line.
    seen_cons: u32,
}

// SAFETY: the halves hold addresses of shared memory that every party accesses only atomically or
// by raw copies; moving a half to another thread changes nothing about that. Mutation needs
// `&mut`, so one half is used by one thread at a time.
unsafe impl Send for Consumer {}
// SAFETY: as above.
unsafe impl Send for Producer {}

impl Consumer {
    /// The consumer of `ring`, for `role`, starting from consumer index `cons`.
    ///
    /// # Safety
    ///
    /// `ring.data` must be valid for reads of `ring.size` bytes (a power of two) for as long as
    /// the consumer is used, under the same access rules as [`ControlPage::new`].
    pub unsafe fn new(page: ControlPage, ring: RingGeometry, role: Role, cons: u32) -> Consumer {
        Consumer {
            end: RingEnd::new(page, ring, role),
            cons,
            seen_prod: cons,
        }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.end.ring.size as usize
    }

    /// Our consumer index: where the next byte is read from.
    pub fn index(&self) -> u32 {
        self.cons
    }

    /// Bytes ready to read: the peer's producer index is read once and checked.
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

    /// Copy up to `buf.len()` bytes out. Returns the count and whether the writer asked to be
    /// told that space was freed (the caller sends the event).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(usize, bool), RingCorrupted> {
        let n = self.ready_for(buf.len())?.min(buf.len());
        if n == 0 {
            return Ok((0, false));
        }
        Ok((n, self.consume(&mut buf[..n])))
    }

    /// Copy exactly `buf.len()` bytes out, or nothing if fewer are ready.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<Option<bool>, RingCorrupted> {
        if self.ready_for(buf.len())? < buf.len() {
            return Ok(None);
        }
        Ok(Some(self.consume(buf)))
    }

    /// Copy `buf.len()` bytes (known to be ready) out and publish the new index.
    fn consume(&mut self, buf: &mut [u8]) -> bool {
        let mask = self.end.ring.size - 1;
        let start = (self.cons & mask) as usize;
        let first = buf.len().min(self.end.ring.size as usize - start);
        // SAFETY: `start + first <= size`, and the wrapped part `buf.len() - first` starts at 0
        // and is at most `size - first` (as `buf.len() <= size`), so both copies stay inside the
        // ring (valid for `size` bytes by `new`'s contract); they write to a private buffer. The bytes are ours to read: the peer's Release store of `prod` (loaded with
        // Acquire in `available`) published them, and it will not touch them again until our
        // store of `cons` below. A hostile peer that writes them anyway only changes the bytes
        // we copy; it cannot reach our memory.
        unsafe {
            let data = self.end.ring.data;
            copy_out(data, start, &mut buf[..first]);
            copy_out(data, 0, &mut buf[first..]);
        }
        // Ring sizes are at most 1 MiB and `buf.len()` is at most the ready count.
        self.cons = self.cons.wrapping_add(buf.len() as u32);
        self.end.page.store_index(self.end.cons_offset, self.cons);
        self.end
            .page
            .take_notify_request(self.end.own_notify, abi::NOTIFY_READ)
    }
}

impl Producer {
    /// The producer of `ring`, for `role`, starting from producer index `prod`.
    ///
    /// # Safety
    ///
    /// `ring.data` must be valid for reads and writes of `ring.size` bytes (a power of two) for as
    /// long as the producer is used, under the same access rules as [`ControlPage::new`].
    pub unsafe fn new(page: ControlPage, ring: RingGeometry, role: Role, prod: u32) -> Producer {
        Producer {
            end: RingEnd::new(page, ring, role),
            prod,
            seen_cons: prod.wrapping_sub(ring.size),
        }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.end.ring.size as usize
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
    pub fn known_room_covers(&self, wanted: usize) -> bool {
        self.known_room() >= wanted
    }

    fn known_room(&self) -> usize {
        // The last index seen was validated then; our own index only moved since, by at most
        // the free space it showed.
        (self.end.ring.size - self.prod.wrapping_sub(self.seen_cons)) as usize
    }

    /// Free space for a write of `wanted`: from the last consumer index seen if that leaves
    /// room, else from a fresh load (kept for next time).
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

    /// Copy up to `buf.len()` bytes in. Returns the count and whether the reader asked to be told
    /// about new data (the caller sends the event).
    pub fn write(&mut self, buf: &[u8]) -> Result<(usize, bool), RingCorrupted> {
        let n = self.room_for(buf.len())?.min(buf.len());
        if n == 0 {
            return Ok((0, false));
        }
        Ok((n, self.produce(&buf[..n])))
    }

    /// Copy all of `buf` in, or nothing if there is not room for all of it.
    pub fn write_all_or_nothing(&mut self, buf: &[u8]) -> Result<Option<bool>, RingCorrupted> {
        if self.room_for(buf.len())? < buf.len() {
            return Ok(None);
        }
        Ok(Some(self.produce(buf)))
    }

    /// Copy `buf` (known to fit) in and publish the new index.
    fn produce(&mut self, buf: &[u8]) -> bool {
        let mask = self.end.ring.size - 1;
        let start = (self.prod & mask) as usize;
        let first = buf.len().min(self.end.ring.size as usize - start);
        // SAFETY: both copies stay inside the ring (valid for `size` bytes by `new`'s contract)
        // and read from a private buffer. The bytes are free: the peer's Release store of `cons`
        // (loaded with Acquire in `space`) says it has finished reading them.
        unsafe {
            let data = self.end.ring.data;
            copy_in(data, start, &buf[..first]);
            copy_in(data, 0, &buf[first..]);
        }
        // Ring sizes are at most 1 MiB and `buf.len()` is at most the free space.
        self.prod = self.prod.wrapping_add(buf.len() as u32);
        self.end.page.store_index(self.end.prod_offset, self.prod);
        self.end
            .page
            .take_notify_request(self.end.own_notify, abi::NOTIFY_WRITE)
    }
}

/// Copy ring bytes `data[offset..offset + out.len()]` into private memory.
///
/// # Safety
///
/// The range is inside the ring's data, which is valid for reads (the ring's contract).
#[cfg(not(vchan_loom))]
unsafe fn copy_out(data: NonNull<u8>, offset: usize, out: &mut [u8]) {
    // SAFETY: the caller's contract; `out` is private memory, never part of the ring.
    unsafe { ptr::copy_nonoverlapping(data.as_ptr().add(offset), out.as_mut_ptr(), out.len()) }
}

/// Copy private bytes into the ring at `data[offset..]`.
///
/// # Safety
///
/// The range is inside the ring's data, which is valid for writes (the ring's contract).
#[cfg(not(vchan_loom))]
unsafe fn copy_in(data: NonNull<u8>, offset: usize, bytes: &[u8]) {
    // SAFETY: the caller's contract; `bytes` is private memory, never part of the ring.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), data.as_ptr().add(offset), bytes.len()) }
}

/// Under the model checker ring bytes are loom cells, so that loom checks each access is
/// ordered after the index store that published it.
///
/// # Safety
///
/// `data` points at the ring's `loom_page::Cells`, and the range is inside it.
#[cfg(vchan_loom)]
unsafe fn copy_out(data: NonNull<u8>, offset: usize, out: &mut [u8]) {
    // SAFETY: the caller's contract.
    let cells = unsafe { &*data.as_ptr().cast::<loom_page::Cells>() };
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = cells.0[offset + i].with(|p| {
            // SAFETY: loom checks this read does not race with a write.
            unsafe { *p }
        });
    }
}

/// See the other `copy_out`.
///
/// # Safety
///
/// `data` points at the ring's `loom_page::Cells`, and the range is inside it.
#[cfg(vchan_loom)]
unsafe fn copy_in(data: NonNull<u8>, offset: usize, bytes: &[u8]) {
    // SAFETY: the caller's contract.
    let cells = unsafe { &*data.as_ptr().cast::<loom_page::Cells>() };
    for (i, byte) in bytes.iter().enumerate() {
        cells.0[offset + i].with_mut(|p| {
            // SAFETY: loom checks this write does not race with a read or a write.
            unsafe { *p = *byte }
        });
    }
}

/// The control page and ring bytes as the model checker's objects (`--cfg vchan_loom`): the
/// ring code above runs unchanged on them, through `ControlPage`'s accessors and
/// `copy_in`/`copy_out`.
#[cfg(vchan_loom)]
pub mod loom_page {
    use super::{AtomicU16, AtomicU32, AtomicU8};
    use crate::abi;
    use loom::cell::UnsafeCell;

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
            page.u8_at(abi::CLI_LIVE).store(1, super::Ordering::Relaxed);
            page.u8_at(abi::SRV_LIVE).store(1, super::Ordering::Relaxed);
            page
        }

        pub(super) fn u32_at(&self, offset: usize) -> &AtomicU32 {
            &self.indices[offset / 4]
        }

        pub(super) fn zero(&self) {
            for word in &self.indices {
                word.store(0, super::Ordering::Relaxed);
            }
            for word in &self.orders {
                word.store(0, super::Ordering::Relaxed);
            }
            for byte in &self.bytes {
                byte.store(0, super::Ordering::Relaxed);
            }
        }

        pub(super) fn u16_at(&self, offset: usize) -> &AtomicU16 {
            &self.orders[(offset - abi::LEFT_ORDER) / 2]
        }

        pub(super) fn u8_at(&self, offset: usize) -> &AtomicU8 {
            &self.bytes[offset - abi::CLI_LIVE]
        }
    }

    impl Default for Page {
        fn default() -> Page {
            Page::new()
        }
    }

    /// The data bytes of one ring.
    pub struct Cells(pub(super) Vec<UnsafeCell<u8>>);

    impl Cells {
        /// `size` zero bytes.
        pub fn new(size: usize) -> Cells {
            Cells((0..size).map(|_| UnsafeCell::new(0)).collect())
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

    /// A heap page standing in for a granted control page (8-aligned through u64 storage).
    struct Page(Vec<u64>);

    impl Page {
        fn new() -> Page {
            Page(vec![0u64; abi::PAGE_SIZE / 8])
        }
        fn view(&mut self) -> ControlPage {
            // SAFETY: the Vec is a live, aligned PAGE_SIZE-byte heap buffer that outlives the
            // test's views, and is only touched through them.
            unsafe { ControlPage::new(NonNull::new(self.0.as_mut_ptr().cast()).unwrap()) }
        }
    }

    fn pair(page: &mut Page, order: u16) -> (Producer, Consumer) {
        let view = page.view();
        let ring = RingGeometry {
            side: Side::Left,
            // SAFETY: offset 1024 or 2048 inside the page, sized to fit (order 10 or 11).
            data: unsafe { view.as_ptr().add(1 << order) },
            size: 1 << order,
        };
        // SAFETY: the ring lies inside the page, which outlives both halves.
        unsafe {
            (
                Producer::new(view, ring, Role::Client, 0),
                Consumer::new(view, ring, Role::Server, 0),
            )
        }
    }

    #[test]
    fn bytes_written_come_out_in_order_across_the_wrap() {
        let mut page = Page::new();
        let (mut tx, mut rx) = pair(&mut page, 10);
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..50 {
            let chunk: Vec<u8> = (0..(round * 37 % 700 + 1))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let (n, _) = tx.write(&chunk).unwrap();
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
        let (mut tx, mut rx) = pair(&mut page, 10);
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
        let (mut tx, rx) = pair(&mut page, 10);
        assert!(!tx.write(b"a").unwrap().1, "no request, no event");
        assert_eq!(rx.request_and_recheck().unwrap(), 1);
        assert!(tx.write(b"b").unwrap().1, "the reader asked");
        assert!(!tx.write(b"c").unwrap().1, "the request was consumed");
    }

    #[test]
    fn a_producer_index_past_the_ring_is_reported_not_hidden() {
        let mut page = Page::new();
        let view = page.view();
        let (_tx, rx) = pair(&mut page, 10);
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
        let view = page.view();
        let (tx, _rx) = pair(&mut page, 10);
        view.store_index(abi::LEFT_CONS, 5);
        assert!(tx.space().is_err());
    }

    #[test]
    fn a_remembered_peer_index_is_conservative_and_reloaded_when_short() {
        let mut page = Page::new();
        let view = page.view();
        let (mut tx, mut rx) = pair(&mut page, 10);
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
        let (mut tx2, mut rx2) = pair(&mut page2, 10);
        assert_eq!(tx2.write(&[6u8; 100]).unwrap().0, 100);
        assert_eq!(rx2.read(&mut buf[..10]).unwrap().0, 10);
        assert_eq!(rx2.read(&mut buf[..90]).unwrap().0, 90);
        assert_eq!(&buf[..90], &[6u8; 90][..]);
    }

    #[test]
    fn indices_wrap_at_u32_max() {
        let mut page = Page::new();
        let view = page.view();
        let ring = RingGeometry {
            side: Side::Left,
            // SAFETY: inside the page.
            data: unsafe { view.as_ptr().add(1024) },
            size: 1024,
        };
        let start = u32::MAX - 10;
        view.store_index(abi::LEFT_PROD, start);
        view.store_index(abi::LEFT_CONS, start);
        // SAFETY: the ring lies inside the page, which outlives both halves.
        let (mut tx, mut rx) = unsafe {
            (
                Producer::new(view, ring, Role::Client, start),
                Consumer::new(view, ring, Role::Server, start),
            )
        };
        let data: Vec<u8> = (0..100).collect();
        assert_eq!(tx.write(&data).unwrap().0, 100);
        let mut out = [0u8; 100];
        assert_eq!(rx.read_exact(&mut out).unwrap(), Some(false));
        assert_eq!(&out[..], &data[..]);
        assert_eq!(view.index_relaxed(abi::LEFT_CONS), start.wrapping_add(100));
    }
}
