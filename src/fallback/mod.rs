//! Tiered fallbacks: when the dependency fails, answer with something useful — cheaply.
//!
//! A [`Fallback`] lists tiers, tried in order until one answers:
//! - **static**: a fixed response, or one built from the request's parts and the error;
//! - **cache**: the last good response for the request's key (bounded size, maximum
//!   staleness), filled from the dependency's successful responses — at most once per
//!   `fallback.cache_refresh_ms` per key, so keeping it fresh stays cheap;
//! - **service**: an alternate service (another region, a degraded endpoint), under its
//!   own timeout (`fallback.timeout_ms`) and concurrency limit
//!   (`fallback.max_concurrent`).
//!
//! Requests are generally not `Clone`, so the static and cache tiers work from
//! **parts** taken from the request before the call ([`Fallback::with_parts`]; the
//! cache's key is the parts), and the service tier gets its request from a function
//! that may decline (tower retry's `clone_request` idea), called before the call.
//!
//! What triggers the fallback is live (`fallback.on`): by default an open circuit, the
//! kill switch, a timeout, a full bulkhead, and failures as classified (an `Err`, or e.g.
//! an HTTP 5xx with [`ServerErrorsAsFailures`](crate::classify)). The tier order is live
//! too (`fallback.tiers`). A non-critical policy (`"critical": false`) goes straight to
//! its static tier on any failure. A killed policy never calls the dependency: the
//! fallback answers at once. If every tier fails, the caller gets
//! [`error::FallbackFailed`] with the original error and each tier's error in its
//! `source()` chain (for a response classified as a failure, the response itself).
//!
//! ```
//! use substation::{Policy, fallback::{Fallback, FallbackLayer}, settings::PolicySettings};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new("recommendations", PolicySettings::default()).unwrap();
//! let fallback = Fallback::with_parts(|user: &u64| *user)
//!     .cache(10_000)
//!     .static_with(|user: &u64, _err| format!("bestsellers for {user}"));
//! let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
//! let h = healthy.clone();
//! let svc = FallbackLayer::new(&policy, fallback).layer(service_fn(move |user: u64| {
//!     let ok = h.load(std::sync::atomic::Ordering::Relaxed);
//!     async move {
//!         if ok { Ok(format!("picks for {user}")) } else { Err(std::io::Error::other("down")) }
//!     }
//! }));
//! assert_eq!(svc.clone().oneshot(7).await.unwrap(), "picks for 7");
//! healthy.store(false, std::sync::atomic::Ordering::Relaxed);
//! assert_eq!(svc.clone().oneshot(7).await.unwrap(), "picks for 7", "cached");
//! assert_eq!(svc.clone().oneshot(8).await.unwrap(), "bestsellers for 8", "static");
//! # }
//! ```
//!
//! # Lifetime
//! The tiers — the cache, the alternate service and whatever they own — belong to the
//! layer, the services built from it and their unfinished response futures, and are
//! dropped with the last of them. Futures hold them by a lease (two plain stores per
//! call, no reference-count change).
//!
//! The service is the crate's one [`Guard`] (here with the kill
//! stage: "killed" is answered by the fallback) wrapped by the fallback; the policy
//! stack ([`PolicyLayer::fallback`](crate::stack::PolicyLayer::fallback)) is the same
//! service with every stage, so an open circuit or a full bulkhead is answered here
//! without an error built and walked. Composed by hand over a separate
//! [`CircuitBreaker`](crate::breaker::CircuitBreaker), the fallback sees its
//! `OpenCircuit` error like any other.

pub mod error;
pub(crate) mod future;
pub(crate) mod tiers;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::task::{Context, Poll, ready};

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

pub use self::tiers::Cause;
use self::tiers::{Config, KeyedCache, ServiceTier, StaticTier, Tiers};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::guard::{Guard, Short, Stages, stages};
use crate::lease::Shared;
use crate::settings::Tier;
use crate::{BoxError, Policy};

pub use self::future::ResponseFuture;
use self::future::{CachedPlan, Plan};

/// The tiers of a fallback, built in code; see the [module docs](self).
pub struct Fallback<Req, Resp, P = ()> {
    config: Config<Req, Resp, P>,
}

impl<Req: 'static, Resp: 'static, P: 'static> fmt::Debug for Fallback<Req, Resp, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("tiers", &self.config.added)
            .finish_non_exhaustive()
    }
}

impl<Req: 'static, Resp: 'static> Fallback<Req, Resp, ()> {
    /// A fallback that keeps nothing of the request (static tiers only need the error).
    pub fn new() -> Self {
        Self::with_parts(|_: &Req| ())
    }
}

impl<Req: 'static, Resp: 'static> Default for Fallback<Req, Resp, ()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req: 'static, Resp: 'static, P: 'static> Fallback<Req, Resp, P> {
    /// A fallback that keeps `parts(&request)` before each call: the static tier builds
    /// from it, the cache tier uses it as the key. Keep it cheap: it runs on every call.
    pub fn with_parts(parts: impl Fn(&Req) -> P + Send + Sync + 'static) -> Self {
        Fallback {
            config: Config {
                parts: Box::new(parts),
                added: Vec::new(),
                static_fn: None,
                cache: None,
                service: None,
                on_answer: None,
            },
        }
    }

    fn add(mut self, tier: Tier) -> Self {
        self.config.added.retain(|t| *t != tier);
        self.config.added.push(tier);
        self
    }

    /// A static tier answering with a clone of `response`. When it is the first tier
    /// for a short-circuited call (killed, open circuit, full bulkhead), that call is
    /// answered in `call` itself, without taking the request's parts.
    pub fn static_value(mut self, response: Resp) -> Self
    where
        Resp: Clone + Send + Sync + 'static,
    {
        self.config.static_fn = Some(StaticTier::Value(Box::new(move || response.clone())));
        self.add(Tier::Static)
    }

    /// A static tier answering with `build(&parts, &error)`. It runs on the caller's
    /// task: keep it cheap, or it becomes the next outage.
    pub fn static_with(
        mut self,
        build: impl Fn(&P, &Cause) -> Resp + Send + Sync + 'static,
    ) -> Self {
        self.config.static_fn = Some(StaticTier::With(Box::new(build)));
        self.add(Tier::Static)
    }

    /// A cache tier of at most `capacity` responses, keyed by the request's parts.
    pub fn cache(mut self, capacity: usize) -> Self
    where
        P: Hash + Eq + Clone + Send + Sync + 'static,
        Resp: Clone + Send + Sync + 'static,
    {
        self.config.cache = Some(Box::new(KeyedCache::<P, Resp>::new(capacity)));
        self.add(Tier::Cache)
    }

    /// A service tier: `service` answers with the request `clone_request` made of the
    /// original (before the call); returning `None` skips the tier for that call.
    pub fn service<S>(
        mut self,
        service: S,
        clone_request: impl Fn(&Req) -> Option<Req> + Send + Sync + 'static,
    ) -> Self
    where
        S: Service<Req, Response = Resp> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.config.service = Some(ServiceTier {
            service: BoxCloneSyncService::new(service.map_err(Into::into)),
            clone_request: Box::new(clone_request),
            in_flight: Arc::new(AtomicU32::new(0)),
        });
        self.add(Tier::Service)
    }
}

impl<Req: 'static, Resp: 'static, P: 'static> Fallback<Req, Resp, P> {
    /// Calls `hook` with each response a tier gives (not the dependency's) and the tier
    /// that gave it: to mark it (a header, a field) so that the caller can tell a
    /// fallback answer, and which. Runs on the caller's task: keep it cheap.
    pub fn on_answer(mut self, hook: impl Fn(&mut Resp, Tier) + Send + Sync + 'static) -> Self {
        self.config.on_answer = Some(Box::new(hook));
        self
    }
}

/// The extension [`Fallback::mark_responses`] puts on an `http::Response` a fallback
/// tier gave: which tier (feature `http`).
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnsweredBy(pub Tier);

#[cfg(feature = "http")]
impl<Req: 'static, B: 'static, P: 'static> Fallback<Req, http::Response<B>, P> {
    /// Puts an [`AnsweredBy`] extension on every response a tier gives, so that the
    /// caller (or a layer above) can tell which tier answered:
    /// `resp.extensions().get::<AnsweredBy>()`. The dependency's own responses carry
    /// none.
    pub fn mark_responses(self) -> Self {
        self.on_answer(|resp, tier| {
            resp.extensions_mut().insert(AnsweredBy(tier));
        })
    }
}

/// Builds [`FallbackService`]s; see the [module docs](self).
pub struct FallbackLayer<Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    tiers: Shared<Tiers<Req, Resp, P>>,
    classify: C,
}

impl<Req: 'static, Resp: 'static, P: 'static, C: Clone> Clone for FallbackLayer<Req, Resp, P, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            tiers: self.tiers.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Req: 'static, Resp: 'static, P: 'static, C> fmt::Debug for FallbackLayer<Req, Resp, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("policy", &self.tiers.policy.name())
            .field("tiers", &self.tiers.added)
            .finish_non_exhaustive()
    }
}

impl<Req: 'static, Resp: 'static, P: 'static> FallbackLayer<Req, Resp, P> {
    /// A layer answering from `fallback` when `policy`'s dependency fails (every `Err`
    /// counts as a failure; see [`FallbackLayer::classify`]).
    pub fn new(policy: &Policy, fallback: Fallback<Req, Resp, P>) -> Self {
        FallbackLayer {
            tiers: Shared::new(Tiers::new(policy, fallback.config)),
            classify: ErrorsAsFailures,
        }
    }
}

impl<Req: 'static, Resp: 'static, P: 'static, C> FallbackLayer<Req, Resp, P, C> {
    /// The classifier.
    pub(crate) fn classifier(&self) -> &C {
        &self.classify
    }

    /// Decides with `classify` which responses are failures (e.g. HTTP 5xx).
    pub fn classify<C2>(self, classify: C2) -> FallbackLayer<Req, Resp, P, C2> {
        FallbackLayer {
            tiers: self.tiers,
            classify,
        }
    }

    /// The service with the stages `K` of the guard under the fallback.
    pub(crate) fn service<S, K: Stages>(&self, inner: S) -> FallbackService<S, Req, Resp, P, C, K>
    where
        C: Clone,
    {
        FallbackService {
            guard: Guard::with_classify(inner, &self.tiers.policy, self.classify.clone()),
            tiers: self.tiers.clone(),
            plan: CachedPlan::default(),
        }
    }
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C: Clone> Layer<S>
    for FallbackLayer<Req, Resp, P, C>
{
    type Service = FallbackService<S, Req, Resp, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        self.service(inner)
    }
}

/// Answers from the fallback's tiers when the call fails or is not made (killed, and in
/// the policy stack also an open circuit or a full bulkhead); see the
/// [module docs](self). `K` are the stages of the [`Guard`] it wraps.
pub struct FallbackService<
    S,
    Req: 'static,
    Resp: 'static,
    P: 'static,
    C = ErrorsAsFailures,
    K = stages::Kill,
> {
    guard: Guard<S, C, K>,
    tiers: Shared<Tiers<Req, Resp, P>>,
    /// The plan for the settings in force: recomputed on change only.
    plan: CachedPlan,
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C, K> FallbackService<S, Req, Resp, P, C, K> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.guard.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.guard.get_mut()
    }
}

impl<S: Clone, Req: 'static, Resp: 'static, P: 'static, C: Clone, K> Clone
    for FallbackService<S, Req, Resp, P, C, K>
{
    /// A clone starts unpolled: readiness, slots and permits are not shared.
    fn clone(&self) -> Self {
        FallbackService {
            guard: self.guard.clone(),
            tiers: self.tiers.clone(),
            plan: CachedPlan::default(),
        }
    }
}

impl<S: fmt::Debug, Req: 'static, Resp: 'static, P: 'static, C, K> fmt::Debug
    for FallbackService<S, Req, Resp, P, C, K>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("guard", &self.guard)
            .field("tiers", &self.tiers.added)
            .finish_non_exhaustive()
    }
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C, K> Service<Req>
    for FallbackService<S, Req, Resp, P, C, K>
where
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
    C: Classify<Resp, BoxError> + Clone,
    K: Stages,
    Req: Send + 'static,
    Resp: Send + 'static,
    P: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future =
        ResponseFuture<crate::guard::future::ResponseFuture<S::Future, C, K>, Req, Resp, P, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if ready!(self.guard.poll_decide(cx))?.is_some() {
            // The call will not be made: its plan now, for the settings decided by.
            let settings = self.guard.settings();
            Plan::cached(&mut self.plan, &self.tiers, settings);
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(short) = self.guard.take_short() {
            // `poll_ready` cached the plan for the settings it decided by.
            return self.answer(self.plan.plan, req, short);
        }
        let settings = self.guard.settings();
        let plan = Plan::cached(&mut self.plan, &self.tiers, settings);
        if let Some(short) = self.guard.confirm() {
            // A half-open trial refused at the call: the fallback answers it.
            return self.answer(plan, req, short);
        }
        let parts = (self.tiers.parts)(&req);
        let spare = match &self.tiers.service {
            Some(s) => (s.clone_request)(&req),
            None => None,
        };
        let classify = self.guard.classify().clone();
        // Leased before the call: the call's pieces then go straight into the future
        // (taken after, the lease's work between them spilled the pieces to the stack
        // and copied them back with wider loads: a store-forwarding stall per call).
        let tiers = self.tiers.lease_mut();
        let (fut, timeout, hold) = self.guard.call_admitted(req);
        ResponseFuture::primary(
            tiers,
            classify,
            plan,
            crate::guard::future::ResponseFuture::called(fut, timeout, hold),
            parts,
            spare,
        )
    }
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C, K> FallbackService<S, Req, Resp, P, C, K>
where
    C: Clone,
    K: Stages,
{
    /// A call not made (`short`): answered by the first tier that can.
    #[inline(always)]
    fn answer<F>(&self, plan: Plan, req: Req, short: Short) -> ResponseFuture<F, Req, Resp, P, C> {
        if let Some(resp) = plan.short_value(&self.tiers, short) {
            return ResponseFuture::answered(resp);
        }
        let parts = (self.tiers.parts)(&req);
        let classify = self.guard.classify().clone();
        ResponseFuture::short(self.tiers.lease(), classify, plan, parts, req, short)
    }
}
