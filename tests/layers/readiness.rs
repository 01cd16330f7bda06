//! The tower readiness contract for every layer, against an inner service that resets
//! its readiness on clone.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use substation::Policy;
use substation::breaker::{BreakerState, CircuitBreakerLayer};
use substation::clock::Clock;
use substation::settings::{BreakerMode, PolicySettings};
use substation::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceBuilder};

use crate::support::{Strict, call_now};

fn poll_ready<S: Service<u32>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn layers_poll_the_inner_service_before_calling_it() {
    let policy = Policy::with_clock(
        "ready-contract",
        PolicySettings::default(),
        Clock::manual().0,
    )
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(&policy))
        .layer(TimeoutLayer::new(&policy))
        .service(Strict::default());
    for i in 0..10 {
        assert_eq!(call_now(&mut svc, i).unwrap(), i);
    }
}

#[test]
fn a_clone_is_not_ready_because_the_original_was() {
    let policy =
        Policy::with_clock("ready-clone", PolicySettings::default(), Clock::manual().0).unwrap();
    let mut svc = CircuitBreakerLayer::new(&policy)
        .layer(TimeoutLayer::new(&policy).layer(Strict::default()));
    assert!(poll_ready(&mut svc).is_ready());
    let mut clone = svc.clone();
    // The clone must poll its own inner service before calling it.
    assert!(poll_ready(&mut clone).is_ready());
    let _ = call_now(&mut clone, 1).unwrap();
    // The original's reservation is intact.
    let fut = svc.call(2);
    drop(fut);
}

#[test]
#[should_panic(expected = "poll_ready must be called first")]
fn calling_without_poll_ready_is_a_bug_reported_clearly() {
    let policy = Policy::with_clock(
        "ready-missing",
        PolicySettings::default(),
        Clock::manual().0,
    )
    .unwrap();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(Strict::default());
    drop(svc.call(1));
}

#[test]
fn an_open_breaker_is_ready_without_polling_the_inner_service() {
    let mut s = PolicySettings::default();
    s.breaker.mode = BreakerMode::ForceOpen;
    let policy = Policy::with_clock("ready-open", s, Clock::manual().0).unwrap();
    let inner = Strict::default();
    let polls = inner.polls.clone();
    let mut svc = CircuitBreakerLayer::new(&policy).layer(inner);
    assert!(matches!(poll_ready(&mut svc), Poll::Ready(Ok(()))));
    assert_eq!(polls.load(Ordering::SeqCst), 0);
    assert!(call_now(&mut svc, 1).is_err());
    assert_eq!(policy.breaker_state(), BreakerState::ForcedOpen);
    policy.update(PolicySettings::default()).unwrap();
    assert_eq!(
        policy.breaker_state(),
        BreakerState::Closed,
        "forced, not tripped"
    );
}

#[test]
fn pending_inner_readiness_is_passed_through() {
    let policy = Policy::with_clock(
        "ready-pending",
        PolicySettings::default(),
        Clock::manual().0,
    )
    .unwrap();
    let (inner, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.allow(0);
    let mut svc = CircuitBreakerLayer::new(&policy).layer(TimeoutLayer::new(&policy).layer(inner));
    let mut task = tokio_test::task::spawn(());
    task.enter(|cx, _| assert!(Service::<u32>::poll_ready(&mut svc, cx).is_pending()));
    handle.allow(1);
    assert!(task.is_woken());
    task.enter(|cx, _| assert!(Service::<u32>::poll_ready(&mut svc, cx).is_ready()));
}
