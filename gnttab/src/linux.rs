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
//!
//! The requests go through nix's ioctl wrappers (declared in [`abi`]), the mappings are memmap2's
//! [`MmapRaw`], which unmaps on drop and only ever hands out raw pointers: granted memory can
//! change under us at any time, so no Rust reference or slice of it is ever made here.
#![allow(unsafe_code)]

pub mod abi;

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use zerocopy::FromZeros;

use crate::{
    DomId, GrantMap, GrantRef, GrantShare, SharedMemory, SharedPages, UnmapNotify, PAGE_SIZE,
};

/// Where the grant-sharing device lives.
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";
/// Where the grant-mapping device lives.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// An error opening a device: names the path and says the OS error (in the message only, so that
/// a chain of causes prints it once).
#[derive(Debug)]
struct OpenError {
    path: PathBuf,
    cause: io::Error,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot open {}: {}", self.path.display(), self.cause)
    }
}

impl std::error::Error for OpenError {}

/// Open a Xen device node read-write (std opens every file close-on-exec). A missing device or
/// driver is an `io::Error` of kind `NotFound` whose message names the path.
fn open_device(path: &Path) -> io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|cause| {
            io::Error::new(
                cause.kind(),
                OpenError {
                    path: path.to_owned(),
                    cause,
                },
            )
        })
}

/// Run `call` until it fails with something other than `EINTR`.
fn retry_on_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Issue `request`, one of the read-only wrappers declared in [`abi`], with `arg`, retrying on
/// `EINTR`; returns the ioctl's value.
fn ioctl_write<T>(
    fd: BorrowedFd<'_>,
    request: unsafe fn(c_int, *const T) -> nix::Result<c_int>,
    arg: &T,
) -> io::Result<c_int> {
    retry_on_eintr(|| {
        // SAFETY: `request` is one of `abi`'s wrappers made by `ioctl_write_ptr_bad!`, each for a
        // request that only reads one `T` (its number encodes `size_of::<T>()`, checked in `abi`
        // against the C headers); `arg` is a live `T` for the whole call, and `fd` is the open
        // device the request belongs to (or, in tests, a file that knows no ioctl).
        unsafe { request(fd.as_raw_fd(), arg) }
    })
}

fn einval() -> io::Error {
    Errno::EINVAL.into()
}

fn out_of_memory<E>(_: E) -> io::Error {
    io::ErrorKind::OutOfMemory.into()
}

/// Map `len` bytes of the device `fd` at mmap offset `index`, shared, read-only unless
/// `writable`. The mapping is unmapped when the returned value is dropped.
fn map_region(fd: &OwnedFd, len: usize, writable: bool, index: u64) -> io::Result<MmapRaw> {
    // mmap takes a signed offset; memmap2 would wrap a larger one.
    i64::try_from(index).map_err(|_| einval())?;
    let mut options = MmapOptions::new();
    options.offset(index).len(len);
    let map = if writable {
        options.map_raw(fd)?
    } else {
        options.map_raw_read_only(fd)?
    };
    if map.as_mut_ptr().is_null() {
        return Err(einval());
    }
    Ok(map)
}

/// The first byte of a mapping made by [`map_region`] (which refuses a null one).
#[inline]
fn region_start(map: &MmapRaw) -> NonNull<u8> {
    NonNull::new(map.as_mut_ptr()).expect("map_region refuses a null mapping")
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

/// The length of a region of `count` pages: refuses 0 and counts that do not fit the ioctls'
/// `u32`, so every `count` past this check is at least 1 and converts to `u32`.
fn region_len(count: usize) -> io::Result<usize> {
    if count == 0 || u32::try_from(count).is_err() {
        return Err(einval());
    }
    count.checked_mul(PAGE_SIZE).ok_or_else(einval)
}

/// A range of a device's mmap offsets that a request reserved: pages gntalloc allocated and
/// granted, or grants registered with gntdev. Dropping it releases the range (`release`), then
/// its hold on the fd.
struct Reservation {
    fd: Arc<OwnedFd>,
    index: u64,
    count: usize,
    release: fn(BorrowedFd<'_>, u64, usize),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        (self.release)(self.fd.as_fd(), self.index, self.count);
    }
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
            fd: Arc::new(open_device(path.as_ref())?),
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
        let mut arg = abi::GntallocAllocGref::<[u32]>::new_box_zeroed_with_elems(count)
            .map_err(out_of_memory)?;
        arg.domid = domid.0;
        arg.flags = if writable {
            abi::GNTALLOC_FLAG_WRITABLE
        } else {
            0
        };
        arg.count = count as u32;
        retry_on_eintr(|| {
            // SAFETY: `arg` is one zeroed allocation that zerocopy sized for the header and
            // `count` grant refs, and `count >= 1` (`region_len`), so it is at least as large as
            // the C struct; the pointer is taken from the whole allocation, so it covers the refs
            // the kernel writes, and the kernel touches nothing past them. The fd is this
            // handle's gntalloc device (or, in tests, a file that knows no ioctl).
            unsafe { abi::gntalloc_alloc_gref(self.fd.as_raw_fd(), (&raw mut *arg).cast()) }
        })?;
        // From here on, dropping `reservation` gives the grants back.
        let reservation = Reservation {
            fd: Arc::clone(&self.fd),
            index: arg.index,
            count,
            release: dealloc,
        };
        let refs = arg.gref_ids.iter().map(|&r| GrantRef(r)).collect();
        let map = map_region(&self.fd, len, true, reservation.index)?;
        // From here on, dropping `pages` undoes everything.
        let pages = GntshrPages {
            map,
            reservation,
            refs,
        };
        if let Some(notify) = notify_arg(notify, len, pages.reservation.index)? {
            ioctl_write(self.fd.as_fd(), abi::gntalloc_set_unmap_notify, &notify)?;
        }
        Ok(pages)
    }
}

fn dealloc(fd: BorrowedFd<'_>, index: u64, count: usize) {
    let arg = abi::GntallocDeallocGref {
        index,
        count: count as u32,
    };
    // Nothing useful can be done if the kernel refuses; the fd's close releases it anyway.
    let _ = ioctl_write(fd, abi::gntalloc_dealloc_gref, &arg);
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
    // Fields drop in order: the pages are unmapped, then the grants are given back, then the fd
    // may close.
    map: MmapRaw,
    reservation: Reservation,
    refs: Vec<GrantRef>,
}

impl fmt::Debug for GntshrPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GntshrPages")
            .field("ptr", &self.map.as_ptr())
            .field("index", &self.reservation.index)
            .field("refs", &self.refs)
            .finish()
    }
}

// SAFETY: `map` is a live `MAP_SHARED` read-write mapping of `refs.len()` pages (at least one),
// page-aligned by mmap and never null (`map_region`); memmap2 unmaps it only when `map` is
// dropped, with `self`, and hands out nothing but raw pointers to it.
unsafe impl SharedMemory for GntshrPages {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        region_start(&self.map)
    }
    #[inline]
    fn len(&self) -> usize {
        self.map.len()
    }
    #[inline]
    fn is_writable(&self) -> bool {
        // The sharer's own mapping: it fills the pages, whatever the grantee may do.
        true
    }
}

impl SharedPages for GntshrPages {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
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
            fd: Arc::new(open_device(path.as_ref())?),
        })
    }

    /// Limit how many grants this handle may map at once (`IOCTL_GNTDEV_SET_MAX_GRANTS`). Recent
    /// kernels take the limit from the module parameter instead and answer `ENOTTY`/`EINVAL`.
    pub fn set_max_grants(&self, count: u32) -> io::Result<()> {
        let arg = abi::GntdevSetMaxGrants { count };
        ioctl_write(self.fd.as_fd(), abi::gntdev_set_max_grants, &arg).map(drop)
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
        let mut arg =
            abi::GntdevMapGrantRef::<[abi::GntdevGrantRef]>::new_box_zeroed_with_elems(count)
                .map_err(out_of_memory)?;
        arg.count = count as u32;
        for (entry, r) in arg.refs.iter_mut().zip(refs) {
            *entry = abi::GntdevGrantRef {
                domid: u32::from(domid.0),
                r#ref: r.0,
            };
        }
        retry_on_eintr(|| {
            // SAFETY: `arg` is one zeroed allocation that zerocopy sized for the header and
            // `count` grant entries, and `count >= 1` (`region_len`), so it is at least as large
            // as the C struct; the pointer is taken from the whole allocation, so it covers the
            // entries the kernel reads, and the kernel touches nothing past them. The fd is this
            // handle's gntdev device (or, in tests, a file that knows no ioctl).
            unsafe { abi::gntdev_map_grant_ref(self.fd.as_raw_fd(), (&raw mut *arg).cast()) }
        })?;
        let reservation = Reservation {
            fd: Arc::clone(&self.fd),
            index: arg.index,
            count,
            release: unmap_grant_ref,
        };

        // gntdev maps every grant here and fails the whole mmap if any one failed.
        let map = map_region(&self.fd, len, writable, reservation.index)?;
        let mapping = GnttabMapping {
            map,
            reservation,
            writable,
        };
        if let Some(notify) = notify_arg(notify, len, mapping.reservation.index)? {
            ioctl_write(self.fd.as_fd(), abi::gntdev_set_unmap_notify, &notify)?;
        }
        Ok(mapping)
    }
}

impl Gnttab {
    /// Arrange `notify` for `mapping`, made by this handle without one (see
    /// [`GrantMap::set_unmap_notify`]).
    pub fn set_unmap_notify(&self, mapping: &GnttabMapping, notify: UnmapNotify) -> io::Result<()> {
        if !Arc::ptr_eq(&mapping.reservation.fd, &self.fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the mapping was made by another gntdev handle",
            ));
        }
        match notify_arg(Some(notify), mapping.map.len(), mapping.reservation.index)? {
            Some(arg) => ioctl_write(self.fd.as_fd(), abi::gntdev_set_unmap_notify, &arg).map(drop),
            None => Ok(()),
        }
    }
}

fn unmap_grant_ref(fd: BorrowedFd<'_>, index: u64, count: usize) {
    let arg = abi::GntdevUnmapGrantRef {
        index,
        count: count as u32,
        pad: 0,
    };
    // Nothing useful can be done if the kernel refuses; the fd's close releases it anyway.
    let _ = ioctl_write(fd, abi::gntdev_unmap_grant_ref, &arg);
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

    fn set_unmap_notify(&self, mapping: &GnttabMapping, notify: UnmapNotify) -> io::Result<()> {
        Gnttab::set_unmap_notify(self, mapping, notify)
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
    // Fields drop in order: the pages are unmapped, then the grants are released, then the fd
    // may close.
    map: MmapRaw,
    reservation: Reservation,
    writable: bool,
}

impl fmt::Debug for GnttabMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GnttabMapping")
            .field("ptr", &self.map.as_ptr())
            .field("index", &self.reservation.index)
            .field("count", &self.reservation.count)
            .finish()
    }
}

// SAFETY: `map` is a live `MAP_SHARED` mapping of `reservation.count` pages (at least one),
// page-aligned by mmap and never null (`map_region`), writable when it was mapped writable;
// memmap2 unmaps it only when `map` is dropped, with `self`, and hands out nothing but raw
// pointers to it.
unsafe impl SharedMemory for GnttabMapping {
    #[inline]
    fn as_ptr(&self) -> NonNull<u8> {
        region_start(&self.map)
    }
    #[inline]
    fn len(&self) -> usize {
        self.map.len()
    }
    #[inline]
    fn is_writable(&self) -> bool {
        self.writable
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
        assert_eq!(err.raw_os_error(), Some(Errno::EINVAL as i32));
        let notify = UnmapNotify {
            clear_byte: Some(PAGE_SIZE),
            event: None,
        };
        let err = shr
            .share_pages(DomId(1), 1, true, Some(notify))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EINVAL as i32));
        let tab = Gnttab::open_path("/dev/null").unwrap();
        let err = tab.map_grant_refs(DomId(1), &[], true, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EINVAL as i32));
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
    fn the_fds_are_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let shr = Gntshr::open_path("/dev/null").unwrap();
        let tab = Gnttab::open_path("/dev/null").unwrap();
        for fd in [shr.as_fd(), tab.as_fd()] {
            let flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC), "{flags:?}");
        }
    }

    #[test]
    fn a_mapping_of_a_file_that_cannot_be_mapped_is_an_error() {
        let null = open_device(Path::new("/dev/null")).unwrap();
        assert!(map_region(&null, PAGE_SIZE, true, 0).is_err());
        let err = map_region(&null, PAGE_SIZE, false, 1 << 63).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EINVAL as i32));
    }

    #[test]
    fn handles_expose_their_fd() {
        let shr = Gntshr::open_path("/dev/null").unwrap();
        assert_eq!(shr.as_fd().as_raw_fd(), shr.as_raw_fd());
        assert!(shr.as_raw_fd() >= 0);
    }
}
