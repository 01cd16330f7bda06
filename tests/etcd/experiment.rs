//! Chaos experiments through a real etcd: a verdict reached in one process stops the
//! experiment in another process within the propagation time, and a process that loses
//! etcd stops injecting after `offline_stop_ms` (and resumes when etcd is back).

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use substation::experiment::ExperimentLayer;
use substation::fault::FaultLayer;
use substation::settings::{ExperimentResult, RunState};
use substation::{BoxError, Substation};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::common::{self, PREFIX, put};
use crate::support::{Etcd, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// The edge of one process: users' requests call the dependency `db` through its fault
/// layer.
fn edge(sub: &Substation) -> impl Service<String, Response = (), Error = BoxError> + Clone + use<> {
    let db = FaultLayer::new(&sub.policy("db"))
        .layer(service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    ExperimentLayer::new(sub)
        .key(|user: &String, put| put(user.as_bytes()))
        .layer(service_fn(move |_: String| {
            let db = db.clone();
            async move { db.oneshot(()).await }
        }))
}

/// Failures among `n` users' requests, from user `from` on.
async fn failures<S>(svc: &mut S, from: usize, n: usize) -> u32
where
    S: Service<String, Error = BoxError>,
{
    let mut failed = 0;
    for i in from..from + n {
        let call = svc.ready().await.unwrap().call(format!("user-{i}"));
        failed += u32::from(call.await.is_err());
    }
    failed
}

async fn result(client: &mut etcd_client::Client, name: &str) -> Option<(ExperimentResult, i64)> {
    let key = format!("{PREFIX}experiments/{name}/result");
    let resp = tokio::time::timeout(Duration::from_secs(1), client.get(key, None))
        .await
        .ok()?
        .ok()?;
    let kv = resp.kvs().first()?;
    Some((serde_json::from_slice(kv.value()).unwrap(), kv.version()))
}

/// Not a test of its own: when `SUBSTATION_EXPERIMENT_PROCESS` is set, this process is a
/// second application instance (run by the test below with `--exact`): it watches etcd,
/// sends 40 requests every 100 ms through its edge and prints `tick <state> <failures>`.
#[test]
fn experiment_process() {
    let Ok(endpoint) = std::env::var("SUBSTATION_EXPERIMENT_PROCESS") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (sub, _changes) = common::registry(common::source(vec![endpoint])).await;
        let mut svc = edge(&sub);
        let mut from = 1_000_000;
        loop {
            let failed = failures(&mut svc, from, 40).await;
            from += 40;
            let state = sub
                .experiments()
                .first()
                .map_or("none", |s| s.state.as_str());
            println!("tick {state} {failed}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_reached_here_stops_the_experiment_in_another_process() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(
        &mut client,
        "experiments/db-down",
        r#"{"policy": "db", "control_percent": 20, "experiment_percent": 20, "min_requests": 300}"#,
    )
    .await;
    // The second process: it injects (its own experiment cohort fails) but sends too
    // little to be judged before this one.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "experiment::experiment_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SUBSTATION_EXPERIMENT_PROCESS", etcd.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (ticks_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("tick ") {
                let mut parts = rest.split(' ');
                let state = parts.next().unwrap_or("").to_owned();
                let failed: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                if ticks_tx.send((Instant::now(), state, failed)).is_err() {
                    return;
                }
            }
        }
    });
    let _kill = KillOnDrop(child);
    // The other process injects before anything is decided.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, state, failed) = ticks.recv().await.expect("the process runs");
        if state == "running" && failed > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other process never injected"
        );
    }
    // This process: enough traffic to be judged (the experiment cohort always fails).
    let (sub, _changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let mut svc = edge(&sub);
    let mut from = 0;
    while sub.experiments()[0].state == RunState::Running {
        failures(&mut svc, from, 100).await;
        from += 100;
        assert!(from < 100_000, "never judged");
    }
    let decided = Instant::now();
    assert_eq!(sub.experiments()[0].state, RunState::Aborted);
    // The verdict reaches etcd, written once over the running record (version 2).
    let (verdict, version) = loop {
        match result(&mut client, "db-down").await {
            Some((r, version)) if r.state.is_final() => break (r, version),
            _ => {
                assert!(decided.elapsed() < WAIT, "no verdict in etcd");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(verdict.state, RunState::Aborted);
    assert_eq!(version, 2, "running, then the verdict: one write each");
    assert!(
        verdict
            .reason
            .unwrap()
            .starts_with("experiment success 0.0 % vs control 100.0 %")
    );
    // The other process stops within the propagation time and injects nothing after.
    let stopped_at = loop {
        let (at, state, failed) = ticks.recv().await.expect("the process runs");
        if state == "aborted" {
            break at;
        }
        let _ = failed;
        assert!(
            at < decided + Duration::from_secs(5),
            "the other process kept running"
        );
    };
    let lag = stopped_at.saturating_duration_since(decided);
    println!(
        "the second process stopped {} ms after this one's verdict",
        lag.as_millis()
    );
    for _ in 0..5 {
        let (_, state, failed) = ticks.recv().await.expect("the process runs");
        assert_eq!((state.as_str(), failed), ("aborted", 0));
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_loses_etcd_stops_injecting_and_resumes_when_it_is_back() {
    crate::skip_without_etcd!();
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    put(
        &mut client,
        "experiments/db-down",
        r#"{"policy": "db", "control_percent": 30, "experiment_percent": 30, "min_requests": 1000000000, "offline_stop_ms": 1000}"#,
    )
    .await;
    let (sub, _changes) = common::registry(common::source(vec![etcd.endpoint()])).await;
    let mut svc = edge(&sub);
    eventually("the experiment runs", WAIT, || {
        let running = sub
            .experiments()
            .first()
            .is_some_and(|s| s.state == RunState::Running);
        async move { running }
    })
    .await;
    assert!(failures(&mut svc, 0, 200).await > 20);
    etcd.kill();
    let lost = Instant::now();
    // Keep sending; injection must stop after the watch notices (≈ 2.5 s) plus the bound.
    let mut last_failure = lost;
    while lost.elapsed() < Duration::from_secs(8) {
        if failures(&mut svc, 0, 200).await > 0 {
            last_failure = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let injected_for = last_failure.duration_since(lost);
    println!(
        "injected for {} ms after etcd was lost",
        injected_for.as_millis()
    );
    assert!(injected_for < Duration::from_secs(6), "{injected_for:?}");
    assert_eq!(failures(&mut svc, 0, 200).await, 0);
    let status = &sub.experiments()[0];
    assert!(
        status.paused && status.state == RunState::Running,
        "{status:?}"
    );
    etcd.restart().await;
    eventually("injecting again once etcd is back", WAIT, || {
        let status = sub.experiments()[0].clone();
        let svc = svc.clone();
        async move {
            let mut svc = svc;
            !status.paused && failures(&mut svc, 0, 200).await > 20
        }
    })
    .await;
}
