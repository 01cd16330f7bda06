//! What a resilience layer costs per call, next to its peers.
//!
//! Every case drives the same inner service, a `tower::service_fn` whose future is ready
//! at once, so what is measured is the layer itself. One call is `poll_ready`, `call`
//! and one poll of the returned future, all with a no-op waker; every future here
//! completes on that first poll (the harness panics if one does not), and the result is
//! passed through `black_box`. The harness is the same function for every case.
//!
//! Groups (their names are parsed by tools; keep them):
//!
//! - `breaker_closed`: a healthy breaker admitting calls (`raw` is the bare
//!   `service_fn`, the baseline).
//! - `breaker_open`: a breaker genuinely tripped by failing calls through the same
//!   breaker, with an open duration of an hour, measuring the rejected call.
//! - `breaker_closed_2threads`: two OS threads sharing one closed breaker, each with its
//!   own clone of the service, started together by a barrier; the time reported is the
//!   slower thread's time per call.
//! - `timeout`: `tower::timeout::Timeout` next to substation's timeout layer, both at
//!   one second, inside a current-thread tokio runtime entered once per group (tower's
//!   `call` starts a `tokio::time::sleep`, reading the clock; substation's arms a timer
//!   only if the inner future is pending, so here it reads no clock at all).
//!
//! Breakers and how each is set up (as its authors intend for an async or Tower call):
//!
//! - `substation`: `breaker::CircuitBreakerLayer` over a `Policy` with the default
//!   rolling window (10 s in 10 buckets), at least 20 calls, 50 % error rate, open for
//!   an hour; `timeout::TimeoutLayer` with `timeout.ms = 1000`.
//! - `recloser`: an `AsyncRecloser` (ring buffer of 20 calls, 50 % error rate) whose
//!   `call` wraps the inner future; recloser has no Tower service, so a thin
//!   [`RecloserService`] does `breaker.call(inner.call(req))`.
//! - `failsafe`: a `failsafe::StateMachine` built like `Config::new()` (success rate over
//!   a time window, or else consecutive failures), with a 50 % success rate over 30 s,
//!   at least 20 calls, or 20 consecutive failures; `futures::CircuitBreaker::call`
//!   wraps the inner future in the same thin kind of service ([`FailsafeService`]).
//! - `tower_resilience`: its own Tower `CircuitBreakerLayer`, 50 % failure rate over a
//!   count-based window of 20 calls, at least 20 calls.
//!
//! Run with `cargo bench --workspace --bench overhead`.

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use substation_benches::{Boom, drive, two_threads};
use tower::{Layer, Service};

/// The open duration every breaker is given for `breaker_open`: longer than any run.
const OPEN_FOR: Duration = Duration::from_secs(3600);

/// Calls a breaker must see before it may open, for every breaker that has such a knob.
const MIN_CALLS: usize = 20;

/// Failing calls driven at most to trip a breaker; each breaker must be open well before.
const MAX_TRIP_CALLS: usize = 1_000;

/// The inner service of every case: answers at once with the request.
fn ok_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Boom>(req)))
}

/// The service used to trip breakers: fails at once.
fn failing_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: u64| std::future::ready(Err::<u64, Boom>(Boom)))
}

/// A context whose waker does nothing.
fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Drives failing calls through `svc` until `is_open()` says the breaker has opened.
fn trip<S: Service<u64>>(svc: &mut S, mut is_open: impl FnMut() -> bool, who: &str) {
    let mut cx = noop_cx();
    for n in 0..MAX_TRIP_CALLS {
        if is_open() {
            assert!(
                n >= MIN_CALLS,
                "{who} opened after {n} calls, before its minimum"
            );
            return;
        }
        let _ = drive(svc, n as u64, &mut cx);
    }
    assert!(
        is_open(),
        "{who} did not open after {MAX_TRIP_CALLS} failing calls"
    );
}

/// Benchmarks calls that must succeed.
fn bench_ok<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
{
    let mut cx = noop_cx();
    g.bench_function(name, |b| {
        b.iter(|| match drive(&mut svc, black_box(7), &mut cx) {
            Ok(v) => black_box(v),
            Err(_) => panic!("a call was refused"),
        })
    });
}

/// Benchmarks calls that must be rejected.
fn bench_rejected<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
{
    let mut cx = noop_cx();
    g.bench_function(name, |b| {
        b.iter(|| match drive(&mut svc, black_box(7), &mut cx) {
            Ok(_) => panic!("an open breaker admitted a call"),
            Err(e) => black_box(e),
        })
    });
}

/// A current-thread tokio runtime with its clock, for layers that read tokio's time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// substation

/// A policy of its own (names are labels) with this benchmark's settings: the default
/// window (10 s in 10 buckets), at least 20 calls, 50 % error rate, open for an hour,
/// and a 1 s timeout.
fn substation_policy(name: &str) -> substation::Policy {
    let mut s = substation::settings::PolicySettings::default();
    s.breaker.min_calls = MIN_CALLS as u32;
    s.breaker.error_rate = 50.0;
    s.breaker.open_ms = OPEN_FOR.as_millis() as u64;
    // The backoff cap must be at least `open_ms` (backoff itself stays off).
    s.breaker.open_max_ms = s.breaker.open_ms;
    s.timeout.ms = Some(1_000);
    substation::Policy::new(name, s).expect("valid substation settings")
}

/// A substation breaker tripped by failing calls through a second service of the same
/// policy, and an ok service behind it.
fn substation_open() -> impl Service<u64, Response = u64> {
    use substation::breaker::{BreakerState, CircuitBreakerLayer};
    let policy = substation_policy("bench-open");
    let layer = CircuitBreakerLayer::new(&policy);
    let mut failing = layer.layer(failing_service());
    trip(
        &mut failing,
        || policy.breaker_state() == BreakerState::Open,
        "substation",
    );
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    layer.layer(ok_service())
}

// ---------------------------------------------------------------------------------------
// recloser

/// `recloser`'s async breaker as a Tower service: `breaker.call(inner.call(req))`.
#[derive(Clone)]
struct RecloserService<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S: Service<u64>> Service<u64> for RecloserService<S> {
    type Response = S::Response;
    type Error = recloser::Error<S::Error>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

fn recloser_breaker() -> recloser::AsyncRecloser {
    recloser::AsyncRecloser::from(
        recloser::Recloser::custom()
            .error_rate(0.5)
            .closed_len(MIN_CALLS)
            .open_wait(OPEN_FOR)
            .build(),
    )
}

fn recloser_service<S>(inner: S, breaker: &recloser::AsyncRecloser) -> RecloserService<S> {
    RecloserService {
        inner,
        breaker: breaker.clone(),
    }
}

/// A recloser breaker tripped by failing calls, and an ok service behind it.
fn recloser_open() -> impl Service<u64, Response = u64> {
    let breaker = recloser_breaker();
    let mut failing = recloser_service(failing_service(), &breaker);
    // Recloser has no state query: a call rejected rather than failed shows it is open.
    let mut cx = noop_cx();
    let opened_after = (0..MAX_TRIP_CALLS)
        .find(|&n| {
            matches!(
                drive(&mut failing, n as u64, &mut cx),
                Err(recloser::Error::Rejected)
            )
        })
        .expect("recloser did not open");
    assert!(
        opened_after >= MIN_CALLS,
        "recloser opened after {opened_after} calls"
    );
    recloser_service(ok_service(), &breaker)
}

// ---------------------------------------------------------------------------------------
// failsafe

type FailsafePolicy = failsafe::failure_policy::OrElse<
    failsafe::failure_policy::SuccessRateOverTimeWindow<failsafe::backoff::Constant>,
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
>;
type FailsafeBreaker = failsafe::StateMachine<FailsafePolicy, ()>;

/// `failsafe`'s futures breaker as a Tower service: `breaker.call(inner.call(req))`.
#[derive(Clone)]
struct FailsafeService<S> {
    inner: S,
    breaker: FailsafeBreaker,
}

impl<S: Service<u64>> Service<u64> for FailsafeService<S> {
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<S::Future, FailsafePolicy, (), failsafe::Any>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(&self.breaker, self.inner.call(req))
    }
}

/// Shaped like `failsafe::Config::new()` (success rate over a window, or else consecutive
/// failures), with this benchmark's thresholds and a constant hour-long open duration.
fn failsafe_breaker() -> FailsafeBreaker {
    use failsafe::FailurePolicy;
    let backoff = failsafe::backoff::constant(OPEN_FOR);
    let policy = failsafe::failure_policy::success_rate_over_time_window(
        0.5,
        MIN_CALLS as u32,
        Duration::from_secs(30),
        backoff.clone(),
    )
    .or_else(failsafe::failure_policy::consecutive_failures(
        MIN_CALLS as u32,
        backoff,
    ));
    failsafe::Config::new().failure_policy(policy).build()
}

fn failsafe_service<S>(inner: S, breaker: &FailsafeBreaker) -> FailsafeService<S> {
    FailsafeService {
        inner,
        breaker: breaker.clone(),
    }
}

/// A failsafe breaker tripped by failing calls, and an ok service behind it.
fn failsafe_open() -> impl Service<u64, Response = u64> {
    let breaker = failsafe_breaker();
    let mut failing = failsafe_service(failing_service(), &breaker);
    // The success-rate policy may not open within its first 30 s window; the
    // consecutive-failures half of the policy opens after 20 failures in a row.
    trip(&mut failing, || !breaker.is_call_permitted(), "failsafe");
    failsafe_service(ok_service(), &breaker)
}

// ---------------------------------------------------------------------------------------
// tower-resilience

fn tower_resilience_builder() -> tower_resilience::circuitbreaker::CircuitBreakerConfigBuilder<
    tower_resilience::circuitbreaker::DefaultClassifier,
> {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(MIN_CALLS)
        .minimum_number_of_calls(MIN_CALLS)
        .wait_duration_in_open(OPEN_FOR)
}

/// A tower-resilience breaker tripped by failing calls, and an ok service behind it.
fn tower_resilience_open() -> impl Service<u64, Response = u64> {
    // `build_with_handle` makes every service from the layer share one circuit.
    let (layer, handle) = tower_resilience_builder()
        .build_with_handle()
        .expect("valid tower-resilience settings");
    let mut failing = layer.layer(failing_service());
    trip(&mut failing, || handle.is_open(), "tower-resilience");
    layer.layer(ok_service())
}

// ---------------------------------------------------------------------------------------
// groups

fn breaker_closed(c: &mut Criterion) {
    let rt = runtime();
    let _rt = rt.enter();
    let mut g = c.benchmark_group("breaker_closed");

    bench_ok(&mut g, "raw", ok_service());

    let policy = substation_policy("bench-closed");
    bench_ok(
        &mut g,
        "substation",
        substation::breaker::CircuitBreakerLayer::new(&policy).layer(ok_service()),
    );

    let breaker = recloser_breaker();
    bench_ok(&mut g, "recloser", recloser_service(ok_service(), &breaker));

    let breaker = failsafe_breaker();
    bench_ok(&mut g, "failsafe", failsafe_service(ok_service(), &breaker));

    let layer = tower_resilience_builder()
        .build()
        .expect("valid tower-resilience settings");
    bench_ok(&mut g, "tower_resilience", layer.layer(ok_service()));

    g.finish();
}

fn breaker_open(c: &mut Criterion) {
    let rt = runtime();
    let _rt = rt.enter();
    let mut g = c.benchmark_group("breaker_open");

    bench_rejected(&mut g, "substation", substation_open());

    bench_rejected(&mut g, "recloser", recloser_open());
    bench_rejected(&mut g, "failsafe", failsafe_open());
    bench_rejected(&mut g, "tower_resilience", tower_resilience_open());

    g.finish();
}

fn breaker_closed_2threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker_closed_2threads");

    let policy = substation_policy("bench-closed-2threads");
    let svc = substation::breaker::CircuitBreakerLayer::new(&policy).layer(ok_service());
    g.bench_function("substation", |b| {
        b.iter_custom(|iters| two_threads(&svc, iters))
    });

    let breaker = recloser_breaker();
    let svc = recloser_service(ok_service(), &breaker);
    g.bench_function("recloser", |b| {
        b.iter_custom(|iters| two_threads(&svc, iters))
    });

    let breaker = failsafe_breaker();
    let svc = failsafe_service(ok_service(), &breaker);
    g.bench_function("failsafe", |b| {
        b.iter_custom(|iters| two_threads(&svc, iters))
    });

    g.finish();
}

fn timeout(c: &mut Criterion) {
    // `tower::timeout::Timeout::call` starts a `tokio::time::sleep`, which needs a runtime.
    let rt = runtime();
    let _rt = rt.enter();
    let mut g = c.benchmark_group("timeout");

    bench_ok(
        &mut g,
        "tower",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(ok_service()),
    );

    let policy = substation_policy("bench-timeout");
    bench_ok(
        &mut g,
        "substation",
        substation::timeout::TimeoutLayer::new(&policy).layer(ok_service()),
    );

    g.finish();
}

criterion_group!(
    benches,
    breaker_closed,
    breaker_open,
    breaker_closed_2threads,
    timeout
);
criterion_main!(benches);
