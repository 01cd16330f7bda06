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

// One file per concern: `policy.rs` (the whole value), `timeout.rs`, `breaker.rs`,
// `bulkhead.rs`, `fallback.rs`, `fault.rs`, `global.rs` (the registry's own settings),
// `error.rs` (`SettingsError` and the range checks) `decode.rs` (strict decoding, for
// every settings type) and `conform.rs` (its allocation-free check).

mod breaker;
mod bulkhead;
mod conform;
pub(crate) mod decode;
mod error;
mod experiment;
mod fallback;
mod fault;
mod global;
mod policy;
mod retry;
mod timeout;

pub use self::breaker::{BreakerMode, BreakerSettings, MAX_BUCKETS};
pub use self::bulkhead::BulkheadSettings;
pub(crate) use self::error::Bounded;
pub use self::error::SettingsError;
pub use self::experiment::{CohortCounts, ExperimentResult, ExperimentSettings, RunState};
pub use self::fallback::{FallbackSettings, Tier, Triggers};
pub use self::fault::{FaultSettings, FaultTarget};
pub use self::global::GlobalSettings;
pub use self::policy::PolicySettings;
pub use self::retry::{HEDGE_PERCENTILES, HedgeSettings, Jitter, RetrySettings};
pub use self::timeout::TimeoutSettings;
