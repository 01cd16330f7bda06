//! What the benchmarks share: the inner services' error and the one-call harness.
//! The benchmarks themselves are this crate's bench targets (`overhead`, `stack`,
//! `fault`, `apply`, `switches`, `recorder`).

use std::future::Future;
use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

/// Two threads, each with its own clone of `svc`, each making `iters` calls (that must
/// succeed) started together by a barrier; returns the slower thread's elapsed time, so
/// that criterion reports time per call per thread.
pub fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut cx = Context::from_waker(Waker::noop());
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        let ok = drive(&mut svc, black_box(i), &mut cx).is_ok();
                        assert!(black_box(ok), "a call was refused");
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .max()
            .expect("two threads")
    })
}
