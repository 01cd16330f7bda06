//! Statistics the library keeps itself: per policy, counts of calls by outcome, answers
//! by fallback tier, and a latency histogram — in per-thread stripes, so that recording
//! is a plain increment on the calling thread's own cache line — and what the
//! `metrics` facade gets from them, in batches.
//!
//! - **Recording** (the request path): a closed call that succeeds adds one to its
//!   thread's `success` count; a call that was pending adds one to a latency bucket
//!   (microseconds, four buckets per power of two: ±12 %). A call ready on its first
//!   poll is counted at zero latency without reading a clock.
//! - **Flushing** (a background thread, once a second, and when a policy is dropped):
//!   the stripes are summed and the differences since the last flush pushed to the
//!   policy's metric handles — so the recorder is called once per second per series,
//!   not per call, and the exported counters equal the calls made at each flush.
//!   [`crate::metrics::flush`] does it at once (tests, shutdown).
//! - **The rolling view** ([`Policy::stats`](crate::Policy::stats)): once something
//!   watches a policy (the dashboard, or code asking for its statistics), each flush
//!   also keeps a sample of its totals, two minutes of them; the view over the last
//!   10 s is the difference between now and the newest sample at least 10 s old (or
//!   the oldest there is: until 10 s of samples exist, the view reaches back to when
//!   watching began, or to the policy's creation — `window_ms` says how far).
//!
//! The flushing thread runs while some policy exists and stops ten seconds after the
//! last one is gone.
//!
//! ```
//! use substation::{Policy, settings::PolicySettings, stack::PolicyLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new("catalog", PolicySettings::default()).unwrap();
//! let svc = PolicyLayer::new(&policy).layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
//! for n in 0..3 {
//!     svc.clone().oneshot(n).await.unwrap();
//! }
//! let stats = policy.stats();
//! assert_eq!(stats.totals.success, 3);
//! # }
//! ```

mod flush;
mod snapshot;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use crate::thread::{Stripes, bump};

pub(crate) use self::flush::{flush_all, forget_dead, register};
#[cfg(feature = "dashboard")]
pub(crate) use self::snapshot::ROLLING_MS;
pub use self::snapshot::{CallCounts, FallbackCounts, Latency, Point, PolicyStats, TierCounts};

/// The counters of a stripe, by index.
pub(crate) const SUCCESS: usize = 0;
pub(crate) const FAILURE: usize = 1;
pub(crate) const TIMEOUT: usize = 2;
pub(crate) const REJECTED: usize = 3;
pub(crate) const KILLED: usize = 4;
pub(crate) const BULKHEAD_FULL: usize = 5;
pub(crate) const FAULT_ABORT: usize = 6;
pub(crate) const FAULT_DELAY: usize = 7;
/// `FALLBACK + 2 × tier + (0 served | 1 failed)`, tiers static, cache, service.
pub(crate) const FALLBACK: usize = 8;
/// A retry made (an attempt after the first; the attempt is counted by outcome too).
pub(crate) const RETRY: usize = 14;
/// A retry or hedge the budget refused.
pub(crate) const RETRY_REFUSED: usize = 15;
/// A hedge sent (an extra copy of a call whose first attempt was still out).
pub(crate) const HEDGE: usize = 16;
pub(crate) const COUNTERS: usize = 17;

/// Latency buckets: four per power of two of microseconds, from 1 µs to 2³⁰ µs (≈ 18
/// minutes; longer calls land in the last). Zero latency is not a bucket: it is every
/// call that finished minus the ones with a latency.
pub(crate) const BUCKETS: usize = 120;

/// The bucket of a latency of `us` microseconds (> 0).
#[inline]
pub(crate) fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let log = 63 - us.leading_zeros() as usize;
    let quarter = if log >= 2 {
        ((us >> (log - 2)) & 3) as usize
    } else {
        (us << (2 - log)) as usize & 3
    };
    (4 * log + quarter).min(BUCKETS - 1)
}

/// The smallest latency in bucket `b`, in microseconds.
pub(crate) fn bucket_floor(b: usize) -> f64 {
    let log = b / 4;
    let quarter = (b % 4) as f64;
    (1u64 << log) as f64 * (1.0 + quarter / 4.0)
}

/// A latency that stands for bucket `b` (its middle), in microseconds.
pub(crate) fn bucket_value(b: usize) -> f64 {
    (bucket_floor(b) + bucket_floor(b + 1)) / 2.0
}

/// One thread's counts for one policy.
#[repr(align(128))]
pub(crate) struct Stripe {
    counts: [AtomicU64; COUNTERS],
    latency: [AtomicU64; BUCKETS],
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Everything counted so far, summed over the stripes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) counts: [u64; COUNTERS],
    pub(crate) latency: Box<[u64; BUCKETS]>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            counts: [0; COUNTERS],
            latency: Box::new([0; BUCKETS]),
        }
    }
}

/// A sample of a policy's totals, taken by a flush.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    pub(crate) totals: Totals,
}

/// Samples kept while the policy is watched: two minutes at one a second.
pub(crate) const HISTORY: usize = 121;

/// A policy's statistics.
pub(crate) struct Stats {
    stripes: Stripes<Stripe>,
    /// What the metrics facade has been given.
    pushed: Mutex<Totals>,
    /// The samples of the rolling view, once something asked for it.
    history: Mutex<Option<VecDeque<Sample>>>,
    /// When the policy was made (ms since the Unix epoch): the history starts with an
    /// empty sample then.
    created_ms: u64,
    /// The latency of calls that waited, at the percentiles of
    /// [`HEDGE_PERCENTILES`](crate::settings::HEDGE_PERCENTILES), µs, over the last
    /// flush interval that had at least 20 of them (0: none yet). Read by hedging.
    observed_us: [AtomicU64; 4],
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("stripes", &self.stripes)
            .finish_non_exhaustive()
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            stripes: Stripes::new(),
            pushed: Mutex::new(Totals::default()),
            history: Mutex::new(None),
            created_ms: unix_ms(),
            observed_us: Default::default(),
        }
    }

    /// Counts one event (`SUCCESS`, `KILLED`, …).
    #[inline(always)]
    pub(crate) fn count(&self, counter: usize) {
        let (stripe, owned) = self.stripes.local();
        bump(&stripe.counts[counter], owned, 1);
    }

    /// Counts one finished call by outcome, and its latency if it had any.
    #[inline(always)]
    pub(crate) fn call(&self, counter: usize, latency_us: u64) {
        let (stripe, owned) = self.stripes.local();
        bump(&stripe.counts[counter], owned, 1);
        if latency_us != 0 {
            bump(&stripe.latency[bucket(latency_us)], owned, 1);
        }
    }

    /// The sum of the counters `which`, over the stripes (no allocation; for slow paths
    /// such as the retry budget).
    pub(crate) fn sum(&self, which: &[usize]) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| {
                which
                    .iter()
                    .map(|&i| stripe.counts[i].load(Relaxed))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Everything counted so far.
    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for stripe in self.stripes.iter() {
            for (sum, c) in t.counts.iter_mut().zip(&stripe.counts) {
                *sum += c.load(Relaxed);
            }
            for (sum, c) in t.latency.iter_mut().zip(&stripe.latency) {
                *sum += c.load(Relaxed);
            }
        }
        t
    }

    /// Pushes what was counted since the last push to `metrics` (the policy's handles),
    /// and keeps a sample if the policy is watched.
    pub(crate) fn flush(&self, metrics: &crate::metrics::PolicyMetrics) {
        let totals = self.totals();
        {
            let mut pushed = self.pushed.lock().unwrap_or_else(PoisonError::into_inner);
            metrics.push(&totals, &pushed);
            self.observe(&totals, &pushed);
            *pushed = totals.clone();
        }
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = history.as_mut() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(Sample {
                at_ms: unix_ms(),
                totals,
            });
        }
    }

    /// Keeps the percentiles of the latencies between `before` and `now`, if there
    /// are enough of them.
    fn observe(&self, now: &Totals, before: &Totals) {
        let mut delta = [0u64; BUCKETS];
        for (d, (a, z)) in delta
            .iter_mut()
            .zip(now.latency.iter().zip(before.latency.iter()))
        {
            *d = a.saturating_sub(*z);
        }
        let n: u64 = delta.iter().sum();
        if n < 20 {
            return;
        }
        for (slot, p) in self
            .observed_us
            .iter()
            .zip(crate::settings::HEDGE_PERCENTILES)
        {
            let rank = ((p / 100.0 * n as f64).ceil() as u64).clamp(1, n);
            let mut seen = 0;
            for (b, k) in delta.iter().enumerate() {
                seen += k;
                if seen >= rank {
                    slot.store(bucket_value(b) as u64, Relaxed);
                    break;
                }
            }
        }
    }

    /// The observed latency at `percentile` (one of
    /// [`HEDGE_PERCENTILES`](crate::settings::HEDGE_PERCENTILES)), if known.
    pub(crate) fn observed(&self, percentile: f64) -> Option<std::time::Duration> {
        let i = crate::settings::HEDGE_PERCENTILES
            .iter()
            .position(|p| *p == percentile)?;
        match self.observed_us[i].load(Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// The samples so far and one taken now (starting the history if nothing watched
    /// the policy yet: from an empty sample at the policy's creation).
    pub(crate) fn history(&self) -> Vec<Sample> {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let h = history.get_or_insert_with(|| {
            // Nothing was counted before the policy was made.
            VecDeque::from([Sample {
                at_ms: self.created_ms,
                totals: Totals::default(),
            }])
        });
        let mut v: Vec<Sample> = h.iter().cloned().collect();
        v.push(Sample {
            at_ms: unix_ms(),
            totals: self.totals(),
        });
        v
    }
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in 1..100_000u64 {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            let (lo, hi) = (bucket_floor(b), bucket_floor(b + 1));
            assert!(lo <= us as f64 && (us as f64) < hi, "{us} in [{lo}, {hi})");
            assert!(hi / lo <= 1.5, "{us}: bucket {lo}..{hi} too wide");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = Stats::new();
        std::thread::scope(|s| {
            for t in 0..8 {
                let stats = &stats;
                s.spawn(move || {
                    for i in 0..10_000 {
                        stats.call(SUCCESS, if i % 2 == 0 { 0 } else { 100 + t });
                    }
                });
            }
        });
        let t = stats.totals();
        assert_eq!(t.counts[SUCCESS], 80_000);
        assert_eq!(t.latency.iter().sum::<u64>(), 40_000);
    }
}
