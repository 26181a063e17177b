//! The global allocator: a first-fit free list (`linked_list_allocator`) over the `.bss` heap.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{addr_of_mut, NonNull};

use linked_list_allocator::Heap;

use super::memory::{HEAP, HEAP_BYTES};

/// The heap, behind a cell: one vCPU, no interrupt handlers, and the allocator never calls
/// back into itself, so no two accesses ever overlap.
struct GuestHeap(UnsafeCell<Heap>);

// SAFETY: the guest runs on one vCPU with upcalls masked (no interrupt handler can run), so
// the heap is only ever reached by one flow of control at a time.
unsafe impl Sync for GuestHeap {}

#[global_allocator]
static ALLOCATOR: GuestHeap = GuestHeap(UnsafeCell::new(Heap::empty()));

/// Give the heap its memory; called once, first thing at boot.
pub(crate) fn init() {
    // SAFETY: called once at boot, before any allocation; HEAP is a .bss array used by nothing
    // else, handed over whole by address (no reference to it exists).
    unsafe { (*ALLOCATOR.0.get()).init(addr_of_mut!(HEAP).cast(), HEAP_BYTES) }
}

/// Bytes of the heap in use.
pub fn used() -> usize {
    // SAFETY: as for `Sync` above: no allocation runs concurrently with this read.
    unsafe { (*ALLOCATOR.0.get()).used() }
}

// SAFETY: allocations come from the free list of memory the allocator owns; layouts are
// honoured by `allocate_first_fit`; access is exclusive (see `Sync` above).
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: exclusive access (see `Sync`).
        let heap = unsafe { &mut *self.0.get() };
        heap.allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: exclusive access (see `Sync`); `ptr` came from `alloc` with this layout (the
        // GlobalAlloc contract), so it is non-null and the allocator's.
        unsafe { (*self.0.get()).deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}
