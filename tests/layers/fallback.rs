//! Fallback tiers, kill switch, bulkhead and the policy stack, as a user meets them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use substation::breaker::BreakerState;
use substation::breaker::CircuitBreakerLayer;
use substation::breaker::error::OpenCircuit;
use substation::bulkhead::{BulkheadFull, BulkheadLayer};
use substation::clock::Clock;
use substation::fallback::error::{FallbackBusy, FallbackFailed, NoCachedResponse, TierFailed};
use substation::fallback::{Fallback, FallbackLayer};
use substation::kill::Killed;
use substation::live::InMemorySource;
use substation::settings::{PolicySettings, Tier};
use substation::stack::PolicyLayer;
use substation::timeout::TimeoutLayer;
use substation::timeout::error::Elapsed;
use substation::{BoxError, Policy, Substation};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

use crate::support::call_now;

fn settings(f: impl FnOnce(&mut PolicySettings)) -> PolicySettings {
    let mut s = PolicySettings::default();
    f(&mut s);
    s
}

/// The protections of the policy stack as individual layers, composed in its order:
/// fallback (with the kill switch) → bulkhead → breaker → timeout.
fn layered<Resp, P, S>(
    policy: &Policy,
    fallback: Fallback<u32, Resp, P>,
    inner: S,
) -> impl Service<u32, Response = Resp, Error = BoxError, Future: Send> + Clone + Send + use<Resp, P, S>
where
    Resp: Send + 'static,
    P: Send + 'static,
    S: Service<u32, Response = Resp> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(FallbackLayer::new(policy, fallback))
        .layer(BulkheadLayer::new(policy))
        .layer(CircuitBreakerLayer::new(policy))
        .layer(TimeoutLayer::new(policy))
        .service(inner)
}

/// The stack with the fallback `make()` around `inner`: the fused `PolicyService`, or
/// the same protections as individual layers.
fn protect<Resp, P, S>(
    policy: &Policy,
    make: &dyn Fn() -> Fallback<u32, Resp, P>,
    fused: bool,
    inner: S,
) -> tower::util::BoxCloneService<u32, Resp, BoxError>
where
    Resp: Send + 'static,
    P: Send + 'static,
    S: Service<u32, Response = Resp> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    if fused {
        tower::util::BoxCloneService::new(PolicyLayer::new(policy).fallback(make()).layer(inner))
    } else {
        tower::util::BoxCloneService::new(layered(policy, make(), inner))
    }
}

/// A dependency whose health a test switches; answers `format!("primary {req}")`.
#[derive(Clone, Default)]
struct Dep {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Dep {
    fn service(
        &self,
    ) -> impl Service<u32, Response = String, Error = std::io::Error, Future: Send>
    + Clone
    + Send
    + 'static {
        let d = self.clone();
        service_fn(move |req: u32| {
            d.calls.fetch_add(1, Ordering::SeqCst);
            let down = d.down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(std::io::Error::other("503"))
                } else {
                    Ok(format!("primary {req}"))
                }
            }
        })
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn static_tier_answers_with_parts_and_error() {
    let policy = Policy::new("fb-static", PolicySettings::default()).unwrap();
    let dep = Dep::default();
    let fb = Fallback::with_parts(|req: &u32| *req * 10).static_with(
        |parts: &u32, err: &substation::fallback::Cause| format!("static {parts} after {err}"),
    );
    let svc = FallbackLayer::new(&policy, fb).layer(dep.service());
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "primary 1");
    dep.set_down(true);
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), "static 20 after 503");
}

#[tokio::test]
async fn tiers_are_tried_in_the_live_order_until_one_answers() {
    let (clock, time) = Clock::manual();
    let policy = Policy::with_clock("fb-order", PolicySettings::default(), clock).unwrap();
    let dep = Dep::default();
    let alternate =
        service_fn(|req: u32| async move { Ok::<_, std::io::Error>(format!("alternate {req}")) });
    let fb = Fallback::with_parts(|req: &u32| *req)
        .cache(100)
        .service(alternate, |req: &u32| Some(*req))
        .static_value("static".to_owned());
    let svc = FallbackLayer::new(&policy, fb).layer(dep.service());
    assert_eq!(
        svc.clone().oneshot(1).await.unwrap(),
        "primary 1",
        "fills the cache for 1"
    );
    dep.set_down(true);
    assert_eq!(
        svc.clone().oneshot(1).await.unwrap(),
        "primary 1",
        "cache hit"
    );
    assert_eq!(
        svc.clone().oneshot(2).await.unwrap(),
        "alternate 2",
        "cache miss: service tier"
    );

    // Reorder live: static first.
    policy
        .update(settings(|s| {
            s.fallback.tiers = Some(vec![Tier::Static, Tier::Cache])
        }))
        .unwrap();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "static");
    // Only the cache, and the entry goes stale.
    policy
        .update(settings(|s| {
            s.fallback.tiers = Some(vec![Tier::Cache]);
            s.fallback.cache_max_stale_ms = 1_000;
        }))
        .unwrap();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "primary 1");
    time.advance(Duration::from_millis(1_001));
    let err = svc.clone().oneshot(1).await.unwrap_err();
    let failed = err
        .downcast_ref::<FallbackFailed>()
        .expect("all tiers failed");
    assert!(failed.tiers()[0].1.is::<NoCachedResponse>());
}

#[tokio::test]
async fn when_every_tier_fails_the_original_and_each_tier_error_are_in_the_chain() {
    let policy = Policy::new("fb-chain", PolicySettings::default()).unwrap();
    let dep = Dep::default();
    dep.set_down(true);
    let alternate =
        service_fn(|_: u32| async { Err::<String, _>(std::io::Error::other("alternate down")) });
    let fb = Fallback::with_parts(|req: &u32| *req)
        .cache(10)
        .service(alternate, |req: &u32| Some(*req));
    let svc = FallbackLayer::new(&policy, fb).layer(dep.service());
    let err = svc.oneshot(5).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert_eq!(failed.original().to_string(), "503");
    let tiers: Vec<_> = failed
        .tiers()
        .iter()
        .map(|(t, e)| (*t, e.to_string()))
        .collect();
    assert_eq!(
        tiers,
        vec![
            (Tier::Cache, "no cached response fresh enough".to_owned()),
            (Tier::Service, "alternate down".to_owned())
        ]
    );
    // The same, by walking `source()` as a generic error reporter would.
    let mut chain = Vec::new();
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(link) = e {
        chain.push(link.to_string());
        e = link.source();
    }
    assert_eq!(chain.len(), 4, "{chain:?}");
    assert!(chain[1].starts_with("cache fallback failed"));
    assert!(chain[2].starts_with("service fallback failed: alternate down"));
    assert_eq!(chain[3], "503");
    let _ = TierFailed::tier;
}

#[tokio::test(start_paused = true)]
async fn the_service_tier_is_bounded_by_its_timeout_and_concurrency() {
    let policy = Policy::with_clock(
        "fb-bounds",
        settings(|s| {
            s.fallback.timeout_ms = 50;
            s.fallback.max_concurrent = 3;
        }),
        Clock::tokio(),
    )
    .unwrap();
    let dep = Dep::default();
    dep.set_down(true);
    let in_alternate = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let alternate = {
        let (in_alternate, peak) = (in_alternate.clone(), peak.clone());
        service_fn(move |_: u32| {
            let n = in_alternate.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            let in_alternate = in_alternate.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await; // far past the deadline
                in_alternate.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("late".to_owned())
            }
        })
    };
    let fb = Fallback::new()
        .service(alternate, |req: &u32| Some(*req))
        .static_value("static".to_owned());
    let svc = FallbackLayer::new(&policy, fb).layer(dep.service());
    let calls: Vec<_> = (0..50)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    for c in calls {
        assert_eq!(
            c.await.unwrap().unwrap(),
            "static",
            "timed-out or refused service tier, then static"
        );
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "never more than max_concurrent in the alternate"
    );

    // Without a static tier, the reasons are visible.
    let fb = Fallback::new().service(
        service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>(String::new())
        }),
        |req: &u32| Some(*req),
    );
    let policy = Policy::with_clock(
        "fb-bounds-2",
        settings(|s| s.fallback.timeout_ms = 50),
        Clock::tokio(),
    )
    .unwrap();
    let svc = FallbackLayer::new(&policy, fb).layer(dep.service());
    let err = svc.oneshot(1).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.tiers()[0].1.is::<Elapsed>());
    let _ = FallbackBusy::default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_kill_switch_flip_under_load_loses_no_request() {
    let source = InMemorySource::new();
    let sub = Substation::builder()
        .source(source.clone())
        .build()
        .unwrap();
    let policy = sub.policy("fb-flip");
    let dep = Dep::default();
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static".to_owned()))
        .layer(dep.service());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let svc = svc.clone();
            let stop = stop.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut primary, mut fallback) = (0u32, 0u32);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    match svc.clone().oneshot(w * 1_000_000 + i).await {
                        Ok(s) if s == "static" => fallback += 1,
                        Ok(_) => primary += 1,
                        Err(e) => panic!("request lost: {e}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::task::yield_now().await;
                }
                (primary, fallback)
            })
        })
        .collect();
    // Flip 200 times, each time after the callers have made progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for i in 0..200 {
        source
            .put(
                "policies/fb-flip",
                &format!(r#"{{"kill": {}}}"#, i % 2 == 0),
            )
            .unwrap();
        let target = done.load(Ordering::Relaxed) + 16;
        while done.load(Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < deadline, "callers stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    source.put("policies/fb-flip", r#"{"kill": true}"#).unwrap();
    let calls_when_killed = dep.calls.load(Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "static");
    stop.store(true, Ordering::Relaxed);
    let (mut p, mut f) = (0, 0);
    for w in workers {
        let (a, b) = w.await.unwrap();
        p += a;
        f += b;
    }
    assert!(
        p > 0 && f > 0,
        "both paths served: primary {p}, fallback {f}"
    );
    // Once killed, nothing reaches the dependency (a call in flight at the flip may).
    assert!(dep.calls.load(Ordering::SeqCst) <= calls_when_killed + 8);
    assert!(policy.is_killed());
}

#[tokio::test]
async fn killed_without_a_fallback_fails_at_once_with_killed() {
    let policy = Policy::new("fb-killed", settings(|s| s.kill = true)).unwrap();
    let dep = Dep::default();
    let svc = PolicyLayer::new(&policy).layer(dep.service());
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<Killed>(), "{err}");
    assert_eq!(dep.calls.load(Ordering::SeqCst), 0);
    // With a fallback whose triggers exclude the kill switch, the same.
    let policy = Policy::new(
        "fb-killed-2",
        settings(|s| {
            s.kill = true;
            s.fallback.on.killed = false;
        }),
    )
    .unwrap();
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static".to_owned()))
        .layer(dep.service());
    assert!(svc.oneshot(1).await.unwrap_err().is::<Killed>());
    assert_eq!(dep.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn triggers_are_live() {
    let policy = Policy::new("fb-triggers", settings(|s| s.fallback.on.failure = false)).unwrap();
    let dep = Dep::default();
    dep.set_down(true);
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static".to_owned()))
        .layer(dep.service());
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "503",
        "failures do not trigger the fallback"
    );
    policy.update(PolicySettings::default()).unwrap();
    assert_eq!(svc.oneshot(1).await.unwrap(), "static");
}

#[tokio::test]
async fn an_open_breaker_goes_straight_to_the_fallback() {
    let policy = Policy::new("fb-open", settings(|s| s.breaker.min_calls = 5)).unwrap();
    let dep = Dep::default();
    dep.set_down(true);
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static".to_owned()))
        .layer(dep.service());
    for i in 0..5 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), "static");
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    let before = dep.calls.load(Ordering::SeqCst);
    for i in 0..100 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), "static");
    }
    assert_eq!(
        dep.calls.load(Ordering::SeqCst),
        before,
        "the dependency is spared"
    );
    // Without a fallback the caller sees the rejection.
    let bare = PolicyLayer::new(&policy).layer(dep.service());
    assert!(bare.oneshot(1).await.unwrap_err().is::<OpenCircuit>());
}

#[tokio::test]
async fn non_critical_dependencies_use_their_static_tier_and_are_shed_together() {
    let app = InMemorySource::new();
    let sub = Substation::builder()
        .policy("fb-optional", settings(|s| s.critical = false))
        .policy("fb-critical", PolicySettings::default())
        .source(app.clone())
        .build()
        .unwrap();
    let dep = Dep::default();
    let stack = |name: &str| {
        PolicyLayer::new(&sub.policy(name))
            .fallback(
                Fallback::with_parts(|req: &u32| *req)
                    .cache(10)
                    .static_value("static".to_owned()),
            )
            .layer(dep.service())
    };
    let (optional, critical) = (stack("fb-optional"), stack("fb-critical"));
    assert_eq!(optional.clone().oneshot(1).await.unwrap(), "primary 1");
    assert_eq!(critical.clone().oneshot(1).await.unwrap(), "primary 1");
    dep.set_down(true);
    assert_eq!(
        optional.clone().oneshot(1).await.unwrap(),
        "static",
        "non-critical: straight to static"
    );
    assert_eq!(
        critical.clone().oneshot(1).await.unwrap(),
        "primary 1",
        "critical: cache first"
    );
    dep.set_down(false);
    app.put("global", r#"{"shed_non_critical": true}"#).unwrap();
    let calls = dep.calls.load(Ordering::SeqCst);
    assert_eq!(optional.clone().oneshot(2).await.unwrap(), "static", "shed");
    assert_eq!(
        critical.clone().oneshot(2).await.unwrap(),
        "primary 2",
        "not shed"
    );
    assert_eq!(dep.calls.load(Ordering::SeqCst), calls + 1);
}

#[tokio::test]
async fn the_bulkhead_rejects_at_once_when_full_and_frees_slots() {
    let policy = Policy::new(
        "fb-bulkhead",
        settings(|s| s.bulkhead.max_concurrent = Some(2)),
    )
    .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = {
        let gate = gate.clone();
        service_fn(move |_: u32| {
            let gate = gate.clone();
            async move {
                let _p = gate.acquire().await.unwrap();
                Ok::<_, std::io::Error>("done")
            }
        })
    };
    let svc = BulkheadLayer::new(&policy).layer(inner);
    let a = tokio::spawn(svc.clone().oneshot(1));
    let b = tokio::spawn(svc.clone().oneshot(2));
    while policy.in_flight() < 2 {
        tokio::task::yield_now().await;
    }
    let err = svc.clone().oneshot(3).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());
    // A live raise lets one more in.
    policy
        .update(settings(|s| s.bulkhead.max_concurrent = Some(3)))
        .unwrap();
    let c = tokio::spawn(svc.clone().oneshot(3));
    while policy.in_flight() < 3 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(3);
    for t in [a, b, c] {
        assert_eq!(t.await.unwrap().unwrap(), "done");
    }
    assert_eq!(policy.in_flight(), 0, "slots freed");
    // A dropped call frees its slot too.
    let mut s = svc.clone();
    let fut = s.ready().await.unwrap().call(9);
    assert_eq!(policy.in_flight(), 1);
    drop(fut);
    assert_eq!(policy.in_flight(), 0);
    // In the stack, a full bulkhead is a fallback trigger.
    let stack = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static"))
        .layer(service_fn(|_: u32| {
            std::future::pending::<Result<&'static str, std::io::Error>>()
        }));
    let _held: Vec<_> = (0..3)
        .map(|i| tokio::spawn(stack.clone().oneshot(i)))
        .collect();
    while policy.in_flight() < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stack.clone().oneshot(9).await.unwrap(), "static");
}

#[test]
fn every_layer_keeps_the_readiness_contract() {
    use crate::support::Strict;
    let policy =
        Policy::with_clock("fb-ready", PolicySettings::default(), Clock::manual().0).unwrap();
    let mut stack = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value(0u32))
        .layer(Strict::default());
    let mut bare = PolicyLayer::new(&policy).layer(Strict::default());
    let mut bulkhead = BulkheadLayer::new(&policy).layer(Strict::default());
    for i in 0..10 {
        assert_eq!(call_now(&mut stack, i).unwrap(), i);
        assert_eq!(call_now(&mut bare, i).unwrap(), i);
        assert_eq!(call_now(&mut bulkhead, i).unwrap(), i);
        // A clone must poll its own inner service.
        let mut clone = stack.clone();
        assert_eq!(call_now(&mut clone, i).unwrap(), i);
        let mut clone = bare.clone();
        assert_eq!(call_now(&mut clone, i).unwrap(), i);
    }
    // Killed: ready without polling the inner service, which is never called.
    policy.update(settings(|s| s.kill = true)).unwrap();
    let inner = Strict::default();
    let polls = inner.polls.clone();
    let mut killed = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value(7u32))
        .layer(inner);
    assert_eq!(call_now(&mut killed, 1).unwrap(), 7);
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_fused_stack_times_out_opens_trials_and_closes() {
    let policy = Policy::with_clock(
        "fb-fused",
        settings(|s| {
            s.timeout.ms = Some(100);
            s.breaker.min_calls = 3;
            s.breaker.open_ms = 1_000;
        }),
        Clock::tokio(),
    )
    .unwrap();
    let slow = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (slow, calls) = (slow.clone(), calls.clone());
        service_fn(move |req: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let slow = slow.load(Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, std::io::Error>(format!("primary {req}"))
            }
        })
    };
    let layer =
        PolicyLayer::new(&policy).fallback(Fallback::new().static_value("static".to_owned()));
    let svc = layer.layer(inner.clone());
    for i in 0..3 {
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), "static");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(100),
            "the timeout, then the fallback"
        );
    }
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Open,
        "timeouts count as failures"
    );
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot(9).await.unwrap(), "static");
    assert_eq!(calls.load(Ordering::SeqCst), before, "open: not called");

    // Half-open: one trial; a caller that gives up on it gives its permit back.
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(10), svc.clone().oneshot(10)).await;
    assert!(gave_up.is_err());
    assert_eq!(policy.breaker_state(), BreakerState::HalfOpen);
    slow.store(false, Ordering::SeqCst);
    assert_eq!(
        svc.clone().oneshot(11).await.unwrap(),
        "primary 11",
        "the next trial"
    );
    assert_eq!(policy.breaker_state(), BreakerState::Closed);

    // The fused service and the individual layers answer alike.
    let mut layered = layered(
        &policy,
        Fallback::new().static_value("static".to_owned()),
        inner,
    );
    assert_eq!(
        layered.ready().await.unwrap().call(12).await.unwrap(),
        "primary 12"
    );
}

/// A short-circuited call (killed, open, bulkhead full) whose first tier is a static
/// value is answered in `call` itself; any other first tier takes the full walk. Both
/// follow the live order and triggers, in the fused stack and the layered one alike,
/// and count the static tier's answers.
#[tokio::test]
async fn a_killed_call_is_answered_by_the_first_tier_of_the_live_order() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    for fused in [true, false] {
        let name = if fused {
            "fb-short-fused"
        } else {
            "fb-short-layered"
        };
        // Made under the recorder: a policy's handles are registered when it is made.
        let policy = metrics::with_local_recorder(&recorder, || {
            Policy::new(name, PolicySettings::default()).unwrap()
        });
        let dep = Dep::default();
        let svc = metrics::with_local_recorder(&recorder, || {
            let make = || {
                Fallback::with_parts(|req: &u32| *req)
                    .cache(10)
                    .static_value("static".to_owned())
            };
            protect(&policy, &make, fused, dep.service())
        });
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "primary 1");

        let killed = |f: fn(&mut PolicySettings)| {
            settings(|s| {
                s.kill = true;
                f(s)
            })
        };
        policy.update(killed(|_| {})).unwrap();
        assert_eq!(
            svc.clone().oneshot(1).await.unwrap(),
            "primary 1",
            "cache first"
        );
        assert_eq!(
            svc.clone().oneshot(2).await.unwrap(),
            "static",
            "then static"
        );
        policy
            .update(killed(|s| {
                s.fallback.tiers = Some(vec![Tier::Static, Tier::Cache])
            }))
            .unwrap();
        for _ in 0..3 {
            assert_eq!(svc.clone().oneshot(1).await.unwrap(), "static", "{name}");
        }
        policy
            .update(killed(|s| {
                s.fallback.tiers = Some(vec![Tier::Static, Tier::Cache]);
                s.fallback.on.killed = false;
            }))
            .unwrap();
        let err = svc.clone().oneshot(1).await.unwrap_err();
        assert!(err.is::<Killed>(), "{name}: {err}");
        // A non-critical policy falls back on any trigger, to its static tier alone.
        policy
            .update(killed(|s| {
                s.critical = false;
                s.fallback.on.killed = false;
            }))
            .unwrap();
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "static", "{name}");
        assert_eq!(dep.calls.load(Ordering::SeqCst), 1, "{name}: never called");
    }
    let mut served = std::collections::HashMap::new();
    substation::metrics::flush(); // counts reach the recorder in batches
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |k: &str| {
            key.labels()
                .find(|l| l.key() == k)
                .map(|l| l.value().to_owned())
        };
        if let (DebugValue::Counter(n), Some(policy), Some(tier), Some("served")) = (
            value,
            label("policy"),
            label("tier"),
            label("result").as_deref(),
        ) {
            served.insert(format!("{policy}/{tier}"), n);
        }
    }
    for name in ["fb-short-fused", "fb-short-layered"] {
        assert_eq!(served[&format!("{name}/static")], 5, "{name}: {served:?}");
        assert_eq!(served[&format!("{name}/cache")], 1, "{name}: {served:?}");
    }
}

/// One long-lived service (not a clone per call) across many settings changes, some of
/// them between `poll_ready` and `call`: every call follows the settings it was decided
/// by. (A plan cached by the settings' bare address once served a freed `Arc`'s plan
/// for the new settings that reused its address.)
#[tokio::test]
async fn a_long_lived_service_follows_every_settings_change() {
    // (kill, fallback.on.killed, fallback.on.failure)
    let variants = [
        (false, true, true),
        (false, true, false),
        (true, true, true),
        (true, false, true),
    ];
    let to_settings = |(kill, on_killed, on_failure): (bool, bool, bool)| {
        settings(|s| {
            s.kill = kill;
            s.fallback.on.killed = on_killed;
            s.fallback.on.failure = on_failure;
            s.breaker.min_calls = 1_000_000; // keep the breaker out of it
        })
    };
    // What a call decided under `x` (its `poll_ready`) and made under `y` answers: a
    // killed decision stands; otherwise the dependency fails and `y`'s triggers decide.
    let expect = |x: (bool, bool, bool), y: (bool, bool, bool)| -> Result<&str, &str> {
        match (x, y) {
            ((true, true, _), _) => Ok("static"),
            ((true, false, _), _) => Err("killed"),
            (_, (_, _, true)) => Ok("static"),
            (_, (_, _, false)) => Err("503"),
        }
    };
    for form in ["fused", "layered", "fallback-only"] {
        let policy = Policy::new(&format!("fb-long-{form}"), to_settings(variants[0])).unwrap();
        let dep = Dep::default();
        dep.set_down(true);
        let layer =
            PolicyLayer::new(&policy).fallback(Fallback::new().static_value("static".to_owned()));
        let mut svc = match form {
            "fused" => tower::util::BoxService::new(layer.layer(dep.service())),
            "layered" => tower::util::BoxService::new(layered(
                &policy,
                Fallback::new().static_value("static".to_owned()),
                dep.service(),
            )),
            _ => tower::util::BoxService::new(
                FallbackLayer::new(&policy, Fallback::new().static_value("static".to_owned()))
                    .layer(dep.service()),
            ),
        };
        for i in 0..64 {
            let x = variants[i % 4];
            // The dependency runs only when `x` is not a kill; `y` then must not be one.
            let y = variants[(i / 4) % 2];
            policy.update(to_settings(x)).unwrap();
            let ready = svc.ready().await.unwrap();
            policy.update(to_settings(y)).unwrap();
            let got = ready.call(1).await;
            let got = got.as_deref().map_err(|e| {
                if e.is::<Killed>() {
                    "killed"
                } else if e.to_string() == "503" {
                    "503"
                } else {
                    "other"
                }
            });
            assert_eq!(
                got,
                expect(x, y),
                "{form}, call {i}: decided under {x:?}, made under {y:?}"
            );
            // And a call decided and made under the same settings.
            policy.update(to_settings(y)).unwrap();
            let got = svc.ready().await.unwrap().call(2).await;
            assert_eq!(got.is_ok(), y.2, "{form}, call {i} under {y:?}");
        }
    }
}

/// Each short-circuit trigger (open, bulkhead full) is its own: switched off, the caller
/// gets that rejection; on, the static value. Fused and layered alike.
#[tokio::test]
async fn open_and_bulkhead_triggers_are_each_their_own() {
    for fused in [true, false] {
        let form = if fused { "fused" } else { "layered" };
        let policy = Policy::new(
            &format!("fb-triggers-{form}"),
            settings(|s| {
                s.breaker.min_calls = 2;
                s.bulkhead.max_concurrent = Some(1);
            }),
        )
        .unwrap();
        let dep = Dep::default();
        let make = || Fallback::new().static_value("static".to_owned());
        let build = || protect(&policy, &make, fused, dep.service());
        let with = |f: fn(&mut PolicySettings)| {
            settings(|s| {
                s.breaker.min_calls = 2;
                s.bulkhead.max_concurrent = Some(1);
                f(s)
            })
        };

        // Bulkhead: one clone holds the only slot (ready, not yet called).
        let mut holder = build();
        let _ = holder.ready().await.unwrap();
        assert_eq!(policy.in_flight(), 1, "{form}");
        policy
            .update(with(|s| s.fallback.on.bulkhead = false))
            .unwrap();
        let err = build().oneshot(1).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{form}: {err}");
        policy.update(with(|_| {})).unwrap();
        assert_eq!(build().oneshot(1).await.unwrap(), "static", "{form}");
        assert_eq!(holder.call(1).await.unwrap(), "primary 1", "{form}");
        assert_eq!(policy.in_flight(), 0, "{form}");

        // Open: tripped by real failures.
        dep.set_down(true);
        for i in 0..2 {
            assert_eq!(build().oneshot(i).await.unwrap(), "static", "{form}");
        }
        assert_eq!(policy.breaker_state(), BreakerState::Open, "{form}");
        policy.update(with(|s| s.fallback.on.open = false)).unwrap();
        let err = build().oneshot(1).await.unwrap_err();
        assert!(err.is::<OpenCircuit>(), "{form}: {err}");
        policy.update(with(|_| {})).unwrap();
        assert_eq!(build().oneshot(1).await.unwrap(), "static", "{form}");
    }
}

/// Once a service said it is ready, the call is committed to the dependency: a kill
/// flipped before `call` does not strand the bulkhead slot the readiness took.
#[tokio::test]
async fn a_kill_after_readiness_does_not_strand_the_bulkhead_slot() {
    for fused in [true, false] {
        let form = if fused { "fused" } else { "layered" };
        let policy = Policy::new(
            &format!("fb-committed-{form}"),
            settings(|s| s.bulkhead.max_concurrent = Some(1)),
        )
        .unwrap();
        let dep = Dep::default();
        let make = || Fallback::new().static_value("static".to_owned());
        let build = || protect(&policy, &make, fused, dep.service());
        let mut svc = build();
        let _ = svc.ready().await.unwrap();
        assert_eq!(policy.in_flight(), 1, "{form}");
        policy
            .update(settings(|s| {
                s.kill = true;
                s.bulkhead.max_concurrent = Some(1);
            }))
            .unwrap();
        let _ = svc.ready().await.unwrap(); // polled again: still committed
        assert_eq!(svc.call(1).await.unwrap(), "primary 1", "{form}");
        assert_eq!(policy.in_flight(), 0, "{form}: the slot is back");
        policy
            .update(settings(|s| s.bulkhead.max_concurrent = Some(1)))
            .unwrap();
        assert_eq!(build().oneshot(2).await.unwrap(), "primary 2", "{form}");
    }
}

/// A caller waiting for the dependency to become ready (a reconnecting channel) is not
/// stuck when the kill switch flips: its next `poll_ready` answers from the fallback,
/// and the fused stack gives back the bulkhead slot it had taken.
#[test]
fn a_kill_preempts_a_pending_readiness() {
    use crate::support::Gated;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    for form in ["fused", "layered", "no-fallback"] {
        let limited = |kill: bool| {
            settings(|s| {
                s.kill = kill;
                s.bulkhead.max_concurrent = Some(1);
            })
        };
        let policy = Policy::new(&format!("fb-preempt-{form}"), limited(false)).unwrap();
        let gated = Gated::default();
        let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(7u32));
        let mut svc = match form {
            "fused" => tower::util::BoxService::new(layer.layer(gated.clone())),
            "layered" => tower::util::BoxService::new(layered(
                &policy,
                Fallback::new().static_value(7u32),
                gated.clone(),
            )),
            _ => tower::util::BoxService::new(PolicyLayer::new(&policy).layer(gated.clone())),
        };
        assert!(svc.poll_ready(&mut cx).is_pending(), "{form}");
        assert!(svc.poll_ready(&mut cx).is_pending(), "{form}: still");
        assert_eq!(policy.in_flight(), 1, "{form}: the slot is taken");
        policy.update(limited(true)).unwrap();
        assert!(
            matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))),
            "{form}"
        );
        let got = tokio_test::block_on(svc.call(1));
        match form {
            "no-fallback" => assert!(got.unwrap_err().is::<Killed>()),
            _ => assert_eq!(got.unwrap(), 7, "{form}: the static value"),
        }
        if form == "fused" {
            assert_eq!(policy.in_flight(), 0, "the fused stack gives the slot back");
        }
        // Healed and opened: calls reach the dependency again, slot accounting intact.
        policy.update(limited(false)).unwrap();
        gated.open.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(tokio_test::block_on(svc.call(2)).unwrap(), 2, "{form}");
        assert_eq!(policy.in_flight(), 0, "{form}");
    }
}

/// The bulkhead is outside the breaker: with the breaker open and the bulkhead full,
/// the call is refused by the bulkhead — in the fused stack as in the layered one.
#[tokio::test]
async fn a_full_bulkhead_answers_before_an_open_breaker() {
    for fused in [true, false] {
        let form = if fused { "fused" } else { "layered" };
        let with = |max: u32, on_bulkhead: bool| {
            settings(|s| {
                s.breaker.min_calls = 2;
                s.bulkhead.max_concurrent = Some(max);
                s.fallback.on.bulkhead = on_bulkhead;
            })
        };
        let policy = Policy::new(&format!("fb-order-{form}"), with(2, true)).unwrap();
        let dep = Dep::default();
        let make = || Fallback::new().static_value("static".to_owned());
        let build = || protect(&policy, &make, fused, dep.service());
        let mut holder = build();
        let _ = holder.ready().await.unwrap(); // one slot held
        dep.set_down(true);
        for i in 0..2 {
            assert_eq!(build().oneshot(i).await.unwrap(), "static", "{form}");
        }
        assert_eq!(policy.breaker_state(), BreakerState::Open, "{form}");
        policy.update(with(1, false)).unwrap(); // now full, and its trigger off
        let err = build().oneshot(3).await.unwrap_err();
        assert!(err.is::<BulkheadFull>(), "{form}: {err}");
        drop(holder);
        assert_eq!(policy.in_flight(), 0, "{form}");
    }
}

/// Thousands of users, each answered once by the dependency: when it then fails, every
/// one of them is served from the cache (the refresh bound is per key, not per slot of
/// a lossy table another key may have stamped).
#[tokio::test]
async fn every_key_answered_once_is_served_from_the_cache() {
    let policy = Policy::new(
        "fb-cache-many-keys",
        settings(|s| {
            s.breaker.mode = substation::settings::BreakerMode::ForceClosed;
            s.fallback.cache_refresh_ms = 60_000;
        }),
    )
    .unwrap();
    let dep = Dep::default();
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::with_parts(|user: &u32| *user).cache(20_000))
        .layer(dep.service());
    const USERS: u32 = 10_000;
    for user in 0..USERS {
        assert_eq!(
            svc.clone().oneshot(user).await.unwrap(),
            format!("primary {user}")
        );
    }
    dep.set_down(true);
    let mut cached = 0;
    for user in 0..USERS {
        if svc.clone().oneshot(user).await.is_ok() {
            cached += 1;
        }
    }
    assert_eq!(
        cached,
        USERS,
        "users without a cached answer: {}",
        USERS - cached
    );
}
