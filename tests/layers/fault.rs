//! Fault injection: rates, targeting, the cap on active faults, live on and off.

use std::time::Duration;

use substation::fault::{FaultLayer, InjectedFault};
use substation::settings::{FaultTarget, PolicySettings};
use substation::{Policy, fallback::Fallback, stack::PolicyLayer};
use tower::{Layer, ServiceExt, service_fn};

use crate::support::call_now;

fn settings(f: impl FnOnce(&mut PolicySettings)) -> PolicySettings {
    let mut s = PolicySettings::default();
    f(&mut s);
    s
}

fn echo() -> impl tower::Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = std::future::Ready<Result<u32, std::io::Error>>,
> + Clone {
    service_fn(|x: u32| std::future::ready(Ok::<_, std::io::Error>(x)))
}

#[test]
fn off_by_default_and_abort_rates_hold_over_100_000_calls() {
    let policy = Policy::new("fault-rate", PolicySettings::default()).unwrap();
    let mut svc = FaultLayer::new(&policy).seed(7).layer(echo());
    for i in 0..1_000 {
        assert_eq!(call_now(&mut svc, i).unwrap(), i, "off by default");
    }
    for percent in [1.0, 10.0, 50.0] {
        policy
            .update(settings(|s| s.fault.abort_percent = percent))
            .unwrap();
        let n = 100_000;
        let aborted = (0..n)
            .filter(|i| match call_now(&mut svc, *i) {
                Ok(_) => false,
                Err(e) => {
                    assert!(e.is::<InjectedFault>());
                    true
                }
            })
            .count();
        let rate = aborted as f64 * 100.0 / f64::from(n);
        assert!((rate - percent).abs() <= 1.0, "{percent} %: {rate} %");
    }
    policy.update(PolicySettings::default()).unwrap();
    assert_eq!(
        call_now(&mut svc, 5).unwrap(),
        5,
        "off again with one write"
    );
}

#[tokio::test(start_paused = true)]
async fn delays_and_aborts_are_independent_draws() {
    let policy = Policy::new(
        "fault-independent",
        settings(|s| {
            s.fault.abort_percent = 50.0;
            s.fault.delay_percent = 50.0;
            s.fault.delay_ms = 10;
        }),
    )
    .unwrap();
    let svc = FaultLayer::new(&policy).seed(11).layer(echo());
    let (mut aborted, mut delayed, n) = (0u32, 0u32, 20_000u32);
    for i in 0..n {
        let start = tokio::time::Instant::now();
        match svc.clone().oneshot(i).await {
            Err(e) if e.is::<InjectedFault>() => aborted += 1,
            Ok(_) if start.elapsed() >= Duration::from_millis(10) => delayed += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // An abort wins over a delay on the same call: delayed = P(not abort and delay) = 25 %.
    let a = f64::from(aborted) * 100.0 / f64::from(n);
    let d = f64::from(delayed) * 100.0 / f64::from(n);
    assert!((a - 50.0).abs() <= 1.5, "aborted {a} %");
    assert!((d - 25.0).abs() <= 1.5, "delayed {d} %");
}

#[test]
fn targeting_keys_and_markers() {
    let policy = Policy::new(
        "fault-target",
        settings(|s| {
            s.fault.abort_percent = 100.0;
            s.fault.target = FaultTarget::Keys(10.0);
        }),
    )
    .unwrap();
    let mut svc = FaultLayer::new(&policy)
        .key(|user: &u32, hand: &mut dyn FnMut(&[u8])| hand(user.to_string().as_bytes()))
        .marker(|req: &u32| *req >= 1_000_000)
        .layer(echo());
    let hit: Vec<u32> = (0..100_000)
        .filter(|i| call_now(&mut svc, *i).is_err())
        .collect();
    let rate = hit.len() as f64 / 1_000.0;
    assert!((rate - 10.0).abs() <= 1.0, "{rate} % of keys");
    // Sticky: the same keys again.
    assert!(hit.iter().all(|i| call_now(&mut svc, *i).is_err()));
    // Marker targeting.
    policy
        .update(settings(|s| {
            s.fault.abort_percent = 100.0;
            s.fault.target = FaultTarget::Marked;
        }))
        .unwrap();
    assert!(call_now(&mut svc, 5).is_ok());
    assert!(call_now(&mut svc, 1_000_005).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_cap_on_active_faults_holds() {
    let policy = Policy::new(
        "fault-cap",
        settings(|s| {
            s.fault.delay_percent = 100.0;
            s.fault.delay_ms = 1_000;
            s.fault.max_active = Some(3);
        }),
    )
    .unwrap();
    let svc = FaultLayer::new(&policy).layer(echo());
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                svc.oneshot(i).await.unwrap();
                start.elapsed()
            })
        })
        .collect();
    let mut delayed = 0;
    for c in calls {
        if c.await.unwrap() >= Duration::from_millis(1_000) {
            delayed += 1;
        }
    }
    assert_eq!(delayed, 3, "never more than max_active faults at once");
    // Once they are over, the next call is delayed again.
    let start = tokio::time::Instant::now();
    svc.clone().oneshot(99).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1_000));
}

#[tokio::test]
async fn an_injected_fault_is_caught_by_the_fallback() {
    let policy = Policy::new(
        "fault-fallback",
        settings(|s| s.fault.abort_percent = 100.0),
    )
    .unwrap();
    let svc = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value(0u32))
        .layer(FaultLayer::new(&policy).layer(echo()));
    assert_eq!(
        svc.clone().oneshot(5).await.unwrap(),
        0,
        "proved: the fallback holds"
    );
    // A response the user builds instead of an error (an HTTP 503, say).
    let svc = FaultLayer::new(&policy)
        .abort_with(|_: &u32| 503u32)
        .layer(echo());
    assert_eq!(svc.oneshot(5).await.unwrap(), 503);
}
