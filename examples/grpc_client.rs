//! A tonic client wrapped in a policy stack, calling tonic-health's generated `Health`
//! service on a local tonic server that is killed mid-run and then comes back: the
//! breaker opens and the fallback answers at once while the server is gone; the breaker
//! closes when it returns. gRPC outcomes are classified by code (`GrpcCodes`).
//!
//! Run: `cargo run --example grpc_client --features tonic` (`-- --quick` for the
//! self-checking run CI makes).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use substation::classify::GrpcCodes;
use substation::fallback::Fallback;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::{BoxError, Policy, breaker::BreakerState};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer;

/// Serves tonic-health on `addr` until `stop` fires.
async fn serve(
    addr: SocketAddr,
    stop: oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("prices", tonic_health::ServingStatus::Serving)
        .await;
    // Bind first (retrying: the port of a stopped server may linger a moment).
    let listener = {
        let start = Instant::now();
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        let _reporter = reporter;
        let _ = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await;
    }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let server = serve(addr, stopped).await?;

    let mut settings = PolicySettings::default();
    settings.timeout.ms = Some(300);
    settings.breaker.window_ms = 1_000;
    settings.breaker.min_calls = 5;
    settings.breaker.open_ms = 300;
    let policy = Policy::new("prices-grpc", settings)?;

    // The generated client over the protected channel. A gRPC fallback answers with a
    // status of its own: the caller learns at once, instead of waiting on a dead server.
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(200))
        .connect_lazy();
    let protected = PolicyLayer::new(&policy)
        .classify(GrpcCodes::default())
        .fallback(Fallback::new().static_with(|_, _| {
            tonic::Status::unavailable("served by the fallback: prices are down").into_http()
        }))
        .layer(channel);
    let mut client = HealthClient::new(protected);

    let (mut serving, mut fallback, mut opened, mut recovered) = (0, 0, false, false);
    let mut stop = Some(stop);
    let started = Instant::now();
    let phase = Duration::from_millis(if quick { 800 } else { 2_000 });
    let mut restarted = None;
    while started.elapsed() < phase * 3 {
        let t = started.elapsed();
        if t >= phase
            && let Some(stop) = stop.take()
        {
            println!("{:>6} ms  killing the server", t.as_millis());
            let _ = stop.send(());
        }
        if t >= phase * 2 && restarted.is_none() {
            println!("{:>6} ms  the server comes back", t.as_millis());
            let (_stop, stopped) = oneshot::channel::<()>();
            restarted = Some((serve(addr, stopped).await?, _stop));
        }
        let answer = client
            .check(HealthCheckRequest {
                service: "prices".into(),
            })
            .await;
        match answer {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                serving += 1;
                if restarted.is_some() && opened {
                    recovered = true;
                }
            }
            Err(status) if status.message().starts_with("served by the fallback") => fallback += 1,
            Err(status) if status.code() == Code::Unavailable || status.code() == Code::Unknown => {
            }
            other => println!("unexpected: {other:?}"),
        }
        opened |= policy.breaker_state() == BreakerState::Open;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = policy.breaker_state() == BreakerState::Closed;
    println!(
        "serving answers {serving}, fallback answers {fallback}; breaker opened: {opened}; recovered: {recovered}; closed: {closed}"
    );
    drop(server);
    if !(opened && fallback > 0 && recovered && closed) {
        return Err("the story did not happen: breaker open, fallback served, recovery".into());
    }
    Ok(())
}
