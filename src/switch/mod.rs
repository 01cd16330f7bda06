//! Feature switches: named, live, evaluated on the hot path.
//!
//! (Being built: percentage rollouts with flagd-compatible bucketing, weighted
//! variants, routing between old and new code paths, an OpenFeature provider.)

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;

/// A switch's value (key `switches/<name>`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchSettings {
    /// On or off.
    pub on: bool,
}

impl SwitchSettings {
    /// Deserializes and validates an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        serde_path_to_error::deserialize(value)
            .map_err(|e| SettingsError::new(e.path().to_string(), e.into_inner().to_string()))
    }
}

/// A live switch handle; cheap to clone.
#[derive(Clone)]
pub struct Switch {
    inner: Arc<SwitchInner>,
}

struct SwitchInner {
    name: Box<str>,
    settings: ArcSwap<SwitchSettings>,
}

impl Switch {
    /// A switch of its own, outside any registry.
    pub fn detached(name: &str, settings: SwitchSettings) -> Switch {
        Switch {
            inner: Arc::new(SwitchInner {
                name: name.into(),
                settings: ArcSwap::from_pointee(settings),
            }),
        }
    }

    /// The switch's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value in force now.
    pub fn settings(&self) -> Arc<SwitchSettings> {
        self.inner.settings.load_full()
    }

    /// Replaces the value; the next evaluation uses it.
    pub fn update(&self, settings: SwitchSettings) -> Result<(), SettingsError> {
        self.inner.settings.store(Arc::new(settings));
        Ok(())
    }
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switch")
            .field("name", &self.name())
            .field("settings", &self.settings())
            .finish()
    }
}
