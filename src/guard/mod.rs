//! The engine of every protection of a call: kill switch, bulkhead, circuit breaker and
//! timeout, each written once here, and switched on per service by its [`Stages`].
//!
//! [`KillSwitch`](crate::kill::KillSwitch), [`Bulkhead`](crate::bulkhead::Bulkhead),
//! [`CircuitBreaker`](crate::breaker::CircuitBreaker) and
//! [`Timeout`](crate::timeout::Timeout) are this [`Guard`] with one stage each;
//! [`stack::Protected`](crate::stack::Protected) is it with all four, in the documented
//! order (kill → bulkhead → breaker → timeout); the fallback
//! ([`FallbackService`](crate::fallback::FallbackService),
//! [`stack::PolicyService`](crate::stack::PolicyService)) wraps it and answers the calls
//! it decides not to make. The stages are constants of the type, so a one-stage view
//! compiles to that stage alone.
//!
//! One call goes: `poll_ready` **decides** — killed, the bulkhead full, the breaker open
//! (each answered `Ready` without polling the inner service), or admitted with a
//! `Ticket` that holds the bulkhead slot — then polls the inner service; `call`
//! consumes the decision, and takes a half-open trial permit then (a service kept ready
//! and idle, as a balancer's ready cache does, must not hold the breaker's only trial:
//! a trial refused at `call` fails with `OpenCircuit`, or goes to the fallback); the [response
//! future](future::ResponseFuture) arms the timeout only if the inner future is pending,
//! and when the call ends records its outcome in the breaker and frees the slot. A
//! ticket that is dropped unused (the service or future dropped, the inner `call`
//! panicked) gives its slot and permit back.
//!
//! ```
//! use substation::{Policy, settings::PolicySettings, stack::PolicyLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new("inventory", PolicySettings::default()).unwrap();
//! // kill switch → bulkhead → breaker → timeout, one `Guard` with every stage on:
//! let svc = PolicyLayer::new(&policy).layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
//! assert_eq!(svc.oneshot(3).await.unwrap(), 3);
//! # }
//! ```

pub mod future;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use tower::Service;

use crate::breaker::error::OpenCircuit;
use crate::breaker::state::Admission;
use crate::bulkhead::BulkheadFull;
use crate::classify::{Classify, ErrorsAsFailures};
use crate::kill::Killed;
use crate::lease::Lease;
use crate::policy::PolicyCore;
use crate::settings::{BreakerMode, PolicySettings};
use crate::{BoxError, Policy};

use self::future::{Hold as _, Record, ResponseFuture};

/// Which protections a [`Guard`] applies; implemented by the markers in [`stages`].
pub trait Stages: sealed::Sealed + Send + Sync + 'static {
    /// The timeout's part of the response future ([`future::Deadline`] with the
    /// timeout stage, else the zero-sized [`future::NoDeadline`]).
    type Timer: future::Timer;
    /// What the response future holds for the end of the call ([`future::Record`] with
    /// a breaker or bulkhead stage, else the zero-sized [`future::NoRecord`]).
    type Hold<C>: future::Hold<C>;
    /// The kill switch (`kill`, and shedding of non-critical dependencies).
    const KILL: bool;
    /// The bulkhead (`bulkhead.max_concurrent`).
    const BULKHEAD: bool;
    /// The circuit breaker (`breaker.*`).
    const BREAKER: bool;
    /// The timeout (`timeout.ms`).
    const TIMEOUT: bool;
}

mod sealed {
    pub trait Sealed {}
}

/// The stage sets of the layers: one marker type per view of the [`Guard`].
pub mod stages {
    use super::{Stages, sealed::Sealed};

    macro_rules! stages {
        ($($(#[$doc:meta])* $name:ident: $kill:literal $bulkhead:literal $breaker:literal $timeout:ident $hold:ident;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $name {}
            impl Sealed for $name {}
            impl Stages for $name {
                type Timer = super::future::$timeout;
                type Hold<C> = stages!(@hold $hold C);
                const KILL: bool = $kill;
                const BULKHEAD: bool = $bulkhead;
                const BREAKER: bool = $breaker;
                const TIMEOUT: bool = stages!(@on $timeout);
            }
        )*};
        (@hold Record $c:ident) => { super::future::Record<$c> };
        (@hold NoRecord $c:ident) => { super::future::NoRecord };
        (@on Deadline) => { true };
        (@on NoDeadline) => { false };
    }

    stages! {
        /// The kill switch alone ([`KillSwitch`](crate::kill::KillSwitch)).
        Kill: true false false NoDeadline NoRecord;
        /// The bulkhead alone ([`Bulkhead`](crate::bulkhead::Bulkhead)).
        Bulkhead: false true false NoDeadline Record;
        /// The circuit breaker alone ([`CircuitBreaker`](crate::breaker::CircuitBreaker)).
        Breaker: false false true NoDeadline Record;
        /// The timeout alone ([`Timeout`](crate::timeout::Timeout)).
        Timeout: false false false Deadline NoRecord;
        /// Everything, outermost first: kill switch → bulkhead → breaker → timeout
        /// ([`Protected`](crate::stack::Protected)).
        All: true true true Deadline Record;
        /// Everything but the kill switch: bulkhead → breaker → timeout, under the
        /// retry stage (the kill switch is outside it, with the fallback).
        Attempt: false true true Deadline Record;
    }
}

/// Why a call was not made. Each reason is its `fallback.on` trigger bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Short {
    Open = 1,
    Killed = 2,
    Bulkhead = 4,
}

impl Short {
    /// Counts the call under its outcome.
    #[inline]
    pub(crate) fn count(self, core: &PolicyCore) {
        core.stats.count(match self {
            Short::Killed => crate::stats::KILLED,
            Short::Open => crate::stats::REJECTED,
            Short::Bulkhead => crate::stats::BULKHEAD_FULL,
        });
    }

    /// The error a caller without a fallback gets (zero-sized: boxing it allocates
    /// nothing).
    pub(crate) fn error(self) -> BoxError {
        match self {
            Short::Killed => Killed::new().into(),
            Short::Open => OpenCircuit::new().into(),
            Short::Bulkhead => BulkheadFull::new().into(),
        }
    }
}

/// A trial permit value meaning "not a trial".
pub(crate) const NO_TRIAL: u32 = u32::MAX;

/// What a call holds from `poll_ready` until it ends: a lease on the policy's state,
/// its bulkhead slot, its half-open trial permit, and what the breaker needs to record
/// it. Dropped unfinished, it gives the slot and permit back.
///
/// Two words, written as two stores: a call's state is built in the response future
/// in place, and an aggregate of narrower fields copied in measured as a
/// store-forwarding stall on every call.
pub(crate) struct Ticket {
    /// `None`: nothing held, nothing to record.
    pub(crate) core: Option<Lease<PolicyCore>>,
    /// Trial episode (bits 0..32, `NO_TRIAL` when none) | slot held (bit 32) | the
    /// breaker records the call (bit 33) | slow-call threshold in ms (bits 34..64, 0 off).
    bits: u64,
}

const SLOT: u64 = 1 << 32;
const RECORD: u64 = 1 << 33;
const SLOW_SHIFT: u32 = 34;

impl Ticket {
    /// Holds nothing.
    pub(crate) const EMPTY: Ticket = Ticket {
        core: None,
        bits: NO_TRIAL as u64,
    };

    #[inline]
    fn held(core: Lease<PolicyCore>, slot: bool, trial: u32) -> Ticket {
        Ticket {
            core: Some(core),
            bits: u64::from(trial) | if slot { SLOT } else { 0 },
        }
    }

    /// The half-open episode this call is a trial of, or `NO_TRIAL`.
    #[inline]
    pub(crate) fn trial(&self) -> u32 {
        self.bits as u32
    }

    /// Whether the breaker records this call.
    #[inline]
    pub(crate) fn records(&self) -> bool {
        self.bits & RECORD != 0
    }

    /// The slow-call threshold in ms (0: off).
    #[inline]
    pub(crate) fn slow_ms(&self) -> u64 {
        self.bits >> SLOW_SHIFT
    }

    /// The call is done: its slot is freed and its permit consumed (the breaker has
    /// its result), and the lease ends.
    #[inline]
    pub(crate) fn done(&mut self) {
        if let Some(core) = self.core.take() {
            if self.bits & SLOT != 0 {
                core.inflight.fetch_sub(1, Ordering::AcqRel);
            }
            self.bits = u64::from(NO_TRIAL);
            drop(core); // the lease ends
        }
    }
}

impl Drop for Ticket {
    #[inline]
    fn drop(&mut self) {
        let Some(core) = &self.core else { return };
        self.release(core);
    }
}

impl Ticket {
    /// Gives back what an unfinished call held.
    #[cold]
    #[inline(never)]
    fn release(&self, core: &PolicyCore) {
        if self.bits & SLOT != 0 {
            core.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        if self.trial() != NO_TRIAL {
            core.breaker.release_trial(u64::from(self.trial()));
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("slot", &(self.bits & SLOT != 0))
            .field("trial", &(self.trial() != NO_TRIAL))
            .finish()
    }
}

/// Takes a bulkhead slot if there is room under `max`: `Ok(true)` taken, `Ok(false)` no
/// limit (nothing taken), `Err(())` full.
#[inline]
fn acquire_slot(core: &PolicyCore, max: Option<u32>) -> Result<bool, ()> {
    let Some(max) = max else {
        return Ok(false);
    };
    if core.inflight.fetch_add(1, Ordering::AcqRel) >= max {
        core.inflight.fetch_sub(1, Ordering::AcqRel);
        return Err(());
    }
    Ok(true)
}

/// Whether [`acquire_slot`] would fail now, without taking a slot.
#[inline]
fn bulkhead_full(core: &PolicyCore, max: Option<u32>) -> bool {
    max.is_some_and(|max| core.inflight.load(Ordering::Acquire) >= max)
}

/// The policy's settings, as an `arc_swap::Cache` source.
#[derive(Clone)]
pub(crate) struct SettingsOf(pub(crate) Policy);

impl std::ops::Deref for SettingsOf {
    type Target = ArcSwap<PolicySettings>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0.shared().settings
    }
}

/// The per-service cache of the policy's settings: one pointer compare per read.
pub(crate) type SettingsCache = Cache<SettingsOf, Arc<PolicySettings>>;

pub(crate) fn settings_cache(policy: &Policy) -> SettingsCache {
    Cache::new(SettingsOf(policy.clone()))
}

/// What `poll_ready` decided for the next `call`. Small and `Copy`: written with one
/// store (a bigger enum built on the stack and copied in measured as a store-forwarding
/// stall on every call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    Unpolled,
    /// The inner service will be called (with `Guard::ticket` when a slot or a trial
    /// permit is held for the call).
    Call,
    /// The inner service will be called if the breaker admits it then: a half-open
    /// trial permit is taken in `call`, not held by a service that is ready and idle
    /// (a balancer's ready cache would otherwise keep the breaker half-open for good).
    Trial,
    /// It will not.
    Short(Short),
}

/// Kill switch, bulkhead, breaker and timeout over `S`, as its stages `K` say; see the
/// [module docs](self). Used through its aliases ([`CircuitBreaker`](crate::breaker::CircuitBreaker), …).
pub struct Guard<S, C, K> {
    inner: S,
    classify: C,
    policy: Policy,
    settings: SettingsCache,
    ready: Ready,
    /// The bulkhead slot and trial permit held for the next call, if any.
    ticket: Ticket,
    /// The inner service said it is ready: the call is committed to it (the ticket's
    /// slot and permit are for it), so `poll_ready` does not decide again.
    inner_ready: bool,
    _stages: PhantomData<fn() -> K>,
}

impl<S, K: Stages> Guard<S, ErrorsAsFailures, K> {
    /// Wraps `inner` with `policy`'s protections (every `Err` a failure).
    pub(crate) fn plain(inner: S, policy: &Policy) -> Self {
        Self::with_classify(inner, policy, ErrorsAsFailures)
    }
}

impl<S, C, K> Guard<S, C, K> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (a slot or trial permit it held goes back).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The policy whose settings and state this service uses.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl<S, C, K: Stages> Guard<S, C, K> {
    /// Wraps `inner` with `policy`'s protections, classifying outcomes with `classify`.
    pub(crate) fn with_classify(inner: S, policy: &Policy, classify: C) -> Self {
        Guard {
            inner,
            classify,
            policy: policy.clone(),
            settings: settings_cache(policy),
            ready: Ready::Unpolled,
            ticket: Ticket::EMPTY,
            inner_ready: false,
            _stages: PhantomData,
        }
    }

    /// The classifier.
    pub(crate) fn classify(&self) -> &C {
        &self.classify
    }

    /// The settings in force (cached per service: one pointer compare).
    #[inline]
    pub(crate) fn settings(&mut self) -> &Arc<PolicySettings> {
        self.settings.load()
    }

    /// Decides the next call: made (with a ticket when a slot or permit is held) or
    /// not.
    #[inline(always)]
    fn decide(&mut self) {
        if self.ticket.core.is_some() {
            // A ticket still held belongs to a call that never started (the inner
            // `call` panicked): its slot and permit go back before anything is decided.
            self.ticket = Ticket::EMPTY;
        }
        let core = &**self.policy.shared();
        let settings = self.settings.load();
        if K::KILL && core.killed(settings) {
            self.ready = Ready::Short(Short::Killed);
            return;
        }
        let max = if K::BULKHEAD {
            settings.bulkhead.max_concurrent
        } else {
            None
        };
        if !K::BREAKER {
            self.ready = match acquire_slot(core, max) {
                Ok(slot) => self.admitted(slot, NO_TRIAL),
                Err(()) => Ready::Short(Short::Bulkhead),
            };
            return;
        }
        // The bulkhead is outside the breaker: a full bulkhead answers first, and a
        // call it refuses never reaches the breaker (no half-open trial taken).
        self.ready = match core.breaker.quick_admit(settings.breaker.mode, &core.clock) {
            Some(true) => match acquire_slot(core, max) {
                Ok(slot) => self.admitted(slot, NO_TRIAL),
                Err(()) => Ready::Short(Short::Bulkhead),
            },
            // Read, not taken: the slot would be given back at once.
            Some(false) if bulkhead_full(core, max) => Ready::Short(Short::Bulkhead),
            Some(false) => Ready::Short(Short::Open),
            None => self.decide_cold(max),
        };
    }

    /// Admitted: a ticket holds the slot or permit, if either was taken.
    #[inline(always)]
    fn admitted(&mut self, slot: bool, trial: u32) -> Ready {
        if slot || trial != NO_TRIAL {
            self.ticket = self.ticket(slot, trial);
        }
        Ready::Call
    }

    /// Half-open, forced and metrics-only modes, or open and due for a trial.
    #[cold]
    #[inline(never)]
    fn decide_cold(&mut self, max: Option<u32>) -> Ready {
        let core = &**self.policy.shared();
        let settings = self.settings.load();
        let now = core.clock.now_ms();
        let forced = matches!(
            settings.breaker.mode,
            BreakerMode::ForceOpen | BreakerMode::ForceClosed
        );
        if forced {
            // Decided now: no permit is involved.
            if let Admission::Reject = core.breaker.admit(now, &settings.breaker, &core.ctx()) {
                return if bulkhead_full(core, max) {
                    Ready::Short(Short::Bulkhead)
                } else {
                    Ready::Short(Short::Open)
                };
            }
        } else if settings.breaker.mode == BreakerMode::Normal && !core.breaker.may_admit(now) {
            // Half-open with every permit taken: rejected without polling the inner
            // service (a look; `call` decides).
            return if bulkhead_full(core, max) {
                Ready::Short(Short::Bulkhead)
            } else {
                Ready::Short(Short::Open)
            };
        }
        let slot = match acquire_slot(core, max) {
            Ok(slot) => slot,
            Err(()) => return Ready::Short(Short::Bulkhead),
        };
        if slot {
            self.ticket = self.ticket(true, NO_TRIAL);
        }
        if forced { Ready::Call } else { Ready::Trial }
    }

    /// The breaker's decision for a call `poll_ready` left to `call` (a trial permit is
    /// taken now, or the call is rejected).
    #[cold]
    #[inline(never)]
    fn admit_now(&mut self) -> Result<(), Short> {
        let core = &**self.policy.shared();
        let settings = self.settings.load();
        let now = core.clock.now_ms();
        match core.breaker.admit(now, &settings.breaker, &core.ctx()) {
            Admission::Admit => Ok(()),
            Admission::Trial(episode) => {
                if self.ticket.core.is_none() {
                    self.ticket = self.ticket(false, NO_TRIAL);
                }
                self.ticket.bits =
                    (self.ticket.bits & !u64::from(NO_TRIAL)) | u64::from(episode as u32);
                Ok(())
            }
            Admission::Reject => {
                self.ticket = Ticket::EMPTY; // the slot goes back
                Err(Short::Open)
            }
        }
    }

    #[inline]
    fn ticket(&self, slot: bool, trial: u32) -> Ticket {
        Ticket::held(self.policy.shared().lease(), slot, trial)
    }

    /// Readiness was pending when the kill switch flipped: the call will not be made,
    /// so its slot and trial permit go back now.
    #[cold]
    fn preempt_pending(&mut self) {
        let core = &**self.policy.shared();
        if core.killed(self.settings.load()) {
            self.ready = Ready::Short(Short::Killed);
            self.ticket = Ticket::EMPTY;
        }
    }

    /// `poll_ready`, telling why when the call will not be made.
    #[inline(always)]
    pub(crate) fn poll_decide<Req>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Short>, BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        // A timeout alone decides nothing: readiness is the inner service's.
        let decides = K::KILL || K::BULKHEAD || K::BREAKER;
        match self.ready {
            _ if !decides => {}
            Ready::Call | Ready::Trial if self.inner_ready => {}
            Ready::Call | Ready::Trial => {
                if K::KILL {
                    self.preempt_pending();
                }
            }
            Ready::Unpolled | Ready::Short(_) => self.decide(),
        }
        if let Ready::Short(short) = self.ready {
            return Poll::Ready(Ok(Some(short)));
        }
        let ready = self.inner.poll_ready(cx).map_err(Into::into);
        self.inner_ready = matches!(ready, Poll::Ready(Ok(())));
        ready.map_ok(|()| None)
    }

    /// Consumes a decision not to call (counted under its outcome).
    #[inline(always)]
    pub(crate) fn take_short(&mut self) -> Option<Short> {
        if let Ready::Short(short) = self.ready {
            self.ready = Ready::Unpolled;
            self.inner_ready = false;
            short.count(self.policy.shared());
            return Some(short);
        }
        None
    }

    /// Makes the call `poll_ready` decided (or fails it at once).
    #[inline(always)]
    pub(crate) fn call_inner<Req>(&mut self, req: Req) -> ResponseFuture<S::Future, C, K>
    where
        S: Service<Req>,
        C: Clone,
    {
        if let Some(short) = self.take_short().or_else(|| self.confirm()) {
            return ResponseFuture::rejected(short);
        }
        let (fut, timeout, hold) = self.call_admitted(req);
        ResponseFuture::called(fut, timeout, hold)
    }

    /// For a call `poll_ready` left to the breaker (`Ready::Trial`): takes its trial
    /// permit now, or says why not (counted as rejected). `None` otherwise.
    #[inline(always)]
    pub(crate) fn confirm(&mut self) -> Option<Short> {
        if self.ready != Ready::Trial {
            return None;
        }
        match self.admit_now() {
            // Admitted: should the inner `call` panic, the permit stays with the
            // service for its next call (or goes back when it is dropped).
            Ok(()) => {
                self.ready = Ready::Call;
                None
            }
            Err(short) => {
                self.ready = Ready::Unpolled;
                self.inner_ready = false;
                short.count(self.policy.shared());
                Some(short)
            }
        }
    }

    /// Makes an admitted call (after [`Guard::take_short`] and [`Guard::confirm`] said
    /// it is made): the inner future and what its response future needs, in pieces,
    /// so that a caller builds the future in place (moving a built one copied its
    /// timer's space on every call).
    #[inline(always)]
    pub(crate) fn call_admitted<Req>(
        &mut self,
        req: Req,
    ) -> (S::Future, Option<Duration>, K::Hold<C>)
    where
        S: Service<Req>,
        C: Clone,
    {
        self.inner_ready = false;
        match self.ready {
            Ready::Call => {}
            Ready::Trial => unreachable!("a trial is confirmed before its call"),
            // A timeout alone decides nothing in `poll_ready`.
            Ready::Unpolled if !(K::KILL || K::BULKHEAD || K::BREAKER) => {}
            Ready::Unpolled | Ready::Short(_) => panic!("poll_ready must be called first"),
        }
        let settings = self.settings.load();
        let timeout = if K::TIMEOUT {
            settings.timeout.ms.map(Duration::from_millis)
        } else {
            None
        };
        let slow_ms = settings.breaker.slow_call_ms.unwrap_or(0);
        let start = if K::BREAKER {
            self.policy.shared().clock.now_ms()
        } else {
            0
        };
        let fut = self.inner.call(req);
        // Taken from the service only now: should the inner `call` panic, the service
        // still holds the ticket, and gives its slot and permit back when dropped.
        self.ready = Ready::Unpolled;
        // The breaker records every call: it needs the policy's state when the call
        // ends, held by a ticket (taken now when `poll_ready` needed none).
        // Built only for stages that hold something (a `Record`; nothing for a kill
        // switch or a timeout alone).
        let hold = K::Hold::<C>::hold(|| {
            let mut ticket = std::mem::replace(&mut self.ticket, Ticket::EMPTY);
            if K::BREAKER {
                if ticket.core.is_none() {
                    ticket.core = Some(self.policy.shared().lease());
                }
                // `slow_call_ms` is at most 3,600,000 (validated): fits its 30 bits.
                ticket.bits |= RECORD | slow_ms << SLOW_SHIFT;
            }
            Record {
                ticket,
                start,
                pending_us: 0,
                classify: self.classify.clone(),
            }
        });
        (fut, timeout, hold)
    }
}

impl<S: Clone, C: Clone, K> Clone for Guard<S, C, K> {
    /// A clone starts unpolled: readiness, slots and permits are not shared.
    fn clone(&self) -> Self {
        Guard {
            inner: self.inner.clone(),
            classify: self.classify.clone(),
            policy: self.policy.clone(),
            settings: self.settings.clone(),
            ready: Ready::Unpolled,
            ticket: Ticket::EMPTY,
            inner_ready: false,
            _stages: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C, K> fmt::Debug for Guard<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("inner", &self.inner)
            .field("policy", &self.policy.name())
            .field("stages", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}

impl<S, C, K, Req> Service<Req> for Guard<S, C, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Clone,
    K: Stages,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_decide(cx).map_ok(|_| ())
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        self.call_inner(req)
    }
}
