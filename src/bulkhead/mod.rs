//! The bulkhead: a live cap on a dependency's calls in flight.
//!
//! With `bulkhead.max_concurrent` set, at most that many calls of the policy are in
//! flight at once (across every service built from it); one more is rejected at once —
//! no queue — with [`BulkheadFull`], which a fallback can catch. The slot is taken in
//! `poll_ready` (a rejection answers `Ready` without polling the inner service, like
//! tower's `LoadShed`) and given back when the response future finishes or is dropped.
//! `null` (the default) means no limit and costs nothing.
//!
//! ```
//! use substation::{Policy, bulkhead::{BulkheadFull, BulkheadLayer}, settings::PolicySettings};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut s = PolicySettings::default();
//! s.bulkhead.max_concurrent = Some(1);
//! let policy = Policy::new("search", s).unwrap();
//! let svc = BulkheadLayer::new(&policy).layer(service_fn(|()| std::future::pending::<Result<(), std::io::Error>>()));
//! let mut a = svc.clone();
//! let _in_flight = a.ready().await.unwrap().call(());
//! let err = svc.oneshot(()).await.unwrap_err();
//! assert!(err.is::<BulkheadFull>());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, Cache};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::policy::PolicyCore;
use crate::settings::PolicySettings;
use crate::{BoxError, Policy};

type SettingsCache = Cache<&'static ArcSwap<PolicySettings>, std::sync::Arc<PolicySettings>>;

/// The call was rejected: the policy's bulkhead is full. Zero-sized.
#[derive(Debug, Default)]
pub struct BulkheadFull(pub(crate) ());

impl BulkheadFull {
    /// A new `BulkheadFull`.
    pub fn new() -> Self {
        BulkheadFull(())
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bulkhead full: too many calls in flight")
    }
}

impl std::error::Error for BulkheadFull {}

/// A slot in the bulkhead, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    core: Option<&'static PolicyCore>,
}

impl Slot {
    pub(crate) const NONE: Slot = Slot { core: None };

    /// Takes a slot if the bulkhead (limit `max`) has one: `Ok(Slot)` (an empty slot
    /// when there is no limit), `Err(())` when full.
    #[inline]
    pub(crate) fn acquire(core: &'static PolicyCore, max: Option<u32>) -> Result<Slot, ()> {
        let Some(max) = max else {
            return Ok(Slot::NONE);
        };
        if core.inflight.fetch_add(1, Ordering::AcqRel) >= max {
            core.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        Ok(Slot { core: Some(core) })
    }

    /// Whether [`Slot::acquire`] would fail now, without taking a slot.
    #[inline]
    pub(crate) fn is_full(core: &PolicyCore, max: Option<u32>) -> bool {
        max.is_some_and(|max| core.inflight.load(Ordering::Acquire) >= max)
    }
}

impl Drop for Slot {
    #[inline]
    fn drop(&mut self) {
        if let Some(core) = self.core {
            core.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Builds [`Bulkhead`] services; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    policy: Policy,
}

impl BulkheadLayer {
    /// A layer applying `policy`'s bulkhead.
    pub fn new(policy: &Policy) -> Self {
        BulkheadLayer {
            policy: policy.clone(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            settings: Cache::new(&self.policy.core().settings),
            core: self.policy.core(),
            state: State::Unpolled,
            _policy: self.policy.clone(),
        }
    }
}

#[derive(Debug)]
enum State {
    Unpolled,
    Ready(Slot),
    Full,
}

/// Caps the policy's calls in flight; see the [module docs](self).
pub struct Bulkhead<S> {
    inner: S,
    settings: SettingsCache,
    core: &'static PolicyCore,
    state: State,
    _policy: Policy,
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        Bulkhead {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            core: self.core,
            state: State::Unpolled,
            _policy: self._policy.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("policy", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BulkheadFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !matches!(self.state, State::Ready(_)) {
            let max = self.settings.load().bulkhead.max_concurrent;
            match Slot::acquire(self.core, max) {
                Ok(slot) => self.state = State::Ready(slot),
                Err(()) => {
                    self.state = State::Full;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Unpolled) {
            State::Ready(slot) => BulkheadFuture {
                inner: Some(self.inner.call(req)),
                slot,
            },
            State::Full => {
                self.core.metrics.bulkhead_full.increment(1);
                BulkheadFuture {
                    inner: None,
                    slot: Slot::NONE,
                }
            }
            State::Unpolled => panic!("poll_ready must be called first"),
        }
    }
}

pin_project! {
    /// The response future of [`Bulkhead`]: holds the slot until it finishes or drops.
    #[derive(Debug)]
    pub struct BulkheadFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Slot,
    }
}

impl<F, T, E> Future for BulkheadFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(f) => {
                let out = std::task::ready!(f.poll(cx)).map_err(Into::into);
                *this.slot = Slot::NONE; // free the slot as soon as the call is done
                Poll::Ready(out)
            }
            None => Poll::Ready(Err(BulkheadFull(()).into())),
        }
    }
}
