//! How the watch tells a quiet etcd from a dead one, against an etcd started with its
//! stock keep-alive policy (`--grpc-keepalive-min-time` 5 s: a client that pings more
//! often is sent `GOAWAY ENHANCE_YOUR_CALM too_many_pings`).

use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::Health;
use substation::live::etcd::EtcdSource;

use crate::common::{is_live, is_stale};
use crate::logs::{self, show};
use crate::support::{Etcd, eventually};

const WAIT: Duration = Duration::from_secs(30);
/// How long the watch stays idle: the issue's measure (15 listings in 31 s before).
const IDLE: Duration = Duration::from_secs(60);
/// A frozen etcd must be noticed within this.
const NOTICE_FROZEN: Duration = Duration::from_secs(3);

/// A source with the library's defaults for everything that decides liveness.
fn source(endpoint: String, prefix: &str, shared: &str) -> EtcdSource {
    EtcdSource::new([endpoint], prefix).shared_prefix(shared)
}

/// An idle watch on a stock etcd stays up: one listing, no failure, no warning, live the
/// whole time, and it still delivers a write at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_on_a_stock_etcd_stays_up_for_a_minute() {
    crate::skip_without_etcd!();
    logs::install();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let prefix = logs::unique_prefix("idle");
    let shared = logs::unique_prefix("idle-shared");
    client
        .put(
            format!("{prefix}policies/a"),
            r#"{"timeout":{"ms":5}}"#,
            None,
        )
        .await
        .unwrap();
    let sub = Substation::builder()
        .source(source(etcd.endpoint(), &prefix, &shared))
        .build()
        .unwrap();
    eventually("live", WAIT, || async { is_live(&sub) }).await;

    let start = Instant::now();
    let mut not_live = Vec::new();
    while start.elapsed() < IDLE {
        let health = sub.snapshot().health().clone();
        if !matches!(health, Health::Live { .. }) {
            not_live.push((start.elapsed(), health));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let put = client
        .put(
            format!("{prefix}policies/a"),
            r#"{"timeout":{"ms":6}}"#,
            None,
        )
        .await
        .unwrap();
    let written = put.header().unwrap().revision() as u64;
    eventually("the write after the idle minute arrives", WAIT, || async {
        sub.snapshot().revision() >= written
    })
    .await;
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(6));

    let failures = logs::failures(&prefix);
    let warnings = logs::warnings(&prefix);
    let listings = logs::listings(&prefix);
    eprintln!(
        "idle {IDLE:?}: {listings} listing(s), {} failure(s), {} warning(s), {} health sample(s) not live",
        failures.len(),
        warnings.len(),
        not_live.len()
    );
    assert!(failures.is_empty(), "reconnects:{}", show(&failures));
    assert!(warnings.is_empty(), "warnings:{}", show(&warnings));
    assert_eq!(
        listings,
        1,
        "listings after the first:{}",
        show(&logs::lines(&prefix))
    );
    assert!(not_live.is_empty(), "not live at {not_live:?}");
}

/// A frozen etcd (SIGSTOP: connections open, nothing answers) is noticed within
/// [`NOTICE_FROZEN`] with the default settings, and the watch recovers once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_is_noticed_within_three_seconds() {
    crate::skip_without_etcd!();
    logs::install();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let prefix = logs::unique_prefix("frozen");
    let shared = logs::unique_prefix("frozen-shared");
    let sub = Substation::builder()
        .source(source(etcd.endpoint(), &prefix, &shared))
        .build()
        .unwrap();
    eventually("live", WAIT, || async { is_live(&sub) }).await;
    // Idle for a while first: the check must not depend on recent traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(is_live(&sub), "{:?}", sub.snapshot().health());

    etcd.freeze();
    let frozen_at = Instant::now();
    eventually("stale while frozen", WAIT, || async { is_stale(&sub) }).await;
    let noticed = frozen_at.elapsed();
    eprintln!("frozen etcd noticed after {noticed:?}");
    let Health::Stale { reason, .. } = sub.snapshot().health().clone() else {
        unreachable!()
    };
    assert!(
        noticed <= NOTICE_FROZEN,
        "noticed after {noticed:?} ({reason})"
    );
    etcd.thaw();
    eventually("live after the thaw", WAIT, || async { is_live(&sub) }).await;
    let put = client
        .put(
            format!("{prefix}policies/p"),
            r#"{"timeout":{"ms":11}}"#,
            None,
        )
        .await
        .unwrap();
    let rev = put.header().unwrap().revision() as u64;
    eventually("new writes arrive", WAIT, || async {
        sub.snapshot().revision() >= rev
    })
    .await;
}
