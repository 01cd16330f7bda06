//! Shared helpers: scripted inner services and synchronous driving.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use substation::BoxError;
use tower::Service;

/// Polls `svc` ready and calls it, expecting both to finish at once (the inner services
/// used with this helper answer immediately).
pub(crate) fn call_now<S, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("service not ready"),
    }
    let fut = svc.call(req);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("response not ready"),
    }
}

/// An inner service whose outcome is switched by a flag, and which counts its calls.
#[derive(Clone, Default)]
pub(crate) struct Flaky {
    pub(crate) failing: Arc<AtomicBool>,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Flaky {
    pub(crate) fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Flaky {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            std::future::ready(Err("dependency failed".into()))
        } else {
            std::future::ready(Ok(req))
        }
    }
}

/// An inner service that keeps the tower readiness contract strictly: `call` panics
/// unless `poll_ready` returned `Ready` on this very instance since the last call, and
/// a clone starts unready (like tower's `Buffer` or `ConcurrencyLimit`).
#[derive(Default)]
pub(crate) struct Strict {
    ready: bool,
    pub(crate) polls: Arc<AtomicUsize>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            polls: self.polls.clone(),
        }
    }
}

impl Service<u32> for Strict {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        assert!(self.ready, "inner service called without poll_ready");
        self.ready = false;
        std::future::ready(Ok(req))
    }
}

/// An inner service that is not ready until its gate opens (like a gRPC channel that is
/// reconnecting); answers `req` once called.
#[derive(Clone, Default)]
pub(crate) struct Gated {
    pub(crate) open: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<u32> for Gated {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: u32) -> Self::Future {
        std::future::ready(Ok(req))
    }
}
