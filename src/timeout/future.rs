//! The timeout's response future (the one of every [`Guard`](crate::guard::Guard)): the
//! inner future, and a timer armed only once the inner future has returned `Pending`.

/// The response future of [`Timeout`](super::Timeout).
pub type ResponseFuture<F> = crate::guard::future::ResponseFuture<
    F,
    crate::classify::ErrorsAsFailures,
    crate::guard::stages::Timeout,
>;
