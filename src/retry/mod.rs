//! Live retries with a budget shared by the whole policy.
//!
//! The retry stage sits inside the fallback and outside the bulkhead, breaker and
//! timeout (`kill switch → fallback → retry → bulkhead → breaker → timeout`, built by
//! [`PolicyLayer::retry`](crate::stack::PolicyLayer::retry)): the breaker sees every
//! attempt, the timeout bounds each one, and the fallback answers only when the retries
//! are spent (or refused). Everything is read live from the policy's `retry.*`
//! settings ([`RetrySettings`](crate::settings::RetrySettings)); with the default
//! `max_attempts` of 1 the stage passes calls through.
//!
//! A call is retried when all of these hold:
//! - its outcome is retryable by the stage's [`Retryable`] (a failure of the
//!   dependency, never a rejection by the stack itself — an open circuit, a full
//!   bulkhead, a kill — and for HTTP never a 4xx, see [`Http`](self::Http));
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
//! attempt a settings read, a copy of the request, and a lease on its state (two plain
//! stores); it reads no clock unless the call waits (BENCHMARKS.md, `retry`).
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
#[cfg(feature = "http")]
mod http;

use std::fmt;
use std::future::Future;
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

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let settings = self.settings.load();
        let hedging = settings.hedge.enabled();
        if !settings.retry.enabled() && !hedging {
            return ResponseFuture {
                attempt: Some(self.inner.call(req)),
                backoff: None,
                deadline: None,
                hedge_timer: None,
                state: None,
            };
        }
        let template = self.template.lease();
        let next = template.retry.clone_request(&req);
        let attempt = self.inner.call(req);
        ResponseFuture {
            attempt: Some(attempt),
            backoff: None,
            deadline: None,
            hedge_timer: None,
            state: Some(State {
                template,
                hedging: hedging && next.is_some(),
                next,
                waiting: None,
                service: None,
                attempts: 1,
                last_wait: Duration::ZERO,
                hedges: Vec::new(),
                extra: 0,
                held: None,
            }),
        }
    }
}

/// A retrying (or hedging) call's state beyond its first attempt's future.
struct State<S, Req, R>
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    template: Lease<Template<S, R>>,
    /// A copy of the request for the next attempt (`None`: it may not be retried).
    next: Option<Req>,
    /// The request of the attempt being waited for (backoff, readiness).
    waiting: Option<Req>,
    /// The service retries and hedges are made with (a copy of the template's, made at
    /// the first of them).
    service: Option<S>,
    attempts: u32,
    /// The last wait, for decorrelated jitter.
    last_wait: Duration,
    /// Whether this call may still send hedges.
    hedging: bool,
    /// Hedges in flight (allocated only when one is sent).
    hedges: Vec<Pin<Box<S::Future>>>,
    /// Hedges sent.
    extra: u32,
    /// A retryable failure kept while other copies of the call are still out.
    held: Option<Result<S::Response, BoxError>>,
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
        #[pin]
        backoff: Option<Sleep>,
        #[pin]
        deadline: Option<Sleep>,
        #[pin]
        hedge_timer: Option<Sleep>,
        state: Option<State<S, Req, R>>,
    }
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

/// What an attempt's end means for the call.
enum Ended<T> {
    /// The call's answer.
    Answer(T),
    /// A retryable failure, kept in the state.
    Held,
}

/// An attempt (the first, a retry or a hedge) ended with `result`.
fn ended<S, Req, R>(
    state: &mut State<S, Req, R>,
    result: Result<S::Response, BoxError>,
) -> Ended<Result<S::Response, BoxError>>
where
    S: Service<Req> + Send + 'static,
    R: Retryable<Req, S::Response>,
{
    match state.template.retry.verdict(&result) {
        Verdict::Done => Ended::Answer(result),
        _ => {
            // Decided (retried or answered) when no other copy is out.
            state.held = Some(result);
            Ended::Held
        }
    }
}

impl<S, Req, R> Future for ResponseFuture<S, Req, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // The attempt out (the first, or a retry).
            if let Some(attempt) = this.attempt.as_mut().as_pin_mut()
                && let Poll::Ready(r) = attempt.poll(cx)
            {
                this.attempt.set(None);
                let r = r.map_err(Into::into);
                let Some(state) = this.state.as_mut() else {
                    return Poll::Ready(r);
                };
                if let Ended::Answer(r) = ended(state, r) {
                    return Poll::Ready(r);
                }
            }
            let Some(state) = this.state.as_mut() else {
                return Poll::Pending;
            };
            // Its hedges: the first good answer wins (the others are dropped with
            // this future).
            let mut i = 0;
            while i < state.hedges.len() {
                match state.hedges[i].as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        drop(state.hedges.swap_remove(i));
                        if let Ended::Answer(r) = ended(state, r.map_err(Into::into)) {
                            return Poll::Ready(r);
                        }
                    }
                    Poll::Pending => i += 1,
                }
            }
            let in_flight = this.attempt.is_some() || !state.hedges.is_empty();
            if in_flight {
                if state.hedging && state.attempts == 1 {
                    match hedge(state, this.hedge_timer.as_mut(), cx) {
                        Poll::Ready(true) => continue, // a hedge went out: poll it
                        Poll::Ready(false) | Poll::Pending => {}
                    }
                }
                return deadline(this.deadline.as_mut(), state, cx);
            }
            // Nothing out: retry the failure kept, after a wait, or answer with it.
            if let Some(held) = state.held.take() {
                match decide(state, this.deadline.as_mut(), &held) {
                    Some(wait) => this.backoff.set(Some(tokio::time::sleep(wait))),
                    None => return Poll::Ready(held),
                }
            }
            if let Some(wait) = this.backoff.as_mut().as_pin_mut() {
                if wait.poll(cx).is_pending() {
                    return deadline(this.deadline.as_mut(), state, cx);
                }
                this.backoff.set(None);
            }
            match ready(&mut state.service, &state.template, cx) {
                Poll::Pending => return deadline(this.deadline.as_mut(), state, cx),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let (Some(service), Some(req)) = (state.service.as_mut(), state.waiting.take()) else {
                return Poll::Ready(Err("retry future polled after completion".into()));
            };
            state.next = state.template.retry.clone_request(&req);
            let attempt = service.call(req);
            state.attempts += 1;
            this.attempt.set(Some(attempt));
        }
    }
}

/// Sends a hedge when its timer fires: `Ready(true)` if one went out, `Ready(false)` if
/// hedging is over for this call, `Pending` while waiting (timer or readiness).
fn hedge<S, Req, R>(
    state: &mut State<S, Req, R>,
    mut timer: Pin<&mut Option<Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<bool>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Retryable<Req, S::Response>,
{
    let core = state.template.policy.shared();
    if timer.is_none() {
        let settings = core.settings.load();
        let h = &settings.hedge;
        let delay = h
            .at_percentile
            .and_then(|p| core.stats.observed(p))
            .or(h.delay_ms.map(Duration::from_millis));
        match delay {
            Some(delay) if state.extra < h.max_extra => {
                timer.set(Some(tokio::time::sleep(delay)));
            }
            _ => {
                state.hedging = false;
                return Poll::Ready(false);
            }
        }
    }
    if let Some(sleep) = timer.as_mut().as_pin_mut() {
        ready!(sleep.poll(cx));
    }
    let Some(copy) = state
        .next
        .as_ref()
        .and_then(|next| state.template.retry.clone_request(next))
    else {
        state.hedging = false;
        return Poll::Ready(false);
    };
    let ready = ready(&mut state.service, &state.template, cx);
    let (Poll::Ready(Ok(())), Some(service)) = (ready, state.service.as_mut()) else {
        // Not ready (or broken): no hedge for this call; its first attempt goes on.
        state.hedging = false;
        return Poll::Ready(false);
    };
    let settings = core.settings.load();
    if !core.retry_budget.withdraw(core, &settings.retry) {
        core.stats.count(stats::RETRY_REFUSED);
        state.hedging = false;
        return Poll::Ready(false);
    }
    let sent = Box::pin(service.call(copy));
    state.hedges.push(sent);
    state.extra += 1;
    core.stats.count(stats::HEDGE);
    timer.set(None);
    Poll::Ready(true)
}

/// Arms the call's overall deadline (at its first wait) and checks it: `Pending`, or
/// the call's end with [`Elapsed`] (the attempts in flight are dropped, so cancelled).
fn deadline<S, Req, R, T>(
    mut slot: Pin<&mut Option<Sleep>>,
    state: &mut State<S, Req, R>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    S: Service<Req> + Send + 'static,
    R: Send + Sync + 'static,
{
    if slot.is_none() {
        let core = state.template.policy.shared();
        let Some(ms) = core.settings.load().retry.deadline_ms else {
            return Poll::Pending;
        };
        slot.set(Some(tokio::time::sleep(Duration::from_millis(ms))));
    }
    match slot.as_pin_mut() {
        Some(sleep) => {
            ready!(sleep.poll(cx));
            state.template.policy.shared().stats.count(stats::TIMEOUT);
            Poll::Ready(Err(Elapsed::new().into()))
        }
        None => Poll::Pending,
    }
}

/// After the call's copies all ended, the last with the retryable failure `result`:
/// the wait before the next attempt, or `None` if the call ends with `result`.
fn decide<S, Req, R, Resp>(
    state: &mut State<S, Req, R>,
    deadline_slot: Pin<&mut Option<Sleep>>,
    result: &Result<Resp, BoxError>,
) -> Option<Duration>
where
    S: Service<Req> + Send + 'static,
    R: Retryable<Req, Resp>,
{
    let core = state.template.policy.shared();
    let settings = core.settings.load();
    let s = &settings.retry;
    if state.attempts >= s.max_attempts || state.next.is_none() {
        return None;
    }
    let wait = match state.template.retry.verdict(result) {
        Verdict::Done => return None,
        Verdict::Retry => backoff(s, state.attempts, state.last_wait),
        Verdict::RetryAfter(after) if after <= Duration::from_millis(s.pushback_max_ms) => after,
        Verdict::RetryAfter(_) => return None,
    };
    // The wait must end before the call's deadline (armed now if not yet: the call
    // has not waited before, so it started about now).
    if let Some(ms) = s.deadline_ms {
        let now = Instant::now();
        let end = match deadline_slot.as_ref().as_pin_ref() {
            Some(sleep) => sleep.deadline(),
            None => {
                let end = now + Duration::from_millis(ms);
                let mut slot = deadline_slot;
                slot.set(Some(tokio::time::sleep_until(end)));
                end
            }
        };
        if now + wait >= end {
            return None;
        }
    }
    if !core.retry_budget.withdraw(core, s) {
        core.stats.count(stats::RETRY_REFUSED);
        return None;
    }
    core.stats.count(stats::RETRY);
    state.last_wait = wait;
    state.waiting = state.next.take();
    Some(wait)
}
