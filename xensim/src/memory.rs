//! Granted memory and the mappings of it, shared by both front-ends.
//!
//! A share's pages are one [`GrantedMemory`]: a memfd with a read-write and a read-only open file
//! description. A mapping ([`Region`]) of refs, from one share or several, is one reserved address
//! range into which each run of consecutive pages of one file is mapped with `MAP_FIXED`, so the
//! peer sees one contiguous region as with gntdev; a read-only mapping is made from the read-only
//! description, so it is `PROT_READ` and cannot be made writable. The cross-process host passes
//! the descriptors to the process that maps; in process they are mapped directly. An unmap
//! notification's clear is a one-byte `pwrite` into the file, coherent with every shared mapping.
//!
//! The stitched range is mapped with nix's `mmap` by hand: `memmap2` cannot place a mapping at a
//! fixed address inside a reservation.
//!
//! Under Miri (which has neither memfd nor `mmap` of files) the memory is a page-aligned heap
//! block and a mapping points into it: it must then name consecutive pages of one share, and a
//! read-only mapping is not write-protected. Everything else is the same.

use std::io;

use xen_types::PAGE_SIZE;

pub use imp::{GrantedMemory, Region};

/// The pages a mapping is made of, in order: each is a page of one granted memory object.
pub type Pages<'a> = &'a [(std::sync::Arc<GrantedMemory>, usize)];

fn einval() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EINVAL)
}

#[cfg(not(miri))]
mod imp {
    use std::fs::File;
    use std::num::NonZeroUsize;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    use std::os::unix::fs::{FileExt, PermissionsExt};
    use std::ptr::NonNull;

    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

    use super::{einval, io, Pages, PAGE_SIZE};

    /// The pages of one share: a memfd, opened read-write and (again) read-only.
    #[derive(Debug)]
    pub struct GrantedMemory {
        rw: File,
        ro: File,
        pages: usize,
    }

    impl GrantedMemory {
        /// `pages` zeroed pages.
        pub fn new(pages: usize) -> io::Result<GrantedMemory> {
            let len = pages.checked_mul(PAGE_SIZE).ok_or_else(einval)?;
            let rw = File::from(memfd_create(c"xensim-grant", MFdFlags::MFD_CLOEXEC)?);
            rw.set_len(len as u64)?;
            // A second open of the same file, read-only: mappings made from it cannot be made
            // writable (mprotect refuses PROT_WRITE on a read-only description).
            let ro = File::open(format!("/proc/self/fd/{}", rw.as_raw_fd()))?;
            // Then nobody opens it for writing again through /proc (nobody but root, who
            // ignores file modes): a process given the read-only description cannot upgrade it.
            rw.set_permissions(std::fs::Permissions::from_mode(0o400))?;
            Ok(GrantedMemory { rw, ro, pages })
        }

        /// The number of pages.
        pub fn pages(&self) -> usize {
            self.pages
        }

        /// Carry out an unmap notification: byte `offset` becomes 0 in every mapping.
        pub fn clear_byte(&self, offset: usize) {
            // A one-byte write into the page cache: coherent with every MAP_SHARED mapping. It
            // cannot fail for an offset inside the file, which the model checked.
            let _ = self.rw.write_at(&[0], offset as u64);
        }

        /// The descriptor to hand a process that maps the memory writable or read-only.
        pub fn file(&self, writable: bool) -> BorrowedFd<'_> {
            if writable {
                self.rw.as_fd()
            } else {
                self.ro.as_fd()
            }
        }
    }

    /// An address range this process mapped; unmapped on drop unless released.
    #[derive(Debug)]
    pub struct Region {
        ptr: NonNull<u8>,
        len: usize,
        unmap_on_drop: bool,
    }

    // SAFETY: the region is plain shared memory with no thread affinity; it is only reached
    // through raw pointers by the protocol's rules.
    unsafe impl Send for Region {}
    // SAFETY: as above; `&Region` exposes only the pointer value.
    unsafe impl Sync for Region {}

    fn protection(writable: bool) -> ProtFlags {
        if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        }
    }

    impl Region {
        /// Map `pages` of the files `file_of` gives for them, contiguously, writable or not.
        /// `file_of(i)` is the descriptor of the memory behind `pages[i]`; pages of one memory
        /// in a row become one `mmap`.
        pub fn map_files<'f>(
            pages: &[(usize, usize)],
            file_of: impl Fn(usize) -> io::Result<BorrowedFd<'f>>,
            writable: bool,
        ) -> io::Result<Region> {
            let len = NonZeroUsize::new(pages.len() * PAGE_SIZE).ok_or_else(einval)?;
            // SAFETY: reserving fresh address space chosen by the kernel; it aliases no Rust
            // object.
            let base = unsafe {
                mmap_anonymous(
                    None,
                    len,
                    ProtFlags::PROT_NONE,
                    MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
                )
            }?;
            let region = Region {
                ptr: base.cast(),
                len: len.get(),
                unmap_on_drop: true,
            };
            let mut i = 0;
            while i < pages.len() {
                // Coalesce a run of consecutive pages of one file into one mmap.
                let (file, first) = pages[i];
                let mut run = 1;
                while i + run < pages.len() && pages[i + run] == (file, first + run) {
                    run += 1;
                }
                let fd = file_of(file)?;
                let offset = nix::libc::off_t::try_from(first * PAGE_SIZE).map_err(|_| einval())?;
                let at = region.ptr.as_ptr() as usize + i * PAGE_SIZE;
                // SAFETY: the target range [base + i pages, + run pages) lies inside our
                // reservation, which `region` owns; MAP_FIXED replaces only that part of it.
                unsafe {
                    mmap(
                        NonZeroUsize::new(at),
                        NonZeroUsize::new(run * PAGE_SIZE).ok_or_else(einval)?,
                        protection(writable),
                        MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                        fd,
                        offset,
                    )
                }?;
                i += run;
            }
            Ok(region)
        }

        /// Map `pages` (of memory this process holds) contiguously; consecutive pages of one
        /// memory become one `mmap`. `EINVAL` for a page beyond its memory.
        pub fn map(pages: Pages<'_>, writable: bool) -> io::Result<Region> {
            let mut placement = Vec::with_capacity(pages.len());
            for (i, (memory, page)) in pages.iter().enumerate() {
                if *page >= memory.pages() {
                    return Err(einval());
                }
                // Name each memory by its first position, so that runs of it coalesce.
                let first = pages[..i]
                    .iter()
                    .position(|(m, _)| std::sync::Arc::ptr_eq(m, memory))
                    .unwrap_or(i);
                placement.push((first, *page));
            }
            Region::map_files(&placement, |i| Ok(pages[i].0.file(writable)), writable)
        }

        /// The first byte.
        #[inline]
        pub fn ptr(&self) -> NonNull<u8> {
            self.ptr
        }

        /// The length in bytes (a non-zero multiple of [`PAGE_SIZE`]).
        #[inline]
        pub fn len(&self) -> usize {
            self.len
        }

        /// Leave the range mapped when this is dropped: for a caller (the C `xengntshr_close`)
        /// whose user may already have unmapped it with plain `munmap`.
        pub fn keep_mapped(&mut self) {
            self.unmap_on_drop = false;
        }

        /// Unmap now (idempotent): a mapping must be gone before its end is reported.
        pub fn unmap(&mut self) {
            if std::mem::take(&mut self.unmap_on_drop) {
                // SAFETY: the range was mapped by `map_files` and nothing else unmaps it (the
                // flag, now cleared, says we still own it). It fails only for a range that is
                // not mapped, which cannot be.
                let _ = unsafe { munmap(self.ptr.cast(), self.len) };
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            self.unmap();
        }
    }
}

#[cfg(miri)]
mod imp {
    use std::alloc::{self, Layout};
    use std::ptr::NonNull;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use xen_types::memory::SharedRegion;

    use super::{einval, io, Pages, PAGE_SIZE};

    /// The pages of one share, on the heap (Miri has no memfd).
    #[derive(Debug)]
    pub struct GrantedMemory {
        ptr: NonNull<u8>,
        pages: usize,
    }

    // SAFETY: plain memory with no thread affinity, reached only through raw pointers.
    unsafe impl Send for GrantedMemory {}
    // SAFETY: as above.
    unsafe impl Sync for GrantedMemory {}

    fn layout(pages: usize) -> io::Result<Layout> {
        pages
            .checked_mul(PAGE_SIZE)
            .and_then(|size| Layout::from_size_align(size, PAGE_SIZE).ok())
            .ok_or_else(einval)
    }

    impl GrantedMemory {
        /// `pages` zeroed pages.
        pub fn new(pages: usize) -> io::Result<GrantedMemory> {
            let layout = layout(pages.max(1))?;
            // SAFETY: `layout` has a non-zero size.
            let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or_else(einval)?;
            Ok(GrantedMemory { ptr, pages })
        }

        /// The number of pages.
        pub fn pages(&self) -> usize {
            self.pages
        }

        /// Carry out an unmap notification: byte `offset` becomes 0.
        pub fn clear_byte(&self, offset: usize) {
            if offset < self.pages * PAGE_SIZE {
                // SAFETY: the whole allocation, which lives as long as `self` (so for the view's
                // borrow); shared bytes are only accessed atomically or by raw copies.
                let region =
                    unsafe { SharedRegion::from_raw_parts(self.ptr, self.pages * PAGE_SIZE) };
                // ORDERING: SeqCst, as the kernel's clear is followed by the event.
                region.store_u8(offset, 0, Ordering::SeqCst);
            }
        }
    }

    impl Drop for GrantedMemory {
        fn drop(&mut self) {
            if let Ok(layout) = layout(self.pages.max(1)) {
                // SAFETY: allocated in `new` with this same layout, freed only here.
                unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
        }
    }

    /// A mapping: a pointer into the memory it keeps alive.
    #[derive(Debug)]
    pub struct Region {
        memory: Arc<GrantedMemory>,
        first: usize,
        len: usize,
    }

    impl Region {
        /// Map `pages` contiguously: under Miri they must be consecutive pages of one memory.
        pub fn map(pages: Pages<'_>, _writable: bool) -> io::Result<Region> {
            let (memory, first) = pages.first().ok_or_else(einval)?;
            if first + pages.len() > memory.pages() {
                return Err(einval());
            }
            let consecutive = pages
                .iter()
                .enumerate()
                .all(|(i, (m, p))| Arc::ptr_eq(m, memory) && *p == first + i);
            if !consecutive {
                return Err(einval());
            }
            Ok(Region {
                memory: Arc::clone(memory),
                first: *first,
                len: pages.len() * PAGE_SIZE,
            })
        }

        /// The first byte.
        #[inline]
        pub fn ptr(&self) -> NonNull<u8> {
            // SAFETY: `first` is a page of the block (checked against the grants), so the offset
            // stays inside the allocation.
            unsafe { self.memory.ptr.add(self.first * PAGE_SIZE) }
        }

        /// The length in bytes (a non-zero multiple of [`PAGE_SIZE`]).
        #[inline]
        pub fn len(&self) -> usize {
            self.len
        }

        /// Nothing to unmap.
        pub fn unmap(&mut self) {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    use std::sync::atomic::Ordering;
    use xen_types::memory::SharedRegion;

    fn view(region: &Region) -> SharedRegion<'_> {
        // SAFETY: the mapping is valid for its whole length while `region` lives, which the
        // returned view borrows; it is only reached through the view's atomics.
        unsafe { SharedRegion::from_raw_parts(region.ptr(), region.len()) }
    }

    fn byte(region: &Region, offset: usize) -> u8 {
        view(region).load_u8(offset, Ordering::SeqCst)
    }

    fn set_byte(region: &Region, offset: usize, value: u8) {
        view(region).store_u8(offset, value, Ordering::SeqCst)
    }

    #[test]
    fn a_mapping_sees_the_memory_and_a_cleared_byte() {
        let memory = Arc::new(GrantedMemory::new(2).unwrap());
        let a = Region::map(&[(Arc::clone(&memory), 0), (Arc::clone(&memory), 1)], true).unwrap();
        let b = Region::map(&[(Arc::clone(&memory), 1)], true).unwrap();
        set_byte(&a, PAGE_SIZE + 5, 42);
        assert_eq!(byte(&b, 5), 42);
        memory.clear_byte(PAGE_SIZE + 5);
        assert_eq!(byte(&a, PAGE_SIZE + 5), 0);
    }

    #[test]
    fn a_page_beyond_its_memory_is_refused() {
        let memory = Arc::new(GrantedMemory::new(1).unwrap());
        let err = Region::map(&[(Arc::clone(&memory), 1)], true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EINVAL));
    }

    #[cfg(not(miri))]
    #[test]
    fn pages_of_two_memories_are_stitched_in_the_order_asked() {
        let one = Arc::new(GrantedMemory::new(1).unwrap());
        let two = Arc::new(GrantedMemory::new(2).unwrap());
        let first = Region::map(&[(Arc::clone(&one), 0)], true).unwrap();
        let second = Region::map(&[(Arc::clone(&two), 0), (Arc::clone(&two), 1)], true).unwrap();
        set_byte(&first, 0, 1);
        set_byte(&second, PAGE_SIZE, 2);
        let stitched = Region::map(&[(Arc::clone(&two), 1), (Arc::clone(&one), 0)], false).unwrap();
        assert_eq!(byte(&stitched, 0), 2);
        assert_eq!(byte(&stitched, PAGE_SIZE), 1);
    }
}
