//! The timeout layer's settings.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_u64};

/// The timeout layer's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutSettings {
    /// The deadline of one call in milliseconds, `1..=3_600_000`; `null` for none.
    /// Default 1000 (Hystrix's).
    pub ms: Option<u64>,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings { ms: Some(1000) }
    }
}

impl TimeoutSettings {
    /// Checks every field (named `timeout.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        if let Some(ms) = self.ms {
            range_u64("timeout.ms", ms, 1, 3_600_000)?;
        }
        Ok(())
    }
}
