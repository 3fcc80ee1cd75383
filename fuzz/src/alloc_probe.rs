//! A global allocator that remembers the largest single allocation each
//! thread made since its last [`reset`], so a target can check that a
//! parser refused a size before allocating for it.
//!
//! Install it in a binary with
//! `#[global_allocator] static A: vxnet_fuzz::alloc_probe::PeakAlloc = PeakAlloc;`;
//! without that, [`peak`] answers `None`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// [`System`], noting each allocation's size.
pub struct PeakAlloc;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates, so the allocator may use it.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    // During thread teardown the slot may be gone; then nothing is noted.
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; `note` neither allocates nor
// unwinds.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts a new measurement on this thread.
pub fn reset() {
    let _ = PEAK.try_with(|p| p.set(0));
}

/// The largest allocation on this thread since [`reset`], in bytes;
/// `None` when [`PeakAlloc`] is not the global allocator.
pub fn peak() -> Option<usize> {
    if INSTALLED.load(Ordering::Relaxed) {
        PEAK.try_with(Cell::get).ok()
    } else {
        None
    }
}
