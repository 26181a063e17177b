//! Shared memory: bytes another party (a peer domain, the kernel, another thread) may read and
//! write at any moment, reached only through one small safe surface.
//!
//! A [`SharedRegion`] is a `Copy` view of such memory, borrowed for `'a`. Its one `unsafe`
//! constructor, [`SharedRegion::from_raw_parts`], states what the memory must be; everything
//! else is safe: bounds-checked atomic loads, stores and read-modify-writes with the caller's
//! ordering, and raw copies into and out of private buffers. No method ever hands out a Rust
//! reference or slice into the region, so the peer's writes can never break an aliasing rule of
//! ours, only change the values we read (which the caller validates).
//!
//! **Misuse panics.** An access outside the region, or a multi-byte atomic at an address not
//! aligned to its size, panics with the offset, the size and the region's length: the offsets
//! are the caller's own (fixed layout constants, private geometry validated once), so a bad one
//! is a bug in the caller, never something the peer can cause, and returning an error would only
//! push an `unwrap` into every access. The data path pays one comparison per copy.
//!
//! [`AsSharedRegion`] is implemented by whatever keeps a region valid (a mapping, an owning
//! handle, a region itself): views that hold such an owner, rather than an address, cannot
//! outlive the memory.
//!
//! ```
//! use core::sync::atomic::Ordering;
//! use xen_types::memory::SharedRegion;
//!
//! #[repr(C, align(8))]
//! struct Page([u8; 64]); // private memory standing in for a shared page
//!
//! let mut page = Page([0; 64]);
//! let region = SharedRegion::from(&mut page.0[..]);
//! region.store_u32(4, 0xdead_beef, Ordering::Release);
//! assert_eq!(region.load_u32(4, Ordering::Acquire), 0xdead_beef);
//! region.copy_in(8, b"abc");
//! let mut out = [0u8; 3];
//! region.subregion(8, 3).copy_out(0, &mut out);
//! assert_eq!(&out, b"abc");
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};

/// A view of `len` bytes of shared memory, valid for `'a`.
///
/// Every access is bounds-checked and is either atomic, with the ordering the caller names, or
/// a raw copy to or from private memory. The view is `Copy`, `Send` and `Sync`: it is an address
/// and a length, and everything done through it is meant for memory used concurrently.
///
/// Raw copies are not atomic. Protocols publish bytes with an atomic index (Release) and copy
/// them only after loading it (Acquire), as the vchan ring does, so an honest party never
/// copies bytes that are being written. A hostile peer in another domain that writes them
/// anyway only changes the bytes we copy (some mix of old and new values): no reference to them
/// exists that it could invalidate. Within one process, Rust's memory model calls such a copy,
/// racing another thread's write, a data race; only test code that plays a hostile peer does
/// that on purpose. This is the stance of vm-memory and of shared-ring code generally: a copy
/// made of per-byte atomics would cost the data path its `memcpy`.
#[derive(Clone, Copy)]
pub struct SharedRegion<'a> {
    base: NonNull<u8>,
    len: usize,
    /// False for memory mapped read-only: every store through the view panics.
    writable: bool,
    _memory: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: the view is an address and a length of memory meant for concurrent use (see
// `from_raw_parts`); every access through it is atomic or a raw copy, whatever thread makes it.
unsafe impl Send for SharedRegion<'_> {}
// SAFETY: as above; `&SharedRegion` gives no more than a copy of the view does.
unsafe impl Sync for SharedRegion<'_> {}

impl fmt::Debug for SharedRegion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

impl<'a> From<&'a mut [u8]> for SharedRegion<'a> {
    /// A view of private memory, borrowed exclusively for `'a` (tests, simulations, a buffer
    /// standing in for a page): no reference to it can exist while the view does.
    fn from(bytes: &'a mut [u8]) -> SharedRegion<'a> {
        let len = bytes.len();
        // SAFETY: the exclusive borrow makes the bytes valid for reads and writes for `'a`, and
        // no other reference to them can be used meanwhile; `as_mut_ptr` is never null.
        unsafe { SharedRegion::from_raw_parts(NonNull::new_unchecked(bytes.as_mut_ptr()), len) }
    }
}

impl<'a> SharedRegion<'a> {
    /// A view of the `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// For all of `'a`:
    /// - `base` must be valid for reads and writes of `len` bytes, within one allocation or
    ///   mapping (for memory mapped read-only, use
    ///   [`from_raw_parts_read_only`](Self::from_raw_parts_read_only));
    /// - the memory must stay mapped, and is not freed or reused for anything else;
    /// - nobody accesses it through Rust references (`&[u8]`, `&mut T`); other parties, in this
    ///   process or another domain, may read and write it at any moment with atomics or raw copies.
    ///
    /// No alignment is required of `base`: each multi-byte atomic checks its own address.
    #[inline]
    pub const unsafe fn from_raw_parts(base: NonNull<u8>, len: usize) -> SharedRegion<'a> {
        SharedRegion {
            base,
            len,
            writable: true,
            _memory: PhantomData,
        }
    }

    /// A view of the `len` bytes at `base`, which may be mapped read-only: every store,
    /// read-modify-write, copy in or fill through it panics instead of faulting.
    ///
    /// # Safety
    ///
    /// As [`from_raw_parts`](Self::from_raw_parts), except that `base` need only be valid for
    /// reads. (Atomic loads of at most a word are plain loads, which read-only memory serves.)
    #[inline]
    pub const unsafe fn from_raw_parts_read_only(
        base: NonNull<u8>,
        len: usize,
    ) -> SharedRegion<'a> {
        SharedRegion {
            base,
            len,
            writable: false,
            _memory: PhantomData,
        }
    }

    /// Whether stores through the view are allowed.
    #[inline]
    pub const fn is_writable(&self) -> bool {
        self.writable
    }

    /// The length in bytes.
    #[inline]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte: for identification and comparison (alignment, logs), not
    /// for access, which goes through the methods.
    #[inline]
    pub const fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// The `len` bytes at `offset`, as a view of their own (offsets count from its start).
    ///
    /// Panics if they are not all inside this region.
    #[inline]
    #[track_caller]
    pub fn subregion(&self, offset: usize, len: usize) -> SharedRegion<'a> {
        let base = self.at(offset, len, 1);
        // SAFETY: `at` checked that the `len` bytes at `base` lie inside this region, so what
        // `from_raw_parts` asked of this region holds of them, for the same `'a`. `base` is
        // derived from the non-null `self.base` by an in-bounds offset, so it is not null.
        let sub = unsafe { SharedRegion::from_raw_parts(NonNull::new_unchecked(base), len) };
        SharedRegion {
            writable: self.writable,
            ..sub
        }
    }

    /// As [`at`](Self::at), for a store: panics on a read-only view.
    #[inline(always)]
    #[track_caller]
    fn at_mut(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        if !self.writable {
            read_only(offset, size);
        }
        self.at(offset, size, align)
    }

    /// The address of the `size` bytes at `offset`, checked: inside the region, and aligned to
    /// `align` (a power of two).
    #[inline(always)]
    #[track_caller]
    fn at(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        if offset > self.len || size > self.len - offset {
            out_of_bounds(offset, size, self.len);
        }
        // SAFETY: `offset <= len` (checked above), and the region is `len` bytes of one
        // allocation or mapping (`from_raw_parts`), so the result is inside it or one past it.
        let ptr = unsafe { self.base.as_ptr().add(offset) };
        if ptr.addr() & (align - 1) != 0 {
            misaligned(offset, size, ptr.addr());
        }
        ptr
    }

    /// Load the byte at `offset` atomically.
    ///
    /// Panics if `offset` is outside the region, or if `order` is `Release` or `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn load_u8(&self, offset: usize, order: Ordering) -> u8 {
        let ptr = self.at(offset, 1, 1);
        // SAFETY: the byte is in the region (checked), valid for `'a`; an atomic permits the
        // other parties' concurrent accesses, and the reference lives only for this load.
        unsafe { AtomicU8::from_ptr(ptr) }.load(order)
    }

    /// Load the 16-bit word at `offset` atomically (native byte order).
    ///
    /// Panics if it is outside the region or its address is not 2-aligned, or if `order` is
    /// `Release` or `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        let ptr = self.at(offset, 2, 2);
        // SAFETY: in the region and 2-aligned (checked); as in `load_u8`.
        unsafe { AtomicU16::from_ptr(ptr.cast()) }.load(order)
    }

    /// Load the 32-bit word at `offset` atomically (native byte order).
    ///
    /// Panics if it is outside the region or its address is not 4-aligned, or if `order` is
    /// `Release` or `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        let ptr = self.at(offset, 4, 4);
        // SAFETY: in the region and 4-aligned (checked); as in `load_u8`.
        unsafe { AtomicU32::from_ptr(ptr.cast()) }.load(order)
    }

    /// Store a byte at `offset` atomically.
    ///
    /// Panics if `offset` is outside the region, or if `order` is `Acquire` or `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn store_u8(&self, offset: usize, value: u8, order: Ordering) {
        let ptr = self.at_mut(offset, 1, 1);
        // SAFETY: as in `load_u8`; the region is valid for writes (`from_raw_parts`).
        unsafe { AtomicU8::from_ptr(ptr) }.store(value, order);
    }

    /// Store a 16-bit word at `offset` atomically (native byte order).
    ///
    /// Panics as [`load_u16`](Self::load_u16) does for the place, or if `order` is `Acquire` or
    /// `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        let ptr = self.at_mut(offset, 2, 2);
        // SAFETY: as in `load_u16`; the region is valid for writes.
        unsafe { AtomicU16::from_ptr(ptr.cast()) }.store(value, order);
    }

    /// Store a 32-bit word at `offset` atomically (native byte order).
    ///
    /// Panics as [`load_u32`](Self::load_u32) does for the place, or if `order` is `Acquire` or
    /// `AcqRel`.
    #[inline]
    #[track_caller]
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        let ptr = self.at_mut(offset, 4, 4);
        // SAFETY: as in `load_u32`; the region is valid for writes.
        unsafe { AtomicU32::from_ptr(ptr.cast()) }.store(value, order);
    }

    /// Atomically replace the 16-bit word at `offset` with `new` if it holds `current`:
    /// `Ok(current)` if it did, `Err(actual)` with the value found otherwise (a grant entry's
    /// flags are ended this way, so that the grantee's mapping cannot slip in between).
    ///
    /// Panics as [`store_u16`](Self::store_u16) does for the place.
    #[inline]
    #[track_caller]
    pub fn compare_exchange_u16(
        &self,
        offset: usize,
        current: u16,
        new: u16,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u16, u16> {
        let ptr = self.at_mut(offset, 2, 2);
        // SAFETY: as in `store_u16`.
        unsafe { AtomicU16::from_ptr(ptr.cast()) }.compare_exchange(current, new, success, failure)
    }

    /// Atomically OR `bits` into the byte at `offset`; returns the previous value.
    ///
    /// Panics if `offset` is outside the region.
    #[inline]
    #[track_caller]
    pub fn fetch_or_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        let ptr = self.at_mut(offset, 1, 1);
        // SAFETY: as in `store_u8`.
        unsafe { AtomicU8::from_ptr(ptr) }.fetch_or(bits, order)
    }

    /// Atomically AND `bits` into the byte at `offset` (`!bit` clears a bit); returns the
    /// previous value.
    ///
    /// Panics if `offset` is outside the region.
    #[inline]
    #[track_caller]
    pub fn fetch_and_u8(&self, offset: usize, bits: u8, order: Ordering) -> u8 {
        let ptr = self.at_mut(offset, 1, 1);
        // SAFETY: as in `store_u8`.
        unsafe { AtomicU8::from_ptr(ptr) }.fetch_and(bits, order)
    }

    /// Atomically replace the byte at `offset`; returns the previous value.
    ///
    /// Panics if `offset` is outside the region.
    #[inline]
    #[track_caller]
    pub fn swap_u8(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        let ptr = self.at_mut(offset, 1, 1);
        // SAFETY: as in `store_u8`.
        unsafe { AtomicU8::from_ptr(ptr) }.swap(value, order)
    }

    /// Copy the `out.len()` bytes at `offset` into private memory (a raw copy, not atomic).
    ///
    /// Panics if they are not all inside the region.
    #[inline]
    #[track_caller]
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        let src = self.at(offset, out.len(), 1);
        // SAFETY: the source range is inside the region (checked), valid for reads for `'a`.
        // `out` is a Rust reference, so it cannot point into the region (nobody holds references
        // to it, by `from_raw_parts`' contract): the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) }
    }

    /// Copy `bytes` from private memory into the region at `offset` (a raw copy, not atomic).
    ///
    /// Panics if the destination is not all inside the region.
    #[inline]
    #[track_caller]
    pub fn copy_in(&self, offset: usize, bytes: &[u8]) {
        let dst = self.at_mut(offset, bytes.len(), 1);
        // SAFETY: the destination is inside the region (checked), valid for writes for `'a`;
        // `bytes` cannot point into the region, as in `copy_out`.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    /// Set the `len` bytes at `offset` to `value` (raw writes, not atomic).
    ///
    /// Panics if they are not all inside the region.
    #[inline]
    #[track_caller]
    pub fn fill(&self, offset: usize, len: usize, value: u8) {
        let dst = self.at_mut(offset, len, 1);
        // SAFETY: the range is inside the region (checked), valid for writes for `'a`.
        unsafe { ptr::write_bytes(dst, value, len) }
    }

    /// Set every byte of the region to 0 (raw writes, not atomic).
    #[inline]
    pub fn zero(&self) {
        self.fill(0, self.len, 0);
    }
}

/// Zero-copy I/O between shared memory and a file descriptor (feature `std`): the kernel copies
/// straight between the region and the socket, pipe or file, with no private buffer in between
/// (vm-memory's `ReadVolatile`/`WriteVolatile`). As with a raw copy, no reference to the memory
/// is formed: the kernel is given its address and length.
#[cfg(feature = "std")]
pub mod fd {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use super::SharedRegion;

    /// The most regions one call takes (a ring's two runs, before and after its wrap).
    pub const MAX_REGIONS: usize = 2;

    fn iovecs(regions: &[SharedRegion<'_>]) -> ([libc::iovec; MAX_REGIONS], usize) {
        assert!(
            regions.len() <= MAX_REGIONS,
            "at most {MAX_REGIONS} regions per call, {} given",
            regions.len()
        );
        let mut iov = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; MAX_REGIONS];
        let mut count = 0;
        for region in regions.iter().filter(|r| !r.is_empty()) {
            iov[count] = libc::iovec {
                iov_base: region.as_ptr().as_ptr().cast(),
                iov_len: region.len(),
            };
            count += 1;
        }
        (iov, count)
    }

    /// One `readv(2)` from `fd` into `regions`, filling them in order: the bytes read, 0 at the
    /// end of the input (or when the regions are empty). Retries on `EINTR`.
    ///
    /// Panics if a region is read-only, or more than [`MAX_REGIONS`] are given.
    pub fn read_into(fd: BorrowedFd<'_>, regions: &[SharedRegion<'_>]) -> io::Result<usize> {
        if let Some(r) = regions.iter().find(|r| !r.is_writable() && !r.is_empty()) {
            super::read_only(0, r.len());
        }
        let (iov, count) = iovecs(regions);
        if count == 0 {
            return Ok(0);
        }
        loop {
            // SAFETY: each iovec is a region's address and length: valid for writes for the
            // regions' lifetime, which covers the call (`from_raw_parts`' contract; read-only
            // regions were refused above), and not reachable through any Rust reference. The
            // kernel writes into them as a raw copy would; `iov` holds `count` initialised
            // entries.
            let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// One `writev(2)` to `fd` from `regions`, in order: the bytes written. Retries on `EINTR`.
    ///
    /// Panics if more than [`MAX_REGIONS`] are given.
    pub fn write_from(fd: BorrowedFd<'_>, regions: &[SharedRegion<'_>]) -> io::Result<usize> {
        let (iov, count) = iovecs(regions);
        if count == 0 {
            return Ok(0);
        }
        loop {
            // SAFETY: each iovec is a region's address and length, valid for reads for the
            // regions' lifetime, which covers the call; the kernel only reads them.
            let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixStream;

        #[test]
        fn bytes_move_between_a_socket_and_two_regions_with_no_buffer() {
            let (mut a, b) = UnixStream::pair().unwrap();
            let mut page = [0u8; 64];
            let region = SharedRegion::from(&mut page[..]);
            let runs = [region.subregion(60, 4), region.subregion(0, 6)];
            a.write_all(b"0123456789").unwrap();
            assert_eq!(read_into(b.as_fd(), &runs).unwrap(), 10);
            let mut out = [0u8; 4];
            runs[0].copy_out(0, &mut out);
            assert_eq!(&out, b"0123");
            let mut out = [0u8; 6];
            runs[1].copy_out(0, &mut out);
            assert_eq!(&out, b"456789");
            assert_eq!(write_from(b.as_fd(), &runs).unwrap(), 10);
            let mut back = [0u8; 10];
            a.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"0123456789");
            drop(a);
            assert_eq!(read_into(b.as_fd(), &runs).unwrap(), 0, "end of input");
            assert_eq!(read_into(b.as_fd(), &[]).unwrap(), 0, "no room");
        }

        #[test]
        #[should_panic(expected = "read-only shared region")]
        fn a_read_into_a_read_only_region_panics() {
            let (_a, b) = UnixStream::pair().unwrap();
            let mut page = [0u8; 8];
            let writable = SharedRegion::from(&mut page[..]);
            // SAFETY: the bytes are valid for reads (and writes) while `page` lives.
            let read_only = unsafe { SharedRegion::from_raw_parts_read_only(writable.as_ptr(), 8) };
            let _ = read_into(b.as_fd(), &[read_only]);
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn read_only(offset: usize, size: usize) -> ! {
    panic!("a store of {size} bytes at offset {offset} into a read-only shared region")
}

#[cold]
#[inline(never)]
#[track_caller]
fn out_of_bounds(offset: usize, size: usize, len: usize) -> ! {
    panic!(
        "shared-memory access of {size} bytes at offset {offset} is outside the region of {len} \
         bytes"
    )
}

#[cold]
#[inline(never)]
#[track_caller]
fn misaligned(offset: usize, size: usize, addr: usize) -> ! {
    panic!(
        "shared-memory atomic of {size} bytes at offset {offset} (address {addr:#x}) is not \
         aligned to {size}"
    )
}

/// Whatever keeps a shared region valid while it lives, and lends views of it for as long as it
/// is borrowed: a mapping, a handle that owns one (an `Arc` of it), or a region itself.
///
/// A structure that holds the owner, rather than an address, cannot reach the memory after it
/// is unmapped: the view it gets is borrowed from the owner.
pub trait AsSharedRegion {
    /// The region, borrowed from `self`.
    fn region(&self) -> SharedRegion<'_>;
}

impl AsSharedRegion for SharedRegion<'_> {
    #[inline]
    fn region(&self) -> SharedRegion<'_> {
        *self
    }
}

impl<T: AsSharedRegion + ?Sized> AsSharedRegion for &T {
    #[inline]
    fn region(&self) -> SharedRegion<'_> {
        (**self).region()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(8))]
    struct Buf([u8; 64]);

    #[test]
    fn loads_stores_and_rmws_reach_the_bytes() {
        let mut buf = Buf([0; 64]);
        let region = SharedRegion::from(&mut buf.0[..]);
        region.store_u32(4, 0x0102_0304, Ordering::SeqCst);
        region.store_u16(10, 0xbeef, Ordering::Relaxed);
        region.store_u8(63, 7, Ordering::Release);
        assert_eq!(region.load_u32(4, Ordering::Acquire), 0x0102_0304);
        assert_eq!(region.load_u16(10, Ordering::Relaxed), 0xbeef);
        assert_eq!(region.fetch_or_u8(63, 0x80, Ordering::SeqCst), 7);
        assert_eq!(region.fetch_and_u8(63, !1, Ordering::SeqCst), 0x87);
        assert_eq!(region.swap_u8(63, 3, Ordering::SeqCst), 0x86);
        assert_eq!(region.load_u8(63, Ordering::SeqCst), 3);
        assert_eq!(
            region.compare_exchange_u16(10, 0xbeef, 1, Ordering::SeqCst, Ordering::SeqCst),
            Ok(0xbeef)
        );
        assert_eq!(
            region.compare_exchange_u16(10, 0xbeef, 2, Ordering::SeqCst, Ordering::SeqCst),
            Err(1)
        );
        let mut out = [0u8; 4];
        region.copy_out(4, &mut out);
        assert_eq!(u32::from_ne_bytes(out), 0x0102_0304);
        region.fill(0, 64, 0xaa);
        region.subregion(60, 4).copy_in(0, b"wxyz");
        region.subregion(60, 4).copy_out(0, &mut out);
        assert_eq!(&out, b"wxyz");
        region.subregion(32, 32).zero();
        assert_eq!(region.load_u8(31, Ordering::Relaxed), 0xaa);
        assert_eq!(region.load_u32(60, Ordering::Relaxed), 0);
        // Empty accesses at the end are in bounds.
        region.copy_in(64, &[]);
        assert!(region.subregion(64, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "outside the region of 64 bytes")]
    fn a_word_past_the_end_panics() {
        let mut buf = Buf([0; 64]);
        SharedRegion::from(&mut buf.0[..]).load_u32(64, Ordering::Relaxed);
    }

    #[test]
    #[should_panic(expected = "outside the region of 4 bytes")]
    fn a_copy_past_a_subregion_panics() {
        let mut buf = Buf([0; 64]);
        let region = SharedRegion::from(&mut buf.0[..]);
        region.subregion(8, 4).copy_in(2, b"abc");
    }

    #[test]
    #[should_panic(expected = "outside the region")]
    fn an_offset_that_overflows_panics() {
        let mut buf = Buf([0; 64]);
        let region = SharedRegion::from(&mut buf.0[..]);
        region.copy_out(usize::MAX, &mut [0u8; 2]);
    }

    #[test]
    #[should_panic(expected = "is not aligned to 4")]
    fn a_misaligned_word_panics() {
        let mut buf = Buf([0; 64]);
        SharedRegion::from(&mut buf.0[..]).store_u32(2, 1, Ordering::Relaxed);
    }

    #[test]
    #[should_panic(expected = "read-only shared region")]
    fn a_store_into_a_read_only_view_panics() {
        let mut buf = Buf([0; 64]);
        let writable = SharedRegion::from(&mut buf.0[..]);
        // SAFETY: the bytes are valid for reads (and writes) while `buf` lives.
        let read_only = unsafe { SharedRegion::from_raw_parts_read_only(writable.as_ptr(), 64) };
        assert_eq!(read_only.subregion(8, 8).load_u8(0, Ordering::Relaxed), 0);
        read_only.subregion(8, 8).store_u8(0, 1, Ordering::Relaxed);
    }

    #[test]
    fn owners_lend_their_region() {
        let mut buf = Buf([0; 64]);
        let region = SharedRegion::from(&mut buf.0[..]);
        fn first<M: AsSharedRegion>(owner: M) -> u8 {
            owner.region().load_u8(0, Ordering::Relaxed)
        }
        region.store_u8(0, 9, Ordering::Relaxed);
        assert_eq!(first(region), 9);
        let borrowed: &SharedRegion<'_> = &region;
        assert_eq!(first(borrowed), 9);
    }
}
