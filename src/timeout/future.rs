//! The timeout layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::error::Elapsed;
use crate::BoxError;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout): the inner future, and a timer
    /// armed only once the inner future has returned `Pending`.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, timeout: Option<Duration>) -> Self {
        ResponseFuture {
            inner,
            sleep: None,
            timeout,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(timeout)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            return Poll::Ready(Err(Elapsed(()).into()));
        }
        Poll::Pending
    }
}
