//! What fault injection costs when it is off (the normal state of production).
//!
//! Group `fault` (names are parsed by tools; keep them): `off` is `FaultLayer` with the
//! policy's default settings (no fault) around the same ready `service_fn` as the other
//! benches; `raw` is the bare service, for reference. Harness: `poll_ready` + `call` +
//! one poll with a no-op waker.
//!
//! Run with `cargo bench --workspace --bench fault`.

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Policy;
use substation::fault::FaultLayer;
use substation::settings::PolicySettings;
use tower::{Layer, Service};

fn drive<S: Service<u64>>(
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

/// The inner service's error (as in the other benches: no drop glue).
#[derive(Debug, Clone, Copy)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

fn fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    let mut cx = Context::from_waker(Waker::noop());
    let inner = tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Boom>(req)));
    let mut raw = inner;
    g.bench_function("raw", |b| {
        b.iter(|| black_box(drive(&mut raw, black_box(7), &mut cx).unwrap()))
    });
    let policy = Policy::new("fault-off", PolicySettings::default()).unwrap();
    let mut off = FaultLayer::new(&policy).layer(inner);
    g.bench_function("off", |b| {
        b.iter(|| black_box(drive(&mut off, black_box(7), &mut cx).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, fault);
criterion_main!(benches);
