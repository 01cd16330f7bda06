//! The watch through every fault an operator meets; calls through the layers keep
//! succeeding all along.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{
    self, PREFIX, Traffic, drain, etcd_state, is_live, is_stale, put, put_with, registry_state,
};
use crate::proxy::Proxy;
use crate::support::{Cluster, Etcd, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn value(n: u64) -> String {
    format!(r#"{{"timeout": {{"ms": {n}}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_during_a_thousand_writes_loses_nothing() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (sub, mut changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let traffic = Traffic::start(&sub, "p0");
    let first = put(&mut client, "policies/p0", &value(1)).await;

    // Every write has a distinct value, so every revision changes something and must
    // produce exactly one notice, in order. Notices are taken as they come (after each
    // write), so the registry's 1,024-slot broadcast never fills: a test that drained a
    // thousand notices at the end would pass or fail by that margin (`drain` fails on a
    // lag).
    let mut seen: Vec<u64> = Vec::new();
    let mut written = vec![first];
    for n in 2..=1000u64 {
        if n == 300 || n == 700 {
            etcd.kill();
            etcd.restart().await;
        }
        // Distinct per attempt too: n·64 + attempt.
        let key = format!("policies/p{}", n % 10);
        written.push(put_with(&mut client, &key, |attempt| value(n * 64 + attempt.min(63))).await);
        seen.extend(drain(&mut changes).iter().map(|c| c.revision));
    }
    let last = *written.last().unwrap();
    eventually("the registry reaches the last revision", WAIT, || async {
        sub.snapshot().revision() >= last
    })
    .await;
    // A notice is sent just after its snapshot is published: wait for the last one.
    eventually("every notice is received", WAIT, || {
        seen.extend(drain(&mut changes).iter().map(|c| c.revision));
        let done = seen.last().is_some_and(|r| *r >= last);
        async move { done }
    })
    .await;

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "applied out of order or twice"
    );
    let seen_set: BTreeSet<u64> = seen.iter().copied().collect();
    // Only this test writes, so the revisions from the first put to the last are all ours.
    let expected: BTreeSet<u64> = (first..=last).collect();
    assert_eq!(
        seen_set,
        expected,
        "skipped revisions: {:?}",
        expected.difference(&seen_set).collect::<Vec<_>>()
    );
    assert!(written.iter().all(|r| seen_set.contains(r)));
    assert_eq!(registry_state(&sub), etcd_state(&mut client).await);
    traffic.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_stream() {
    crate::skip_without_etcd!();
    let mut cluster = Cluster::start().await;
    let mut client = cluster.client().await;
    let (sub, _changes) = common::registry(common::source(cluster.endpoints())).await;
    let traffic = Traffic::start(&sub, "p0");
    for n in 1..=50u64 {
        put(&mut client, &format!("policies/p{}", n % 5), &value(n)).await;
    }
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let mut last = 0;
    for n in 51..=150u64 {
        last = put(&mut client, &format!("policies/p{}", n % 5), &value(n)).await;
    }
    eventually("converged after the leader died", WAIT, || async {
        sub.snapshot().revision() >= last
    })
    .await;
    assert_eq!(registry_state(&sub), etcd_state(&mut client).await);
    cluster.restart(leader).await;
    traffic.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_the_watchers_revision_relists() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_owned()).await;
    let (sub, _changes) = common::registry(common::source(vec![proxy.endpoint()])).await;
    let traffic = Traffic::start(&sub, "stays");
    put(&mut client, "policies/gone", &value(7)).await;
    put(&mut client, "policies/stays", &value(8)).await;
    eventually("listed", WAIT, || async {
        sub.snapshot().policies().len() == 2
    })
    .await;

    // The watcher is cut off while keys change and history is compacted away.
    proxy.cut();
    eventually("stale", WAIT, || async { is_stale(&sub) }).await;
    client
        .delete(format!("{PREFIX}policies/gone"), None)
        .await
        .unwrap();
    for n in 1..=20u64 {
        put(&mut client, "policies/stays", &value(100 + n)).await;
    }
    let last = put(&mut client, "policies/new", &value(9)).await;
    client.compact(last as i64, None).await.unwrap();
    proxy.restore();

    eventually("converged after compaction", WAIT, || async {
        sub.snapshot().revision() >= last && is_live(&sub)
    })
    .await;
    assert_eq!(registry_state(&sub), etcd_state(&mut client).await);
    assert!(
        sub.snapshot().policy("gone").is_none(),
        "a delete hidden by compaction is seen"
    );
    traffic.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_rewind_is_detected_and_recovered() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (sub, _changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let traffic = Traffic::start(&sub, "fresh");
    for n in 1..=60u64 {
        put(&mut client, &format!("policies/old{}", n % 6), &value(n)).await;
    }
    let high = put(&mut client, "policies/old0", &value(999)).await;
    eventually("caught up", WAIT, || async {
        sub.snapshot().revision() >= high
    })
    .await;

    // etcd loses its data: revisions start over below what the watcher applied.
    etcd.wipe_and_restart().await;
    let mut client = etcd.client().await;
    let low = put(&mut client, "policies/fresh", &value(5)).await;
    assert!(low < high);
    eventually("the rewound state is listed", WAIT, || async {
        registry_state(&sub) == vec![("fresh".to_owned(), Some(5))]
    })
    .await;
    assert!(is_live(&sub));
    let next = put(&mut client, "policies/fresh", &value(6)).await;
    eventually("and watched from there", WAIT, || async {
        sub.snapshot().revision() == next
    })
    .await;
    traffic.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_is_noticed_as_stale_and_recovers() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let (sub, _changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let traffic = Traffic::start(&sub, "p");
    put(&mut client, "policies/p", &value(10)).await;
    eventually("live", WAIT, || async {
        sub.snapshot().policy("p").is_some()
    })
    .await;

    etcd.freeze();
    let frozen_at = std::time::Instant::now();
    eventually("stale while frozen", WAIT, || async { is_stale(&sub) }).await;
    let noticed = frozen_at.elapsed();
    assert_eq!(
        sub.snapshot().policy("p").unwrap().timeout.ms,
        Some(10),
        "settings kept"
    );
    etcd.thaw();
    eventually("live after thaw", WAIT, || async { is_live(&sub) }).await;
    let rev = put(&mut client, "policies/p", &value(11)).await;
    eventually("new writes arrive", WAIT, || async {
        sub.snapshot().revision() >= rev
    })
    .await;
    assert_eq!(sub.snapshot().policy("p").unwrap().timeout.ms, Some(11));
    traffic.check().await;
    eprintln!("frozen etcd noticed after {noticed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_is_stale_not_hung_and_recovers() {
    crate::skip_without_etcd!();
    let mut cluster = Cluster::start().await;
    let mut client = cluster.client().await;
    let (sub, _changes) = common::registry(common::source(cluster.endpoints())).await;
    let traffic = Traffic::start(&sub, "p");
    put(&mut client, "policies/p", &value(1)).await;
    eventually("listed", WAIT, || async {
        sub.snapshot().policy("p").is_some()
    })
    .await;

    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    cluster.kill(others[0]);
    cluster.kill(others[1]);
    eventually("stale without quorum", WAIT, || async { is_stale(&sub) }).await;
    cluster.restart(others[0]).await;
    cluster.restart(others[1]).await;
    let rev = put(&mut client, "policies/p", &value(2)).await;
    eventually("recovered", WAIT, || async {
        is_live(&sub) && sub.snapshot().revision() >= rev
    })
    .await;
    assert_eq!(registry_state(&sub), etcd_state(&mut client).await);
    traffic.check().await;
}

/// etcd wiped while the watcher is cut off, then written past the revision the
/// watcher had applied before it reconnects: no revision went backwards, yet the
/// history is new. The watcher lists again on reconnecting and ends up with etcd's
/// state (the old key gone, the new one there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wipe_overtaken_by_new_writes_while_away_is_noticed() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_owned()).await;
    let (sub, _changes) = common::registry(common::source(vec![proxy.endpoint()])).await;
    let mut high = 0;
    for n in 1..=10 {
        high = put(&mut client, "policies/old", &value(n)).await;
    }
    eventually("caught up", WAIT, || async {
        sub.snapshot().revision() >= high
    })
    .await;
    proxy.cut();
    eventually("stale", WAIT, || async { is_stale(&sub) }).await;
    etcd.wipe_and_restart().await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/early", &value(77)).await;
    for n in 0..high + 3 {
        client
            .put("/elsewhere/k", format!("{n}"), None)
            .await
            .unwrap();
    }
    proxy.restore();
    eventually("etcd's state", WAIT, || async {
        is_live(&sub) && registry_state(&sub) == vec![("early".to_owned(), Some(77))]
    })
    .await;
}

/// A reconnect lists again; a value still refused is not refused (logged, counted)
/// again: its rejection keeps the revision of the write that was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_does_not_reject_the_same_value_twice() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_owned()).await;
    let (sub, _changes) = common::registry(common::source(vec![proxy.endpoint()])).await;
    let refused = put(&mut client, "policies/bad", r#"{"timeout": {"ms": 0}}"#).await;
    eventually("refused", WAIT, || async {
        sub.snapshot().rejected().any(|r| r.revision == refused)
    })
    .await;
    proxy.cut();
    eventually("stale", WAIT, || async { is_stale(&sub) }).await;
    let later = put(&mut client, "policies/good", &value(5)).await;
    proxy.restore();
    eventually("listed again", WAIT, || async {
        is_live(&sub) && sub.snapshot().revision() >= later
    })
    .await;
    let revisions: Vec<u64> = sub.snapshot().rejected().map(|r| r.revision).collect();
    assert_eq!(revisions, vec![refused]);
}
