//! Settings of the whole registry (key `global`).

use serde::{Deserialize, Serialize};

use super::decode::{self, Settings};
use super::error::SettingsError;

/// Settings of the whole registry rather than of one policy (key `global`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GlobalSettings {
    /// Kills every non-critical policy (`"critical": false`) at once: they answer from
    /// their static fallback. Default `false`.
    pub shed_non_critical: bool,
    /// Stops every chaos experiment at once (FIT's "halt all failures"): each process
    /// stops injecting on this write, and the runs' verdicts become `halted`. Default
    /// `false`; setting it back does not restart a halted run (delete its result).
    pub halt_experiments: bool,
}

impl GlobalSettings {
    /// These settings changed by `f` (see [`PolicySettings::with`](super::PolicySettings::with)).
    #[must_use]
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Deserializes an already parsed JSON value, strictly: an object with each field
    /// at most once (see [`PolicySettings::from_json`](super::PolicySettings::from_json)).
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        decode::from_value(&value)
    }
}

impl Settings for GlobalSettings {
    fn check(&self) -> Result<(), SettingsError> {
        Ok(())
    }
}
