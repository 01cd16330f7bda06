//! What the etcd tests share: a watched registry, steady traffic through the layers,
//! and reading etcd's own state to compare with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use substation::breaker::CircuitBreakerLayer;
use substation::live::etcd::EtcdSource;
use substation::live::{Changed, Health};
use substation::timeout::TimeoutLayer;
use substation::{BoxError, Substation};
use tokio::sync::broadcast;
use tower::{ServiceBuilder, ServiceExt, service_fn};

pub(crate) const PREFIX: &str = "/substation-test/app/";
pub(crate) const SHARED: &str = "/substation-test/shared/";

/// A source tuned for tests: short timeouts and backoff so faults are noticed fast.
pub(crate) fn source(endpoints: Vec<String>) -> EtcdSource {
    EtcdSource::new(endpoints, PREFIX)
        .request_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(10), Duration::from_millis(300))
}

pub(crate) async fn registry(source: EtcdSource) -> (Substation, broadcast::Receiver<Changed>) {
    let sub = Substation::builder().source(source).build().unwrap();
    let changes = sub.subscribe();
    tokio::time::timeout(Duration::from_secs(5), sub.initialized())
        .await
        .expect("initialized within the deadline");
    (sub, changes)
}

/// The `timeout.ms` of every policy in etcd under `prefix`, as the registry should see it.
pub(crate) async fn etcd_state(client: &mut etcd_client::Client) -> Vec<(String, Option<u64>)> {
    // A dead member among several endpoints answers "connection refused" to some
    // requests, and a member without a leader stalls: retry each with its own timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let resp = loop {
        let get = client.get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()));
        match tokio::time::timeout(Duration::from_millis(500), get).await {
            Ok(Ok(resp)) => break resp,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reading etcd kept failing: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut out: Vec<_> = resp
        .kvs()
        .iter()
        .map(|kv| {
            let name = kv.key_str().unwrap().strip_prefix(PREFIX).unwrap();
            let name = name.strip_prefix("policies/").unwrap().to_owned();
            let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
            (name, v["timeout"]["ms"].as_u64())
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn registry_state(sub: &Substation) -> Vec<(String, Option<u64>)> {
    sub.snapshot()
        .policies()
        .map(|(name, s)| (name.to_owned(), s.timeout.ms))
        .collect()
}

/// Puts `value` under `key` (relative to PREFIX), retrying on errors (etcd may be
/// restarting, or electing a leader); returns the revision of the successful put.
pub(crate) async fn put(client: &mut etcd_client::Client, key: &str, value: &str) -> u64 {
    put_with(client, key, |_| value.to_owned()).await
}

/// As [`put`], with a value per attempt: a put whose outcome is unknown (it failed or
/// timed out, yet may have been applied) is retried with a different value, so that
/// every revision written changes something.
pub(crate) async fn put_with(
    client: &mut etcd_client::Client,
    key: &str,
    value: impl Fn(u64) -> String,
) -> u64 {
    let full = format!("{PREFIX}{key}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        let put = client.put(full.as_str(), value(attempt), None);
        match tokio::time::timeout(Duration::from_secs(1), put).await {
            Ok(Ok(resp)) => return resp.header().unwrap().revision() as u64,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "put {key} kept failing: {other:?}"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

pub(crate) fn is_live(sub: &Substation) -> bool {
    matches!(sub.snapshot().health(), Health::Live { .. })
}

pub(crate) fn is_stale(sub: &Substation) -> bool {
    matches!(sub.snapshot().health(), Health::Stale { .. })
}

/// Calls through a breaker + timeout stack of `policy` in a loop until stopped; every
/// call must succeed whatever happens to etcd.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Traffic {
    pub(crate) fn start(sub: &Substation, policy: &str) -> Traffic {
        let policy = sub.policy(policy);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let svc = ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(&policy))
            .layer(TimeoutLayer::new(&policy))
            .service(service_fn(
                |x: u64| async move { Ok::<_, std::io::Error>(x) },
            ));
        let task = {
            let stop = stop.clone();
            let ok = ok.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match svc.clone().oneshot(n).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => return Err(format!("call {n} failed: {}", BoxError::from(e))),
                    };
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(())
            })
        };
        Traffic { stop, ok, task }
    }

    /// Stops the traffic; panics if any call failed or none was made.
    pub(crate) async fn check(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap().unwrap();
        assert!(self.ok.load(Ordering::Relaxed) > 0, "no call was made");
    }
}

/// Drains the notices received so far.
pub(crate) fn drain(changes: &mut broadcast::Receiver<Changed>) -> Vec<Changed> {
    let mut out = Vec::new();
    loop {
        match changes.try_recv() {
            Ok(c) => out.push(c),
            Err(broadcast::error::TryRecvError::Empty) => return out,
            Err(e) => panic!("notices: {e}"),
        }
    }
}
