//! `retry`: what a retry stage costs a call that succeeds at its first attempt (the
//! common case), beside its peers, in one run. The dependency answers at once.
//!
//! - `raw`: the service alone.
//! - `substation_stage`: substation's retry stage alone (`RetryLayer`), retries on
//!   (`retry.max_attempts` 3): a settings read, a copy of the request, a lease.
//! - `substation_stage_off`: the same with the default `max_attempts` of 1.
//! - `tower_retry_budget`: tower 0.5's `Retry` with a policy that copies the request
//!   and a `TpsBudget` (10 s window, 10 retries/s, 20 %), deposited per call as tower's
//!   documentation shows.
//! - `tower_resilience_retry`: tower-resilience 0.13's retry (3 attempts, exponential
//!   backoff from 25 ms), which boxes its future.
//! - `substation_stack` / `substation_stack_retry`: the whole policy stack (kill switch,
//!   bulkhead with a limit, breaker, timeout) without and with the retry stage on.
//!
//! Run with `cargo bench --workspace --bench retry`.

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Policy;
use substation::retry::{Errors, RetryLayer};
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation_benches::{Boom, drive};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service};

fn ok_service()
-> impl Service<u64, Response = u64, Error = Boom, Future = std::future::Ready<Result<u64, Boom>>>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Boom>(req)))
}

fn bench<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
) where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(drive(&mut svc, 7, &mut cx).unwrap(), 7, "{name}");
    g.bench_function(name, |b| {
        b.iter(|| black_box(drive(&mut svc, black_box(7), &mut cx).unwrap()))
    });
}

fn settings(attempts: u32) -> PolicySettings {
    PolicySettings::default().with(|s| {
        s.retry.max_attempts = attempts;
        s.bulkhead.max_concurrent = Some(1000);
    })
}

fn copy(n: &u64) -> Option<u64> {
    Some(*n)
}

/// tower's retry policy: copies the request, retries errors while the budget allows.
#[derive(Clone)]
struct TowerPolicy(Arc<TpsBudget>);

impl tower::retry::Policy<u64, u64, Boom> for TowerPolicy {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, Boom>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| std::future::ready(())),
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn retry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("retry");

    bench(&mut g, "raw", ok_service());

    let on = Policy::new("retry-on", settings(3)).unwrap();
    // The function item (a zero-sized type, called directly), as a closure would be.
    let errors = || Errors::cloning(copy);
    bench(
        &mut g,
        "substation_stage",
        RetryLayer::new(&on, errors()).layer(ok_service()),
    );
    let off = Policy::new("retry-off", settings(1)).unwrap();
    bench(
        &mut g,
        "substation_stage_off",
        RetryLayer::new(&off, errors()).layer(ok_service()),
    );

    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    bench(
        &mut g,
        "tower_retry_budget",
        tower::retry::Retry::new(TowerPolicy(budget), ok_service()),
    );

    let layer = tower_resilience::retry::RetryLayer::<u64, u64, Boom>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(25))
        .build();
    bench(&mut g, "tower_resilience_retry", layer.layer(ok_service()));

    let plain = Policy::new("stack", settings(1)).unwrap();
    bench(
        &mut g,
        "substation_stack",
        PolicyLayer::new(&plain).layer(ok_service()),
    );
    bench(
        &mut g,
        "substation_stack_retry",
        PolicyLayer::new(&on).retry(errors()).layer(ok_service()),
    );

    g.finish();
}

criterion_group!(benches, retry);
criterion_main!(benches);
