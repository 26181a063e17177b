//! Xen grant tables: sharing pages with another domain and mapping pages another domain shared.
//!
//! [`GrantShare`] (libxengnttab's `xengntshr_*`, the kernel's gntalloc) and [`GrantMap`]
//! (`xengnttab_*`, gntdev) are the portable surface a consumer such as vchan needs. Backends:
//! - [`linux`]: real Xen, through gntalloc and gntdev.
//! - the simulated Xen (crate `xensim`): in process and across processes, with the kernel's
//!   unmap notifications played when a region goes away or its process dies.
//!
//! Granted memory can be written by the peer domain at any moment, so it is only ever handed out
//! as a raw pointer and a length ([`SharedMemory`]): never as a Rust reference or slice.
#![deny(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};

pub use xen_types::{DomId, GrantRef, Port, PAGE_SIZE};

#[cfg(target_os = "linux")]
pub mod linux;

/// What the kernel does for us when a shared or mapped region goes away, whether by an orderly
/// unmap or because the process died: clear one byte of the region, send one event, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnmapNotify {
    /// Byte offset within the region to set to 0.
    pub clear_byte: Option<usize>,
    /// A port of the calling domain to send an event on.
    pub event: Option<Port>,
}

/// A region of memory shared with another domain. Dropping it ends the sharing or mapping.
///
/// # Safety
///
/// Implementors guarantee that `as_ptr()` stays valid for reads (and for writes, when the region
/// was made writable) of `len()` bytes, page-aligned, for as long as the value lives, and that
/// `len()` is a non-zero multiple of [`PAGE_SIZE`]. The memory may change at any time under the
/// caller's feet: callers access it with atomics or raw copies only.
#[allow(unsafe_code)]
pub unsafe trait SharedMemory: Send + Sync {
    /// The first byte of the region.
    fn as_ptr(&self) -> NonNull<u8>;
    /// The length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty (never, for a valid region).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Store a 32-bit word at `offset` atomically (SeqCst), as a peer writes a control word.
    /// Panics unless `offset` is 4-aligned and in the region.
    fn store_u32(&self, offset: usize, value: u32) {
        self.u32_at(offset).store(value, Ordering::SeqCst);
    }

    /// Load the 32-bit word at `offset` atomically (SeqCst). Panics as `store_u32` does.
    fn load_u32(&self, offset: usize) -> u32 {
        self.u32_at(offset).load(Ordering::SeqCst)
    }

    /// Store a 16-bit word at `offset` atomically (SeqCst). Panics unless `offset` is 2-aligned
    /// and in the region.
    fn store_u16(&self, offset: usize, value: u16) {
        assert!(offset.is_multiple_of(2) && offset + 2 <= self.len());
        // SAFETY: in bounds and aligned (asserted; regions are page-aligned, by the trait's
        // contract, and valid for as long as `self`); atomic access only, as the contract asks.
        unsafe { AtomicU16::from_ptr(self.as_ptr().as_ptr().add(offset).cast()) }
            .store(value, Ordering::SeqCst);
    }

    /// Store a byte at `offset` atomically (SeqCst). Panics unless `offset` is in the region.
    fn store_u8(&self, offset: usize, value: u8) {
        self.u8_at(offset).store(value, Ordering::SeqCst);
    }

    /// Load the byte at `offset` atomically (SeqCst). Panics as `store_u8` does.
    fn load_u8(&self, offset: usize) -> u8 {
        self.u8_at(offset).load(Ordering::SeqCst)
    }

    #[doc(hidden)]
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len());
        // SAFETY: as in `store_u16`; the reference lives no longer than `self`.
        unsafe { AtomicU32::from_ptr(self.as_ptr().as_ptr().add(offset).cast()) }
    }

    #[doc(hidden)]
    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < self.len());
        // SAFETY: as in `store_u16`; a byte needs no alignment.
        unsafe { AtomicU8::from_ptr(self.as_ptr().as_ptr().add(offset)) }
    }
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
}
