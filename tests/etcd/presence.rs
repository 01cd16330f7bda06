//! Fleet presence: a registry announces what it applied, and withdraws when dropped.

use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::etcd::{Presence, presence_prefix};
use substation::settings::PolicySettings;

use crate::common::{self, PREFIX, put};
use crate::support::{Etcd, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn presence(client: &mut etcd_client::Client, id: &str) -> Option<Presence> {
    let key = format!("{}{id}", presence_prefix(PREFIX));
    let resp = tokio::time::timeout(Duration::from_secs(1), client.get(key, None))
        .await
        .ok()?
        .ok()?;
    let kv = resp.kvs().first()?;
    assert!(kv.lease() != 0, "the presence key is bound to a lease");
    Some(serde_json::from_slice(kv.value()).expect("a presence document"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_the_revision_applied_rejections_names_and_breakers() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut defaults = PolicySettings::default();
    defaults.timeout.ms = Some(250);
    let sub = Substation::builder()
        .policy("payments", defaults)
        .source(
            common::source(vec![etcd.endpoint()])
                .announce_as("inst-a")
                .announce_address("http://10.0.0.7:9090/"),
        )
        .build()
        .unwrap();
    let _in_use = sub.policy("search");
    let _switch = sub.switch("checkout-v2");
    sub.initialized().await;
    eventually("announced", WAIT, || async {
        presence(&mut client.clone(), "inst-a").await.is_some()
    })
    .await;
    let p = presence(&mut client, "inst-a").await.unwrap();
    assert_eq!(p.id, "inst-a");
    assert_eq!(p.pid, std::process::id());
    assert_eq!(p.prefix, PREFIX);
    assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(p.address.as_deref(), Some("http://10.0.0.7:9090/"));
    assert_eq!(
        p.policies["payments"].default.as_ref().unwrap()["timeout"]["ms"],
        250
    );
    assert_eq!(p.policies["search"].breaker.as_deref(), Some("closed"));
    assert!(p.policies["search"].default.is_none());
    assert!(p.switches.contains_key("checkout-v2"));

    // A change: the presence follows within a moment (the rate limit's leading edge).
    let rev = put(
        &mut client,
        "policies/payments",
        r#"{"breaker": {"mode": "force_open"}}"#,
    )
    .await;
    let started = Instant::now();
    eventually("revision applied", WAIT, || async {
        presence(&mut client.clone(), "inst-a")
            .await
            .is_some_and(|p| p.revision >= rev)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let _payments = sub.policy("payments");
    eventually("breaker state reported", WAIT, || async {
        presence(&mut client.clone(), "inst-a")
            .await
            .is_some_and(|p| p.policies["payments"].breaker.as_deref() == Some("forced_open"))
    })
    .await;

    // A refused value: listed with the registry's reason and its revision.
    let bad = put(
        &mut client,
        "policies/search",
        r#"{"breaker": {"error_rate": 150}}"#,
    )
    .await;
    eventually("rejection reported", WAIT, || async {
        presence(&mut client.clone(), "inst-a")
            .await
            .is_some_and(|p| {
                p.revision >= bad
                    && p.rejected.iter().any(|r| {
                        r.key == "policies/search"
                            && r.revision == bad
                            && r.error == "breaker.error_rate: 150 is not in 0..=100"
                    })
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_withdrawn_when_the_registry_is_dropped_and_returns_after_an_outage() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).announce_as("inst-b"))
        .build()
        .unwrap();
    eventually("announced", WAIT, || async {
        presence(&mut client.clone(), "inst-b").await.is_some()
    })
    .await;

    // etcd restarts (its leases survive; the keep-alive stream does not): the key
    // stays or comes back, and follows later changes.
    etcd.restart().await;
    let mut client = etcd.client().await;
    let rev = put(&mut client, "policies/x", r#"{"kill": true}"#).await;
    eventually("announced after the restart", WAIT, || async {
        presence(&mut client.clone(), "inst-b")
            .await
            .is_some_and(|p| p.revision >= rev)
    })
    .await;

    // Dropped: revoked at once, not after the lease's 10 s.
    let dropped = Instant::now();
    drop(sub);
    eventually("withdrawn", Duration::from_secs(5), || async {
        let key = format!("{}inst-b", presence_prefix(PREFIX));
        matches!(
            tokio::time::timeout(Duration::from_secs(1), client.clone().get(key, None)).await,
            Ok(Ok(r)) if r.kvs().is_empty()
        )
    })
    .await;
    assert!(
        dropped.elapsed() < Duration::from_secs(3),
        "{:?}",
        dropped.elapsed()
    );
    // Nothing of it is left under the lease list either.
    let leases = client.leases().await.unwrap();
    assert!(
        leases.leases().is_empty(),
        "leases left: {:?}",
        leases.leases().len()
    );
}

#[test]
fn an_invalid_instance_id_fails_the_build() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let err = Substation::builder()
        .source(common::source(vec!["http://127.0.0.1:1".into()]).announce_as("a/b"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("not a valid instance id"), "{err}");
}
