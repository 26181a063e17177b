//! The cross-process front-end's client side: device handles of a simulated domain, each one
//! connection to the host (`xensim serve`; see [`crate::wire`] for the protocol).
//!
//! [`XensimEvtchn`] plays `/dev/xen/evtchn`, [`XensimGnt`] gntalloc (sharing) or gntdev
//! (mapping), [`HostControl`] the toolstack's privileged interface. Granted memory arrives as
//! memfds the host passes over the socket; a mapping is stitched from them page by page, and a
//! read-only one is made from a read-only description (see [`crate::memory`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use xen_types::{DomId, GrantRef, Port, PAGE_SIZE};

use crate::lock;
use crate::memory::Region;
use crate::model::{Stats, MAX_PAGES_PER_CALL};
use crate::wire::{self, env_config, op};

fn host_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the simulated Xen host (xensim serve) has gone",
    )
}

fn short_reply() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "short reply from the xensim host",
    )
}

/// The errno a C caller of the stand-in libraries should see for `e`: its own, or the closest
/// one for the errors the clients make up (no host, a malformed reply).
pub fn errno_of(e: &io::Error) -> Errno {
    match e.raw_os_error() {
        // An errno nix does not know is still a failure: never 0.
        Some(code) => match Errno::from_raw(code) {
            Errno::UnknownErrno => Errno::EIO,
            known => known,
        },
        None => match e.kind() {
            io::ErrorKind::NotFound => Errno::ENOENT,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            io::ErrorKind::ConnectionAborted => Errno::ECONNABORTED,
            io::ErrorKind::InvalidData => Errno::EPROTO,
            _ => Errno::EIO,
        },
    }
}

fn gone_if_hung_up(e: io::Error) -> io::Error {
    match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
        Errno::EPIPE | Errno::ECONNRESET => host_gone(),
        _ => e,
    }
}

/// One connection to the simulated hypervisor: a device handle's life line.
#[derive(Debug)]
pub struct HostConn {
    sock: OwnedFd,
    /// Serialises request/reply pairs from several threads.
    calls: Mutex<()>,
    domid: DomId,
}

impl HostConn {
    /// Connect to the host in `dir` as `domid`, opening a handle of `kind` (see [`op`]), with
    /// `fds` attached to the greeting.
    pub fn connect(
        dir: &Path,
        domid: DomId,
        kind: u32,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<HostConn> {
        let path = dir.join(wire::HOST_SOCKET);
        let sock = wire::seqpacket_connect(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the simulated Xen host at {} ({e}); is `xensim serve` running?",
                    path.display()
                ),
            )
        })?;
        let conn = HostConn {
            sock,
            calls: Mutex::new(()),
            domid,
        };
        match conn.call_with_fds(&[op::HELLO, kind, u32::from(domid.0)], fds) {
            Ok(_) => Ok(conn),
            Err(e) if e.raw_os_error() == Some(Errno::ESRCH as i32) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "domain {domid} does not exist on the simulated Xen host in {}",
                    dir.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// The domain this connection speaks for.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Send a request that has no reply ([`op::has_reply`] is false for it), allocating nothing.
    pub fn send_one_way(&self, request: &[u32]) -> io::Result<()> {
        debug_assert!(request.first().is_some_and(|&op| !op::has_reply(op)));
        wire::send_small(self.sock.as_fd(), request, MsgFlags::empty()).map_err(gone_if_hung_up)
    }

    /// Send a request and wait for its reply; returns the reply's values (after the status).
    pub fn call(&self, request: &[u32]) -> io::Result<Vec<u32>> {
        Ok(self.call_with_fds(request, &[])?.0)
    }

    /// Send a request with descriptors attached; returns the reply's values and descriptors.
    pub fn call_with_fds(
        &self,
        request: &[u32],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(Vec<u32>, Vec<OwnedFd>)> {
        let _serial = lock(&self.calls);
        wire::send_msg(self.sock.as_fd(), request, fds).map_err(gone_if_hung_up)?;
        let (mut words, fds) = wire::recv_msg(self.sock.as_fd())?.ok_or_else(host_gone)?;
        match words.first() {
            Some(0) => {
                words.remove(0);
                Ok((words, fds))
            }
            Some(&errno) => Err(io::Error::from_raw_os_error(errno as i32)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty reply from the xensim host",
            )),
        }
    }
}

impl AsFd for HostConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn one(values: Vec<u32>) -> io::Result<u32> {
    values.first().copied().ok_or_else(short_reply)
}

/// An event-channel handle on the simulated host (`/dev/xen/evtchn` for one process).
#[derive(Debug)]
pub struct XensimEvtchn {
    conn: HostConn,
    /// Our end of the delivery socket: one message per delivered event.
    events: OwnedFd,
    /// The ports this handle has bound, so the one-way notify and unmask can refuse any other
    /// port here, as the Linux driver does, without waiting for the host.
    bound: Mutex<Vec<Port>>,
}

impl XensimEvtchn {
    /// Open a handle as `domid` on the host in `dir`.
    pub fn open(dir: &Path, domid: DomId) -> io::Result<XensimEvtchn> {
        let (mine, theirs) = wire::seqpacket_pair()?;
        let conn = HostConn::connect(dir, domid, op::KIND_EVENTS, &[theirs.as_fd()])?;
        drop(theirs);
        Ok(XensimEvtchn {
            conn,
            events: mine,
            bound: Mutex::new(Vec::new()),
        })
    }

    /// Open a handle as configured by `XENSIM_DIR` and `XENSIM_DOMID`.
    pub fn from_env() -> io::Result<XensimEvtchn> {
        let (dir, domid) = env_config()?;
        XensimEvtchn::open(&dir, domid)
    }

    /// The domain this handle belongs to.
    pub fn domid(&self) -> DomId {
        self.conn.domid()
    }

    fn bound(&self, port: Port) -> io::Result<Port> {
        if lock(&self.bound).contains(&port) {
            Ok(port)
        } else {
            // What the Linux driver answers for a port this handle has not bound.
            Err(Errno::ENOTCONN.into())
        }
    }

    fn remember(&self, port: io::Result<Port>) -> io::Result<Port> {
        let port = port?;
        lock(&self.bound).push(port);
        Ok(port)
    }

    /// Take the next delivered event. With `block`, wait for one (unless the fd was made
    /// non-blocking, when this fails with `WouldBlock` as `read` on `/dev/xen/evtchn` does);
    /// without, `Ok(None)` when nothing is pending.
    pub fn take_event(&self, block: bool) -> io::Result<Option<Port>> {
        Ok(wire::recv_word(self.events.as_fd(), block)?.map(Port))
    }
}

impl EventChannel for XensimEvtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&[op::EV_BIND_UNBOUND, u32::from(remote.0)])
                .and_then(one)
                .map(Port),
        )
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&[op::EV_BIND_INTERDOMAIN, u32::from(remote.0), remote_port.0])
                .and_then(one)
                .map(Port),
        )
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.send_one_way(&[op::EV_NOTIFY, port.0])
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        self.take_event(false)
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        // The Linux driver ignores an unmask of a port the handle has not bound.
        match self.bound(port) {
            Ok(port) => self.conn.send_one_way(&[op::EV_UNMASK, port.0]),
            Err(_) => Ok(()),
        }
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.call(&[op::EV_UNBIND, port.0])?;
        lock(&self.bound).retain(|&p| p != port);
        Ok(())
    }
}

impl AsFd for XensimEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

fn encode_notify(notify: Option<UnmapNotify>, len: usize) -> io::Result<[u32; 2]> {
    let notify = notify.unwrap_or_default();
    let offset = match notify.clear_byte {
        None => op::NO_OFFSET,
        Some(b) if b < len => b as u32,
        Some(_) => return Err(Errno::EINVAL.into()),
    };
    Ok([offset, notify.event.map_or(0, |p| p.0)])
}

/// A grant handle on the simulated host: `xengntshr` (sharing) or `xengnttab` (mapping).
#[derive(Debug, Clone)]
pub struct XensimGnt {
    conn: Arc<HostConn>,
}

impl XensimGnt {
    /// Open a grant-sharing handle (gntalloc) as `domid` on the host in `dir`.
    pub fn open_sharer(dir: &Path, domid: DomId) -> io::Result<XensimGnt> {
        Ok(XensimGnt {
            conn: Arc::new(HostConn::connect(dir, domid, op::KIND_SHARE, &[])?),
        })
    }

    /// Open a grant-mapping handle (gntdev) as `domid` on the host in `dir`.
    pub fn open_mapper(dir: &Path, domid: DomId) -> io::Result<XensimGnt> {
        Ok(XensimGnt {
            conn: Arc::new(HostConn::connect(dir, domid, op::KIND_MAP, &[])?),
        })
    }

    /// [`open_sharer`](Self::open_sharer) as configured by `XENSIM_DIR` and `XENSIM_DOMID`.
    pub fn sharer_from_env() -> io::Result<XensimGnt> {
        let (dir, domid) = env_config()?;
        XensimGnt::open_sharer(&dir, domid)
    }

    /// [`open_mapper`](Self::open_mapper) as configured by `XENSIM_DIR` and `XENSIM_DOMID`.
    pub fn mapper_from_env() -> io::Result<XensimGnt> {
        let (dir, domid) = env_config()?;
        XensimGnt::open_mapper(&dir, domid)
    }

    /// The domain this handle acts as.
    pub fn domid(&self) -> DomId {
        self.conn.domid()
    }
}

impl AsFd for XensimGnt {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

/// Pages shared through an [`XensimGnt`]; dropping unmaps them and ends the grants (the host
/// carries out the unmap notification).
#[derive(Debug)]
pub struct XensimShared {
    conn: Arc<HostConn>,
    id: u32,
    region: Option<Region>,
    refs: Vec<GrantRef>,
}

impl XensimShared {
    /// End the grants but leave the memory mapped: for a caller (the C `xengntshr_close`) whose
    /// user may already have unmapped the range with plain `munmap`.
    pub fn release_keep_mapping(mut self) {
        if let Some(region) = self.region.as_mut() {
            region.keep_mapped();
        }
    }
}

impl Drop for XensimShared {
    fn drop(&mut self) {
        // A share whose pages we never mapped is cancelled: its notification never took effect.
        // The host forgets the share when the connection closes anyway; nothing to report.
        let op = if self.region.is_some() {
            op::GNT_UNSHARE
        } else {
            op::GNT_CANCEL
        };
        let _ = self.conn.call(&[op, self.id]);
    }
}

// SAFETY: the region is mapped read-write for `len` bytes, page-aligned, until `self` is dropped
// (a share is only handed out with its region).
unsafe impl SharedMemory for XensimShared {
    fn as_ptr(&self) -> NonNull<u8> {
        self.region
            .as_ref()
            .map_or(NonNull::dangling(), |r| r.ptr())
    }
    fn len(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len())
    }
}

impl SharedPages for XensimShared {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

/// Pages mapped through an [`XensimGnt`]; dropping unmaps them (the host carries out the unmap
/// notification).
#[derive(Debug)]
pub struct XensimMapping {
    conn: Arc<HostConn>,
    id: u32,
    region: Option<Region>,
    writable: bool,
}

impl XensimMapping {
    /// End the mapping's record at the host but leave the memory mapped (see
    /// [`XensimShared::release_keep_mapping`]).
    pub fn release_keep_mapping(mut self) {
        if let Some(region) = self.region.as_mut() {
            region.keep_mapped();
        }
    }
}

impl Drop for XensimMapping {
    fn drop(&mut self) {
        // Unmap first, then tell the host: its notification must come after our last access. A
        // mapping that never got its memory is cancelled, without its notification.
        let op = match self.region.as_mut() {
            Some(region) => {
                region.unmap();
                op::GNT_UNMAP
            }
            None => op::GNT_CANCEL,
        };
        let _ = self.conn.call(&[op, self.id]);
    }
}

// SAFETY: the region is mapped (read-only unless writable was asked) for `len` bytes,
// page-aligned, until `self` is dropped (a mapping is only handed out with its region).
unsafe impl SharedMemory for XensimMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.region
            .as_ref()
            .map_or(NonNull::dangling(), |r| r.ptr())
    }
    fn len(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len())
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

impl GrantShare for XensimGnt {
    type Pages = XensimShared;

    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<XensimShared> {
        if count == 0 || count > MAX_PAGES_PER_CALL {
            return Err(Errno::EINVAL.into());
        }
        let [offset, port] = encode_notify(notify, count * PAGE_SIZE)?;
        let (values, fds) = self.conn.call_with_fds(
            &[
                op::GNT_SHARE,
                u32::from(domid.0),
                count as u32,
                u32::from(writable),
                offset,
                port,
            ],
            &[],
        )?;
        let (&id, refs) = values.split_first().ok_or_else(short_reply)?;
        // From here on dropping `share` ends the grants at the host.
        let mut share = XensimShared {
            conn: Arc::clone(&self.conn),
            id,
            region: None,
            refs: refs.iter().map(|&r| GrantRef(r)).collect(),
        };
        let file = fds.first().ok_or_else(short_reply)?;
        if share.refs.len() != count {
            return Err(short_reply());
        }
        // The sharer's own mapping is always writable: it fills the pages.
        let pages: Vec<(usize, usize)> = (0..count).map(|page| (0, page)).collect();
        share.region = Some(Region::map_files(&pages, |_| Ok(file.as_fd()), true)?);
        Ok(share)
    }
}

impl GrantMap for XensimGnt {
    type Mapping = XensimMapping;

    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<XensimMapping> {
        if refs.is_empty() || refs.len() > MAX_PAGES_PER_CALL {
            return Err(Errno::EINVAL.into());
        }
        let [offset, port] = encode_notify(notify, refs.len() * PAGE_SIZE)?;
        let mut request = vec![
            op::GNT_MAP,
            u32::from(domid.0),
            u32::from(writable),
            offset,
            port,
        ];
        request.extend(refs.iter().map(|r| r.0));
        let (values, files) = self.conn.call_with_fds(&request, &[])?;
        let (&id, placement) = values.split_first().ok_or_else(short_reply)?;
        let mut mapping = XensimMapping {
            conn: Arc::clone(&self.conn),
            id,
            region: None,
            writable,
        };
        if placement.len() != 2 * refs.len() {
            return Err(short_reply());
        }
        let pages: Vec<(usize, usize)> = placement
            .chunks_exact(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect();
        let file_of = |i: usize| files.get(i).map(|f| f.as_fd()).ok_or_else(short_reply);
        mapping.region = Some(Region::map_files(&pages, file_of, writable)?);
        Ok(mapping)
    }
}

/// A toolstack connection to the host (dom0's privilege): domain life and statistics.
#[derive(Debug)]
pub struct HostControl {
    conn: HostConn,
}

impl HostControl {
    /// Connect to the host in `dir` as dom0.
    pub fn connect(dir: &Path) -> io::Result<HostControl> {
        Ok(HostControl {
            conn: HostConn::connect(dir, DomId::DOM0, op::KIND_CONTROL, &[])?,
        })
    }

    /// Create domain `domid` (`EEXIST` if it exists).
    pub fn create_domain(&self, domid: DomId) -> io::Result<()> {
        self.conn
            .call(&[op::DOMAIN_CREATE, u32::from(domid.0)])
            .map(drop)
    }

    /// Destroy domain `domid`: its processes are killed, their handles reclaimed and their unmap
    /// notifications carried out (`ESRCH` if it does not exist).
    pub fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        self.conn
            .call(&[op::DOMAIN_DESTROY, u32::from(domid.0)])
            .map(drop)
    }

    /// Whether domain `domid` exists.
    pub fn domain_exists(&self, domid: DomId) -> io::Result<bool> {
        Ok(self
            .conn
            .call(&[op::DOMAIN_EXISTS, u32::from(domid.0)])?
            .first()
            == Some(&1))
    }

    /// What the host holds now.
    pub fn stats(&self) -> io::Result<Stats> {
        let v = self.conn.call(&[op::STATS])?;
        let [domains, handles, ports, grants, mappings, ..] = v[..] else {
            return Err(short_reply());
        };
        Ok(Stats {
            domains,
            handles,
            ports,
            grants,
            mappings,
        })
    }
}
