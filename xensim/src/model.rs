//! The simulated hypervisor itself: domains, event channels, grant tables and unmap
//! notifications, with no I/O.
//!
//! [`Hypervisor`] is a state machine driven by typed calls, as `xenstore::store` is for the store.
//! It never touches memory or a descriptor: what the kernel or Xen would *do* (deliver an event to
//! a handle, clear a byte of granted memory) comes back as [`Effect`]s, in the order they must
//! happen, for the front-end to carry out. The front-ends ([`crate::inproc`] in one process,
//! [`crate::host`] across processes) differ only in how a handle reaches this model and in what
//! the memory object `M` is; every rule lives here once.
//!
//! The rules follow Xen and the Linux drivers (evtchn, gntalloc, gntdev):
//! - a port that fires is masked until its handle unmasks it; events that arrive while it is
//!   masked coalesce into one, delivered on unmask;
//! - closing a port sends its interdomain peer back to "unbound, waiting for us";
//! - a grant names one page of a memory object and the one domain that may map it, read-only
//!   unless writable was granted; one map call may name refs from several shares;
//! - an unmap notification (clear a byte, send an event) fires when its share or mapping ends,
//!   explicitly or because its handle closed; a notify holds its port, so a port closed before
//!   it lingers until the notify has gone out;
//! - closing a handle (its process died) reclaims everything it held; destroying a domain closes
//!   every handle of the domain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use nix::errno::Errno;
use xen_types::{DomId, GrantRef, Port, PAGE_SIZE};

/// Most grants one simulated domain may have outstanding (Xen's default grant-table size).
pub const MAX_GRANTS_PER_DOMAIN: u32 = 32 * 512;
/// Most pages one share or map call may name.
pub const MAX_PAGES_PER_CALL: usize = 4096;
/// The highest event-channel port handed out (Xen's 2-level ABI limit, less one).
pub const MAX_PORT: u32 = 4095;

/// A result of the model: an errno value, as the drivers answer.
pub type Result<T> = std::result::Result<T, Errno>;

/// A handle (an open device: `/dev/xen/evtchn`, gntalloc, gntdev, or the toolstack's control
/// connection), named by the model when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId(pub u64);

/// What a handle is for; a handle may only make the requests of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// An event-channel handle.
    Events,
    /// A grant-sharing handle (gntalloc).
    Share,
    /// A grant-mapping handle (gntdev).
    Map,
    /// The toolstack (dom0 only): domain life and statistics.
    Control,
}

/// An unmap notification as a request states it: a byte offset within the region to clear,
/// and a port of the calling domain to send on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyRequest {
    /// Byte offset within the shared or mapped region.
    pub clear_byte: Option<usize>,
    /// A port the calling handle has bound.
    pub event: Option<Port>,
}

/// A request a handle makes of the hypervisor.
#[derive(Debug)]
pub enum Request<'a, M> {
    /// Allocate a port that `remote` may bind to.
    BindUnbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Bind a port to `remote`'s unbound `remote_port`, which was offered to us.
    BindInterdomain {
        /// The offering domain.
        remote: DomId,
        /// Its unbound port.
        remote_port: Port,
    },
    /// Send an event from one of our ports.
    Notify(Port),
    /// Re-arm one of our ports.
    Unmask(Port),
    /// Close one of our ports.
    Unbind(Port),
    /// Grant `grantee` access to the `pages` pages of `memory` (which the front-end allocated).
    Share {
        /// The domain that may map the pages.
        grantee: DomId,
        /// The memory behind the pages (zeroed, `pages` pages long).
        memory: Arc<M>,
        /// Number of pages.
        pages: usize,
        /// Whether the grantee may map them writable.
        writable: bool,
        /// What to do when the share ends.
        notify: NotifyRequest,
    },
    /// End a share.
    Unshare(u32),
    /// Map `refs`, granted by `granter`, as one region.
    Map {
        /// The granting domain.
        granter: DomId,
        /// One ref per page, in the order of the region.
        refs: &'a [GrantRef],
        /// Whether to map writable (the grants must allow it).
        writable: bool,
        /// What to do when the mapping ends.
        notify: NotifyRequest,
    },
    /// End a mapping.
    Unmap(u32),
    /// Arrange a notification for a mapping made without one (gntdev's `SET_UNMAP_NOTIFY` on a
    /// mapping that exists): a client sets it only once it has joined, so that a failed attempt
    /// clears nobody's byte.
    SetMapNotify {
        /// The mapping.
        id: u32,
        /// What to do when it ends.
        notify: NotifyRequest,
    },
}

/// The model's answer to a [`Request`].
#[derive(Debug)]
pub enum Reply<M> {
    /// Done; nothing to say.
    Done,
    /// The port bound.
    Port(Port),
    /// The share's id and one grant ref per page.
    Shared {
        /// Names the share for [`Request::Unshare`].
        id: u32,
        /// One ref per page, in page order.
        refs: Vec<GrantRef>,
    },
    /// The mapping's id and, for each ref, the memory and page behind it.
    Mapped {
        /// Names the mapping for [`Request::Unmap`].
        id: u32,
        /// Per page of the region: the memory object and the page within it.
        pages: Vec<(Arc<M>, usize)>,
    },
}

/// Something the front-end must carry out, in order, for the model's decision to take effect.
#[derive(Debug)]
pub enum Effect<M> {
    /// Write 0 to byte `offset` of `memory` (an unmap notification's clear).
    ClearByte {
        /// The memory object.
        memory: Arc<M>,
        /// Byte offset within it.
        offset: usize,
    },
    /// Deliver `port`'s event to `handle` (make its fd readable with the port queued).
    Deliver {
        /// The event-channel handle that owns the port.
        handle: HandleId,
        /// The port.
        port: Port,
    },
}

/// Counts of what the hypervisor holds, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Live domains (dom0 included).
    pub domains: u32,
    /// Open handles.
    pub handles: u32,
    /// Bound event-channel ports (closed ones still held by a notify included).
    pub ports: u32,
    /// Grants offered.
    pub grants: u32,
    /// Grant mappings held.
    pub mappings: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    Unbound { remote: DomId },
    Interdomain { remote: DomId, port: Port },
}

#[derive(Debug)]
struct PortEntry {
    /// The handle delivering this port's events; `None` once closed but still held by a notify.
    owner: Option<HandleId>,
    binding: Binding,
    pending: bool,
    masked: bool,
    /// Unmap notifications that will send on this port.
    holds: u32,
}

#[derive(Debug)]
struct Grant<M> {
    memory: Arc<M>,
    page: usize,
    grantee: DomId,
    writable: bool,
}

#[derive(Debug)]
struct Notify<M> {
    clear: Option<(Arc<M>, usize)>,
    event: Option<(DomId, Port)>,
}

#[derive(Debug)]
struct Share<M> {
    handle: HandleId,
    domid: DomId,
    refs: Vec<GrantRef>,
    notify: Notify<M>,
}

#[derive(Debug)]
struct Mapping<M> {
    handle: HandleId,
    /// The domain that mapped (whose ports a notification may use).
    domid: DomId,
    /// Per page of the region: the memory object and the page within it.
    pages: Vec<(Arc<M>, usize)>,
    notify: Notify<M>,
}

#[derive(Debug, Clone, Copy)]
struct HandleRecord {
    domid: DomId,
    kind: HandleKind,
}

/// The simulated hypervisor's whole state. Dom0 exists from the start.
#[derive(Debug)]
pub struct Hypervisor<M> {
    domains: BTreeSet<DomId>,
    handles: HashMap<HandleId, HandleRecord>,
    ports: HashMap<(DomId, Port), PortEntry>,
    grants: HashMap<(DomId, GrantRef), Grant<M>>,
    shares: HashMap<u32, Share<M>>,
    mappings: HashMap<u32, Mapping<M>>,
    next_handle: u64,
    next_id: u32,
}

impl<M> Default for Hypervisor<M> {
    fn default() -> Self {
        Hypervisor::new()
    }
}

impl<M> Hypervisor<M> {
    /// A hypervisor with dom0 and nothing else.
    pub fn new() -> Hypervisor<M> {
        Hypervisor {
            domains: BTreeSet::from([DomId::DOM0]),
            handles: HashMap::new(),
            ports: HashMap::new(),
            grants: HashMap::new(),
            shares: HashMap::new(),
            mappings: HashMap::new(),
            next_handle: 0,
            next_id: 0,
        }
    }

    /// Create domain `domid` (`EEXIST` if it exists, `EINVAL` for a reserved id).
    pub fn create_domain(&mut self, domid: DomId) -> Result<()> {
        if !domid.is_normal() {
            return Err(Errno::EINVAL);
        }
        if self.domains.insert(domid) {
            Ok(())
        } else {
            Err(Errno::EEXIST)
        }
    }

    /// Destroy domain `domid`: every handle its processes hold is closed (their unmap
    /// notifications fire, in `effects`). Returns those handles, for the front-end to hang up
    /// and whose processes to kill. `EPERM` for dom0, `ESRCH` if it does not exist.
    pub fn destroy_domain(
        &mut self,
        domid: DomId,
        effects: &mut Vec<Effect<M>>,
    ) -> Result<Vec<HandleId>> {
        if domid == DomId::DOM0 {
            return Err(Errno::EPERM);
        }
        if !self.domains.remove(&domid) {
            return Err(Errno::ESRCH);
        }
        let mut handles: Vec<HandleId> = self
            .handles
            .iter()
            .filter(|(_, h)| h.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        handles.sort();
        for &handle in &handles {
            self.close(handle, effects);
        }
        Ok(handles)
    }

    /// Whether domain `domid` exists.
    pub fn domain_exists(&self, domid: DomId) -> bool {
        self.domains.contains(&domid)
    }

    /// Open a handle of `kind` for `domid`: `ESRCH` if the domain does not exist, `EPERM` for a
    /// control handle of any domain but dom0.
    pub fn open(&mut self, domid: DomId, kind: HandleKind) -> Result<HandleId> {
        if kind == HandleKind::Control && domid != DomId::DOM0 {
            return Err(Errno::EPERM);
        }
        if !self.domains.contains(&domid) {
            return Err(Errno::ESRCH);
        }
        self.next_handle += 1;
        let id = HandleId(self.next_handle);
        self.handles.insert(id, HandleRecord { domid, kind });
        Ok(id)
    }

    /// The domain and kind of an open handle.
    pub fn handle(&self, handle: HandleId) -> Option<(DomId, HandleKind)> {
        self.handles.get(&handle).map(|h| (h.domid, h.kind))
    }

    /// Close a handle, as when its device file is closed or its process dies: everything it
    /// held goes, and its unmap notifications fire. Closing a closed handle does nothing.
    pub fn close(&mut self, handle: HandleId, effects: &mut Vec<Effect<M>>) {
        if self.handles.remove(&handle).is_none() {
            return;
        }
        let mut shares: Vec<u32> = self
            .shares
            .iter()
            .filter(|(_, s)| s.handle == handle)
            .map(|(id, _)| *id)
            .collect();
        shares.sort_unstable();
        for id in shares {
            self.unshare(id, effects);
        }
        let mut mappings: Vec<u32> = self
            .mappings
            .iter()
            .filter(|(_, m)| m.handle == handle)
            .map(|(id, _)| *id)
            .collect();
        mappings.sort_unstable();
        for id in mappings {
            self.unmap(id, effects);
        }
        let ports: Vec<(DomId, Port)> = self
            .ports
            .iter()
            .filter(|(_, e)| e.owner == Some(handle))
            .map(|(k, _)| *k)
            .collect();
        for (domid, port) in ports {
            self.close_port(domid, port);
        }
    }

    /// Forget share `id` without its notification: the front-end could not complete it (the
    /// sharer never saw its pages).
    pub fn cancel_share(&mut self, handle: HandleId, id: u32) -> Result<()> {
        if self.shares.get(&id).is_none_or(|s| s.handle != handle) {
            return Err(Errno::EINVAL);
        }
        if let Some(share) = self.shares.remove(&id) {
            for r in &share.refs {
                self.grants.remove(&(share.domid, *r));
            }
            if let Some((domid, port)) = share.notify.event {
                self.release_hold(domid, port);
            }
        }
        Ok(())
    }

    /// Forget mapping `id` without its notification: the front-end could not complete it (the
    /// mapper never saw the memory).
    pub fn cancel_mapping(&mut self, handle: HandleId, id: u32) -> Result<()> {
        if self.mappings.get(&id).is_none_or(|m| m.handle != handle) {
            return Err(Errno::EINVAL);
        }
        if let Some(mapping) = self.mappings.remove(&id) {
            if let Some((domid, port)) = mapping.notify.event {
                self.release_hold(domid, port);
            }
        }
        Ok(())
    }

    /// What the hypervisor holds now.
    pub fn stats(&self) -> Stats {
        Stats {
            domains: self.domains.len() as u32,
            handles: self.handles.len() as u32,
            ports: self.ports.len() as u32,
            grants: self.grants.len() as u32,
            mappings: self.mappings.len() as u32,
        }
    }

    /// Carry out `request` for `handle`. Errors are what the drivers answer: `EBADF` for a
    /// closed handle or a request of another kind, `ENOTCONN` for a port the handle has not bound
    /// (an unmask of one is ignored, as by the Linux driver), `EINVAL` for a share or mapping id
    /// the handle does not hold or a malformed request, `ENOENT` for
    /// a ref not granted to the caller, `EACCES` for a writable map of a read-only grant,
    /// `ENOSPC` when ports or grants run out.
    pub fn request(
        &mut self,
        handle: HandleId,
        request: Request<'_, M>,
        effects: &mut Vec<Effect<M>>,
    ) -> Result<Reply<M>> {
        let record = *self.handles.get(&handle).ok_or(Errno::EBADF)?;
        let domid = record.domid;
        let kind = match request {
            Request::BindUnbound { .. }
            | Request::BindInterdomain { .. }
            | Request::Notify(_)
            | Request::Unmask(_)
            | Request::Unbind(_) => HandleKind::Events,
            Request::Share { .. } | Request::Unshare(_) => HandleKind::Share,
            Request::Map { .. } | Request::Unmap(_) | Request::SetMapNotify { .. } => {
                HandleKind::Map
            }
        };
        if record.kind != kind {
            return Err(Errno::EBADF);
        }
        match request {
            Request::BindUnbound { remote } => {
                // As in Xen, the remote domain need not exist yet: a toolstack may start a
                // server before it creates the client's domain.
                check_normal(remote)?;
                let port = self.alloc_port(domid)?;
                self.insert_port(handle, domid, port, Binding::Unbound { remote });
                Ok(Reply::Port(port))
            }
            Request::BindInterdomain {
                remote,
                remote_port,
            } => {
                check_normal(remote)?;
                match self.ports.get(&(remote, remote_port)) {
                    Some(e)
                        if e.owner.is_some() && e.binding == Binding::Unbound { remote: domid } => {
                    }
                    _ => return Err(Errno::EINVAL),
                }
                let port = self.alloc_port(domid)?;
                self.insert_port(
                    handle,
                    domid,
                    port,
                    Binding::Interdomain {
                        remote,
                        port: remote_port,
                    },
                );
                if let Some(peer) = self.ports.get_mut(&(remote, remote_port)) {
                    peer.binding = Binding::Interdomain {
                        remote: domid,
                        port,
                    };
                }
                Ok(Reply::Port(port))
            }
            Request::Notify(port) => {
                self.owned_port(handle, domid, port)?;
                self.send_from(domid, port, effects);
                Ok(Reply::Done)
            }
            Request::Unmask(port) => {
                // The Linux driver ignores an unmask of a port the handle has not bound.
                let Ok(entry) = self.owned_port(handle, domid, port) else {
                    return Ok(Reply::Done);
                };
                entry.masked = false;
                if std::mem::take(&mut entry.pending) {
                    self.raise(domid, port, effects);
                }
                Ok(Reply::Done)
            }
            Request::Unbind(port) => {
                self.owned_port(handle, domid, port)?;
                self.close_port(domid, port);
                Ok(Reply::Done)
            }
            Request::Share {
                grantee,
                memory,
                pages,
                writable,
                notify,
            } => self.share(handle, domid, grantee, memory, pages, writable, notify),
            Request::Unshare(id) => match self.shares.get(&id) {
                Some(s) if s.handle == handle => {
                    self.unshare(id, effects);
                    Ok(Reply::Done)
                }
                _ => Err(Errno::EINVAL),
            },
            Request::Map {
                granter,
                refs,
                writable,
                notify,
            } => self.map(handle, domid, granter, refs, writable, notify),
            Request::Unmap(id) => match self.mappings.get(&id) {
                Some(m) if m.handle == handle => {
                    self.unmap(id, effects);
                    Ok(Reply::Done)
                }
                _ => Err(Errno::EINVAL),
            },
            Request::SetMapNotify { id, notify } => self.set_map_notify(handle, id, notify),
        }
    }

    /// A notification for an existing mapping of `handle`'s that has none yet (`EBUSY` if it
    /// has one: the model keeps one per mapping, as vchan needs).
    fn set_map_notify(
        &mut self,
        handle: HandleId,
        id: u32,
        notify: NotifyRequest,
    ) -> Result<Reply<M>> {
        let mapping = match self.mappings.get(&id) {
            Some(m) if m.handle == handle => m,
            _ => return Err(Errno::EINVAL),
        };
        if mapping.notify.clear.is_some() || mapping.notify.event.is_some() {
            return Err(Errno::EBUSY);
        }
        let clear = match notify.clear_byte {
            Some(offset) => {
                let (memory, page) = mapping.pages.get(offset / PAGE_SIZE).ok_or(Errno::EINVAL)?;
                Some((Arc::clone(memory), page * PAGE_SIZE + offset % PAGE_SIZE))
            }
            None => None,
        };
        let domid = mapping.domid;
        let event = self.hold_port(domid, notify.event)?;
        if let Some(mapping) = self.mappings.get_mut(&id) {
            mapping.notify = Notify { clear, event };
        }
        Ok(Reply::Done)
    }

    #[allow(clippy::too_many_arguments)]
    fn share(
        &mut self,
        handle: HandleId,
        domid: DomId,
        grantee: DomId,
        memory: Arc<M>,
        pages: usize,
        writable: bool,
        notify: NotifyRequest,
    ) -> Result<Reply<M>> {
        check_normal(grantee)?;
        if pages == 0 || pages > MAX_PAGES_PER_CALL {
            return Err(Errno::EINVAL);
        }
        if notify.clear_byte.is_some_and(|b| b >= pages * PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let event = self.hold_port(domid, notify.event)?;
        // Grant 0 is reserved: hand out the lowest free refs from 1, as gntalloc's free list does.
        let mut refs = Vec::with_capacity(pages);
        let mut candidate = 1u32;
        for page in 0..pages {
            while self.grants.contains_key(&(domid, GrantRef(candidate))) {
                candidate += 1;
            }
            if candidate >= MAX_GRANTS_PER_DOMAIN {
                for r in &refs {
                    self.grants.remove(&(domid, *r));
                }
                if let Some((d, p)) = event {
                    self.release_hold(d, p);
                }
                return Err(Errno::ENOSPC);
            }
            self.grants.insert(
                (domid, GrantRef(candidate)),
                Grant {
                    memory: Arc::clone(&memory),
                    page,
                    grantee,
                    writable,
                },
            );
            refs.push(GrantRef(candidate));
        }
        let id = self.new_id();
        let clear = notify.clear_byte.map(|offset| (memory, offset));
        self.shares.insert(
            id,
            Share {
                handle,
                domid,
                refs: refs.clone(),
                notify: Notify { clear, event },
            },
        );
        Ok(Reply::Shared { id, refs })
    }

    fn map(
        &mut self,
        handle: HandleId,
        domid: DomId,
        granter: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: NotifyRequest,
    ) -> Result<Reply<M>> {
        check_normal(granter)?;
        if refs.is_empty() || refs.len() > MAX_PAGES_PER_CALL {
            return Err(Errno::EINVAL);
        }
        if notify
            .clear_byte
            .is_some_and(|b| b >= refs.len() * PAGE_SIZE)
        {
            return Err(Errno::EINVAL);
        }
        let mut pages = Vec::with_capacity(refs.len());
        let mut clear = None;
        for (i, gref) in refs.iter().enumerate() {
            let grant = self
                .grants
                .get(&(granter, *gref))
                .filter(|g| g.grantee == domid)
                .ok_or(Errno::ENOENT)?;
            if writable && !grant.writable {
                return Err(Errno::EACCES);
            }
            if let Some(offset) = notify.clear_byte.filter(|b| b / PAGE_SIZE == i) {
                let in_memory = grant.page * PAGE_SIZE + offset % PAGE_SIZE;
                clear = Some((Arc::clone(&grant.memory), in_memory));
            }
            pages.push((Arc::clone(&grant.memory), grant.page));
        }
        let event = self.hold_port(domid, notify.event)?;
        let id = self.new_id();
        self.mappings.insert(
            id,
            Mapping {
                handle,
                domid,
                pages: pages.clone(),
                notify: Notify { clear, event },
            },
        );
        Ok(Reply::Mapped { id, pages })
    }

    fn new_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.shares.contains_key(&id) && !self.mappings.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert_port(&mut self, handle: HandleId, domid: DomId, port: Port, binding: Binding) {
        self.ports.insert(
            (domid, port),
            PortEntry {
                owner: Some(handle),
                binding,
                pending: false,
                masked: false,
                holds: 0,
            },
        );
    }

    fn alloc_port(&self, domid: DomId) -> Result<Port> {
        (1..=MAX_PORT)
            .map(Port)
            .find(|p| !self.ports.contains_key(&(domid, *p)))
            .ok_or(Errno::ENOSPC)
    }

    fn owned_port(&mut self, handle: HandleId, domid: DomId, port: Port) -> Result<&mut PortEntry> {
        match self.ports.get_mut(&(domid, port)) {
            Some(entry) if entry.owner == Some(handle) => Ok(entry),
            // What the Linux driver answers for a port this handle has not bound.
            _ => Err(Errno::ENOTCONN),
        }
    }

    /// Mark `domid`'s `port` pending and deliver it unless masked (the Linux driver masks a port
    /// as it delivers it).
    fn raise(&mut self, domid: DomId, port: Port, effects: &mut Vec<Effect<M>>) {
        let Some(entry) = self.ports.get_mut(&(domid, port)) else {
            return;
        };
        let Some(owner) = entry.owner else { return };
        if entry.masked {
            entry.pending = true;
            return;
        }
        entry.masked = true;
        effects.push(Effect::Deliver {
            handle: owner,
            port,
        });
    }

    /// Send from `domid`'s `port` as the kernel would; an unconnected port sends nowhere.
    fn send_from(&mut self, domid: DomId, port: Port, effects: &mut Vec<Effect<M>>) {
        if let Some(Binding::Interdomain { remote, port }) =
            self.ports.get(&(domid, port)).map(|e| e.binding)
        {
            self.raise(remote, port, effects);
        }
    }

    fn remove_port(&mut self, domid: DomId, port: Port) {
        let Some(entry) = self.ports.remove(&(domid, port)) else {
            return;
        };
        if let Binding::Interdomain { remote, port } = entry.binding {
            if let Some(peer) = self.ports.get_mut(&(remote, port)) {
                peer.binding = Binding::Unbound { remote: domid };
            }
        }
    }

    /// Close a port: at once, or once the last notify holding it has fired.
    fn close_port(&mut self, domid: DomId, port: Port) {
        match self.ports.get_mut(&(domid, port)) {
            Some(entry) if entry.holds > 0 => {
                entry.owner = None;
                entry.pending = false;
            }
            Some(_) => self.remove_port(domid, port),
            None => {}
        }
    }

    /// A notify's port must be bound by an event-channel handle of the same domain (the Linux
    /// drivers take any port of the caller's domain).
    fn hold_port(&mut self, domid: DomId, port: Option<Port>) -> Result<Option<(DomId, Port)>> {
        let Some(port) = port else { return Ok(None) };
        match self.ports.get_mut(&(domid, port)) {
            Some(entry) if entry.owner.is_some() => {
                entry.holds += 1;
                Ok(Some((domid, port)))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn release_hold(&mut self, domid: DomId, port: Port) {
        let release = match self.ports.get_mut(&(domid, port)) {
            Some(entry) => {
                entry.holds = entry.holds.saturating_sub(1);
                entry.holds == 0 && entry.owner.is_none()
            }
            None => false,
        };
        if release {
            self.remove_port(domid, port);
        }
    }

    fn fire(&mut self, notify: Notify<M>, effects: &mut Vec<Effect<M>>) {
        if let Some((memory, offset)) = notify.clear {
            effects.push(Effect::ClearByte { memory, offset });
        }
        if let Some((domid, port)) = notify.event {
            self.send_from(domid, port, effects);
            self.release_hold(domid, port);
        }
    }

    fn unshare(&mut self, id: u32, effects: &mut Vec<Effect<M>>) {
        if let Some(share) = self.shares.remove(&id) {
            for r in &share.refs {
                self.grants.remove(&(share.domid, *r));
            }
            self.fire(share.notify, effects);
        }
    }

    fn unmap(&mut self, id: u32, effects: &mut Vec<Effect<M>>) {
        if let Some(mapping) = self.mappings.remove(&id) {
            self.fire(mapping.notify, effects);
        }
    }
}

fn check_normal(domid: DomId) -> Result<()> {
    if domid.is_normal() {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory stands for itself in the model: a name.
    type Hv = Hypervisor<&'static str>;

    fn events_pair(hv: &mut Hv, effects: &mut Vec<Effect<&'static str>>) -> [(HandleId, Port); 2] {
        hv.create_domain(DomId(3)).unwrap();
        let a = hv.open(DomId::DOM0, HandleKind::Events).unwrap();
        let b = hv.open(DomId(3), HandleKind::Events).unwrap();
        let Reply::Port(pa) = hv
            .request(a, Request::BindUnbound { remote: DomId(3) }, effects)
            .unwrap()
        else {
            panic!("a port")
        };
        let bind = Request::BindInterdomain {
            remote: DomId::DOM0,
            remote_port: pa,
        };
        let Reply::Port(pb) = hv.request(b, bind, effects).unwrap() else {
            panic!("a port")
        };
        [(a, pa), (b, pb)]
    }

    fn delivered(effects: &mut Vec<Effect<&'static str>>) -> Vec<(HandleId, Port)> {
        effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::Deliver { handle, port } => Some((handle, port)),
                Effect::ClearByte { .. } => None,
            })
            .collect()
    }

    #[test]
    fn events_coalesce_while_masked_and_are_delivered_again_on_unmask() {
        let mut hv = Hv::new();
        let mut fx = Vec::new();
        let [(a, pa), (b, pb)] = events_pair(&mut hv, &mut fx);
        hv.request(b, Request::Notify(pb), &mut fx).unwrap();
        hv.request(b, Request::Notify(pb), &mut fx).unwrap();
        assert_eq!(delivered(&mut fx), [(a, pa)], "masked after the first");
        hv.request(a, Request::Unmask(pa), &mut fx).unwrap();
        assert_eq!(delivered(&mut fx), [(a, pa)], "the coalesced one");
        hv.request(a, Request::Unmask(pa), &mut fx).unwrap();
        assert!(delivered(&mut fx).is_empty());
    }

    #[test]
    fn only_the_owner_uses_a_port_and_only_the_offered_domain_binds() {
        let mut hv = Hv::new();
        let mut fx = Vec::new();
        let [(_a, pa), (_b, _pb)] = events_pair(&mut hv, &mut fx);
        let a2 = hv.open(DomId::DOM0, HandleKind::Events).unwrap();
        let not_its_own = hv.request(a2, Request::Notify(pa), &mut fx).unwrap_err();
        assert_eq!(
            not_its_own,
            Errno::ENOTCONN,
            "a port of another handle of the same domain"
        );
        let unmask = hv.request(a2, Request::Unmask(pa), &mut fx).unwrap();
        assert!(
            matches!(unmask, Reply::Done),
            "ignored, as by the Linux driver"
        );
        hv.create_domain(DomId(4)).unwrap();
        let c = hv.open(DomId(4), HandleKind::Events).unwrap();
        let bind = Request::BindInterdomain {
            remote: DomId::DOM0,
            remote_port: pa,
        };
        assert_eq!(hv.request(c, bind, &mut fx).unwrap_err(), Errno::EINVAL);
        let to_a_domain_yet_to_come = Request::BindUnbound { remote: DomId(9) };
        assert!(hv.request(c, to_a_domain_yet_to_come, &mut fx).is_ok());
        let share = hv.request(c, Request::Unshare(1), &mut fx).unwrap_err();
        assert_eq!(share, Errno::EBADF, "an event handle does not share");
        assert_eq!(
            hv.open(DomId(4), HandleKind::Control).unwrap_err(),
            Errno::EPERM
        );
        assert_eq!(
            hv.open(DomId(8), HandleKind::Events).unwrap_err(),
            Errno::ESRCH
        );
    }

    #[test]
    fn refs_of_separate_shares_map_as_one_region_and_read_only_grants_stay_read_only() {
        let mut hv = Hv::new();
        let mut fx = Vec::new();
        hv.create_domain(DomId(5)).unwrap();
        let sharer = hv.open(DomId::DOM0, HandleKind::Share).unwrap();
        let mapper = hv.open(DomId(5), HandleKind::Map).unwrap();
        let share = |hv: &mut Hv, memory, writable, fx: &mut Vec<_>| match hv
            .request(
                sharer,
                Request::Share {
                    grantee: DomId(5),
                    memory: Arc::new(memory),
                    pages: 2,
                    writable,
                    notify: NotifyRequest::default(),
                },
                fx,
            )
            .unwrap()
        {
            Reply::Shared { refs, .. } => refs,
            other => panic!("{other:?}"),
        };
        let first = share(&mut hv, "first", true, &mut fx);
        let second = share(&mut hv, "second", false, &mut fx);
        let refs = [second[1], first[0]];
        let map = |hv: &mut Hv, writable, fx: &mut Vec<_>| {
            hv.request(
                mapper,
                Request::Map {
                    granter: DomId::DOM0,
                    refs: &refs,
                    writable,
                    notify: NotifyRequest::default(),
                },
                fx,
            )
        };
        assert_eq!(map(&mut hv, true, &mut fx).unwrap_err(), Errno::EACCES);
        let Reply::Mapped { pages, .. } = map(&mut hv, false, &mut fx).unwrap() else {
            panic!("a mapping")
        };
        let pages: Vec<(&str, usize)> = pages.iter().map(|(m, p)| (**m, *p)).collect();
        assert_eq!(pages, [("second", 1), ("first", 0)]);
        // Only the grantee maps.
        let other = hv.open(DomId::DOM0, HandleKind::Map).unwrap();
        let by_other = Request::Map {
            granter: DomId::DOM0,
            refs: &refs,
            writable: false,
            notify: NotifyRequest::default(),
        };
        assert_eq!(
            hv.request(other, by_other, &mut fx).unwrap_err(),
            Errno::ENOENT
        );
    }

    #[test]
    fn a_dying_handle_fires_its_notifications_and_a_notify_holds_its_port() {
        let mut hv = Hv::new();
        let mut fx = Vec::new();
        let [(a, pa), (b, pb)] = events_pair(&mut hv, &mut fx);
        let mapper = hv.open(DomId(3), HandleKind::Map).unwrap();
        let sharer = hv.open(DomId::DOM0, HandleKind::Share).unwrap();
        let shared = Request::Share {
            grantee: DomId(3),
            memory: Arc::new("page"),
            pages: 1,
            writable: true,
            notify: NotifyRequest::default(),
        };
        let Reply::Shared { refs, .. } = hv.request(sharer, shared, &mut fx).unwrap() else {
            panic!("shared")
        };
        let notify = NotifyRequest {
            clear_byte: Some(7),
            event: Some(pb),
        };
        let map = Request::Map {
            granter: DomId::DOM0,
            refs: &refs,
            writable: true,
            notify,
        };
        hv.request(mapper, map, &mut fx).unwrap();
        // The process dies: its event handle closes first, then its grant handle.
        hv.close(b, &mut fx);
        assert_eq!(hv.stats().ports, 2, "the port lingers for the notify");
        hv.close(mapper, &mut fx);
        match fx.as_slice() {
            [Effect::ClearByte { memory, offset: 7 }, Effect::Deliver { handle, port }] => {
                assert_eq!(**memory, "page");
                assert_eq!((*handle, *port), (a, pa));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hv.stats().ports, 1, "released once the notify went out");
    }

    #[test]
    fn destroying_a_domain_closes_its_handles_and_the_domain_cannot_come_back_to_them() {
        let mut hv = Hv::new();
        let mut fx = Vec::new();
        let [(a, _), (b, _)] = events_pair(&mut hv, &mut fx);
        assert_eq!(hv.destroy_domain(DomId(3), &mut fx).unwrap(), [b]);
        assert_eq!(hv.handle(b), None);
        assert!(hv.handle(a).is_some());
        assert_eq!(
            hv.destroy_domain(DomId(3), &mut fx).unwrap_err(),
            Errno::ESRCH
        );
        assert_eq!(
            hv.destroy_domain(DomId::DOM0, &mut fx).unwrap_err(),
            Errno::EPERM
        );
        assert_eq!(hv.stats().ports, 1);
        hv.close(a, &mut fx);
        assert_eq!(
            hv.stats(),
            Stats {
                domains: 1,
                ..Stats::default()
            }
        );
    }
}
