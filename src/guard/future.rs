//! The guarded call's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{NO_TRIAL, Short, Ticket};
use crate::BoxError;
use crate::breaker::window::Record as WindowRecord;
use crate::classify::{Classify, Outcome};
use crate::timeout::error::Elapsed;

/// What a call reports when it ends: its ticket (slot, trial permit, lease on the
/// policy), and for the breaker, its classifier, start time and slow-call threshold.
pub(crate) struct Record<C> {
    pub(crate) ticket: Ticket,
    pub(crate) classify: C,
    pub(crate) start: u64,
    /// Slow-call threshold in ms; 0 = off.
    pub(crate) slow_ms: u32,
    /// Whether the breaker counts this call.
    pub(crate) breaker: bool,
}

impl<C> Record<C> {
    /// The call ended with `result`: the breaker records it, the slot is freed, and
    /// the lease ends with `self`.
    #[inline]
    fn finish<T>(mut self, result: &Result<T, BoxError>)
    where
        C: Classify<T, BoxError>,
    {
        if self.breaker {
            let outcome = self.classify.classify(result);
            let trial = std::mem::replace(&mut self.ticket.trial, NO_TRIAL);
            finish(&self, trial, outcome, result);
        }
        self.ticket.free_slot();
    }
}

pin_project! {
    /// The response future of [`Guard`](super::Guard) and of every layer built on it
    /// ([`CircuitBreaker`](crate::breaker::CircuitBreaker), [`Timeout`](crate::timeout::Timeout),
    /// [`Bulkhead`](crate::bulkhead::Bulkhead), [`KillSwitch`](crate::kill::KillSwitch)).
    ///
    /// No timer exists until the inner future has returned `Pending` once. Dropping it
    /// before it finishes gives its bulkhead slot and half-open trial permit back.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        /// Not made: killed, bulkhead full, or the breaker open.
        Rejected { why: Short },
        Called {
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<Sleep>,
            timeout: Option<Duration>,
            record: Option<Record<C>>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(inner: F, timeout: Option<Duration>, record: Option<Record<C>>) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                inner,
                sleep: None,
                timeout,
                record,
            },
        }
    }

    #[inline]
    pub(crate) fn rejected(why: Short) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { why },
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Rejected { why } => d.field("rejected", why),
            Kind::Called { record, .. } => d.field("finished", &record.is_none()),
        }
        .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { why } => Poll::Ready(Err(why.error())),
            KindProj::Called {
                inner,
                mut sleep,
                timeout,
                record,
            } => {
                let result = match inner.poll(cx) {
                    Poll::Ready(r) => r.map_err(Into::into),
                    Poll::Pending => {
                        let Some(timeout) = *timeout else {
                            return Poll::Pending;
                        };
                        if sleep.is_none() {
                            sleep.set(Some(tokio::time::sleep(timeout)));
                        }
                        match sleep.as_pin_mut() {
                            Some(sleep) => ready!(sleep.poll(cx)),
                            None => return Poll::Pending,
                        }
                        Err(Elapsed::new().into())
                    }
                };
                if let Some(record) = record.take() {
                    record.finish(&result);
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Records a finished call's outcome in the breaker and the metrics.
#[inline]
fn finish<C, T>(r: &Record<C>, trial: u32, outcome: Outcome, result: &Result<T, BoxError>) {
    let core = &*r.ticket.core;
    let now = core.clock.now_ms();
    let elapsed = now.saturating_sub(r.start);
    let rec = WindowRecord {
        failed: outcome == Outcome::Failure,
        slow: r.slow_ms != 0 && elapsed >= u64::from(r.slow_ms),
    };
    let m = &core.metrics;
    // Most calls finish within the clock's millisecond: skip the conversion then.
    m.duration.record(if elapsed == 0 {
        0.0
    } else {
        elapsed as f64 * 1e-3
    });
    if trial == NO_TRIAL && !rec.failed && !rec.slow {
        // The fast path: a success while closed is one `fetch_add`.
        m.success.increment(1);
        if core.breaker.is_closed() {
            // The window's shape is needed only when a new bucket starts.
            let shape = || crate::breaker::state::shape(&core.settings.load().breaker);
            core.breaker.window.record(now, shape, rec);
        }
    } else {
        slow_path(core, trial, rec, now, result);
    }
}

#[cold]
fn slow_path<T>(
    core: &crate::policy::PolicyCore,
    trial: u32,
    rec: WindowRecord,
    now: u64,
    result: &Result<T, BoxError>,
) {
    let m = &core.metrics;
    match result {
        Ok(_) if !rec.failed => m.success.increment(1),
        Err(e) if e.is::<Elapsed>() => m.timeout.increment(1),
        _ => m.failure.increment(1),
    }
    let trial = (trial != NO_TRIAL).then_some(u64::from(trial));
    let settings = core.settings.load();
    core.breaker
        .on_result(trial, rec, now, &settings.breaker, &core.ctx());
}
