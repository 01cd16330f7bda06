//! A switch's value: plain data, read from JSON, validated field by field.

use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;
use crate::settings::decode::{self, Settings};

/// The most variants one switch may have.
pub const MAX_VARIANTS: usize = 30;

/// How keys are spread over variants; part of the stored value so that it can change
/// later without surprise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// flagd ≥ 0.15's fractional bucketing ("v2"): `h = murmur3_x86_32(name ++ key,
    /// seed 0)`, `bucket = (h * total_weight) >> 32`, the first variant whose cumulative
    /// weight exceeds the bucket. The only algorithm today, and the default.
    #[default]
    FractionalV2,
}

/// A switch's value (key `switches/<name>`); see the [module docs](super).
///
/// Every field has a default, so a stored value names only what it changes. A switch
/// with no `variants` is a percentage switch: the share `percent` of keys is on. A
/// switch with `variants` picks one of them by weight. `on` overrides both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SwitchSettings {
    /// The bucketing algorithm. Default `fractional_v2`.
    pub algorithm: Algorithm,
    /// An operator's override: `Some(false)` turns the switch off for every key (a
    /// percentage switch answers off, a variant switch serves its first variant;
    /// reason "disabled"); `Some(true)` turns a percentage switch on for every key (a
    /// variant switch is unaffected); `None` (JSON `null`, the default) follows
    /// `percent` / `variants`.
    pub on: Option<bool>,
    /// The share of keys that are on, `0..=100`, in steps of 0.0001 (finer values are
    /// rounded). Applies when `variants` is empty. Default 0.
    pub percent: f64,
    /// Weighted variants (at most [`MAX_VARIANTS`]); empty for a percentage switch.
    /// Order matters: keys fill the variants in list order, so growing the first
    /// variant's weight only adds keys to it. Default empty.
    pub variants: Vec<VariantSettings>,
}

/// One weighted variant of a switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VariantSettings {
    /// The variant's name: 1 to 64 bytes, unique within the switch.
    pub name: String,
    /// The variant's weight; weights are relative (`[1, 3]` is 25 % / 75 %). The sum
    /// must be positive and at most `u32::MAX`.
    pub weight: u32,
    /// The variant's value, any JSON but `null`; by default the name as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl VariantSettings {
    /// A variant named `name` with weight `weight`, whose value is its name.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        VariantSettings {
            name: name.into(),
            weight,
            value: None,
        }
    }

    /// The same variant with value `value`.
    pub fn value(mut self, value: impl Into<serde_json::Value>) -> Self {
        self.value = Some(value.into());
        self
    }
}

impl Default for SwitchSettings {
    /// Off: a percentage switch at 0 %.
    fn default() -> Self {
        SwitchSettings {
            algorithm: Algorithm::FractionalV2,
            on: None,
            percent: 0.0,
            variants: Vec::new(),
        }
    }
}

impl SwitchSettings {
    /// A percentage switch that is off (0 %).
    pub fn off() -> Self {
        Self::default()
    }

    /// A percentage switch that is on for every key (100 %). An operator can still roll
    /// it back partly with `{"percent": 90}`.
    pub fn on() -> Self {
        Self::percent(100.0)
    }

    /// A percentage switch on for `percent` % of keys.
    pub fn percent(percent: f64) -> Self {
        SwitchSettings {
            percent,
            ..Self::default()
        }
    }

    /// A variant switch.
    pub fn variants(variants: impl IntoIterator<Item = VariantSettings>) -> Self {
        SwitchSettings {
            variants: variants.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Deserializes and validates an already parsed JSON value. Errors name the field
    /// and the rule (`percent: 150 is not in 0..=100`). As strict as
    /// [`PolicySettings::from_json`](crate::settings::PolicySettings::from_json): an
    /// object, each field at most once, in exactly its documented form.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        decode::from_value(&value)
    }

    /// Parses and validates JSON bytes (a field given twice is an error).
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        decode::from_json(json)
    }

    /// Checks every field against its rule; the first broken rule is returned.
    pub fn validate(&self) -> Result<(), SettingsError> {
        // `contains` is false for NaN, so NaN is rejected too.
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(SettingsError::new(
                "percent",
                format!("{} is not in 0..=100", self.percent),
            ));
        }
        if self.variants.len() > MAX_VARIANTS {
            return Err(SettingsError::new(
                "variants",
                format!(
                    "{} variants; at most {MAX_VARIANTS} are allowed",
                    self.variants.len()
                ),
            ));
        }
        let mut total = 0u64;
        for (i, v) in self.variants.iter().enumerate() {
            if v.name.is_empty() || v.name.len() > 64 {
                return Err(SettingsError::new(
                    format!("variants[{i}].name"),
                    format!("`{}` is not 1 to 64 bytes long", v.name),
                ));
            }
            if self.variants[..i].iter().any(|w| w.name == v.name) {
                return Err(SettingsError::new(
                    format!("variants[{i}].name"),
                    format!("`{}` appears twice", v.name),
                ));
            }
            if v.value.as_ref().is_some_and(serde_json::Value::is_null) {
                return Err(SettingsError::new(
                    format!("variants[{i}].value"),
                    "must not be null",
                ));
            }
            total += u64::from(v.weight);
        }
        if !self.variants.is_empty() && !(1..=u64::from(u32::MAX)).contains(&total) {
            return Err(SettingsError::new(
                "variants",
                format!(
                    "the weights add up to {total}, which is not in 1..={}",
                    u32::MAX
                ),
            ));
        }
        Ok(())
    }
}

impl Settings for SwitchSettings {
    fn check(&self) -> Result<(), SettingsError> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        SwitchSettings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn partial_values_keep_defaults() {
        let s = SwitchSettings::from_json(br#"{"percent": 20}"#).unwrap();
        assert_eq!(s, SwitchSettings::percent(20.0));
        let s = SwitchSettings::from_json(br#"{"on": false}"#).unwrap();
        assert_eq!(s.on, Some(false));
        assert_eq!(s.algorithm, Algorithm::FractionalV2);
    }

    #[test]
    fn round_trips_through_json() {
        let s = SwitchSettings::variants([
            VariantSettings::new("a", 1),
            VariantSettings::new("b", 3).value(serde_json::json!({"x": 1})),
        ]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(SwitchSettings::from_value(v).unwrap(), s);
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        assert_eq!(err(r#"{"percent": 150}"#), "percent: 150 is not in 0..=100");
        assert_eq!(err(r#"{"percent": -1}"#), "percent: -1 is not in 0..=100");
        assert!(err(r#"{"percnt": 1}"#).starts_with("percnt: unknown field `percnt`"));
        assert!(
            err(r#"{"algorithm": "fractional_v9"}"#)
                .starts_with("algorithm: unknown variant `fractional_v9`")
        );
        assert_eq!(
            err(r#"{"variants": [{"name": "a", "weight": 0}]}"#),
            "variants: the weights add up to 0, which is not in 1..=4294967295"
        );
        assert_eq!(
            err(r#"{"variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}"#),
            "variants[1].name: `a` appears twice"
        );
        assert_eq!(
            err(r#"{"variants": [{"name": "", "weight": 1}]}"#),
            "variants[0].name: `` is not 1 to 64 bytes long"
        );
        assert!(
            err(r#"{"variants": [{"name": "a", "weight": -1}]}"#)
                .starts_with("variants[0].weight: invalid value")
        );
        assert!(
            err(r#"{"variants": [{"name": "a"}]}"#)
                .starts_with("variants[0]: missing field `weight`")
        );
        assert_eq!(
            err(r#"{"on": "yes"}"#),
            "on: invalid type: string \"yes\", expected a boolean"
        );
    }
}
