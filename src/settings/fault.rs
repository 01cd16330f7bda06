//! Fault injection's settings.

use serde::{Deserialize, Serialize};

use super::error::{SettingsError, range_f64, range_u64};

/// Which calls a fault may hit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum FaultTarget {
    /// Every call.
    #[default]
    All,
    /// Only calls whose key (the layer's key extractor) is in this sticky percentage of
    /// keys — the same bucketing as the switches (`0..=100`).
    Keys(f64),
    /// Only calls that carry the layer's marker (e.g. a header a test sets).
    Marked,
}

/// Fault injection: abort or delay a percentage of calls, live. Off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FaultSettings {
    /// Percentage of targeted calls that fail at once (`0..=100`, default 0): with the
    /// layer's abort response, or the `InjectedFault` error.
    pub abort_percent: f64,
    /// Percentage of targeted calls that are delayed (`0..=100`, default 0); decided
    /// independently of the abort.
    pub delay_percent: f64,
    /// The delay, `0..=3_600_000` ms. Default 0.
    pub delay_ms: u64,
    /// Which calls may be hit. Default `"all"`; `{"keys": 5}`; `"marked"`.
    pub target: FaultTarget,
    /// Faults in progress at once, `1..=1_000_000`; beyond it calls pass untouched.
    /// `null` (the default): no cap.
    pub max_active: Option<u32>,
}

impl FaultSettings {
    /// Whether any fault can be injected.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.abort_percent > 0.0 || (self.delay_percent > 0.0 && self.delay_ms > 0)
    }

    /// Checks every field (named `fault.*`).
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        range_f64(
            "fault.abort_percent",
            self.abort_percent,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_f64(
            "fault.delay_percent",
            self.delay_percent,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64("fault.delay_ms", self.delay_ms, 0, 3_600_000)?;
        if let FaultTarget::Keys(p) = self.target {
            range_f64("fault.target.keys", p, 0.0, 100.0, "0..=100")?;
        }
        if let Some(n) = self.max_active {
            range_u64("fault.max_active", u64::from(n), 1, 1_000_000)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::PolicySettings;

    fn err(json: &str) -> String {
        PolicySettings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn fault_settings_are_validated() {
        for (json, want) in [
            (
                r#"{"fault":{"abort_percent":-5}}"#,
                "fault.abort_percent: -5 is not in 0..=100",
            ),
            (
                r#"{"fault":{"delay_percent":500}}"#,
                "fault.delay_percent: 500 is not in 0..=100",
            ),
            (
                r#"{"fault":{"delay_ms":18446744073709551615}}"#,
                "fault.delay_ms: 18446744073709551615 is not in 0..=3600000",
            ),
            (
                r#"{"fault":{"target":{"keys":-1}}}"#,
                "fault.target.keys: -1 is not in 0..=100",
            ),
            (
                r#"{"fault":{"max_active":0}}"#,
                "fault.max_active: 0 is not in 1..=1000000",
            ),
        ] {
            assert_eq!(err(json), want);
        }
        let ok = r#"{"fault":{"abort_percent":100,"delay_percent":0.5,"delay_ms":3600000,"target":{"keys":25},"max_active":1}}"#;
        PolicySettings::from_json(ok.as_bytes()).unwrap();
    }
}
