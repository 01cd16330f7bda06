//! What the whole policy stack costs per call, next to tower-resilience's equivalent.
//!
//! Group `stack` (names are parsed by tools; keep them). Every case drives the same
//! inner `service_fn` whose future is ready at once (or fails at once), through
//! `poll_ready` + `call` + one poll with a no-op waker — the harness of `overhead.rs`.
//!
//! - `substation_full_ready`: kill switch → fallback (a static tier) → bulkhead (limit
//!   1000) → breaker → timeout, all closed, the dependency answers.
//! - `substation_open_static`: the breaker is open (tripped by real failures); the
//!   static tier answers.
//! - `substation_killed_static`: the kill switch is on; the static tier answers.
//! - `substation_cache_hit`: the dependency fails; the cache tier answers (the breaker's
//!   minimum volume is set out of reach so that the failure path is what is measured).
//! - `substation_cache_fill`: the stack with a cache tier; the dependency answers for
//!   the same key each time (what keeping the cache fresh costs on the success path:
//!   one refresh per key per `fallback.cache_refresh_ms`, 1 s).
//! - `tower_resilience_full_ready`: tower-resilience 0.13's circuit breaker, fallback,
//!   time limiter and bulkhead around the same service, closed and healthy, in the order
//!   its composition guide recommends (outermost first): fallback (`FallbackLayer::value(42)`)
//!   → circuit breaker (50 % failure rate, minimum 20 calls, default count-based window of
//!   100) → bulkhead (1000 concurrent calls, `reject_when_full`, i.e. no queue, like
//!   substation's) → time limiter (1 s). Each of the four layers boxes its future; it runs
//!   in the entered current-thread runtime (the time limiter and the zero-wait bulkhead
//!   build tokio `Sleep`s) and, as it turned out, is ready on the first poll, so it goes
//!   through the same `bench` helper.
//!
//! Run with `cargo bench --workspace --bench stack`.

use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Policy;
use substation::breaker::BreakerState;
use substation::fallback::Fallback;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation_benches::{Boom, drive};
use tower::{Layer, Service};

fn ok_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone {
    tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Boom>(req)))
}

fn failing_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone {
    tower::service_fn(|_: u64| std::future::ready(Err::<u64, Boom>(Boom)))
}

fn bench<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
    expect: u64,
) where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(drive(&mut svc, 7, &mut cx).unwrap(), expect, "{name}");
    g.bench_function(name, |b| {
        b.iter(|| black_box(drive(&mut svc, black_box(7), &mut cx).unwrap()))
    });
}

fn settings(f: impl FnOnce(&mut PolicySettings)) -> PolicySettings {
    let mut s = PolicySettings::default();
    s.bulkhead.max_concurrent = Some(1000);
    s.breaker.open_ms = 3_600_000;
    s.breaker.open_max_ms = 3_600_000;
    f(&mut s);
    s
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("stack");

    let policy = Policy::new("full", settings(|_| {})).unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(42u64));
    bench(
        &mut g,
        "substation_full_ready",
        layer.layer(ok_service()),
        7,
    );

    // Not a named target: the same with the library's default bulkhead (no limit, so no
    // counting), to show what the two atomic operations of an active bulkhead cost.
    let policy = Policy::new(
        "full-unlimited",
        settings(|s| s.bulkhead.max_concurrent = None),
    )
    .unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(42u64));
    bench(
        &mut g,
        "substation_full_ready_no_bulkhead_limit",
        layer.layer(ok_service()),
        7,
    );

    let policy = Policy::new("open", settings(|_| {})).unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(42u64));
    let mut tripper = layer.layer(failing_service());
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..20 {
        assert_eq!(drive(&mut tripper, 7, &mut cx).unwrap(), 42);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    bench(
        &mut g,
        "substation_open_static",
        layer.layer(ok_service()),
        42,
    );

    let policy = Policy::new("killed", settings(|s| s.kill = true)).unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(42u64));
    bench(
        &mut g,
        "substation_killed_static",
        layer.layer(ok_service()),
        42,
    );

    let policy = Policy::new("cache-hit", settings(|s| s.breaker.min_calls = 1_000_000)).unwrap();
    let fallback = Fallback::with_parts(|req: &u64| *req).cache(10_000);
    let layer = PolicyLayer::new(&policy).fallback(fallback);
    assert_eq!(
        drive(&mut layer.layer(ok_service()), 7, &mut cx).unwrap(),
        7,
        "fills the cache"
    );
    bench(
        &mut g,
        "substation_cache_hit",
        layer.layer(failing_service()),
        7,
    );

    let policy = Policy::new("cache-fill", settings(|_| {})).unwrap();
    let fallback = Fallback::with_parts(|req: &u64| *req).cache(10_000);
    let layer = PolicyLayer::new(&policy).fallback(fallback);
    bench(
        &mut g,
        "substation_cache_fill",
        layer.layer(ok_service()),
        7,
    );

    bench(
        &mut g,
        "tower_resilience_full_ready",
        tower_resilience_stack(),
        7,
    );

    g.finish();
}

/// tower-resilience's equivalent of `substation_full_ready`, outermost layer first:
/// fallback → circuit breaker → bulkhead → time limiter (its recommended order).
fn tower_resilience_stack() -> impl Service<u64, Response = u64, Error = impl std::fmt::Debug> {
    use std::time::Duration;
    use tower_resilience::bulkhead::BulkheadLayer;
    use tower_resilience::circuitbreaker::CircuitBreakerLayer;
    use tower_resilience::fallback::FallbackLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer;

    let time_limiter = TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(1))
        .build();
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent_calls(1000)
        .reject_when_full()
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .minimum_number_of_calls(20)
        .build()
        .unwrap();
    let svc = time_limiter.layer(ok_service());
    let svc = bulkhead.layer(svc);
    let svc = breaker.layer(svc);
    FallbackLayer::value(42u64).layer(svc)
}

criterion_group!(benches, stack);
criterion_main!(benches);
