//! What fault injection costs when it is off (the normal state of production).
//!
//! Group `fault` (names are parsed by tools; keep them): `off` is `FaultLayer` with the
//! policy's default settings (no fault) around the same ready `service_fn` as the other
//! benches; `raw` is the bare service, for reference. The chaos experiments' edge
//! (`ExperimentLayer`, keyed by the request's 8 bytes): `edge_none` with no experiment
//! running, `edge_outside` with one running (1 % + 1 %) and a key in neither cohort (the
//! issue's "outside every experiment", ≤ 10 ns), `edge_control` with a key in the
//! control cohort (scoped, counted and judged); `switch_sticky_same_key` is a sticky
//! switch of the same name evaluated on the same key (the same murmur3: the floor of the
//! edge's bucketing). Harness: `poll_ready` + `call` + one poll
//! with a no-op waker.
//!
//! Run with `cargo bench --workspace --bench fault`.

use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::experiment::{Arm, ExperimentLayer};
use substation::fault::FaultLayer;
use substation::live::InMemorySource;
use substation::settings::PolicySettings;
use substation::{Policy, Substation};
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

    let source = InMemorySource::new();
    let sub = Substation::builder()
        .source(source.clone())
        .build()
        .unwrap();
    let edge = ExperimentLayer::new(&sub).key(|req: &u64, put| put(&req.to_le_bytes()));
    let mut none = edge.clone().layer(inner);
    g.bench_function("edge_none", |b| {
        b.iter(|| black_box(drive(&mut none, black_box(7), &mut cx).unwrap()))
    });
    source
        .put(
            "experiments/bench",
            r#"{"policy": "elsewhere", "min_requests": 1000000000, "max_duration_ms": 86400000}"#,
        )
        .unwrap();
    let cohort = |k: &u64| sub.experiment_cohort("bench", &k.to_le_bytes());
    let outside = (0u64..).find(|k| cohort(k).is_none()).unwrap();
    let control = (0u64..).find(|k| cohort(k) == Some(Arm::Control)).unwrap();
    let mut running = edge.layer(inner);
    g.bench_function("edge_outside", |b| {
        b.iter(|| black_box(drive(&mut running, black_box(outside), &mut cx).unwrap()))
    });
    // The same murmur3 of the same name ++ key, as the switches evaluate it: the floor
    // the edge's bucketing sits on.
    let switch = sub.switch("bench");
    switch
        .update(substation::switch::SwitchSettings::percent(1.0))
        .unwrap();
    let key = outside.to_le_bytes();
    g.bench_function("switch_sticky_same_key", |b| {
        b.iter(|| black_box(switch.is_on(black_box(key))))
    });
    g.bench_function("edge_control", |b| {
        b.iter(|| black_box(drive(&mut running, black_box(control), &mut cx).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, fault);
criterion_main!(benches);
