//! What the per-call metrics cost once an application installs a real recorder.
//!
//! Every other benchmark runs without a `metrics` recorder, where each metric call is a
//! branch on an empty handle. Production installs one; this group measures the same
//! calls with `metrics-exporter-prometheus`'s recorder (handles registered through
//! `metrics::with_local_recorder` when the policy and layer are built, as an
//! application's would be through the global one), next to the same calls without.
//!
//! Group `recorder`, functions `<case>/none` and `<case>/prometheus`:
//!
//! - `breaker_closed`: a closed `CircuitBreakerLayer`, the call succeeds (one
//!   `substation_calls_total` increment and one `substation_call_duration_seconds`
//!   sample per call).
//! - `breaker_closed_2threads`: the same breaker shared by two threads, time per call
//!   per thread (the harness of `overhead`'s group of that name).
//! - `killed_static`: the policy stack, killed, answered by a static fallback (one
//!   `killed` outcome and one `served` fallback count per call, no duration).
//! - `full_ready`: the whole policy stack (static fallback, bulkhead limit 1000),
//!   closed and healthy, as in `stack`'s `substation_full_ready`.
//!
//! Since the statistics rework, no call reaches the recorder: counts are kept in
//! per-thread stripes and pushed once a second by a background thread (`stats`), so
//! `none` and `prometheus` should cost the same.
//!
//! Same harness as `overhead` (`poll_ready` + `call` + one poll, no-op waker). Run with
//! `cargo bench --workspace --bench recorder`.

use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Policy;
use substation::breaker::CircuitBreakerLayer;
use substation::fallback::Fallback;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation_benches::{Boom, drive, two_threads};
use tower::{Layer, Service};

fn ok_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone
+ Send {
    tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Boom>(req)))
}

/// Runs `build` with `recorder` as the thread's recorder, if any: handles are
/// registered at build time.
fn under<T>(
    recorder: Option<&metrics_exporter_prometheus::PrometheusRecorder>,
    build: impl FnOnce() -> T,
) -> T {
    match recorder {
        Some(recorder) => metrics::with_local_recorder(recorder, build),
        None => build(),
    }
}

fn recorder(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut g = c.benchmark_group("recorder");
    let mut cx = Context::from_waker(Waker::noop());
    for (label, installed) in [("none", false), ("prometheus", true)] {
        let recorder = installed.then_some(&prometheus);
        let policy = under(recorder, || {
            Policy::new(
                &format!("recorder-closed-{label}"),
                PolicySettings::default(),
            )
            .unwrap()
        });
        let mut svc = CircuitBreakerLayer::new(&policy).layer(ok_service());
        g.bench_function(format!("breaker_closed/{label}"), |b| {
            b.iter(|| black_box(drive(&mut svc, black_box(7), &mut cx).unwrap()))
        });
        g.bench_function(format!("breaker_closed_2threads/{label}"), |b| {
            b.iter_custom(|iters| two_threads(&svc, iters))
        });

        let killed = PolicySettings::default().with(|s| s.kill = true);
        let policy = under(recorder, || {
            Policy::new(&format!("recorder-killed-{label}"), killed).unwrap()
        });
        let layer = under(recorder, || {
            PolicyLayer::new(&policy).fallback(Fallback::<u64, u64>::new().static_value(42))
        });
        let mut svc = layer.layer(ok_service());
        assert_eq!(drive(&mut svc, 7, &mut cx).unwrap(), 42);
        g.bench_function(format!("killed_static/{label}"), |b| {
            b.iter(|| black_box(drive(&mut svc, black_box(7), &mut cx).unwrap()))
        });
        g.bench_function(format!("killed_static_2threads/{label}"), |b| {
            b.iter_custom(|iters| two_threads(&svc, iters))
        });

        let limited = PolicySettings::default().with(|s| s.bulkhead.max_concurrent = Some(1000));
        let policy = under(recorder, || {
            Policy::new(&format!("recorder-full-{label}"), limited).unwrap()
        });
        let mut svc = PolicyLayer::new(&policy)
            .fallback(Fallback::<u64, u64>::new().static_value(42))
            .layer(ok_service());
        assert_eq!(drive(&mut svc, 7, &mut cx).unwrap(), 7);
        g.bench_function(format!("full_ready/{label}"), |b| {
            b.iter(|| black_box(drive(&mut svc, black_box(7), &mut cx).unwrap()))
        });
    }
    g.finish();
    // The recorder did see the calls (the cases above are not measuring a no-op).
    substation::metrics::flush();
    let rendered = prometheus.handle().render();
    for name in [
        "recorder-closed-prometheus",
        "recorder-killed-prometheus",
        "recorder-full-prometheus",
    ] {
        assert!(
            rendered.contains(&format!("policy=\"{name}\"")),
            "{name} missing from:\n{rendered}"
        );
    }
}

criterion_group!(benches, recorder);
criterion_main!(benches);
