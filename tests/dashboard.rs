//! The dashboard over real HTTP on loopback: its JSON (chaos experiments included), its
//! Hystrix-compatible stream, slow and gone clients, and a soak of 100 policies for a
//! minute.
#![cfg(feature = "dashboard")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;
use substation::dashboard::{Dashboard, Serving};
use substation::experiment::ExperimentLayer;
use substation::fallback::Fallback;
use substation::fault::FaultLayer;
use substation::live::InMemorySource;
use substation::stack::PolicyLayer;
use substation::switch::SwitchSettings;
use substation::{BoxError, Substation};
use tower::{Layer, ServiceExt, service_fn};

/// A response's status and its body so far: for a stream, the frames received until
/// `until` says enough or `deadline` passes.
async fn get(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> (http::StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = String::new();
    let end = Instant::now() + deadline;
    while !until(&text) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            _ => break,
        }
    }
    (status, text)
}

/// The `data:` events of a stream's text, parsed.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|j| serde_json::from_str(j).expect("each event is JSON"))
        .collect()
}

struct Scene {
    substation: Substation,
    source: InMemorySource,
    serving: Serving,
}

async fn scene(interval: Duration) -> Scene {
    let source = InMemorySource::new();
    let substation = Substation::builder()
        .switch("new-search", SwitchSettings::percent(25.0))
        .source(source.clone())
        .build()
        .unwrap();
    let serving = Dashboard::new(&substation)
        .interval(interval)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Scene {
        substation,
        source,
        serving,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_stream_show_the_registry() {
    let s = scene(Duration::from_millis(200)).await;
    let addr = s.serving.local_addr();
    let recs = s.substation.policy("recs");
    let svc = PolicyLayer::new(&recs)
        .fallback(Fallback::new().static_value("bestsellers"))
        .layer(service_fn(|fail: bool| async move {
            if fail {
                Err::<&str, BoxError>("down".into())
            } else {
                Ok("picks")
            }
        }));
    for i in 0..10 {
        svc.clone().oneshot(i % 5 == 0).await.unwrap();
    }
    let switch = s.substation.switch("new-search");
    for i in 0..100u32 {
        switch.is_on(i.to_le_bytes());
    }
    s.source
        .put("policies/recs", r#"{"timeout": {"ms": 250}}"#)
        .unwrap();
    assert!(
        s.source
            .put("policies/ads", r#"{"timeout": {"ms": 0}}"#)
            .is_err()
    );

    let (status, body) = get(addr, "/status", Duration::from_secs(5), |_| false).await;
    assert_eq!(status, http::StatusCode::OK);
    let j: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["health"]["state"], "live");
    assert_eq!(j["revision"], 2);
    assert_eq!(j["rejected"][0]["key"], "policies/ads");
    assert_eq!(j["rejected"][0]["kind"], "invalid", "in form, out of range");
    assert!(
        j["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timeout.ms")
    );
    let policy = &j["policies"][0];
    assert_eq!(policy["name"], "recs");
    assert_eq!(policy["settings"]["timeout"]["ms"], 250);
    assert_eq!(policy["stats"]["totals"]["success"], 8);
    assert_eq!(policy["stats"]["totals"]["failure"], 2);
    assert_eq!(policy["stats"]["fallback_totals"]["static"]["served"], 2);
    assert_eq!(policy["stats"]["breaker"], "closed");
    let sw = &j["switches"][0];
    assert_eq!(sw["name"], "new-search");
    assert_eq!(sw["settings"]["percent"], 25.0);
    let evaluated = sw["evaluations"]["on"].as_u64().unwrap_or(0)
        + sw["evaluations"]["off"].as_u64().unwrap_or(0);
    assert_eq!(evaluated, 100);

    // Mounted under any prefix: the last segment routes.
    let (status, _) = get(
        addr,
        "/ops/substation/status",
        Duration::from_secs(5),
        |_| false,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let (status, page) = get(addr, "/ops/substation/", Duration::from_secs(5), |_| false).await;
    assert_eq!(status, http::StatusCode::OK);
    assert!(page.contains("<html"));
    let (status, _) = get(addr, "/nothing-here", Duration::from_secs(5), |_| false).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);

    // The stream: HystrixCommand events, then a keep-alive, every interval.
    let (status, text) = get(addr, "/stream", Duration::from_secs(10), |t| {
        t.matches(": ping").count() >= 2
    })
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let evs = events(&text);
    assert!(evs.len() >= 2, "{text}");
    let e = &evs[0];
    assert_eq!(e["type"], "HystrixCommand");
    assert_eq!(e["name"], "recs");
    assert_eq!(e["rollingCountSuccess"], 8);
    assert_eq!(e["rollingCountFailure"], 2);
    assert_eq!(e["rollingCountFallbackSuccess"], 2);
    assert_eq!(e["errorPercentage"], 20);
    assert_eq!(e["isCircuitBreakerOpen"], false);
    assert_eq!(e["propertyValue_executionTimeoutInMilliseconds"], 250);
    assert_eq!(e["substation"]["breaker"], "closed");
    drop(recs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_experiment_with_its_cohorts_and_verdict() {
    let s = scene(Duration::from_millis(200)).await;
    let addr = s.serving.local_addr();
    // The dependency behind its policy's fault layer; the edge calls it for each user.
    let policy = s.substation.policy("inventory");
    let inventory = FaultLayer::new(&policy).layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>("in stock")
    }));
    let edge = ExperimentLayer::new(&s.substation)
        .key(|user: &String, put| put(user.as_bytes()))
        .layer(service_fn(move |_user: String| {
            let inventory = inventory.clone();
            async move { inventory.oneshot(()).await.map_err(|_| "inventory failed") }
        }));
    // One that the judge stops (no fallback: the experiment cohort fails every
    // request), one that keeps running (it needs more requests than it gets).
    s.source
        .put(
            "experiments/no-inventory",
            r#"{"policy": "inventory", "control_percent": 10, "experiment_percent": 10, "min_requests": 20}"#,
        )
        .unwrap();
    s.source
        .put(
            "experiments/slow-search",
            r#"{"policy": "search", "abort_percent": 0, "delay_percent": 100, "delay_ms": 1, "control_percent": 5, "experiment_percent": 5, "min_requests": 1000000, "max_duration_ms": 3600000}"#,
        )
        .unwrap();
    let mut failed = 0;
    for i in 0..1_000 {
        failed += edge.clone().oneshot(format!("user-{i}")).await.is_err() as u64;
    }
    assert!(failed >= 20, "{failed} requests failed");

    let (status, body) = get(addr, "/status", Duration::from_secs(5), |_| false).await;
    assert_eq!(status, http::StatusCode::OK);
    let j: Value = serde_json::from_str(&body).unwrap();
    let experiments = j["experiments"].as_array().expect("an experiments array");
    assert_eq!(experiments.len(), 2, "{j}");
    // In name order.
    let (aborted, running) = (&experiments[0], &experiments[1]);
    assert_eq!(aborted["name"], "no-inventory");
    assert_eq!(aborted["policy"], "inventory");
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["paused"], false);
    assert!(aborted["left_ms"].is_null(), "{aborted}");
    assert_eq!(aborted["run"].as_str().map(str::len), Some(16), "{aborted}");
    assert_eq!(aborted["control_percent"], 10.0);
    assert_eq!(aborted["max_drop_points"], 5.0);
    assert_eq!(aborted["min_requests"], 20);
    // This process's counts: the control cohort all succeeded, the experiment cohort
    // failed as often as it was asked (exactly the failed requests) until the stop.
    let control = aborted["control"]["requests"].as_u64().unwrap();
    assert!(control >= 20, "{aborted}");
    assert_eq!(aborted["control"]["successes"], control);
    assert_eq!(aborted["experiment"]["requests"], failed, "{aborted}");
    assert_eq!(aborted["experiment"]["successes"], 0);
    let verdict = &aborted["verdict"];
    assert_eq!(verdict["state"], "aborted");
    assert_eq!(verdict["deviation_points"], 100.0);
    assert!(verdict["stopped_ms"].as_u64() >= verdict["started_ms"].as_u64());
    let reason = verdict["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("experiment success 0.0 % vs control 100.0 %"),
        "{reason}"
    );
    assert_eq!(running["name"], "slow-search");
    assert_eq!(running["state"], "running");
    assert!(running["verdict"].is_null(), "{running}");
    assert!(
        running["left_ms"].as_u64().is_some_and(|l| l > 3_000_000),
        "{running}"
    );
    // Its cohorts took users once the other stopped: counted, all successes (it delays
    // calls to a policy the edge does not call).
    for cohort in ["control", "experiment"] {
        let c = &running[cohort];
        assert!(c["requests"].as_u64() > Some(0), "{running}");
        assert_eq!(c["successes"], c["requests"]);
    }
    drop(policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_gone_clients_never_hold_anything_up() {
    let s = scene(Duration::from_millis(100)).await;
    let addr = s.serving.local_addr();
    let policy = s.substation.policy("busy");
    // Twenty clients open the stream and never read it; ten more connect and go.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut c,
            b"GET /stream HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    for _ in 0..10 {
        let _ = get(addr, "/stream", Duration::from_millis(150), |_| false).await;
    }
    // The application's calls do not wait for any of it.
    let svc =
        PolicyLayer::new(&policy).layer(service_fn(|n: u64| async move { Ok::<_, BoxError>(n) }));
    let start = Instant::now();
    for n in 0..20_000 {
        svc.clone().oneshot(n).await.unwrap();
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "20,000 calls took {took:?}");
    // A new client is served at every interval, and sees them.
    let (_, text) = get(addr, "/stream", Duration::from_secs(10), |t| {
        t.matches(": ping").count() >= 5
    })
    .await;
    assert!(text.matches(": ping").count() >= 5, "{text}");
    let last = events(&text).pop().expect("an event");
    assert_eq!(last["rollingCountSuccess"], 20_000);
    drop(stalled);
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_100_policies_streams_every_interval_in_bounded_memory() {
    let s = scene(Duration::from_secs(1)).await;
    let addr = s.serving.local_addr();
    let policies: Vec<_> = (0..100)
        .map(|i| s.substation.policy(&format!("soak-{i:03}")))
        .collect();
    let traffic = {
        let policies = policies.clone();
        tokio::spawn(async move {
            let services: Vec<_> = policies
                .iter()
                .map(|p| {
                    PolicyLayer::new(p).layer(service_fn(|n: u64| async move {
                        if n.is_multiple_of(10) {
                            Err(std::io::Error::other("down"))
                        } else {
                            Ok(n)
                        }
                    }))
                })
                .collect();
            let mut n = 0u64;
            loop {
                for svc in &services {
                    let _ = svc.clone().oneshot(n).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let start = Instant::now();
    let mut rss_after_10s = 0;
    let (_, text) = get(addr, "/stream", Duration::from_secs(70), |_| {
        if rss_after_10s == 0 && start.elapsed() >= Duration::from_secs(10) {
            rss_after_10s = rss();
        }
        start.elapsed() >= Duration::from_secs(60)
    })
    .await;
    traffic.abort();
    // What the application holds, not what this reader kept: the stream's text (≈ 12 MB
    // for a minute of 100 policies) is in this process too.
    let grown = rss()
        .saturating_sub(rss_after_10s)
        .saturating_sub(text.capacity() as u64);
    let ticks: Vec<&str> = text.split(": ping\n\n").filter(|t| !t.is_empty()).collect();
    assert!(ticks.len() >= 58, "{} intervals in 60 s", ticks.len());
    for (i, tick) in ticks.iter().enumerate() {
        let evs = events(tick);
        assert_eq!(evs.len(), 100, "interval {i}: {} events", evs.len());
    }
    assert!(
        grown < 16 << 20,
        "resident memory grew by {} KiB between 10 s and 60 s",
        grown >> 10
    );
}
