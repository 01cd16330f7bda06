//! The circuit breaker's response future (the one of every [`Guard`](crate::guard::Guard)).

/// The response future of [`CircuitBreaker`](super::CircuitBreaker): no timer.
pub type ResponseFuture<F, C> =
    crate::guard::future::ResponseFuture<F, C, crate::guard::stages::Breaker>;
