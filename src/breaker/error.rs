//! The circuit breaker's error.

use std::fmt;

/// The call was rejected without reaching the service: the circuit breaker is open
/// (or forced open, or half-open with every trial permit taken).
///
/// A zero-sized type, so boxing it into a [`BoxError`](crate::BoxError) allocates
/// nothing: rejection stays cheap when it matters most.
#[derive(Debug, Default)]
pub struct OpenCircuit(pub(crate) ());

impl OpenCircuit {
    /// A new `OpenCircuit` (for tests and fallbacks that want to produce one).
    pub fn new() -> Self {
        OpenCircuit(())
    }
}

impl fmt::Display for OpenCircuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker is open")
    }
}

impl std::error::Error for OpenCircuit {}
