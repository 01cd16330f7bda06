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
//! Readiness: back-pressure is the inner service's; `poll_ready` is passed through.
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

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use tower::Service;

use crate::policy::PolicyCore;
use crate::settings::PolicySettings;
use crate::{BoxError, Policy};

pub use self::layer::TimeoutLayer;

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// Applies the policy's live timeout; see the [module docs](self).
pub struct Timeout<S> {
    inner: S,
    settings: SettingsCache,
    core: &'static PolicyCore,
    _policy: Policy,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with `policy`'s timeout.
    pub fn new(inner: S, policy: &Policy) -> Self {
        let core = policy.core();
        Timeout {
            inner,
            settings: Cache::new(&core.settings),
            core,
            _policy: policy.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Timeout<S> {
    fn clone(&self) -> Self {
        Timeout {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            core: self.core,
            _policy: self._policy.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Timeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let timeout = self.settings.load().timeout.ms.map(Duration::from_millis);
        future::ResponseFuture::new(self.inner.call(req), timeout)
    }
}
