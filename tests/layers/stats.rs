//! The library's own statistics: counts by outcome, fallback answers, latencies with a
//! sub-millisecond resolution, the rolling view; and which tier answered a call.

use std::time::Duration;

use substation::breaker::BreakerState;
use substation::clock::Clock;
use substation::fallback::Fallback;
use substation::settings::{PolicySettings, Tier};
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy};
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn latencies_have_sub_millisecond_resolution_and_ready_calls_cost_no_clock() {
    // Under a recorder: the duration histogram gets the calls that waited, and only them.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let policy = metrics::with_local_recorder(&recorder, || {
        Policy::with_clock("stats-latency", PolicySettings::default(), Clock::tokio()).unwrap()
    });
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let svc = PolicyLayer::new(&policy).layer(service_fn(move |wait: bool| {
        let g = g.clone();
        async move {
            if wait {
                g.notified().await;
            }
            Ok::<_, BoxError>(())
        }
    }));
    // A call pending for exactly `us` microseconds of (paused) time.
    let timed = |us: u64| {
        let svc = svc.clone();
        let gate = gate.clone();
        async move {
            let call = tokio::spawn(svc.oneshot(true));
            tokio::task::yield_now().await; // the call is pending now
            tokio::time::advance(Duration::from_micros(us)).await;
            gate.notify_one();
            call.await.unwrap().unwrap();
        }
    };
    // 90 calls ready at once, 9 of 350 µs, 1 of 12 ms.
    for _ in 0..90 {
        svc.clone().oneshot(false).await.unwrap();
    }
    for _ in 0..9 {
        timed(350).await;
    }
    timed(12_000).await;
    let stats = policy.stats();
    assert_eq!(stats.totals.success, 100);
    assert_eq!(stats.latency.p50, 0.0, "ready calls count as no time");
    assert!(
        (0.31..=0.39).contains(&stats.latency.p99),
        "p99 is one of the 350 µs calls, to ±12 %: {:?}",
        stats.latency
    );
    assert!(
        (10.5..=13.5).contains(&stats.latency.max),
        "max ≈ 12 ms: {:?}",
        stats.latency
    );

    // The histogram: one sample per call that waited (a ready call is in
    // `substation_calls_total` only: pushing a zero for each would cost the flusher a
    // loop per call in exporters whose `record_many` is one).
    substation::metrics::flush();
    let mut samples: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Histogram(v)
                if key.key().name() == substation::metrics::CALL_DURATION =>
            {
                Some(v.into_iter().map(|x| x.into_inner()).collect())
            }
            _ => None,
        })
        .expect("a duration histogram");
    samples.sort_by(f64::total_cmp);
    assert_eq!(samples.len(), 10, "{samples:?}");
    assert!(
        samples[..9].iter().all(|s| (310e-6..=390e-6).contains(s)),
        "{samples:?}"
    );
    assert!((10.5e-3..=13.5e-3).contains(&samples[9]), "{samples:?}");
}

#[tokio::test]
async fn outcomes_fallback_answers_and_the_breaker_are_counted() {
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 4;
    let policy = Policy::new("stats-outcomes", s).unwrap();
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("static"))
        .layer(service_fn(|fail: bool| async move {
            if fail {
                Err::<&str, BoxError>("down".into())
            } else {
                Ok("primary")
            }
        }));
    for fail in [false, false, true, true, false, false] {
        let _ = svc.clone().oneshot(fail).await;
    }
    let stats = policy.stats();
    assert_eq!(stats.totals.success, 2);
    assert_eq!(stats.totals.failure, 2);
    assert_eq!(stats.totals.rejected, 2, "open after 2 of 4 failed");
    assert_eq!(stats.fallback_totals.static_.served, 4);
    assert_eq!(stats.breaker, BreakerState::Open);
    assert!(stats.breaker_since_ms > 0);
    // The first look at a policy starts its rolling view from its totals.
    assert_eq!(stats.calls, stats.totals);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["breaker"], "open");
    assert_eq!(json["fallback"]["static"]["served"], 4);
}

#[tokio::test]
async fn the_caller_can_tell_which_tier_answered() {
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 1_000;
    let policy = Policy::new("stats-which-tier", s.clone()).unwrap();
    let svc = PolicyLayer::new(&policy)
        .fallback(
            Fallback::with_parts(|n: &u32| *n)
                .cache(16)
                .static_with(|_, _| String::from("static"))
                .on_answer(|resp: &mut String, tier| {
                    resp.push_str(&format!(" [{}]", tier.as_str()))
                }),
        )
        .layer(service_fn(|n: u32| async move {
            if n >= 100 {
                Err::<String, BoxError>("down".into())
            } else {
                Ok(format!("primary {n}"))
            }
        }));
    assert_eq!(
        svc.clone().oneshot(1).await.unwrap(),
        "primary 1",
        "not marked"
    );
    // Key 101 fails, and has no cached answer: the static tier.
    assert_eq!(svc.clone().oneshot(101).await.unwrap(), "static [static]");
    s.kill = true;
    policy.update(s).unwrap();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "primary 1 [cache]");
}

#[cfg(feature = "http")]
#[tokio::test]
async fn an_http_response_from_a_tier_carries_which_tier() {
    use substation::fallback::AnsweredBy;
    let mut s = PolicySettings::default();
    s.kill = true;
    let policy = Policy::new("stats-http-tier", s).unwrap();
    let svc = PolicyLayer::new(&policy)
        .fallback(
            Fallback::new()
                .static_with(|_, _| http::Response::new("degraded"))
                .mark_responses(),
        )
        .layer(service_fn(|_: ()| async {
            Ok::<_, BoxError>(http::Response::new("fresh"))
        }));
    let resp = svc.oneshot(()).await.unwrap();
    assert_eq!(*resp.body(), "degraded");
    assert_eq!(
        resp.extensions().get::<AnsweredBy>(),
        Some(&AnsweredBy(Tier::Static))
    );
}
