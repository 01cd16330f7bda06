//! Operators change behaviour live with `etcdctl put`: a kill switch, a rollout
//! percentage, an injected fault — against a real etcd this example starts itself.
//!
//! Run: `cargo run --example etcd_switches` (needs `/usr/bin/etcd` and `etcdctl`, as
//! `scripts/test.sh` installs them). It fails unless each write changed what the
//! callers saw.

#[path = "../tests/etcd/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use substation::fallback::Fallback;
use substation::fault::FaultLayer;
use substation::live::etcd::EtcdSource;
use substation::stack::PolicyLayer;
use substation::switch::DecimalKey;
use substation::{BoxError, Substation};
use tower::{Layer, ServiceExt, service_fn};

const PREFIX: &str = "/substation/shop";

/// What an operator types.
fn etcdctl_put(endpoint: &str, key: &str, value: &str) -> Result<(), BoxError> {
    let full = format!("{PREFIX}/{key}");
    println!("$ etcdctl put {full} '{value}'");
    let status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "put", &full, value])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("etcdctl failed: {status}").into());
    }
    Ok(())
}

/// Polls `check` until it holds (60 s at most).
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) -> Result<Duration, BoxError> {
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("never happened: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let etcd = support::Etcd::start().await;
    let endpoint = etcd.endpoint();
    let substation = Substation::builder()
        .source(EtcdSource::new([endpoint.clone()], PREFIX))
        .build()?;
    substation.initialized().await;

    let calls = Arc::new(AtomicUsize::new(0));
    let policy = substation.policy("recommendations");
    let dependency = {
        let calls = calls.clone();
        service_fn(move |user: u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(format!("picks for {user}")) }
        })
    };
    let client = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value("bestsellers".to_owned()))
        .layer(FaultLayer::new(&policy).layer(dependency));
    let checkout = substation.switch("new-checkout");
    let on_share = |switch: &substation::switch::Switch| {
        (0..10_000u64)
            .filter(|u| switch.is_on(DecimalKey::from(*u)))
            .count() as f64
            / 100.0
    };

    println!("calls answer: {}", client.clone().oneshot(1).await?);
    println!("new checkout for {:.1} % of users", on_share(&checkout));

    // 1. The kill switch.
    etcdctl_put(&endpoint, "policies/recommendations", r#"{"kill": true}"#)?;
    let took = until("the kill switch", async || {
        client
            .clone()
            .oneshot(1)
            .await
            .is_ok_and(|a| a == "bestsellers")
    })
    .await?;
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(client.clone().oneshot(2).await?, "bestsellers");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "killed: the dependency is not called"
    );
    println!(
        "  seen {took:?} after etcdctl returned: calls answer `bestsellers`, the dependency gets none"
    );

    // 2. A rollout percentage.
    etcdctl_put(&endpoint, "switches/new-checkout", r#"{"percent": 25}"#)?;
    let took = until("the rollout", async || on_share(&checkout) > 0.0).await?;
    let share = on_share(&checkout);
    assert!((share - 25.0).abs() < 2.0, "{share} %");
    println!("  seen {took:?} after etcdctl returned: new checkout for {share:.1} % of users");

    // 3. An injected fault instead of the kill switch: the fallback must hold.
    etcdctl_put(
        &endpoint,
        "policies/recommendations",
        r#"{"fault": {"abort_percent": 100}}"#,
    )?;
    let took = until("the fault", async || {
        !policy.is_killed() && policy.settings().fault.abort_percent == 100.0
    })
    .await?;
    let before = calls.load(Ordering::SeqCst);
    for user in 0..20 {
        assert_eq!(
            client.clone().oneshot(user).await?,
            "bestsellers",
            "the fallback holds"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "aborted before the dependency"
    );
    println!(
        "  seen {took:?} after etcdctl returned: every call aborted by the fault, answered by the fallback"
    );

    // 4. The experiment ends.
    etcdctl_put(&endpoint, "policies/recommendations", "{}")?;
    until("the end of the experiment", async || {
        client
            .clone()
            .oneshot(3)
            .await
            .is_ok_and(|a| a == "picks for 3")
    })
    .await?;
    println!("calls answer: {}", client.clone().oneshot(4).await?);
    Ok(())
}
