//! A small, stable index per thread, for per-thread stripes of counters.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's index: unique in the process, handed out in order of first use.
#[inline]
pub(crate) fn thread_index() -> usize {
    THREAD_INDEX.with(|cell| {
        let i = cell.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_THREAD.fetch_add(1, Relaxed);
        cell.set(i);
        i
    })
}
