//! The circuit breaker's settings.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_f64, range_u64};

/// The largest number of buckets a breaker's rolling window may have.
pub const MAX_BUCKETS: u32 = 60;

/// How a circuit breaker treats calls, set live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerMode {
    /// Records outcomes, opens and closes by its thresholds, rejects while open.
    #[default]
    Normal,
    /// Rejects every call (an operator tripped it by hand).
    ForceOpen,
    /// Admits every call and never opens; outcomes are still recorded.
    ForceClosed,
    /// Runs the state machine (opens, half-opens, closes, emits events) but never
    /// rejects: a dry run of new thresholds.
    MetricsOnly,
}

/// The circuit breaker's settings (Hystrix's defaults, resilience4j's refinements).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerSettings {
    /// How calls are treated. Default `normal`.
    pub mode: BreakerMode,
    /// Length of the rolling window in milliseconds, `100..=3_600_000`. Default 10000.
    pub window_ms: u64,
    /// Buckets in the rolling window, `1..=60`, dividing `window_ms` evenly. Default 10.
    pub buckets: u32,
    /// Calls the window must hold before the breaker may open, `1..=1_000_000`. Default 20.
    pub min_calls: u32,
    /// Failure percentage in the window that opens the breaker, `0..=100`
    /// (`0` opens on any failure once `min_calls` is reached). Default 50.
    pub error_rate: f64,
    /// A call slower than this many milliseconds counts as slow, `1..=3_600_000`;
    /// `null` (the default) turns slow-call tracking off.
    pub slow_call_ms: Option<u64>,
    /// Slow-call percentage in the window that opens the breaker, `0..=100`. Default 100.
    pub slow_call_rate: f64,
    /// How long the breaker stays open before trial calls, `1..=86_400_000` ms.
    /// Default 5000.
    pub open_ms: u64,
    /// Each consecutive re-open (a trial failed) multiplies the open duration by this,
    /// `1.0..=100.0`; `1.0` (the default) turns backoff off.
    pub open_backoff: f64,
    /// Cap of the open duration under backoff, `open_ms..=86_400_000` ms. Default 60000.
    pub open_max_ms: u64,
    /// Random spread of each open duration, as a fraction `0.0..=1.0` (`0.1` is ±10 %).
    /// Default 0.
    pub open_jitter: f64,
    /// Trial calls admitted in the half-open state, `1..=1000`; all must succeed to
    /// close the breaker, any failure re-opens it. Default 1.
    pub half_open_calls: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            mode: BreakerMode::Normal,
            window_ms: 10_000,
            buckets: 10,
            min_calls: 20,
            error_rate: 50.0,
            slow_call_ms: None,
            slow_call_rate: 100.0,
            open_ms: 5_000,
            open_backoff: 1.0,
            open_max_ms: 60_000,
            open_jitter: 0.0,
            half_open_calls: 1,
        }
    }
}

impl BreakerSettings {
    /// Milliseconds per bucket.
    #[inline]
    pub fn bucket_ms(&self) -> u64 {
        self.window_ms / u64::from(self.buckets.max(1))
    }

    /// Whether `other` has the same window shape (length and bucket count).
    pub fn same_window(&self, other: &BreakerSettings) -> bool {
        self.window_ms == other.window_ms && self.buckets == other.buckets
    }

    /// Checks every field (named `breaker.*`), cross-field rules included.
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        range_u64("breaker.window_ms", self.window_ms, 100, 3_600_000)?;
        range_u64(
            "breaker.buckets",
            u64::from(self.buckets),
            1,
            u64::from(MAX_BUCKETS),
        )?;
        if !self.window_ms.is_multiple_of(u64::from(self.buckets)) {
            return Err(SettingsError::new(
                "breaker.buckets",
                format!(
                    "{} does not divide breaker.window_ms ({}) evenly",
                    self.buckets, self.window_ms
                ),
            ));
        }
        range_u64("breaker.min_calls", u64::from(self.min_calls), 1, 1_000_000)?;
        range_f64("breaker.error_rate", self.error_rate, 0.0, 100.0, "0..=100")?;
        if let Some(ms) = self.slow_call_ms {
            range_u64("breaker.slow_call_ms", ms, 1, 3_600_000)?;
        }
        range_f64(
            "breaker.slow_call_rate",
            self.slow_call_rate,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64("breaker.open_ms", self.open_ms, 1, 86_400_000)?;
        range_f64(
            "breaker.open_backoff",
            self.open_backoff,
            1.0,
            100.0,
            "1.0..=100.0",
        )?;
        range_u64(
            "breaker.open_max_ms",
            self.open_max_ms,
            self.open_ms,
            86_400_000,
        )?;
        range_f64(
            "breaker.open_jitter",
            self.open_jitter,
            0.0,
            1.0,
            "0.0..=1.0",
        )?;
        range_u64(
            "breaker.half_open_calls",
            u64::from(self.half_open_calls),
            1,
            1000,
        )
    }
}
