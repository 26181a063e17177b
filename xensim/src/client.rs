//! The cross-process front-end's client side: device handles of a simulated domain, each one
//! connection to the host (`xensim serve`; the crate's private `wire` module is the protocol).
//!
//! [`XensimEvtchn`] plays `/dev/xen/evtchn`, [`XensimGnt`] gntalloc (sharing) or gntdev
//! (mapping), [`HostControl`] the toolstack's privileged interface. Granted memory arrives as
//! memfds the host passes over the socket; a mapping is stitched from them page by page, and a
//! read-only one is made from a read-only description of the memfd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use evtchn::EventChannel;
use gnttab::{GrantMap, GrantShare, SharedMemory, SharedPages, UnmapNotify};
use nix::errno::Errno;
use xen_types::{DomId, GrantRef, Port, PAGE_SIZE};

use crate::lock;
use crate::memory::Region;
use crate::model::{HandleKind, Stats, MAX_PAGES_PER_CALL};
use crate::wire::{self, env_config, FilePage, Hello, Notify, Reply, Request};

fn host_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the simulated Xen host (xensim serve) has gone",
    )
}

fn bad_reply(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed reply from the xensim host: {what}"),
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
pub(crate) struct HostConn {
    sock: OwnedFd,
    /// Serialises request/reply pairs from several threads.
    calls: Mutex<()>,
    domid: DomId,
}

impl HostConn {
    /// Connect to the host in `dir` as `domid`, opening a handle of `kind` (an event-channel
    /// handle gives the host the other end of its event socket, `events`).
    fn connect(
        dir: &Path,
        domid: DomId,
        kind: HandleKind,
        events: Option<BorrowedFd<'_>>,
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
        let hello = Hello {
            domid,
            kind,
            events,
        };
        let greeted = wire::send_hello(conn.sock.as_fd(), &hello)
            .map_err(gone_if_hung_up)
            .and_then(|()| conn.answer(wire::ReplyKind::Done));
        match greeted {
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
    fn domid(&self) -> DomId {
        self.domid
    }

    /// Send a request that has no reply (notify, unmask), allocating nothing.
    fn send_one_way(&self, request: &Request) -> io::Result<()> {
        debug_assert!(request.reply_kind().is_none());
        wire::send_one_way(self.sock.as_fd(), request).map_err(gone_if_hung_up)
    }

    /// Send a request and wait for its reply; an errno answer is the error.
    fn call(&self, request: &Request) -> io::Result<Reply<OwnedFd>> {
        let kind = request.reply_kind().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a one-way request has no reply",
            )
        })?;
        let _serial = lock(&self.calls);
        wire::send_request(self.sock.as_fd(), request).map_err(gone_if_hung_up)?;
        self.answer(kind)
    }

    /// Receive and decode the answer to a request whose reply is of `kind`.
    fn answer(&self, kind: wire::ReplyKind) -> io::Result<Reply<OwnedFd>> {
        let mut buf = wire::MsgBuf::new();
        let msg = wire::recv(self.sock.as_fd(), &mut buf)?.ok_or_else(host_gone)?;
        match wire::decode_answer(kind, msg.bytes, msg.truncated, msg.fds) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(code)) => Err(code.into()),
            Err(malformed) => Err(bad_reply(malformed)),
        }
    }
}

impl AsFd for HostConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// The error for a reply of another kind than the request's: the decoder never makes one.
fn mismatched() -> io::Error {
    bad_reply("a reply of another kind")
}

fn port(reply: Reply<OwnedFd>) -> io::Result<Port> {
    match reply {
        Reply::Port(port) => Ok(port),
        _ => Err(mismatched()),
    }
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
        let conn = HostConn::connect(dir, domid, HandleKind::Events, Some(theirs.as_fd()))?;
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
        wire::recv_event(self.events.as_fd(), block)
    }
}

impl EventChannel for XensimEvtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&Request::BindUnbound { remote })
                .and_then(port),
        )
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        self.remember(
            self.conn
                .call(&Request::BindInterdomain {
                    remote,
                    remote_port,
                })
                .and_then(port),
        )
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.send_one_way(&Request::Notify(port))
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        self.take_event(false)
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        // The Linux driver ignores an unmask of a port the handle has not bound.
        match self.bound(port) {
            Ok(port) => self.conn.send_one_way(&Request::Unmask(port)),
            Err(_) => Ok(()),
        }
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        let port = self.bound(port)?;
        self.conn.call(&Request::Unbind(port))?;
        lock(&self.bound).retain(|&p| p != port);
        Ok(())
    }
}

impl AsFd for XensimEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// The wire's notification for a region of `len` bytes: `EINVAL` for a byte outside it.
fn wire_notify(notify: Option<UnmapNotify>, len: usize) -> io::Result<Notify> {
    let notify = notify.unwrap_or_default();
    let clear_byte = match notify.clear_byte {
        None => None,
        Some(b) if b < len => Some(u32::try_from(b).map_err(|_| Errno::EINVAL)?),
        Some(_) => return Err(Errno::EINVAL.into()),
    };
    Ok(Notify {
        clear_byte,
        event: notify.event,
    })
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
            conn: Arc::new(HostConn::connect(dir, domid, HandleKind::Share, None)?),
        })
    }

    /// Open a grant-mapping handle (gntdev) as `domid` on the host in `dir`.
    pub fn open_mapper(dir: &Path, domid: DomId) -> io::Result<XensimGnt> {
        Ok(XensimGnt {
            conn: Arc::new(HostConn::connect(dir, domid, HandleKind::Map, None)?),
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
        let request = if self.region.is_some() {
            Request::Unshare(self.id)
        } else {
            Request::Cancel(self.id)
        };
        let _ = self.conn.call(&request);
    }
}

#[allow(unsafe_code)] // The trait's contract is the implementor's promise.
                      // SAFETY: the region is mapped read-write for `len` bytes, page-aligned, until `self` is dropped
                      // (a share is only handed out with its region).
unsafe impl SharedMemory for XensimShared {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        self.region
            .as_ref()
            .map_or(NonNull::dangling(), |r| r.ptr())
    }
    #[inline]
    fn len(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len())
    }
    #[inline]
    fn is_writable(&self) -> bool {
        // The sharer's own mapping: it fills the pages, whatever the grantee may do.
        true
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
        let request = match self.region.as_mut() {
            Some(region) => {
                region.unmap();
                Request::Unmap(self.id)
            }
            None => Request::Cancel(self.id),
        };
        let _ = self.conn.call(&request);
    }
}

#[allow(unsafe_code)] // The trait's contract is the implementor's promise.
                      // SAFETY: the region is mapped (read-only unless writable was asked) for `len` bytes,
                      // page-aligned, until `self` is dropped (a mapping is only handed out with its region).
unsafe impl SharedMemory for XensimMapping {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        self.region
            .as_ref()
            .map_or(NonNull::dangling(), |r| r.ptr())
    }
    #[inline]
    fn len(&self) -> usize {
        self.region.as_ref().map_or(0, |r| r.len())
    }
    #[inline]
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
        let request = Request::Share {
            grantee: domid,
            pages: count as u32,
            writable,
            notify: wire_notify(notify, count * PAGE_SIZE)?,
        };
        let Reply::Shared { id, refs, memory } = self.conn.call(&request)? else {
            return Err(mismatched());
        };
        // From here on dropping `share` ends the grants at the host.
        let mut share = XensimShared {
            conn: Arc::clone(&self.conn),
            id,
            region: None,
            refs,
        };
        if share.refs.len() != count {
            return Err(bad_reply(format!(
                "{} refs for {count} pages",
                share.refs.len()
            )));
        }
        // The sharer's own mapping is always writable: it fills the pages.
        let pages: Vec<(usize, usize)> = (0..count).map(|page| (0, page)).collect();
        share.region = Some(Region::map_files(&pages, |_| Ok(memory.as_fd()), true)?);
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
        let request = Request::Map {
            granter: domid,
            writable,
            notify: wire_notify(notify, refs.len() * PAGE_SIZE)?,
            refs: refs.to_vec(),
        };
        let Reply::Mapped { id, pages, files } = self.conn.call(&request)? else {
            return Err(mismatched());
        };
        let mut mapping = XensimMapping {
            conn: Arc::clone(&self.conn),
            id,
            region: None,
            writable,
        };
        if pages.len() != refs.len() {
            return Err(bad_reply(format!(
                "{} pages for {} refs",
                pages.len(),
                refs.len()
            )));
        }
        let pages: Vec<(usize, usize)> = pages
            .iter()
            .map(|&FilePage { file, page }| (file as usize, page as usize))
            .collect();
        // The decoder checked every file index against the files passed.
        let file_of = |i: usize| {
            files
                .get(i)
                .map(|f| f.as_fd())
                .ok_or_else(|| bad_reply(format!("a page in file {i}, never passed")))
        };
        mapping.region = Some(Region::map_files(&pages, file_of, writable)?);
        Ok(mapping)
    }

    fn set_unmap_notify(&self, mapping: &XensimMapping, notify: UnmapNotify) -> io::Result<()> {
        let len = mapping.region.as_ref().map_or(0, |r| r.len());
        let request = Request::SetMapNotify {
            id: mapping.id,
            notify: wire_notify(Some(notify), len)?,
        };
        match mapping.conn.call(&request)? {
            Reply::Done => Ok(()),
            _ => Err(mismatched()),
        }
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
            conn: HostConn::connect(dir, DomId::DOM0, HandleKind::Control, None)?,
        })
    }

    /// Create domain `domid` (`EEXIST` if it exists).
    pub fn create_domain(&self, domid: DomId) -> io::Result<()> {
        self.conn.call(&Request::CreateDomain(domid)).map(drop)
    }

    /// Destroy domain `domid`: its processes are killed, their handles reclaimed and their unmap
    /// notifications carried out (`ESRCH` if it does not exist).
    pub fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        self.conn.call(&Request::DestroyDomain(domid)).map(drop)
    }

    /// Whether domain `domid` exists.
    pub fn domain_exists(&self, domid: DomId) -> io::Result<bool> {
        match self.conn.call(&Request::DomainExists(domid))? {
            Reply::Exists(exists) => Ok(exists),
            _ => Err(mismatched()),
        }
    }

    /// What the host holds now.
    pub fn stats(&self) -> io::Result<Stats> {
        match self.conn.call(&Request::Stats)? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(mismatched()),
        }
    }
}
