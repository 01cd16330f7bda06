//! What fault injection costs when it is off (the normal state of production).
//!
//! Group `fault` (names are parsed by tools; keep them): `off` is `FaultLayer` with the
//! policy's default settings (no fault) around the same ready `service_fn` as the other
//! benches; `raw` is the bare service, for reference. Harness: `poll_ready` + `call` +
//! one poll with a no-op waker.
//!
//! Run with `cargo bench --workspace --bench fault`.

use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Policy;
use substation::fault::FaultLayer;
use substation::settings::PolicySettings;
use substation_benches::{Boom, drive};
use tower::Layer;

/// The inner service's error (as in the other benches: no drop glue).
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
