//! The rolling time window: buckets of outcome counts, striped per thread.
//!
//! Each thread records into its own stripe (a cache-line-aligned array of buckets,
//! allocated on the thread's first call), so two threads on one breaker never write the
//! same cache line. A stripe remembers which bucket is current and until when (`head`),
//! so recording a call is one load, one compare and one increment; only the first call
//! of a new bucket divides. The first `2 × cores` threads (see [`crate::thread`]) own
//! their stripe — one writer, so the increment is a plain load and store, not a locked
//! `fetch_add` — and later threads share one stripe with `fetch_add`. Reading the
//! totals sums every stripe's buckets that lie inside the window — that happens only
//! when a failure or slow call asks "should the breaker open?", and when code asks.
//!
//! A reset (from another thread) racing with an owner's plain increment may let the
//! increment land after the zeroing: it lands in a bucket the reset marked as matching
//! no time, which no reader counts and which is zeroed before it is used again.
//!
//! Starting a bucket zeroes it behind a short "busy" mark, so a thread of the same stripe
//! never counts into a bucket that is about to be zeroed. Counts are exact; which bucket
//! a call lands in is exact to the clock's resolution.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::settings::MAX_BUCKETS;
use crate::thread::Stripes;

const SLOT_BITS: u32 = 8;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// A bucket epoch that matches no time.
const NO_EPOCH: u64 = u64::MAX;
/// A bucket epoch that says "being zeroed".
const BUSY: u64 = u64::MAX - 1;

/// The window's shape, taken from the settings of the call being recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) bucket_ms: u64,
    pub(crate) buckets: u64,
}

/// What the window holds; see [`Policy::window`](crate::Policy::window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowCounts {
    /// Calls recorded in the window (successes and failures).
    pub calls: u64,
    /// Failed calls (as classified, timeouts included).
    pub failures: u64,
    /// Calls slower than `breaker.slow_call_ms` (successful or not).
    pub slow: u64,
}

impl WindowCounts {
    /// Failures as a percentage of calls (0 for an empty window).
    pub fn error_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow calls as a percentage of calls (0 for an empty window).
    pub fn slow_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[derive(Debug)]
struct Bucket {
    epoch: AtomicU64,
    ok: AtomicU64,
    fail: AtomicU64,
    slow: AtomicU64,
}

/// One thread-group's buckets, aligned so stripes share no cache line (128 bytes covers
/// the adjacent-line prefetcher too).
#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    /// `end_ms << SLOT_BITS | slot`: the current bucket and the time it ends.
    head: AtomicU64,
    buckets: [Bucket; MAX_BUCKETS as usize],
}

impl Stripe {
    fn new() -> Self {
        Stripe {
            head: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| Bucket {
                epoch: AtomicU64::new(NO_EPOCH),
                ok: AtomicU64::new(0),
                fail: AtomicU64::new(0),
                slow: AtomicU64::new(0),
            }),
        }
    }
}

/// How a call ended, as far as the window cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

#[derive(Debug)]
pub(crate) struct Window {
    stripes: Stripes<Stripe>,
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe::new()
    }
}

#[inline(always)]
fn bump(counter: &AtomicU64, owned: bool) {
    crate::thread::bump(counter, owned, 1)
}

impl Window {
    pub(crate) fn new() -> Self {
        Window {
            stripes: Stripes::new(),
        }
    }

    fn existing(&self) -> impl Iterator<Item = &Stripe> {
        self.stripes.iter()
    }

    #[inline]
    pub(crate) fn record(&self, now_ms: u64, shape: impl FnOnce() -> Shape, rec: Record) {
        let (stripe, owned) = self.stripes.local();
        let head = stripe.head.load(Relaxed);
        let slot = if now_ms < head >> SLOT_BITS {
            (head & SLOT_MASK) as usize
        } else {
            rotate(stripe, now_ms, shape())
        };
        // A stale head after a shape change may point past the new shape; such a count
        // is simply not read.
        let Some(bucket) = stripe.buckets.get(slot) else {
            return;
        };
        if rec.failed {
            bump(&bucket.fail, owned);
        } else {
            bump(&bucket.ok, owned);
        }
        if rec.slow {
            bump(&bucket.slow, owned);
        }
    }

    /// Sums every stripe's buckets that lie in the window ending at `now_ms`.
    pub(crate) fn counts(&self, now_ms: u64, shape: Shape) -> WindowCounts {
        let current = now_ms / shape.bucket_ms;
        let oldest = current.saturating_sub(shape.buckets - 1);
        let mut c = WindowCounts::default();
        for stripe in self.existing() {
            for bucket in &stripe.buckets[..shape.buckets as usize] {
                let epoch = bucket.epoch.load(Acquire);
                if (oldest..=current).contains(&epoch) {
                    let ok = bucket.ok.load(Relaxed);
                    let fail = bucket.fail.load(Relaxed);
                    c.calls += ok + fail;
                    c.failures += fail;
                    c.slow += bucket.slow.load(Relaxed);
                }
            }
        }
        c
    }

    /// Forgets everything (a new window shape, or the breaker closed).
    pub(crate) fn reset(&self) {
        for stripe in self.existing() {
            for bucket in &stripe.buckets {
                bucket.epoch.store(NO_EPOCH, Relaxed);
                bucket.ok.store(0, Relaxed);
                bucket.fail.store(0, Relaxed);
                bucket.slow.store(0, Relaxed);
            }
            // Last: a head a racing `rotate` stored for a bucket just cleared is undone
            // (and `rotate` checks its bucket again after storing the head; the fences
            // on both sides make one of them see the other).
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            stripe.head.store(0, Release);
        }
    }
}

#[cold]
fn rotate(stripe: &Stripe, now_ms: u64, shape: Shape) -> usize {
    let index = now_ms / shape.bucket_ms;
    let slot = (index % shape.buckets) as usize;
    let end = (index + 1) * shape.bucket_ms;
    let bucket = &stripe.buckets[slot];
    let mut spins = 0u32;
    loop {
        let epoch = bucket.epoch.load(Acquire);
        if epoch == index {
            break;
        }
        if epoch == BUSY {
            // Another thread of this stripe is zeroing the bucket: three stores.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        if bucket
            .epoch
            .compare_exchange(epoch, BUSY, Acquire, Relaxed)
            .is_ok()
        {
            bucket.ok.store(0, Relaxed);
            bucket.fail.store(0, Relaxed);
            bucket.slow.store(0, Relaxed);
            bucket.epoch.store(index, Release);
            break;
        }
    }
    stripe.head.store(end << SLOT_BITS | slot as u64, Release);
    // StoreLoad: the head must be visible before the epoch is read again, or a racing
    // reset's `head = 0` could land first and be overwritten (store-buffer reordering,
    // even on x86). A cold path: once per bucket per stripe.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if bucket.epoch.load(Acquire) != index {
        // A reset cleared the bucket meanwhile: without this, every call of the stripe
        // would count into a bucket no reader sees until it ends.
        stripe.head.store(0, Release);
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        bucket_ms: 1000,
        buckets: 10,
    };
    const OK: Record = Record {
        failed: false,
        slow: false,
    };
    const FAIL: Record = Record {
        failed: true,
        slow: false,
    };

    #[test]
    fn counts_what_is_recorded() {
        let w = Window::new();
        for _ in 0..7 {
            w.record(5_000, || SHAPE, OK);
        }
        for _ in 0..3 {
            w.record(5_500, || SHAPE, FAIL);
        }
        w.record(
            6_000,
            || SHAPE,
            Record {
                failed: false,
                slow: true,
            },
        );
        let c = w.counts(6_000, SHAPE);
        assert_eq!(
            c,
            WindowCounts {
                calls: 11,
                failures: 3,
                slow: 1
            }
        );
        assert!((c.error_rate() - 300.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn old_buckets_fall_out_of_the_window() {
        let w = Window::new();
        w.record(1_000, || SHAPE, FAIL);
        w.record(5_000, || SHAPE, OK);
        assert_eq!(w.counts(10_999, SHAPE).calls, 2);
        assert_eq!(w.counts(11_000, SHAPE).calls, 1, "bucket 1 left the window");
        assert_eq!(w.counts(15_000, SHAPE).calls, 0);
        // A bucket slot that is reused starts from zero.
        w.record(11_000, || SHAPE, OK);
        assert_eq!(
            w.counts(11_000, SHAPE),
            WindowCounts {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn threads_record_into_their_own_stripes() {
        let w = Window::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        w.record(2_000, || SHAPE, OK);
                    }
                });
            }
        });
        assert_eq!(w.counts(2_000, SHAPE).calls, 40_000);
    }

    #[test]
    fn reset_forgets() {
        let w = Window::new();
        w.record(2_000, || SHAPE, FAIL);
        w.reset();
        assert_eq!(w.counts(2_000, SHAPE), WindowCounts::default());
        w.record(2_001, || SHAPE, FAIL);
        assert_eq!(w.counts(2_001, SHAPE).failures, 1);
    }
}
