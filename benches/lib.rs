//! What the benchmarks share: the inner services' error and the one-call harness.
//! The benchmarks themselves are this crate's bench targets (`overhead`, `stack`,
//! `fault`, `apply`, `switches`).

use std::future::Future;
use std::task::{Context, Poll};

use tower::Service;

/// The inner services' error: no drop glue, boxing it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

/// One call as every case makes it: `poll_ready`, `call`, one poll with the given
/// (no-op) context. Every future measured here is ready on its first poll; the harness
/// panics if one is not.
#[inline]
pub fn drive<S: Service<u64>>(
    svc: &mut S,
    req: u64,
    cx: &mut Context<'_>,
) -> Result<S::Response, S::Error> {
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("poll_ready returned Pending"),
    }
    let mut fut = std::pin::pin!(svc.call(req));
    match fut.as_mut().poll(cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("the call's future returned Pending on its first poll"),
    }
}
