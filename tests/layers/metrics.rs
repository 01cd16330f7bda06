use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use substation::breaker::CircuitBreakerLayer;
use substation::clock::Clock;
use substation::settings::PolicySettings;
use substation::{Policy, metrics as names};
use tower::Layer;

use crate::support::{Flaky, call_now};

#[test]
fn calls_transitions_and_state_are_emitted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 4;
    // Handles are registered when the policy is created: under the recorder.
    let policy = metrics::with_local_recorder(&recorder, || {
        names::describe();
        Policy::with_clock("metrics-test", s, Clock::manual().0).unwrap()
    });
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(flaky.clone());
    for _ in 0..3 {
        call_now(&mut svc, 1).unwrap();
    }
    flaky.fail(true);
    for _ in 0..3 {
        let _ = call_now(&mut svc, 1);
    }
    for _ in 0..2 {
        let _ = call_now(&mut svc, 1); // rejected
    }

    let mut seen = std::collections::HashMap::new();
    names::flush(); // counts reach the recorder in batches
    for (key, _unit, _desc, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
    }
    let counter = |k: &str| match seen.get(k) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{k}: {other:?} in {:?}", seen.keys()),
    };
    assert_eq!(
        counter("substation_calls_total{policy=metrics-test,outcome=success}"),
        3
    );
    assert_eq!(
        counter("substation_calls_total{policy=metrics-test,outcome=failure}"),
        3
    );
    assert_eq!(
        counter("substation_calls_total{policy=metrics-test,outcome=rejected}"),
        2
    );
    assert_eq!(
        counter("substation_calls_total{policy=metrics-test,outcome=timeout}"),
        0
    );
    assert_eq!(
        counter("substation_breaker_transitions_total{policy=metrics-test,to=open}"),
        1
    );
    match seen.get("substation_breaker_state{policy=metrics-test}") {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 1.0),
        other => panic!("state gauge: {other:?}"),
    }
    // The six calls that reached the service were ready at once: no duration samples
    // (the histogram has the calls that waited; `stats.rs` checks those).
    match seen.get("substation_call_duration_seconds{policy=metrics-test}") {
        Some(DebugValue::Histogram(v)) => assert!(v.is_empty(), "{v:?}"),
        other => panic!("duration: {other:?}"),
    }
}

#[test]
fn a_fallback_registers_its_series_under_its_policy_only() {
    use substation::fallback::{Fallback, FallbackLayer};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let policy = Policy::new("metrics-fallback", PolicySettings::default()).unwrap();
        let _layer = FallbackLayer::new(&policy, Fallback::<u32, u32>::new().static_value(1));
    });
    let fallback_series: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == names::FALLBACKS)
        .map(|(key, ..)| format!("{:?}", key.key()))
        .collect();
    assert_eq!(fallback_series.len(), 6, "{fallback_series:?}");
    for series in &fallback_series {
        assert!(
            series.contains("metrics-fallback"),
            "a series without the policy's name: {series}"
        );
    }
}

/// Counts reach the recorder in batches, never per call; at each flush the exported
/// counters are exactly the calls made, from every thread.
#[test]
fn exported_counts_are_exact_at_each_flush() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 1_000_000; // stays closed: every call is made
    let policy = metrics::with_local_recorder(&recorder, || {
        Policy::with_clock("metrics-exact", s, Clock::manual().0).unwrap()
    });
    let svc = CircuitBreakerLayer::new(&policy).layer(tower::service_fn(|n: u32| {
        std::future::ready(if n.is_multiple_of(3) {
            Err::<u32, substation::BoxError>("boom".into())
        } else {
            Ok(n)
        })
    }));
    let mut totals = std::collections::HashMap::<String, u64>::new();
    let mut read = || {
        names::flush();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                let outcome = key
                    .key()
                    .labels()
                    .find(|l| l.key() == "outcome")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                *totals.entry(outcome).or_default() += n;
            }
        }
        (totals["success"], totals["failure"])
    };
    for round in 1..=3u64 {
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let mut svc = svc.clone();
                scope.spawn(move || {
                    for n in 0..3_000 {
                        let _ = call_now(&mut svc, n);
                    }
                });
            }
        });
        assert_eq!(read(), (round * 4_000, round * 2_000), "round {round}");
    }
}
