//! Retries and hedging against a real hyper server on loopback, through hyper's client.
//!
//! 1. A flaky upstream: 30 % of its answers are `503 Service Unavailable`. The same
//!    client without retries, then with `retry.max_attempts` 3 (a live setting): the
//!    share of failed calls drops from ≈ 30 % to ≈ 3 % (0.3³), each retry paid from the
//!    policy's budget (here 50 % of requests: with the default 20 %, the budget refuses
//!    the retries beyond it, as it would in a storm).
//! 2. A slow tail: 5 % of answers take 100 × the median (2 ms → 200 ms). Without
//!    hedging the caller's p99 is the tail; with `hedge.max_extra` 1 after 10 ms, a
//!    second copy of a slow call answers first.
//!
//! Run: `cargo run --example retry_hedge --features http`; `-- --quick` (CI) checks that
//! both happened.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use substation::classify::ServerErrorsAsFailures;
use substation::retry::Http;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy};
use tower::{Layer, ServiceExt};

/// A fixed pseudo-random draw per request number (splitmix64), in `0..100`.
fn draw(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 100
}

/// `/flaky`: 503 for 30 % of requests. `/tail`: 2 ms, or 200 ms for 5 % of requests.
async fn serve() -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = seen.fetch_add(1, Relaxed);
                    async move {
                        let resp = match req.uri().path() {
                            "/flaky" if draw(n) < 30 => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(Full::new(Bytes::from("busy")))
                                .expect("valid"),
                            "/tail" => {
                                let ms = if draw(n) < 5 { 200 } else { 2 };
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Response::new(Full::new(Bytes::from("ok")))
                            }
                            _ => Response::new(Full::new(Bytes::from("ok"))),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let addr = serve().await?;
    let policy = Policy::new(
        "upstream",
        PolicySettings::default().with(|s| {
            s.breaker.min_calls = 1_000_000; // this story is about retries, not the breaker
            s.retry.backoff_min_ms = 1;
            s.retry.backoff_max_ms = 5;
            // The upstream fails 30 % of first attempts, so a retry per failure is 30 %
            // of requests (plus the retries' own failures): the default budget of 20 %
            // would refuse part of them — the budget at work, which a storm needs. This
            // story allows 50 %.
            s.retry.budget_percent = 50.0;
        }),
    )?;
    // hyper's client, its body read whole; requests with a `Clone` body (`Full<Bytes>`)
    // so that `retry::Http` can copy them.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let hyper = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let hyper = hyper.clone();
        async move {
            let resp = hyper.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::builder().status(status).body(body)?)
        }
    });
    let client = PolicyLayer::new(&policy)
        .classify(ServerErrorsAsFailures)
        .retry(Http::new())
        .layer(hyper);
    let get = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("valid")
    };
    let set = |f: &dyn Fn(&mut PolicySettings)| {
        let mut s = (*policy.settings()).clone();
        f(&mut s);
        policy.update(s)
    };

    // 1. The flaky upstream, without and with retries.
    let n = if quick { 400 } else { 2_000 };
    let mut failed = [0u32; 2];
    for (round, attempts) in [1, 3].into_iter().enumerate() {
        set(&|s| s.retry.max_attempts = attempts)?;
        for _ in 0..n {
            let resp = client.clone().oneshot(get("/flaky")).await?;
            if resp.status() != StatusCode::OK {
                failed[round] += 1;
            }
        }
        println!(
            "flaky upstream, retry.max_attempts = {attempts}: {} of {n} calls failed ({:.1} %)",
            failed[round],
            f64::from(failed[round]) * 100.0 / f64::from(n)
        );
    }
    let totals = policy.stats().totals;
    println!(
        "  retries made {}, refused by the budget {}",
        totals.retries, totals.retries_refused
    );
    set(&|s| s.retry.max_attempts = 1)?;

    // 2. The slow tail, without and with hedging.
    let n = if quick { 600 } else { 3_000 };
    let mut p99 = [Duration::ZERO; 2];
    for (round, extra) in [0, 1].into_iter().enumerate() {
        set(&|s| {
            s.hedge.max_extra = extra;
            s.hedge.delay_ms = Some(10);
        })?;
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let resp = client.clone().oneshot(get("/tail")).await?;
            took.push(start.elapsed());
            assert_eq!(resp.status(), StatusCode::OK);
        }
        took.sort();
        p99[round] = took[took.len() * 99 / 100];
        println!(
            "slow tail, hedge.max_extra = {extra}: p50 {:.1} ms, p99 {:.1} ms",
            took[took.len() / 2].as_secs_f64() * 1e3,
            p99[round].as_secs_f64() * 1e3
        );
    }
    println!("  hedges sent {}", policy.stats().totals.hedges);

    let retried = f64::from(failed[1]) < f64::from(failed[0]) / 4.0 && failed[0] > 0;
    let hedged = p99[1] * 4 < p99[0];
    println!("\nretries recovered the flaky upstream: {retried}; hedging cut the tail: {hedged}");
    if quick && !(retried && hedged) {
        return Err("the story did not happen as told".into());
    }
    Ok(())
}
