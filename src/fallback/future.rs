//! The fallback's response future: the call, then the tiers in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::ServiceExt;

use super::error::{FailedResponse, FallbackBusy, FallbackFailed, NoRequest};
use super::tiers::{Cause, Order, StaticTier, Tiers};
use crate::BoxError;
use crate::breaker::error::OpenCircuit;
use crate::bulkhead::BulkheadFull;
use crate::classify::{Classify, Outcome};
use crate::guard::Short;
use crate::kill::Killed;
use crate::lease::Lease;
use crate::settings::{PolicySettings, Tier};
use crate::timeout::error::Elapsed;

/// A future's hold on its layer's tiers (and through them, its policy).
type TiersLease<Req, Resp, P> = Lease<Tiers<Req, Resp, P>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a call needs of the live settings, taken from the service's cached copy when
/// the call starts: the future never loads the settings itself on the fast paths.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Plan {
    /// The tiers to try when the fallback is triggered.
    order: Order,
    critical: bool,
    /// `fallback.on` as bits: open, killed, bulkhead, timeout, failure.
    on: u8,
    /// The short-circuit triggers (open, killed, bulkhead bits) whose first tier is a
    /// static value: those calls are answered without taking the request's parts.
    value_first: u8,
    refresh_ms: u64,
    max_stale_ms: u64,
}

const ON_OPEN: u8 = Short::Open as u8;
const ON_KILLED: u8 = Short::Killed as u8;
const ON_BULKHEAD: u8 = Short::Bulkhead as u8;
const ON_TIMEOUT: u8 = 8;
const ON_FAILURE: u8 = 16;
const ON_ALL: u8 = 31;

/// The plan for the settings in force, recomputed on change only. It holds the settings
/// it was made from: keyed by a bare address, a freed `Arc` whose address the next
/// settings reuse would pass for unchanged.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedPlan {
    settings: Option<std::sync::Arc<PolicySettings>>,
    pub(crate) plan: Plan,
}

impl Plan {
    #[inline]
    pub(crate) fn new<Req, Resp, P>(tiers: &Tiers<Req, Resp, P>, s: &PolicySettings) -> Plan {
        let f = &s.fallback;
        let bit = |on: bool, bit: u8| if on { bit } else { 0 };
        let on = bit(f.on.open, ON_OPEN)
            | bit(f.on.killed, ON_KILLED)
            | bit(f.on.bulkhead, ON_BULKHEAD)
            | bit(f.on.timeout, ON_TIMEOUT)
            | bit(f.on.failure, ON_FAILURE);
        let mut plan = Plan {
            order: tiers.order(f, s.critical),
            critical: s.critical,
            on,
            value_first: 0,
            refresh_ms: f.cache_refresh_ms,
            max_stale_ms: f.cache_max_stale_ms,
        };
        if let Some(StaticTier::Value(_)) = tiers.static_fn {
            for trigger in [ON_OPEN, ON_KILLED, ON_BULKHEAD] {
                if plan.order_for_bit(trigger).get(0) == Some(Tier::Static) {
                    plan.value_first |= trigger;
                }
            }
        }
        plan
    }

    /// The plan for `settings`, recomputed only when they changed.
    #[inline]
    pub(crate) fn cached<Req, Resp, P>(
        cached: &mut CachedPlan,
        tiers: &Tiers<Req, Resp, P>,
        settings: &std::sync::Arc<PolicySettings>,
    ) -> Plan {
        match &cached.settings {
            Some(s) if std::sync::Arc::ptr_eq(s, settings) => cached.plan,
            _ => Plan::recompute(cached, tiers, settings),
        }
    }

    #[cold]
    #[inline(never)]
    fn recompute<Req, Resp, P>(
        cached: &mut CachedPlan,
        tiers: &Tiers<Req, Resp, P>,
        settings: &std::sync::Arc<PolicySettings>,
    ) -> Plan {
        *cached = CachedPlan {
            settings: Some(settings.clone()),
            plan: Plan::new(tiers, settings),
        };
        cached.plan
    }

    /// The static value answering a call short-circuited by `short`, when the plan says
    /// it is the first tier to try: no parts, no cause, no future state machine.
    #[inline]
    pub(crate) fn short_value<Req, Resp, P>(
        &self,
        tiers: &Tiers<Req, Resp, P>,
        short: Short,
    ) -> Option<Resp> {
        if self.value_first & short as u8 == 0 {
            return None;
        }
        let Some(StaticTier::Value(value)) = &tiers.static_fn else {
            return None;
        };
        Some(tiers.served(Tier::Static, value()))
    }

    /// The tiers to try for a failure of a known trigger.
    #[inline]
    fn order_for_bit(&self, bit: u8) -> Order {
        if !self.critical || self.on & bit != 0 {
            self.order
        } else {
            Order::default()
        }
    }

    /// The tiers to try for this failure: none unless the settings say it calls for
    /// the fallback (a non-critical dependency always falls back).
    #[inline]
    fn order_for<Resp>(&self, original: &Result<Resp, BoxError>) -> Order {
        let triggered = !self.critical
            || match original {
                Ok(_) => self.on & ON_FAILURE != 0,
                // The common case, every trigger on, needs no look at the error.
                Err(_) if self.on == ON_ALL => true,
                Err(e) => self.on & trigger_bit(e) != 0,
            };
        if triggered {
            self.order
        } else {
            Order::default()
        }
    }
}

/// Which `fallback.on` trigger this error is.
#[cold]
fn trigger_bit(e: &BoxError) -> u8 {
    if e.is::<OpenCircuit>() {
        ON_OPEN
    } else if e.is::<Killed>() {
        ON_KILLED
    } else if e.is::<BulkheadFull>() {
        ON_BULKHEAD
    } else if e.is::<Elapsed>() {
        ON_TIMEOUT
    } else {
        ON_FAILURE
    }
}

/// A service-tier call in flight, with its deadline and its concurrency slot.
struct Running<Resp> {
    fut: BoxFuture<Result<Resp, BoxError>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    started: u64,
    slot: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl<Resp> Drop for Running<Resp> {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the tiers stand after the dependency failed.
pub(crate) struct Progress<Req, Resp, P> {
    parts: P,
    spare: Option<Req>,
    /// What failed: an error, or a response classified as a failure.
    original: Result<Resp, BoxError>,
    errors: Vec<(Tier, BoxError)>,
    order: Order,
    next: usize,
    running: Option<Running<Resp>>,
}

pin_project! {
    #[project = StateProj]
    enum State<F, Req, Resp, P> {
        Primary {
            #[pin]
            fut: F,
            parts: Option<P>,
            spare: Option<Req>,
        },
        Fallback {
            progress: Box<Progress<Req, Resp, P>>,
        },
        Done,
    }
}

pin_project! {
    /// The response future of [`FallbackService`](super::FallbackService).
    pub struct ResponseFuture<F, Req: 'static, Resp: 'static, P: 'static, C> {
        #[pin]
        kind: Kind<F, Req, Resp, P, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Req: 'static, Resp: 'static, P: 'static, C> {
        /// Answered when the call was made (a short-circuited call's static value): the
        /// future only hands the response over.
        Answered {
            resp: Option<Resp>,
        },
        /// The dependency's call, then the tiers.
        Working {
            #[pin]
            state: State<F, Req, Resp, P>,
            // After `state`: dropped last, once nothing of the call uses the tiers.
            tiers: TiersLease<Req, Resp, P>,
            plan: Plan,
            classify: C,
        },
    }
}

impl<F, Req: 'static, Resp: 'static, P: 'static, C> std::fmt::Debug
    for ResponseFuture<F, Req, Resp, P, C>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Answered { .. } => d.field("answered", &true),
            Kind::Working { tiers, .. } => d.field("policy", &tiers.policy.name()),
        }
        .finish_non_exhaustive()
    }
}

impl<F, Req: 'static, Resp: 'static, P: 'static, C> ResponseFuture<F, Req, Resp, P, C> {
    #[inline(always)]
    pub(crate) fn primary(
        tiers: TiersLease<Req, Resp, P>,
        classify: C,
        plan: Plan,
        fut: F,
        parts: P,
        spare: Option<Req>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Working {
                state: State::Primary {
                    fut,
                    parts: Some(parts),
                    spare,
                },
                tiers,
                plan,
                classify,
            },
        }
    }

    /// Already answered (by a static value, before the dependency was asked).
    #[inline]
    pub(crate) fn answered(resp: Resp) -> Self {
        ResponseFuture {
            kind: Kind::Answered { resp: Some(resp) },
        }
    }

    /// The dependency is not called (killed, or its breaker open): the fallback answers.
    #[inline]
    pub(crate) fn short(
        tiers: TiersLease<Req, Resp, P>,
        classify: C,
        plan: Plan,
        parts: P,
        req: Req,
        why: Short,
    ) -> Self {
        // The cause is passed by reference to the fast tiers; it is boxed only if the
        // walk must go on.
        let cause: &Cause = match why {
            Short::Killed => &Killed::new(),
            Short::Bulkhead => &BulkheadFull::new(),
            Short::Open => &OpenCircuit::new(),
        };
        let order = plan.order_for_bit(why as u8);
        let state = match fast_tiers(&tiers, plan, order, &parts, cause) {
            Some(resp) => return ResponseFuture::answered(resp),
            None => {
                let original: Result<Resp, BoxError> = Err(why.error());
                State::Fallback {
                    progress: Box::new(Progress::new(order, parts, Some(req), original)),
                }
            }
        };
        ResponseFuture {
            kind: Kind::Working {
                state,
                tiers,
                plan,
                classify,
            },
        }
    }
}

impl<Req, Resp, P> Progress<Req, Resp, P> {
    fn new(order: Order, parts: P, spare: Option<Req>, original: Result<Resp, BoxError>) -> Self {
        Progress {
            parts,
            spare,
            original,
            errors: Vec::new(),
            order,
            next: 0,
            running: None,
        }
    }
}

impl<F, Req, Resp, P, C, E> Future for ResponseFuture<F, Req, Resp, P, C>
where
    F: Future<Output = Result<Resp, E>>,
    E: Into<BoxError>,
    C: Classify<Resp, BoxError>,
    Req: Send + 'static,
    Resp: Send + 'static,
    P: Send + 'static,
{
    type Output = Result<Resp, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { resp } => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Working {
                state,
                tiers,
                plan,
                classify,
            } => poll_working(state, tiers, *plan, classify, cx),
        }
    }
}

#[inline]
fn poll_working<F, Req, Resp, P, C, E>(
    mut state: Pin<&mut State<F, Req, Resp, P>>,
    tiers: &Tiers<Req, Resp, P>,
    plan: Plan,
    classify: &mut C,
    cx: &mut Context<'_>,
) -> Poll<Result<Resp, BoxError>>
where
    F: Future<Output = Result<Resp, E>>,
    E: Into<BoxError>,
    C: Classify<Resp, BoxError>,
    Req: Send + 'static,
    Resp: Send + 'static,
    P: Send + 'static,
{
    loop {
        match state.as_mut().project() {
            StateProj::Primary { fut, parts, spare } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                let outcome = classify.classify(&result);
                if outcome == Outcome::Success {
                    if let (Ok(resp), Some(cache), Some(parts)) =
                        (&result, &tiers.cache, parts.as_ref())
                    {
                        let now = tiers.policy.clock().now_ms();
                        cache.fill(parts, resp, now, plan.refresh_ms);
                    }
                    state.set(State::Done);
                    return Poll::Ready(result);
                }
                let Some(parts) = parts.take() else {
                    return Poll::Ready(result); // polled again after a panic: give up
                };
                let spare = spare.take();
                let order = plan.order_for(&result);
                let cause: &Cause = match &result {
                    Err(e) => &**e,
                    Ok(_) => &FailedResponse::new(),
                };
                if let Some(resp) = fast_tiers(tiers, plan, order, &parts, cause) {
                    state.set(State::Done);
                    return Poll::Ready(Ok(resp));
                }
                state.set(State::Fallback {
                    progress: Box::new(Progress::new(order, parts, spare, result)),
                });
            }
            StateProj::Fallback { progress } => {
                let out = ready!(poll_tiers(progress, tiers, cx));
                state.set(State::Done);
                return Poll::Ready(out);
            }
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        }
    }
}

/// The synchronous tier at the head of the order, answered without allocating: a
/// static tier, or a cache hit. `None` when the full walk is needed.
#[inline]
fn fast_tiers<Req, Resp, P>(
    tiers: &Tiers<Req, Resp, P>,
    plan: Plan,
    order: Order,
    parts: &P,
    cause: &Cause,
) -> Option<Resp> {
    match order.get(0)? {
        Tier::Static => {
            let build = tiers.static_fn.as_ref()?;
            Some(tiers.served(Tier::Static, build.build(parts, cause)))
        }
        Tier::Cache => {
            let cache = tiers.cache.as_ref()?;
            let resp = cache
                .get(parts, tiers.policy.clock().now_ms(), plan.max_stale_ms)
                .ok()?;
            Some(tiers.served(Tier::Cache, resp))
        }
        Tier::Service => None,
    }
}

fn poll_tiers<Req, Resp, P: 'static>(
    p: &mut Progress<Req, Resp, P>,
    tiers: &Tiers<Req, Resp, P>,
    cx: &mut Context<'_>,
) -> Poll<Result<Resp, BoxError>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let core = tiers.policy.shared();
    loop {
        if let Some(run) = &mut p.running {
            let outcome = match run.fut.as_mut().poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => match run.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Err(Elapsed::new().into()),
                    Poll::Pending => return Poll::Pending,
                },
            };
            let took = core.clock.now_ms().saturating_sub(run.started);
            tiers.service_duration.record(took as f64 * 1e-3);
            p.running = None;
            match outcome {
                Ok(resp) => return Poll::Ready(Ok(tiers.served(Tier::Service, resp))),
                Err(e) => {
                    tiers.count(Tier::Service, false);
                    p.errors.push((Tier::Service, e));
                }
            }
        }
        let Some(tier) = p.order.get(p.next) else {
            return Poll::Ready(all_failed(p));
        };
        p.next += 1;
        match tier {
            Tier::Static => {
                if let Some(build) = &tiers.static_fn {
                    let cause: &Cause = match &p.original {
                        Err(e) => &**e,
                        Ok(_) => &FailedResponse::new(),
                    };
                    let resp = build.build(&p.parts, cause);
                    return Poll::Ready(Ok(tiers.served(Tier::Static, resp)));
                }
            }
            Tier::Cache => {
                if let Some(cache) = &tiers.cache {
                    let max_stale = core.settings.load().fallback.cache_max_stale_ms;
                    match cache.get(&p.parts, core.clock.now_ms(), max_stale) {
                        Ok(resp) => return Poll::Ready(Ok(tiers.served(Tier::Cache, resp))),
                        Err(e) => {
                            tiers.count(Tier::Cache, false);
                            p.errors.push((Tier::Cache, e));
                        }
                    }
                }
            }
            Tier::Service => {
                let Some(st) = &tiers.service else { continue };
                let Some(req) = p.spare.take() else {
                    tiers.count(Tier::Service, false);
                    p.errors.push((Tier::Service, NoRequest::new().into()));
                    continue;
                };
                let f = core.settings.load().fallback.clone();
                if st.in_flight.fetch_add(1, Ordering::AcqRel) >= f.max_concurrent {
                    st.in_flight.fetch_sub(1, Ordering::AcqRel);
                    tiers.count(Tier::Service, false);
                    p.errors.push((Tier::Service, FallbackBusy::new().into()));
                    continue;
                }
                p.running = Some(Running {
                    fut: Box::pin(st.service.clone().oneshot(req)),
                    deadline: Box::pin(tokio::time::sleep(Duration::from_millis(f.timeout_ms))),
                    started: core.clock.now_ms(),
                    slot: st.in_flight.clone(),
                });
            }
        }
    }
}

fn all_failed<Req: 'static, Resp: 'static, P: 'static>(
    p: &mut Progress<Req, Resp, P>,
) -> Result<Resp, BoxError> {
    let original = std::mem::replace(&mut p.original, Err(FailedResponse::new().into()));
    let errors = std::mem::take(&mut p.errors);
    match original {
        Ok(resp) => Ok(resp),
        Err(e) if errors.is_empty() => Err(e),
        Err(e) => Err(FallbackFailed::new(e, errors).into()),
    }
}
