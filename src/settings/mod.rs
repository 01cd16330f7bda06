//! Settings: plain data, read from JSON, validated field by field.
//!
//! A [`PolicySettings`] holds everything that protects one dependency; each layer reads
//! its own slice of it on every call, so a new value applies to the next call. Every
//! field has a default, so a JSON value names only what it changes:
//!
//! ```
//! use substation::settings::PolicySettings;
//!
//! let s = PolicySettings::from_json(br#"{"timeout": {"ms": 250}, "breaker": {"error_rate": 25}}"#)
//!     .unwrap();
//! assert_eq!(s.timeout.ms, Some(250));
//! assert_eq!(s.breaker.error_rate, 25.0);
//! assert_eq!(s.breaker.min_calls, 20); // untouched fields keep their defaults
//!
//! let err = PolicySettings::from_json(br#"{"breaker": {"error_rate": 150}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "breaker.error_rate: 150 is not in 0..=100");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest number of buckets a breaker's rolling window may have.
pub const MAX_BUCKETS: u32 = 60;

/// Why a settings value was rejected: the field (a dotted path) and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    field: String,
    message: String,
}

impl SettingsError {
    /// A new error for `field` (a dotted path such as `breaker.error_rate`).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the offending field; empty when the whole value is malformed.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule that was broken.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SettingsError {}

/// Everything that protects one dependency ("policy"); see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Kill switch: when `true`, calls never reach the dependency; they go straight to
    /// the fallback, or fail at once with `Killed`. Default `false`.
    pub kill: bool,
    /// Whether the dependency is critical. A non-critical one goes straight to its
    /// static fallback on any failure, and is killed while the fleet-wide
    /// `shed_non_critical` switch is on ([`GlobalSettings`]). Default `true`.
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
        }
    }
}

/// The bulkhead's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadSettings {
    /// Calls allowed in flight at once, `1..=1_000_000`; a call beyond it is rejected at
    /// once (no queue) with `BulkheadFull`. `null` (the default) means no limit.
    pub max_concurrent: Option<u32>,
}

/// A fallback tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
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

/// Which calls a fault may hit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
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
}

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

/// The timeout layer's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// How a circuit breaker treats calls, set live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[serde(default, deny_unknown_fields)]
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
}

impl PolicySettings {
    /// Parses and validates a JSON value; fields it omits keep their defaults.
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| SettingsError::new("", format!("malformed JSON: {e}")))?;
        if !value.is_object() {
            return Err(SettingsError::new(
                "",
                format!("expected a JSON object, found `{value}`"),
            ));
        }
        Self::from_value(value)
    }

    /// Deserializes and validates an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SettingsError> {
        let settings: PolicySettings =
            serde_path_to_error::deserialize(value).map_err(path_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every field against its rule; the first broken rule is returned.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(ms) = self.timeout.ms {
            range_u64("timeout.ms", ms, 1, 3_600_000)?;
        }
        let b = &self.breaker;
        range_u64("breaker.window_ms", b.window_ms, 100, 3_600_000)?;
        range_u64(
            "breaker.buckets",
            u64::from(b.buckets),
            1,
            u64::from(MAX_BUCKETS),
        )?;
        if !b.window_ms.is_multiple_of(u64::from(b.buckets)) {
            return Err(SettingsError::new(
                "breaker.buckets",
                format!(
                    "{} does not divide breaker.window_ms ({}) evenly",
                    b.buckets, b.window_ms
                ),
            ));
        }
        range_u64("breaker.min_calls", u64::from(b.min_calls), 1, 1_000_000)?;
        range_f64("breaker.error_rate", b.error_rate, 0.0, 100.0, "0..=100")?;
        if let Some(ms) = b.slow_call_ms {
            range_u64("breaker.slow_call_ms", ms, 1, 3_600_000)?;
        }
        range_f64(
            "breaker.slow_call_rate",
            b.slow_call_rate,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64("breaker.open_ms", b.open_ms, 1, 86_400_000)?;
        range_f64(
            "breaker.open_backoff",
            b.open_backoff,
            1.0,
            100.0,
            "1.0..=100.0",
        )?;
        range_u64("breaker.open_max_ms", b.open_max_ms, b.open_ms, 86_400_000)?;
        range_f64("breaker.open_jitter", b.open_jitter, 0.0, 1.0, "0.0..=1.0")?;
        range_u64(
            "breaker.half_open_calls",
            u64::from(b.half_open_calls),
            1,
            1000,
        )?;
        if let Some(n) = self.bulkhead.max_concurrent {
            range_u64("bulkhead.max_concurrent", u64::from(n), 1, 1_000_000)?;
        }
        let f = &self.fallback;
        if let Some(tiers) = &f.tiers {
            for (i, t) in tiers.iter().enumerate() {
                if tiers[..i].contains(t) {
                    return Err(SettingsError::new(
                        "fallback.tiers",
                        format!("`{}` is listed twice", t.as_str()),
                    ));
                }
            }
        }
        range_u64("fallback.timeout_ms", f.timeout_ms, 1, 3_600_000)?;
        range_u64(
            "fallback.max_concurrent",
            u64::from(f.max_concurrent),
            1,
            100_000,
        )?;
        range_u64(
            "fallback.cache_max_stale_ms",
            f.cache_max_stale_ms,
            1,
            604_800_000,
        )?;
        range_u64(
            "fallback.cache_refresh_ms",
            f.cache_refresh_ms,
            0,
            3_600_000,
        )?;
        let fault = &self.fault;
        range_f64(
            "fault.abort_percent",
            fault.abort_percent,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_f64(
            "fault.delay_percent",
            fault.delay_percent,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64("fault.delay_ms", fault.delay_ms, 0, 3_600_000)?;
        if let FaultTarget::Keys(p) = fault.target {
            range_f64("fault.target.keys", p, 0.0, 100.0, "0..=100")?;
        }
        if let Some(n) = fault.max_active {
            range_u64("fault.max_active", u64::from(n), 1, 1_000_000)?;
        }
        Ok(())
    }
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> SettingsError {
    let path = e.path().to_string();
    let field = if path == "." { String::new() } else { path };
    SettingsError::new(field, e.into_inner().to_string())
}

fn range_u64(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), SettingsError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(
            field,
            format!("{v} is not in {lo}..={hi}"),
        ))
    }
}

fn range_f64(field: &str, v: f64, lo: f64, hi: f64, shown: &str) -> Result<(), SettingsError> {
    // `contains` is false for NaN, so NaN is rejected too.
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(field, format!("{v} is not in {shown}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
