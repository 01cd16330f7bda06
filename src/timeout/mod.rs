//! Applies the policy's live deadline to each call.
//!
//! The deadline is read from the policy's settings on every call (`timeout.ms`; `null`
//! turns it off). A call that takes longer fails with [`error::Elapsed`]
//! (`err.is::<Elapsed>()`), which the circuit breaker counts as a failure.
//!
//! Unlike `tower::timeout::Timeout`, no timer is created in `call`: the response future
//! polls the inner future first and arms a `tokio::time::Sleep` only if that returns
//! `Pending`. A call that completes on its first poll therefore costs no clock read and
//! no timer; the deadline of any other call runs from its first poll. A timer needs a
//! tokio runtime with time enabled, as `tower::timeout` does.
//!
//! Readiness: back-pressure is the inner service's; `poll_ready` is passed through. The
//! service is the crate's one [`Guard`] with the timeout stage
//! alone.
//!
//! ```
//! use std::time::Duration;
//! use substation::{BoxError, Policy, settings::PolicySettings, timeout::{TimeoutLayer, error::Elapsed}};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut settings = PolicySettings::default();
//! settings.timeout.ms = Some(20);
//! let policy = Policy::new("slow-dependency", settings).unwrap();
//! let mut svc = TimeoutLayer::new(&policy).layer(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, BoxError>("too late")
//! }));
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(err.is::<Elapsed>());
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;

use crate::Policy;
use crate::classify::ErrorsAsFailures;
use crate::guard::{Guard, stages};

pub use self::layer::TimeoutLayer;

/// Applies the policy's live timeout; see the [module docs](self).
pub type Timeout<S> = Guard<S, ErrorsAsFailures, stages::Timeout>;

impl<S> Guard<S, ErrorsAsFailures, stages::Timeout> {
    /// Wraps `inner` with `policy`'s timeout.
    pub fn new(inner: S, policy: &Policy) -> Self {
        Guard::plain(inner, policy)
    }
}
