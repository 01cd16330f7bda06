//! The kill switch: a live per-policy off switch for a dependency.
//!
//! While the policy's `kill` is `true` — or the policy is non-critical and the registry
//! sheds non-critical dependencies (`global.shed_non_critical`) — calls never reach the
//! inner service: `poll_ready` answers `Ready` without polling it and the call fails at
//! once with [`Killed`]. Inside a [`PolicyLayer`](crate::stack::PolicyLayer) with a
//! fallback, a killed call goes straight to the fallback instead.
//!
//! The switch is read in `poll_ready`. A caller still waiting for the inner service to
//! become ready (a reconnecting channel) is checked again on every `poll_ready`, so a
//! kill preempts the wait. Once the inner service has said it is ready, the call is
//! committed to it — the layers below may hold a bulkhead slot or a half-open trial
//! for it — and the kill applies from the next call.
//!
//! ```
//! use substation::{Policy, kill::{KillSwitchLayer, Killed}, settings::PolicySettings};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new("ads", PolicySettings::default()).unwrap();
//! let svc = KillSwitchLayer::new(&policy).layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
//! let mut s = (*policy.settings()).clone();
//! s.kill = true;
//! policy.update(s).unwrap();
//! assert!(svc.oneshot(1).await.unwrap_err().is::<Killed>());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, Cache};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::policy::PolicyCore;
use crate::settings::PolicySettings;
use crate::{BoxError, Policy};

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// The call was not made: the dependency is killed (its policy's kill switch, or
/// shedding of non-critical dependencies). Zero-sized: boxing it allocates nothing.
#[derive(Debug, Default)]
pub struct Killed(pub(crate) ());

impl Killed {
    /// A new `Killed`.
    pub fn new() -> Self {
        Killed(())
    }
}

impl fmt::Display for Killed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dependency killed by its kill switch")
    }
}

impl std::error::Error for Killed {}

/// Whether `core`'s calls are killed, given its settings.
#[inline]
pub(crate) fn killed(core: &PolicyCore, settings: &PolicySettings) -> bool {
    settings.kill || core.shed.load(Ordering::Relaxed)
}

/// Builds [`KillSwitch`] services; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct KillSwitchLayer {
    policy: Policy,
}

impl KillSwitchLayer {
    /// A layer obeying `policy`'s kill switch.
    pub fn new(policy: &Policy) -> Self {
        KillSwitchLayer {
            policy: policy.clone(),
        }
    }
}

impl<S> Layer<S> for KillSwitchLayer {
    type Service = KillSwitch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KillSwitch {
            inner,
            settings: Cache::new(&self.policy.core().settings),
            core: self.policy.core(),
            killed: false,
            inner_ready: false,
            _policy: self.policy.clone(),
        }
    }
}

/// Fails calls at once while the policy is killed; see the [module docs](self).
pub struct KillSwitch<S> {
    inner: S,
    settings: SettingsCache,
    core: &'static PolicyCore,
    killed: bool,
    /// The inner service said it is ready: the call is committed to it (it may hold a
    /// bulkhead slot or a trial permit for it), so `poll_ready` does not decide again.
    inner_ready: bool,
    _policy: Policy,
}

impl<S: Clone> Clone for KillSwitch<S> {
    fn clone(&self) -> Self {
        KillSwitch {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            core: self.core,
            killed: false,
            inner_ready: false,
            _policy: self._policy.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for KillSwitch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KillSwitch")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for KillSwitch<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KillFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.inner_ready {
            self.killed = killed(self.core, self.settings.load());
            if self.killed {
                return Poll::Ready(Ok(()));
            }
        }
        let ready = self.inner.poll_ready(cx).map_err(Into::into);
        self.inner_ready = matches!(ready, Poll::Ready(Ok(())));
        ready
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner_ready = false;
        if std::mem::take(&mut self.killed) {
            self.core.metrics.killed.increment(1);
            return KillFuture { inner: None };
        }
        KillFuture {
            inner: Some(self.inner.call(req)),
        }
    }
}

pin_project! {
    /// The response future of [`KillSwitch`].
    #[derive(Debug)]
    pub struct KillFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F, T, E> Future for KillFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.as_pin_mut() {
            Some(f) => f.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(Killed(()).into())),
        }
    }
}
