//! The fallback's settings: which tiers, in which order, on which triggers.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_u64};

/// A fallback tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Tier {
    /// A fixed response, or one built from the request's parts and the error.
    Static,
    /// The last good response for the request's key.
    Cache,
    /// An alternate service.
    Service,
}

impl Tier {
    /// The tier's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Static => "static",
            Tier::Cache => "cache",
            Tier::Service => "service",
        }
    }
}

/// What makes the fallback answer instead of the dependency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Triggers {
    /// The breaker rejected the call. Default `true`.
    pub open: bool,
    /// The kill switch is on. Default `true`.
    pub killed: bool,
    /// The call timed out. Default `true`.
    pub timeout: bool,
    /// The bulkhead was full. Default `true`.
    pub bulkhead: bool,
    /// The call failed, as classified (an `Err`, or e.g. an HTTP 5xx). Default `true`.
    pub failure: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            open: true,
            killed: true,
            timeout: true,
            bulkhead: true,
            failure: true,
        }
    }
}

/// The fallback's settings. Which tiers exist is decided in code (a static value needs
/// code to build it); these settings choose their order and bounds live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FallbackSettings {
    /// The order in which tiers are tried; tiers not configured in code are skipped,
    /// configured tiers not listed are not used. `null` (the default): the order in
    /// which the code added them.
    pub tiers: Option<Vec<Tier>>,
    /// What makes the fallback answer.
    pub on: Triggers,
    /// Deadline of the service tier, `1..=3_600_000` ms. Default 1000.
    pub timeout_ms: u64,
    /// Service-tier calls in flight at once, `1..=100_000`; beyond it the tier is
    /// skipped (Hystrix's fallback semaphore). Default 10.
    pub max_concurrent: u32,
    /// The cache tier serves nothing older than this, `1..=604_800_000` ms.
    /// Default 300000 (5 minutes).
    pub cache_max_stale_ms: u64,
    /// A key's cached response is refreshed from a success at most this often,
    /// `0..=3_600_000` ms (0: on every success). Default 1000.
    pub cache_refresh_ms: u64,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            tiers: None,
            on: Triggers::default(),
            timeout_ms: 1_000,
            max_concurrent: 10,
            cache_max_stale_ms: 300_000,
            cache_refresh_ms: 1_000,
        }
    }
}

impl FallbackSettings {
    /// Checks every field (named `fallback.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        if let Some(tiers) = &self.tiers {
            for (i, t) in tiers.iter().enumerate() {
                if tiers[..i].contains(t) {
                    return Err(SettingsError::new(
                        "fallback.tiers",
                        format!("`{}` is listed twice", t.as_str()),
                    ));
                }
            }
        }
        range_u64("fallback.timeout_ms", self.timeout_ms, 1, 3_600_000)?;
        range_u64(
            "fallback.max_concurrent",
            u64::from(self.max_concurrent),
            1,
            100_000,
        )?;
        range_u64(
            "fallback.cache_max_stale_ms",
            self.cache_max_stale_ms,
            1,
            604_800_000,
        )?;
        range_u64(
            "fallback.cache_refresh_ms",
            self.cache_refresh_ms,
            0,
            3_600_000,
        )
    }
}
