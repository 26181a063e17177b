//! Xen grant tables: sharing pages with another domain and mapping pages another domain shared.
//!
//! [`GrantShare`] (libxengnttab's `xengntshr_*`, the kernel's gntalloc) and [`GrantMap`]
//! (`xengnttab_*`, gntdev) are the portable surface a consumer such as vchan needs. Backends:
//! - [`linux`]: real Xen, through gntalloc and gntdev.
//! - the simulated Xen (crate `xensim`): in process and across processes, with the kernel's
//!   unmap notifications played when a region goes away or its process dies.
//!
//! Granted memory can be written by the peer domain at any moment, so it is only ever handed out
//! as a raw pointer and a length ([`SharedMemory`]), and reached through the bounds-checked view
//! [`SharedMemory::region`] ([`SharedRegion`]: atomics and raw copies): never as a Rust reference
//! or slice.
#![deny(unsafe_code)]

use std::io;
use std::ptr::NonNull;

pub use xen_types::memory::SharedRegion;
pub use xen_types::{DomId, GrantRef, Port, UnmapNotify, PAGE_SIZE};

#[cfg(target_os = "linux")]
pub mod linux;

/// A region of memory shared with another domain. Dropping it ends the sharing or mapping.
///
/// # Safety
///
/// Implementors guarantee that `as_ptr()` stays valid for reads (and for writes, unless
/// [`is_writable`](Self::is_writable) says false) of `len()` bytes, page-aligned, for as long as the value lives, and that
/// `len()` is a non-zero multiple of [`PAGE_SIZE`]. The memory may change at any time under the
/// caller's feet: callers access it with atomics or raw copies only.
#[allow(unsafe_code)]
pub unsafe trait SharedMemory: Send + Sync {
    /// The first byte of the region.
    fn as_ptr(&self) -> NonNull<u8>;
    /// The length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty (never, for a valid region).
    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region as a bounds-checked view, borrowed from `self`: atomic loads, stores and
    /// read-modify-writes with an explicit ordering, and raw copies in and out, never a
    /// reference into the memory. The view cannot outlive the region, which stays mapped while
    /// `self` lives.
    #[inline]
    fn region(&self) -> SharedRegion<'_> {
        if self.is_writable() {
            // SAFETY: the trait's contract: `as_ptr()` is valid for reads and writes of `len()`
            // bytes for as long as `self` lives (so for the borrow), mapped as one region, and
            // its users reach it only with atomics or raw copies, which is all `SharedRegion`
            // does.
            unsafe { SharedRegion::from_raw_parts(self.as_ptr(), self.len()) }
        } else {
            // SAFETY: as above, for reads only: the view refuses every store.
            unsafe { SharedRegion::from_raw_parts_read_only(self.as_ptr(), self.len()) }
        }
    }

    /// Whether the region was mapped writable: part of the contract above, so each implementor
    /// says it (there is no default). [`region`](Self::region) of a read-only one is a view that
    /// refuses stores.
    fn is_writable(&self) -> bool;
}

/// Pages this domain shares with another; exposes the grant refs the peer needs to map them.
pub trait SharedPages: SharedMemory {
    /// One grant ref per page, in page order.
    fn refs(&self) -> &[GrantRef];
}

/// A handle that shares this domain's pages with other domains (`xengntshr_handle`, gntalloc).
pub trait GrantShare: Send + Sync {
    /// The shared region's type.
    type Pages: SharedPages;
    /// Allocate `count` zeroed, contiguous pages and grant `domid` access to them, read-only
    /// unless `writable`. `notify` fires when this side's mapping goes away.
    fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<Self::Pages>;
}

/// A handle that maps pages other domains granted (`xengnttab_handle`, gntdev).
pub trait GrantMap: Send + Sync {
    /// The mapping's type.
    type Mapping: SharedMemory;
    /// Map `refs`, granted by `domid`, into one contiguous region, read-only unless `writable`.
    /// `notify` fires when the mapping goes away.
    fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<Self::Mapping>;

    /// Arrange `notify` for a mapping made without one (gntdev's `SET_UNMAP_NOTIFY`, which works
    /// on a mapping that exists): a vchan client sets it only once it has joined its server, so
    /// that a failed attempt, whose mapping goes at once, clears nobody's live byte.
    fn set_unmap_notify(&self, mapping: &Self::Mapping, notify: UnmapNotify) -> io::Result<()>;
}
