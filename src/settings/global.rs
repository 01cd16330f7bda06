//! Settings of the whole registry (key `global`).

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, path_error};

/// Settings of the whole registry rather than of one policy (key `global`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalSettings {
    /// Kills every non-critical policy (`"critical": false`) at once: they answer from
    /// their static fallback. Default `false`.
    pub shed_non_critical: bool,
}

impl GlobalSettings {
    /// Deserializes an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        serde_path_to_error::deserialize(value).map_err(path_error)
    }
}
