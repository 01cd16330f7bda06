//! [`PolicySettings`]: everything that protects one dependency.

use serde::{Deserialize, Serialize};

use super::decode::{self, Settings};
use super::error::SettingsError;
use super::{
    BreakerSettings, BulkheadSettings, FallbackSettings, FaultSettings, HedgeSettings,
    RetrySettings, TimeoutSettings,
};

/// Everything that protects one dependency ("policy"); see the [module docs](super).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicySettings {
    /// Kill switch: when `true`, calls never reach the dependency; they go straight to
    /// the fallback, or fail at once with `Killed`. Default `false`.
    pub kill: bool,
    /// Whether the dependency is critical. A non-critical one goes straight to its
    /// static fallback on any failure, and is killed while the fleet-wide
    /// `shed_non_critical` switch is on ([`GlobalSettings`](super::GlobalSettings)).
    /// Default `true`.
    pub critical: bool,
    /// The timeout layer's settings.
    pub timeout: TimeoutSettings,
    /// The circuit breaker's settings.
    pub breaker: BreakerSettings,
    /// The bulkhead's settings.
    pub bulkhead: BulkheadSettings,
    /// The fallback's settings.
    pub fallback: FallbackSettings,
    /// Fault injection (off by default).
    pub fault: FaultSettings,
    /// The retry stage (off by default: `retry.max_attempts` is 1).
    pub retry: RetrySettings,
    /// Hedged requests (off by default: `hedge.max_extra` is 0), made by the retry
    /// stage and paid from its budget.
    pub hedge: HedgeSettings,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            kill: false,
            critical: true,
            timeout: TimeoutSettings::default(),
            breaker: BreakerSettings::default(),
            bulkhead: BulkheadSettings::default(),
            fallback: FallbackSettings::default(),
            fault: FaultSettings::default(),
            retry: RetrySettings::default(),
            hedge: HedgeSettings::default(),
        }
    }
}

impl PolicySettings {
    /// These settings changed by `f`: the way to build a value in an expression, since
    /// the settings types are `#[non_exhaustive]` (they grow with the library).
    ///
    /// ```
    /// use substation::settings::PolicySettings;
    ///
    /// let s = PolicySettings::default().with(|s| {
    ///     s.critical = false;
    ///     s.timeout.ms = Some(250);
    /// });
    /// assert_eq!(s.timeout.ms, Some(250));
    /// ```
    #[must_use]
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Parses and validates a JSON value; fields it omits keep their defaults. The
    /// value is an object with each field at most once, in exactly its documented form
    /// (no array for an object, no map for a mode); anything else is an error naming
    /// the field.
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        decode::from_json(json)
    }

    /// Deserializes and validates an already parsed JSON value, as strictly as
    /// [`PolicySettings::from_json`].
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        decode::from_value(&value)
    }

    /// Checks every field against its rule; the first broken rule is returned.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.timeout.check()?;
        self.breaker.check()?;
        self.bulkhead.check()?;
        self.fallback.check()?;
        self.fault.check()?;
        self.retry.check()?;
        self.hedge.check()
    }
}

impl Settings for PolicySettings {
    fn check(&self) -> Result<(), SettingsError> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::BreakerMode;

    fn err(json: &str) -> String {
        PolicySettings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_are_hystrix_defaults_and_valid() {
        let s = PolicySettings::default();
        s.validate().unwrap();
        assert_eq!(s.breaker.window_ms, 10_000);
        assert_eq!(s.breaker.buckets, 10);
        assert_eq!(s.breaker.min_calls, 20);
        assert_eq!(s.breaker.error_rate, 50.0);
        assert_eq!(s.breaker.open_ms, 5_000);
        assert_eq!(s.breaker.half_open_calls, 1);
        assert_eq!(s.breaker.slow_call_ms, None);
        assert_eq!(PolicySettings::from_json(b"{}").unwrap(), s);
    }

    #[test]
    fn json_round_trips() {
        let mut s = PolicySettings::default();
        s.breaker.mode = BreakerMode::ForceOpen;
        s.timeout.ms = None;
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(PolicySettings::from_json(&json).unwrap(), s);
        assert!(String::from_utf8(json).unwrap().contains("\"force_open\""));
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        assert_eq!(
            err(r#"{"breaker":{"error_rate":150}}"#),
            "breaker.error_rate: 150 is not in 0..=100"
        );
        assert_eq!(
            err(r#"{"breaker":{"buckets":0}}"#),
            "breaker.buckets: 0 is not in 1..=60"
        );
        assert_eq!(
            err(r#"{"breaker":{"buckets":3}}"#),
            "breaker.buckets: 3 does not divide breaker.window_ms (10000) evenly"
        );
        assert_eq!(
            err(r#"{"timeout":{"ms":0}}"#),
            "timeout.ms: 0 is not in 1..=3600000"
        );
        assert_eq!(
            err(r#"{"breaker":{"open_ms":9000,"open_max_ms":100}}"#),
            "breaker.open_max_ms: 100 is not in 9000..=86400000"
        );
        let unknown = err(r#"{"breaker":{"eror_rate":5}}"#);
        assert!(
            unknown.starts_with("breaker.eror_rate: unknown field `eror_rate`, expected one of"),
            "{unknown}"
        );
        let wrong_type = err(r#"{"breaker":{"min_calls":"many"}}"#);
        assert!(
            wrong_type.starts_with("breaker.min_calls: invalid type"),
            "{wrong_type}"
        );
        let mode = err(r#"{"breaker":{"mode":"sideways"}}"#);
        assert!(
            mode.starts_with("breaker.mode: unknown variant `sideways`"),
            "{mode}"
        );
    }

    #[test]
    fn mutated_input_never_panics() {
        // A cheap fuzz: corrupt a valid value byte by byte; every result is a value or a
        // clear error, never a panic.
        let valid = br#"{"timeout":{"ms":250},"breaker":{"mode":"force_open","window_ms":10000,"buckets":10,"min_calls":20,"error_rate":50.5,"slow_call_ms":300,"open_ms":5000,"open_backoff":2.0,"open_jitter":0.1,"half_open_calls":3}}"#;
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"{}[]\":,-.0123456789eE+ntrufalsx\\ \x00";
        for _ in 0..20_000 {
            let mut v = valid.to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..v.len());
                match rng.u8(..3) {
                    0 => v[i] = alphabet[rng.usize(..alphabet.len())],
                    1 => {
                        v.remove(i);
                    }
                    _ => v.insert(i, alphabet[rng.usize(..alphabet.len())]),
                }
            }
            if let Ok(s) = PolicySettings::from_json(&v) {
                s.validate().expect("accepted values are valid");
            }
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        for json in [
            "",
            "{",
            "null",
            "[]",
            "1e999",
            "{\"breaker\":null}",
            "{\"timeout\":{\"ms\":-1}}",
            "{\"breaker\":{\"error_rate\":1e400}}",
            "{} trailing",
            "\u{0}",
        ] {
            assert!(
                PolicySettings::from_json(json.as_bytes()).is_err(),
                "{json:?}"
            );
        }
    }
}
