//! A counting global allocator for the allocation tests (`vchan/tests/alloc.rs` and, by path,
//! `conduit-vchan/tests/tls_alloc.rs`): it counts the allocations and reallocations of the
//! threads that asked to be counted, so the test harness and tests running in parallel are not.
//! Declaring this module installs it as the test binary's global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A count in progress: the allocations of this thread (and of any that call
/// [`count_this_thread`] meanwhile) until [`Count::stop`]. One count at a time in a test binary
/// (another test's counted threads would add to the same total).
pub struct Count {
    _turn: MutexGuard<'static, ()>,
}

impl Count {
    /// Start counting, on this thread.
    pub fn start() -> Count {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        ALLOCATIONS.store(0, Ordering::SeqCst);
        count_this_thread(true);
        Count { _turn: turn }
    }

    /// Stop counting on this thread; the total so far.
    pub fn stop(self) -> usize {
        count_this_thread(false);
        ALLOCATIONS.load(Ordering::SeqCst)
    }
}

/// The allocations `work` makes, counted as by [`Count`].
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub fn allocations_during(work: impl FnOnce()) -> usize {
    let count = Count::start();
    work();
    count.stop()
}

/// Count this thread's allocations from now (`true`) or stop (`false`).
pub fn count_this_thread(on: bool) {
    COUNTED.with(|c| c.set(on));
}

/// Whether this thread's allocations are being counted.
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub fn counting_this_thread() -> bool {
    COUNTED.with(Cell::get)
}
