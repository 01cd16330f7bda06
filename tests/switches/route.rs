//! The route layer: readiness of both inner services, and flips under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use substation::switch::{DecimalKey, Route, Switch, SwitchSettings};
use substation::{BoxError, Substation, live::InMemorySource};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Service, ServiceExt, service_fn};
use tower_test::mock;

fn key(req: &&'static str) -> Option<&'static str> {
    Some(*req)
}

#[tokio::test]
async fn ready_only_when_both_are_and_a_call_uses_one_readiness() {
    let switch = Switch::detached("route-ready", SwitchSettings::off()).unwrap();
    let (old, mut old_handle) = mock::pair::<&'static str, &'static str>();
    let (new, mut new_handle) = mock::pair::<&'static str, &'static str>();
    let mut route = task::spawn(Route::new(&switch, old, new, key));
    old_handle.allow(0);
    new_handle.allow(1);
    assert_pending!(route.enter(|cx, mut r| r.as_mut().get_mut().poll_ready(cx)));
    old_handle.allow(1);
    assert!(
        route.is_woken(),
        "the old service's readiness wakes the route"
    );
    assert_ready_ok!(route.enter(|cx, mut r| r.as_mut().get_mut().poll_ready(cx)));

    // Off: to the old service; the new one keeps its readiness.
    let fut = route.call("a");
    let (req, send) = old_handle.next_request().await.unwrap();
    assert_eq!(req, "a");
    send.send_response("old");
    assert_eq!(fut.await.unwrap(), "old");
    assert_pending!(route.enter(|cx, mut r| r.as_mut().get_mut().poll_ready(cx)));
    old_handle.allow(1);
    assert_ready_ok!(route.enter(|cx, mut r| r.as_mut().get_mut().poll_ready(cx)));

    // On: to the new one.
    switch.update(SwitchSettings::on()).unwrap();
    let fut = route.call("b");
    let (req, send) = new_handle.next_request().await.unwrap();
    assert_eq!(req, "b");
    send.send_response("new");
    assert_eq!(fut.await.unwrap(), "new");
}

#[tokio::test]
async fn an_error_from_either_poll_ready_is_the_routes() {
    let switch = Switch::detached("route-err", SwitchSettings::on()).unwrap();
    let (old, mut old_handle) = mock::pair::<&'static str, &'static str>();
    let (new, mut new_handle) = mock::pair::<&'static str, &'static str>();
    let mut route = Route::new(&switch, old, new, key);
    new_handle.allow(1);
    old_handle.send_error("old is broken");
    let err = route.ready().await.unwrap_err();
    assert_eq!(err.to_string(), "old is broken");
}

#[test]
#[should_panic(expected = "poll_ready must be called first")]
fn a_clone_starts_unpolled() {
    let switch = Switch::detached("route-clone", SwitchSettings::on()).unwrap();
    let svc = service_fn(|_: &'static str| async { Ok::<_, BoxError>("x") });
    let mut route = Route::new(&switch, svc, svc, key);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(matches!(route.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut clone = route.clone();
    drop(clone.call("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_live_under_load_loses_no_request() {
    let source = InMemorySource::new();
    let substation = Substation::builder()
        .switch("checkout-v2", SwitchSettings::off())
        .source(source.clone())
        .build()
        .unwrap();
    let switch = substation.switch("checkout-v2");
    let old_calls = Arc::new(AtomicU64::new(0));
    let new_calls = Arc::new(AtomicU64::new(0));
    let counting = |counter: Arc<AtomicU64>, new_path: bool| {
        service_fn(move |user: u64| {
            let counter = counter.clone();
            async move {
                if user.is_multiple_of(7) {
                    tokio::task::yield_now().await; // some calls are pending once
                }
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>((user, new_path))
            }
        })
    };
    let route = Route::new(
        &switch,
        counting(old_calls.clone(), false),
        counting(new_calls.clone(), true),
        |user: &u64| Some(DecimalKey::from(*user)),
    );

    const TASKS: u64 = 8;
    const PER_TASK: u64 = 2_000;
    const FLIPS: usize = 20;
    // Every task keeps sending until it has sent PER_TASK requests *and* the flips are
    // over, so requests are in flight during every flip however the machine schedules.
    let flipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let route = route.clone();
        let flipped = flipped.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < PER_TASK || !flipped.load(Ordering::Acquire) {
                let user = t * 1_000_000 + sent;
                let (echo, _path) = route.clone().oneshot(user).await.expect("no request lost");
                assert_eq!(echo, user);
                sent += 1;
            }
            sent
        }));
    }
    // Flip while the requests run: 50 %, on, off, 1 % …
    let flips = [
        "{\"percent\": 50}",
        "{\"percent\": 100}",
        "{\"on\": false}",
        "{\"percent\": 1}",
    ];
    for n in 0..FLIPS {
        source
            .put("switches/checkout-v2", flips[n % flips.len()])
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flipped.store(true, Ordering::Release);
    let mut sent = 0;
    for t in tasks {
        sent += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("requests finish")
            .unwrap();
    }
    let (old, new) = (
        old_calls.load(Ordering::Relaxed),
        new_calls.load(Ordering::Relaxed),
    );
    eprintln!("{sent} requests, {old} old, {new} new, {FLIPS} flips");
    assert!(sent >= TASKS * PER_TASK);
    assert_eq!(old + new, sent, "every request reached exactly one path");

    // At rest, each user's path is the switch's sticky answer.
    source
        .put("switches/checkout-v2", r#"{"percent": 50}"#)
        .unwrap();
    for user in 0..200u64 {
        let (_, new_path) = route.clone().oneshot(user).await.unwrap();
        assert_eq!(new_path, switch.is_on(user.to_string()), "user {user}");
    }
}
