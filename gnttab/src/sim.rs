//! An in-process simulation of grant tables between simulated domains.
//!
//! A [`SimGrantTable`] plays the hypervisor's grant tables for every simulated domain; a [`SimGnt`]
//! opened for one domain plays that domain's gntalloc and gntdev devices. Shared pages are
//! page-aligned heap allocations; a mapping aliases the same memory, so both sides see each
//! other's writes exactly as on Xen. When a region is dropped its [`UnmapNotify`] is carried out
//! as the kernel would (clear the byte, send the event through the [`SimEventHub`]).
//!
//! Limits of the simulation, each reported as an error rather than papered over:
//! - one mapping call may only name pages that were shared together, in order (the simulation
//!   cannot stitch separate heap blocks into one contiguous range the way gntdev does);
//! - a read-only mapping is not write-protected.

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use evtchn::sim::SimEventHub;

use crate::PAGE_SIZE;
use crate::{DomId, GrantMap, GrantRef, GrantShare, SharedMemory, SharedPages, UnmapNotify};

/// Most grants one simulated domain may have outstanding (Xen's default grant-table size).
const MAX_GRANTS_PER_DOMAIN: u32 = 32 * 512;

/// The simulated hypervisor's grant tables.
#[derive(Clone)]
pub struct SimGrantTable {
    inner: Arc<Mutex<TableState>>,
    events: SimEventHub,
}

#[derive(Default)]
struct TableState {
    grants: HashMap<(DomId, GrantRef), Grant>,
    mappings: usize,
}

struct Grant {
    block: Arc<PageBlock>,
    page: usize,
    grantee: DomId,
    writable: bool,
}

/// `pages` zeroed, page-aligned, contiguous pages on the heap; freed when the last sharer or
/// mapper lets go.
struct PageBlock {
    ptr: NonNull<u8>,
    pages: usize,
}

// SAFETY: the block is plain memory with no thread affinity; all access goes through raw pointers
// by the protocol's rules.
#[allow(unsafe_code)]
unsafe impl Send for PageBlock {}
// SAFETY: as above; `&PageBlock` exposes only the pointer value.
#[allow(unsafe_code)]
unsafe impl Sync for PageBlock {}

impl PageBlock {
    fn layout(pages: usize) -> io::Result<Layout> {
        pages
            .checked_mul(PAGE_SIZE)
            .and_then(|size| Layout::from_size_align(size, PAGE_SIZE).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    fn new(pages: usize) -> io::Result<PageBlock> {
        let layout = Self::layout(pages)?;
        // SAFETY: `layout` has a non-zero size (pages >= 1 is checked by the caller).
        #[allow(unsafe_code)]
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(PageBlock { ptr, pages })
    }

    /// Carry out an unmap notification on byte `offset` from `start`, as the kernel does.
    fn clear_byte(&self, start: usize, offset: usize) {
        let index = start + offset;
        if index < self.pages * PAGE_SIZE {
            // SAFETY: `index` is inside the allocation, which lives as long as `self`; the byte is
            // only ever accessed atomically or by raw copies, never through a reference.
            #[allow(unsafe_code)]
            let byte = unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(index)) };
            // ORDERING: SeqCst, as the kernel's clear is followed by the event; the peer's
            // reader fences before it looks at the byte.
            byte.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.pages) {
            // SAFETY: allocated in `new` with this same layout, and freed only here.
            #[allow(unsafe_code)]
            unsafe {
                alloc::dealloc(self.ptr.as_ptr(), layout)
            };
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl SimGrantTable {
    /// Empty grant tables whose unmap notifications are delivered through `events`.
    pub fn new(events: SimEventHub) -> SimGrantTable {
        SimGrantTable {
            inner: Arc::new(Mutex::new(TableState::default())),
            events,
        }
    }

    /// Open the grant devices of `domid`.
    pub fn open(&self, domid: DomId) -> SimGnt {
        SimGnt {
            table: self.clone(),
            domid,
        }
    }

    /// Grants currently offered, over all domains (for leak checks).
    pub fn live_grants(&self) -> usize {
        lock(&self.inner).grants.len()
    }

    /// Mappings currently held, over all domains (for leak checks).
    pub fn live_mappings(&self) -> usize {
        lock(&self.inner).mappings
    }

    fn fire(&self, domid: DomId, block: &PageBlock, start: usize, notify: Option<UnmapNotify>) {
        let Some(notify) = notify else { return };
        if let Some(offset) = notify.clear_byte {
            block.clear_byte(start, offset);
        }
        if let Some(port) = notify.event {
            // The port may be gone already (closed before the memory): the kernel ignores that too.
            let _ = self.events.notify_from(domid, port);
        }
    }
}

/// One simulated domain's grant devices: shares and maps pages as that domain.
#[derive(Clone)]
pub struct SimGnt {
    table: SimGrantTable,
    domid: DomId,
}

impl SimGnt {
    /// The domain this handle acts as.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

/// Pages shared by a [`SimGnt`]; dropping revokes the grants and fires the unmap notification.
pub struct SimShared {
    table: SimGrantTable,
    domid: DomId,
    block: Arc<PageBlock>,
    refs: Vec<GrantRef>,
    notify: Option<UnmapNotify>,
}

/// Pages mapped by a [`SimGnt`]; dropping unmaps them and fires the unmap notification.
pub struct SimMapping {
    table: SimGrantTable,
    domid: DomId,
    block: Arc<PageBlock>,
    first_page: usize,
    pages: usize,
    notify: Option<UnmapNotify>,
}

impl GrantShare for SimGnt {
    type Pages = SimShared;

    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<SimShared> {
        if count == 0 {
            return Err(einval());
        }
        if notify
            .and_then(|n| n.clear_byte)
            .is_some_and(|b| b >= count * PAGE_SIZE)
        {
            return Err(einval());
        }
        let block = Arc::new(PageBlock::new(count)?);
        let mut state = lock(&self.table.inner);
        let mut refs = Vec::with_capacity(count);
        // Grant 0 is reserved: hand out the lowest free refs from 1, as gntalloc's free list does.
        let mut candidate = 1u32;
        for page in 0..count {
            while state
                .grants
                .contains_key(&(self.domid, GrantRef(candidate)))
            {
                candidate += 1;
            }
            if candidate >= MAX_GRANTS_PER_DOMAIN {
                for r in &refs {
                    state.grants.remove(&(self.domid, *r));
                }
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let gref = GrantRef(candidate);
            state.grants.insert(
                (self.domid, gref),
                Grant {
                    block: Arc::clone(&block),
                    page,
                    grantee: domid,
                    writable,
                },
            );
            refs.push(gref);
        }
        Ok(SimShared {
            table: self.table.clone(),
            domid: self.domid,
            block,
            refs,
            notify,
        })
    }
}

impl GrantMap for SimGnt {
    type Mapping = SimMapping;

    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<SimMapping> {
        if refs.is_empty()
            || notify
                .and_then(|n| n.clear_byte)
                .is_some_and(|b| b >= refs.len() * PAGE_SIZE)
        {
            return Err(einval());
        }
        let mut state = lock(&self.table.inner);
        let mut first: Option<(Arc<PageBlock>, usize)> = None;
        for (i, gref) in refs.iter().enumerate() {
            let grant = state
                .grants
                .get(&(domid, *gref))
                .filter(|g| g.grantee == self.domid)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            if writable && !grant.writable {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            match &first {
                None => first = Some((Arc::clone(&grant.block), grant.page)),
                Some((block, page)) => {
                    if !Arc::ptr_eq(block, &grant.block) || grant.page != page + i {
                        // See the module docs: only pages shared together, in order.
                        return Err(einval());
                    }
                }
            }
        }
        let (block, first_page) = first.ok_or_else(einval)?;
        state.mappings += 1;
        Ok(SimMapping {
            table: self.table.clone(),
            domid: self.domid,
            block,
            first_page,
            pages: refs.len(),
            notify,
        })
    }
}

// SAFETY: the block stays allocated while `self` holds its Arc; the pointer is page-aligned and
// `len` covers exactly the shared pages.
#[allow(unsafe_code)]
unsafe impl SharedMemory for SimShared {
    fn as_ptr(&self) -> NonNull<u8> {
        self.block.ptr
    }
    fn len(&self) -> usize {
        self.refs.len() * PAGE_SIZE
    }
}

impl SharedPages for SimShared {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

// SAFETY: the block stays allocated while `self` holds its Arc; `first_page + pages` is within the
// block (checked page by page against the grants at map time).
#[allow(unsafe_code)]
unsafe impl SharedMemory for SimMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        // SAFETY: `first_page` is a page of the block, so the offset stays inside the allocation.
        #[allow(unsafe_code)]
        unsafe {
            self.block.ptr.add(self.first_page * PAGE_SIZE)
        }
    }
    fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }
}

impl Drop for SimShared {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.table.inner);
            for gref in &self.refs {
                state.grants.remove(&(self.domid, *gref));
            }
        }
        self.table.fire(self.domid, &self.block, 0, self.notify);
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.table.inner);
            state.mappings = state.mappings.saturating_sub(1);
        }
        self.table.fire(
            self.domid,
            &self.block,
            self.first_page * PAGE_SIZE,
            self.notify,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evtchn::EventChannel;

    fn read_byte(mem: &impl SharedMemory, offset: usize) -> u8 {
        assert!(offset < mem.len());
        // SAFETY: in bounds of a live region; atomic access only.
        #[allow(unsafe_code)]
        unsafe { AtomicU8::from_ptr(mem.as_ptr().as_ptr().add(offset)) }.load(Ordering::SeqCst)
    }

    fn write_byte(mem: &impl SharedMemory, offset: usize, value: u8) {
        assert!(offset < mem.len());
        // SAFETY: in bounds of a live region; atomic access only.
        #[allow(unsafe_code)]
        unsafe { AtomicU8::from_ptr(mem.as_ptr().as_ptr().add(offset)) }
            .store(value, Ordering::SeqCst)
    }

    #[test]
    fn both_sides_see_the_same_memory() {
        let table = SimGrantTable::new(SimEventHub::new());
        let shared = table
            .open(DomId(0))
            .share_pages(DomId(2), 3, true, None)
            .unwrap();
        assert!(shared.refs().iter().all(|r| !r.is_reserved()));
        let mapped = table
            .open(DomId(2))
            .map_grant_refs(DomId(0), &shared.refs()[1..], true, None)
            .unwrap();
        write_byte(&mapped, 5, 0xab);
        assert_eq!(read_byte(&shared, PAGE_SIZE + 5), 0xab);
        assert_eq!(shared.as_ptr().as_ptr() as usize % PAGE_SIZE, 0);
    }

    #[test]
    fn only_the_grantee_may_map_and_only_as_granted() {
        let table = SimGrantTable::new(SimEventHub::new());
        let shared = table
            .open(DomId(0))
            .share_pages(DomId(2), 1, false, None)
            .unwrap();
        let refs = shared.refs();
        assert!(table
            .open(DomId(3))
            .map_grant_refs(DomId(0), refs, false, None)
            .is_err());
        assert!(table
            .open(DomId(2))
            .map_grant_refs(DomId(0), refs, true, None)
            .is_err());
        assert!(table
            .open(DomId(2))
            .map_grant_refs(DomId(0), refs, false, None)
            .is_ok());
        assert!(table
            .open(DomId(2))
            .map_grant_refs(DomId(0), &[GrantRef(0)], false, None)
            .is_err());
    }

    #[test]
    fn refs_from_separate_shares_cannot_be_stitched() {
        let table = SimGrantTable::new(SimEventHub::new());
        let server = table.open(DomId(0));
        let a = server.share_pages(DomId(2), 1, true, None).unwrap();
        let b = server.share_pages(DomId(2), 1, true, None).unwrap();
        let refs = [a.refs()[0], b.refs()[0]];
        let result = table
            .open(DomId(2))
            .map_grant_refs(DomId(0), &refs, true, None);
        assert_eq!(
            result.err().and_then(|e| e.raw_os_error()),
            Some(libc::EINVAL)
        );
    }

    #[test]
    fn memory_outlives_the_share_while_mapped_and_notify_fires_on_unmap() {
        let hub = SimEventHub::new();
        let table = SimGrantTable::new(hub.clone());
        let srv_ev = hub.open(DomId(0)).unwrap();
        let cli_ev = hub.open(DomId(2)).unwrap();
        let sport = srv_ev.bind_unbound_port(DomId(2)).unwrap();
        let cport = cli_ev.bind_interdomain(DomId(0), sport).unwrap();

        let shared = table
            .open(DomId(0))
            .share_pages(DomId(2), 1, true, None)
            .unwrap();
        let notify = UnmapNotify {
            clear_byte: Some(20),
            event: Some(cport),
        };
        let mapped = table
            .open(DomId(2))
            .map_grant_refs(DomId(0), shared.refs(), true, Some(notify))
            .unwrap();
        write_byte(&mapped, 20, 1);
        assert_eq!(table.live_mappings(), 1);
        drop(mapped);
        assert_eq!(
            read_byte(&shared, 20),
            0,
            "the kernel clears the byte on unmap"
        );
        assert_eq!(
            srv_ev.pending().unwrap(),
            Some(sport),
            "and sends the event"
        );
        assert_eq!(table.live_mappings(), 0);

        let mapped = table
            .open(DomId(2))
            .map_grant_refs(DomId(0), shared.refs(), true, None)
            .unwrap();
        drop(shared);
        assert_eq!(table.live_grants(), 0);
        write_byte(&mapped, 0, 7);
        assert_eq!(
            read_byte(&mapped, 0),
            7,
            "a mapping keeps its pages after the share ends"
        );
    }
}
