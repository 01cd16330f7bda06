//! TLS and user/password authentication, passed through to etcd.

use std::time::Duration;

use substation::Substation;
use substation::live::Health;

use crate::common::{self, PREFIX, put};
use crate::support::{Etcd, EtcdOptions, TlsFiles, enable_auth, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn stale_reason(sub: &Substation) -> String {
    eventually("an error is reported", WAIT, || async {
        matches!(sub.snapshot().health(), Health::Stale { .. })
    })
    .await;
    match sub.snapshot().health() {
        Health::Stale { reason, .. } => reason.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_connects_and_a_wrong_ca_fails_clearly() {
    crate::skip_without_etcd!();
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some(&tls),
        ..EtcdOptions::default()
    })
    .await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 31}}"#).await;

    let ca = std::fs::read(&tls.ca).unwrap();
    let (sub, _) =
        common::registry(common::source(vec![etcd.endpoint()]).tls(&ca, Some("localhost"))).await;
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(31));

    let wrong = std::fs::read(&tls.other_ca).unwrap();
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).tls(&wrong, Some("localhost")))
        .build()
        .unwrap();
    let reason = stale_reason(&sub).await;
    eprintln!("wrong CA: {reason}");
    assert!(
        reason.to_lowercase().contains("certificate") || reason.to_lowercase().contains("issuer"),
        "{reason}"
    );
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_the_right_password_works_and_a_wrong_one_fails_clearly() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 32}}"#).await;
    enable_auth(&mut client, "reader", "s3cret", PREFIX).await;

    let (sub, _) =
        common::registry(common::source(vec![etcd.endpoint()]).user("reader", "s3cret")).await;
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(32));

    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).user("reader", "wrong"))
        .build()
        .unwrap();
    let reason = stale_reason(&sub).await;
    eprintln!("wrong password: {reason}");
    assert!(reason.contains("authentication failed"), "{reason}");
}
