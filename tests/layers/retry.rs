//! The retry stage in paused time: attempts, backoff bounds, pushback, the budget under
//! a storm, the deadline, rejections and kills not retried, live changes mid-flight.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use substation::clock::Clock;
use substation::fallback::Fallback;
use substation::retry::{Errors, Retryable, Verdict};
use substation::settings::{Jitter, PolicySettings};
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// A dependency that fails its first `fail` calls (all of them if `u32::MAX`), taking
/// `latency` each, and logs when each attempt started.
#[derive(Clone)]
struct Dep {
    calls: Arc<AtomicU32>,
    starts: Arc<Mutex<Vec<Instant>>>,
    fail: Arc<AtomicU32>,
    latency: Duration,
}

impl Dep {
    fn new(fail: u32, latency: Duration) -> Self {
        Dep {
            calls: Arc::default(),
            starts: Arc::default(),
            fail: Arc::new(AtomicU32::new(fail)),
            latency,
        }
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let d = self.clone();
        service_fn(move |n: u32| {
            let d = d.clone();
            async move {
                d.starts.lock().unwrap().push(Instant::now());
                let i = d.calls.fetch_add(1, Relaxed);
                if !d.latency.is_zero() {
                    tokio::time::sleep(d.latency).await;
                }
                if i < d.fail.load(Relaxed) {
                    Err::<u32, BoxError>("connection reset".into())
                } else {
                    Ok(n)
                }
            }
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Relaxed)
    }

    fn gaps(&self) -> Vec<Duration> {
        let s = self.starts.lock().unwrap();
        s.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn policy(name: &str, f: impl FnOnce(&mut PolicySettings)) -> Policy {
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 1_000_000; // the breaker stays closed unless a test says so
    s.timeout.ms = None;
    f(&mut s);
    Policy::with_clock(name, s, Clock::tokio()).unwrap()
}

fn copy() -> Errors<fn(&u32) -> Option<u32>> {
    Errors::cloning(|n: &u32| Some(*n))
}

#[tokio::test(start_paused = true)]
async fn a_flaky_call_is_retried_until_it_succeeds_and_counted() {
    let p = policy("retry-flaky", |s| s.retry.max_attempts = 4);
    let dep = Dep::new(2, Duration::from_millis(5));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    assert_eq!(svc.oneshot(9).await.unwrap(), 9);
    assert_eq!(dep.calls(), 3);
    let stats = p.stats();
    assert_eq!(stats.totals.retries, 2);
    assert_eq!(
        (stats.totals.failure, stats.totals.success),
        (2, 1),
        "every attempt counted"
    );
}

#[tokio::test(start_paused = true)]
async fn off_by_default_and_spent_retries_end_in_the_fallback() {
    // Default settings: one attempt.
    let p = policy("retry-off", |_| {});
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(dep.calls(), 1);

    let p = policy("retry-spent", |s| s.retry.max_attempts = 3);
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p)
        .fallback(Fallback::new().static_value(0))
        .retry(copy())
        .layer(dep.service());
    assert_eq!(
        svc.oneshot(1).await.unwrap(),
        0,
        "the fallback answers at the end"
    );
    assert_eq!(dep.calls(), 3);
    assert_eq!(p.stats().fallback_totals.static_.served, 1);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_waits_stay_within_the_exponential_cap() {
    let p = policy("retry-backoff", |s| {
        s.retry.max_attempts = 6;
        s.retry.backoff_min_ms = 100;
        s.retry.backoff_max_ms = 1_000;
    });
    for _ in 0..20 {
        let dep = Dep::new(u32::MAX, Duration::ZERO);
        let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
        let _ = svc.oneshot(1).await;
        assert_eq!(dep.calls(), 6);
        for (i, gap) in dep.gaps().into_iter().enumerate() {
            let cap = Duration::from_millis((100u64 << i).min(1_000));
            assert!(
                gap <= cap + Duration::from_millis(1),
                "retry {}: {gap:?} > {cap:?}",
                i + 1
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn decorrelated_waits_stay_between_min_and_max() {
    let p = policy("retry-decorrelated", |s| {
        s.retry.max_attempts = 8;
        s.retry.backoff_min_ms = 50;
        s.retry.backoff_max_ms = 400;
        s.retry.jitter = Jitter::Decorrelated;
    });
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let _ = svc.oneshot(1).await;
    for gap in dep.gaps() {
        assert!(
            (Duration::from_millis(50)..=Duration::from_millis(401)).contains(&gap),
            "{gap:?}"
        );
    }
}

/// Retries every error after the server's pushback.
struct Pushback(Duration);

impl Retryable<u32, u32> for Pushback {
    fn clone_request(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }
    fn verdict(&self, result: &Result<u32, BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Done,
            Err(_) => Verdict::RetryAfter(self.0),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_servers_pushback_is_the_wait_up_to_its_cap() {
    let p = policy("retry-pushback", |s| {
        s.retry.max_attempts = 3;
        s.retry.pushback_max_ms = 2_000;
    });
    let dep = Dep::new(2, Duration::ZERO);
    let svc = PolicyLayer::new(&p)
        .retry(Pushback(Duration::from_millis(1_500)))
        .layer(dep.service());
    assert_eq!(svc.oneshot(4).await.unwrap(), 4);
    assert_eq!(dep.gaps(), [Duration::from_millis(1_500); 2]);

    // Longer than the cap: not retried.
    let dep = Dep::new(2, Duration::ZERO);
    let svc = PolicyLayer::new(&p)
        .retry(Pushback(Duration::from_millis(2_500)))
        .layer(dep.service());
    assert!(svc.oneshot(4).await.is_err());
    assert_eq!(dep.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_storm_is_held_to_the_budget() {
    // 10,000 requests, the dependency failing every one, three attempts allowed each:
    // without a budget 30,000 attempts; with 20 % + 10/s over 10 s, at most
    // 10,000 × 1.2 + 100.
    let p = policy("retry-storm", |s| {
        s.retry.max_attempts = 3;
        s.retry.backoff_min_ms = 1;
        s.retry.backoff_max_ms = 1;
    });
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let mut calls = Vec::new();
    for i in 0..10_000u32 {
        calls.push(tokio::spawn(svc.clone().oneshot(i)));
        if i % 100 == 99 {
            // 100 requests per 10 ms: the whole storm within the budget's window.
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }
    for c in calls {
        assert!(c.await.unwrap().is_err());
    }
    let attempts = dep.calls();
    let stats = p.stats().totals;
    eprintln!(
        "storm: {attempts} attempts, {} retries, {} refused",
        stats.retries, stats.retries_refused
    );
    assert!(attempts <= 12_100, "{attempts} attempts");
    assert!(
        attempts > 10_000,
        "the budget allowed some retries: {attempts}"
    );
    assert_eq!(u64::from(attempts), 10_000 + stats.retries);
    assert!(stats.retries_refused > 0);
}

#[tokio::test(start_paused = true)]
async fn rejections_and_kills_are_not_retried() {
    // An open breaker: the first attempt is rejected; no retry.
    let p = policy("retry-open", |s| {
        s.retry.max_attempts = 5;
        s.breaker.mode = substation::settings::BreakerMode::ForceOpen;
    });
    let dep = Dep::new(0, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!((dep.calls(), p.stats().totals.retries), (0, 0));

    let p = policy("retry-killed", |s| {
        s.retry.max_attempts = 5;
        s.kill = true;
    });
    let svc = PolicyLayer::new(&p)
        .fallback(Fallback::new().static_value(7))
        .retry(copy())
        .layer(dep.service());
    assert_eq!(svc.oneshot(1).await.unwrap(), 7);
    assert_eq!((dep.calls(), p.stats().totals.retries), (0, 0));

    // A request that cannot be copied is sent once.
    let p = policy("retry-no-copy", |s| s.retry.max_attempts = 5);
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p)
        .retry(Errors::cloning(|_: &u32| None))
        .layer(dep.service());
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(dep.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_all_attempts_together() {
    let p = policy("retry-deadline", |s| {
        s.retry.max_attempts = 10;
        s.retry.backoff_min_ms = 1;
        s.retry.backoff_max_ms = 1;
        s.retry.deadline_ms = Some(250);
    });
    let dep = Dep::new(u32::MAX, Duration::from_millis(100));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let start = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<substation::timeout::error::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(dep.calls(), 3, "the third attempt was cut short");
    let t = p.stats().totals;
    assert_eq!(
        (t.failure, t.timeout),
        (2, 1),
        "two failed, the third cut: a timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn settings_changed_mid_flight_apply_to_the_next_decision() {
    let p = policy("retry-live", |s| {
        s.retry.max_attempts = 5;
        s.retry.backoff_min_ms = 100;
        s.retry.backoff_max_ms = 100;
        s.retry.jitter = Jitter::Decorrelated; // min = max: exactly 100 ms
    });
    let dep = Dep::new(u32::MAX, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let call = tokio::spawn(svc.oneshot(1));
    tokio::time::sleep(Duration::from_millis(150)).await; // two attempts made
    assert_eq!(dep.calls(), 2);
    let mut s = (*p.settings()).clone();
    s.retry.max_attempts = 3;
    p.update(s).unwrap();
    assert!(call.await.unwrap().is_err());
    assert_eq!(dep.calls(), 3, "stopped at the new maximum");

    // And switched on live for the next call.
    let p = policy("retry-live-on", |_| {});
    let dep = Dep::new(1, Duration::ZERO);
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    assert!(svc.clone().oneshot(1).await.is_err());
    let mut s = (*p.settings()).clone();
    s.retry.max_attempts = 2;
    p.update(s).unwrap();
    dep.fail.store(2, Relaxed);
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(dep.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_dropped_by_the_caller_is_cancelled() {
    let p = policy("retry-cancel", |s| s.retry.max_attempts = 3);
    let dep = Dep::new(u32::MAX, Duration::from_millis(50));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let r = tokio::time::timeout(Duration::from_millis(75), svc.oneshot(1)).await;
    assert!(r.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(dep.calls(), 2, "nothing ran after the caller gave up");
    assert_eq!(p.in_flight(), 0);
}

/// A dependency whose `n`th call (from 0) takes `slow(n)`; counts futures dropped
/// before they finished.
#[derive(Clone)]
struct Tail {
    calls: Arc<AtomicU32>,
    cancelled: Arc<AtomicU32>,
    slow: Arc<dyn Fn(u32) -> Duration + Send + Sync>,
}

struct OnDrop(Arc<AtomicU32>, bool);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Relaxed);
        }
    }
}

impl Tail {
    fn new(slow: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        Tail {
            calls: Arc::default(),
            cancelled: Arc::default(),
            slow: Arc::new(slow),
        }
    }

    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let t = self.clone();
        service_fn(move |req: u32| {
            let n = t.calls.fetch_add(1, Relaxed);
            let wait = (t.slow)(n);
            let guard = OnDrop(t.cancelled.clone(), false);
            async move {
                let mut guard = guard; // moved in whole
                tokio::time::sleep(wait).await;
                guard.1 = true;
                Ok::<u32, BoxError>(req + n * 1000)
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_wins_over_a_slow_first_attempt_which_is_cancelled() {
    let p = policy("hedge-winner", |s| {
        s.hedge.max_extra = 1;
        s.hedge.delay_ms = Some(50);
    });
    // The first call is slow (1 s), the hedge fast (10 ms).
    let dep = Tail::new(|n| Duration::from_millis(if n == 0 { 1_000 } else { 10 }));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let start = Instant::now();
    assert_eq!(
        svc.oneshot(5).await.unwrap(),
        1_005,
        "the hedge (call 1) answered"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    assert_eq!(
        dep.cancelled.load(Relaxed),
        1,
        "the slow attempt was dropped"
    );
    assert_eq!(p.stats().totals.hedges, 1);
    assert_eq!(p.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn hedges_go_out_one_per_delay_up_to_the_maximum() {
    let p = policy("hedge-max", |s| {
        s.hedge.max_extra = 3;
        s.hedge.delay_ms = Some(50);
    });
    // Every call takes 1 s: hedges at 50, 100 and 150 ms; the first attempt answers.
    let dep = Tail::new(|_| Duration::from_secs(1));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let start = Instant::now();
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(dep.calls.load(Relaxed), 4);
    assert_eq!(dep.cancelled.load(Relaxed), 3);

    // A request that may not be sent twice is not hedged.
    let dep = Tail::new(|_| Duration::from_secs(1));
    let svc = PolicyLayer::new(&p)
        .retry(Errors::cloning(|_: &u32| None))
        .layer(dep.service());
    svc.oneshot(5).await.unwrap();
    assert_eq!(dep.calls.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_waits_for_the_observed_percentile() {
    let p = policy("hedge-percentile", |s| {
        s.hedge.max_extra = 1;
        s.hedge.at_percentile = Some(95.0);
    });
    // 100 calls of 20 ms teach the policy its p95 (the flush computes it).
    let dep = Tail::new(|n| Duration::from_millis(if n == 100 { 1_000 } else { 20 }));
    let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
    let settings = (*p.settings()).clone();
    let mut off = settings.clone();
    off.hedge.max_extra = 0;
    p.update(off).unwrap();
    for i in 0..100 {
        svc.clone().oneshot(i).await.unwrap();
    }
    substation::metrics::flush();
    p.update(settings).unwrap();
    // Call 100 is slow: hedged at ≈ 20 ms (±12 %), answered 20 ms later.
    let start = Instant::now();
    assert_eq!(svc.oneshot(0).await.unwrap(), 101_000);
    let took = start.elapsed();
    assert!(
        (Duration::from_millis(37)..=Duration::from_millis(43)).contains(&took),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hedging_cuts_a_tail_of_a_hundred_times_the_median() {
    // 5 % of calls take 100 × the median (2 ms → 200 ms); hedged after 10 ms.
    let run = |hedge: bool| async move {
        let p = policy(if hedge { "tail-hedged" } else { "tail-plain" }, |s| {
            if hedge {
                s.hedge.max_extra = 1;
                s.hedge.delay_ms = Some(10);
                s.retry.budget_percent = 10.0;
            }
        });
        let dep = Tail::new(|n| {
            Duration::from_millis(if fastrand_like(n).is_multiple_of(20) {
                200
            } else {
                2
            })
        });
        let svc = PolicyLayer::new(&p).retry(copy()).layer(dep.service());
        let mut took = Vec::new();
        for i in 0..2_000 {
            let start = Instant::now();
            svc.clone().oneshot(i).await.unwrap();
            took.push(start.elapsed());
        }
        took.sort();
        (took[took.len() * 99 / 100], dep.calls.load(Relaxed))
    };
    let (plain, plain_calls) = run(false).await;
    let (hedged, hedged_calls) = run(true).await;
    eprintln!(
        "p99 without hedging {plain:?} ({plain_calls} calls), with {hedged:?} ({hedged_calls} calls)"
    );
    assert_eq!(plain, Duration::from_millis(200));
    assert!(hedged <= Duration::from_millis(12), "{hedged:?}");
    assert!(hedged_calls <= 2_000 * 110 / 100, "{hedged_calls} calls");
}

/// A fixed pseudo-random sequence (splitmix64), so the tail is the same in both runs.
fn fastrand_like(n: u32) -> u64 {
    let mut z = u64::from(n).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
