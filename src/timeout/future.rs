//! The timeout's response future (the one of every [`Guard`](crate::guard::Guard)): the
//! inner future, and a timer armed only once the inner future has returned `Pending`.

pub use crate::guard::future::ResponseFuture;
