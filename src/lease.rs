//! Shared ownership whose per-call cost is two plain stores: [`Shared`] and [`Lease`].
//! (A `finished` count's stripe is found with one compare: thread indices without a
//! stripe of their own, and every index once the value is retired, are at or above the
//! home's `last`, and take the cold path, which also nudges the reaper.)
//!
//! Every response future must keep the state it reports to (a policy's breaker, a
//! fallback's tiers) alive until it finishes. An `Arc` clone per call does that, but it
//! is two locked read-modify-writes per call — measured on this project's machines at
//! 8.5 ns each, as much as a whole closed-breaker call (BENCHMARKS.md, "Ownership").
//! This module is Linux's `percpu_ref` in user space:
//!
//! - [`Shared<T>`] is held by handles, layers and services. Cloning one is an `Arc`
//!   clone (setup code, not per call). When the last one is dropped, the value is
//!   **retired**.
//! - [`Lease<T>`] is held by a response future. Taking one bumps a `started` counter,
//!   dropping one a `finished` counter, both in the calling thread's own stripe (see
//!   [`crate::thread`]): one writer per stripe, so a plain load and store, no lock
//!   prefix, no shared cache line. Threads beyond the exclusive stripes share one
//!   stripe with `fetch_add`. A holder with `&mut Shared` (a service's `call`) may
//!   instead count the start in the handle itself ([`Shared::lease_mut`]: one increment
//!   of a field, no thread-local look-up), added to the home's `handed` total when the
//!   handle is dropped.
//! - A retired value is freed as soon as every lease taken is finished: at once when
//!   none is out, else by the **reaper**, a thread that exists only while retired values
//!   wait for their last leases (it polls with backoff, and a lease finished on a
//!   retired value wakes it), then exits.
//!
//! Why the counts can be trusted: a lease is only taken through a live `Shared`, so no
//! lease starts after retirement, and every `started` store (and every handle's
//! `handed` addition, made in its drop) is ordered before the drop of the `Shared` it
//! was taken through (same thread, or handed over by whatever moved the `Shared` to
//! another thread), which the last `Arc` drop synchronizes with. So at retirement the
//! started total is final and visible; `finished` only grows towards
//! it, and a lease's `finished` store (`Release`) is the last thing it does with the
//! value, so reading the totals equal (`Acquire`) means nobody uses the value any more.
//!
//! This is the crate's only `unsafe` code: a raw pointer to the value, dereferenced
//! while a `Shared` or an unfinished `Lease` exists, and freed once by whoever sees the
//! totals equal after retirement.
#![allow(unsafe_code)]

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::thread;

/// One stripe of lease counts: written by one thread only (or, for the last stripe,
/// by every thread beyond the exclusive ones, with `fetch_add`).
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    started: AtomicU64,
    finished: AtomicU64,
}

struct Home<T> {
    /// Set when the last `Shared` is gone.
    retired: AtomicBool,
    /// Leases counted by the `Shared` they were taken through ([`Shared::lease_mut`]),
    /// added here as each of those is dropped.
    handed: AtomicU64,
    /// The shared stripe's index (`stripes.len() - 1`: every thread index below it has
    /// a stripe of its own) until the value is retired, then 0: a lease's end compares
    /// the thread's index with it and, on the cold path only, looks at `retired`.
    last: AtomicUsize,
    stripes: Box<[Stripe]>,
    value: T,
}

impl<T> Home<T> {
    #[inline]
    fn stripe(&self) -> (&Stripe, bool) {
        let i = thread::index();
        let last = self.stripes.len() - 1;
        if i < last {
            (&self.stripes[i], true)
        } else {
            (&self.stripes[last], false)
        }
    }

    #[inline]
    fn start(&self) {
        match self.stripe() {
            (s, true) => s.started.store(s.started.load(Relaxed) + 1, Relaxed),
            (s, false) => {
                s.started.fetch_add(1, Relaxed);
            }
        }
    }

    /// `finished` for a thread beyond the exclusive stripes, or without an index yet, or
    /// any once retired; and whether the value is retired (read before the finish).
    #[cold]
    #[inline(never)]
    fn finished_cold(&self) -> (&AtomicU64, bool, bool) {
        let retired = self.retired.load(Relaxed);
        let (s, owned) = self.stripe();
        (&s.finished, owned, retired)
    }

    /// Leases taken and not yet finished (a racy sum: for statistics). Meaningless for a
    /// value leased with [`Shared::lease_mut`]: those leases' ends are counted before
    /// their starts are (clamped to 0, it undercounts the other leases too).
    fn outstanding(&self) -> u64 {
        let mut n = self.handed.load(Relaxed);
        for s in self.stripes.iter() {
            n = n.wrapping_add(s.started.load(Relaxed));
            n = n.wrapping_sub(s.finished.load(Relaxed));
        }
        if n > u64::MAX / 2 { 0 } else { n }
    }

    /// Whether every lease ever taken is finished. Only meaningful once retired (no
    /// lease can start any more).
    fn idle(&self) -> bool {
        let mut started = self.handed.load(Acquire);
        let mut finished = 0u64;
        for s in self.stripes.iter() {
            started = started.wrapping_add(s.started.load(Acquire));
            finished = finished.wrapping_add(s.finished.load(Acquire));
        }
        started == finished
    }
}

/// The last thing a lease does with its home: through the counter alone. A `&Home` (or
/// a `&Stripe`, whose padding counts as its bytes) passed as an argument would be kept
/// "live" until the function returns, across a free another thread may do as soon as
/// the store is seen (the pattern of `Arc`'s drop; found by Miri with the timing forced).
#[inline]
fn finish(finished: &AtomicU64, owned: bool) {
    if owned {
        finished.store(finished.load(Relaxed) + 1, Release);
    } else {
        finished.fetch_add(1, Release);
    }
}

/// Frees a retired home.
///
/// # Safety
/// `home` came from `Box::leak`, is retired, idle, and is freed only once.
unsafe fn free<T>(home: NonNull<Home<T>>) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(home.as_ptr()) });
}

/// The one token whose drop retires the value (the `Arc` that `Shared` clones).
struct Owner<T: Send + Sync + 'static> {
    home: NonNull<Home<T>>,
}

// SAFETY: `Owner` gives access to `T` only as `&T` (through `Shared`), and may drop it
// on any thread: the same bounds as `Arc<T>`.
unsafe impl<T: Send + Sync + 'static> Send for Owner<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for Owner<T> {}

impl<T: Send + Sync + 'static> Drop for Owner<T> {
    fn drop(&mut self) {
        // SAFETY: the home is alive until retired and idle; this is the retirement.
        let home = unsafe { self.home.as_ref() };
        home.retired.store(true, SeqCst);
        home.last.store(0, SeqCst);
        if home.idle() {
            // SAFETY: retired (no lease can start) and idle (none is out); `Owner` is
            // dropped once, and a home is handed to the reaper only when not idle here.
            unsafe { free(self.home) };
        } else {
            reaper::adopt(Box::new(Zombie { home: self.home }));
        }
    }
}

/// A retired value waiting for its last leases.
struct Zombie<T> {
    home: NonNull<Home<T>>,
}

// SAFETY: a zombie only reads the home's atomics and frees it (dropping `T`), which
// needs `T: Send`.
unsafe impl<T: Send + Sync> Send for Zombie<T> {}

impl<T: Send + Sync> reaper::Retired for Zombie<T> {
    fn idle(&self) -> bool {
        // SAFETY: a zombie's home is retired and not yet freed (only `free_now` frees it,
        // once).
        unsafe { self.home.as_ref() }.idle()
    }

    fn free_now(self: Box<Self>) {
        // SAFETY: called once, after `idle` returned true on a retired home.
        unsafe { free(self.home) }
    }
}

/// Shared ownership of a `T`; cloning is an `Arc` clone. See the [module docs](self).
pub(crate) struct Shared<T: Send + Sync + 'static> {
    home: NonNull<Home<T>>,
    /// Leases taken through [`Shared::lease_mut`], added to the home's `handed` when
    /// this handle is dropped.
    taken: u64,
    owner: Arc<Owner<T>>,
}

// SAFETY: like `Arc<T>`.
unsafe impl<T: Send + Sync + 'static> Send for Shared<T> {}
// SAFETY: like `Arc<T>`.
unsafe impl<T: Send + Sync + 'static> Sync for Shared<T> {}

impl<T: Send + Sync + 'static> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        let stripes = (0..=thread::exclusive_stripes())
            .map(|_| Stripe::default())
            .collect();
        let stripes: Box<[Stripe]> = stripes;
        let home = NonNull::from(Box::leak(Box::new(Home {
            retired: AtomicBool::new(false),
            handed: AtomicU64::new(0),
            last: AtomicUsize::new(stripes.len() - 1),
            stripes,
            value,
        })));
        Shared {
            home,
            taken: 0,
            owner: Arc::new(Owner { home }),
        }
    }

    /// A lease for a response future: keeps the value alive until dropped.
    #[inline]
    pub(crate) fn lease(&self) -> Lease<T> {
        // SAFETY: `self.owner` is alive, so the home is not retired.
        unsafe { self.home.as_ref() }.start();
        Lease { home: self.home }
    }

    /// A lease counted by this handle itself: one increment of a field of `self`, no
    /// thread-local look-up (the retry stage's per-call lease). The count joins the
    /// home's when the handle is dropped, which is before retirement; so
    /// [`Shared::in_flight`] is meaningless for a value leased this way (the policy
    /// core, whose in-flight count the statistics report, is leased with [`lease`]).
    ///
    /// [`lease`]: Shared::lease
    #[inline(always)]
    pub(crate) fn lease_mut(&mut self) -> Lease<T> {
        self.taken = self.taken.wrapping_add(1);
        Lease { home: self.home }
    }

    /// Leases taken and not yet finished (calls in flight, for statistics).
    pub(crate) fn in_flight(&self) -> u64 {
        // SAFETY: `self.owner` keeps the home alive.
        unsafe { self.home.as_ref() }.outstanding()
    }

    pub(crate) fn downgrade(&self) -> WeakShared<T> {
        WeakShared {
            home: self.home,
            owner: Arc::downgrade(&self.owner),
        }
    }

    /// Whether both are the same value.
    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        self.home == other.home
    }
}

impl<T: Send + Sync + 'static> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            home: self.home,
            taken: 0,
            owner: self.owner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Shared<T> {
    fn drop(&mut self) {
        if self.taken != 0 {
            // SAFETY: `self.owner` keeps the home alive. Ordered before the `owner`'s
            // drop (after this), whose release the retiring drop acquires: the count
            // is in `handed` before the home can be retired.
            unsafe { self.home.as_ref() }
                .handed
                .fetch_add(self.taken, Relaxed);
        }
    }
}

impl<T: Send + Sync + 'static> Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: `self.owner` keeps the home alive.
        &unsafe { self.home.as_ref() }.value
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// A weak reference to a [`Shared`] value: does not keep it alive.
pub(crate) struct WeakShared<T: Send + Sync + 'static> {
    home: NonNull<Home<T>>,
    owner: Weak<Owner<T>>,
}

// SAFETY: it dereferences nothing without upgrading first.
unsafe impl<T: Send + Sync + 'static> Send for WeakShared<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for WeakShared<T> {}

impl<T: Send + Sync + 'static> WeakShared<T> {
    /// The value, if some `Shared` still holds it.
    pub(crate) fn upgrade(&self) -> Option<Shared<T>> {
        Some(Shared {
            home: self.home,
            taken: 0,
            owner: self.owner.upgrade()?,
        })
    }

    /// Whether the value has been retired.
    pub(crate) fn is_dead(&self) -> bool {
        self.owner.strong_count() == 0
    }
}

impl<T: Send + Sync + 'static> Clone for WeakShared<T> {
    fn clone(&self) -> Self {
        WeakShared {
            home: self.home,
            owner: self.owner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for WeakShared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakShared")
            .field("dead", &self.is_dead())
            .finish()
    }
}

/// A response future's hold on a [`Shared`] value; see the [module docs](self). Not
/// `Clone`: a lease can only be taken through a live `Shared`.
pub(crate) struct Lease<T: Send + Sync + 'static> {
    home: NonNull<Home<T>>,
}

// SAFETY: like `Arc<T>`.
unsafe impl<T: Send + Sync + 'static> Send for Lease<T> {}
// SAFETY: like `Arc<T>`.
unsafe impl<T: Send + Sync + 'static> Sync for Lease<T> {}

impl<T: Send + Sync + 'static> Deref for Lease<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: an unfinished lease keeps its home alive.
        &unsafe { self.home.as_ref() }.value
    }
}

impl<T: Send + Sync + 'static> Drop for Lease<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: not finished yet, so alive. Nothing of the home is touched after
        // `finish`: it may be freed the moment the count is seen.
        let home = unsafe { self.home.as_ref() };
        // One compare on the hot path: the markers of a thread without an index are
        // above `last` too, and `last` is 0 once retired (it is at least 8 before). A
        // `last` of 0 means retired even if the `retired` load (another location, not
        // ordered with this one) still reads false. (A lease that reads `last` just
        // before retirement finishes without the nudge: the reaper's polling — or,
        // where no reaper thread could be started, the next nudge or retirement — finds
        // it, as it finds any finish the retiring drop did not see.)
        let i = thread::raw_index();
        let last = home.last.load(Relaxed);
        if i < last {
            // SAFETY: `i < last < stripes.len()` (`last` only ever decreases to 0).
            finish(&unsafe { home.stripes.get_unchecked(i) }.finished, true);
        } else {
            let (finished, owned, retired) = home.finished_cold();
            finish(finished, owned);
            if retired || last == 0 {
                reaper::nudge();
            }
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease")
    }
}

/// The thread that frees retired values once their last leases are finished. It runs
/// only while some retired value waits.
mod reaper {
    use super::*;

    pub(super) trait Retired: Send {
        fn idle(&self) -> bool;
        fn free_now(self: Box<Self>);
    }

    struct State {
        waiting: Vec<Box<dyn Retired>>,
        thread: Option<std::thread::Thread>,
    }

    static STATE: Mutex<State> = Mutex::new(State {
        waiting: Vec::new(),
        thread: None,
    });

    fn lock() -> std::sync::MutexGuard<'static, State> {
        STATE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn adopt(z: Box<dyn Retired>) {
        let mut s = lock();
        s.waiting.push(z);
        if s.thread.is_none() {
            let spawned = std::thread::Builder::new()
                .name("substation-reaper".into())
                .spawn(run);
            match spawned {
                Ok(handle) => s.thread = Some(handle.thread().clone()),
                Err(error) => {
                    // Freed now if idle already, else by a `nudge` (a lease finished
                    // on a retired value) or the next retirement, which tries again.
                    tracing::error!(%error, "substation: could not start the reaper thread; retired state is freed when its last call ends");
                    drop(s);
                    pass();
                }
            }
        }
    }

    /// A lease of a retired value finished: look again now.
    pub(super) fn nudge() {
        let s = lock();
        match &s.thread {
            Some(t) => t.unpark(),
            None if !s.waiting.is_empty() => {
                drop(s);
                pass();
            }
            None => {}
        }
    }

    /// Frees every waiting value that is idle; returns how many still wait.
    fn pass() -> usize {
        let ready: Vec<Box<dyn Retired>> = {
            let mut s = lock();
            let (ready, wait) = std::mem::take(&mut s.waiting)
                .into_iter()
                .partition(|z| z.idle());
            s.waiting = wait;
            ready
        };
        // Freed without the lock: dropping a value may retire others (a fallback's
        // tiers hold a policy), which comes back here. A panicking drop (the user's
        // alternate service, say) is logged and the others are freed all the same.
        for z in ready {
            let freed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| z.free_now()));
            if freed.is_err() {
                tracing::error!("substation: a value dropped by the reaper panicked");
            }
        }
        lock().waiting.len()
    }

    /// Forgets the reaper thread if `run` unwinds, so that the next retirement starts a
    /// new one.
    struct Unwind;

    impl Drop for Unwind {
        fn drop(&mut self) {
            if std::thread::panicking() {
                lock().thread = None;
            }
        }
    }

    fn run() {
        let _unwind = Unwind;
        let mut pause = Duration::from_micros(100);
        loop {
            std::thread::park_timeout(pause);
            if pass() == 0 {
                // Checked and forgotten under one lock: an `adopt` after this starts
                // a new thread.
                let mut s = lock();
                if s.waiting.is_empty() {
                    s.thread = None;
                    return;
                }
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// How many retired values wait (for tests).
    #[cfg(test)]
    pub(super) fn waiting() -> usize {
        lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn wait_until(f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn freed_at_once_without_leases() {
        let drops = Arc::new(AtomicUsize::new(0));
        let s = Shared::new(Counted(drops.clone()));
        let t = s.clone();
        drop(s.lease());
        drop(s);
        assert_eq!(drops.load(SeqCst), 0);
        drop(t);
        assert_eq!(drops.load(SeqCst), 1);
    }

    #[test]
    fn a_lease_keeps_the_value_until_it_ends() {
        let drops = Arc::new(AtomicUsize::new(0));
        let s = Shared::new(Counted(drops.clone()));
        let weak = s.downgrade();
        let lease = s.lease();
        drop(s);
        assert!(weak.upgrade().is_none(), "retired: no new owner");
        assert_eq!(drops.load(SeqCst), 0, "still leased");
        assert_eq!(lease.0.load(SeqCst), 0, "readable through the lease");
        drop(lease);
        wait_until(|| drops.load(SeqCst) == 1);
    }

    struct Panics;
    impl Drop for Panics {
        fn drop(&mut self) {
            panic!("a user's drop panicked");
        }
    }

    #[test]
    fn a_panicking_drop_does_not_stop_the_reaper() {
        for _ in 0..3 {
            let bad = Shared::new(Panics);
            let bad_lease = bad.lease();
            drop(bad);
            drop(bad_lease); // the reaper frees it: its drop panics there
            let drops = Arc::new(AtomicUsize::new(0));
            let good = Shared::new(Counted(drops.clone()));
            let lease = good.lease();
            drop(good);
            drop(lease);
            wait_until(|| drops.load(SeqCst) == 1);
        }
    }

    #[test]
    fn leases_counted_by_their_handle_keep_the_value() {
        // Leases taken through `lease_mut` are counted in the handle until it is dropped;
        // the value lives until the last of them ends, whichever handle took them and
        // in whatever order handles and leases go.
        let drops = Arc::new(AtomicUsize::new(0));
        let mut a = Shared::new(Counted(drops.clone()));
        let mut b = a.clone();
        let la: Vec<_> = (0..3).map(|_| a.lease_mut()).collect();
        let lb = b.lease_mut();
        let plain = a.lease();
        drop(la);
        drop(a); // its three, already finished, join the home's count
        assert_eq!(drops.load(SeqCst), 0);
        drop(plain);
        drop(b); // retired: `lb` is still out
        assert_eq!(drops.load(SeqCst), 0, "still leased");
        assert_eq!(lb.0.load(SeqCst), 0, "readable through the lease");
        drop(lb);
        wait_until(|| drops.load(SeqCst) == 1);
    }

    #[test]
    fn a_lease_ending_after_retirement_takes_the_cold_path() {
        // Once retired, `last` is 0: every thread's finish goes through the cold path,
        // which nudges the reaper (the value is freed at once, not at the next poll).
        let drops = Arc::new(AtomicUsize::new(0));
        let mut s = Shared::new(Counted(drops.clone()));
        // SAFETY: `s` keeps the home alive.
        let home = unsafe { s.home.as_ref() };
        assert!(home.last.load(SeqCst) >= 8);
        let leases: Vec<_> = (0..4).map(|_| s.lease_mut()).collect();
        drop(s);
        assert_eq!(home_last_after_retirement(&leases[0]), 0);
        for l in leases {
            drop(l);
        }
        wait_until(|| drops.load(SeqCst) == 1);
    }

    fn home_last_after_retirement<T: Send + Sync + 'static>(l: &Lease<T>) -> usize {
        // SAFETY: an unfinished lease keeps its home alive.
        unsafe { l.home.as_ref() }.last.load(SeqCst)
    }

    #[test]
    fn handles_on_many_threads_each_counting_their_own() {
        // Handles cloned to threads, each taking leases with `lease_mut` and sending them
        // to a thread that ends them, the handles dropped while leases are out: freed
        // exactly once, after the last lease.
        for _ in 0..20 {
            let drops = Arc::new(AtomicUsize::new(0));
            let s = Shared::new(Counted(drops.clone()));
            let (tx, rx) = std::sync::mpsc::channel::<Lease<Counted>>();
            let ender = std::thread::spawn(move || {
                for l in rx {
                    drop(l);
                }
            });
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let mut h = s.clone();
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        for _ in 0..100 {
                            tx.send(h.lease_mut()).unwrap();
                        }
                    })
                })
                .collect();
            drop(s);
            drop(tx);
            for t in takers {
                t.join().unwrap();
            }
            ender.join().unwrap();
            wait_until(|| drops.load(SeqCst) == 1);
        }
        wait_until(|| reaper::waiting() == 0);
    }

    #[test]
    fn leases_moved_between_threads() {
        // Leases taken on one thread and dropped on others, while the owner goes away
        // from a third: freed exactly once, after the last.
        for _ in 0..50 {
            let drops = Arc::new(AtomicUsize::new(0));
            let s = Shared::new(Counted(drops.clone()));
            let leases: Vec<_> = (0..64).map(|_| s.lease()).collect();
            let (tx, rx) = std::sync::mpsc::channel::<Lease<Counted>>();
            let dropper = std::thread::spawn(move || {
                for l in rx {
                    drop(l);
                }
            });
            let owner = std::thread::spawn(move || drop(s));
            for l in leases {
                tx.send(l).unwrap();
            }
            drop(tx);
            owner.join().unwrap();
            dropper.join().unwrap();
            wait_until(|| drops.load(SeqCst) == 1);
        }
        wait_until(|| reaper::waiting() == 0);
    }
}
