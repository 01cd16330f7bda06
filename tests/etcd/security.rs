//! TLS and user/password authentication, passed through to etcd; expired tokens
//! renewed.

use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::Health;
use substation::live::etcd::EtcdSource;

use crate::common::{self, PREFIX, put};
use crate::logs::{self, show};
use crate::proxy::Proxy;
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

/// Simple tokens that expire after 2 s unused: the watch goes on across expiries
/// (settings live all along, writes delivered), and each reconnection after an expiry
/// costs one failed attempt, the connection's own, never one for the token (the
/// listing renews it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_costs_nothing() {
    crate::skip_without_etcd!();
    logs::install();
    let etcd = Etcd::start_with(EtcdOptions {
        extra_args: vec!["--auth-token-ttl=2".to_owned()],
        ..EtcdOptions::default()
    })
    .await;
    let prefix = logs::unique_prefix("token");
    let mut admin = etcd.client().await;
    let root_password = enable_auth(&mut admin, "reader", "s3cret", &prefix).await;
    // The test's own writer needs its token renewed too.
    let mut root = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(
            etcd.connect_options()
                .with_user("root", root_password)
                .with_auto_token_refresh(true),
        ),
    )
    .await
    .unwrap();
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_owned()).await;
    let source = EtcdSource::new([proxy.endpoint()], &prefix)
        .user("reader", "s3cret")
        .request_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(10), Duration::from_millis(300));
    let sub = Substation::builder().source(source).build().unwrap();
    eventually("live", WAIT, || async { common::is_live(&sub) }).await;

    const ROUNDS: usize = 3;
    for round in 1..=ROUNDS {
        // Unused for twice its TTL: the token expires (etcd checks every second).
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_secs(4) {
            assert!(
                common::is_live(&sub),
                "round {round}: {:?}",
                sub.snapshot().health()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let value = format!(r#"{{"timeout": {{"ms": {round}}}}}"#);
        let put = root
            .put(format!("{prefix}policies/a"), value, None)
            .await
            .unwrap();
        let rev = put.header().unwrap().revision() as u64;
        eventually("the watch outlived the token", WAIT, || async {
            sub.snapshot().revision() >= rev
        })
        .await;
        // The connection drops: the source lists and watches again, with its expired
        // token.
        proxy.reset();
        eventually("listed again and live", WAIT, || async {
            logs::listings(&prefix) > round && common::is_live(&sub)
        })
        .await;
    }
    let failures = logs::failures(&prefix);
    eprintln!(
        "{} failure(s) for {ROUNDS} reconnection(s):{}",
        failures.len(),
        show(&failures)
    );
    let token: Vec<_> = failures
        .iter()
        .filter(|l| l.field("error").is_some_and(|e| e.contains("auth")))
        .cloned()
        .collect();
    assert!(token.is_empty(), "failures for the token:{}", show(&token));
    assert_eq!(failures.len(), ROUNDS, "{}", show(&failures));
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(ROUNDS as u64));
}
