//! The harness itself: each way of starting, breaking and mending etcd does what it says.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::support::{Cluster, Etcd, EtcdOptions, TlsFiles, enable_auth, eventually, tls_options};

/// Deadline of a condition that should hold within a second on an idle machine.
const SOON: Duration = Duration::from_secs(30);
/// Timeout of one request inside a polled condition.
const REQUEST: Duration = Duration::from_secs(2);
/// Timeout of one put while a cluster elects a new leader: a put that reached a member
/// with no leader hangs for etcd's request timeout (5 s + 2 election timeouts), then
/// fails; a new one goes through as soon as the new leader is there.
const DURING_ELECTION: Duration = Duration::from_millis(500);

/// `fut` within [`REQUEST`], or `None`.
async fn within<T>(fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(REQUEST, fut).await.ok()
}

/// The value of `key`, read with `client`, or `None` on error, timeout or no such key.
async fn value(client: &Client, key: &str) -> Option<Vec<u8>> {
    let mut client = client.clone();
    let resp = within(client.get(key, None)).await?.ok()?;
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

#[tokio::test]
async fn single_node_keeps_data_across_restart_and_forgets_it_on_wipe() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    assert!(
        etcd.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        etcd.endpoint()
    );
    let mut client = etcd.client().await;
    for i in 0..5 {
        client.put("k", format!("v{i}"), None).await.expect("put");
    }
    let before = client.get("k", None).await.expect("get");
    assert_eq!(before.kvs()[0].value(), b"v4");
    let revision = before.header().expect("header").revision();
    assert!(revision >= 6, "5 puts on a fresh etcd: revision {revision}");

    etcd.kill();
    let down = tokio::time::timeout(SOON, client.get("k", None))
        .await
        .expect("a request to a killed etcd fails, it does not hang");
    assert!(down.is_err(), "a killed etcd answered: {down:?}");

    etcd.restart().await;
    eventually(
        "the same client reads the value after the restart",
        SOON,
        || async { value(&client, "k").await.as_deref() == Some(b"v4") },
    )
    .await;

    etcd.wipe_and_restart().await;
    let mut fresh = etcd.client().await;
    let after = fresh.get("k", None).await.expect("get after the wipe");
    assert!(after.kvs().is_empty(), "the wipe kept the key");
    assert_eq!(
        after.header().expect("header").revision(),
        1,
        "a wiped etcd starts over at revision 1"
    );
}

#[tokio::test]
async fn frozen_etcd_answers_nothing_until_thawed() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    client.clone().put("k", "v", None).await.expect("put");

    etcd.freeze();
    let frozen =
        tokio::time::timeout(Duration::from_millis(300), client.clone().get("k", None)).await;
    assert!(frozen.is_err(), "a frozen etcd answered: {frozen:?}");

    etcd.thaw();
    eventually("a get succeeds after the thaw", SOON, || async {
        value(&client, "k").await.as_deref() == Some(b"v")
    })
    .await;
}

#[tokio::test]
async fn restart_waits_while_its_port_is_taken() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let port: u16 = etcd
        .endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    etcd.kill();
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("take the killed etcd's port");
    let log = etcd.dir().join("etcd.log");
    let released = async {
        eventually("etcd hits the taken port", SOON, || async {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("address already in use"))
        })
        .await;
        drop(squatter);
    };
    tokio::join!(etcd.restart(), released);
    let mut client = etcd.client().await;
    client
        .put("k", "v", None)
        .await
        .expect("put after the restart");
}

#[tokio::test]
async fn drop_kills_etcd_and_removes_its_directory() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let dir = etcd.dir().to_owned();
    let addr = etcd.endpoint().trim_start_matches("http://").to_owned();
    assert!(dir.join("data").is_dir());
    TcpStream::connect(&addr).expect("etcd listens");
    drop(etcd);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        TcpStream::connect(&addr).is_err(),
        "something still listens on {addr}"
    );
}

#[tokio::test]
async fn cluster_survives_the_loss_of_its_leader() {
    crate::skip_without_etcd!();
    let mut cluster = Cluster::start().await;
    assert_eq!(cluster.endpoints().len(), 3);
    let client = cluster.client().await;
    client.clone().put("k", "before", None).await.expect("put");

    let leader = cluster.leader().await;
    cluster.kill(leader);
    eventually("a put succeeds without the old leader", SOON, || async {
        let mut client = client.clone();
        let put = tokio::time::timeout(DURING_ELECTION, client.put("k", "after", None));
        matches!(put.await, Ok(Ok(_)))
    })
    .await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader, "a killed member is still the leader");

    cluster.restart(leader).await;
    let back = Client::connect([cluster.endpoints()[leader].clone()], None)
        .await
        .expect("connect");
    eventually(
        "the restarted member serves the latest value",
        SOON,
        || async { value(&back, "k").await.as_deref() == Some(b"after") },
    )
    .await;
}

#[tokio::test]
async fn tls_with_the_right_ca_connects_and_with_the_wrong_one_fails() {
    crate::skip_without_etcd!();
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some(&tls),
        ..EtcdOptions::default()
    })
    .await;
    drop(tls); // the etcd has its own copies
    assert!(
        etcd.endpoint().starts_with("https://127.0.0.1:"),
        "{}",
        etcd.endpoint()
    );

    let mut client = etcd.client().await;
    client.put("k", "v", None).await.expect("put over TLS");
    let mut by_name = Client::connect(
        [etcd.endpoint()],
        Some(
            etcd.connect_options()
                .with_tls(tls_options(&etcd.dir().join("tls/ca.pem")).domain_name("localhost")),
        ),
    )
    .await
    .expect("connect");
    by_name
        .get("k", None)
        .await
        .expect("the certificate is valid for localhost too");

    let tls = TlsFiles::generate();
    let wrong = ConnectOptions::new()
        .with_tls(tls_options(&tls.other_ca))
        .with_connect_timeout(REQUEST)
        .with_timeout(REQUEST);
    let outcome = tokio::time::timeout(SOON, async {
        let mut client = Client::connect([etcd.endpoint()], Some(wrong)).await?;
        client.get("k", None).await
    })
    .await
    .expect("the wrong CA fails, it does not hang");
    assert!(
        outcome.is_err(),
        "a client trusting the wrong CA got an answer"
    );

    let plain = etcd.endpoint().replace("https://", "http://");
    let outcome = tokio::time::timeout(SOON, async {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST)
            .with_timeout(REQUEST);
        let mut client = Client::connect([plain], Some(options)).await?;
        client.get("k", None).await
    })
    .await
    .expect("plain http to a TLS port fails, it does not hang");
    assert!(outcome.is_err(), "plain http got an answer from a TLS port");
}

#[tokio::test]
async fn mutual_tls_requires_the_client_certificate() {
    crate::skip_without_etcd!();
    let tls = TlsFiles::generate();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some(&tls),
        client_cert_auth: true,
        ..EtcdOptions::default()
    })
    .await;
    let mut client = etcd.client().await;
    client
        .put("k", "v", None)
        .await
        .expect("put with the client certificate");

    let anonymous = ConnectOptions::new()
        .with_tls(tls_options(&tls.ca))
        .with_connect_timeout(REQUEST)
        .with_timeout(REQUEST);
    let outcome = tokio::time::timeout(SOON, async {
        let mut client = Client::connect([etcd.endpoint()], Some(anonymous)).await?;
        client.get("k", None).await
    })
    .await
    .expect("no client certificate fails, it does not hang");
    assert!(
        outcome.is_err(),
        "a client without a certificate got an answer"
    );
}

#[tokio::test]
async fn auth_lets_the_user_read_its_prefix_only() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut admin = etcd.client().await;
    admin.put("/app/a", "1", None).await.expect("put");
    admin.put("/other/b", "2", None).await.expect("put");
    let root_password = enable_auth(&mut admin, "reader", "s3cret", "/app/").await;
    admin
        .put("/app/c", "3", None)
        .await
        .expect("the admin client is root now");

    let (endpoint, options) = (etcd.endpoint(), etcd.connect_options());
    let as_reader = || {
        Client::connect(
            [endpoint.clone()],
            Some(options.clone().with_user("reader", "s3cret")),
        )
    };
    let mut reader = as_reader().await.expect("the reader authenticates");
    let under = reader
        .get("/app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read the prefix");
    assert_eq!(under.kvs().len(), 2);
    assert!(
        reader.get("/other/b", None).await.is_err(),
        "read outside the prefix"
    );
    assert!(
        reader.put("/app/d", "4", None).await.is_err(),
        "the reader wrote"
    );

    let wrong = Client::connect(
        [etcd.endpoint()],
        Some(etcd.connect_options().with_user("reader", "wrong")),
    )
    .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    let mut root = Client::connect(
        [etcd.endpoint()],
        Some(etcd.connect_options().with_user("root", root_password)),
    )
    .await
    .expect("root authenticates with the returned password");
    root.put("/other/e", "5", None)
        .await
        .expect("root writes anywhere");

    // The harness's readiness probe has no credentials: restart must still see etcd up.
    etcd.restart().await;
    let mut reader = as_reader()
        .await
        .expect("the reader authenticates after the restart");
    reader
        .get("/app/a", None)
        .await
        .expect("read after the restart");
}

#[tokio::test]
#[should_panic(expected = "never true")]
async fn eventually_panics_with_its_message_after_the_deadline() {
    eventually("never true", Duration::from_millis(50), || async { false }).await;
}

#[tokio::test]
#[should_panic(expected = "hangs")]
async fn eventually_gives_up_on_an_attempt_that_hangs() {
    eventually(
        "hangs",
        Duration::from_millis(50),
        std::future::pending::<bool>,
    )
    .await;
}

#[tokio::test]
async fn eventually_returns_once_true() {
    let mut calls = 0;
    eventually("the third call", SOON, || {
        calls += 1;
        let done = calls >= 3;
        async move { done }
    })
    .await;
    assert_eq!(calls, 3);
}
