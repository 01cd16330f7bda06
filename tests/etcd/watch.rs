//! The watch on a healthy etcd: values, rejections, deletes, layers, notices.

use std::time::Duration;

use substation::Substation;
use substation::breaker::{BreakerState, CircuitBreakerLayer};
use substation::live::{Health, Scope};
use substation::settings::PolicySettings;
use tower::Layer as _;

use substation::live::etcd::EtcdSource;

use crate::common::{self, PREFIX, SHARED, put};
use crate::logs::{self, show};
use crate::proxy::Proxy;
use crate::support::{Etcd, eventually};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_rejections_and_deletes() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(
        &mut client,
        "policies/search",
        r#"{"timeout": {"ms": 111}}"#,
    )
    .await;
    let mut defaults = PolicySettings::default();
    defaults.breaker.min_calls = 3;
    let sub = Substation::builder()
        .policy("payments", defaults.clone())
        .source(common::source(vec![etcd.endpoint()]))
        .build()
        .unwrap();
    sub.initialized().await;
    let search = sub.policy("search");
    let payments = sub.policy("payments");
    assert_eq!(search.settings().timeout.ms, Some(111), "listed at start");
    assert!(matches!(sub.snapshot().health(), Health::Live { .. }));

    // A live change reaches a running service, without touching its breaker.
    let mut svc = CircuitBreakerLayer::new(&payments).layer(tower::service_fn(|()| async {
        Err::<(), _>(std::io::Error::other("down"))
    }));
    for _ in 0..3 {
        let _ = tower::ServiceExt::ready(&mut svc).await.unwrap();
        let _ = tower::Service::call(&mut svc, ()).await;
    }
    assert_eq!(payments.breaker_state(), BreakerState::Open);
    put(
        &mut client,
        "policies/payments",
        r#"{"timeout": {"ms": 42}}"#,
    )
    .await;
    eventually("payments timeout 42", WAIT, || async {
        payments.settings().timeout.ms == Some(42)
    })
    .await;
    assert_eq!(
        payments.settings().breaker.min_calls,
        3,
        "unnamed fields keep the code default"
    );
    assert_eq!(
        payments.breaker_state(),
        BreakerState::Open,
        "breaker state survives"
    );

    // Bad values: each rejected for its key alone, last good value kept.
    for (bad, reason) in [
        (r#"{"timeout": {"ms": 42"#, "malformed JSON"),
        (
            r#"{"breaker": {"error_rate": 150}}"#,
            "breaker.error_rate: 150 is not in 0..=100",
        ),
        (
            r#"{"breaker": {"eror_rate": 10}}"#,
            "breaker.eror_rate: unknown field",
        ),
    ] {
        let rev = put(&mut client, "policies/payments", bad).await;
        put(
            &mut client,
            "policies/search",
            &format!(r#"{{"timeout": {{"ms": {}}}}}"#, rev),
        )
        .await;
        eventually("search follows", WAIT, || async {
            search.settings().timeout.ms == Some(rev)
        })
        .await;
        let snap = sub.snapshot();
        let rejected: Vec<_> = snap.rejected().collect();
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].key, "policies/payments");
        assert_eq!(rejected[0].layer, Scope::App);
        assert_eq!(rejected[0].revision, rev);
        assert!(
            rejected[0].error.to_string().starts_with(reason),
            "{}",
            rejected[0].error
        );
        assert_eq!(
            payments.settings().timeout.ms,
            Some(42),
            "last good value kept"
        );
    }
    // A key that is no setting at all is listed as rejected too.
    put(&mut client, "colours/red", "{}").await;
    eventually("unknown key rejected", WAIT, || async {
        sub.snapshot().rejected().any(|r| r.key == "colours/red")
    })
    .await;

    // Deleting falls back to the code default; the rejection goes with the key.
    let deleted = client
        .delete(format!("{PREFIX}policies/payments"), None)
        .await
        .unwrap();
    let at = deleted.header().map_or(0, |h| h.revision()) as u64;
    eventually("payments back to its code default", WAIT, || async {
        *payments.settings() == defaults
    })
    .await;
    // A live policy gets its settings before the snapshot that says so is published:
    // the snapshot is read once it has the delete's revision.
    eventually("the delete's snapshot", WAIT, || async {
        sub.snapshot().revision() >= at
    })
    .await;
    assert!(
        !sub.snapshot()
            .rejected()
            .any(|r| r.key == "policies/payments")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_defaults_layer_under_the_application() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client
        .put(
            format!("{SHARED}policies/search"),
            r#"{"timeout": {"ms": 500}, "breaker": {"min_calls": 9}}"#,
            None,
        )
        .await
        .unwrap();
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).shared_prefix(SHARED))
        .build()
        .unwrap();
    sub.initialized().await;
    let search = sub.policy("search");
    assert_eq!(search.settings().timeout.ms, Some(500));
    put(&mut client, "policies/search", r#"{"timeout": {"ms": 50}}"#).await;
    eventually("app layer wins", WAIT, || async {
        search.settings().timeout.ms == Some(50)
    })
    .await;
    assert_eq!(
        search.settings().breaker.min_calls,
        9,
        "fields the app does not name come from the fleet"
    );
    client
        .put(
            format!("{SHARED}policies/search"),
            r#"{"breaker": {"min_calls": 4}}"#,
            None,
        )
        .await
        .unwrap();
    eventually("fleet change applies", WAIT, || async {
        search.settings().breaker.min_calls == 4
    })
    .await;
    client
        .delete(format!("{PREFIX}policies/search"), None)
        .await
        .unwrap();
    eventually("back to the fleet's value", WAIT, || async {
        search.settings().timeout.ms == Some(1000)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_is_one_snapshot() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (sub, mut changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let txn = etcd_client::Txn::new().and_then(vec![
        etcd_client::TxnOp::put(
            format!("{PREFIX}policies/a"),
            r#"{"timeout": {"ms": 1}}"#,
            None,
        ),
        etcd_client::TxnOp::put(
            format!("{PREFIX}policies/b"),
            r#"{"timeout": {"ms": 2}}"#,
            None,
        ),
    ]);
    let rev = client.txn(txn).await.unwrap().header().unwrap().revision() as u64;
    let notice = tokio::time::timeout(WAIT, changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.revision, rev);
    assert_eq!(&notice.keys[..], ["policies/a", "policies/b"]);
    let snap = sub.snapshot();
    assert_eq!(snap.revision(), rev);
    assert_eq!(snap.policy("a").unwrap().timeout.ms, Some(1));
    assert_eq!(snap.policy("b").unwrap().timeout.ms, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_registry_stops_its_tasks() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let dir = std::env::temp_dir().join(format!("substation-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let (sub, _changes) =
        common::registry(common::source(vec![etcd.endpoint()]).snapshot_file(dir.join("s"))).await;
    eventually("watching", WAIT, || async { common::is_live(&sub) }).await;
    assert!(tasks() > before);
    drop(sub);
    eventually(
        "the driver and the snapshot writer are gone",
        WAIT,
        || async { tasks() <= before },
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// With a shared prefix, two watches are created on one stream; the application's
/// watch can replay or stream events before the shared one is acknowledged. Registries
/// started one after another over a slow link while a writer keeps writing: none may
/// miss a write. The window is a matter of timing, so the setup is repeated (each round
/// under its own prefixes) until the sources report that they applied events in it —
/// at most [`ROUNDS`] rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_watch_creation_are_not_lost() {
    crate::skip_without_etcd!();
    logs::install();
    const ROUNDS: usize = 10;
    const N: u64 = 300;
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let slow = crate::proxy::delayed(
        etcd.endpoint().trim_start_matches("http://").to_owned(),
        Duration::from_millis(40),
    )
    .await;
    for round in 1..=ROUNDS {
        let prefix = logs::unique_prefix("creation");
        let shared = logs::unique_prefix("creation-shared");
        let writer = {
            let mut client = client.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    let value = format!(r#"{{"timeout":{{"ms":{}}}}}"#, i + 1);
                    client
                        .put(format!("{prefix}policies/k{i}"), value, None)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let mut registries = Vec::new();
        for _ in 0..6 {
            let source = EtcdSource::new([slow.clone()], &prefix)
                .shared_prefix(&shared)
                .request_timeout(Duration::from_secs(5))
                .backoff(Duration::from_millis(10), Duration::from_millis(300));
            registries.push(Substation::builder().source(source).build().unwrap());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        writer.await.unwrap();
        let last = client
            .clone()
            .put(format!("{prefix}policies/last"), "{}", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision() as u64;
        for (n, sub) in registries.iter().enumerate() {
            eventually(
                &format!("registry {n} at the last revision"),
                WAIT,
                || async { sub.snapshot().revision() >= last },
            )
            .await;
            let snapshot = sub.snapshot();
            let missing: Vec<u64> = (0..N)
                .filter(|i| {
                    let policy = snapshot.policy(&format!("k{i}"));
                    policy.and_then(|p| p.timeout.ms) != Some(i + 1)
                })
                .collect();
            assert!(missing.is_empty(), "registry {n} missed {missing:?}");
        }
        // Applied while the shared watch was being created, by any of the registries.
        let in_window: usize = logs::matching(&prefix, "while the next one is created")
            .iter()
            .filter_map(|l| l.field("events")?.parse::<usize>().ok())
            .sum();
        eprintln!("round {round}: {in_window} event(s) applied during watch creation");
        if in_window > 0 {
            return;
        }
    }
    panic!("in {ROUNDS} rounds, no event was applied while a watch was being created");
}

/// A watcher that falls behind (its connection held back while 1,000 large writes land in
/// its prefix and 100 in the shared one) catches up through batches of its two watches
/// whose header revisions interleave: the shared watch may report a revision below what
/// the application's watch has applied. That is no rewind (one stream cannot go back in
/// time); it must not be logged as one, nor trigger a listing, and nothing may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_batches_of_the_two_watches_are_no_rewind() {
    crate::skip_without_etcd!();
    logs::install();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_owned()).await;
    let prefix = logs::unique_prefix("interleave");
    let shared = logs::unique_prefix("interleave-shared");
    // The liveness check must not end the watch while the proxy holds it back: that
    // would be a failure and a listing, which would hide what this test looks for.
    let source = EtcdSource::new([proxy.endpoint()], &prefix)
        .shared_prefix(&shared)
        .request_timeout(Duration::from_secs(10))
        .backoff(Duration::from_millis(10), Duration::from_millis(300))
        .keep_alive(Duration::from_secs(120), Duration::from_secs(120));
    let sub = Substation::builder().source(source).build().unwrap();
    eventually("live", WAIT, || async { common::is_live(&sub) }).await;

    // A valid value of 64 KiB: JSON allows any amount of whitespace.
    let big = |ms: u64| format!(r#"{{"timeout":{{"ms":{ms}}}{}}}"#, " ".repeat(65536));
    let mut last = 0;
    for round in 0..3u64 {
        proxy.pause();
        let writes = (0..1100u64).map(|i| {
            let mut client = client.clone();
            let (prefix, shared) = (prefix.clone(), shared.clone());
            let value = big(round * 10_000 + i + 1);
            async move {
                let (key, value) = if i % 11 == 0 {
                    let ms = round * 10_000 + i + 1;
                    (
                        format!("{shared}policies/s{}", i % 7),
                        format!(r#"{{"timeout":{{"ms":{ms}}}}}"#),
                    )
                } else {
                    (format!("{prefix}policies/k{}", i % 10), value)
                };
                client
                    .put(key, value, None)
                    .await
                    .unwrap()
                    .header()
                    .unwrap()
                    .revision() as u64
            }
        });
        // A few at a time, in order of submission.
        let revisions: Vec<u64> = futures_lite_ordered(writes, 8).await;
        last = last.max(revisions.into_iter().max().unwrap());
        proxy.resume();
        eventually("caught up", Duration::from_secs(120), || async {
            sub.snapshot().revision() >= last
        })
        .await;
    }
    let rewinds = logs::matching(&prefix, "BACKWARDS");
    let relists = logs::matching(&prefix, "listing etcd again");
    let failures = logs::failures(&prefix);
    eprintln!(
        "{} rewind(s), {} relist(s), {} failure(s), {} listing(s)",
        rewinds.len(),
        relists.len(),
        failures.len(),
        logs::listings(&prefix)
    );
    assert!(rewinds.is_empty(), "false rewinds:{}", show(&rewinds));
    assert!(relists.is_empty(), "relists:{}", show(&relists));
    assert!(failures.is_empty(), "failures:{}", show(&failures));
    // Nothing lost: every key holds etcd's value.
    let mut client = client.clone();
    for (layer_prefix, n) in [(&prefix, 10), (&shared, 7)] {
        let listed = client
            .get(
                layer_prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert_eq!(listed.kvs().len(), n);
    }
    let snapshot = sub.snapshot();
    let listed = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    for kv in listed.kvs() {
        let name = kv
            .key_str()
            .unwrap()
            .strip_prefix(&format!("{prefix}policies/"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
        assert_eq!(
            snapshot.policy(name).and_then(|p| p.timeout.ms),
            v["timeout"]["ms"].as_u64(),
            "{name}"
        );
    }
}

/// Runs `futures` with at most `width` in flight; returns their outputs in order.
async fn futures_lite_ordered<F: std::future::Future<Output = u64> + Send + 'static>(
    futures: impl Iterator<Item = F>,
    width: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    let mut futures = futures.peekable();
    while futures.peek().is_some() {
        let batch: Vec<_> = futures.by_ref().take(width).map(tokio::spawn).collect();
        for f in batch {
            out.push(f.await.unwrap());
        }
    }
    out
}

/// A prefix of 6 MiB (100 values of 64 KiB) is listed and watched: etcd sends it in one
/// message, past tonic's default limit of 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_larger_than_four_mib_is_listed() {
    crate::skip_without_etcd!();
    logs::install();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let prefix = logs::unique_prefix("large");
    let padding = " ".repeat(65536);
    for i in 0..100u64 {
        let value = format!(r#"{{"timeout":{{"ms":{}}}{padding}}}"#, i + 1);
        client
            .put(format!("{prefix}policies/k{i}"), value, None)
            .await
            .unwrap();
    }
    let source = EtcdSource::new([etcd.endpoint()], &prefix)
        .request_timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(10), Duration::from_millis(300));
    let sub = Substation::builder().source(source).build().unwrap();
    eventually("listed", WAIT, || async { common::is_live(&sub) }).await;
    let snapshot = sub.snapshot();
    assert_eq!(snapshot.policies().len(), 100);
    assert_eq!(snapshot.policy("k99").and_then(|p| p.timeout.ms), Some(100));
    let failures = logs::failures(&prefix);
    assert!(failures.is_empty(), "{}", show(&failures));
}
