//! Grant tables on the cross-process simulated host (`xensim`), and the host itself.
//!
//! The protocol and the connection model are described in [`evtchn::xensim`]: each grant handle is
//! one connection to the host process, and everything the handle holds dies with the connection.
//!
//! - Granted memory is a memfd per [`share_pages`](GrantShare::share_pages) call, created by the
//!   host and passed to the sharer, who maps it `MAP_SHARED`. A grant ref names (file, page).
//! - [`map_grant_refs`](GrantMap::map_grant_refs) receives the files behind the refs and maps them
//!   page by page (`MAP_FIXED`) into one reserved range, so refs from separate shares still form
//!   one contiguous region, as with gntdev. A read-only mapping gets a read-only file description:
//!   it is really `PROT_READ` and cannot be made writable.
//! - Unmap notifications are carried out by the host, never by the process: on an orderly unshare
//!   or unmap, when the handle is closed, or when the process dies (the kernel closes its socket,
//!   even after `SIGKILL`). The byte is cleared with `pwrite` on the memfd (coherent with every
//!   shared mapping) and the event sent from the caller's port. As Linux's gntdev/gntalloc do, a
//!   notify holds its port: if the event-channel handle is closed first (a dying process closes
//!   its descriptors in any order) the port lingers, closed, until the notify has gone out.
//!
//! [`Host`] is the simulated hypervisor that `xensim serve` runs: event channels, grant tables and
//! the list of live domains, one thread per connection.
#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use evtchn::xensim::{self as wire, env_config, op, HostConn};

use crate::{
    DomId, GrantMap, GrantRef, GrantShare, Port, SharedMemory, SharedPages, UnmapNotify, PAGE_SIZE,
};

/// Most grants one simulated domain may have outstanding (Xen's default grant-table size).
const MAX_GRANTS_PER_DOMAIN: u32 = 32 * 512;
/// Most pages one share or map call may name.
const MAX_PAGES_PER_CALL: usize = 4096;
/// The highest event-channel port handed out (Xen's 2-level ABI limit, less one).
const MAX_PORT: u32 = 4095;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn encode_notify(notify: Option<UnmapNotify>, len: usize) -> io::Result<[u32; 2]> {
    let notify = notify.unwrap_or_default();
    let offset = match notify.clear_byte {
        None => op::NO_OFFSET,
        Some(b) if b < len => b as u32,
        Some(_) => return Err(errno(libc::EINVAL)),
    };
    Ok([offset, notify.event.map_or(0, |p| p.0)])
}

fn short_reply() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "short reply from the xensim host",
    )
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

/// An address range this process mapped; unmapped on drop unless released.
#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
    unmap_on_drop: bool,
}

// SAFETY: the region is plain shared memory with no thread affinity; it is only reached through
// raw pointers by the protocol's rules.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` exposes only the pointer value.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        if self.unmap_on_drop {
            // SAFETY: the range was mapped by this module and nothing else unmaps it (the owner
            // cleared `unmap_on_drop` if it gave the range away).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

fn mmap_file(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Region> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a fresh mapping chosen by the kernel; it aliases no Rust object.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Region {
        ptr: NonNull::new(ptr.cast()).ok_or_else(|| errno(libc::ENOMEM))?,
        len,
        unmap_on_drop: true,
    })
}

/// Map `pages` (file index, page in file) from `files` contiguously.
fn map_pages(files: &[OwnedFd], pages: &[(usize, usize)], writable: bool) -> io::Result<Region> {
    let len = pages.len() * PAGE_SIZE;
    // SAFETY: reserving fresh address space chosen by the kernel; it aliases no Rust object.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let region = Region {
        ptr: NonNull::new(base.cast()).ok_or_else(|| errno(libc::ENOMEM))?,
        len,
        unmap_on_drop: true,
    };
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let mut i = 0;
    while i < pages.len() {
        // Coalesce a run of consecutive pages of one file into one mmap.
        let (file, first) = pages[i];
        let mut run = 1;
        while i + run < pages.len() && pages[i + run] == (file, first + run) {
            run += 1;
        }
        let fd = files.get(file).ok_or_else(short_reply)?;
        // SAFETY: the target range [base + i pages, + run pages) lies inside our reservation, which
        // `region` owns; MAP_FIXED replaces only that part of it.
        let ptr = unsafe {
            libc::mmap(
                region.ptr.as_ptr().add(i * PAGE_SIZE).cast(),
                run * PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                (first * PAGE_SIZE) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        i += run;
    }
    Ok(region)
}

/// Pages shared through an [`XensimGnt`]; dropping unmaps them and ends the grants (the host carries
/// out the unmap notification).
#[derive(Debug)]
pub struct XensimShared {
    conn: Arc<HostConn>,
    id: u32,
    region: Region,
    refs: Vec<GrantRef>,
}

impl XensimShared {
    /// End the grants but leave the memory mapped: for a caller (the C `xengntshr_close`) whose
    /// user may already have unmapped the range with plain `munmap`.
    pub fn release_keep_mapping(mut self) {
        self.region.unmap_on_drop = false;
    }
}

impl Drop for XensimShared {
    fn drop(&mut self) {
        // The host forgets the share when the connection closes anyway; nothing to report.
        let _ = self.conn.call(&[op::GNT_UNSHARE, self.id]);
    }
}

// SAFETY: the region is mapped read-write for `len` bytes, page-aligned, until `self` is dropped.
unsafe impl SharedMemory for XensimShared {
    fn as_ptr(&self) -> NonNull<u8> {
        self.region.ptr
    }
    fn len(&self) -> usize {
        self.region.len
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
    region: Region,
}

impl XensimMapping {
    /// End the mapping's record at the host but leave the memory mapped (see
    /// [`XensimShared::release_keep_mapping`]).
    pub fn release_keep_mapping(mut self) {
        self.region.unmap_on_drop = false;
    }
}

impl Drop for XensimMapping {
    fn drop(&mut self) {
        // Unmap first, then tell the host: its notification must come after our last access.
        if self.region.unmap_on_drop {
            // SAFETY: as in `Region::drop`; clearing the flag keeps it from unmapping twice.
            unsafe { libc::munmap(self.region.ptr.as_ptr().cast(), self.region.len) };
            self.region.unmap_on_drop = false;
        }
        let _ = self.conn.call(&[op::GNT_UNMAP, self.id]);
    }
}

// SAFETY: the region is mapped (read-only unless writable was asked) for `len` bytes,
// page-aligned, until `self` is dropped.
unsafe impl SharedMemory for XensimMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.region.ptr
    }
    fn len(&self) -> usize {
        self.region.len
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
            return Err(errno(libc::EINVAL));
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
            region: Region {
                ptr: NonNull::dangling(),
                len: 0,
                unmap_on_drop: false,
            },
            refs: refs.iter().map(|&r| GrantRef(r)).collect(),
        };
        let file = fds.first().ok_or_else(short_reply)?;
        if share.refs.len() != count {
            return Err(short_reply());
        }
        // The sharer's own mapping is always writable: it fills the pages.
        share.region = mmap_file(file.as_fd(), count * PAGE_SIZE, true)?;
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
            return Err(errno(libc::EINVAL));
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
            region: Region {
                ptr: NonNull::dangling(),
                len: 0,
                unmap_on_drop: false,
            },
        };
        if placement.len() != 2 * refs.len() {
            return Err(short_reply());
        }
        let pages: Vec<(usize, usize)> = placement
            .chunks_exact(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect();
        mapping.region = map_pages(&files, &pages, writable)?;
        Ok(mapping)
    }
}

/// Counts of what the host holds, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostStats {
    /// Live domains (dom0 included).
    pub domains: u32,
    /// Open handles (connections), the asking one included.
    pub handles: u32,
    /// Bound event-channel ports.
    pub ports: u32,
    /// Grants offered.
    pub grants: u32,
    /// Grant mappings held.
    pub mappings: u32,
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
    pub fn stats(&self) -> io::Result<HostStats> {
        let v = self.conn.call(&[op::STATS])?;
        if v.len() < 5 {
            return Err(short_reply());
        }
        Ok(HostStats {
            domains: v[0],
            handles: v[1],
            ports: v[2],
            grants: v[3],
            mappings: v[4],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The host.

/// A granted memory file: the read-write description, and a read-only one for read-only maps.
#[derive(Debug)]
struct MemFile {
    rw: File,
    ro: File,
}

impl MemFile {
    fn new(pages: usize) -> io::Result<MemFile> {
        // SAFETY: the name is a NUL-terminated string literal; the result is checked.
        let fd = unsafe { libc::memfd_create(c"xensim-grant".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let rw = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        rw.set_len((pages * PAGE_SIZE) as u64)?;
        // A second open of the same file, read-only: mappings made from it cannot be made writable.
        let ro = File::open(format!("/proc/self/fd/{}", rw.as_raw_fd()))?;
        Ok(MemFile { rw, ro })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    Unbound { remote: DomId },
    Interdomain { remote: DomId, port: Port },
}

#[derive(Debug)]
struct PortEntry {
    /// The handle delivering this port's events; `None` once closed but still held by a notify.
    owner: Option<u64>,
    binding: Binding,
    pending: bool,
    masked: bool,
    /// Unmap notifications that will send on this port.
    holds: u32,
}

#[derive(Debug)]
struct Grant {
    file: Arc<MemFile>,
    page: usize,
    grantee: DomId,
    writable: bool,
}

#[derive(Debug, Default)]
struct Notify {
    clear: Option<(Arc<MemFile>, u64)>,
    event: Option<(DomId, Port)>,
}

#[derive(Debug)]
struct Share {
    conn: u64,
    domid: DomId,
    refs: Vec<GrantRef>,
    notify: Notify,
}

#[derive(Debug)]
struct MapRecord {
    conn: u64,
    notify: Notify,
}

#[derive(Debug)]
struct ConnRecord {
    domid: DomId,
    control: bool,
    /// The connected process (a pidfd, and its id), to kill when its domain is destroyed.
    process: Option<(OwnedFd, libc::pid_t)>,
    sock: Arc<OwnedFd>,
    events: Option<OwnedFd>,
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeSet<DomId>,
    conns: HashMap<u64, ConnRecord>,
    ports: HashMap<(DomId, Port), PortEntry>,
    grants: HashMap<(DomId, GrantRef), Grant>,
    shares: HashMap<u32, Share>,
    maps: HashMap<u32, MapRecord>,
    next_conn: u64,
    next_id: u32,
}

type Reply = Result<(Vec<u32>, Vec<Arc<MemFile>>, bool), i32>;

impl State {
    fn new_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.shares.contains_key(&id) && !self.maps.contains_key(&id) {
                return id;
            }
        }
    }

    /// Mark `domid`'s `port` pending and deliver it unless masked (the Linux driver masks a port
    /// as it delivers it).
    fn raise(&mut self, domid: DomId, port: Port) {
        let Some(entry) = self.ports.get_mut(&(domid, port)) else {
            return;
        };
        let Some(owner) = entry.owner else { return };
        if entry.masked {
            entry.pending = true;
            return;
        }
        entry.masked = true;
        if let Some(events) = self.conns.get(&owner).and_then(|c| c.events.as_ref()) {
            let word = port.0.to_le_bytes();
            // SAFETY: `word` is valid for reads of 4 bytes for the call's duration. A full queue
            // cannot happen (a port is masked until taken), and a vanished reader is being
            // reclaimed: either way there is nobody to tell.
            unsafe {
                libc::send(
                    events.as_raw_fd(),
                    word.as_ptr().cast(),
                    4,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
        }
    }

    /// Send from `domid`'s `port` as the kernel would.
    fn send_from(&mut self, domid: DomId, port: Port) {
        if let Some(Binding::Interdomain { remote, port }) =
            self.ports.get(&(domid, port)).map(|e| e.binding)
        {
            self.raise(remote, port);
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
            Some(entry) if entry.holds > 0 => entry.owner = None,
            Some(_) => self.remove_port(domid, port),
            None => {}
        }
    }

    fn fire(&mut self, notify: Notify) {
        if let Some((file, offset)) = notify.clear {
            // A one-byte write into the page cache: coherent with every MAP_SHARED mapping. It
            // cannot fail for an offset inside the file (checked when the notify was set up).
            let _ = file.rw.write_at(&[0], offset);
        }
        if let Some((domid, port)) = notify.event {
            self.send_from(domid, port);
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
    }

    fn hold_port(&mut self, domid: DomId, raw: u32) -> Result<Option<(DomId, Port)>, i32> {
        if raw == 0 {
            return Ok(None);
        }
        match self.ports.get_mut(&(domid, Port(raw))) {
            Some(entry) if entry.owner.is_some() => {
                entry.holds += 1;
                Ok(Some((domid, Port(raw))))
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn unshare(&mut self, id: u32) {
        if let Some(share) = self.shares.remove(&id) {
            for r in &share.refs {
                self.grants.remove(&(share.domid, *r));
            }
            self.fire(share.notify);
        }
    }

    fn unmap(&mut self, id: u32) {
        if let Some(map) = self.maps.remove(&id) {
            self.fire(map.notify);
        }
    }

    /// Everything a handle held goes, as when its device file is closed.
    fn reclaim(&mut self, conn: u64) -> Option<ConnRecord> {
        let record = self.conns.remove(&conn)?;
        let shares: Vec<u32> = self
            .shares
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in shares {
            self.unshare(id);
        }
        let maps: Vec<u32> = self
            .maps
            .iter()
            .filter(|(_, m)| m.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in maps {
            self.unmap(id);
        }
        let ports: Vec<(DomId, Port)> = self
            .ports
            .iter()
            .filter(|(_, e)| e.owner == Some(conn))
            .map(|(k, _)| *k)
            .collect();
        for (domid, port) in ports {
            self.close_port(domid, port);
        }
        Some(record)
    }

    fn alloc_port(&self, domid: DomId) -> Result<Port, i32> {
        (1..=MAX_PORT)
            .map(Port)
            .find(|p| !self.ports.contains_key(&(domid, *p)))
            .ok_or(libc::ENOSPC)
    }

    fn owned_port(&mut self, conn: u64, domid: DomId, raw: u32) -> Result<&mut PortEntry, i32> {
        match self.ports.get_mut(&(domid, Port(raw))) {
            Some(entry) if entry.owner == Some(conn) => Ok(entry),
            _ => Err(libc::EINVAL),
        }
    }

    fn handle(&mut self, conn: u64, words: &[u32]) -> Reply {
        let domid = self.conns.get(&conn).map(|c| c.domid).ok_or(libc::EBADF)?;
        let arg = |i: usize| words.get(i).copied().ok_or(libc::EINVAL);
        let dom_arg = |i: usize| -> Result<DomId, i32> {
            u16::try_from(arg(i)?)
                .map(DomId)
                .ok()
                .filter(|d| d.is_normal())
                .ok_or(libc::EINVAL)
        };
        let ok = |values: Vec<u32>| Ok((values, Vec::new(), false));
        match arg(0)? {
            op::EV_BIND_UNBOUND => {
                let remote = dom_arg(1)?;
                if !self.domains.contains(&remote) {
                    return Err(libc::ESRCH);
                }
                let port = self.alloc_port(domid)?;
                self.ports.insert(
                    (domid, port),
                    PortEntry {
                        owner: Some(conn),
                        binding: Binding::Unbound { remote },
                        pending: false,
                        masked: false,
                        holds: 0,
                    },
                );
                ok(vec![port.0])
            }
            op::EV_BIND_INTERDOMAIN => {
                let (remote, remote_port) = (dom_arg(1)?, Port(arg(2)?));
                match self.ports.get(&(remote, remote_port)) {
                    Some(e)
                        if e.owner.is_some() && e.binding == Binding::Unbound { remote: domid } => {
                    }
                    _ => return Err(libc::EINVAL),
                }
                let port = self.alloc_port(domid)?;
                self.ports.insert(
                    (domid, port),
                    PortEntry {
                        owner: Some(conn),
                        binding: Binding::Interdomain {
                            remote,
                            port: remote_port,
                        },
                        pending: false,
                        masked: false,
                        holds: 0,
                    },
                );
                if let Some(peer) = self.ports.get_mut(&(remote, remote_port)) {
                    peer.binding = Binding::Interdomain {
                        remote: domid,
                        port,
                    };
                }
                ok(vec![port.0])
            }
            op::EV_NOTIFY => {
                let port = arg(1)?;
                self.owned_port(conn, domid, port)?;
                self.send_from(domid, Port(port));
                ok(vec![])
            }
            op::EV_UNMASK => {
                let port = arg(1)?;
                let entry = self.owned_port(conn, domid, port)?;
                entry.masked = false;
                if std::mem::take(&mut entry.pending) {
                    self.raise(domid, Port(port));
                }
                ok(vec![])
            }
            op::EV_UNBIND => {
                let port = arg(1)?;
                self.owned_port(conn, domid, port)?;
                self.close_port(domid, Port(port));
                ok(vec![])
            }
            op::GNT_SHARE => {
                let grantee = dom_arg(1)?;
                let count = arg(2)? as usize;
                let writable = arg(3)? != 0;
                let (offset, port) = (arg(4)?, arg(5)?);
                if count == 0 || count > MAX_PAGES_PER_CALL {
                    return Err(libc::EINVAL);
                }
                if offset != op::NO_OFFSET && offset as usize >= count * PAGE_SIZE {
                    return Err(libc::EINVAL);
                }
                let in_use = self.grants.keys().filter(|(d, _)| *d == domid).count();
                if in_use + count > MAX_GRANTS_PER_DOMAIN as usize - 1 {
                    return Err(libc::ENOSPC);
                }
                let file = Arc::new(
                    MemFile::new(count).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?,
                );
                let event = self.hold_port(domid, port)?;
                let mut refs = Vec::with_capacity(count);
                // Grant 0 is reserved: hand out the lowest free refs from 1, as gntalloc does.
                let mut candidate = 1u32;
                for page in 0..count {
                    while self.grants.contains_key(&(domid, GrantRef(candidate))) {
                        candidate += 1;
                    }
                    self.grants.insert(
                        (domid, GrantRef(candidate)),
                        Grant {
                            file: Arc::clone(&file),
                            page,
                            grantee,
                            writable,
                        },
                    );
                    refs.push(GrantRef(candidate));
                }
                let id = self.new_id();
                let clear =
                    (offset != op::NO_OFFSET).then(|| (Arc::clone(&file), u64::from(offset)));
                let mut values = vec![id];
                values.extend(refs.iter().map(|r| r.0));
                self.shares.insert(
                    id,
                    Share {
                        conn,
                        domid,
                        refs,
                        notify: Notify { clear, event },
                    },
                );
                Ok((values, vec![file], true))
            }
            op::GNT_UNSHARE => {
                let id = arg(1)?;
                match self.shares.get(&id) {
                    Some(s) if s.conn == conn => self.unshare(id),
                    _ => return Err(libc::EINVAL),
                }
                ok(vec![])
            }
            op::GNT_MAP => {
                let granter = dom_arg(1)?;
                let writable = arg(2)? != 0;
                let (offset, port) = (arg(3)?, arg(4)?);
                let refs = words.get(5..).unwrap_or_default();
                if refs.is_empty() || refs.len() > MAX_PAGES_PER_CALL {
                    return Err(libc::EINVAL);
                }
                if offset != op::NO_OFFSET && offset as usize >= refs.len() * PAGE_SIZE {
                    return Err(libc::EINVAL);
                }
                let mut files: Vec<Arc<MemFile>> = Vec::new();
                let mut values = vec![0];
                let mut clear = None;
                for (i, raw) in refs.iter().enumerate() {
                    let grant = self
                        .grants
                        .get(&(granter, GrantRef(*raw)))
                        .filter(|g| g.grantee == domid)
                        .ok_or(libc::ENOENT)?;
                    if writable && !grant.writable {
                        return Err(libc::EACCES);
                    }
                    let index = match files.iter().position(|f| Arc::ptr_eq(f, &grant.file)) {
                        Some(index) => index,
                        None => {
                            files.push(Arc::clone(&grant.file));
                            files.len() - 1
                        }
                    };
                    if files.len() > wire::MAX_FDS {
                        return Err(libc::E2BIG);
                    }
                    values.extend([index as u32, grant.page as u32]);
                    if offset != op::NO_OFFSET && offset as usize / PAGE_SIZE == i {
                        let in_file = grant.page * PAGE_SIZE + offset as usize % PAGE_SIZE;
                        clear = Some((Arc::clone(&grant.file), in_file as u64));
                    }
                }
                let event = self.hold_port(domid, port)?;
                let id = self.new_id();
                values[0] = id;
                self.maps.insert(
                    id,
                    MapRecord {
                        conn,
                        notify: Notify { clear, event },
                    },
                );
                Ok((values, files, writable))
            }
            op::GNT_UNMAP => {
                let id = arg(1)?;
                match self.maps.get(&id) {
                    Some(m) if m.conn == conn => self.unmap(id),
                    _ => return Err(libc::EINVAL),
                }
                ok(vec![])
            }
            op::STATS => {
                let held = self.maps.len();
                ok(vec![
                    self.domains.len() as u32,
                    self.conns.len() as u32,
                    self.ports.len() as u32,
                    self.grants.len() as u32,
                    held as u32,
                ])
            }
            op::DOMAIN_EXISTS => {
                let target = dom_arg(1)?;
                ok(vec![u32::from(self.domains.contains(&target))])
            }
            op::DOMAIN_CREATE | op::DOMAIN_DESTROY => Err(libc::EINVAL), // handled by the host
            _ => Err(libc::ENOSYS),
        }
    }
}

struct HostInner {
    dir: PathBuf,
    listener: OwnedFd,
    state: Mutex<State>,
    stopping: AtomicBool,
}

/// The simulated hypervisor: event channels, grant tables and domain life for the processes of
/// every simulated domain, served on `<dir>/xen.sock`. Dom0 exists from the start.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Listen on `<dir>/xen.sock` (creating `dir`). Fails with `AddrInUse` if a live host already
    /// serves the directory; a stale socket left by a dead host is replaced.
    pub fn bind(dir: &Path) -> io::Result<Host> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(wire::HOST_SOCKET);
        if wire::seqpacket_connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a simulated host already serves {}", dir.display()),
            ));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = wire::seqpacket_listen(&path)?;
        let mut state = State::default();
        state.domains.insert(DomId::DOM0);
        Ok(Host {
            inner: Arc::new(HostInner {
                dir: dir.to_path_buf(),
                listener,
                state: Mutex::new(state),
                stopping: AtomicBool::new(false),
            }),
        })
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Accept and serve connections until [`stop`](Self::stop); each connection gets a thread.
    pub fn run(&self) {
        loop {
            let sock = match wire::seqpacket_accept(self.inner.listener.as_fd()) {
                Ok(sock) => sock,
                // ORDERING: SeqCst pairs with the store in `stop`, before the listener shutdown
                // that made accept fail.
                Err(_) if self.inner.stopping.load(Ordering::SeqCst) => return,
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(_) => continue,
            };
            let host = self.clone();
            let spawned = std::thread::Builder::new()
                .name("xensim-conn".into())
                .spawn(move || host.serve_conn(Arc::new(sock)));
            // Without a thread the connection is dropped (closed): the client sees the host gone.
            drop(spawned);
        }
    }

    /// Stop accepting, hang up every handle and remove the socket.
    pub fn stop(&self) {
        // ORDERING: SeqCst pairs with the load in `run`.
        self.inner.stopping.store(true, Ordering::SeqCst);
        // SAFETY: plain syscalls on descriptors we own; shutting down a listening socket makes a
        // blocked accept return.
        unsafe { libc::shutdown(self.inner.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let state = lock(&self.inner.state);
        for c in state.conns.values() {
            // SAFETY: as above.
            unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RDWR) };
        }
        drop(state);
        let _ = std::fs::remove_file(self.inner.dir.join(wire::HOST_SOCKET));
    }

    /// What the host holds now.
    pub fn stats(&self) -> HostStats {
        let state = lock(&self.inner.state);
        HostStats {
            domains: state.domains.len() as u32,
            handles: state.conns.len() as u32,
            ports: state.ports.len() as u32,
            grants: state.grants.len() as u32,
            mappings: state.maps.len() as u32,
        }
    }

    /// Create domain `domid`.
    pub fn create_domain(&self, domid: DomId) -> io::Result<()> {
        if !domid.is_normal() {
            return Err(errno(libc::EINVAL));
        }
        if lock(&self.inner.state).domains.insert(domid) {
            Ok(())
        } else {
            Err(errno(libc::EEXIST))
        }
    }

    /// Destroy domain `domid`: reclaim every handle of its processes (their unmap notifications
    /// fire), hang them up and kill the processes, as the domain's memory and vCPUs vanish.
    pub fn destroy_domain(&self, domid: DomId) -> io::Result<()> {
        if domid == DomId::DOM0 {
            return Err(errno(libc::EPERM));
        }
        let mut state = lock(&self.inner.state);
        if !state.domains.remove(&domid) {
            return Err(errno(libc::ESRCH));
        }
        let conns: Vec<u64> = state
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        let mut processes = Vec::new();
        for id in conns {
            if let Some(record) = state.reclaim(id) {
                // SAFETY: a plain syscall on a descriptor the record owns.
                unsafe { libc::shutdown(record.sock.as_raw_fd(), libc::SHUT_RDWR) };
                processes.extend(record.process);
            }
        }
        drop(state);
        // Through pidfds taken when each process connected: a process that has exited since is
        // not signalled, and its id, if reused, names nobody here.
        let me = std::process::id() as libc::pid_t;
        let mut outcome = Ok(());
        for (pidfd, _) in processes.iter().filter(|(_, pid)| *pid > 1 && *pid != me) {
            // Every process is tried; the first failure (say EPERM) is the answer.
            let killed = wire::kill_process(pidfd.as_fd());
            if outcome.is_ok() {
                outcome = killed;
            }
        }
        outcome
    }

    fn serve_conn(&self, sock: Arc<OwnedFd>) {
        let Ok(Some((hello, mut fds))) = wire::recv_msg(sock.as_fd()) else {
            return;
        };
        let conn = match self.register(&sock, &hello, &mut fds) {
            Ok(conn) => conn,
            Err(code) => {
                let _ = wire::send_msg(sock.as_fd(), &[code as u32], &[]);
                return;
            }
        };
        if wire::send_msg(sock.as_fd(), &[0], &[]).is_ok() {
            // One receive buffer for the connection's life: a message costs no allocation.
            let mut buf = wire::MsgBuf::new();
            loop {
                let words = match wire::recv_msg_with(sock.as_fd(), &mut buf) {
                    // Descriptors sent with requests are not expected; dropping closes them.
                    Ok(Some((words, _fds))) => words,
                    Ok(None) | Err(_) => break,
                };
                let reply = self.dispatch(conn, words);
                if !words.first().copied().is_some_and(op::has_reply) {
                    // One-way (notify, unmask): the client checked the port; nothing to say.
                    continue;
                }
                let sent = match reply {
                    Ok((mut values, files, writable)) => {
                        values.insert(0, 0);
                        let fds: Vec<BorrowedFd<'_>> = files
                            .iter()
                            .map(|f| if writable { f.rw.as_fd() } else { f.ro.as_fd() })
                            .collect();
                        wire::send_msg(sock.as_fd(), &values, &fds)
                    }
                    Err(code) => wire::send_msg(sock.as_fd(), &[code as u32], &[]),
                };
                if sent.is_err() {
                    break;
                }
            }
        }
        // The handle is gone (closed, or its process died): reclaim what it held.
        lock(&self.inner.state).reclaim(conn);
    }

    fn register(
        &self,
        sock: &Arc<OwnedFd>,
        hello: &[u32],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<u64, i32> {
        let (kind, raw) = match hello {
            [op::HELLO, kind, domid] => (*kind, *domid),
            _ => return Err(libc::EPROTO),
        };
        let domid = u16::try_from(raw).map(DomId).map_err(|_| libc::EINVAL)?;
        let events = match kind {
            op::KIND_EVENTS => Some(fds.pop().ok_or(libc::EINVAL)?),
            op::KIND_SHARE | op::KIND_MAP => None,
            op::KIND_CONTROL if domid == DomId::DOM0 => None,
            op::KIND_CONTROL => return Err(libc::EPERM),
            _ => return Err(libc::EINVAL),
        };
        // Gone already (or unknowable): nothing to kill later, and nothing wrong with the handle.
        let process = wire::peer_process(sock.as_fd()).ok();
        let mut state = lock(&self.inner.state);
        if !state.domains.contains(&domid) {
            return Err(libc::ESRCH);
        }
        state.next_conn += 1;
        let id = state.next_conn;
        state.conns.insert(
            id,
            ConnRecord {
                domid,
                control: kind == op::KIND_CONTROL,
                process,
                sock: Arc::clone(sock),
                events,
            },
        );
        Ok(id)
    }

    fn dispatch(&self, conn: u64, words: &[u32]) -> Reply {
        match words {
            [op::DOMAIN_CREATE, raw] | [op::DOMAIN_DESTROY, raw] => {
                let control = lock(&self.inner.state)
                    .conns
                    .get(&conn)
                    .is_some_and(|c| c.control);
                if !control {
                    return Err(libc::EPERM);
                }
                let domid = u16::try_from(*raw).map(DomId).map_err(|_| libc::EINVAL)?;
                let outcome = if words[0] == op::DOMAIN_CREATE {
                    self.create_domain(domid)
                } else {
                    self.destroy_domain(domid)
                };
                outcome
                    .map(|()| (Vec::new(), Vec::new(), false))
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
            }
            _ => lock(&self.inner.state).handle(conn, words),
        }
    }
}
