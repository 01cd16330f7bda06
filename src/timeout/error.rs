//! The timeout layer's error.

use std::fmt;

/// The call did not finish within the policy's timeout.
#[derive(Debug, Default)]
pub struct Elapsed(pub(super) ());

impl Elapsed {
    /// A new `Elapsed` (for tests and for services that report their own timeouts).
    pub fn new() -> Self {
        Elapsed(())
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request timed out")
    }
}

impl std::error::Error for Elapsed {}
