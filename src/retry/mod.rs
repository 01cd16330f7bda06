//! Live retries with a budget shared by the whole policy.
//!
//! The retry stage sits inside the fallback and outside the bulkhead, breaker and
//! timeout (`kill switch → fallback → retry → bulkhead → breaker → timeout`, built by
//! [`PolicyLayer::retry`](crate::stack::PolicyLayer::retry)): the breaker sees every
//! attempt, the timeout bounds each one, and the fallback answers only when the retries
//! are spent (or refused). Everything is read live from the policy's `retry.*`
//! settings ([`RetrySettings`]); with the default
//! `max_attempts` of 1 the stage passes calls through.
//!
//! A call is retried when all of these hold:
//! - its outcome is retryable by the stage's [`Retryable`] (a failure of the
//!   dependency, never a rejection by the stack itself — an open circuit, a full
//!   bulkhead, a kill — and for HTTP never a 4xx, see `Http`, feature `http`);
//! - the request could be copied ([`Retryable::clone_request`]: requests are generally
//!   not `Clone`, and a non-idempotent one must not be sent twice);
//! - fewer than `retry.max_attempts` attempts were made;
//! - the wait (the server's pushback if it sent one and it is at most
//!   `retry.pushback_max_ms`, else a jittered exponential backoff) ends before the
//!   call's `retry.deadline_ms`, if any;
//! - the policy's **budget** has a retry left: retries over the last
//!   `retry.budget_window_ms` may be at most `retry.budget_percent` % of the requests
//!   of that window plus `retry.budget_min_per_s` per second of it, counted over every
//!   clone and thread of the policy (Finagle's and linkerd's design). A retry refused by
//!   the budget ends the call with its last attempt's result at once.
//!
//! Retries and refusals are counted in the policy's statistics and in
//! `substation_retries_total`. The stage costs a call that succeeds at its first
//! attempt a settings read, a copy of the request, and a lease on its state (an
//! increment of the service's own count, and one plain store at the end); it reads no
//! clock unless the call waits (BENCHMARKS.md, `retry`).
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use substation::{BoxError, Policy, fallback::Fallback, retry::Errors};
//! use substation::settings::PolicySettings;
//! use substation::stack::PolicyLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let settings = PolicySettings::default().with(|s| s.retry.max_attempts = 3);
//! let policy = Policy::new("quotes", settings).unwrap();
//! let tries = Arc::new(AtomicU32::new(0));
//! let t = tries.clone();
//! // Fails twice, then answers.
//! let flaky = service_fn(move |n: u32| {
//!     let t = t.clone();
//!     async move {
//!         match t.fetch_add(1, Ordering::Relaxed) {
//!             0 | 1 => Err::<u32, BoxError>("connection reset".into()),
//!             _ => Ok(n),
//!         }
//!     }
//! });
//! let client = PolicyLayer::new(&policy)
//!     .fallback(Fallback::new().static_value(0))
//!     .retry(Errors::cloning(|n: &u32| Some(*n)))
//!     .layer(flaky);
//! assert_eq!(client.oneshot(7).await.unwrap(), 7);
//! assert_eq!(tries.load(Ordering::Relaxed), 3);
//! assert_eq!(policy.stats().totals.retries, 2);
//! # }
//! ```

mod budget;
#[cfg(feature = "tonic")]
mod grpc;
#[cfg(feature = "http")]
mod http;

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::breaker::error::OpenCircuit;
use crate::bulkhead::BulkheadFull;
use crate::guard::{SettingsCache, settings_cache};
use crate::kill::Killed;
use crate::lease::{Lease, Shared};
use crate::settings::{Jitter, RetrySettings};
use crate::timeout::error::Elapsed;
use crate::{BoxError, Policy, stats};

pub(crate) use self::budget::Budget;
#[cfg(feature = "tonic")]
pub use self::grpc::Grpc;
#[cfg(feature = "http")]
pub use self::http::Http;

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The outcome stands (a success, or a failure not worth retrying).
    Done,
    /// Retry after the policy's backoff.
    Retry,
    /// Retry after the server's pushback (`Retry-After`, `grpc-retry-pushback-ms`),
    /// if it is at most `retry.pushback_max_ms`; else the outcome stands.
    RetryAfter(Duration),
}

/// Which requests may be sent again and which outcomes are worth it.
pub trait Retryable<Req, Resp>: Send + Sync + 'static {
    /// A copy of `req` for another attempt, or `None` if it must not be retried (its
    /// body cannot be copied, or it is not idempotent). Called once per attempt that
    /// may be followed by another, before the attempt is made.
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// Whether `result` is worth another attempt.
    fn verdict(&self, result: &Result<Resp, BoxError>) -> Verdict;
}

/// Whether `e` is the stack's own refusal to make a call (an open circuit, a full
/// bulkhead, a kill): never retried — the dependency was not asked.
pub fn is_rejection(e: &BoxError) -> bool {
    e.is::<OpenCircuit>() || e.is::<BulkheadFull>() || e.is::<Killed>()
}

/// Retries every `Err` except the stack's own rejections ([`is_rejection`]); requests
/// are copied by the given function (return `None` for one that must not be sent
/// twice).
pub struct Errors<F> {
    clone: F,
}

impl<F> Errors<F> {
    /// Retries errors; `clone` copies a request for another attempt, or declines.
    pub fn cloning<Req>(clone: F) -> Self
    where
        F: Fn(&Req) -> Option<Req>,
    {
        Errors { clone }
    }
}

impl<F> fmt::Debug for Errors<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Errors").finish_non_exhaustive()
    }
}

impl<F, Req, Resp> Retryable<Req, Resp> for Errors<F>
where
    F: Fn(&Req) -> Option<Req> + Send + Sync + 'static,
{
    fn clone_request(&self, req: &Req) -> Option<Req> {
        (self.clone)(req)
    }

    fn verdict(&self, result: &Result<Resp, BoxError>) -> Verdict {
        match result {
            Err(e) if !is_rejection(e) => Verdict::Retry,
            _ => Verdict::Done,
        }
    }
}

/// What the retry stage's futures share with the service: a copy of the inner service
/// to make retries with, the [`Retryable`], and the policy.
struct Template<S, R>
where
    S: Send + 'static,
    R: Send + Sync + 'static,
{
    service: Mutex<S>,
    retry: R,
    policy: Policy,
}

/// Builds [`Retry`] services.
pub struct RetryLayer<R> {
    policy: Policy,
    retry: std::sync::Arc<R>,
}

impl<R> Clone for RetryLayer<R> {
    fn clone(&self) -> Self {
        RetryLayer {
            policy: self.policy.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<R> fmt::Debug for RetryLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl<R> RetryLayer<R> {
    /// Retries calls as `policy`'s `retry.*` settings say, deciding with `retry`.
    /// [`PolicyLayer::retry`](crate::stack::PolicyLayer::retry) puts it in its place in
    /// the stack; this layer is for stacks built by hand (put it outside the breaker).
    pub fn new(policy: &Policy, retry: R) -> Self {
        RetryLayer {
            policy: policy.clone(),
            retry: std::sync::Arc::new(retry),
        }
    }
}

impl<S: Clone + Send + 'static, R: Send + Sync + 'static> Layer<S> for RetryLayer<R> {
    type Service = Retry<S, SharedRetry<R>>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, &self.policy, SharedRetry(self.retry.clone()))
    }
}

/// A [`Retryable`] shared by the services of one layer.
pub struct SharedRetry<R>(std::sync::Arc<R>);

impl<R> fmt::Debug for SharedRetry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedRetry")
    }
}

impl<R: Retryable<Req, Resp>, Req, Resp> Retryable<Req, Resp> for SharedRetry<R> {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        self.0.clone_request(req)
    }

    fn verdict(&self, result: &Result<Resp, BoxError>) -> Verdict {
        self.0.verdict(result)
    }
}

/// The retry stage over `S`; see the [module docs](self).
pub struct Retry<S, R>
where
    S: Send + 'static,
    R: Send + Sync + 'static,
{
    inner: S,
    template: Shared<Template<S, R>>,
    settings: SettingsCache,
}

impl<S: Clone + Send + 'static, R: Send + Sync + 'static> Retry<S, R> {
    /// Retries calls to `inner` as `policy`'s `retry.*` settings say.
    pub(crate) fn new(inner: S, policy: &Policy, retry: R) -> Self {
        Retry {
            template: Shared::new(Template {
                service: Mutex::new(inner.clone()),
                retry,
                policy: policy.clone(),
            }),
            inner,
            settings: settings_cache(policy),
        }
    }
}

impl<S: Clone + Send + 'static, R: Send + Sync + 'static> Clone for Retry<S, R> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            template: self.template.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: Send + 'static, R: Send + Sync + 'static> fmt::Debug for Retry<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry").finish_non_exhaustive()
    }
}

impl<S, R, Req> Service<Req> for Retry<S, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let settings = self.settings.load();
        // Branches, not `!retry && !hedge` (compiled to flag arithmetic).
        if !settings.retry.enabled() && !settings.hedge.enabled() {
            return ResponseFuture {
                attempt: Some(self.inner.call(req)),
                state: ManuallyDrop::new(None),
            };
        }
        let hedge = settings.hedge.enabled();
        let timed = settings.retry.deadline_ms.is_some();
        let template = self.template.lease_mut();
        let next = template.retry.clone_request(&req);
        // A call that hedges or has a deadline waits from its first poll: its slow part
        // now (it would be allocated then).
        let slow = if hedge || timed {
            Slow::start(hedge && next.is_some(), timed)
        } else {
            None
        };
        let attempt = self.inner.call(req);
        ResponseFuture {
            attempt: Some(attempt),
            state: ManuallyDrop::new(Some(State {
                template,
                next,
                slow,
            })),
        }
    }
}

/// A retrying (or hedging) call's state beyond its attempt's future: small, inline; what
/// only waits, retries and hedges need is allocated when one is first needed. Without
/// the slow part the call is in the common case: one attempt out, no hedging, no
/// deadline.
struct State<S, Req, R>
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    template: Lease<Template<S, R>>,
    /// A copy of the request for the next attempt (`None`: it may not be retried).
    next: Option<Req>,
    slow: Option<Pin<Box<Slow<S, Req>>>>,
}

pin_project! {
    /// What a call needs once it waits (a backoff, its deadline, a hedge's delay) or
    /// sends a retry or a hedge.
    struct Slow<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        backoff: Option<Sleep>,
        #[pin]
        deadline: Option<Sleep>,
        #[pin]
        hedge_timer: Option<Sleep>,
        // The service retries and hedges are made with (a copy of the template's).
        service: Option<S>,
        // The request of the attempt being waited for (backoff, readiness).
        waiting: Option<Req>,
        // Hedges in flight.
        hedges: Vec<Pin<Box<S::Future>>>,
        // Hedges sent.
        extra: u32,
        // A retryable failure kept while other copies of the call are still out.
        held: Option<Result<S::Response, BoxError>>,
        // The last wait, for decorrelated jitter.
        last_wait: Duration,
        // Whether this call may still send hedges.
        hedging: bool,
        // Whether the call has an overall deadline (`retry.deadline_ms`).
        timed: bool,
        // Attempts made (hedges not counted).
        attempts: u32,
    }
}

impl<S: Service<Req>, Req> Slow<S, Req> {
    /// The slow part of a call that hedges or has a deadline, from its start.
    #[cold]
    #[inline(never)]
    fn start(hedging: bool, timed: bool) -> Option<Pin<Box<Self>>> {
        (hedging || timed).then(|| Self::new(hedging, timed))
    }

    /// The slow part of a call that made one attempt.
    fn new(hedging: bool, timed: bool) -> Pin<Box<Self>> {
        Box::pin(Slow {
            backoff: None,
            deadline: None,
            hedge_timer: None,
            service: None,
            waiting: None,
            hedges: Vec::new(),
            extra: 0,
            held: None,
            last_wait: Duration::ZERO,
            hedging,
            timed,
            attempts: 1,
        })
    }
}

impl<S, Req, R> State<S, Req, R>
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    /// The next attempt goes out after `wait`, with the request's copy.
    fn retry_after(&mut self, wait: Duration) {
        let next = self.next.take();
        let mut slow = self.slow().project();
        slow.backoff.set(Some(tokio::time::sleep(wait)));
        *slow.waiting = next;
    }

    /// The slow part, allocated at its first use.
    fn slow(&mut self) -> Pin<&mut Slow<S, Req>> {
        self.split().1
    }

    /// The template and the slow part (allocated at its first use).
    fn split(&mut self) -> (&Template<S, R>, Pin<&mut Slow<S, Req>>) {
        let slow = self
            .slow
            .get_or_insert_with(|| Slow::new(false, false))
            .as_mut();
        (&self.template, slow)
    }

    /// Attempts made (hedges not counted).
    fn attempts(&self) -> u32 {
        self.slow.as_ref().map_or(1, |s| s.attempts)
    }
}

/// The service for retries and hedges (a copy of the template's, made at the first of
/// them), polled for readiness.
fn ready<S, Req, R>(
    service: &mut Option<S>,
    template: &Template<S, R>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), BoxError>>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Send + Sync + 'static,
{
    let service = service.get_or_insert_with(|| {
        template
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    });
    service.poll_ready(cx).map_err(Into::into)
}

pin_project! {
    /// The retry stage's response future.
    #[project = Projection]
    pub struct ResponseFuture<S, Req, R>
    where
        S: Service<Req>,
        S: Send,
        S: 'static,
        R: Send,
        R: Sync,
        R: 'static,
    {
        #[pin]
        attempt: Option<S::Future>,
        // Dropped by the future's `drop` (below), which tests it inline: as a plain field,
        // its drop glue (the lease's end, the slow part's) was an out-of-line call on
        // every call, even when the call had ended its state (BENCHMARKS.md, `retry`).
        state: ManuallyDrop<Option<State<S, Req, R>>>,
    }

    impl<S, Req, R> PinnedDrop for ResponseFuture<S, Req, R>
    where
        S: Service<Req>,
        S: Send,
        S: 'static,
        R: Send,
        R: Sync,
        R: 'static,
    {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Taken first (dropped even if the attempt's drop panics), dropped after the
            // attempt, as the fields' order would.
            let state = this.state.take();
            this.attempt.set(None);
            if let Some(state) = state {
                drop_state(state);
            }
        }
    }
}

/// Ends the call's state (its lease) once its answer is taken: inline, without the slow
/// part's drop glue (an out-of-line call even when there is no slow part).
#[inline(always)]
fn end<S, Req, R>(state: &mut Option<State<S, Req, R>>)
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    if let Some(State {
        template,
        next,
        slow,
    }) = state.take()
    {
        drop(template);
        drop(next);
        if let Some(slow) = slow {
            drop_slow(slow);
        }
    }
}

#[inline(never)]
fn drop_slow<S: Service<Req>, Req>(slow: Pin<Box<Slow<S, Req>>>) {
    drop(slow);
}

/// A state the call did not end (it was dropped before its answer, or answered from
/// the slow path).
#[inline(never)]
fn drop_state<S, Req, R>(state: State<S, Req, R>)
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    drop(state);
}

impl<S, Req, R> fmt::Debug for ResponseFuture<S, Req, R>
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retrying", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// The wait before retry number `retry` (1 for the first retry).
fn backoff(s: &RetrySettings, retry: u32, last: Duration) -> Duration {
    let min = s.backoff_min_ms;
    let max = s.backoff_max_ms.max(min);
    let ms = match s.jitter {
        Jitter::Decorrelated => {
            let last = u64::try_from(last.as_millis()).unwrap_or(u64::MAX);
            let hi = last.saturating_mul(3).clamp(min, max);
            fastrand::u64(min..=hi)
        }
        _ => {
            let cap = min
                .saturating_mul(
                    1u64.checked_shl(retry.saturating_sub(1))
                        .unwrap_or(u64::MAX),
                )
                .min(max);
            fastrand::u64(0..=cap)
        }
    };
    Duration::from_millis(ms)
}

impl<S, Req, R> Future for ResponseFuture<S, Req, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The common case, inline: one attempt out, nothing waited for yet; its answer
        // stands (no retry stage for this call, or a success).
        match this.state.as_ref() {
            None => {
                return match this.attempt.as_pin_mut() {
                    Some(attempt) => attempt.poll(cx).map_err(Into::into),
                    None => Poll::Ready(Err("retry future polled after completion".into())),
                };
            }
            Some(state) if state.slow.is_none() => {
                let Some(attempt) = this.attempt.as_mut().as_pin_mut() else {
                    return Poll::Ready(Err("retry future polled after completion".into()));
                };
                let r = ready!(attempt.poll(cx)).map_err(Into::into);
                this.attempt.set(None);
                if state.template.retry.verdict(&r) == Verdict::Done {
                    end(this.state);
                    return Poll::Ready(r);
                }
                return poll_slow(this, Some(r), cx);
            }
            Some(_) => {}
        }
        poll_slow(this, None, cx)
    }
}

/// Everything but the common case: waits, retries, hedges, the deadline. `first` is an
/// attempt's result the caller already took.
#[inline(never)]
fn poll_slow<S, Req, R>(
    mut this: Projection<'_, S, Req, R>,
    mut first: Option<Result<S::Response, BoxError>>,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Response, BoxError>>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
{
    {
        loop {
            // The attempt out (the first, or a retry).
            let mut held = None;
            if let Some(r) = first.take() {
                held = Some(r);
            } else if let Some(attempt) = this.attempt.as_mut().as_pin_mut()
                && let Poll::Ready(r) = attempt.poll(cx)
            {
                this.attempt.set(None);
                let r = r.map_err(Into::into);
                let Some(state) = this.state.as_mut() else {
                    return Poll::Ready(r);
                };
                if state.template.retry.verdict(&r) == Verdict::Done {
                    return Poll::Ready(r);
                }
                held = Some(r);
            }
            let Some(state) = this.state.as_mut() else {
                return Poll::Pending;
            };
            if state.slow.is_none() {
                if let Some(r) = held.take() {
                    // The common failure: one attempt out, failed, nothing else to wait
                    // for.
                    match decide(state, &r) {
                        Some(wait) => state.retry_after(wait),
                        None => return Poll::Ready(r),
                    }
                } else {
                    // Out, and nothing to time (no hedging, no deadline).
                    return Poll::Pending;
                }
            }
            let (template, slow) = state.split();
            let mut slow = slow.project();
            let (hedging, timed, attempts) = (*slow.hedging, *slow.timed, *slow.attempts);
            if let Some(r) = held {
                *slow.held = Some(r);
            }
            // The hedges: the first good answer wins (the others are dropped with this
            // future).
            let mut i = 0;
            while i < slow.hedges.len() {
                match slow.hedges[i].as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        drop(slow.hedges.swap_remove(i));
                        let r = r.map_err(Into::into);
                        if template.retry.verdict(&r) == Verdict::Done {
                            return Poll::Ready(r);
                        }
                        *slow.held = Some(r);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if timed && slow.deadline.is_none() {
                let ms = template.policy.shared().settings.load().retry.deadline_ms;
                if let Some(ms) = ms {
                    slow.deadline
                        .set(Some(tokio::time::sleep(Duration::from_millis(ms))));
                }
            }
            if let Some(deadline) = slow.deadline.as_mut().as_pin_mut()
                && deadline.poll(cx).is_ready()
            {
                // An attempt cut short ends as a timeout (its guard, dropped, records
                // nothing); a deadline reached while waiting cut no attempt.
                if this.attempt.is_some() || !slow.hedges.is_empty() {
                    template.policy.shared().stats.count(stats::TIMEOUT);
                }
                return Poll::Ready(Err(Elapsed::new().into()));
            }
            let in_flight = this.attempt.is_some() || !slow.hedges.is_empty();
            if in_flight {
                if hedging && attempts == 1 {
                    match hedge(state, cx) {
                        Poll::Ready(true) => continue, // a hedge went out: poll it
                        Poll::Ready(false) | Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
            // Nothing out: retry the failure kept, after a wait, or answer with it.
            if let Some(r) = slow.held.take() {
                match decide(state, &r) {
                    Some(wait) => state.retry_after(wait),
                    None => return Poll::Ready(r),
                }
            }
            let (template, slow) = state.split();
            let mut slow = slow.project();
            if let Some(wait) = slow.backoff.as_mut().as_pin_mut() {
                if wait.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                slow.backoff.set(None);
            }
            match ready(slow.service, template, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let (Some(service), Some(req)) = (slow.service.as_mut(), slow.waiting.take()) else {
                return Poll::Ready(Err("retry future polled after completion".into()));
            };
            let next = template.retry.clone_request(&req);
            let attempt = service.call(req);
            *slow.attempts += 1;
            state.next = next;
            this.attempt.set(Some(attempt));
        }
    }
}

/// Sends a hedge when its timer fires: `Ready(true)` if one went out, `Ready(false)` if
/// hedging is over for this call, `Pending` while waiting for the timer.
fn hedge<S, Req, R>(state: &mut State<S, Req, R>, cx: &mut Context<'_>) -> Poll<bool>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
{
    let over = |state: &mut State<S, Req, R>| {
        if let Some(slow) = state.slow.as_mut() {
            *slow.as_mut().project().hedging = false;
        }
        Poll::Ready(false)
    };
    let template = &state.template;
    let core = template.policy.shared();
    let Some(slow) = state.slow.as_mut() else {
        return Poll::Pending;
    };
    let mut slow = slow.as_mut().project();
    if slow.hedge_timer.is_none() {
        let settings = core.settings.load();
        let h = &settings.hedge;
        let delay = h
            .at_percentile
            .and_then(|p| core.stats.observed(p))
            .or(h.delay_ms.map(Duration::from_millis));
        match delay {
            Some(delay) if *slow.extra < h.max_extra => {
                slow.hedge_timer.set(Some(tokio::time::sleep(delay)));
            }
            _ => return over(state),
        }
    }
    if let Some(sleep) = slow.hedge_timer.as_mut().as_pin_mut() {
        ready!(sleep.poll(cx));
    }
    let Some(copy) = state
        .next
        .as_ref()
        .and_then(|next| template.retry.clone_request(next))
    else {
        return over(state);
    };
    let ready = ready(slow.service, template, cx);
    let (Poll::Ready(Ok(())), Some(service)) = (ready, slow.service.as_mut()) else {
        // Not ready (or broken): no hedge for this call; its first attempt goes on.
        return over(state);
    };
    let settings = core.settings.load();
    if !core.retry_budget.withdraw(core, &settings.retry) {
        core.stats.count(stats::RETRY_REFUSED);
        return over(state);
    }
    slow.hedges.push(Box::pin(service.call(copy)));
    *slow.extra += 1;
    core.stats.count(stats::HEDGE);
    slow.hedge_timer.set(None);
    Poll::Ready(true)
}

/// After the call's copies all ended, the last with the retryable failure `result`:
/// the wait before the next attempt, or `None` if the call ends with `result`.
fn decide<S, Req, R>(
    state: &mut State<S, Req, R>,
    result: &Result<S::Response, BoxError>,
) -> Option<Duration>
where
    S: Service<Req> + Send + 'static,
    R: Retryable<Req, S::Response>,
{
    let core = state.template.policy.shared();
    let settings = core.settings.load();
    let s = &settings.retry;
    let attempts = state.attempts();
    if attempts >= s.max_attempts || state.next.is_none() {
        return None;
    }
    let last_wait = state.slow.as_ref().map_or(Duration::ZERO, |s| s.last_wait);
    let wait = match state.template.retry.verdict(result) {
        Verdict::Done => return None,
        Verdict::Retry => backoff(s, attempts, last_wait),
        Verdict::RetryAfter(after) if after <= Duration::from_millis(s.pushback_max_ms) => after,
        Verdict::RetryAfter(_) => return None,
    };
    // The wait must end before the call's deadline (armed now if not yet: the call
    // has not waited before, so it started about now).
    if let Some(ms) = s.deadline_ms {
        let now = Instant::now();
        let mut slow = state.slow().project();
        let end = match slow.deadline.as_ref().as_pin_ref() {
            Some(sleep) => sleep.deadline(),
            None => {
                let end = now + Duration::from_millis(ms);
                slow.deadline.set(Some(tokio::time::sleep_until(end)));
                end
            }
        };
        if now + wait >= end {
            return None;
        }
    }
    let core = state.template.policy.shared();
    if !core.retry_budget.withdraw(core, s) {
        core.stats.count(stats::RETRY_REFUSED);
        return None;
    }
    core.stats.count(stats::RETRY);
    *state.slow().project().last_wait = wait;
    Some(wait)
}
