//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::error::OpenCircuit;
use super::window::Record;
use super::{NO_TRIAL, release_trial};
use crate::BoxError;
use crate::classify::{Classify, Outcome};
use crate::clock::Clock;
use crate::policy::PolicyCore;
use crate::timeout::error::Elapsed;

/// What a call carries to report its outcome: small, `Copy`, no reference count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields {
    pub(crate) core: &'static PolicyCore,
    pub(crate) clock: Clock,
    pub(crate) start: u64,
    /// Slow-call threshold in ms; 0 = off.
    pub(crate) slow_ms: u32,
    pub(crate) generation: u32,
    /// The half-open episode this call is a trial of, or `NO_TRIAL`.
    pub(crate) trial: u32,
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// Dropping it before it finishes gives a half-open trial permit back.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        classify: Option<C>,
        fields: Fields,
        done: bool,
    }

    impl<F, C> PinnedDrop for ResponseFuture<F, C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                let f = this.fields;
                release_trial(f.core, f.generation, f.trial);
            }
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(inner: F, classify: C, fields: Fields) -> Self {
        ResponseFuture {
            inner: Some(inner),
            classify: Some(classify),
            fields,
            done: false,
        }
    }

    #[inline]
    pub(crate) fn rejected(core: &'static PolicyCore, clock: Clock) -> Self {
        ResponseFuture {
            inner: None,
            classify: None,
            fields: Fields {
                core,
                clock,
                start: 0,
                slow_ms: 0,
                generation: 0,
                trial: NO_TRIAL,
            },
            done: true,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (Some(inner), Some(classify)) = (this.inner.as_pin_mut(), this.classify.as_ref())
        else {
            return Poll::Ready(Err(OpenCircuit(()).into()));
        };
        let result = ready!(inner.poll(cx));
        let outcome = classify.classify(&result);
        let result = result.map_err(Into::into);
        if !*this.done {
            *this.done = true;
            finish(this.fields, outcome, &result);
        }
        Poll::Ready(result)
    }
}

#[inline]
pub(crate) fn finish<T>(f: &Fields, outcome: Outcome, result: &Result<T, BoxError>) {
    let core = f.core;
    if core.generation.load(Ordering::Acquire) != f.generation {
        return; // the policy is gone and its state recycled
    }
    let now = f.clock.now_ms();
    let elapsed = now.saturating_sub(f.start);
    let rec = Record {
        failed: outcome == Outcome::Failure,
        slow: f.slow_ms != 0 && elapsed >= u64::from(f.slow_ms),
    };
    let m = &core.metrics;
    // Most calls finish within the clock's millisecond: skip the conversion then.
    m.duration.record(if elapsed == 0 {
        0.0
    } else {
        elapsed as f64 * 1e-3
    });
    if f.trial == NO_TRIAL && !rec.failed && !rec.slow {
        // The fast path: a success while closed is one `fetch_add`.
        m.success.increment(1);
        if core.breaker.is_closed() {
            // The window's shape is needed only when a new bucket starts.
            let shape = || super::state::shape(&core.settings.load().breaker);
            core.breaker.window.record(now, shape, rec);
        }
    } else {
        slow_path(f, rec, now, result);
    }
}

#[cold]
fn slow_path<T>(f: &Fields, rec: Record, now: u64, result: &Result<T, BoxError>) {
    let m = &f.core.metrics;
    match result {
        Ok(_) if !rec.failed => m.success.increment(1),
        Err(e) if e.is::<Elapsed>() => m.timeout.increment(1),
        _ => m.failure.increment(1),
    }
    let trial = (f.trial != NO_TRIAL).then_some(u64::from(f.trial));
    let settings = f.core.settings.load();
    f.core
        .breaker
        .on_result(trial, rec, now, &settings.breaker, &f.core.ctx());
}
