//! What [`Policy::stats`](crate::Policy::stats) returns.

use serde::Serialize;

use super::{
    BUCKETS, BULKHEAD_FULL, FAILURE, FALLBACK, FAULT_ABORT, FAULT_DELAY, HEDGE, KILLED, REJECTED,
    RETRY, RETRY_REFUSED, SUCCESS, Sample, TIMEOUT, bucket_value,
};
use crate::breaker::BreakerState;

/// Calls by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CallCounts {
    /// Made and succeeded (as classified).
    pub success: u64,
    /// Made and failed (as classified), other than by timing out.
    pub failure: u64,
    /// Made and timed out.
    pub timeout: u64,
    /// Not made: the breaker was open (or forced open, or out of half-open trials).
    pub rejected: u64,
    /// Not made: the kill switch (or shedding of non-critical dependencies).
    pub killed: u64,
    /// Not made: the bulkhead was full.
    pub bulkhead_full: u64,
    /// Faults injected: aborts.
    pub fault_abort: u64,
    /// Faults injected: delays.
    pub fault_delay: u64,
    /// Retries made (attempts after a call's first; each is also counted above by its
    /// outcome, so `success + failure + timeout` counts attempts).
    pub retries: u64,
    /// Retries and hedges the budget refused (a refused retry ends the call with its
    /// last attempt's result).
    pub retries_refused: u64,
    /// Hedges sent: extra copies of calls whose first attempt was slow (each is also
    /// counted above by its outcome if it finished).
    pub hedges: u64,
}

impl CallCounts {
    fn of(c: &[u64]) -> Self {
        CallCounts {
            success: c[SUCCESS],
            failure: c[FAILURE],
            timeout: c[TIMEOUT],
            rejected: c[REJECTED],
            killed: c[KILLED],
            bulkhead_full: c[BULKHEAD_FULL],
            fault_abort: c[FAULT_ABORT],
            fault_delay: c[FAULT_DELAY],
            retries: c[RETRY],
            retries_refused: c[RETRY_REFUSED],
            hedges: c[HEDGE],
        }
    }

    /// Calls that reached the dependency (success, failure, timeout).
    pub fn made(&self) -> u64 {
        self.success + self.failure + self.timeout
    }

    /// Every call, made or not.
    pub fn all(&self) -> u64 {
        self.made() + self.rejected + self.killed + self.bulkhead_full
    }

    /// Failures and timeouts as a percentage of the calls made (0 when none was).
    pub fn error_percent(&self) -> f64 {
        match self.made() {
            0 => 0.0,
            n => (self.failure + self.timeout) as f64 * 100.0 / n as f64,
        }
    }
}

/// Answers of one fallback tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TierCounts {
    /// The tier answered.
    pub served: u64,
    /// The tier was tried and could not answer.
    pub failed: u64,
}

/// Answers by fallback tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FallbackCounts {
    /// The static tier.
    #[serde(rename = "static")]
    pub static_: TierCounts,
    /// The cache tier.
    pub cache: TierCounts,
    /// The service tier.
    pub service: TierCounts,
}

impl FallbackCounts {
    fn of(c: &[u64]) -> Self {
        let tier = |t: usize| TierCounts {
            served: c[FALLBACK + 2 * t],
            failed: c[FALLBACK + 2 * t + 1],
        };
        FallbackCounts {
            static_: tier(0),
            cache: tier(1),
            service: tier(2),
        }
    }

    /// Calls a tier answered.
    pub fn served(&self) -> u64 {
        self.static_.served + self.cache.served + self.service.served
    }
}

/// Latency percentiles of the calls made, in milliseconds (sub-millisecond resolution:
/// buckets of ±12 %; a call ready on its first poll counts as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest call's bucket.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// From a histogram of `made` calls (those not in a bucket took no time).
    fn of(buckets: &[u64], made: u64) -> Self {
        let in_buckets: u64 = buckets.iter().sum();
        let total = made.max(in_buckets);
        if total == 0 {
            return Latency::default();
        }
        let at = |q| Self::quantile(buckets, made, q);
        let max = buckets
            .iter()
            .rposition(|n| *n > 0)
            .map_or(0.0, |b| bucket_value(b) / 1000.0);
        let sum: f64 = buckets
            .iter()
            .enumerate()
            .map(|(b, n)| bucket_value(b) * *n as f64)
            .sum();
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max,
            mean: sum / 1000.0 / total as f64,
        }
    }

    /// The `q` quantile (0..=1), in milliseconds, of a histogram (for the Hystrix
    /// stream's percentiles).
    pub(crate) fn quantile(buckets: &[u64], made: u64, q: f64) -> f64 {
        let in_buckets: u64 = buckets.iter().sum();
        let total = made.max(in_buckets);
        let zeros = total - in_buckets;
        let rank = ((q * total as f64).ceil() as u64).max(1);
        if total == 0 || rank <= zeros {
            return 0.0;
        }
        let mut seen = zeros;
        for (b, n) in buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_value(b) / 1000.0;
            }
        }
        0.0
    }
}

/// One second of a policy's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Point {
    /// The end of the second, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Calls in it, made or not.
    pub calls: u64,
    /// Failures and timeouts in it.
    pub errors: u64,
    /// Calls a fallback tier answered in it.
    pub fallback: u64,
}

/// A policy's statistics: a rolling view (the last 10 s, or as much of them as has been
/// watched), totals since the policy was made, and its breaker; see [`crate::stats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PolicyStats {
    /// The policy's name.
    pub name: String,
    /// The span the rolling figures cover, in ms: about 10,000 once the policy has been
    /// watched that long; before, back to when watching began or the policy was made.
    pub window_ms: u64,
    /// Calls in the rolling window, by outcome.
    pub calls: CallCounts,
    /// Fallback answers in the rolling window.
    pub fallback: FallbackCounts,
    /// Latency of the calls made in the rolling window.
    pub latency: Latency,
    /// Calls since the policy was made.
    pub totals: CallCounts,
    /// Fallback answers since the policy was made.
    pub fallback_totals: FallbackCounts,
    /// Calls in flight now.
    pub in_flight: u64,
    /// The breaker as callers meet it (forced modes included).
    pub breaker: BreakerState,
    /// When the breaker last changed state (or its mode), in ms since the Unix epoch.
    pub breaker_since_ms: u64,
    /// One point per second, oldest first, for as long as the policy has been watched
    /// (up to two minutes).
    pub history: Vec<Point>,
    /// The rolling window's latency histogram (for streams that report percentiles).
    #[serde(skip)]
    pub(crate) buckets: Vec<u64>,
}

/// The rolling view's span.
pub(crate) const ROLLING_MS: u64 = 10_000;

impl PolicyStats {
    /// Builds the view from samples (oldest first, the last taken now).
    pub(crate) fn from_samples(
        name: &str,
        samples: &[Sample],
        in_flight: u64,
        breaker: BreakerState,
        breaker_since_ms: u64,
    ) -> PolicyStats {
        let last = samples.last().expect("at least the sample taken now");
        let earlier = &samples[..samples.len() - 1];
        // The newest sample at least a window old, else the oldest there is.
        let base = earlier
            .iter()
            .rev()
            .find(|s| last.at_ms.saturating_sub(s.at_ms) >= ROLLING_MS)
            .or(earlier.first());
        let (base_counts, base_latency, base_ms): (Vec<u64>, Vec<u64>, u64) = match base {
            Some(b) => (b.totals.counts.to_vec(), b.totals.latency.to_vec(), b.at_ms),
            None => (
                vec![0; last.totals.counts.len()],
                vec![0; BUCKETS],
                last.at_ms,
            ),
        };
        let counts: Vec<u64> = last
            .totals
            .counts
            .iter()
            .zip(&base_counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let buckets: Vec<u64> = last
            .totals
            .latency
            .iter()
            .zip(&base_latency)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let calls = CallCounts::of(&counts);
        let history = samples
            .windows(2)
            .map(|w| {
                let d = |i: usize| w[1].totals.counts[i].saturating_sub(w[0].totals.counts[i]);
                let fallback = (0..3).map(|t| d(FALLBACK + 2 * t)).sum();
                Point {
                    at_ms: w[1].at_ms,
                    calls: [SUCCESS, FAILURE, TIMEOUT, REJECTED, KILLED, BULKHEAD_FULL]
                        .into_iter()
                        .map(d)
                        .sum(),
                    errors: d(FAILURE) + d(TIMEOUT),
                    fallback,
                }
            })
            .collect();
        PolicyStats {
            name: name.to_owned(),
            window_ms: last.at_ms.saturating_sub(base_ms),
            latency: Latency::of(&buckets, calls.made()),
            calls,
            fallback: FallbackCounts::of(&counts),
            totals: CallCounts::of(&last.totals.counts),
            fallback_totals: FallbackCounts::of(&last.totals.counts),
            in_flight,
            breaker,
            breaker_since_ms,
            history,
            buckets,
        }
    }
}
