//! Why a value was rejected, and the range checks every concern's validation uses.

use std::fmt;

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

/// `v` is in `lo..=hi`, or the error names `field` and the range.
pub(super) fn range_u64(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), SettingsError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(
            field,
            format!("{v} is not in {lo}..={hi}"),
        ))
    }
}

/// `v` is in `lo..=hi` (so not NaN), or the error names `field` and `shown`.
pub(super) fn range_f64(
    field: &str,
    v: f64,
    lo: f64,
    hi: f64,
    shown: &str,
) -> Result<(), SettingsError> {
    // `contains` is false for NaN, so NaN is rejected too.
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(SettingsError::new(field, format!("{v} is not in {shown}")))
    }
}
