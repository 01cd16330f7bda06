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
//! What counts as a failure is decided by a [`Classify`]
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
use crate::settings::PolicySettings;
use crate::{BoxError, Policy};

pub use self::layer::CircuitBreakerLayer;
use self::state::Admission;
pub use self::state::BreakerState;
pub use self::window::WindowCounts;

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// The episode value that means "no trial".
pub(crate) const NO_TRIAL: u32 = u32::MAX;

/// A half-open trial permit held between `poll_ready` and `call`; returned to the
/// breaker if the service is dropped (or cloned) before it calls.
#[derive(Debug)]
pub(crate) struct Permit {
    pub(crate) core: &'static PolicyCore,
    pub(crate) generation: u32,
    pub(crate) episode: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        release_trial(self.core, self.generation, self.episode);
    }
}

/// Gives a trial permit back, unless it is none or belongs to a recycled core.
pub(crate) fn release_trial(core: &PolicyCore, generation: u32, episode: u32) {
    if episode != NO_TRIAL
        && core.generation.load(std::sync::atomic::Ordering::Acquire) == generation
    {
        core.breaker.release_trial(u64::from(episode));
    }
}

/// The breaker's admission off the fast path: `Some(true)` admit, `Some(false)` admit as
/// a trial (its episode is now in `permit`), `None` reject.
#[cold]
pub(crate) fn decide(
    core: &'static PolicyCore,
    settings: &crate::settings::BreakerSettings,
    clock: Clock,
    permit: &mut Permit,
) -> Option<bool> {
    // A permit still held here belongs to a call that never started (the inner `call`
    // panicked): it goes back before anything is decided.
    let held = std::mem::replace(&mut permit.episode, NO_TRIAL);
    release_trial(core, permit.generation, held);
    match core.breaker.admit(clock.now_ms(), settings, &core.ctx()) {
        Admission::Admit => Some(true),
        Admission::Reject => None,
        Admission::Trial(episode) => {
            permit.episode = episode as u32;
            Some(false)
        }
    }
}

/// What `poll_ready` decided for the next `call`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Unpolled,
    Admit,
    /// Admit as a trial; the permit is in `CircuitBreaker::permit`.
    Trial,
    Reject,
}

/// Protects calls with the policy's circuit breaker; see the [module docs](self).
pub struct CircuitBreaker<S, C = ErrorsAsFailures> {
    inner: S,
    classify: C,
    settings: SettingsCache,
    core: &'static PolicyCore,
    generation: u32,
    clock: Clock,
    decision: Decision,
    permit: Permit,
    _policy: Policy,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner` with `policy`'s breaker, classifying outcomes with `classify`.
    pub fn new(inner: S, policy: &Policy, classify: C) -> Self {
        let core = policy.core();
        let generation = policy.generation();
        CircuitBreaker {
            inner,
            classify,
            settings: Cache::new(&core.settings),
            core,
            generation,
            clock: *policy.clock(),
            decision: Decision::Unpolled,
            permit: Permit {
                core,
                generation,
                episode: NO_TRIAL,
            },
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

    /// Unwraps the inner service (a trial permit it held goes back to the breaker).
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
            permit: Permit {
                core: self.core,
                generation: self.generation,
                episode: NO_TRIAL,
            },
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
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if matches!(self.decision, Decision::Unpolled | Decision::Reject) {
            let mode = self.settings.load().breaker.mode;
            self.decision = match self.core.breaker.quick_admit(mode, &self.clock) {
                Some(true) => Decision::Admit,
                Some(false) => Decision::Reject,
                None => self.decide(),
            };
            if self.decision == Decision::Reject {
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let is_trial = match std::mem::replace(&mut self.decision, Decision::Unpolled) {
            Decision::Admit => false,
            Decision::Trial => true,
            Decision::Reject => {
                self.core.metrics.rejected.increment(1);
                return future::ResponseFuture::rejected(self.core, self.clock);
            }
            Decision::Unpolled => panic!("poll_ready must be called first"),
        };
        let settings = self.settings.load();
        let slow_ms = settings
            .breaker
            .slow_call_ms
            .map_or(0, |ms| ms.min(u64::from(u32::MAX)) as u32);
        let start = self.clock.now_ms();
        let inner = self.inner.call(req);
        // Taken from the service only now: should the inner `call` panic, the service
        // still holds the trial permit and gives it back when dropped.
        let trial = if is_trial {
            std::mem::replace(&mut self.permit.episode, NO_TRIAL)
        } else {
            NO_TRIAL
        };
        let fields = future::Fields {
            core: self.core,
            clock: self.clock,
            start,
            slow_ms,
            generation: self.generation,
            trial,
        };
        future::ResponseFuture::called(inner, self.classify.clone(), fields)
    }
}

impl<S, C> CircuitBreaker<S, C> {
    #[cold]
    fn decide(&mut self) -> Decision {
        let settings = self.settings.load();
        match decide(self.core, &settings.breaker, self.clock, &mut self.permit) {
            Some(true) => Decision::Admit,
            Some(false) => Decision::Trial,
            None => Decision::Reject,
        }
    }
}
