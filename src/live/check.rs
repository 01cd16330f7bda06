//! Checking a value before it is stored, with the registry's own rules: what an
//! operator's tool (the `substation` CLI) runs so that a value every process would
//! refuse is refused at the keyboard, with the same message.
//!
//! ```
//! use substation::live::{Scope, check};
//!
//! let stored = check::Stored::default(); // nothing stored yet, no code default
//! let err = check::check_value(Scope::App, "policies/payments", br#"{"breaker": {"error_rate": 150}}"#, &stored)
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "breaker.error_rate: 150 is not in 0..=100");
//! let effective = check::effective_value("policies/payments", &stored).unwrap();
//! assert_eq!(effective["timeout"]["ms"], 1000);
//! ```

use serde_json::Value;

use super::source::{Key, Scope};
use super::writer::Writer;
use crate::settings::SettingsError;
use crate::settings::decode;

/// What else a key holds, besides the value being checked: the code default of a
/// process (as it announces it), and the values stored in each layer. Stored values
/// are the registry's last good ones; pass `None` for one it would refuse.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The code default of the key in one process (`None`: the library defaults).
    pub code_default: Option<Value>,
    /// The fleet's shared value.
    pub shared: Option<Value>,
    /// The application's value.
    pub app: Option<Value>,
}

/// Checks `value` for `key` (relative to its layer's prefix, e.g.
/// `policies/payments`) as a registry holding `stored` would when the value arrives
/// in `layer`: the key must be a known key with a valid name; the value must be JSON in
/// exactly the documented form, every field in range, and valid merged with the layers
/// below it (code default, and the shared value for an application's value). The error
/// is the one the registry would give. A value valid here can still put a layer above
/// it in conflict: see [`conflicts`].
pub fn check_value(
    layer: Scope,
    key: &str,
    value: &[u8],
    stored: &Stored,
) -> Result<(), SettingsError> {
    let parsed = Key::parse(key)?;
    let value = decode::parse(value)?;
    writer(&parsed, stored).check(&parsed, layer, &value)
}

/// The effective value of `key`, in full: library defaults ← `stored.code_default` ←
/// `stored.shared` ← `stored.app`, merged field by field, each layer over the ones below
/// it as the registry does (a layer in conflict left out: [`conflicts`]),
/// decoded and validated.
pub fn effective_value(key: &str, stored: &Stored) -> Result<Value, SettingsError> {
    let parsed = Key::parse(key)?;
    writer(&parsed, stored).effective_of(&parsed)
}

/// The stored values of `key` that the layers below them make invalid (the registry
/// leaves such a value out and lists a
/// [`RejectionKind::Conflict`](super::RejectionKind::Conflict)): each with its layer and
/// why. Empty when every layer is valid over the ones below it.
///
/// ```
/// use serde_json::json;
/// use substation::live::{Scope, check};
///
/// // The application's 7 buckets divide the shared 7-second window, not the default 10 s.
/// let mut stored = check::Stored {
///     shared: Some(json!({"breaker": {"window_ms": 7000}})),
///     app: Some(json!({"kill": true, "breaker": {"buckets": 7}})),
///     ..Default::default()
/// };
/// assert!(check::conflicts("policies/payments", &stored).unwrap().is_empty());
/// stored.shared = None;
/// let found = check::conflicts("policies/payments", &stored).unwrap();
/// assert_eq!(found[0].0, Scope::App);
/// assert!(found[0].1.to_string().starts_with("breaker.buckets: 7 does not divide"));
/// // What is in force: the library defaults; the application's value is left out whole.
/// let effective = check::effective_value("policies/payments", &stored).unwrap();
/// assert_eq!((effective["kill"].clone(), effective["breaker"]["buckets"].clone()), (json!(false), json!(10)));
/// ```
pub fn conflicts(key: &str, stored: &Stored) -> Result<Vec<(Scope, SettingsError)>, SettingsError> {
    let parsed = Key::parse(key)?;
    Ok(writer(&parsed, stored).conflicts_of(&parsed))
}

/// Parses stored JSON bytes strictly (a field given twice is an error), as the registry
/// does before it decodes them.
pub fn parse(json: &[u8]) -> Result<Value, SettingsError> {
    decode::parse(json)
}

fn writer(key: &Key, stored: &Stored) -> Writer {
    Writer::for_key(
        key,
        stored.code_default.as_ref(),
        stored.shared.as_ref(),
        stored.app.as_ref(),
    )
}
