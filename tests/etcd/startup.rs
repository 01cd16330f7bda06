//! Cold starts: etcd down with and without a disk snapshot.

use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::etcd::EtcdSource;
use substation::live::{Health, RejectionKind};

use crate::common::{self, put, registry_state};
use crate::logs;
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
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "build() returned after {:?}",
        started.elapsed()
    );
    // The snapshot is read by the source's task, and in force when `initialized`
    // resolves.
    sub.initialized().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let a = sub.policy("a");
    assert_eq!(a.settings().timeout.ms, Some(123), "from disk");
    assert!(
        matches!(sub.snapshot().health(), Health::FromDisk { revision, .. } if *revision == rev)
    );

    etcd.restart().await;
    let mut client = etcd.client().await;
    let rev2 = put(&mut client, "policies/a", r#"{"timeout": {"ms": 456}}"#).await;
    // A live policy is updated just before the snapshot of that revision is published:
    // wait for both.
    eventually("live data replaces the snapshot", WAIT, || async {
        a.settings().timeout.ms == Some(456)
            && matches!(sub.snapshot().health(), Health::Live { .. })
            && sub.snapshot().revision() >= rev2
    })
    .await;
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

/// A FIFO at the snapshot's path (or any file whose `open` would wait) neither blocks
/// `build()` nor the source: it is refused unopened, and the settings come from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_snapshot_path_blocks_nothing() {
    crate::skip_without_etcd!();
    logs::install();
    let path = snapshot_path("fifo");
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let prefix = logs::unique_prefix("fifo");
    client
        .put(
            format!("{prefix}policies/a"),
            r#"{"timeout": {"ms": 42}}"#,
            None,
        )
        .await
        .unwrap();

    let source = EtcdSource::new([etcd.endpoint()], &prefix)
        .request_timeout(Duration::from_secs(1))
        .snapshot_file(&path);
    let started = Instant::now();
    // In a blocking thread, so that a `build()` that blocks fails the test instead of
    // hanging it.
    let building =
        tokio::task::spawn_blocking(move || Substation::builder().source(source).build());
    let sub = match tokio::time::timeout(Duration::from_secs(5), building).await {
        Ok(built) => built.unwrap().unwrap(),
        Err(_) => {
            // Let the blocked reader go (a writer opens and closes the FIFO) first.
            let _ = std::fs::OpenOptions::new().write(true).open(&path);
            panic!("build() blocked on the FIFO at {}", path.display());
        }
    };
    let returned = started.elapsed();
    assert!(
        returned < Duration::from_millis(100),
        "build() took {returned:?}"
    );
    eventually("live from etcd", WAIT, || async {
        matches!(sub.snapshot().health(), Health::Live { .. })
    })
    .await;
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(42));
    let refused = logs::matching(&prefix, "ignoring the disk snapshot");
    assert!(
        refused
            .iter()
            .any(|l| l.field("error").is_some_and(|e| e.contains("FIFO"))),
        "{}",
        logs::show(&logs::lines(&prefix))
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A value refused for the layers below it (`Invalid`, so not mirrored then) that a later
/// change below puts in force, with no write of its own, reaches the disk snapshot too: a
/// cold start from disk serves what was in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_change_below_puts_in_force_reaches_the_disk_snapshot() {
    crate::skip_without_etcd!();
    let path = snapshot_path("promoted");
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let start = |endpoint: String| {
        let source = common::source(vec![endpoint])
            .shared_prefix(common::SHARED)
            .snapshot_file(&path);
        Substation::builder().source(source).build().unwrap()
    };
    let buckets = |sub: &Substation| {
        let b = sub.policy("p").settings().breaker.clone();
        (b.window_ms, b.buckets)
    };
    {
        let sub = start(etcd.endpoint());
        sub.initialized().await;
        // 7 buckets do not divide the default 10 s window: refused, kept waiting.
        put(&mut client, "policies/p", r#"{"breaker": {"buckets": 7}}"#).await;
        eventually("refused as invalid", WAIT, || {
            let snap = sub.snapshot();
            async move {
                snap.rejected()
                    .any(|r| r.kind == RejectionKind::Invalid && r.key == "policies/p")
            }
        })
        .await;
        assert_eq!(buckets(&sub), (10_000, 10));
        let shared = format!("{}policies/p", common::SHARED);
        let rev = client
            .put(shared, r#"{"breaker": {"window_ms": 7000}}"#, None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision() as u64;
        let path = path.clone();
        eventually("in force and written to disk", WAIT, || {
            let on_disk = std::fs::read_to_string(&path)
                .is_ok_and(|s| s.contains(&format!("\"revision\":{rev}")));
            let in_force = buckets(&sub) == (7_000, 7);
            async move { on_disk && in_force }
        })
        .await;
        assert_eq!(sub.snapshot().rejected().count(), 0);
    }
    etcd.kill();
    let sub = start(etcd.endpoint());
    sub.initialized().await;
    assert!(matches!(sub.snapshot().health(), Health::FromDisk { .. }));
    assert_eq!(buckets(&sub), (7_000, 7), "from disk: what was in force");
    assert_eq!(sub.snapshot().rejected().count(), 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
