//! A Hystrix-style circuit breaker with live settings.
//!
//! The breaker counts outcomes in a rolling **time** window (default 10 s in 10
//! buckets). Once the window holds at least `min_calls` calls (default 20) and the
//! failure rate reaches `error_rate` (default 50 %) — or, if `slow_call_ms` is set, the
//! slow-call rate reaches `slow_call_rate` — it opens. Timeouts count as failures. While
//! open it rejects calls for `open_ms` (default 5 s, optionally growing with
//! `open_backoff` on each consecutive re-open, spread by `open_jitter`); then it admits
//! **exactly** `half_open_calls` trial calls (default 1) however many callers race. All
//! trials succeeding closes it (with an empty window); any trial failing re-opens it. A
//! trial whose future is dropped gives its permit back, so the breaker cannot wedge in
//! half-open. `mode` switches live between `normal`, `force_open`, `force_closed` and
//! `metrics_only` (runs the state machine, never rejects).
//!
//! What counts as a failure is decided by a [`Classify`](crate::classify::Classify)
//! (default: every `Err`), chosen with [`CircuitBreakerLayer::classify`].
//!
//! # Rejection, not back-pressure
//! While open, `poll_ready` returns `Ready` **without polling the inner service**, and
//! the call fails at once with [`error::OpenCircuit`] — like tower's `LoadShed`. A
//! breaker that stayed `Pending` instead (linkerd's `Gate`) would make callers queue
//! behind a dead dependency, which is the cascade this layer exists to stop; a
//! rejection is an answer a fallback can turn into something useful.
//!
//! # Live settings
//! Settings are read from the policy on every call. Changing thresholds keeps the
//! window's counts; changing its shape (`window_ms` or `buckets`) starts an empty
//! window. The state machine and window belong to the [`Policy`], so every service
//! built from it shares one breaker.
//!
//! # Cost
//! A closed call reads the settings (one pointer compare), the state (one atomic load)
//! and the coarse clock (one atomic load), and records into a per-thread stripe of the
//! window (one `fetch_add`): no allocation, lock, clock read or reference count. See
//! BENCHMARKS.md.
//!
//! ```
//! use substation::{BoxError, Policy, breaker::{BreakerState, CircuitBreakerLayer, error::OpenCircuit}};
//! use substation::settings::PolicySettings;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut settings = PolicySettings::default();
//! settings.breaker.min_calls = 4;
//! let policy = Policy::new("flaky", settings).unwrap();
//! let mut svc = CircuitBreakerLayer::new(&policy)
//!     .layer(service_fn(|fail: bool| async move {
//!         if fail { Err::<(), BoxError>("boom".into()) } else { Ok(()) }
//!     }));
//! for fail in [false, false, true, true] {
//!     let _ = svc.ready().await.unwrap().call(fail).await;
//! }
//! assert_eq!(policy.breaker_state(), BreakerState::Open);
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! assert!(err.is::<OpenCircuit>());
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
pub(crate) mod state;
pub(crate) mod window;

use std::fmt;
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, Cache};
use tower::Service;

use crate::classify::{Classify, ErrorsAsFailures};
use crate::clock::Clock;
use crate::policy::PolicyCore;
use crate::settings::{BreakerMode, PolicySettings};
use crate::{BoxError, Policy};

pub use self::layer::CircuitBreakerLayer;
pub use self::state::BreakerState;
pub use self::window::WindowCounts;
use self::state::Admission;

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// A half-open trial permit; returned to the breaker if dropped unused.
#[derive(Debug)]
pub(crate) struct TrialPermit {
    core: &'static PolicyCore,
    generation: u64,
    episode: Option<u64>,
}

impl TrialPermit {
    /// The permit is used: the call finished and its outcome decides.
    fn finish(mut self) -> Option<u64> {
        self.episode.take()
    }
}

impl Drop for TrialPermit {
    fn drop(&mut self) {
        if let Some(episode) = self.episode {
            if self.core.generation.load(std::sync::atomic::Ordering::Acquire) == self.generation {
                self.core.breaker.release_trial(episode);
            }
        }
    }
}

/// What `poll_ready` decided for the next `call`.
#[derive(Debug)]
enum Decision {
    Unpolled,
    Admit,
    Trial(TrialPermit),
    Reject,
}

/// Protects calls with the policy's circuit breaker; see the [module docs](self).
pub struct CircuitBreaker<S, C = ErrorsAsFailures> {
    inner: S,
    classify: C,
    settings: SettingsCache,
    core: &'static PolicyCore,
    generation: u64,
    clock: Clock,
    decision: Decision,
    _policy: Policy,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner` with `policy`'s breaker, classifying outcomes with `classify`.
    pub fn new(inner: S, policy: &Policy, classify: C) -> Self {
        let core = policy.core();
        CircuitBreaker {
            inner,
            classify,
            settings: Cache::new(&core.settings),
            core,
            generation: policy.generation(),
            clock: *policy.clock(),
            decision: Decision::Unpolled,
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

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// A clone starts unpolled: readiness (and any trial permit) is not shared.
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            settings: self.settings.clone(),
            core: self.core,
            generation: self.generation,
            clock: self.clock,
            decision: Decision::Unpolled,
            _policy: self._policy.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .field("state", &self.core.breaker.state())
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.decision, Decision::Unpolled | Decision::Reject) {
            let settings = self.settings.load();
            let breaker = &settings.breaker;
            self.decision = if breaker.mode == BreakerMode::Normal && self.core.breaker.is_closed()
            {
                Decision::Admit
            } else {
                self.decide()
            };
            if let Decision::Reject = self.decision {
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let trial = match std::mem::replace(&mut self.decision, Decision::Unpolled) {
            Decision::Admit => None,
            Decision::Trial(permit) => Some(permit),
            Decision::Reject => {
                self.core.metrics.rejected.increment(1);
                return future::ResponseFuture::rejected();
            }
            Decision::Unpolled => panic!("poll_ready must be called first"),
        };
        let settings = self.settings.load();
        let start = self.clock.now_ms();
        future::ResponseFuture::called(
            self.inner.call(req),
            self.classify.clone(),
            future::Recorder {
                core: self.core,
                generation: self.generation,
                clock: self.clock,
                start,
                slow_ms: settings.breaker.slow_call_ms.unwrap_or(0),
                shape: state::shape(&settings.breaker),
                trial,
            },
        )
    }
}

impl<S, C> CircuitBreaker<S, C> {
    #[cold]
    fn decide(&mut self) -> Decision {
        let settings = self.settings.load();
        let core = self.core;
        match core
            .breaker
            .admit(self.clock.now_ms(), &settings.breaker, &core.ctx())
        {
            Admission::Admit => Decision::Admit,
            Admission::Reject => Decision::Reject,
            Admission::Trial(episode) => Decision::Trial(TrialPermit {
                core,
                generation: self.generation,
                episode: Some(episode),
            }),
        }
    }
}
