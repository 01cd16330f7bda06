//! TLS and user/password authentication, passed through to etcd: bad material refused
//! at `build()`, handshake failures explained, expired tokens renewed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use substation::Substation;
use substation::live::Health;
use substation::live::etcd::EtcdSource;

use crate::common::{self, PREFIX, put};
use crate::logs::{self, show};
use crate::proxy::Proxy;
use crate::support::{Etcd, EtcdOptions, TlsFiles, enable_auth, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Every distinct `Health::Stale` reason of `sub` seen over `during` (at least one).
async fn stale_reasons(sub: &Substation, during: Duration) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < during || seen.is_empty() {
        if let Health::Stale { reason, .. } = sub.snapshot().health() {
            seen.insert(reason.clone());
        }
        assert!(
            start.elapsed() < WAIT,
            "never stale: {:?}",
            sub.snapshot().health()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

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
    let reasons = stale_reasons(&sub, Duration::from_secs(2)).await;
    eprintln!("wrong CA: {reasons:#?}");
    let expected = format!("TLS handshake with {} failed", etcd.endpoint());
    for reason in &reasons {
        assert!(
            reason.starts_with(&expected) && reason.contains("not signed by the CA"),
            "{reason}"
        );
    }
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(1000));

    // A server name the certificate does not hold.
    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).tls(&ca, Some("elsewhere.example")))
        .build()
        .unwrap();
    let reasons = stale_reasons(&sub, Duration::from_secs(2)).await;
    eprintln!("wrong name: {reasons:#?}");
    for reason in &reasons {
        assert!(
            reason.starts_with(&expected) && reason.contains("server name"),
            "{reason}"
        );
    }
}

/// A server that requires a client certificate, and a source that presents none: the
/// reason says so, whichever way the refusal surfaces ("operation was canceled" or a
/// TLS alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_explained() {
    crate::skip_without_etcd!();
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some(&tls),
        client_cert_auth: true,
        ..EtcdOptions::default()
    })
    .await;
    let ca = std::fs::read(&tls.ca).unwrap();
    let (cert, key) = (
        std::fs::read(&tls.client_cert).unwrap(),
        std::fs::read(&tls.client_key).unwrap(),
    );
    let mut client = etcd.client().await;
    put(&mut client, "policies/a", r#"{"timeout": {"ms": 33}}"#).await;
    let (sub, _) = common::registry(
        common::source(vec![etcd.endpoint()])
            .tls(&ca, None)
            .tls_identity(&cert, &key),
    )
    .await;
    assert_eq!(sub.policy("a").settings().timeout.ms, Some(33));

    let sub = Substation::builder()
        .source(common::source(vec![etcd.endpoint()]).tls(&ca, None))
        .build()
        .unwrap();
    let reasons = stale_reasons(&sub, Duration::from_secs(3)).await;
    eprintln!("no client certificate: {reasons:#?}");
    let expected = format!("TLS handshake with {} failed", etcd.endpoint());
    for reason in &reasons {
        assert!(
            reason.starts_with(&expected) && reason.contains("client certificate"),
            "{reason}"
        );
    }
}

/// TLS material that cannot work fails `build()` with what is wrong, instead of every
/// connection failing later with "transport error: transport error".
#[tokio::test]
async fn unusable_tls_material_fails_build_with_what_is_wrong() {
    let tls = TlsFiles::generate();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let (ca, cert, key) = (read(&tls.ca), read(&tls.client_cert), read(&tls.client_key));
    let server_key = read(&tls.key);
    let https = || EtcdSource::new(["https://127.0.0.1:1"], PREFIX);
    let cases = [
        (
            "a garbage client key",
            https().tls(&ca, None).tls_identity(&cert, b"garbage"),
            "client key given to EtcdSource::tls_identity is not a PEM private key",
        ),
        (
            "the key of another certificate",
            https().tls(&ca, None).tls_identity(&cert, &server_key),
            "does not belong to its certificate",
        ),
        (
            "a garbage client certificate",
            https().tls(&ca, None).tls_identity(b"garbage", &key),
            "client certificate given to EtcdSource::tls_identity holds no PEM certificate",
        ),
        (
            "a garbage CA",
            https().tls(b"garbage", None),
            "the CA given to EtcdSource::tls holds no PEM certificate",
        ),
        (
            "a CA whose certificate is damaged",
            https().tls(
                String::from_utf8(ca.clone())
                    .unwrap()
                    .replacen("MII", "MIX", 1),
                None,
            ),
            "the CA given to EtcdSource::tls",
        ),
        (
            "an http:// endpoint with TLS",
            EtcdSource::new(["http://127.0.0.1:1"], PREFIX).tls(&ca, None),
            "must be https://",
        ),
        (
            "an https:// endpoint without a CA",
            https(),
            "no CA is configured",
        ),
        (
            "a client certificate without a CA",
            https().tls_identity(&cert, &key),
            "needs EtcdSource::tls too",
        ),
    ];
    for (what, source, expected) in cases {
        let error = Substation::builder()
            .source(source)
            .build()
            .map(|_| ())
            .expect_err(what)
            .to_string();
        eprintln!("{what}: {error}");
        assert!(error.contains(expected), "{what}: {error}");
    }
    // And the right material builds.
    Substation::builder()
        .source(
            https()
                .tls(&ca, Some("localhost"))
                .tls_identity(&cert, &key),
        )
        .build()
        .expect("valid TLS material");
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
