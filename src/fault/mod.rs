//! Fault injection: abort or delay a live percentage of calls, to prove that the
//! fallbacks hold.
//!
//! Off by default; one etcd write (`fault.abort_percent`, `fault.delay_percent`,
//! `fault.delay_ms`, `fault.target`, `fault.max_active`) starts or stops an experiment.
//! Each call gets **one independent draw per fault kind** (a second draw for the same
//! kind would turn p into 2p − p²). Targeting: every call, a sticky percentage of keys
//! (the switches' bucketing, over the policy's name and the key), or calls carrying a
//! marker. Besides its own settings, the layer injects the faults of a running
//! [chaos experiment](crate::experiment) on this policy into calls made for that
//! experiment's experiment cohort (and into no other call). An abort fails at once with [`InjectedFault`] — or with the response
//! [`FaultLayer::abort_with`] builds (an HTTP 503, a gRPC UNAVAILABLE) — without calling
//! the inner service; a delay sleeps before the inner future is first polled. Off, it
//! costs one settings read per call.
//!
//! ```
//! use substation::{Policy, fault::{FaultLayer, InjectedFault}, settings::PolicySettings};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut s = PolicySettings::default();
//! s.fault.abort_percent = 100.0;
//! let policy = Policy::new("payments", s).unwrap();
//! let svc = FaultLayer::new(&policy).layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! assert!(svc.oneshot(1).await.unwrap_err().is::<InjectedFault>());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::guard::{SettingsCache, settings_cache};
use crate::settings::{FaultSettings, FaultTarget};
use crate::switch::murmur::Prefix;
use crate::{BoxError, Policy};

type KeyFn<Req> = Arc<dyn Fn(&Req, &mut dyn FnMut(&[u8])) + Send + Sync>;
type MarkFn<Req> = Arc<dyn Fn(&Req) -> bool + Send + Sync>;
type AbortFn<Req, Resp> = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

unit_error!(
    /// The call failed because a fault was injected. Zero-sized.
    InjectedFault,
    "fault injected"
);

/// What every service of one layer shares.
struct Shared<Req, Resp> {
    policy: Policy,
    key: Option<KeyFn<Req>>,
    marked: Option<MarkFn<Req>>,
    abort: Option<AbortFn<Req, Resp>>,
    prefix: Prefix,
    /// Faults in progress (delays), across the layer's services.
    active: Arc<AtomicU32>,
    seed: Option<u64>,
    /// Services made so far (each draws from its own stream of a seed).
    clones: Arc<AtomicU64>,
}

impl<Req, Resp> Clone for Shared<Req, Resp> {
    fn clone(&self) -> Self {
        Shared {
            policy: self.policy.clone(),
            key: self.key.clone(),
            marked: self.marked.clone(),
            abort: self.abort.clone(),
            prefix: self.prefix,
            active: self.active.clone(),
            seed: self.seed,
            clones: self.clones.clone(),
        }
    }
}

/// Builds [`Fault`] services; see the [module docs](self). Its builder methods may be
/// called on a clone too: each layer value is configured on its own.
pub struct FaultLayer<Req, Resp> {
    shared: Shared<Req, Resp>,
}

impl<Req, Resp> Clone for FaultLayer<Req, Resp> {
    fn clone(&self) -> Self {
        FaultLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for FaultLayer<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("policy", &self.shared.policy.name())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> FaultLayer<Req, Resp> {
    /// A layer injecting `policy`'s live faults.
    pub fn new(policy: &Policy) -> Self {
        FaultLayer {
            shared: Shared {
                policy: policy.clone(),
                key: None,
                marked: None,
                abort: None,
                prefix: Prefix::new(policy.name().as_bytes()),
                active: Arc::new(AtomicU32::new(0)),
                seed: None,
                clones: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// The key of a request, for `"target": {"keys": p}` (a user id, a tenant): the
    /// function hands its bytes to the callback.
    pub fn key(
        mut self,
        key: impl Fn(&Req, &mut dyn FnMut(&[u8])) + Send + Sync + 'static,
    ) -> Self {
        self.shared.key = Some(Arc::new(key));
        self
    }

    /// Whether a request carries the marker, for `"target": "marked"` (e.g. a header).
    pub fn marker(mut self, marked: impl Fn(&Req) -> bool + Send + Sync + 'static) -> Self {
        self.shared.marked = Some(Arc::new(marked));
        self
    }

    /// Aborts answer with this response instead of failing with [`InjectedFault`].
    pub fn abort_with(mut self, respond: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Self {
        self.shared.abort = Some(Arc::new(respond));
        self
    }

    /// Draws from a seeded random source (reproducible tests); each service built gets
    /// its own stream derived from the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.shared.seed = Some(seed);
        self
    }
}

impl<S, Req, Resp> Layer<S> for FaultLayer<Req, Resp> {
    type Service = Fault<S, Req, Resp>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault::new(inner, Arc::new(self.shared.clone()))
    }
}

/// Injects the policy's live faults; see the [module docs](self).
pub struct Fault<S, Req, Resp> {
    inner: S,
    settings: SettingsCache,
    shared: Arc<Shared<Req, Resp>>,
    rng: fastrand::Rng,
}

impl<S, Req, Resp> Fault<S, Req, Resp> {
    fn new(inner: S, shared: Arc<Shared<Req, Resp>>) -> Self {
        let n = shared.clones.fetch_add(1, Ordering::Relaxed);
        let rng = match shared.seed {
            Some(seed) => fastrand::Rng::with_seed(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            None => fastrand::Rng::new(),
        };
        Fault {
            inner,
            settings: settings_cache(&shared.policy),
            shared,
            rng,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: Clone, Req, Resp> Clone for Fault<S, Req, Resp> {
    fn clone(&self) -> Self {
        let mut c = Fault::new(self.inner.clone(), self.shared.clone());
        c.settings = self.settings.clone();
        c
    }
}

impl<S: fmt::Debug, Req, Resp> fmt::Debug for Fault<S, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fault")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy.name())
            .finish_non_exhaustive()
    }
}

impl<S, Req, Resp> Fault<S, Req, Resp> {
    /// Whether this request is a target of the experiment.
    fn targeted(&self, req: &Req, f: &FaultSettings) -> bool {
        match f.target {
            FaultTarget::All => true,
            FaultTarget::Marked => self.shared.marked.as_ref().is_some_and(|m| m(req)),
            FaultTarget::Keys(percent) => {
                let Some(key) = &self.shared.key else {
                    return false;
                };
                let mut bucket = u32::MAX;
                key(req, &mut |bytes| {
                    let h = self.shared.prefix.hash(bytes);
                    bucket = ((u64::from(h) * 1_000_000) >> 32) as u32;
                });
                f64::from(bucket) < percent * 10_000.0
            }
        }
    }

    /// Takes a slot under `max_active`, or says no.
    fn activate(&self, f: &FaultSettings) -> Option<Active> {
        let active = &self.shared.active;
        let n = active.fetch_add(1, Ordering::AcqRel);
        if f.max_active.is_some_and(|max| n >= max) {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Active(active.clone()))
    }
}

/// A fault in progress, counted against `fault.max_active` until dropped.
struct Active(Arc<AtomicU32>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, Req, Resp> Service<Req> for Fault<S, Req, Resp>
where
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
    Req: 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = FaultFuture<S::Future, Resp>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // A call of a running experiment's experiment cohort, to this policy.
        if let Some(f) = crate::experiment::injection(self.shared.policy.name()) {
            return self.decide(req, &f);
        }
        let settings = self.settings.load();
        if !settings.fault.is_on() {
            return FaultFuture::pass(self.inner.call(req));
        }
        let f = settings.fault.clone();
        self.decide(req, &f)
    }
}

impl<S, Req, Resp> Fault<S, Req, Resp>
where
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
    Req: 'static,
    Resp: Send + 'static,
{
    #[cold]
    fn decide(&mut self, req: Req, f: &FaultSettings) -> FaultFuture<S::Future, Resp> {
        // One independent draw per kind, made for every call so that targeting does not
        // change the stream of draws.
        let abort = self.rng.f64() * 100.0 < f.abort_percent;
        let delay = self.rng.f64() * 100.0 < f.delay_percent && f.delay_ms > 0;
        if !(abort || delay) || !self.targeted(&req, f) {
            return FaultFuture::pass(self.inner.call(req));
        }
        let Some(active) = self.activate(f) else {
            return FaultFuture::pass(self.inner.call(req));
        };
        if abort {
            self.shared
                .policy
                .shared()
                .stats
                .count(crate::stats::FAULT_ABORT);
            let answer = match &self.shared.abort {
                Some(respond) => Ok(respond(&req)),
                None => Err(InjectedFault::new().into()),
            };
            return FaultFuture::fault(
                None,
                Injected {
                    sleep: None,
                    answer: Some(answer),
                    active: None,
                },
            );
        }
        self.shared
            .policy
            .shared()
            .stats
            .count(crate::stats::FAULT_DELAY);
        FaultFuture::fault(
            Some(self.inner.call(req)),
            Injected {
                sleep: Some(Box::pin(tokio::time::sleep(Duration::from_millis(
                    f.delay_ms,
                )))),
                answer: None,
                active: Some(active),
            },
        )
    }
}

pin_project! {
    /// The response future of [`Fault`]: the inner future, untouched unless a fault was
    /// injected into this call.
    pub struct FaultFuture<F, Resp> {
        #[pin]
        kind: Kind<F, Resp>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Resp> {
        Pass {
            #[pin]
            inner: F,
        },
        /// A fault (boxed: faults are rare, and the untouched path stays small).
        Fault {
            #[pin]
            inner: Option<F>,
            fault: Box<dyn InjectedState<Resp>>,
        },
    }
}

/// What an injected fault does to one call.
struct Injected<Resp> {
    sleep: Option<Pin<Box<Sleep>>>,
    answer: Option<Result<Resp, BoxError>>,
    active: Option<Active>,
}

/// The injected fault's state behind a trait object: the untouched path's drop glue
/// stays a tag check (a concrete box here made it an out-of-line call on every call).
trait InjectedState<Resp>: Send {
    fn state(&mut self) -> &mut Injected<Resp>;
}

impl<Resp: Send> InjectedState<Resp> for Injected<Resp> {
    fn state(&mut self) -> &mut Injected<Resp> {
        self
    }
}

impl<F, Resp> fmt::Debug for FaultFuture<F, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let injected = matches!(self.kind, Kind::Fault { .. });
        f.debug_struct("FaultFuture")
            .field("injected", &injected)
            .finish_non_exhaustive()
    }
}

impl<F, Resp> FaultFuture<F, Resp> {
    #[inline]
    fn pass(inner: F) -> Self {
        FaultFuture {
            kind: Kind::Pass { inner },
        }
    }

    fn fault(inner: Option<F>, fault: Injected<Resp>) -> Self
    where
        Resp: Send + 'static,
    {
        FaultFuture {
            kind: Kind::Fault {
                inner,
                fault: Box::new(fault),
            },
        }
    }
}

impl<F, Resp, E> Future for FaultFuture<F, Resp>
where
    F: Future<Output = Result<Resp, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Resp, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Pass { inner } => inner.poll(cx).map_err(Into::into),
            KindProj::Fault { inner, fault } => {
                let fault = fault.state();
                if let Some(answer) = fault.answer.take() {
                    return Poll::Ready(answer);
                }
                if let Some(sleep) = &mut fault.sleep {
                    ready!(sleep.as_mut().poll(cx));
                    fault.sleep = None;
                    fault.active = None; // the delay is over: no longer an active fault
                }
                match inner.as_pin_mut() {
                    Some(inner) => inner.poll(cx).map_err(Into::into),
                    None => Poll::Ready(Err(InjectedFault::new().into())),
                }
            }
        }
    }
}
