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
//! Response futures reach the tiers by `&'static` reference (no reference count per
//! call), so a [`FallbackLayer`] allocates its tiers once and keeps them for the life of
//! the process: build layers at start-up, not per request.

pub mod error;
pub(crate) mod future;
pub(crate) mod tiers;

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU32;
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, Cache};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

pub use self::tiers::Cause;
use self::tiers::{KeyedCache, ServiceTier, StaticTier, Tiers};
use crate::bulkhead::Slot;
use crate::classify::{Classify, ErrorsAsFailures};
use crate::clock::Clock;
use crate::kill::killed;
use crate::policy::PolicyCore;
use crate::settings::{PolicySettings, Tier};
use crate::{BoxError, Policy};

pub use self::future::ResponseFuture;
use self::future::{CachedPlan, Plan};

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// The tiers of a fallback, built in code; see the [module docs](self).
pub struct Fallback<Req, Resp, P = ()> {
    tiers: Tiers<Req, Resp, P>,
}

impl<Req: 'static, Resp: 'static, P: 'static> fmt::Debug for Fallback<Req, Resp, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("tiers", &self.tiers.added)
            .finish_non_exhaustive()
    }
}

impl<Req: 'static, Resp: 'static> Fallback<Req, Resp, ()> {
    /// A fallback that keeps nothing of the request (static tiers only need the error).
    pub fn new() -> Self {
        Fallback {
            tiers: Tiers::new(Box::new(|_: &Req| ())),
        }
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
            tiers: Tiers::new(Box::new(parts)),
        }
    }

    fn add(mut self, tier: Tier) -> Self {
        self.tiers.added.retain(|t| *t != tier);
        self.tiers.added.push(tier);
        self
    }

    /// A static tier answering with a clone of `response`. When it is the first tier
    /// for a short-circuited call (killed, open circuit, full bulkhead), that call is
    /// answered in `call` itself, without taking the request's parts.
    pub fn static_value(mut self, response: Resp) -> Self
    where
        Resp: Clone + Send + Sync + 'static,
    {
        self.tiers.static_fn = Some(StaticTier::Value(Box::new(move || response.clone())));
        self.add(Tier::Static)
    }

    /// A static tier answering with `build(&parts, &error)`. It runs on the caller's
    /// task: keep it cheap, or it becomes the next outage.
    pub fn static_with(
        mut self,
        build: impl Fn(&P, &Cause) -> Resp + Send + Sync + 'static,
    ) -> Self {
        self.tiers.static_fn = Some(StaticTier::With(Box::new(build)));
        self.add(Tier::Static)
    }

    /// A cache tier of at most `capacity` responses, keyed by the request's parts.
    pub fn cache(mut self, capacity: usize) -> Self
    where
        P: Hash + Eq + Clone + Send + Sync + 'static,
        Resp: Clone + Send + Sync + 'static,
    {
        self.tiers.cache = Some(Box::new(KeyedCache::<P, Resp>::new(capacity)));
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
        Req: 'static,
    {
        self.tiers.service = Some(ServiceTier {
            service: BoxCloneSyncService::new(service.map_err(Into::into)),
            clone_request: Box::new(clone_request),
            in_flight: AtomicU32::new(0),
        });
        self.add(Tier::Service)
    }
}

/// Builds [`FallbackService`]s; see the [module docs](self).
pub struct FallbackLayer<Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    policy: Policy,
    tiers: &'static Tiers<Req, Resp, P>,
    classify: C,
}

impl<Req: 'static, Resp: 'static, P: 'static, C> FallbackLayer<Req, Resp, P, C> {
    pub(crate) fn tiers(&self) -> &'static Tiers<Req, Resp, P> {
        self.tiers
    }
}

impl<Req: 'static, Resp: 'static, P: 'static, C: Clone> Clone for FallbackLayer<Req, Resp, P, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            policy: self.policy.clone(),
            tiers: self.tiers,
            classify: self.classify.clone(),
        }
    }
}

impl<Req: 'static, Resp: 'static, P: 'static, C> fmt::Debug for FallbackLayer<Req, Resp, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("policy", &self.policy.name())
            .field("tiers", &self.tiers.added)
            .finish_non_exhaustive()
    }
}

impl<Req: 'static, Resp: 'static, P: 'static> FallbackLayer<Req, Resp, P> {
    /// A layer answering from `fallback` when `policy`'s dependency fails (every `Err`
    /// counts as a failure; see [`FallbackLayer::classify`]).
    pub fn new(policy: &Policy, fallback: Fallback<Req, Resp, P>) -> Self
    where
        Req: 'static,
        Resp: 'static,
        P: 'static,
    {
        let mut tiers = fallback.tiers;
        tiers.name_metrics(policy.name());
        tiers.seal();
        FallbackLayer {
            policy: policy.clone(),
            tiers: Box::leak(Box::new(tiers)),
            classify: ErrorsAsFailures,
        }
    }
}

impl<Req: 'static, Resp: 'static, P: 'static, C> FallbackLayer<Req, Resp, P, C> {
    /// Decides with `classify` which responses are failures (e.g. HTTP 5xx).
    pub fn classify<C2>(self, classify: C2) -> FallbackLayer<Req, Resp, P, C2> {
        FallbackLayer {
            policy: self.policy,
            tiers: self.tiers,
            classify,
        }
    }
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C: Clone> Layer<S>
    for FallbackLayer<Req, Resp, P, C>
{
    type Service = FallbackService<S, Req, Resp, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let core = self.policy.core();
        FallbackService {
            inner,
            classify: self.classify.clone(),
            tiers: self.tiers,
            settings: Cache::new(&core.settings),
            core,
            clock: *self.policy.clock(),
            plan: CachedPlan::default(),
            short: Short::No,
            inner_ready: false,
            _policy: self.policy.clone(),
            _types: PhantomData,
        }
    }
}

/// Answers from the fallback's tiers when the call fails or is killed; see the
/// [module docs](self).
pub struct FallbackService<S, Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    inner: S,
    classify: C,
    tiers: &'static Tiers<Req, Resp, P>,
    settings: SettingsCache,
    core: &'static PolicyCore,
    clock: Clock,
    /// The plan for the settings in force: recomputed on change only.
    plan: CachedPlan,
    /// Decided in `poll_ready`: the dependency will not be called.
    short: Short,
    /// The inner service said it is ready: the call is committed to it (it may hold a
    /// bulkhead slot or a trial permit for it), so `poll_ready` does not decide again.
    inner_ready: bool,
    _policy: Policy,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl Short {
    /// Counts the call under its outcome.
    #[inline]
    pub(crate) fn count(self, core: &PolicyCore) {
        let m = &core.metrics;
        match self {
            Short::No => {}
            Short::Killed => m.killed.increment(1),
            Short::Open => m.rejected.increment(1),
            Short::Bulkhead => m.bulkhead_full.increment(1),
        }
    }
}

/// Why `poll_ready` decided not to call the dependency; each reason is its
/// `fallback.on` trigger bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Short {
    No = 0,
    Open = future::ON_OPEN,
    Killed = future::ON_KILLED,
    Bulkhead = future::ON_BULKHEAD,
}

impl<S: Clone, Req: 'static, Resp: 'static, P: 'static, C: Clone> Clone
    for FallbackService<S, Req, Resp, P, C>
{
    fn clone(&self) -> Self {
        FallbackService {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            tiers: self.tiers,
            settings: self.settings.clone(),
            core: self.core,
            clock: self.clock,
            plan: CachedPlan::default(),
            short: Short::No,
            inner_ready: false,
            _policy: self._policy.clone(),
            _types: PhantomData,
        }
    }
}

impl<S: fmt::Debug, Req: 'static, Resp: 'static, P: 'static, C> fmt::Debug
    for FallbackService<S, Req, Resp, P, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req: 'static, Resp: 'static, P: 'static, C> Service<Req>
    for FallbackService<S, Req, Resp, P, C>
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
    type Future = ResponseFuture<S::Future, Req, Resp, P, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.inner_ready {
            // Killed, or the policy's breaker open: the fallback answers without asking
            // the dependency (nor the layers below, which would only reject).
            let settings = self.settings.load();
            self.short = if killed(self.core, settings) {
                Short::Killed
            } else if self
                .core
                .breaker
                .rejects_now(settings.breaker.mode, &self.clock)
                // A full bulkhead (outside the breaker) answers first: from below.
                && !Slot::is_full(self.core, settings.bulkhead.max_concurrent)
            {
                Short::Open
            } else {
                Short::No
            };
            if self.short != Short::No {
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
        let ctx = future::Ctx {
            tiers: self.tiers,
            core: self.core,
            clock: self.clock,
        };
        self.inner_ready = false;
        match std::mem::replace(&mut self.short, Short::No) {
            Short::No => {}
            short => {
                // `poll_ready` cached the plan for the settings it decided by.
                short.count(self.core);
                let plan = self.plan.plan;
                if let Some(resp) = plan.short_value(self.tiers, short) {
                    return ResponseFuture::answered(resp);
                }
                let parts = (self.tiers.parts)(&req);
                return ResponseFuture::short(ctx, self.classify.clone(), plan, parts, req, short);
            }
        }
        let settings = self.settings.load();
        let plan = Plan::cached(&mut self.plan, self.tiers, settings);
        let parts = (self.tiers.parts)(&req);
        let spare = match &self.tiers.service {
            Some(s) => (s.clone_request)(&req),
            None => None,
        };
        ResponseFuture::primary(
            ctx,
            self.classify.clone(),
            plan,
            self.inner.call(req),
            parts,
            spare,
        )
    }
}
