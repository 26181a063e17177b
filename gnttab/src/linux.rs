//! The Linux backends: [`Gntshr`] over `/dev/xen/gntalloc` and [`Gnttab`] over `/dev/xen/gntdev`.
//!
//! Both follow what libxengnttab does on Linux, with every result checked:
//! - sharing: `IOCTL_GNTALLOC_ALLOC_GREF` allocates zeroed pages and their grant refs, `mmap` at
//!   the returned index maps them, `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` arms the notification; on drop
//!   `munmap` then `IOCTL_GNTALLOC_DEALLOC_GREF` (the kernel revokes the grants once the last
//!   mapping is gone, and fires the notification then, also when the process dies);
//! - mapping: `IOCTL_GNTDEV_MAP_GRANT_REF` reserves an mmap range for all the refs, `mmap` maps
//!   them into one contiguous region (read-only unless asked for writable), then
//!   `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`; on drop `munmap` then `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
//!
//! gntdev does not report a per-grant status to user space: it maps every grant in `mmap` and
//! fails the whole `mmap` if any one of them failed (unmapping the others), so a successful
//! `mmap` means every page is mapped, and a failed one is reported with the kernel's error.
//!
//! Each region holds an `Arc` of its device's fd, so it releases correctly after the handle that
//! made it was dropped.
//!
//! Loopback (sharing with the caller's own domain and mapping it back) is not refused here: on
//! the Debian 6.1 kernel under Xen 4.17 it works (the QEMU tier exercises it), while PROTOCOL.md
//! section 7 says some older kernels crash in gntalloc doing it. Callers that must run on such
//! kernels should not serve their own domain.
#![allow(unsafe_code)]

pub mod abi;

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use evtchn::linux::open_device;

use crate::{
    DomId, GrantMap, GrantRef, GrantShare, SharedMemory, SharedPages, UnmapNotify, PAGE_SIZE,
};

/// Where the grant-sharing device lives.
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";
/// Where the grant-mapping device lives.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// Issue an ioctl whose argument is the memory at `arg`, retrying on `EINTR`.
///
/// # Safety
///
/// `arg` must point to a writable, initialised buffer at least as large as the argument the
/// kernel reads and writes for `request` (including any variable-length tail).
unsafe fn ioctl(fd: BorrowedFd<'_>, request: u64, arg: *mut c_void) -> io::Result<libc::c_int> {
    loop {
        // SAFETY: the caller guarantees `arg` is valid for this request; `fd` is open.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
        if ret >= 0 {
            return Ok(ret);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// [`ioctl`] with a fixed-size argument struct.
fn ioctl_with<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a live, exclusively borrowed `T`, and every request passed here takes
    // exactly a `T` (the ioctl number encodes `size_of::<T>()`, checked in `abi`).
    unsafe { ioctl(fd, request, (arg as *mut T).cast()) }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Map `len` bytes of `fd` at offset `index`, shared.
fn mmap_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    writable: bool,
    index: u64,
) -> io::Result<NonNull<u8>> {
    let offset = libc::off_t::try_from(index).map_err(|_| einval())?;
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: a fresh mapping chosen by the kernel (no fixed address), so no existing memory is
    // affected; the result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(einval)
}

/// Check a notify request against a region of `len` bytes and turn it into the ioctl argument
/// for a region at mmap offset `index`. `None` when there is nothing to arm.
fn notify_arg(
    notify: Option<UnmapNotify>,
    len: usize,
    index: u64,
) -> io::Result<Option<abi::UnmapNotifyArg>> {
    let Some(notify) = notify else {
        return Ok(None);
    };
    let mut action = 0;
    let mut offset = 0;
    if let Some(byte) = notify.clear_byte {
        if byte >= len {
            return Err(einval());
        }
        action |= abi::UNMAP_NOTIFY_CLEAR_BYTE;
        offset = byte;
    }
    let mut port = 0;
    if let Some(event) = notify.event {
        action |= abi::UNMAP_NOTIFY_SEND_EVENT;
        port = event.0;
    }
    if action == 0 {
        return Ok(None);
    }
    Ok(Some(abi::UnmapNotifyArg {
        index: index.checked_add(offset as u64).ok_or_else(einval)?,
        action,
        event_channel_port: port,
    }))
}

fn region_len(count: usize) -> io::Result<usize> {
    if count == 0 || u32::try_from(count).is_err() {
        return Err(einval());
    }
    count.checked_mul(PAGE_SIZE).ok_or_else(einval)
}

/// A grant-sharing handle: `/dev/xen/gntalloc` (libxengnttab's `xengntshr_handle`).
#[derive(Debug, Clone)]
pub struct Gntshr {
    fd: Arc<OwnedFd>,
}

impl Gntshr {
    /// Open `/dev/xen/gntalloc`.
    pub fn open() -> io::Result<Gntshr> {
        Self::open_path(GNTALLOC_PATH)
    }

    /// Open a gntalloc device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> io::Result<Gntshr> {
        Ok(Gntshr {
            fd: Arc::new(open_device(path.as_ref(), 0)?),
        })
    }

    /// Allocate `count` zeroed pages and grant `domid` access to them (see [`GrantShare`]).
    pub fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<GntshrPages> {
        let len = region_len(count)?;
        // Validate the notify request before anything is allocated (the index is filled below).
        notify_arg(notify, len, 0)?;
        let mut arg = abi::VarIoctl::<abi::GntallocAllocGrefHeader, u32>::new(
            count,
            size_of::<abi::GntallocAllocGref>(),
        )
        .ok_or_else(einval)?;
        arg.set_header(abi::GntallocAllocGrefHeader {
            domid: domid.0,
            flags: if writable {
                abi::GNTALLOC_FLAG_WRITABLE
            } else {
                0
            },
            count: count as u32,
            index: 0,
        });
        // SAFETY: `arg` is an initialised buffer sized for the header and `count` grant refs,
        // which is all the kernel reads or writes for this request.
        unsafe {
            ioctl(
                self.fd.as_fd(),
                abi::IOCTL_GNTALLOC_ALLOC_GREF,
                arg.as_mut_ptr().cast(),
            )?
        };
        let index = arg.header().index;
        let refs: Vec<GrantRef> = (0..count)
            .filter_map(|i| arg.get(i))
            .map(GrantRef)
            .collect();

        let ptr = match mmap_shared(self.fd.as_fd(), len, true, index) {
            Ok(ptr) => ptr,
            Err(e) => {
                dealloc(self.fd.as_fd(), index, count);
                return Err(e);
            }
        };
        // From here on, dropping `pages` undoes everything.
        let pages = GntshrPages {
            fd: Arc::clone(&self.fd),
            ptr,
            index,
            refs,
        };
        if let Some(mut notify) = notify_arg(notify, len, index)? {
            ioctl_with(
                self.fd.as_fd(),
                abi::IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
                &mut notify,
            )?;
        }
        Ok(pages)
    }
}

fn dealloc(fd: BorrowedFd<'_>, index: u64, count: usize) {
    let mut arg = abi::GntallocDeallocGref {
        index,
        count: count as u32,
    };
    // Nothing useful can be done if the kernel refuses; the fd's close releases it anyway.
    let _ = ioctl_with(fd, abi::IOCTL_GNTALLOC_DEALLOC_GREF, &mut arg);
}

impl GrantShare for Gntshr {
    type Pages = GntshrPages;

    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<GntshrPages> {
        Gntshr::share_pages(self, domid, count, writable, notify)
    }
}

impl AsFd for Gntshr {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Gntshr {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Pages shared through gntalloc, mapped into this process. Dropping unmaps them and drops the
/// grants (the kernel revokes each grant once the peer has unmapped it).
pub struct GntshrPages {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    index: u64,
    refs: Vec<GrantRef>,
}

impl fmt::Debug for GntshrPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GntshrPages")
            .field("ptr", &self.ptr)
            .field("index", &self.index)
            .field("refs", &self.refs)
            .finish()
    }
}

// SAFETY: the region is a shared memory mapping with no thread affinity; the pointer is only
// handed out raw and every access goes through atomics or raw copies.
unsafe impl Send for GntshrPages {}
// SAFETY: as above; `&GntshrPages` exposes only the pointer value and the refs.
unsafe impl Sync for GntshrPages {}

// SAFETY: `ptr` is the start of a live `MAP_SHARED` read-write mapping of `refs.len()` pages
// (at least one), page-aligned by mmap, unmapped only in `drop`.
unsafe impl SharedMemory for GntshrPages {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.refs.len() * PAGE_SIZE
    }
}

impl SharedPages for GntshrPages {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

impl Drop for GntshrPages {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `share_pages`, unmapped only
        // here; no reference into it exists (only raw pointers, which the owner of `self` may no
        // longer use once it is dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len()) };
        dealloc(self.fd.as_fd(), self.index, self.refs.len());
    }
}

/// A grant-mapping handle: `/dev/xen/gntdev` (libxengnttab's `xengnttab_handle`).
#[derive(Debug, Clone)]
pub struct Gnttab {
    fd: Arc<OwnedFd>,
}

impl Gnttab {
    /// Open `/dev/xen/gntdev`.
    pub fn open() -> io::Result<Gnttab> {
        Self::open_path(GNTDEV_PATH)
    }

    /// Open a gntdev device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> io::Result<Gnttab> {
        Ok(Gnttab {
            fd: Arc::new(open_device(path.as_ref(), 0)?),
        })
    }

    /// Limit how many grants this handle may map at once (`IOCTL_GNTDEV_SET_MAX_GRANTS`). Recent
    /// kernels take the limit from the module parameter instead and answer `ENOTTY`/`EINVAL`.
    pub fn set_max_grants(&self, count: u32) -> io::Result<()> {
        let mut arg = abi::GntdevSetMaxGrants { count };
        ioctl_with(self.fd.as_fd(), abi::IOCTL_GNTDEV_SET_MAX_GRANTS, &mut arg).map(drop)
    }

    /// Map `refs`, granted by `domid`, into one contiguous region (see [`GrantMap`]).
    pub fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<GnttabMapping> {
        let count = refs.len();
        let len = region_len(count)?;
        notify_arg(notify, len, 0)?;
        let mut arg = abi::VarIoctl::<abi::GntdevMapGrantRefHeader, abi::GntdevGrantRef>::new(
            count,
            size_of::<abi::GntdevMapGrantRef>(),
        )
        .ok_or_else(einval)?;
        arg.set_header(abi::GntdevMapGrantRefHeader {
            count: count as u32,
            pad: 0,
            index: 0,
        });
        arg.fill(refs.iter().map(|r| abi::GntdevGrantRef {
            domid: u32::from(domid.0),
            r#ref: r.0,
        }));
        // SAFETY: `arg` is an initialised buffer sized for the header and `count` grant entries,
        // which is all the kernel reads or writes for this request.
        unsafe {
            ioctl(
                self.fd.as_fd(),
                abi::IOCTL_GNTDEV_MAP_GRANT_REF,
                arg.as_mut_ptr().cast(),
            )?
        };
        let index = arg.header().index;

        // gntdev maps every grant here and fails the whole mmap if any one failed.
        let ptr = match mmap_shared(self.fd.as_fd(), len, writable, index) {
            Ok(ptr) => ptr,
            Err(e) => {
                unmap_grant_ref(self.fd.as_fd(), index, count);
                return Err(e);
            }
        };
        let mapping = GnttabMapping {
            fd: Arc::clone(&self.fd),
            ptr,
            index,
            count,
        };
        if let Some(mut notify) = notify_arg(notify, len, index)? {
            ioctl_with(
                self.fd.as_fd(),
                abi::IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                &mut notify,
            )?;
        }
        Ok(mapping)
    }
}

fn unmap_grant_ref(fd: BorrowedFd<'_>, index: u64, count: usize) {
    let mut arg = abi::GntdevUnmapGrantRef {
        index,
        count: count as u32,
        pad: 0,
    };
    // Nothing useful can be done if the kernel refuses; the fd's close releases it anyway.
    let _ = ioctl_with(fd, abi::IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut arg);
}

impl GrantMap for Gnttab {
    type Mapping = GnttabMapping;

    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<GnttabMapping> {
        Gnttab::map_grant_refs(self, domid, refs, writable, notify)
    }
}

impl AsFd for Gnttab {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Gnttab {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Foreign pages mapped through gntdev. Dropping unmaps them (firing the unmap notification).
pub struct GnttabMapping {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    index: u64,
    count: usize,
}

impl fmt::Debug for GnttabMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GnttabMapping")
            .field("ptr", &self.ptr)
            .field("index", &self.index)
            .field("count", &self.count)
            .finish()
    }
}

// SAFETY: the region is a shared memory mapping with no thread affinity; the pointer is only
// handed out raw and every access goes through atomics or raw copies.
unsafe impl Send for GnttabMapping {}
// SAFETY: as above; `&GnttabMapping` exposes only the pointer value and the length.
unsafe impl Sync for GnttabMapping {}

// SAFETY: `ptr` is the start of a live `MAP_SHARED` mapping of `count` pages (at least one),
// page-aligned by mmap, writable when it was mapped writable, unmapped only in `drop`.
unsafe impl SharedMemory for GnttabMapping {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.count * PAGE_SIZE
    }
}

impl Drop for GnttabMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `map_grant_refs`, unmapped
        // only here; no reference into it exists (only raw pointers).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len()) };
        unmap_grant_ref(self.fd.as_fd(), self.index, self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_missing_device_is_a_not_found_error_naming_the_path() {
        let err = Gntshr::open_path("/nonexistent/xen/gntalloc").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("/nonexistent/xen/gntalloc"),
            "{err}"
        );
        let err = Gnttab::open_path("/nonexistent/xen/gntdev").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/xen/gntdev"), "{err}");
    }

    #[test]
    fn a_device_that_is_not_gntalloc_refuses_the_ioctls_with_an_error() {
        // /dev/null opens fine but knows none of the requests: every call must fail cleanly.
        let shr = Gntshr::open_path("/dev/null").unwrap();
        let err = shr.share_pages(DomId(1), 1, true, None).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        let tab = Gnttab::open_path("/dev/null").unwrap();
        assert!(tab
            .map_grant_refs(DomId(1), &[GrantRef(8)], true, None)
            .is_err());
        assert!(tab.set_max_grants(4).is_err());
    }

    #[test]
    fn bad_requests_are_refused_before_reaching_the_kernel() {
        let shr = Gntshr::open_path("/dev/null").unwrap();
        let err = shr.share_pages(DomId(1), 0, true, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let notify = UnmapNotify {
            clear_byte: Some(PAGE_SIZE),
            event: None,
        };
        let err = shr
            .share_pages(DomId(1), 1, true, Some(notify))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let tab = Gnttab::open_path("/dev/null").unwrap();
        let err = tab.map_grant_refs(DomId(1), &[], true, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn notify_argument_points_at_the_byte_to_clear() {
        let notify = UnmapNotify {
            clear_byte: Some(21),
            event: Some(crate::Port(7)),
        };
        let arg = notify_arg(Some(notify), PAGE_SIZE, 0x3000)
            .unwrap()
            .unwrap();
        assert_eq!(arg.index, 0x3015);
        assert_eq!(
            arg.action,
            abi::UNMAP_NOTIFY_CLEAR_BYTE | abi::UNMAP_NOTIFY_SEND_EVENT
        );
        assert_eq!(arg.event_channel_port, 7);
        let event_only = UnmapNotify {
            clear_byte: None,
            event: Some(crate::Port(9)),
        };
        let arg = notify_arg(Some(event_only), PAGE_SIZE, 0x3000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (arg.index, arg.action),
            (0x3000, abi::UNMAP_NOTIFY_SEND_EVENT)
        );
        assert!(notify_arg(Some(UnmapNotify::default()), PAGE_SIZE, 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn handles_expose_their_fd() {
        let shr = Gntshr::open_path("/dev/null").unwrap();
        assert_eq!(shr.as_fd().as_raw_fd(), shr.as_raw_fd());
        assert!(shr.as_raw_fd() >= 0);
    }
}
