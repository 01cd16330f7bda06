use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use substation::breaker::error::OpenCircuit;
use substation::breaker::{BreakerState, CircuitBreakerLayer, WindowCounts};
use substation::clock::Clock;
use substation::settings::{BreakerMode, PolicySettings};
use substation::timeout::TimeoutLayer;
use substation::{BoxError, Policy};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

use crate::support::{Flaky, call_now};

fn settings(f: impl FnOnce(&mut PolicySettings)) -> PolicySettings {
    let mut s = PolicySettings::default();
    f(&mut s);
    s
}

#[test]
fn opens_rejects_half_opens_and_closes_on_injected_time() {
    let (clock, time) = Clock::manual();
    let policy = Policy::with_clock("state-machine", PolicySettings::default(), clock).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());

    // 19 failures: below the minimum volume of 20.
    flaky.fail(true);
    for _ in 0..19 {
        assert!(call_now(&mut svc, 1).is_err());
    }
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    assert_eq!(
        policy.window(),
        WindowCounts {
            calls: 19,
            failures: 19,
            slow: 0
        }
    );
    assert!(call_now(&mut svc, 1).is_err());
    assert_eq!(policy.breaker_state(), BreakerState::Open);

    // Open: rejected without reaching the service.
    let before = flaky.calls();
    let err = call_now(&mut svc, 1).unwrap_err();
    assert!(err.is::<OpenCircuit>(), "{err}");
    assert_eq!(flaky.calls(), before);

    // 5 s later: one trial. It fails: open again.
    time.advance(Duration::from_millis(4_999));
    assert!(call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>());
    time.advance(Duration::from_millis(1));
    assert!(!call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>());
    assert_eq!(flaky.calls(), before + 1);
    assert_eq!(policy.breaker_state(), BreakerState::Open);

    // The dependency heals; the next trial closes the breaker with an empty window.
    flaky.fail(false);
    time.advance(Duration::from_secs(5));
    assert_eq!(call_now(&mut svc, 7).unwrap(), 7);
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    assert_eq!(policy.window(), WindowCounts::default());
    assert_eq!(call_now(&mut svc, 8).unwrap(), 8);
}

#[test]
fn error_rate_is_a_rate_over_the_window() {
    let (clock, _time) = Clock::manual();
    let policy = Policy::with_clock("rate", PolicySettings::default(), clock).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    for _ in 0..30 {
        call_now(&mut svc, 1).unwrap();
    }
    flaky.fail(true);
    for _ in 0..29 {
        let _ = call_now(&mut svc, 1);
    }
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Closed,
        "29 of 59 < 50 %"
    );
    let _ = call_now(&mut svc, 1);
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Open,
        "30 of 60 = 50 %"
    );
}

#[test]
fn the_window_forgets() {
    // One peer needs 10,000 failures to open after 10,000 successes; a time window
    // forgets the successes once they are older than the window.
    let (clock, time) = Clock::manual();
    let policy = Policy::with_clock("forgets", PolicySettings::default(), clock.clone()).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    for _ in 0..10_000 {
        call_now(&mut svc, 1).unwrap();
    }
    time.advance(Duration::from_secs(10));
    assert_eq!(policy.window().calls, 0);
    flaky.fail(true);
    for i in 1..=20 {
        let _ = call_now(&mut svc, 1);
        let expected = if i < 20 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(policy.breaker_state(), expected, "after {i} failures");
    }
    // Within the window the successes still count: 10,000 successes, then failures
    // open the breaker exactly when they reach half of the calls.
    let policy = Policy::with_clock("forgets-2", PolicySettings::default(), clock).unwrap();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    flaky.fail(false);
    for _ in 0..100 {
        call_now(&mut svc, 1).unwrap();
    }
    time.advance(Duration::from_millis(9_500));
    flaky.fail(true);
    for _ in 0..99 {
        let _ = call_now(&mut svc, 1);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Closed, "99 of 199");
    time.advance(Duration::from_millis(600)); // the successes' bucket leaves the window
    let _ = call_now(&mut svc, 1);
    assert_eq!(policy.breaker_state(), BreakerState::Open);
}

#[test]
fn slow_calls_open_the_breaker_when_enabled() {
    let (clock, time) = Clock::manual();
    let s = settings(|s| {
        s.breaker.slow_call_ms = Some(100);
        s.breaker.slow_call_rate = 50.0;
        s.breaker.min_calls = 4;
    });
    let policy = Policy::with_clock("slow", s, clock).unwrap();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(service_fn(move |ms: u64| {
        // A "slow" response: the injected clock moves while the call runs.
        time.advance(Duration::from_millis(ms));
        std::future::ready(Ok::<_, BoxError>(ms))
    }));
    call_now(&mut svc, 5).unwrap();
    call_now(&mut svc, 5).unwrap();
    call_now(&mut svc, 150).unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    call_now(&mut svc, 150).unwrap();
    assert_eq!(policy.window().slow, 2);
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Open,
        "2 of 4 slow = 50 %"
    );
}

#[test]
fn modes_apply_live_and_keep_the_window() {
    let (clock, _time) = Clock::manual();
    let policy = Policy::with_clock("modes", PolicySettings::default(), clock).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    flaky.fail(true);
    for _ in 0..10 {
        let _ = call_now(&mut svc, 1);
    }
    // A threshold change keeps the counts ...
    policy
        .update(settings(|s| s.breaker.min_calls = 11))
        .unwrap();
    assert_eq!(policy.window().failures, 10);
    let _ = call_now(&mut svc, 1);
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Open,
        "11 failures, min 11"
    );

    // ... force-closed admits everything and closes the breaker ...
    policy
        .update(settings(|s| s.breaker.mode = BreakerMode::ForceClosed))
        .unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::ForcedClosed);
    for _ in 0..50 {
        assert!(!call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>());
    }
    assert_eq!(policy.breaker_state(), BreakerState::ForcedClosed);

    // ... force-open rejects everything, even a healthy dependency ...
    flaky.fail(false);
    policy
        .update(settings(|s| s.breaker.mode = BreakerMode::ForceOpen))
        .unwrap();
    assert_eq!(
        policy.breaker_state(),
        BreakerState::ForcedOpen,
        "what callers meet, not the closed machine underneath"
    );
    let calls = flaky.calls();
    assert!(call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>());
    assert_eq!(flaky.calls(), calls);

    // ... and a new window shape starts an empty window.
    policy
        .update(settings(|s| s.breaker.min_calls = 5))
        .unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::Closed, "normal again");
    call_now(&mut svc, 1).unwrap();
    assert_eq!(policy.window().calls, 51);
    policy
        .update(settings(|s| {
            s.breaker.window_ms = 20_000;
            s.breaker.buckets = 20;
        }))
        .unwrap();
    assert_eq!(policy.window(), WindowCounts::default());
}

#[test]
fn metrics_only_never_rejects_but_runs_the_state_machine() {
    let (clock, _time) = Clock::manual();
    let s = settings(|s| s.breaker.mode = BreakerMode::MetricsOnly);
    let policy = Policy::with_clock("dry-run", s, clock).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    flaky.fail(true);
    for _ in 0..40 {
        let err = call_now(&mut svc, 1).unwrap_err();
        assert!(!err.is::<OpenCircuit>());
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    assert_eq!(flaky.calls(), 40);
}

#[test]
fn backoff_lengthens_repeated_opens() {
    let (clock, time) = Clock::manual();
    let s = settings(|s| {
        s.breaker.min_calls = 1;
        s.breaker.open_ms = 1_000;
        s.breaker.open_backoff = 2.0;
        s.breaker.open_max_ms = 3_000;
    });
    let policy = Policy::with_clock("backoff", s, clock).unwrap();
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    flaky.fail(true);
    let _ = call_now(&mut svc, 1);
    for open_ms in [1_000, 2_000, 3_000, 3_000] {
        time.advance(Duration::from_millis(open_ms - 1));
        assert!(
            call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>(),
            "still open"
        );
        time.advance(Duration::from_millis(1));
        let trial = call_now(&mut svc, 1).unwrap_err();
        assert!(!trial.is::<OpenCircuit>(), "trial after {open_ms} ms");
        assert_eq!(policy.breaker_state(), BreakerState::Open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_get_exactly_n_trials() {
    for trials in [1u32, 3] {
        let (clock, time) = Clock::manual();
        let s = settings(|s| {
            s.breaker.min_calls = 1;
            s.breaker.half_open_calls = trials;
        });
        let policy = Policy::with_clock(&format!("herd-{trials}"), s, clock).unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let inner = {
            let reached = reached.clone();
            let release = release.clone();
            service_fn(move |fail: bool| {
                let reached = reached.clone();
                let release = release.clone();
                async move {
                    if fail {
                        return Err(std::io::Error::other("boom"));
                    }
                    reached.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<(), std::io::Error>(())
                }
            })
        };
        let svc = CircuitBreakerLayer::new(&policy).layer(inner);
        let _ = svc.clone().oneshot(true).await;
        assert_eq!(policy.breaker_state(), BreakerState::Open);
        time.advance(Duration::from_secs(5));

        let start = Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let svc = svc.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    svc.oneshot(false).await
                })
            })
            .collect();
        // Every caller but the trials is rejected at once; the trials park in the inner
        // service until released.
        let expect_rejected = 1000 - trials as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let finished = tasks.iter().filter(|t| t.is_finished()).count();
            let inside = reached.load(Ordering::SeqCst);
            if finished == expect_rejected && inside == trials as usize {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "finished {finished}, reached the service {inside}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (done, parked): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
        for t in done {
            assert!(t.await.unwrap().unwrap_err().is::<OpenCircuit>());
        }
        assert_eq!(parked.len(), trials as usize);
        assert_eq!(reached.load(Ordering::SeqCst), trials as usize);
        assert_eq!(policy.breaker_state(), BreakerState::HalfOpen);
        while !parked.iter().all(|t| t.is_finished()) {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        for t in parked {
            t.await.unwrap().unwrap();
        }
        assert_eq!(policy.breaker_state(), BreakerState::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trial_gives_its_permit_back() {
    let s = settings(|s| {
        s.breaker.min_calls = 1;
        s.timeout.ms = None;
    });
    let policy = Policy::with_clock("dropped-trial", s, Clock::tokio()).unwrap();
    let svc = CircuitBreakerLayer::new(&policy).layer(service_fn(|ms: u64| async move {
        if ms == 0 {
            return Err::<(), BoxError>("boom".into());
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }));
    let _ = svc.clone().oneshot(0).await;
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;

    // The trial hangs; its caller gives up.
    let gave_up =
        tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(3_600_000)).await;
    assert!(gave_up.is_err());
    assert_eq!(policy.breaker_state(), BreakerState::HalfOpen);
    // Its permit is back: the next caller is the trial, and closes the breaker.
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::Closed);

    // A service that is ready and idle (a balancer's ready cache) holds no permit: the
    // trial is taken when a call is made, so another caller gets it.
    let _ = svc.clone().oneshot(0).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let mut idle = svc.clone();
    idle.ready().await.unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    idle.call(1).await.unwrap(); // and its own call goes through, closed
}

#[tokio::test(start_paused = true)]
async fn the_trial_goes_to_the_first_call_not_the_first_ready_service() {
    let s = settings(|s| {
        s.breaker.min_calls = 1;
        s.timeout.ms = None;
    });
    let policy = Policy::with_clock("trial-at-call", s, Clock::tokio()).unwrap();
    let svc = CircuitBreakerLayer::new(&policy).layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    }));
    let _ = svc.clone().oneshot(true).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    // Two services ready at once, one permit: the first to call is the trial, the
    // other is refused at its call (not at its readiness).
    let mut a = svc.clone();
    let mut b = svc.clone();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let slow_trial = a.call(false); // admitted, not yet finished
    let err = b.call(false).await.unwrap_err();
    assert!(err.is::<OpenCircuit>(), "{err}");
    assert_eq!(policy.breaker_state(), BreakerState::HalfOpen);
    slow_trial.await.unwrap();
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_as_failures() {
    let s = settings(|s| {
        s.breaker.min_calls = 3;
        s.timeout.ms = Some(100);
    });
    let policy = Policy::with_clock("timeouts", s, Clock::tokio()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(&policy))
        .layer(TimeoutLayer::new(&policy))
        .service(service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(())
        }));
    for _ in 0..3 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<substation::timeout::error::Elapsed>(), "{err}");
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<OpenCircuit>());
}

#[test]
fn services_of_one_policy_share_one_breaker() {
    let (clock, _time) = Clock::manual();
    let s = settings(|s| s.breaker.min_calls = 2);
    let policy = Policy::with_clock("shared", s, clock).unwrap();
    let flaky = Flaky::default();
    let mut a = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    let mut b = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    flaky.fail(true);
    let _ = call_now(&mut a, 1);
    let _ = call_now(&mut b, 1);
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    assert!(call_now(&mut a, 1).unwrap_err().is::<OpenCircuit>());
    let _ = b.get_ref();
}

#[cfg(feature = "http")]
#[test]
fn http_5xx_open_the_breaker_and_4xx_do_not() {
    use substation::classify::ServerErrorsAsFailures;
    let (clock, _time) = Clock::manual();
    let s = settings(|s| s.breaker.min_calls = 4);
    let policy = Policy::with_clock("http", s, clock).unwrap();
    let mut svc = CircuitBreakerLayer::new(&policy)
        .classify(ServerErrorsAsFailures)
        .layer(service_fn(|code: u16| {
            std::future::ready(Ok::<_, BoxError>(
                http::Response::builder().status(code).body(()).unwrap(),
            ))
        }));
    for _ in 0..10 {
        assert_eq!(call_now(&mut svc, 404).unwrap().status(), 404);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    assert_eq!(policy.window().failures, 0);
    for _ in 0..10 {
        let _ = call_now(&mut svc, 503);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
}

/// A half-open trial whose inner `call` panics (a `service_fn` that unwraps a bad
/// request before building its future) gives its permit back: the breaker is not left
/// half-open with no trial to finish, neither alone nor in the fused stack, and
/// whether the service is dropped by the unwinding or kept and polled again.
#[test]
fn a_trial_whose_call_panics_gives_its_permit_back() {
    for form in ["breaker", "stack"] {
        for keep in [false, true] {
            let (clock, time) = Clock::manual();
            let policy = Policy::with_clock(
                &format!("panicky-{form}-{keep}"),
                settings(|s| s.breaker.min_calls = 4),
                clock,
            )
            .unwrap();
            let make = || {
                let inner = service_fn(|req: u32| {
                    assert_ne!(req, 2, "a bad request"); // panics in `call` itself
                    async move {
                        if req == 1 {
                            Err::<u32, BoxError>("boom".into())
                        } else {
                            Ok(req)
                        }
                    }
                });
                if form == "breaker" {
                    tower::util::BoxService::new(CircuitBreakerLayer::new(&policy).layer(inner))
                } else {
                    tower::util::BoxService::new(
                        substation::stack::PolicyLayer::new(&policy).layer(inner),
                    )
                }
            };
            let mut svc = make();
            for _ in 0..4 {
                assert!(call_now(&mut svc, 1).is_err());
            }
            assert_eq!(policy.breaker_state(), BreakerState::Open, "{form}");
            time.advance(Duration::from_secs(6)); // past the 5 s open duration
            let mut trial = make();
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = call_now(&mut trial, 2);
            }));
            assert!(panicked.is_err());
            let mut healthy = if keep {
                trial
            } else {
                drop(trial);
                make()
            };
            assert_eq!(call_now(&mut healthy, 3).unwrap(), 3, "{form}, keep {keep}");
            assert_eq!(policy.breaker_state(), BreakerState::Closed, "{form}");
        }
    }
}

/// Two updates racing: each acts on the change it made itself. A switch to
/// force-closed closes an open breaker even while another update lands at the same
/// moment (an update that compared the settings it replaced with whatever was stored
/// after it could see "normal → normal" and never close).
#[test]
fn racing_updates_each_act_on_their_own_change() {
    let normal = settings(|s| {
        s.breaker.min_calls = 1;
        s.breaker.open_ms = 3_600_000;
        s.breaker.open_max_ms = 3_600_000;
    });
    let mut forced = normal.clone();
    forced.breaker.mode = BreakerMode::ForceClosed;
    let policy = Policy::with_clock("race-updates", normal.clone(), Clock::manual().0).unwrap();
    let flaky = Flaky::default();
    flaky.fail(true);
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky);
    for round in 0..3_000 {
        policy.update(normal.clone()).unwrap();
        let _ = call_now(&mut svc, 1);
        assert_eq!(policy.breaker_state(), BreakerState::Open, "round {round}");
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                policy.update(forced.clone()).unwrap();
            });
            s.spawn(|| {
                start.wait();
                policy.update(normal.clone()).unwrap();
            });
        });
        policy.update(normal.clone()).unwrap();
        assert_eq!(
            policy.breaker_state(),
            BreakerState::Closed,
            "round {round}: the switch to force-closed did not close the breaker"
        );
    }
}
