use std::time::Duration;

use substation::settings::PolicySettings;
use substation::timeout::TimeoutLayer;
use substation::timeout::error::Elapsed;
use substation::{BoxError, Policy};
use tower::{Layer, ServiceExt, service_fn};

fn policy(name: &str, ms: Option<u64>) -> Policy {
    let mut s = PolicySettings::default();
    s.timeout.ms = ms;
    Policy::new(name, s).unwrap()
}

fn sleeper() -> impl tower::Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone {
    service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    })
}

#[tokio::test(start_paused = true)]
async fn slow_calls_fail_with_elapsed_and_fast_ones_pass() {
    let p = policy("timeout-basic", Some(100));
    let svc = TimeoutLayer::new(&p).layer(sleeper());
    assert_eq!(svc.clone().oneshot(99).await.unwrap(), 99);
    let start = tokio::time::Instant::now();
    let err = svc.clone().oneshot(101).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(err.to_string(), "request timed out");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_live() {
    let p = policy("timeout-live", Some(100));
    let svc = TimeoutLayer::new(&p).layer(sleeper());
    assert!(svc.clone().oneshot(500).await.is_err());
    let mut s = (*p.settings()).clone();
    s.timeout.ms = Some(1_000);
    p.update(s.clone()).unwrap();
    assert_eq!(
        svc.clone().oneshot(500).await.unwrap(),
        500,
        "same service, new deadline"
    );
    s.timeout.ms = None;
    p.update(s).unwrap();
    assert_eq!(
        svc.clone().oneshot(3_600_000).await.unwrap(),
        3_600_000,
        "no deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    let p = policy("timeout-errors", Some(100));
    let svc = TimeoutLayer::new(&p).layer(service_fn(|()| async {
        Err::<(), _>(std::io::Error::other("refused"))
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<std::io::Error>());
}

#[test]
fn a_ready_future_needs_no_runtime_and_no_timer() {
    // No tokio runtime here: creating a timer would panic. A future that is ready on
    // its first poll never creates one.
    let p = policy("timeout-ready", Some(100));
    let mut svc =
        TimeoutLayer::new(&p).layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
    assert_eq!(crate::support::call_now(&mut svc, 5).unwrap(), 5);
}
