//! The platform: the process's own Xen libraries, through their C APIs, exactly the ones Debian's
//! libxenvchan links: `libxenevtchn.so.1` (event channels), `libxengnttab.so.1` (grant sharing and
//! mapping) and `libxenstore.so.4` (the key store). On real Xen those are Debian's; under
//! `xensim run` the stand-in libraries come first on the library path; the drop-in makes no
//! choice of its own. So `ctrl->event` is a real `xenevtchn_handle *` a program may pass to
//! `xenevtchn_notify`, and `fd_for_select` is `xenevtchn_fd(event)`.
//!
//! Each handle type owns its C handle and closes it on drop; a grant or a mapping holds its
//! handle (an `Arc`) and releases itself on drop. Every call that fails returns the `errno` the C
//! library set, read at once. This module, `ctrl` and `exports` (the C entry points) are the only places with `unsafe`.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vchan::platform::{EventChannels, GrantMap, GrantShare, GrantedPages, Platform};
use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, GrantRef, Port, UnmapNotify, PAGE_SIZE};
use xenstore::{Access, Errno, Perm, TxId, WatchEvent, XenStore, XenstoreError};

/// `xenevtchn_handle` (opaque).
#[repr(C)]
pub struct XenevtchnHandle {
    _opaque: [u8; 0],
}

/// `xengntshr_handle` (opaque).
#[repr(C)]
pub struct XengntshrHandle {
    _opaque: [u8; 0],
}

/// `xengnttab_handle` (opaque).
#[repr(C)]
pub struct XengnttabHandle {
    _opaque: [u8; 0],
}

/// `struct xs_handle` (opaque).
#[repr(C)]
struct XsHandle {
    _opaque: [u8; 0],
}

/// `struct xs_permissions` (`<xenstore_lib.h>`).
#[repr(C)]
struct XsPermissions {
    id: c_uint,
    perms: c_uint,
}

const XS_PERM_NONE: c_uint = 0x00;
const XS_PERM_READ: c_uint = 0x01;
const XS_PERM_WRITE: c_uint = 0x02;

// Signatures from Debian 12's `<xenevtchn.h>`, `<xengnttab.h>` and `<xenstore.h>`; build.rs links
// the libraries by soname.
extern "C" {
    fn xenevtchn_open(logger: *mut c_void, open_flags: c_uint) -> *mut XenevtchnHandle;
    fn xenevtchn_close(xce: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_fd(xce: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_notify(xce: *mut XenevtchnHandle, port: u32) -> c_int;
    fn xenevtchn_bind_unbound_port(xce: *mut XenevtchnHandle, domid: u32) -> c_int;
    fn xenevtchn_bind_interdomain(xce: *mut XenevtchnHandle, domid: u32, remote: u32) -> c_int;
    fn xenevtchn_unbind(xce: *mut XenevtchnHandle, port: u32) -> c_int;
    fn xenevtchn_pending(xce: *mut XenevtchnHandle) -> c_int;
    fn xenevtchn_unmask(xce: *mut XenevtchnHandle, port: u32) -> c_int;

    fn xengntshr_open(logger: *mut c_void, open_flags: c_uint) -> *mut XengntshrHandle;
    fn xengntshr_close(xgs: *mut XengntshrHandle) -> c_int;
    fn xengntshr_fd(xgs: *mut XengntshrHandle) -> c_int;
    fn xengntshr_share_pages(
        xgs: *mut XengntshrHandle,
        domid: u32,
        count: c_int,
        refs: *mut u32,
        writable: c_int,
    ) -> *mut c_void;
    fn xengntshr_share_page_notify(
        xgs: *mut XengntshrHandle,
        domid: u32,
        gref: *mut u32,
        writable: c_int,
        notify_offset: u32,
        notify_port: u32,
    ) -> *mut c_void;
    fn xengntshr_unshare(xgs: *mut XengntshrHandle, start: *mut c_void, count: u32) -> c_int;

    fn xengnttab_open(logger: *mut c_void, open_flags: c_uint) -> *mut XengnttabHandle;
    fn xengnttab_close(xgt: *mut XengnttabHandle) -> c_int;
    fn xengnttab_fd(xgt: *mut XengnttabHandle) -> c_int;
    fn xengnttab_map_domain_grant_refs(
        xgt: *mut XengnttabHandle,
        count: u32,
        domid: u32,
        refs: *mut u32,
        prot: c_int,
    ) -> *mut c_void;
    fn xengnttab_map_grant_ref_notify(
        xgt: *mut XengnttabHandle,
        domid: u32,
        gref: u32,
        prot: c_int,
        notify_offset: u32,
        notify_port: u32,
    ) -> *mut c_void;
    fn xengnttab_unmap(xgt: *mut XengnttabHandle, start: *mut c_void, count: u32) -> c_int;

    fn xs_open(flags: c_ulong) -> *mut XsHandle;
    fn xs_close(xsh: *mut XsHandle);
    fn xs_read(xsh: *mut XsHandle, t: u32, path: *const c_char, len: *mut c_uint) -> *mut c_void;
    fn xs_write(
        xsh: *mut XsHandle,
        t: u32,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    fn xs_mkdir(xsh: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    fn xs_rm(xsh: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    fn xs_directory(
        xsh: *mut XsHandle,
        t: u32,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    fn xs_set_permissions(
        xsh: *mut XsHandle,
        t: u32,
        path: *const c_char,
        perms: *mut XsPermissions,
        num_perms: c_uint,
    ) -> bool;
    fn xs_get_permissions(
        xsh: *mut XsHandle,
        t: u32,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut XsPermissions;
    fn xs_get_domain_path(xsh: *mut XsHandle, domid: c_uint) -> *mut c_char;
    fn xs_transaction_start(xsh: *mut XsHandle) -> u32;
    fn xs_transaction_end(xsh: *mut XsHandle, t: u32, abort: bool) -> bool;
}

/// "No notify" for the unmap-notification arguments (`-1` in C).
const NO_NOTIFY: u32 = u32::MAX;

/// The `errno` of the C call that just failed.
fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// A C result of `0` or `-1`/`errno`.
fn check(rc: c_int) -> io::Result<()> {
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// Mark `fd` close-on-exec. libxenevtchn and gntdev's handle open theirs with `O_CLOEXEC`
/// already; libxengnttab's gntalloc handle does not (libxenvchan/ABI.md §6), so a program that
/// forks and execs would leak it into the child.
fn set_cloexec(fd: c_int) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is the open descriptor of a handle the caller owns and keeps open for this
    // call; it is borrowed for two fcntl calls only.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Whether a blocking call that a signal handler interrupted should carry on waiting: the C
/// library waits in `read(2)` on the event fd, which the kernel restarts after a handler
/// installed with `SA_RESTART` and fails with `EINTR` otherwise. The drop-in waits in `poll(2)`
/// (to look at the peer's domain now and then), which is never restarted, and cannot tell which
/// signal came; so it carries on when every caught signal's handler has `SA_RESTART`, as
/// `read(2)` would have for any of them, and fails with `EINTR` when some handler lacks it.
///
/// Fault signals (`SIGSEGV`, `SIGBUS`, `SIGFPE`, `SIGILL`, `SIGTRAP`, `SIGSYS`) are left out:
/// their handlers run for the thread's own faulting instruction, never while it waits (and
/// crash reporters, or Rust's own stack-overflow guard, install them without `SA_RESTART`).
pub fn handlers_restart() -> bool {
    const UNCATCHABLE_OR_FAULTS: [c_int; 8] = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGSYS,
    ];
    for signal in 1..=libc::SIGRTMAX() {
        if UNCATCHABLE_OR_FAULTS.contains(&signal) {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value of the plain C struct, and with a
        // null new action `sigaction(2)` only reports the current one into `old`.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `old` is a valid place for the answer.
        if unsafe { libc::sigaction(signal, ptr::null(), &mut old) } != 0 {
            continue;
        }
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught && old.sa_flags & libc::SA_RESTART == 0 {
            return false;
        }
    }
    true
}

/// A copy of `path` for C, or `EINVAL` if it holds a NUL.
fn c_path(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn domid(domid: DomId) -> u32 {
    u32::from(domid.0)
}

// ----- event channels -----------------------------------------------------------------------

/// An event-channel handle of the process's libxenevtchn; closed on drop (which unbinds its
/// ports).
pub struct Events {
    handle: NonNull<XenevtchnHandle>,
}

// SAFETY: libxenevtchn's calls on one handle may come from any thread, at once (each is one
// ioctl or read on its fd); the driver lets one thread at a time take events.
unsafe impl Send for Events {}
// SAFETY: as for `Send`.
unsafe impl Sync for Events {}

impl Events {
    fn open(logger: *mut c_void) -> io::Result<Events> {
        // SAFETY: `logger` is what the caller passed to libxenvchan (NULL or its logger, which
        // libxenvchan passes on in the same way); flags 0 ask for nothing unusual.
        let raw = unsafe { xenevtchn_open(logger, 0) };
        let handle = NonNull::new(raw).ok_or_else(last_error)?;
        let events = Events { handle };
        set_cloexec(events.fd())?;
        Ok(events)
    }

    /// The C handle, for `ctrl->event` (programs notify through it).
    pub fn as_ptr(&self) -> *mut XenevtchnHandle {
        self.handle.as_ptr()
    }

    /// The handle's pollable fd (`xenevtchn_fd`).
    pub fn fd(&self) -> c_int {
        // SAFETY: the handle is open (it is closed only on drop).
        unsafe { xenevtchn_fd(self.handle.as_ptr()) }
    }

    /// Take one delivered event, waiting for one if none is pending (`xenevtchn_pending`, a
    /// blocking read of the fd): its port.
    pub fn pending(&self) -> io::Result<u32> {
        // SAFETY: the handle is open.
        let rc = unsafe { xenevtchn_pending(self.handle.as_ptr()) };
        u32::try_from(rc).map_err(|_| last_error())
    }

    /// Wait up to `timeout` for the fd to become readable (an event is pending): whether it did.
    /// A signal handler's interruption is `EINTR`.
    pub fn poll_readable(&self, timeout: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        // Round up, so a sub-millisecond remainder does not spin.
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        // SAFETY: the fd belongs to this open handle and stays open for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        Ok(poll(&mut fds, timeout)? > 0)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xenevtchn_open` and is closed once, here.
        unsafe { xenevtchn_close(self.handle.as_ptr()) };
    }
}

impl EventChannels for Events {
    type Error = io::Error;

    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        // SAFETY: the handle is open.
        let rc = unsafe { xenevtchn_bind_unbound_port(self.handle.as_ptr(), domid(remote)) };
        u32::try_from(rc).map(Port).map_err(|_| last_error())
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        // SAFETY: the handle is open.
        let rc = unsafe {
            xenevtchn_bind_interdomain(self.handle.as_ptr(), domid(remote), remote_port.0)
        };
        u32::try_from(rc).map(Port).map_err(|_| last_error())
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        // SAFETY: the handle is open.
        check(unsafe { xenevtchn_notify(self.handle.as_ptr(), port.0) })
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        // SAFETY: the handle is open.
        check(unsafe { xenevtchn_unmask(self.handle.as_ptr(), port.0) })
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        // SAFETY: the handle is open.
        check(unsafe { xenevtchn_unbind(self.handle.as_ptr(), port.0) })
    }
}

// ----- grant sharing ------------------------------------------------------------------------

struct ShareHandle(NonNull<XengntshrHandle>);

// SAFETY: a libxengnttab handle may be used from any thread, and from several at once: each
// call is an ioctl, an mmap or a munmap on the handle's fd (Linux), or a request on its own
// connection (xensim's stand-in, which locks its state); the handle itself is never written.
unsafe impl Send for ShareHandle {}
// SAFETY: as above.
unsafe impl Sync for ShareHandle {}

impl Drop for ShareHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xengntshr_open`; every share holds this value, so none
        // is left when it is closed, once, here.
        unsafe { xengntshr_close(self.0.as_ptr()) };
    }
}

/// A grant-sharing handle of the process's libxengnttab (gntalloc on Linux).
pub struct Sharer(Arc<ShareHandle>);

impl Sharer {
    fn open(logger: *mut c_void) -> io::Result<Sharer> {
        // SAFETY: as for `xenevtchn_open`.
        let raw = unsafe { xengntshr_open(logger, 0) };
        let handle = ShareHandle(NonNull::new(raw).ok_or_else(last_error)?);
        // SAFETY: the handle is open.
        set_cloexec(unsafe { xengntshr_fd(handle.0.as_ptr()) })?;
        Ok(Sharer(Arc::new(handle)))
    }
}

/// Pages this domain shares (the server's control page and ring pages); unshared on drop.
pub struct Granted {
    handle: Arc<ShareHandle>,
    base: NonNull<u8>,
    count: usize,
    refs: Vec<GrantRef>,
}

// SAFETY: the pages are only reached through `SharedRegion` views (atomics and raw copies,
// never references); the handle is an `Arc<ShareHandle>`, itself `Send + Sync`.
unsafe impl Send for Granted {}
// SAFETY: as for `Send`.
unsafe impl Sync for Granted {}

impl Granted {
    /// The sharing handle, for `ctrl->gntshr`.
    pub fn handle_ptr(&self) -> *mut c_void {
        self.handle.0.as_ptr().cast()
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        // SAFETY: `base` and `count` are what `xengntshr_share_*` returned on the handle we
        // hold; nothing reaches the pages any more (the core drops its views first).
        unsafe {
            xengntshr_unshare(
                self.handle.0.as_ptr(),
                self.base.as_ptr().cast(),
                self.count as u32,
            )
        };
    }
}

impl AsSharedRegion for Granted {
    fn region(&self) -> SharedRegion<'_> {
        // SAFETY: libxengnttab mapped `count` pages at `base`, readable and writable, for as long
        // as this value lives (it unshares them on drop); the peer writes them at any time, and
        // nothing in this library forms a reference to them. (The C program may reach them
        // through `ctrl->ring`, with plain C accesses, as it may with the C library.)
        unsafe { SharedRegion::from_raw_parts(self.base, self.count * PAGE_SIZE) }
    }
}

impl GrantedPages for Granted {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

impl GrantShare for Sharer {
    type Error = io::Error;
    type Pages = Granted;

    fn share_pages(
        &self,
        remote: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<Granted> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let mut refs = vec![0u32; count];
        let base = match notify {
            Some(notify) => {
                // libxengnttab sets notifications up on single pages only (all the core asks).
                if count != 1 {
                    return Err(einval());
                }
                let offset = notify
                    .clear_byte
                    .map_or(Ok(NO_NOTIFY), |b| u32::try_from(b).map_err(|_| einval()))?;
                let port = notify.event.map_or(NO_NOTIFY, |p| p.0);
                // SAFETY: the handle is open and `refs` has room for the one ref.
                unsafe {
                    xengntshr_share_page_notify(
                        self.0 .0.as_ptr(),
                        domid(remote),
                        refs.as_mut_ptr(),
                        c_int::from(writable),
                        offset,
                        port,
                    )
                }
            }
            None => {
                let n = c_int::try_from(count).map_err(|_| einval())?;
                // SAFETY: the handle is open and `refs` has room for `count` refs.
                unsafe {
                    xengntshr_share_pages(
                        self.0 .0.as_ptr(),
                        domid(remote),
                        n,
                        refs.as_mut_ptr(),
                        c_int::from(writable),
                    )
                }
            }
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(last_error)?;
        Ok(Granted {
            handle: Arc::clone(&self.0),
            base,
            count,
            refs: refs.into_iter().map(GrantRef).collect(),
        })
    }
}

// ----- grant mapping ------------------------------------------------------------------------

struct MapHandle(NonNull<XengnttabHandle>);

// SAFETY: as for `ShareHandle`.
unsafe impl Send for MapHandle {}
// SAFETY: as for `ShareHandle`.
unsafe impl Sync for MapHandle {}

impl Drop for MapHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xengnttab_open`; every mapping holds this value, so none
        // is left when it is closed, once, here.
        unsafe { xengnttab_close(self.0.as_ptr()) };
    }
}

/// A grant-mapping handle of the process's libxengnttab (gntdev on Linux).
pub struct Mapper(Arc<MapHandle>);

impl Mapper {
    fn open(logger: *mut c_void) -> io::Result<Mapper> {
        // SAFETY: as for `xenevtchn_open`.
        let raw = unsafe { xengnttab_open(logger, 0) };
        let handle = MapHandle(NonNull::new(raw).ok_or_else(last_error)?);
        // SAFETY: the handle is open.
        set_cloexec(unsafe { xengnttab_fd(handle.0.as_ptr()) })?;
        Ok(Mapper(Arc::new(handle)))
    }
}

/// Another domain's pages mapped here (the client's control page and rings); unmapped on drop.
pub struct Mapped {
    handle: Arc<MapHandle>,
    base: NonNull<u8>,
    count: usize,
    writable: bool,
    /// Whose grants these are, and which (to map the page again with a notification).
    remote: DomId,
    refs: Vec<GrantRef>,
    /// A second mapping of the same single page, made with the unmap notification
    /// ([`GrantMap::set_unmap_notify`]); unmapped first when this value goes, which runs the
    /// notification.
    notifier: Mutex<Option<NonNull<u8>>>,
}

// SAFETY: as for `Granted`; the second mapping is behind a mutex.
unsafe impl Send for Mapped {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The mapping handle, for `ctrl->gnttab`.
    pub fn handle_ptr(&self) -> *mut c_void {
        self.handle.0.as_ptr().cast()
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let notifier = self
            .notifier
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(notifier) = notifier {
            // SAFETY: a one-page mapping `xengnttab_map_grant_ref_notify` returned on the same
            // handle; never handed out, so nothing reaches it. Unmapping it runs the
            // notification: first, as soon after the close's own clearing of the live byte as
            // can be (a server that takes its next client meanwhile must not see that client's
            // byte cleared by this one's late notification).
            unsafe { xengnttab_unmap(self.handle.0.as_ptr(), notifier.as_ptr().cast(), 1) };
        }
        // SAFETY: `base` and `count` are what a `xengnttab_map_*` call returned on the handle we
        // hold; nothing reaches the pages any more (the core drops its views first).
        unsafe {
            xengnttab_unmap(
                self.handle.0.as_ptr(),
                self.base.as_ptr().cast(),
                self.count as u32,
            )
        };
    }
}

impl AsSharedRegion for Mapped {
    fn region(&self) -> SharedRegion<'_> {
        let len = self.count * PAGE_SIZE;
        if self.writable {
            // SAFETY: libxengnttab mapped `count` pages at `base` readable and writable for as
            // long as this value lives; the peer writes them at any time and nothing here forms
            // a reference to them.
            unsafe { SharedRegion::from_raw_parts(self.base, len) }
        } else {
            // SAFETY: as above, mapped readable only (the view refuses every store).
            unsafe { SharedRegion::from_raw_parts_read_only(self.base, len) }
        }
    }
}

impl GrantMap for Mapper {
    type Error = io::Error;
    type Mapping = Mapped;

    fn map_grant_refs(
        &self,
        remote: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<Mapped> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let base = match (notify, refs) {
            (Some(notify), [gref]) => {
                let offset = notify
                    .clear_byte
                    .map_or(Ok(NO_NOTIFY), |b| u32::try_from(b).map_err(|_| einval()))?;
                let port = notify.event.map_or(NO_NOTIFY, |p| p.0);
                // SAFETY: the handle is open.
                unsafe {
                    xengnttab_map_grant_ref_notify(
                        self.0 .0.as_ptr(),
                        domid(remote),
                        gref.0,
                        prot,
                        offset,
                        port,
                    )
                }
            }
            // Notifications are set up on single pages only (all the core asks).
            (Some(_), _) => return Err(einval()),
            (None, _) => {
                let mut raw: Vec<u32> = refs.iter().map(|r| r.0).collect();
                let count = u32::try_from(raw.len()).map_err(|_| einval())?;
                // SAFETY: the handle is open and `raw` holds `count` refs (read only).
                unsafe {
                    xengnttab_map_domain_grant_refs(
                        self.0 .0.as_ptr(),
                        count,
                        domid(remote),
                        raw.as_mut_ptr(),
                        prot,
                    )
                }
            }
        };
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(last_error)?;
        Ok(Mapped {
            handle: Arc::clone(&self.0),
            base,
            count: refs.len(),
            writable,
            remote,
            refs: refs.to_vec(),
            notifier: Mutex::new(None),
        })
    }

    /// libxengnttab sets a notification only while it maps (`xengnttab_map_grant_ref_notify`),
    /// so the page is mapped a second time with it, and that mapping lives as long as `mapping`:
    /// the notification runs when `mapping` goes (or the process dies), as if set on it.
    fn set_unmap_notify(&self, mapping: &Mapped, notify: UnmapNotify) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let [gref] = mapping.refs[..] else {
            // Notifications are set up on single pages only (all the core asks).
            return Err(einval());
        };
        let mut notifier = mapping
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if notifier.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        // gntdev clears the byte through the mapping: a read-only one cannot carry it.
        if notify.clear_byte.is_some() && !mapping.writable {
            return Err(einval());
        }
        let offset = notify
            .clear_byte
            .map_or(Ok(NO_NOTIFY), |b| u32::try_from(b).map_err(|_| einval()))?;
        let port = notify.event.map_or(NO_NOTIFY, |p| p.0);
        let prot = libc::PROT_READ
            | if mapping.writable {
                libc::PROT_WRITE
            } else {
                0
            };
        // SAFETY: the handle is open (`mapping` holds the same one).
        let base = unsafe {
            xengnttab_map_grant_ref_notify(
                mapping.handle.0.as_ptr(),
                domid(mapping.remote),
                gref.0,
                prot,
                offset,
                port,
            )
        };
        *notifier = Some(NonNull::new(base.cast::<u8>()).ok_or_else(last_error)?);
        Ok(())
    }
}

// ----- the store ----------------------------------------------------------------------------

/// A failed libxenstore call as the store's error: the `errno` it set, as the wire error of that
/// name when there is one (`ENOENT`, `EACCES`, `EAGAIN`, ...), else as the system error.
pub fn store_failure(e: io::Error) -> XenstoreError {
    match e.raw_os_error() {
        Some(raw) => match Errno::ALL.into_iter().find(|w| w.raw_os_error() == raw) {
            Some(wire) => XenstoreError::Errno(wire),
            None => XenstoreError::Io(e),
        },
        None => XenstoreError::Io(e),
    }
}

/// The `errno` a store error stands for (`EPROTO` for a broken reply).
pub fn store_errno(e: &XenstoreError) -> nix::errno::Errno {
    match e {
        XenstoreError::Errno(wire) => nix::errno::Errno::from_raw(wire.raw_os_error()),
        XenstoreError::Io(io) => io_errno(io),
        XenstoreError::Protocol(_) => nix::errno::Errno::EPROTO,
    }
}

/// The `errno` of a failed library call (`EIO` if it left none).
pub fn io_errno(e: &io::Error) -> nix::errno::Errno {
    match e.raw_os_error() {
        Some(raw) if raw != 0 => nix::errno::Errno::from_raw(raw),
        _ => nix::errno::Errno::EIO,
    }
}

struct Connection(NonNull<XsHandle>);

// SAFETY: a libxenstore connection may be used from any thread (the library locks its own
// state); `KeyStore` hands it to one call at a time, under its mutex.
unsafe impl Send for Connection {}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xs_open` and is closed once, here.
        unsafe { xs_close(self.0.as_ptr()) };
    }
}

/// The key store through libxenstore, connected only while it is used: the C library opens a
/// connection for its set-up and its close and holds none in between, and a connection must not
/// outlive a `fork` in a child that uses it (libxenstore's own warning). So the driver
/// [`disconnect`](KeyStore::disconnect)s after every use, and the next use connects again.
pub struct KeyStore {
    connection: Mutex<Option<Connection>>,
}

impl KeyStore {
    fn new() -> KeyStore {
        KeyStore {
            connection: Mutex::new(None),
        }
    }

    /// Close the connection, if one is open (the next call opens another).
    pub fn disconnect(&self) {
        drop(
            self.connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Run `f` on the connection, opening it first if need be.
    fn with<R>(
        &self,
        f: impl FnOnce(*mut XsHandle) -> Result<R, XenstoreError>,
    ) -> Result<R, XenstoreError> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let handle = match &*connection {
            Some(c) => c.0,
            None => {
                // SAFETY: flags 0: a read-write connection, found as libxenstore finds it
                // (`XENSTORED_PATH`, the daemon's socket, `/dev/xen/xenbus`).
                let raw = unsafe { xs_open(0) };
                // A failure to connect is this process's (no socket, no device): never a
                // wire error name, which a caller could take for the daemon's answer (an
                // `ENOENT` here is not "no such node").
                let handle = NonNull::new(raw).ok_or_else(|| XenstoreError::Io(last_error()))?;
                *connection = Some(Connection(handle));
                handle
            }
        };
        // The lock is held for the call, so no `disconnect` can close the handle meanwhile.
        f(handle.as_ptr())
    }
}

fn failure() -> XenstoreError {
    store_failure(last_error())
}

fn too_big() -> XenstoreError {
    store_failure(io::Error::from_raw_os_error(libc::E2BIG))
}

fn store_path(path: &str) -> Result<CString, XenstoreError> {
    c_path(path).map_err(store_failure)
}

fn xs_bool(ok: bool) -> Result<(), XenstoreError> {
    if ok {
        Ok(())
    } else {
        Err(failure())
    }
}

fn access_bits(access: Access) -> c_uint {
    match access {
        Access::None => XS_PERM_NONE,
        Access::Read => XS_PERM_READ,
        Access::Write => XS_PERM_WRITE,
        Access::Both => XS_PERM_READ | XS_PERM_WRITE,
    }
}

/// The access a permission entry grants (libxenstore's other bits, such as the ignore flag,
/// say nothing about it).
fn access_of(bits: c_uint) -> Access {
    match (bits & XS_PERM_READ != 0, bits & XS_PERM_WRITE != 0) {
        (false, false) => Access::None,
        (true, false) => Access::Read,
        (false, true) => Access::Write,
        (true, true) => Access::Both,
    }
}

impl XenStore for KeyStore {
    fn read(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<u8>> {
        let path = store_path(path)?;
        self.with(|h| {
            let mut len: c_uint = 0;
            // SAFETY: `h` is an open connection, `path` a NUL-terminated string, `len` a place
            // for the length.
            let value = unsafe { xs_read(h, tx.0, path.as_ptr(), &mut len) };
            if value.is_null() {
                return Err(failure());
            }
            // SAFETY: libxenstore returned a malloc'd block of `len` bytes (plus a NUL), ours
            // to copy and free.
            let bytes = unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) };
            let copy = bytes.to_vec();
            // SAFETY: as above; freed once, after the copy.
            unsafe { libc::free(value) };
            Ok(copy)
        })
    }

    fn write(&self, tx: TxId, path: &str, value: &[u8]) -> xenstore::Result<()> {
        let path = store_path(path)?;
        let len = c_uint::try_from(value.len()).map_err(|_| too_big())?;
        self.with(|h| {
            // SAFETY: an open connection, a NUL-terminated path, `len` readable bytes.
            let ok = unsafe { xs_write(h, tx.0, path.as_ptr(), value.as_ptr().cast(), len) };
            xs_bool(ok)
        })
    }

    fn mkdir(&self, tx: TxId, path: &str) -> xenstore::Result<()> {
        let path = store_path(path)?;
        self.with(|h| {
            // SAFETY: an open connection and a NUL-terminated path.
            let ok = unsafe { xs_mkdir(h, tx.0, path.as_ptr()) };
            xs_bool(ok)
        })
    }

    fn rm(&self, tx: TxId, path: &str) -> xenstore::Result<()> {
        let path = store_path(path)?;
        self.with(|h| {
            // SAFETY: an open connection and a NUL-terminated path.
            let ok = unsafe { xs_rm(h, tx.0, path.as_ptr()) };
            xs_bool(ok)
        })
    }

    fn directory(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<String>> {
        let path = store_path(path)?;
        self.with(|h| {
            let mut num: c_uint = 0;
            // SAFETY: an open connection, a NUL-terminated path, a place for the count.
            let names = unsafe { xs_directory(h, tx.0, path.as_ptr(), &mut num) };
            if names.is_null() {
                return Err(failure());
            }
            // SAFETY: libxenstore returned one malloc'd block: `num` pointers to NUL-terminated
            // names inside it, ours to read and free once.
            let entries = unsafe { std::slice::from_raw_parts(names, num as usize) };
            let mut list = Vec::with_capacity(entries.len());
            for &name in entries {
                // SAFETY: each entry is a NUL-terminated name in that block.
                let name = unsafe { CStr::from_ptr(name) };
                list.push(name.to_string_lossy().into_owned());
            }
            // SAFETY: as above; freed once, after the copies.
            unsafe { libc::free(names.cast()) };
            Ok(list)
        })
    }

    fn get_perms(&self, tx: TxId, path: &str) -> xenstore::Result<Vec<Perm>> {
        let path = store_path(path)?;
        self.with(|h| {
            let mut num: c_uint = 0;
            // SAFETY: an open connection, a NUL-terminated path, a place for the count.
            let raw = unsafe { xs_get_permissions(h, tx.0, path.as_ptr(), &mut num) };
            if raw.is_null() {
                return Err(failure());
            }
            // SAFETY: libxenstore returned a malloc'd array of `num` entries, ours to read and
            // free once.
            let entries = unsafe { std::slice::from_raw_parts(raw, num as usize) };
            let perms = entries
                .iter()
                .map(|p| {
                    let domid = u16::try_from(p.id).map(xen_types::DomId);
                    domid.map(|domid| Perm {
                        domid,
                        access: access_of(p.perms),
                    })
                })
                .collect::<Result<Vec<Perm>, _>>();
            // SAFETY: as above; freed once, after the copies.
            unsafe { libc::free(raw.cast()) };
            perms.map_err(|_| XenstoreError::Protocol("a permission names no domain".into()))
        })
    }

    fn set_perms(&self, tx: TxId, path: &str, perms: &[Perm]) -> xenstore::Result<()> {
        let path = store_path(path)?;
        let mut raw: Vec<XsPermissions> = perms
            .iter()
            .map(|p| XsPermissions {
                id: c_uint::from(p.domid.0),
                perms: access_bits(p.access),
            })
            .collect();
        let count = c_uint::try_from(raw.len()).map_err(|_| too_big())?;
        self.with(|h| {
            // SAFETY: an open connection, a NUL-terminated path and `count` entries.
            xs_bool(unsafe { xs_set_permissions(h, tx.0, path.as_ptr(), raw.as_mut_ptr(), count) })
        })
    }

    fn transaction_start(&self) -> xenstore::Result<TxId> {
        self.with(|h| {
            // SAFETY: an open connection.
            match unsafe { xs_transaction_start(h) } {
                0 => Err(failure()),
                tx => Ok(TxId(tx)),
            }
        })
    }

    fn transaction_end(&self, tx: TxId, commit: bool) -> xenstore::Result<()> {
        // SAFETY: an open connection (the one the transaction was started on: the driver
        // disconnects only between calls of its own).
        self.with(|h| xs_bool(unsafe { xs_transaction_end(h, tx.0, !commit) }))
    }

    /// The drop-in never waits on the store (`libxenvchan_client_init` fails at once when the
    /// keys are missing, as the C library's does), and a watch would start libxenstore's reader
    /// thread, which the C library never does: refused with `ENOSYS`.
    fn watch(&self, _path: &str, _token: &str) -> xenstore::Result<()> {
        Err(store_failure(io::Error::from_raw_os_error(libc::ENOSYS)))
    }

    fn unwatch(&self, _path: &str, _token: &str) -> xenstore::Result<()> {
        Err(store_failure(io::Error::from_raw_os_error(libc::ENOSYS)))
    }

    /// No watch is ever set (see [`watch`](KeyStore::watch)), so none can fire.
    fn next_watch_event(&self, _timeout: Option<Duration>) -> xenstore::Result<Option<WatchEvent>> {
        Err(store_failure(io::Error::from_raw_os_error(libc::ENOSYS)))
    }

    fn get_domain_path(&self, domid: DomId) -> xenstore::Result<String> {
        self.with(|h| {
            // SAFETY: an open connection.
            let raw = unsafe { xs_get_domain_path(h, c_uint::from(domid.0)) };
            if raw.is_null() {
                return Err(failure());
            }
            // SAFETY: libxenstore returned a malloc'd NUL-terminated string, ours to copy and
            // free once.
            let path = unsafe { CStr::from_ptr(raw) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: as above; freed once, after the copy.
            unsafe { libc::free(raw.cast()) };
            Ok(path)
        })
    }
}

// ----- the platform -------------------------------------------------------------------------

/// The process's Xen libraries as the channel core's platform. `logger` is the
/// `struct xentoollog_logger *` the program passed, handed on to each library's open call.
pub struct Libs {
    logger: *mut c_void,
}

impl Libs {
    /// The platform, with the caller's logger (may be NULL).
    pub fn new(logger: *mut c_void) -> Libs {
        Libs { logger }
    }
}

impl Platform for Libs {
    type DeviceError = io::Error;
    type Events = Events;
    type Sharer = Sharer;
    type Mapper = Mapper;
    type Store = KeyStore;

    fn events(&self) -> io::Result<Events> {
        Events::open(self.logger)
    }

    fn sharer(&self) -> io::Result<Sharer> {
        Sharer::open(self.logger)
    }

    fn mapper(&self) -> io::Result<Mapper> {
        Mapper::open(self.logger)
    }

    fn store(&self) -> Result<KeyStore, XenstoreError> {
        Ok(KeyStore::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    extern "C" fn ignore(_: c_int) {}

    /// With a handler that lacks `SA_RESTART`, a wait a signal interrupted ends with `EINTR`, as
    /// the C library's `read(2)` would; with one that has it, the wait goes on. (Rust's own
    /// fault handlers, which lack it, change nothing.)
    #[test]
    fn an_interrupted_wait_goes_on_only_if_every_handler_restarts() {
        let set = |flags| {
            let action = SigAction::new(SigHandler::Handler(ignore), flags, SigSet::empty());
            // SAFETY: `ignore` does nothing, which is async-signal-safe; SIGUSR2 is not used
            // by anything else in this test binary.
            unsafe { sigaction(Signal::SIGUSR2, &action) }.expect("install a handler")
        };
        let old = set(SaFlags::SA_RESTART);
        assert!(handlers_restart());
        set(SaFlags::empty());
        assert!(!handlers_restart());
        // SAFETY: restores what was there.
        unsafe { sigaction(Signal::SIGUSR2, &old) }.expect("restore the handler");
        assert!(handlers_restart());
    }

    #[test]
    fn a_store_failure_names_the_wire_error() {
        let failure = store_failure(io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(failure.errno(), Some(Errno::EAGAIN));
        assert_eq!(store_errno(&failure), nix::errno::Errno::EAGAIN);
        let failure = store_failure(io::Error::from_raw_os_error(libc::EPROTO));
        assert_eq!(failure.errno(), None);
        assert_eq!(store_errno(&failure), nix::errno::Errno::EPROTO);
    }
}
