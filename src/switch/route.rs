//! Routing between an old and a new code path by a switch: each request goes to one of
//! two inner services, chosen by the switch and a key taken from the request.
//!
//! ```
//! use substation::{BoxError, switch::{RouteLayer, Switch, SwitchSettings}};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let switch = Switch::detached("search-v2", SwitchSettings::off())?;
//! let new = service_fn(|q: String| async move { Ok::<_, BoxError>(format!("v2: {q}")) });
//! let old = service_fn(|q: String| async move { Ok::<_, BoxError>(format!("v1: {q}")) });
//! // The key: here the query itself; usually a user id or a tenant from the request.
//! let search = ServiceBuilder::new()
//!     .layer(RouteLayer::new(&switch, new, |q: &String| Some(q.clone())))
//!     .service(old);
//! assert_eq!(search.clone().oneshot("rust".into()).await?, "v1: rust");
//! switch.update(SwitchSettings::on())?;
//! assert_eq!(search.oneshot("rust".into()).await?, "v2: rust");
//! # Ok(())
//! # }
//! ```
//!
//! **Readiness**: a request's path is known only in `call`, and the switch can flip
//! between `poll_ready` and `call`, so [`Route`] is ready when **both** inner services
//! are (like tower's `Steer`). Each is polled until ready and remembered as ready; a
//! call consumes only the readiness of the service it uses, so the other keeps its
//! reservation (a concurrency-limit permit, a buffer slot) for the next call. An error
//! from either `poll_ready` is the route's error. A clone starts unpolled.
//!
//! A request without a key (the key function answers `None`) is routed by a random
//! draw at the switch's percentage.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Switch;
use crate::BoxError;

/// Builds [`Route`]s: the wrapped service is the old path, `new` the new path.
#[derive(Clone)]
pub struct RouteLayer<N, F> {
    switch: Switch,
    new: N,
    key: F,
}

impl<N, F> RouteLayer<N, F> {
    /// Routes each request to `new` when `switch` is on for the key `key` takes from the
    /// request, else to the wrapped (old) service.
    pub fn new(switch: &Switch, new: N, key: F) -> Self {
        RouteLayer {
            switch: switch.clone(),
            new,
            key,
        }
    }
}

impl<N, F> fmt::Debug for RouteLayer<N, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLayer")
            .field("switch", &self.switch.name())
            .finish_non_exhaustive()
    }
}

impl<S, N: Clone, F: Clone> Layer<S> for RouteLayer<N, F> {
    type Service = Route<S, N, F>;

    fn layer(&self, old: S) -> Route<S, N, F> {
        Route::new(&self.switch, old, self.new.clone(), self.key.clone())
    }
}

/// Sends each request to the old or the new service; see the [module docs](self).
pub struct Route<O, N, F> {
    switch: Switch,
    old: O,
    new: N,
    key: F,
    old_ready: bool,
    new_ready: bool,
}

impl<O, N, F> Route<O, N, F> {
    /// Routes to `new` when `switch` is on for the request's key, else to `old`.
    pub fn new(switch: &Switch, old: O, new: N, key: F) -> Self {
        Route {
            switch: switch.clone(),
            old,
            new,
            key,
            old_ready: false,
            new_ready: false,
        }
    }

    /// The switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The old service.
    pub fn old(&self) -> &O {
        &self.old
    }

    /// The new service.
    pub fn new_service(&self) -> &N {
        &self.new
    }
}

impl<O: Clone, N: Clone, F: Clone> Clone for Route<O, N, F> {
    fn clone(&self) -> Self {
        // A clone has reserved nothing: it starts unpolled.
        Route::new(
            &self.switch,
            self.old.clone(),
            self.new.clone(),
            self.key.clone(),
        )
    }
}

impl<O, N, F> fmt::Debug for Route<O, N, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("switch", &self.switch.name())
            .field("old_ready", &self.old_ready)
            .field("new_ready", &self.new_ready)
            .finish_non_exhaustive()
    }
}

impl<Req, O, N, F, K> Service<Req> for Route<O, N, F>
where
    O: Service<Req>,
    O::Error: Into<BoxError>,
    N: Service<Req, Response = O::Response>,
    N::Error: Into<BoxError>,
    F: Fn(&Req) -> Option<K>,
    K: AsRef<[u8]>,
{
    type Response = O::Response;
    type Error = BoxError;
    type Future = RouteFuture<O::Future, N::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Poll both every time until both are ready, so both have our waker.
        if !self.old_ready {
            match self.old.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.old_ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }
        if !self.new_ready {
            match self.new.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.new_ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }
        if self.old_ready && self.new_ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert!(
            self.old_ready && self.new_ready,
            "poll_ready must be called first"
        );
        let new = match (self.key)(&req) {
            Some(key) => self.switch.is_on(key),
            None => self.switch.is_on_random(),
        };
        if new {
            self.new_ready = false;
            RouteFuture {
                inner: Inner::New {
                    fut: self.new.call(req),
                },
            }
        } else {
            self.old_ready = false;
            RouteFuture {
                inner: Inner::Old {
                    fut: self.old.call(req),
                },
            }
        }
    }
}

pin_project! {
    /// The response future of [`Route`]: the old or the new service's.
    #[derive(Debug)]
    pub struct RouteFuture<A, B> {
        #[pin]
        inner: Inner<A, B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<A, B> {
        Old { #[pin] fut: A },
        New { #[pin] fut: B },
    }
}

impl<A, B, T, EA, EB> Future for RouteFuture<A, B>
where
    A: Future<Output = Result<T, EA>>,
    B: Future<Output = Result<T, EB>>,
    EA: Into<BoxError>,
    EB: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project().inner.project() {
            InnerProj::Old { fut } => ready!(fut.poll(cx)).map_err(Into::into),
            InnerProj::New { fut } => ready!(fut.poll(cx)).map_err(Into::into),
        })
    }
}
