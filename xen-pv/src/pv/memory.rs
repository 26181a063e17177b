//! The guest's memory: the page pool, the heap and the boot stack (all in `.bss`, which the
//! domain builder maps and zeroes), and the translation between addresses and frames.
//!
//! The start-of-day region is mapped at VA = pfn * 4096 (no VIRT_BASE), and a PV guest's page
//! tables hold machine frames: `mfn_list[pfn]` (the p2m, built by the domain builder) gives the
//! machine frame of a pfn, the read-only M2P table at `MACH2PHYS_VIRT_START` the pfn of a frame.
//!
//! The pool's pages are the guest's "VA slots": each is mapped (its L1 table exists), so it can
//! be granted to a peer as it is, or have its entry pointed at another frame (shared_info, a
//! grant-table frame, a foreign grant) and back.

use core::ptr::addr_of;

use crate::abi::{MACH2PHYS_VIRT_START, PAGE_SHIFT, PAGE_SIZE, PTE_KERNEL_RW};
use crate::error::{PvError, Result};

/// Pages in the pool: 6 MiB (two 1 MiB vchan rings need 513; shared_info and the grant table
/// take 5 for good).
pub const POOL_PAGES: usize = 1536;
/// The heap's size.
pub const HEAP_BYTES: usize = 2 << 20;
/// The boot stack's size (its page below is unmapped: an overflow faults).
pub const STACK_BYTES: usize = 64 << 10;

/// Page-aligned pages.
#[repr(C, align(4096))]
pub struct Pages<const N: usize>([[u8; PAGE_SIZE]; N]);

/// The page pool. Reached only by address (`pool_va`), never by reference.
static mut POOL: Pages<POOL_PAGES> = Pages([[0; PAGE_SIZE]; POOL_PAGES]);

/// The heap's memory, handed to the allocator once at boot.
pub(crate) static mut HEAP: Pages<{ HEAP_BYTES / PAGE_SIZE }> =
    Pages([[0; PAGE_SIZE]; HEAP_BYTES / PAGE_SIZE]);

/// The boot stack: a guard page, then the stack proper (`_start` loads the top).
#[no_mangle]
pub(crate) static mut XEN_PV_BOOT_STACK: Pages<{ 1 + STACK_BYTES / PAGE_SIZE }> =
    Pages([[0; PAGE_SIZE]; 1 + STACK_BYTES / PAGE_SIZE]);

/// The virtual address of pool page `page`.
///
/// Panics if `page` is not in the pool (a bug of the caller's book-keeping).
pub fn pool_va(page: usize) -> usize {
    assert!(page < POOL_PAGES, "pool page {page} out of range");
    addr_of!(POOL) as usize + page * PAGE_SIZE
}

/// The virtual address of the boot stack's guard page.
pub fn stack_guard_va() -> usize {
    addr_of!(XEN_PV_BOOT_STACK) as usize
}

/// The p2m (pfn to machine frame) and its inverse, for the start-of-day region.
#[derive(Debug, Clone, Copy)]
pub struct P2m {
    mfn_list: *const u64,
    nr_pages: usize,
}

impl P2m {
    /// The p2m the domain builder left at `mfn_list` (a VA) for `nr_pages` pages.
    ///
    /// # Safety
    ///
    /// `mfn_list` must be start_info's: `nr_pages` `u64`s, mapped and never changed (this
    /// crate does no ballooning).
    pub unsafe fn new(mfn_list: u64, nr_pages: u64) -> P2m {
        P2m {
            mfn_list: mfn_list as *const u64,
            nr_pages: nr_pages as usize,
        }
    }

    /// The machine frame of pfn `pfn`.
    pub fn mfn(&self, pfn: usize) -> Result<u64> {
        if pfn >= self.nr_pages {
            return Err(PvError::BadStartInfo("a pfn beyond the domain's pages"));
        }
        // SAFETY: `pfn < nr_pages`, so the entry is inside the p2m, which `new`'s contract
        // keeps mapped and unchanged.
        Ok(unsafe { self.mfn_list.add(pfn).read() })
    }

    /// The machine frame behind virtual address `va` of the start-of-day region.
    pub fn mfn_of_va(&self, va: usize) -> Result<u64> {
        self.mfn(va >> PAGE_SHIFT)
    }

    /// The page-table entry that maps `va`'s own frame read-write again.
    pub fn own_pte(&self, va: usize) -> Result<u64> {
        Ok(self.mfn_of_va(va)? << PAGE_SHIFT | PTE_KERNEL_RW)
    }

    /// The virtual address at which the start-of-day region maps machine frame `mfn` (the
    /// console and xenstore pages), checked both ways.
    pub fn va_of_mfn(&self, mfn: u64) -> Result<usize> {
        let m2p = MACH2PHYS_VIRT_START as *const u64;
        // SAFETY: Xen maps the M2P table read-only into every PV guest at this address, one
        // u64 per machine frame of the host; `mfn` is a frame start_info names, so it is one.
        let pfn = unsafe { m2p.add(mfn as usize).read_volatile() } as usize;
        if pfn >= self.nr_pages || self.mfn(pfn)? != mfn {
            return Err(PvError::BadStartInfo("a frame that is not the domain's"));
        }
        Ok(pfn << PAGE_SHIFT)
    }
}
