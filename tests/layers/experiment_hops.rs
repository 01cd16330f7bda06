//! An experiment's cohort across real hops: hyper servers two services down, and a
//! tonic server (gRPC metadata). Each service has its own registry, as separate
//! processes would; only the edge assigns and counts.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use substation::classify::{GrpcCodes, ServerErrorsAsFailures};
use substation::experiment::{Arm, ExperimentLayer, HEADER, PropagateLayer};
use substation::fault::FaultLayer;
use substation::live::InMemorySource;
use substation::settings::RunState;
use substation::{BoxError, Substation};
use tower::{Layer, Service, ServiceExt, service_fn};

const EXPERIMENT: &str = r#"{"policy": "db", "control_percent": 10, "experiment_percent": 10, "min_requests": 1000000000}"#;

fn registry(experiment: &str) -> Substation {
    let source = InMemorySource::new();
    let sub = Substation::builder()
        .source(source.clone())
        .build()
        .unwrap();
    source.put("experiments/db-down", experiment).unwrap();
    sub
}

type HyperClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One service: adopts the cohort from the header; calls `next` (propagating the
/// cohort) or, at the end of the chain, its dependency `db` through the fault layer.
/// Answers 200, or 503 when what it called failed.
async fn service(sub: &Substation, next: Option<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let db = FaultLayer::new(&sub.policy("db"))
        .layer(service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    let client = PropagateLayer::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let handler = service_fn(move |_req: Request<Incoming>| {
        let (db, client) = (db.clone(), client.clone());
        async move {
            let ok = match next {
                Some(next) => {
                    let req = Request::get(format!("http://{next}/"))
                        .body(Empty::new())
                        .unwrap();
                    let resp: Result<Response<Incoming>, _> = client.oneshot(req).await;
                    resp.is_ok_and(|r| r.status() == StatusCode::OK)
                }
                None => db.oneshot(()).await.is_ok(),
            };
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = status;
            Ok::<_, Infallible>(resp)
        }
    });
    let svc = ExperimentLayer::<Request<Incoming>>::new(sub)
        .http()
        .layer(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    addr
}

/// The edge: assigns by the user, calls the first service, counts its answers.
fn edge(
    sub: &Substation,
    first: SocketAddr,
    client: HyperClient,
) -> impl Service<String, Response = Response<Incoming>, Error = BoxError> + Clone + use<> {
    let client = PropagateLayer::new().layer(client);
    ExperimentLayer::new(sub)
        .key(|user: &String, put| put(user.as_bytes()))
        .classify(ServerErrorsAsFailures)
        .layer(service_fn(move |_user: String| {
            let client = client.clone();
            async move {
                let req = Request::get(format!("http://{first}/")).body(Empty::new())?;
                Ok::<_, BoxError>(client.oneshot(req).await?)
            }
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cohort_crosses_two_hyper_hops_and_fails_the_dependency_for_exactly_its_users() {
    let (a, b, c) = (
        registry(EXPERIMENT),
        registry(EXPERIMENT),
        registry(EXPERIMENT),
    );
    let c_addr = service(&c, None).await;
    let b_addr = service(&b, Some(c_addr)).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut svc = edge(&a, b_addr, client.clone());
    let (mut failed, mut experiment) = (0, 0);
    for i in 0..2_000 {
        let user = format!("user-{i}");
        let arm = a.experiment_cohort("db-down", user.as_bytes());
        let resp = svc.ready().await.unwrap().call(user.clone()).await.unwrap();
        let ok = resp.status() == StatusCode::OK;
        let _ = resp.into_body().collect().await;
        let down = arm == Some(Arm::Experiment);
        assert_eq!(ok, !down, "{user} ({arm:?})");
        failed += u32::from(down);
        experiment += u32::from(down);
    }
    assert!(experiment > 100, "{experiment}");
    // Only the edge counted (adopted cohorts are not judged downstream).
    let at_edge = &a.experiments()[0];
    assert_eq!(at_edge.experiment.requests, u64::from(failed));
    assert_eq!(at_edge.experiment.successes, 0);
    assert_eq!(at_edge.control.successes, at_edge.control.requests);
    for downstream in [&b, &c] {
        let s = &downstream.experiments()[0];
        assert_eq!((s.control.requests, s.experiment.requests), (0, 0), "{s:?}");
        assert_eq!(s.state, RunState::Running);
    }
    // A request arriving with no cohort is assigned nothing downstream (B has no key),
    // and a forged header naming an experiment B does not run is ignored.
    let plain = Request::get(format!("http://{b_addr}/"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        client.request(plain).await.unwrap().status(),
        StatusCode::OK
    );
    let forged = Request::get(format!("http://{b_addr}/"))
        .header(HEADER, "unknown=experiment")
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        client.request(forged).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cohort_crosses_a_tonic_hop_as_grpc_metadata() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let (edge_sub, server_sub) = (registry(EXPERIMENT), registry(EXPERIMENT));
    // The gRPC server: adopts the cohort from the metadata; its "db" policy's fault
    // layer answers UNAVAILABLE for the experiment cohort.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("prices", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let adopt = ExperimentLayer::<http::Request<tonic::body::Body>>::new(&server_sub).http();
    let fault = FaultLayer::new(&server_sub.policy("db")).abort_with(
        |_: &http::Request<tonic::body::Body>| {
            tonic::Status::unavailable("injected by the experiment").into_http()
        },
    );
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .layer(adopt)
            .layer(fault)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let client = HealthClient::new(PropagateLayer::new().layer(channel));
    let edge = ExperimentLayer::new(&edge_sub)
        .key(|user: &String, put| put(user.as_bytes()))
        .classify(GrpcCodes::default())
        .layer(service_fn(move |_user: String| {
            let mut client = client.clone();
            async move {
                let req = HealthCheckRequest {
                    service: "prices".into(),
                };
                client.check(req).await
            }
        }));
    let mut experiment = 0;
    for i in 0..1_000 {
        let user = format!("user-{i}");
        let arm = edge_sub.experiment_cohort("db-down", user.as_bytes());
        let got = edge.clone().oneshot(user.clone()).await;
        match arm {
            Some(Arm::Experiment) => {
                experiment += 1;
                let status = got.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unavailable, "{user}");
                assert_eq!(status.message(), "injected by the experiment");
            }
            _ => assert!(got.is_ok(), "{user} ({arm:?}): {got:?}"),
        }
    }
    assert!(experiment > 50, "{experiment}");
    let at_edge = &edge_sub.experiments()[0];
    assert_eq!(at_edge.experiment.requests, experiment);
    assert_eq!(at_edge.experiment.successes, 0);
    assert!(at_edge.control.requests > 50);
    assert_eq!(at_edge.control.successes, at_edge.control.requests);
}
