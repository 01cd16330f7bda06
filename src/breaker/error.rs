//! The circuit breaker's error.

unit_error!(
    /// The call was rejected without reaching the service: the circuit breaker is open
    /// (or forced open, or half-open with every trial permit taken).
    ///
    /// A zero-sized type, so boxing it into a [`BoxError`](crate::BoxError) allocates
    /// nothing: rejection stays cheap when it matters most.
    OpenCircuit,
    "circuit breaker is open"
);
