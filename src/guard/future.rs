//! The guarded call's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{NO_TRIAL, Short, Stages, Ticket, stages};
use crate::BoxError;
use crate::breaker::window::Record as WindowRecord;
use crate::classify::{Classify, Outcome};
use crate::policy::PolicyCore;
use crate::stats;
use crate::timeout::error::Elapsed;

/// What a call reports when it ends: its ticket (lease on the policy, slot, trial
/// permit, what to record), its start time and its classifier. (Public only as the
/// [`Hold`] of stages that record; nothing of it is reachable.)
#[doc(hidden)]
pub struct Record<C> {
    pub(crate) ticket: Ticket,
    pub(crate) start: u64,
    /// When the call was first pending, in the clock's microseconds (0: not yet).
    pub(crate) pending_us: u64,
    pub(crate) classify: C,
}

impl<C> fmt::Debug for Record<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<C> Record<C> {
    /// The call ended with `result`: the breaker records it, the slot is freed and
    /// the lease ends. Once only (the ticket is empty afterwards).
    #[inline(always)]
    fn finish<T>(&mut self, result: &Result<T, BoxError>)
    where
        C: Classify<T, BoxError>,
    {
        if let Some(core) = &self.ticket.core
            && self.ticket.records()
        {
            let outcome = self.classify.classify(result);
            let (trial, slow_ms) = (self.ticket.trial(), self.ticket.slow_ms());
            // Measured only for a call that was pending: one ready at its first poll
            // took no time worth a clock read.
            let latency_us = match self.pending_us {
                0 => 0,
                since => core.clock.now_us().saturating_sub(since).max(1),
            };
            finish(
                core, self.start, latency_us, slow_ms, trial, outcome, result,
            );
        }
        self.ticket.done();
    }
}

/// What a response future holds for the end of its call: a [`Record`] for stages with
/// a breaker or a bulkhead, nothing ([`NoRecord`]) for the others, so that their futures
/// have no drop glue of theirs.
pub trait Hold<C>: sealed::Sealed {
    #[doc(hidden)]
    fn hold(record: impl FnOnce() -> Record<C>) -> Self;
    #[doc(hidden)]
    fn finish<T>(&mut self, result: &Result<T, BoxError>)
    where
        C: Classify<T, BoxError>;
    /// The call's inner future returned `Pending`.
    #[doc(hidden)]
    fn pending(&mut self);
}

impl<C> sealed::Sealed for Record<C> {}

impl<C> Hold<C> for Record<C> {
    #[inline(always)]
    fn hold(record: impl FnOnce() -> Record<C>) -> Self {
        record()
    }

    #[inline(always)]
    fn finish<T>(&mut self, result: &Result<T, BoxError>)
    where
        C: Classify<T, BoxError>,
    {
        Record::finish(self, result)
    }

    #[inline]
    fn pending(&mut self) {
        if self.pending_us == 0
            && let Some(core) = &self.ticket.core
        {
            self.pending_us = core.clock.now_us().max(1);
        }
    }
}

/// The hold of stages that neither record nor take a slot (kill switch, timeout).
#[doc(hidden)]
#[derive(Debug)]
pub struct NoRecord;

impl sealed::Sealed for NoRecord {}

impl<C> Hold<C> for NoRecord {
    #[inline(always)]
    fn hold(_: impl FnOnce() -> Record<C>) -> Self {
        NoRecord
    }

    #[inline(always)]
    fn finish<T>(&mut self, _: &Result<T, BoxError>)
    where
        C: Classify<T, BoxError>,
    {
    }

    #[inline(always)]
    fn pending(&mut self) {}
}

/// The timeout's part of a response future: [`Deadline`] for stages with a timeout,
/// [`NoDeadline`] (zero-sized) for the others, so that a future without a timeout
/// carries no timer.
pub trait Timer: sealed::Sealed + Send + Sync + 'static {
    #[doc(hidden)]
    type Slot: Send;
    #[doc(hidden)]
    fn slot(timeout: Option<Duration>) -> Self::Slot;
    /// `Ready` once the deadline has passed; arms the timer on the first call.
    #[doc(hidden)]
    fn poll_elapsed(slot: Pin<&mut Self::Slot>, cx: &mut Context<'_>) -> Poll<()>;
}

mod sealed {
    pub trait Sealed {}
}

/// The futures of stages with a timeout: the deadline, and a timer armed only once the
/// inner future has returned `Pending`.
#[derive(Debug)]
pub enum Deadline {}

/// The futures of stages without a timeout.
#[derive(Debug)]
pub enum NoDeadline {}

impl sealed::Sealed for Deadline {}
impl sealed::Sealed for NoDeadline {}

pin_project! {
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct DeadlineSlot {
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
    }
}

impl Timer for Deadline {
    type Slot = DeadlineSlot;

    #[inline]
    fn slot(timeout: Option<Duration>) -> DeadlineSlot {
        DeadlineSlot {
            sleep: None,
            timeout,
        }
    }

    #[inline]
    fn poll_elapsed(slot: Pin<&mut DeadlineSlot>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = slot.project();
        let Some(timeout) = *slot.timeout else {
            return Poll::Pending;
        };
        if slot.sleep.is_none() {
            slot.sleep.set(Some(tokio::time::sleep(timeout)));
        }
        match slot.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Timer for NoDeadline {
    type Slot = ();

    #[inline(always)]
    fn slot(_: Option<Duration>) {}

    #[inline(always)]
    fn poll_elapsed(_: Pin<&mut ()>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

pin_project! {
    /// The response future of [`Guard`](super::Guard) and of every layer built on it
    /// ([`CircuitBreaker`](crate::breaker::CircuitBreaker), [`Timeout`](crate::timeout::Timeout),
    /// [`Bulkhead`](crate::bulkhead::Bulkhead), [`KillSwitch`](crate::kill::KillSwitch)).
    ///
    /// No timer exists until the inner future has returned `Pending` once (and none at
    /// all without a timeout stage). Dropping it before it finishes gives its bulkhead
    /// slot and half-open trial permit back. `K` are the stages of its service.
    pub struct ResponseFuture<F, C, K: Stages = stages::All> {
        #[pin]
        kind: Kind<F, C, K>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, K: Stages> {
        /// Not made: killed, bulkhead full, or the breaker open.
        Rejected { why: Short },
        Called {
            #[pin]
            inner: F,
            #[pin]
            timer: <K::Timer as Timer>::Slot,
            record: K::Hold<C>,
        },
    }
}

impl<F, C, K: Stages> ResponseFuture<F, C, K> {
    #[inline(always)]
    pub(crate) fn called(inner: F, timeout: Option<Duration>, record: K::Hold<C>) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                inner,
                timer: K::Timer::slot(timeout),
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

impl<F, C, K: Stages> fmt::Debug for ResponseFuture<F, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Rejected { why } => d.field("rejected", why),
            Kind::Called { .. } => d.field("called", &true),
        }
        .finish_non_exhaustive()
    }
}

impl<F, C, K, T, E> Future for ResponseFuture<F, C, K>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
    K: Stages,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { why } => Poll::Ready(Err(why.error())),
            KindProj::Called {
                inner,
                timer,
                record,
            } => {
                let result = match inner.poll(cx) {
                    Poll::Ready(r) => r.map_err(Into::into),
                    Poll::Pending => {
                        record.pending();
                        ready!(K::Timer::poll_elapsed(timer, cx));
                        Err(Elapsed::new().into())
                    }
                };
                record.finish(&result);
                Poll::Ready(result)
            }
        }
    }
}

/// Records a finished call's outcome in the breaker and the metrics.
#[inline]
fn finish<T>(
    core: &PolicyCore,
    start: u64,
    latency_us: u64,
    slow_ms: u64,
    trial: u32,
    outcome: Outcome,
    result: &Result<T, BoxError>,
) {
    let now = core.clock.now_ms();
    let elapsed = now.saturating_sub(start);
    let rec = WindowRecord {
        failed: outcome == Outcome::Failure,
        slow: slow_ms != 0 && elapsed >= slow_ms,
    };
    if trial == NO_TRIAL && !rec.failed && !rec.slow {
        // The fast path: a success while closed is two plain increments in the
        // thread's own stripes (statistics, window).
        core.stats.call(stats::SUCCESS, latency_us);
        if core.breaker.is_closed() {
            // The window's shape is needed only when a new bucket starts.
            let shape = || crate::breaker::state::shape(&core.settings.load().breaker);
            core.breaker.window.record(now, shape, rec);
        }
    } else {
        slow_path(core, trial, rec, now, latency_us, result);
    }
}

#[cold]
fn slow_path<T>(
    core: &PolicyCore,
    trial: u32,
    rec: WindowRecord,
    now: u64,
    latency_us: u64,
    result: &Result<T, BoxError>,
) {
    let outcome = match result {
        Ok(_) if !rec.failed => stats::SUCCESS,
        Err(e) if e.is::<Elapsed>() => stats::TIMEOUT,
        _ => stats::FAILURE,
    };
    core.stats.call(outcome, latency_us);
    let trial = (trial != NO_TRIAL).then_some(u64::from(trial));
    let settings = core.settings.load();
    core.breaker
        .on_result(trial, rec, now, &settings.breaker, &core.ctx());
}
