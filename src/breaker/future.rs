//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::TrialPermit;
use super::error::OpenCircuit;
use super::window::{Record, Shape};
use crate::BoxError;
use crate::classify::{Classify, Outcome};
use crate::clock::Clock;
use crate::policy::PolicyCore;
use crate::timeout::error::Elapsed;

/// What a finished call reports back to its breaker.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) core: &'static PolicyCore,
    pub(crate) generation: u64,
    pub(crate) clock: Clock,
    pub(crate) start: u64,
    pub(crate) slow_ms: u64,
    pub(crate) shape: Shape,
    pub(crate) trial: Option<TrialPermit>,
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Called {
            #[pin]
            inner: F,
            classify: C,
            recorder: Option<Recorder>,
        },
        Rejected,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(inner: F, classify: C, recorder: Recorder) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                inner,
                classify,
                recorder: Some(recorder),
            },
        }
    }

    pub(crate) fn rejected() -> Self {
        ResponseFuture {
            kind: Kind::Rejected,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected => Poll::Ready(Err(OpenCircuit(()).into())),
            KindProj::Called {
                inner,
                classify,
                recorder,
            } => {
                let result = ready!(inner.poll(cx));
                let outcome = classify.classify(&result);
                let result = result.map_err(Into::into);
                if let Some(recorder) = recorder.take() {
                    recorder.finish(outcome, &result);
                }
                Poll::Ready(result)
            }
        }
    }
}

impl Recorder {
    #[inline]
    fn finish<T>(self, outcome: Outcome, result: &Result<T, BoxError>) {
        let core = self.core;
        if core.generation.load(Ordering::Acquire) != self.generation {
            return; // the policy is gone and its state recycled
        }
        let now = self.clock.now_ms();
        let elapsed = now.saturating_sub(self.start);
        let rec = Record {
            failed: outcome == Outcome::Failure,
            slow: self.slow_ms != 0 && elapsed >= self.slow_ms,
        };
        let m = &core.metrics;
        m.duration.record(elapsed as f64 / 1000.0);
        match result {
            Ok(_) if !rec.failed => m.success.increment(1),
            Err(e) if e.is::<Elapsed>() => m.timeout.increment(1),
            _ => m.failure.increment(1),
        }
        let trial = self.trial.and_then(TrialPermit::finish);
        if trial.is_none() && !rec.failed && !rec.slow {
            // The fast path: a success while closed is one `fetch_add`.
            if core.breaker.is_closed() {
                core.breaker.window.record(now, self.shape, rec);
            }
        } else {
            let settings = core.settings.load();
            core.breaker
                .on_result(trial, rec, now, &settings.breaker, &core.ctx());
        }
    }
}
