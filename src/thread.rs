//! A small, dense index per live thread, for per-thread stripes of counters.
//!
//! Indices are handed out on a thread's first use, lowest free first, and given back
//! when the thread exits, so a process whose threads come and go (a blocking pool) keeps
//! using the same few stripes. At any time an index belongs to at most one live thread:
//! that is what lets a stripe owned by one index be written with plain loads and stores
//! (`switch::counts`, `lease`). The hand-over from an exiting thread to the next one goes
//! through a mutex, so the next owner sees every count the previous one wrote.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Indices given back by exited threads, smallest first.
static FREE: Mutex<BinaryHeap<Reverse<usize>>> = Mutex::new(BinaryHeap::new());
/// The next index never handed out.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The value [`index`] returns on a thread that is being torn down (its index is gone):
/// no stripe is exclusively its own.
pub(crate) const NONE: usize = usize::MAX;

// This thread's index, or one of the two markers below: a `const` thread-local without
// drop glue, so reading it is one load (`Slot` below only frees the index at exit).
thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(UNSET) };
}

/// No index taken yet.
const UNSET: usize = usize::MAX;
/// The thread is exiting and gave its index back: [`NONE`] from now on.
const GONE: usize = usize::MAX - 1;

/// Owns the thread's index and gives it back when the thread exits.
struct Slot(usize);

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = INDEX.try_with(|i| i.set(GONE));
        FREE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse(self.0));
    }
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// This thread's index: dense, unique among live threads; [`NONE`] while the thread is
/// exiting.
#[inline]
pub(crate) fn index() -> usize {
    match INDEX.try_with(Cell::get) {
        Ok(i) if i < GONE => i,
        Ok(UNSET) => acquire(),
        _ => NONE,
    }
}

/// This thread's index if it has one; else a value above every index (no index yet,
/// or exiting): callers compare it with their shared stripe's index and take
/// [`index`]'s path when it is not below. One thread-local load.
#[inline(always)]
pub(crate) fn raw_index() -> usize {
    // `UNSET` and `GONE` are both above any index.
    INDEX.try_with(Cell::get).unwrap_or(GONE)
}

#[cold]
fn acquire() -> usize {
    let free = FREE.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let i = match free {
        Some(Reverse(i)) => i,
        None => NEXT.fetch_add(1, Relaxed),
    };
    // The slot's drop (at thread exit) gives the index back; if the thread is already
    // exiting, it is given back at once and this call is the thread's last use of it.
    match SLOT.try_with(|s| *s.borrow_mut() = Some(Slot(i))) {
        Ok(()) => {
            INDEX.with(|c| c.set(i));
            i
        }
        Err(_) => {
            drop(Slot(i));
            NONE
        }
    }
}

/// How many threads get a stripe of their own in per-thread counters (`2 × cores`,
/// between 8 and 64); later threads share one.
pub(crate) fn exclusive_stripes() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    match N.load(Relaxed) {
        0 => {
            let n = std::thread::available_parallelism()
                .map_or(4, |n| n.get())
                .saturating_mul(2)
                .clamp(8, 64);
            N.store(n, Relaxed);
            n
        }
        n => n,
    }
}

/// Per-thread stripes of `T`, each allocated when its thread first asks: one per thread
/// index below [`exclusive_stripes`] (its owner's alone: single-writer counters may be
/// bumped with a plain load and store), and a last one shared by every later thread.
pub(crate) struct Stripes<T> {
    slots: Box<[std::sync::OnceLock<Box<T>>]>,
}

impl<T: Default> Stripes<T> {
    pub(crate) fn new() -> Self {
        Stripes {
            slots: (0..=exclusive_stripes())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    /// This thread's stripe, and whether the thread owns it.
    #[inline]
    pub(crate) fn local(&self) -> (&T, bool) {
        let last = self.slots.len() - 1;
        let i = index();
        let (i, owned) = if i < last { (i, true) } else { (last, false) };
        (&**self.slots[i].get_or_init(Default::default), owned)
    }
}

impl<T> Stripes<T> {
    /// Every stripe allocated so far.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.get().map(|s| &**s))
    }
}

impl<T> std::fmt::Debug for Stripes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripes")
            .field("allocated", &self.iter().count())
            .finish()
    }
}

/// Adds `n` to a counter: a plain load and store on a stripe this thread owns (one
/// writer), a `fetch_add` on the shared one.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicU64, owned: bool, n: u64) {
    if owned {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    } else {
        counter.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_unique_among_live_threads_and_reused() {
        let mine = index();
        let both = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let live = || {
                let i = index();
                both.wait(); // both threads are alive here
                i
            };
            let a = s.spawn(live);
            let b = s.spawn(live);
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(a != mine && b != mine && a != b);
        // Threads that come and go one after another reuse freed indices: without
        // recycling, 100 threads would take 100 indices.
        let mut seen: Vec<usize> = (0..100)
            .map(|_| std::thread::spawn(index).join().unwrap())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() < 50, "{} distinct indices", seen.len());
    }
}
