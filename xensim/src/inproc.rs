//! The in-process front-end: every simulated domain in one process, for tests, examples and
//! benchmarks.
//!
//! A [`SimHypervisor`] holds the [`Hypervisor`] model; each handle opened from it
//! ([`SimEvtchn`], [`SimGnt`]) is one handle of the model, closed when the last clone of it is
//! dropped, exactly as a process's device file is. Granted memory and mappings are those of the
//! cross-process host (the crate's `memory`): refs from separate shares are stitched into one
//! mapping, and a read-only mapping is really read-only. An event-channel handle's pollable fd
//! is an eventfd, readable while its queue of delivered ports is not empty.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_types::{DomId, GrantRef, Port};

use crate::lock;
use crate::memory::{GrantedMemory, Region};
use crate::model::{
    Effect, HandleId, HandleKind, Hypervisor, NotifyRequest, Reply, Request, Stats,
};

/// The delivery queue of one event-channel handle, and the eventfd that mirrors whether it is
/// empty.
#[derive(Debug)]
struct EventQueue {
    ports: Mutex<VecDeque<Port>>,
    eventfd: EventFd,
}

impl EventQueue {
    /// Queue `port` and make the fd readable.
    fn deliver(&self, port: Port) {
        let mut ports = lock(&self.ports);
        if ports.is_empty() {
            // An eventfd write only fails on counter overflow, impossible with one unit queued.
            let _ = self.eventfd.write(1);
        }
        ports.push_back(port);
    }

    fn take(&self) -> io::Result<Option<Port>> {
        let mut ports = lock(&self.ports);
        let port = ports.pop_front();
        if port.is_some() && ports.is_empty() {
            // Resets the eventfd to "not readable"; it was readable since the queue was not empty.
            match self.eventfd.read() {
                Ok(_) | Err(Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(port)
    }
}

#[derive(Debug, Default)]
struct State {
    hypervisor: Hypervisor<GrantedMemory>,
    queues: HashMap<HandleId, Arc<EventQueue>>,
    /// Kept between requests so a notify or an unmask allocates nothing.
    effects: Vec<Effect<GrantedMemory>>,
}

impl State {
    /// Carry out the model's effects, in order.
    fn apply(&self, effects: &mut Vec<Effect<GrantedMemory>>) {
        for effect in effects.drain(..) {
            match effect {
                Effect::ClearByte { memory, offset } => memory.clear_byte(offset),
                Effect::Deliver { handle, port } => {
                    if let Some(queue) = self.queues.get(&handle) {
                        queue.deliver(port);
                    }
                }
            }
        }
    }

    fn request(
        &mut self,
        handle: HandleId,
        request: Request<'_, GrantedMemory>,
    ) -> io::Result<Reply<GrantedMemory>> {
        let mut effects = std::mem::take(&mut self.effects);
        let reply = self.hypervisor.request(handle, request, &mut effects);
        self.apply(&mut effects);
        self.effects = effects;
        Ok(reply?)
    }
}

/// The simulated hypervisor of one process's simulated domains. Cloning shares it. Dom0 exists
/// from the start.
#[derive(Debug, Clone, Default)]
pub struct SimHypervisor {
    state: Arc<Mutex<State>>,
}

impl SimHypervisor {
    /// A hypervisor with dom0 and nothing else.
    pub fn new() -> SimHypervisor {
        SimHypervisor::default()
    }

    /// Create domain `domid` (`EEXIST` if it exists).
    pub fn create_domain(&self, domid: DomId) -> io::Result<()> {
        Ok(lock(&self.state).hypervisor.create_domain(domid)?)
    }

    /// Destroy domain `domid`: every handle of it is closed (its unmap notifications fire) and
    /// answers `EBADF` from then on (`ESRCH` if it does not exist, `EPERM` for dom0).
    pub fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        let mut state = lock(&self.state);
        let mut effects = Vec::new();
        let handles = state.hypervisor.destroy_domain(domid, &mut effects)?;
        state.apply(&mut effects);
        for handle in handles {
            state.queues.remove(&handle);
        }
        Ok(())
    }

    /// Whether domain `domid` exists.
    pub fn domain_exists(&self, domid: DomId) -> bool {
        lock(&self.state).hypervisor.domain_exists(domid)
    }

    /// What the hypervisor holds now.
    pub fn stats(&self) -> Stats {
        lock(&self.state).hypervisor.stats()
    }

    fn open(&self, domid: DomId, kind: HandleKind) -> io::Result<Arc<Handle>> {
        let id = lock(&self.state).hypervisor.open(domid, kind)?;
        Ok(Arc::new(Handle {
            hypervisor: self.clone(),
            id,
            domid,
        }))
    }

    /// Open an event-channel handle as `domid` (its `/dev/xen/evtchn`).
    pub fn open_events(&self, domid: DomId) -> io::Result<SimEvtchn> {
        let queue = Arc::new(EventQueue {
            ports: Mutex::new(VecDeque::new()),
            eventfd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        });
        let handle = self.open(domid, HandleKind::Events)?;
        lock(&self.state)
            .queues
            .insert(handle.id, Arc::clone(&queue));
        Ok(SimEvtchn { handle, queue })
    }

    /// Open a grant-sharing handle as `domid` (its gntalloc).
    pub fn open_sharer(&self, domid: DomId) -> io::Result<SimGnt> {
        Ok(SimGnt {
            handle: self.open(domid, HandleKind::Share)?,
        })
    }

    /// Open a grant-mapping handle as `domid` (its gntdev).
    pub fn open_mapper(&self, domid: DomId) -> io::Result<SimGnt> {
        Ok(SimGnt {
            handle: self.open(domid, HandleKind::Map)?,
        })
    }
}

/// One open handle of the model; closed when dropped.
#[derive(Debug)]
struct Handle {
    hypervisor: SimHypervisor,
    id: HandleId,
    domid: DomId,
}

impl Handle {
    fn request(&self, request: Request<'_, GrantedMemory>) -> io::Result<Reply<GrantedMemory>> {
        lock(&self.hypervisor.state).request(self.id, request)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = lock(&self.hypervisor.state);
        let mut effects = Vec::new();
        state.hypervisor.close(self.id, &mut effects);
        state.apply(&mut effects);
        state.queues.remove(&self.id);
    }
}

/// One domain's event-channel handle on a [`SimHypervisor`]. Dropping it closes its ports.
#[derive(Debug)]
pub struct SimEvtchn {
    handle: Arc<Handle>,
    queue: Arc<EventQueue>,
}

impl SimEvtchn {
    /// The domain this handle belongs to.
    pub fn domid(&self) -> DomId {
        self.handle.domid
    }

    fn port(reply: Reply<GrantedMemory>) -> io::Result<Port> {
        match reply {
            Reply::Port(port) => Ok(port),
            _ => Err(Errno::EPROTO.into()),
        }
    }
}

impl EventChannel for SimEvtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        Self::port(self.handle.request(Request::BindUnbound { remote })?)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        Self::port(self.handle.request(Request::BindInterdomain {
            remote,
            remote_port,
        })?)
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        self.handle.request(Request::Notify(port)).map(drop)
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        self.queue.take()
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        self.handle.request(Request::Unmask(port)).map(drop)
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        // Under the model's lock, so that no event of a new binding of the number is lost.
        let mut state = lock(&self.handle.hypervisor.state);
        state.request(self.handle.id, Request::Unbind(port))?;
        lock(&self.queue.ports).retain(|p| *p != port);
        Ok(())
    }
}

impl AsFd for SimEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.eventfd.as_fd()
    }
}

/// One domain's grant-sharing (gntalloc) or grant-mapping (gntdev) handle on a
/// [`SimHypervisor`]. Clones share the handle; it closes when the last clone, share and mapping
/// made through it are gone.
#[derive(Debug, Clone)]
pub struct SimGnt {
    handle: Arc<Handle>,
}

impl SimGnt {
    /// The domain this handle acts as.
    pub fn domid(&self) -> DomId {
        self.handle.domid
    }
}

fn notify_request(notify: Option<UnmapNotify>) -> NotifyRequest {
    let notify = notify.unwrap_or_default();
    NotifyRequest {
        clear_byte: notify.clear_byte,
        event: notify.event,
    }
}

/// Pages shared by a [`SimGnt`]; dropping unmaps them, revokes the grants and fires the unmap
/// notification.
#[derive(Debug)]
pub struct SimShared {
    handle: Arc<Handle>,
    id: u32,
    region: Region,
    refs: Vec<GrantRef>,
}

/// Pages mapped by a [`SimGnt`]; dropping unmaps them and fires the unmap notification.
#[derive(Debug)]
pub struct SimMapping {
    handle: Arc<Handle>,
    id: u32,
    region: Region,
    writable: bool,
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
        if count == 0 || count > crate::model::MAX_PAGES_PER_CALL {
            return Err(Errno::EINVAL.into());
        }
        let memory = Arc::new(GrantedMemory::new(count)?);
        let reply = self.handle.request(Request::Share {
            grantee: domid,
            memory: Arc::clone(&memory),
            pages: count,
            writable,
            notify: notify_request(notify),
        })?;
        let Reply::Shared { id, refs } = reply else {
            return Err(Errno::EPROTO.into());
        };
        // The sharer's own mapping is always writable: it fills the pages.
        let pages: Vec<(Arc<GrantedMemory>, usize)> =
            (0..count).map(|page| (Arc::clone(&memory), page)).collect();
        match Region::map(&pages, true) {
            Ok(region) => Ok(SimShared {
                handle: Arc::clone(&self.handle),
                id,
                region,
                refs,
            }),
            Err(e) => {
                let mut state = lock(&self.handle.hypervisor.state);
                let _ = state.hypervisor.cancel_share(self.handle.id, id);
                Err(e)
            }
        }
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
        let reply = self.handle.request(Request::Map {
            granter: domid,
            refs,
            writable,
            notify: notify_request(notify),
        })?;
        let Reply::Mapped { id, pages } = reply else {
            return Err(Errno::EPROTO.into());
        };
        match Region::map(&pages, writable) {
            Ok(region) => Ok(SimMapping {
                handle: Arc::clone(&self.handle),
                id,
                region,
                writable,
            }),
            Err(e) => {
                let mut state = lock(&self.handle.hypervisor.state);
                let _ = state.hypervisor.cancel_mapping(self.handle.id, id);
                Err(e)
            }
        }
    }

    fn set_unmap_notify(&self, mapping: &SimMapping, notify: UnmapNotify) -> io::Result<()> {
        mapping.handle.request(Request::SetMapNotify {
            id: mapping.id,
            notify: notify_request(Some(notify)),
        })?;
        Ok(())
    }
}

#[allow(unsafe_code)] // The trait's contract is the implementor's promise.
                      // SAFETY: the region is mapped read-write for `len` bytes, page-aligned, until `self` is dropped.
unsafe impl SharedMemory for SimShared {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        self.region.ptr()
    }
    #[inline]
    fn len(&self) -> usize {
        self.region.len()
    }
    #[inline]
    fn is_writable(&self) -> bool {
        // The sharer's own mapping: it fills the pages, whatever the grantee may do.
        true
    }
}

impl SharedPages for SimShared {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

#[allow(unsafe_code)] // The trait's contract is the implementor's promise.
                      // SAFETY: the region is mapped (read-only unless writable was asked) for `len` bytes,
                      // page-aligned, until `self` is dropped.
unsafe impl SharedMemory for SimMapping {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        self.region.ptr()
    }
    #[inline]
    fn len(&self) -> usize {
        self.region.len()
    }
    #[inline]
    fn is_writable(&self) -> bool {
        self.writable
    }
}

impl Drop for SimShared {
    fn drop(&mut self) {
        // Unmap first, then end the share: its notification comes after our last access. The
        // handle may have been closed with its domain; then the share is gone already.
        self.region.unmap();
        let _ = self.handle.request(Request::Unshare(self.id));
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        self.region.unmap();
        let _ = self.handle.request(Request::Unmap(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use xen_types::PAGE_SIZE;

    fn pair(hv: &SimHypervisor) -> (SimEvtchn, SimEvtchn, Port, Port) {
        hv.create_domain(DomId(3)).unwrap();
        let a = hv.open_events(DomId(0)).unwrap();
        let b = hv.open_events(DomId(3)).unwrap();
        let pa = a.bind_unbound_port(DomId(3)).unwrap();
        let pb = b.bind_interdomain(DomId(0), pa).unwrap();
        (a, b, pa, pb)
    }

    fn readable(fd: BorrowedFd<'_>) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    fn byte(mem: &impl SharedMemory, offset: usize) -> u8 {
        mem.region().load_u8(offset, Ordering::SeqCst)
    }

    fn set_byte(mem: &impl SharedMemory, offset: usize, value: u8) {
        mem.region().store_u8(offset, value, Ordering::SeqCst)
    }

    #[test]
    fn events_coalesce_while_masked_and_the_fd_says_when_one_is_pending() {
        let hv = SimHypervisor::new();
        let (a, b, pa, pb) = pair(&hv);
        assert!(!readable(a.as_fd()));
        b.notify(pb).unwrap();
        b.notify(pb).unwrap();
        assert!(readable(a.as_fd()));
        assert_eq!(a.pending().unwrap(), Some(pa));
        assert_eq!(a.pending().unwrap(), None, "coalesced");
        assert!(!readable(a.as_fd()));
        a.unmask(pa).unwrap();
        assert_eq!(a.pending().unwrap(), Some(pa), "delivered again on unmask");
        let other = hv.open_events(DomId(0)).unwrap();
        assert!(other.notify(pa).is_err(), "another handle's port");
    }

    #[test]
    fn dropping_a_handle_closes_its_ports() {
        let hv = SimHypervisor::new();
        let (a, b, _pa, pb) = pair(&hv);
        assert_eq!(hv.stats().ports, 2);
        drop(a);
        assert_eq!(hv.stats().ports, 1);
        b.notify(pb).unwrap();
        drop(b);
        assert_eq!(
            hv.stats(),
            Stats {
                domains: 2,
                ..Stats::default()
            }
        );
    }

    #[cfg(not(miri))]
    #[test]
    fn refs_of_separate_shares_are_stitched_into_one_mapping() {
        let hv = SimHypervisor::new();
        hv.create_domain(DomId(5)).unwrap();
        let sharer = hv.open_sharer(DomId(0)).unwrap();
        let mapper = hv.open_mapper(DomId(5)).unwrap();
        let one = sharer.share_pages(DomId(5), 1, true, None).unwrap();
        let two = sharer.share_pages(DomId(5), 2, true, None).unwrap();
        set_byte(&one, 9, 1);
        set_byte(&two, PAGE_SIZE + 9, 2);
        let refs = [two.refs()[1], one.refs()[0]];
        let mapping = mapper.map_grant_refs(DomId(0), &refs, true, None).unwrap();
        assert_eq!(mapping.len(), 2 * PAGE_SIZE);
        assert_eq!((byte(&mapping, 9), byte(&mapping, PAGE_SIZE + 9)), (2, 1));
        set_byte(&mapping, 10, 7);
        assert_eq!(byte(&two, PAGE_SIZE + 10), 7, "writes reach the sharer");
    }

    #[cfg(not(miri))]
    #[test]
    fn a_read_only_mapping_cannot_be_made_writable() {
        use nix::sys::mman::{mprotect, ProtFlags};
        let hv = SimHypervisor::new();
        hv.create_domain(DomId(5)).unwrap();
        let sharer = hv.open_sharer(DomId(0)).unwrap();
        let mapper = hv.open_mapper(DomId(5)).unwrap();
        let shared = sharer.share_pages(DomId(5), 1, false, None).unwrap();
        let err = mapper
            .map_grant_refs(DomId(0), shared.refs(), true, None)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EACCES as i32));
        let mapping = mapper
            .map_grant_refs(DomId(0), shared.refs(), false, None)
            .unwrap();
        set_byte(&shared, 0, 5);
        assert_eq!(byte(&mapping, 0), 5);
        assert!(!mapping.region().is_writable(), "its view refuses stores");
        // SAFETY: changes only the protection of the mapping this test owns; on success the test
        // fails before anything writes through it.
        #[allow(unsafe_code)]
        let made_writable = unsafe {
            mprotect(
                mapping.as_ptr().cast(),
                mapping.len(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            )
        };
        assert_eq!(made_writable, Err(Errno::EACCES));
    }

    #[test]
    fn unmap_notifications_fire_when_the_mapping_goes_and_the_sharer_sees_them() {
        let hv = SimHypervisor::new();
        let (a, b, pa, pb) = pair(&hv);
        let sharer = hv.open_sharer(DomId(0)).unwrap();
        let mapper = hv.open_mapper(DomId(3)).unwrap();
        let shared = sharer.share_pages(DomId(3), 1, true, None).unwrap();
        set_byte(&shared, 100, 1);
        let notify = UnmapNotify {
            clear_byte: Some(100),
            event: Some(pb),
        };
        let mapping = mapper
            .map_grant_refs(DomId(0), shared.refs(), true, Some(notify))
            .unwrap();
        drop(b); // the mapper's event handle closes first, as in a dying process
        assert_eq!(a.pending().unwrap(), None);
        drop(mapping);
        assert_eq!(byte(&shared, 100), 0, "the byte is cleared");
        assert_eq!(a.pending().unwrap(), Some(pa), "the event is sent");
        assert_eq!(hv.stats().mappings, 0);
        drop((shared, sharer, mapper, a));
        assert_eq!(
            hv.stats(),
            Stats {
                domains: 2,
                ..Stats::default()
            }
        );
    }

    #[test]
    fn a_destroyed_domain_loses_its_handles_and_its_mappings_notify() {
        let hv = SimHypervisor::new();
        let (a, b, pa, pb) = pair(&hv);
        let sharer = hv.open_sharer(DomId(0)).unwrap();
        let mapper = hv.open_mapper(DomId(3)).unwrap();
        let shared = sharer.share_pages(DomId(3), 1, true, None).unwrap();
        let notify = UnmapNotify {
            clear_byte: None,
            event: Some(pb),
        };
        let _mapping = mapper
            .map_grant_refs(DomId(0), shared.refs(), true, Some(notify))
            .unwrap();
        hv.destroy_domain(DomId(3)).unwrap();
        assert_eq!(a.pending().unwrap(), Some(pa));
        let gone = b.notify(pb).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(Errno::EBADF as i32));
        assert!(hv.open_events(DomId(3)).is_err());
        assert!(!hv.domain_exists(DomId(3)));
    }
}
