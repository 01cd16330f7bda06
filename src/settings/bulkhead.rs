//! The bulkhead's settings.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_u64};

/// The bulkhead's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadSettings {
    /// Calls allowed in flight at once, `1..=1_000_000`; a call beyond it is rejected at
    /// once (no queue) with `BulkheadFull`. `null` (the default) means no limit.
    pub max_concurrent: Option<u32>,
}

impl BulkheadSettings {
    /// Checks every field (named `bulkhead.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        if let Some(n) = self.max_concurrent {
            range_u64("bulkhead.max_concurrent", u64::from(n), 1, 1_000_000)?;
        }
        Ok(())
    }
}
