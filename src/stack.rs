//! The one-line policy stack: everything that protects one dependency, in order.
//!
//! [`PolicyLayer`] builds, from one live [`Policy`], outermost first:
//!
//! ```text
//! kill switch → fallback → bulkhead → circuit breaker → timeout → the dependency
//! ```
//!
//! - **Kill switch first**: a killed dependency costs nothing — not a bulkhead slot, not
//!   a breaker count — and goes straight to the fallback (it is fused with the fallback
//!   layer, so that "killed" can be answered by the fallback at all).
//! - **Fallback outside everything that can fail**: it catches the open circuit, the
//!   full bulkhead, the timeout and the dependency's own failures alike. This is the
//!   order of failsafe-go and of Microsoft's standard resilience handler (fallback
//!   outermost) and of Polly's pipelines; Hystrix runs its fallback on the same set of
//!   events (short-circuit, rejection, timeout, failure).
//! - **Bulkhead outside the breaker**: a call rejected for lack of room says nothing
//!   about the dependency's health, so the breaker must not count it (failsafe-go and
//!   Microsoft order them the same way; Hystrix checks the breaker first). With the
//!   breaker open and the bulkhead full, the caller meets the bulkhead
//!   (`BulkheadFull`); with only the breaker open, no slot is taken — the bulkhead's
//!   count is read, not changed.
//! - **Timeout innermost**: it bounds the dependency itself, and the breaker counts a
//!   timeout as a failure (Hystrix, resilience4j, failsafe-go all do).
//!
//! Retries, if wanted, belong outside the whole stack (or between fallback and
//! bulkhead): a retry inside the breaker would hide failures from it.
//!
//! Readiness follows the kill switch's rule ([`crate::kill`]): a kill preempts a caller
//! waiting for the dependency to become ready, and a call the dependency said it is
//! ready for is made. The fused [`PolicyService`] gives back the bulkhead slot of a
//! preempted wait at once; composed by hand, the inner [`Bulkhead`] keeps it for that
//! service instance until its next call or drop.
//!
//! Every setting of every layer is read from the policy on each call, so one change —
//! from code, a test, or etcd — applies to the next call. The individual layers
//! ([`KillSwitchLayer`], [`FallbackLayer`], [`BulkheadLayer`], [`CircuitBreakerLayer`],
//! [`TimeoutLayer`]) compose the same way for those who build their own.
//!
//! ```
//! use substation::{Policy, fallback::Fallback, settings::PolicySettings, stack::PolicyLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut settings = PolicySettings::default();
//! settings.kill = true; // an operator switched the dependency off
//! let policy = Policy::new("recommendations", settings).unwrap();
//! let client = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(&policy).fallback(Fallback::new().static_value("bestsellers")))
//!     .service(service_fn(|_: u64| async { Ok::<_, std::io::Error>("personal picks") }));
//! assert_eq!(client.oneshot(7).await.unwrap(), "bestsellers");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::breaker::future::Fields;
use crate::breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::breaker::{NO_TRIAL, Permit, decide, release_trial};
use crate::bulkhead::Slot;
use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::classify::Classify;
use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::fallback::Short;
use crate::fallback::future::{CachedPlan, Plan};
use crate::fallback::{Fallback, FallbackLayer, FallbackService};
use crate::kill::killed;
use crate::kill::{KillSwitch, KillSwitchLayer};
use crate::policy::PolicyCore;
use crate::settings::PolicySettings;
use crate::timeout::error::Elapsed;
use crate::timeout::{Timeout, TimeoutLayer};
use crate::{BoxError, Policy};

/// The protection of one dependency without a fallback: kill switch → bulkhead →
/// circuit breaker → timeout.
pub type Protected<S, C = ErrorsAsFailures> = KillSwitch<Bulkhead<CircuitBreaker<Timeout<S>, C>>>;

/// The protection of one dependency with a fallback, as individual layers: kill switch
/// and fallback, then bulkhead, circuit breaker and timeout. [`PolicyLayer::fallback`]
/// builds the fused [`PolicyService`] instead, which behaves the same.
pub type ProtectedWithFallback<S, Req, Resp, P, C = ErrorsAsFailures> =
    FallbackService<Bulkhead<CircuitBreaker<Timeout<S>, C>>, Req, Resp, P, C>;

/// The response future of [`PolicyService`].
pub type FallbackFuture<F, Req, Resp, P, C> = crate::fallback::ResponseFuture<F, Req, Resp, P, C>;

/// Builds the whole protection of a dependency from its policy; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct PolicyLayer<C = ErrorsAsFailures> {
    policy: Policy,
    classify: C,
}

impl PolicyLayer {
    /// The stack for `policy`; every `Err` counts as a failure.
    pub fn new(policy: &Policy) -> Self {
        PolicyLayer {
            policy: policy.clone(),
            classify: ErrorsAsFailures,
        }
    }
}

impl<C: Clone> PolicyLayer<C> {
    /// Classifies outcomes with `classify` (for the breaker and the fallback alike).
    pub fn classify<C2>(self, classify: C2) -> PolicyLayer<C2> {
        PolicyLayer {
            policy: self.policy,
            classify,
        }
    }

    /// Adds a fallback (allocated once for the life of the process; see
    /// [`crate::fallback`]).
    pub fn fallback<Req: 'static, Resp: 'static, P: 'static>(
        self,
        fallback: Fallback<Req, Resp, P>,
    ) -> PolicyLayerWithFallback<Req, Resp, P, C> {
        PolicyLayerWithFallback {
            fallback: FallbackLayer::new(&self.policy, fallback).classify(self.classify.clone()),
            inner: self,
        }
    }

    fn inner<S>(&self, service: S) -> Bulkhead<CircuitBreaker<Timeout<S>, C>> {
        let timeout = TimeoutLayer::new(&self.policy).layer(service);
        let breaker = CircuitBreakerLayer::new(&self.policy)
            .classify(self.classify.clone())
            .layer(timeout);
        BulkheadLayer::new(&self.policy).layer(breaker)
    }
}

impl<S, C: Clone> Layer<S> for PolicyLayer<C> {
    type Service = Protected<S, C>;

    fn layer(&self, service: S) -> Self::Service {
        KillSwitchLayer::new(&self.policy).layer(self.inner(service))
    }
}

/// [`PolicyLayer`] with a fallback.
#[derive(Debug)]
pub struct PolicyLayerWithFallback<Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    inner: PolicyLayer<C>,
    fallback: FallbackLayer<Req, Resp, P, C>,
}

impl<Req, Resp, P, C: Clone> Clone for PolicyLayerWithFallback<Req, Resp, P, C> {
    fn clone(&self) -> Self {
        PolicyLayerWithFallback {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<S, Req, Resp, P, C: Clone> Layer<S> for PolicyLayerWithFallback<Req, Resp, P, C> {
    type Service = PolicyService<S, Req, Resp, P, C>;

    fn layer(&self, service: S) -> Self::Service {
        PolicyService::new(
            service,
            &self.inner.policy,
            self.fallback.tiers(),
            self.inner.classify.clone(),
        )
    }
}

impl<Req, Resp, P, C: Clone> PolicyLayerWithFallback<Req, Resp, P, C> {
    /// The same protection built from the individual layers (for comparison, or to put
    /// something between them).
    pub fn layered<S>(&self, service: S) -> ProtectedWithFallback<S, Req, Resp, P, C> {
        self.fallback.layer(self.inner.inner(service))
    }
}

/// The fused form of [`ProtectedWithFallback`]: the same five protections in one
/// service — one settings read, one readiness decision, one response future — which is
/// what [`PolicyLayer::fallback`] builds. Behaviour is that of the individual layers
/// composed in the documented order.
pub struct PolicyService<S, Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    inner: S,
    classify: C,
    tiers: &'static crate::fallback::tiers::Tiers<Req, Resp, P>,
    settings: SettingsCache,
    core: &'static PolicyCore,
    generation: u32,
    clock: Clock,
    /// The plan for the settings in force: recomputed on change only.
    plan: CachedPlan,
    /// Decided in `poll_ready`.
    state: Ready,
    /// A half-open trial permit held between `poll_ready` and `call`.
    permit: Permit,
    /// The inner service said it is ready: the call is committed to it.
    inner_ready: bool,
    _policy: Policy,
    _types: PhantomData<fn(Req) -> Resp>,
}

#[derive(Debug)]
enum Ready {
    Unpolled,
    /// The dependency will be called: with this bulkhead slot (and maybe a trial permit).
    Call(Slot),
    /// It will not: the fallback answers.
    Short(Short),
}

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

impl<S, Req, Resp, P, C> PolicyService<S, Req, Resp, P, C> {
    fn new(
        inner: S,
        policy: &Policy,
        tiers: &'static crate::fallback::tiers::Tiers<Req, Resp, P>,
        classify: C,
    ) -> Self {
        let core = policy.core();
        PolicyService {
            inner,
            classify,
            tiers,
            settings: Cache::new(&core.settings),
            core,
            generation: policy.generation(),
            clock: *policy.clock(),
            plan: CachedPlan::default(),
            state: Ready::Unpolled,
            permit: Permit {
                core,
                generation: policy.generation(),
                episode: NO_TRIAL,
            },
            inner_ready: false,
            _policy: policy.clone(),
            _types: PhantomData,
        }
    }

    /// Readiness was pending when the kill switch flipped: the call will not be made,
    /// so its bulkhead slot and any trial permit go back, and the fallback answers.
    #[cold]
    fn preempt_pending(&mut self) {
        let settings = self.settings.load();
        if killed(self.core, settings) {
            release_trial(
                self.core,
                self.generation,
                std::mem::replace(&mut self.permit.episode, NO_TRIAL),
            );
            Plan::cached(&mut self.plan, self.tiers, settings);
            self.state = Ready::Short(Short::Killed); // drops the slot
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
}

impl<S: Clone, Req, Resp, P, C: Clone> Clone for PolicyService<S, Req, Resp, P, C> {
    /// A clone starts unpolled: readiness, slots and permits are not shared.
    fn clone(&self) -> Self {
        PolicyService {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            tiers: self.tiers,
            settings: self.settings.clone(),
            core: self.core,
            generation: self.generation,
            clock: self.clock,
            plan: CachedPlan::default(),
            state: Ready::Unpolled,
            permit: Permit {
                core: self.core,
                generation: self.generation,
                episode: NO_TRIAL,
            },
            inner_ready: false,
            _policy: self._policy.clone(),
            _types: PhantomData,
        }
    }
}

impl<S: fmt::Debug, Req, Resp, P, C> fmt::Debug for PolicyService<S, Req, Resp, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Resp, P, C> Service<Req> for PolicyService<S, Req, Resp, P, C>
where
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
    C: Classify<Resp, BoxError> + Clone,
    Req: Send + 'static,
    Resp: Send + 'static,
    P: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = FallbackFuture<Guarded<S::Future, C>, Req, Resp, P, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Ready::Call(_) = self.state {
            if !self.inner_ready {
                self.preempt_pending();
                if let Ready::Short(_) = self.state {
                    return Poll::Ready(Ok(()));
                }
            }
        } else {
            let settings = self.settings.load();
            // Kill switch, then bulkhead, then breaker: the order of the layers.
            if killed(self.core, settings) {
                self.state = Ready::Short(Short::Killed);
                Plan::cached(&mut self.plan, self.tiers, settings);
                return Poll::Ready(Ok(()));
            }
            let max = settings.bulkhead.max_concurrent;
            // The bulkhead is outside the breaker: a full bulkhead answers first, and a
            // call it refuses never reaches the breaker (no half-open trial taken).
            self.state = match self
                .core
                .breaker
                .quick_admit(settings.breaker.mode, &self.clock)
            {
                Some(true) => match Slot::acquire(self.core, max) {
                    Ok(slot) => Ready::Call(slot),
                    Err(()) => Ready::Short(Short::Bulkhead),
                },
                // Read, not taken: the slot would be given back at once.
                Some(false) if Slot::is_full(self.core, max) => Ready::Short(Short::Bulkhead),
                Some(false) => Ready::Short(Short::Open),
                None => match Slot::acquire(self.core, max) {
                    Err(()) => Ready::Short(Short::Bulkhead),
                    Ok(slot) => {
                        match decide(self.core, &settings.breaker, self.clock, &mut self.permit) {
                            Some(_) => Ready::Call(slot),
                            None => Ready::Short(Short::Open), // the slot goes back
                        }
                    }
                },
            };
            if let Ready::Short(_) = self.state {
                Plan::cached(&mut self.plan, self.tiers, settings);
                return Poll::Ready(Ok(()));
            }
        }
        let ready = self.inner.poll_ready(cx).map_err(Into::into);
        self.inner_ready = matches!(ready, Poll::Ready(Ok(())));
        ready
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.inner_ready = false;
        let ctx = crate::fallback::future::Ctx {
            tiers: self.tiers,
            core: self.core,
            clock: self.clock,
        };
        let slot = match std::mem::replace(&mut self.state, Ready::Unpolled) {
            Ready::Call(slot) => slot,
            Ready::Short(short) => {
                // `poll_ready` cached the plan for the settings it decided by.
                short.count(self.core);
                let plan = self.plan.plan;
                if let Some(resp) = plan.short_value(self.tiers, short) {
                    return FallbackFuture::answered(resp);
                }
                let parts = (self.tiers.parts)(&req);
                return FallbackFuture::short(ctx, self.classify.clone(), plan, parts, req, short);
            }
            Ready::Unpolled => panic!("poll_ready must be called first"),
        };
        let settings = self.settings.load();
        let plan = Plan::cached(&mut self.plan, self.tiers, settings);
        let parts = (self.tiers.parts)(&req);
        let spare = match &self.tiers.service {
            Some(s) => (s.clone_request)(&req),
            None => None,
        };
        let start = self.clock.now_ms();
        let inner = self.inner.call(req);
        // Taken from the service only now: should the inner `call` panic, the service
        // still holds the trial permit and gives it back when dropped.
        let fields = Fields {
            core: self.core,
            clock: self.clock,
            start,
            slow_ms: settings
                .breaker
                .slow_call_ms
                .map_or(0, |ms| ms.min(u64::from(u32::MAX)) as u32),
            generation: self.generation,
            trial: std::mem::replace(&mut self.permit.episode, NO_TRIAL),
        };
        let guarded = Guarded {
            inner,
            sleep: None,
            timeout: settings.timeout.ms.map(Duration::from_millis),
            fields,
            slot,
            classify: self.classify.clone(),
            done: false,
        };
        FallbackFuture::primary(ctx, self.classify.clone(), plan, guarded, parts, spare)
    }
}

pin_project! {
    /// The dependency's call inside a [`PolicyService`]: its timeout, its bulkhead slot,
    /// and the breaker's record of its outcome.
    #[derive(Debug)]
    pub struct Guarded<F, C> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
        fields: Fields,
        slot: Slot,
        classify: C,
        done: bool,
    }

    impl<F, C> PinnedDrop for Guarded<F, C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                let f = this.fields;
                release_trial(f.core, f.generation, f.trial);
            }
        }
    }
}

impl<F, C, T, E> Future for Guarded<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(r) => r.map_err(Into::into),
            Poll::Pending => {
                let Some(timeout) = *this.timeout else {
                    return Poll::Pending;
                };
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(timeout)));
                }
                match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
                    Some(Poll::Ready(())) => Err(Elapsed::new().into()),
                    _ => return Poll::Pending,
                }
            }
        };
        if !*this.done {
            *this.done = true;
            let outcome = this.classify.classify(&result);
            crate::breaker::future::finish(this.fields, outcome, &result);
            *this.slot = Slot::NONE; // free the bulkhead slot as soon as the call is done
        }
        Poll::Ready(result)
    }
}
