//! The retry stage's settings.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_f64, range_u64};

/// How the wait before a retry is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `0..=min(backoff_max_ms, backoff_min_ms × 2^(retry − 1))` (AWS's "full
    /// jitter": the fewest collisions for the least total wait).
    #[default]
    Full,
    /// Uniform in `backoff_min_ms..=min(backoff_max_ms, 3 × the previous wait)` (AWS's
    /// "decorrelated jitter").
    Decorrelated,
}

/// The retry stage's settings (`retry.*`): off unless `max_attempts` is above 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Attempts per call, the first one included, `1..=10`. Default 1: no retry.
    pub max_attempts: u32,
    /// The shortest wait before a retry, ms, `1..=60_000`. Default 25.
    pub backoff_min_ms: u64,
    /// The longest wait before a retry, ms, `backoff_min_ms..=600_000`. Default 1000.
    pub backoff_max_ms: u64,
    /// How the wait is drawn. Default `full`.
    pub jitter: Jitter,
    /// Retries allowed, as a percentage of the requests of the last `budget_window_ms`
    /// (`0..=100`), shared by every clone and thread of the policy. Default 20 (Finagle's
    /// and linkerd's).
    pub budget_percent: f64,
    /// Retries allowed per second of the window on top of the percentage, so that a
    /// quiet dependency can still be retried, `0..=100_000`. Default 10 (Finagle's).
    pub budget_min_per_s: u32,
    /// The window the budget looks back over, ms, `1_000..=600_000`. Default 10_000.
    pub budget_window_ms: u64,
    /// A deadline over all attempts and waits of a call, ms, `1..=3_600_000`; `null` for
    /// none (default). Each attempt is bounded by `timeout.ms` besides.
    pub deadline_ms: Option<u64>,
    /// The longest server pushback honoured (HTTP `Retry-After`, gRPC
    /// `grpc-retry-pushback-ms`), ms, `0..=3_600_000`; a server asking for a longer wait
    /// is not retried. Default 10_000.
    pub pushback_max_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 1,
            backoff_min_ms: 25,
            backoff_max_ms: 1000,
            jitter: Jitter::Full,
            budget_percent: 20.0,
            budget_min_per_s: 10,
            budget_window_ms: 10_000,
            deadline_ms: None,
            pushback_max_ms: 10_000,
        }
    }
}

impl RetrySettings {
    /// Whether the stage retries at all.
    pub fn enabled(&self) -> bool {
        self.max_attempts > 1
    }

    /// Checks every field (named `retry.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        range_u64("retry.max_attempts", u64::from(self.max_attempts), 1, 10)?;
        range_u64("retry.backoff_min_ms", self.backoff_min_ms, 1, 60_000)?;
        range_u64(
            "retry.backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_min_ms,
            600_000,
        )?;
        range_f64(
            "retry.budget_percent",
            self.budget_percent,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64(
            "retry.budget_min_per_s",
            u64::from(self.budget_min_per_s),
            0,
            100_000,
        )?;
        range_u64(
            "retry.budget_window_ms",
            self.budget_window_ms,
            1_000,
            600_000,
        )?;
        if let Some(ms) = self.deadline_ms {
            range_u64("retry.deadline_ms", ms, 1, 3_600_000)?;
        }
        range_u64("retry.pushback_max_ms", self.pushback_max_ms, 0, 3_600_000)
    }
}

/// The percentiles of observed latency a hedge may wait for.
pub const HEDGE_PERCENTILES: [f64; 4] = [50.0, 90.0, 95.0, 99.0];

/// Hedged requests (`hedge.*`): off unless `max_extra` is above 0 and a delay is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeSettings {
    /// Extra copies of a call sent while its first attempt is still out, one per delay,
    /// `0..=3`. Default 0: no hedging.
    pub max_extra: u32,
    /// The wait before each extra copy, ms, `1..=600_000`; used until the percentile
    /// below is known, or alone.
    pub delay_ms: Option<u64>,
    /// Wait for the policy's observed latency at this percentile (one of 50, 90, 95, 99)
    /// instead: the calls that waited for the dependency over the last second with
    /// at least 20 of them, else the last such second, else `delay_ms`.
    pub at_percentile: Option<f64>,
}

impl HedgeSettings {
    /// Whether calls are hedged at all.
    pub fn enabled(&self) -> bool {
        self.max_extra > 0 && (self.delay_ms.is_some() || self.at_percentile.is_some())
    }

    /// Checks every field (named `hedge.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        range_u64("hedge.max_extra", u64::from(self.max_extra), 0, 3)?;
        if let Some(ms) = self.delay_ms {
            range_u64("hedge.delay_ms", ms, 1, 600_000)?;
        }
        if let Some(p) = self.at_percentile
            && !HEDGE_PERCENTILES.contains(&p)
        {
            return Err(SettingsError::new(
                "hedge.at_percentile",
                format!("{p} is not one of 50, 90, 95, 99"),
            ));
        }
        Ok(())
    }
}
