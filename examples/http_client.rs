//! A hyper 1.x client wrapped in a policy stack, calling a local hyper server that
//! starts failing and slowing down: the breaker opens, the cache tier serves the last
//! good answers, and the breaker closes again when the server heals.
//!
//! Run: `cargo run --example http_client --features http` (`-- --quick` for the
//! self-checking run CI makes: it fails unless each of those happened).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use substation::breaker::BreakerState;
use substation::classify::ServerErrorsAsFailures;
use substation::fallback::Fallback;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy};
use tower::{Layer, ServiceExt};

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const SLOW: u8 = 2;

/// The upstream: answers `price of <path>`, or 503, or stalls for 2 s.
async fn serve(mode: Arc<AtomicU8>) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mode = mode.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let mode = mode.load(Ordering::Relaxed);
                    async move {
                        let resp = match mode {
                            FAILING => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(Full::new(Bytes::from("unavailable")))
                                .expect("valid"),
                            SLOW => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                Response::new(Full::new(Bytes::from("late")))
                            }
                            _ => Response::new(Full::new(Bytes::from(format!(
                                "price of {}",
                                req.uri().path()
                            )))),
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
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let addr = serve(mode.clone()).await?;

    let mut settings = PolicySettings::default();
    settings.timeout.ms = Some(200);
    settings.breaker.window_ms = 1_000;
    settings.breaker.min_calls = 5;
    settings.breaker.open_ms = 300;
    let policy = Policy::new("prices", settings)?;

    // The client: hyper's, wrapped once. Requests are not `Clone`: the fallback keeps
    // the path (the cache key) before the call; the cache keeps the body bytes.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let hyper = tower::service_fn(move |req: Request<Empty<Bytes>>| {
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
        .fallback(
            Fallback::with_parts(|req: &Request<Empty<Bytes>>| req.uri().path().to_owned())
                .cache(1_000)
                .static_with(|_path: &String, _err| {
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Bytes::from("price unknown"))
                        .expect("valid")
                }),
        )
        .layer(hyper);

    let get = |path: &str| -> Request<Empty<Bytes>> {
        Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .expect("valid")
    };
    let mut opened = false;
    let mut stale_served = 0;
    let mut closed_again = false;
    let started = Instant::now();
    for phase in ["healthy", "failing", "slow", "healed"] {
        mode.store(
            match phase {
                "failing" => FAILING,
                "slow" => SLOW,
                _ => HEALTHY,
            },
            Ordering::Relaxed,
        );
        let end = Instant::now() + Duration::from_millis(if quick { 800 } else { 2_000 });
        let (mut fresh, mut stale) = (0, 0);
        while Instant::now() < end {
            let path = format!("/item/{}", fresh % 5 + stale % 5);
            let resp: Response<Bytes> = client.clone().oneshot(get(&path)).await?;
            let body = String::from_utf8_lossy(resp.body()).into_owned();
            if phase == "healthy" || phase == "healed" {
                if body.starts_with("price of") {
                    fresh += 1;
                }
            } else if body.starts_with("price of") {
                stale += 1; // the upstream fails: this is the cache tier's answer
            }
            opened |= policy.breaker_state() == BreakerState::Open;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if phase == "healed" {
            closed_again = policy.breaker_state() == BreakerState::Closed && opened;
        }
        stale_served += stale;
        println!(
            "{:>6} ms  {phase:<8} fresh {fresh:>4}  cached {stale:>4}  breaker {}",
            started.elapsed().as_millis(),
            policy.breaker_state().as_str()
        );
    }
    println!(
        "breaker opened: {opened}; cached answers served: {stale_served}; closed again: {closed_again}"
    );
    if !(opened && stale_served > 0 && closed_again) {
        return Err("the story did not happen: breaker open, cache served, breaker closed".into());
    }
    Ok(())
}
