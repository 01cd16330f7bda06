//! Who owns what: a layer's state is dropped with its last layer, service and future;
//! a policy's life starts afresh under the same name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use substation::fallback::Fallback;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Counts the live instances of whatever holds one.
#[derive(Debug)]
struct Live(Arc<AtomicIsize>);

impl Live {
    fn new(count: &Arc<AtomicIsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}

impl Clone for Live {
    fn clone(&self) -> Self {
        Live::new(&self.0)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response with drop glue that counts its live copies.
#[derive(Clone, Debug)]
struct Answer {
    value: u32,
    _live: Live,
}

/// The alternate service: its clones count as live too.
#[derive(Clone)]
struct Alternate {
    live: Live,
}

impl Service<u32> for Alternate {
    type Response = Answer;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Answer, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, value: u32) -> Self::Future {
        std::future::ready(Ok(Answer {
            value,
            _live: self.live.clone(),
        }))
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn fallback_tiers_are_dropped_with_the_last_layer_service_and_future() {
    let live = Arc::new(AtomicIsize::new(0));
    let policy = Policy::new("own-tiers", PolicySettings::default()).unwrap();
    let alternate = Alternate {
        live: Live::new(&live),
    };
    let answer = |value| Answer {
        value,
        _live: Live::new(&live),
    };
    let layer = PolicyLayer::new(&policy).fallback(
        Fallback::with_parts(|x: &u32| *x)
            .cache(16)
            .service(alternate, |x: &u32| Some(*x + 100))
            .static_value(answer(7)),
    );
    drop(policy);
    // The dependency answers 1 and 2, fails 3, and never answers 4.
    let live2 = live.clone();
    let dependency = service_fn(move |x: u32| {
        let live = live2.clone();
        async move {
            match x {
                3 => Err::<Answer, BoxError>("down".into()),
                4 => std::future::pending().await,
                value => Ok(Answer {
                    value,
                    _live: Live::new(&live),
                }),
            }
        }
    });
    let svc = layer.layer(dependency);
    assert_eq!(svc.clone().oneshot(1).await.unwrap().value, 1, "cached");
    assert_eq!(
        svc.clone().oneshot(3).await.unwrap().value,
        103,
        "the alternate service"
    );
    let mut pending = svc.clone();
    let mut in_flight: Pin<Box<dyn Future<Output = _> + Send>> =
        Box::pin(pending.ready().await.unwrap().call(4));
    assert!(futures_poll(&mut in_flight).is_pending());
    // Held: the alternate service, the static value and the cached answer.
    assert!(live.load(Ordering::SeqCst) >= 3);

    drop((layer, svc, pending));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        live.load(Ordering::SeqCst) >= 3,
        "a call in flight still holds the tiers"
    );
    drop(in_flight);
    eventually("the tiers dropped after the last future", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
}

fn futures_poll<F: Future + ?Sized + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn a_policy_outlives_its_handles_while_a_call_is_in_flight() {
    let live = Arc::new(AtomicIsize::new(0));
    let mut s = PolicySettings::default();
    s.bulkhead.max_concurrent = Some(1);
    let policy = Policy::new("own-in-flight", s).unwrap();
    let guard = Live::new(&live);
    let svc = PolicyLayer::new(&policy).layer(service_fn(move |_: u32| {
        let _held = guard.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(1u32)
        }
    }));
    let call = tokio::spawn(svc.clone().oneshot(0));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(policy.in_flight(), 1);
    drop((policy, svc));
    // The call finishes against the policy's state (its bulkhead slot, its breaker),
    // which is freed after it.
    assert_eq!(call.await.unwrap().unwrap(), 1);
    eventually("everything dropped", || live.load(Ordering::SeqCst) == 0).await;
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn each_life_of_a_name_records_with_the_recorder_of_its_creation() {
    use substation::testkit::Metrics;
    for run in 0..2 {
        let metrics = Metrics::new();
        let policy = metrics
            .capture(|| Policy::new("own-metrics", PolicySettings::default()))
            .unwrap();
        let svc = metrics.capture(|| {
            PolicyLayer::new(&policy)
                .layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }))
        });
        for i in 0..3 {
            svc.clone().oneshot(i).await.unwrap();
        }
        assert_eq!(
            metrics.counter(
                "substation_calls_total",
                &[("policy", "own-metrics"), ("outcome", "success")]
            ),
            3,
            "run {run}: a second life of the name records with its own recorder"
        );
    }
}

/// A dependency whose copies count as live; it never answers 4.
#[derive(Clone)]
struct Counted {
    _live: Live,
}

impl Service<u32> for Counted {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, value: u32) -> Self::Future {
        Box::pin(async move {
            if value == 4 {
                std::future::pending::<()>().await;
            }
            Ok(value)
        })
    }
}

#[tokio::test]
async fn the_retry_stage_state_is_dropped_with_the_last_service_and_future() {
    // The retry stage's template (a copy of the inner service, the `Retryable`, the
    // policy) is leased by each future through the service's own count (`lease_mut`):
    // it must live while a future does, and go with the last of them.
    use substation::retry::{Errors, RetryLayer};
    let live = Arc::new(AtomicIsize::new(0));
    let settings = PolicySettings::default().with(|s| s.retry.max_attempts = 3);
    let policy = Policy::new("own-retry", settings).unwrap();
    let layer = RetryLayer::new(&policy, Errors::cloning(|x: &u32| Some(*x)));
    drop(policy);
    let svc = layer.layer(Counted {
        _live: Live::new(&live),
    });
    for x in 10..110 {
        assert_eq!(svc.clone().oneshot(x).await.unwrap(), x);
    }
    let mut pending = svc.clone();
    let mut in_flight = pending.ready().await.unwrap().call(4);
    assert!(futures_poll(&mut in_flight).is_pending());
    drop((layer, svc, pending));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        live.load(Ordering::SeqCst),
        1,
        "a call in flight holds the template's copy of the service, and only that"
    );
    drop(in_flight);
    eventually("the template dropped after the last future", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
}
