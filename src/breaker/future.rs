//! The circuit breaker's response future (the one of every [`Guard`](crate::guard::Guard)).

pub use crate::guard::future::ResponseFuture;
