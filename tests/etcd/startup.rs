//! Cold starts: etcd down with and without a disk snapshot.

use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::Health;

use crate::common::{self, put, registry_state};
use crate::support::{Etcd, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn snapshot_path(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("substation-snap-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("settings.snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_etcd_down_serves_the_disk_snapshot_then_converges() {
    crate::skip_without_etcd!();
    let path = snapshot_path("with");
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 123}}"#).await;
    let rev = put(
        &mut client,
        "policies/b",
        r#"{"breaker": {"mode": "force_open"}}"#,
    )
    .await;
    {
        let sub = Substation::builder()
            .source(common::source(vec![etcd.endpoint()]).snapshot_file(&path))
            .build()
            .unwrap();
        sub.initialized().await;
        eventually("snapshot written", WAIT, || async {
            std::fs::read_to_string(&path).is_ok_and(|s| s.contains(&format!("\"revision\":{rev}")))
        })
        .await;
    }
    etcd.kill();

    // etcd is down: the new process starts from disk, within the deadline.
    let started = Instant::now();
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).snapshot_file(&path))
        .build()
        .unwrap();
    let a = sub.policy("a");
    assert_eq!(
        a.settings().timeout.ms,
        Some(123),
        "from disk before anything else"
    );
    sub.initialized().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(sub.snapshot().health(), Health::FromDisk { revision, .. } if *revision == rev)
    );

    etcd.restart().await;
    let mut client = etcd.client().await;
    let rev2 = put(&mut client, "policies/a", r#"{"timeout": {"ms": 456}}"#).await;
    eventually("live data replaces the snapshot", WAIT, || async {
        a.settings().timeout.ms == Some(456)
            && matches!(sub.snapshot().health(), Health::Live { .. })
    })
    .await;
    assert!(sub.snapshot().revision() >= rev2);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_without_a_snapshot_uses_defaults_then_converges() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 77}}"#).await;
    etcd.kill();

    let started = Instant::now();
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).connect_timeout(Duration::from_millis(500)))
        .build()
        .unwrap();
    sub.initialized().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let a = sub.policy("a");
    assert_eq!(
        a.settings().timeout.ms,
        Some(1000),
        "library default while etcd is down"
    );

    etcd.restart().await;
    eventually("converged once etcd is up", WAIT, || async {
        a.settings().timeout.ms == Some(77)
    })
    .await;
    assert_eq!(registry_state(&sub), vec![("a".to_owned(), Some(77))]);
}

/// The disk snapshot holds the last good values, not the last written ones: a value
/// the registry rejected (through the watch, or in a listing) is not what a cold start
/// from disk serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_snapshot_keeps_the_last_good_values() {
    crate::skip_without_etcd!();
    let path = snapshot_path("good");
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 150}}"#).await;
    let start = |endpoint: String| {
        let source = common::source(vec![endpoint]).snapshot_file(&path);
        Substation::builder().source(source).build().unwrap()
    };
    let written = |rev: u64| {
        let path = path.clone();
        move || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .is_ok_and(|s| s.contains(&format!("\"revision\":{rev}")))
            }
        }
    };
    {
        let sub = start(etcd.endpoint());
        sub.initialized().await;
        put(&mut client, "policies/a", r#"{"timeout": {"ms": 0}}"#).await;
        put(&mut client, "policies/c", r#"{"timeout": {"ms": 0}}"#).await;
        let rev = put(&mut client, "policies/b", r#"{"timeout": {"ms": 7}}"#).await;
        eventually("snapshot written", WAIT, written(rev)).await;
        assert_eq!(sub.snapshot().rejected().count(), 2);
        assert_eq!(sub.policy("a").settings().timeout.ms, Some(150));
    }
    let expected = vec![("a".to_owned(), Some(150)), ("b".to_owned(), Some(7))];
    etcd.kill();
    {
        let sub = start(etcd.endpoint());
        sub.initialized().await;
        assert!(matches!(sub.snapshot().health(), Health::FromDisk { .. }));
        assert_eq!(
            registry_state(&sub),
            expected,
            "after rejections by the watch"
        );
    }
    // Through a listing: etcd still holds the bad values when the registry lists it.
    etcd.restart().await;
    let mut client = etcd.client().await;
    let rev = put(&mut client, "policies/d", r#"{"timeout": {"ms": 9}}"#).await;
    {
        let sub = start(etcd.endpoint());
        eventually("listed and written", WAIT, written(rev)).await;
        assert_eq!(sub.policy("a").settings().timeout.ms, Some(150));
    }
    etcd.kill();
    let sub = start(etcd.endpoint());
    sub.initialized().await;
    let mut expected = expected;
    expected.push(("d".to_owned(), Some(9)));
    assert_eq!(
        registry_state(&sub),
        expected,
        "after rejections in a listing"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
