//! A chaos experiment on real traffic, as Netflix's ChAP runs them: a control and an
//! experiment cohort of users, the inventory service failed for the experiment cohort
//! only, the edge's success rate compared live, and an automatic stop.
//!
//! Two services in this process, over real loopback HTTP (hyper): an **edge** whose
//! product pages call an **inventory** service through a policy stack
//! (`PolicyLayer` → `FaultLayer` → `PropagateLayer` → hyper's client). The edge's
//! inbound stack is an `ExperimentLayer` keyed by the `x-user` header, a 5xx counting as
//! a failure; the settings come from a real etcd this example starts, and the
//! experiments (5 % control, 5 % experiment) are written into it. A load generator sends
//! requests from 20,000 users (100,000 without `--quick`): 40 % product pages, which
//! call inventory, the rest answered by the edge alone.
//!
//! 1. The edge has a good fallback (a static "ships in 3–5 days" answer): the
//!    experiment runs its full duration, both cohorts succeed alike, verdict "passed".
//! 2. The next release's fallback calls a decommissioned replica: the experiment cohort's
//!    product pages fail, and the experiment stops itself within seconds, verdict
//!    "aborted", with the figures as measured and the number of users it affected — no
//!    user outside the experiment cohort ever sees a failure.
//!
//! Run: `cargo run --example experiment --features http` (needs `etcd`, as
//! `scripts/test.sh` installs it; `SUBSTATION_ETCD` names another binary). `-- --quick`
//! (CI) runs a short version and fails unless each of those happened.

#[path = "../tests/etcd/support.rs"]
mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use substation::classify::ServerErrorsAsFailures;
use substation::experiment::{Arm, ExperimentLayer, ExperimentStatus, HEADER, PropagateLayer};
use substation::fallback::Fallback;
use substation::fault::FaultLayer;
use substation::live::etcd::EtcdSource;
use substation::settings::{ExperimentResult, PolicySettings, RunState};
use substation::stack::PolicyLayer;
use substation::{BoxError, Substation};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

const PREFIX: &str = "/substation/shop";
/// The header the edge takes its sticky key from.
const USER: &str = "x-user";
/// The share of requests that are product pages (they call inventory), in percent.
const PRODUCT_PAGES: u64 = 40;
/// What the good fallback answers for inventory.
const FALLBACK_ANSWER: &str = "stock unknown, ships in 3-5 days";

/// The edge's client of inventory, whatever its stack.
type InventoryClient = BoxCloneSyncService<Request<Empty<Bytes>>, Response<Bytes>, BoxError>;

/// How big and how long.
struct Plan {
    quick: bool,
    users: u32,
    workers: usize,
    /// `max_duration_ms` of run 1 (run 2 has the same, and stops long before).
    duration_ms: u64,
    min_requests: u64,
    /// Run 2 must stop within this time of its start.
    stop_within: Duration,
}

/// A fixed pseudo-random draw per number (splitmix64).
fn draw(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `12345` as `12,345`.
fn n(x: impl TryInto<u64>) -> String {
    let digits = x.try_into().unwrap_or(u64::MAX).to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn user_id(u: u32) -> String {
    format!("user-{u}")
}

/// What inventory saw in the `substation-experiment` header of its requests.
#[derive(Default)]
struct Marks {
    control: AtomicU64,
    experiment: AtomicU64,
    unmarked: AtomicU64,
}

/// Serves `svc` (hyper's own service trait) on a fresh loopback port.
async fn serve<S>(svc: S) -> Result<SocketAddr, BoxError>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .expect("valid")
}

/// The dependency: `GET /stock/<item>` answers `in stock: <item>`, always. It counts the
/// cohort header of what it receives.
async fn inventory(marks: Arc<Marks>) -> Result<SocketAddr, BoxError> {
    serve(hyper::service::service_fn(move |req: Request<Incoming>| {
        let counter = match req.headers().get(HEADER).and_then(|v| v.to_str().ok()) {
            Some(v) if v.ends_with("=control") => &marks.control,
            Some(v) if v.ends_with("=experiment") => &marks.experiment,
            _ => &marks.unmarked,
        };
        counter.fetch_add(1, Relaxed);
        let item = req.uri().path().trim_start_matches("/stock/").to_owned();
        async move { Ok::<_, Infallible>(page(StatusCode::OK, format!("in stock: {item}"))) }
    }))
    .await
}

/// hyper's client, its body read whole, with a concrete error type.
fn hyper_client() -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Bytes>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let hyper = hyper.clone();
        async move {
            let resp = hyper.request(req).await.map_err(std::io::Error::other)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Response::builder()
                .status(status)
                .body(body)
                .map_err(std::io::Error::other)
        }
    })
}

/// The edge: `/product/<item>` calls inventory through `client` (503 if that fails),
/// anything else is answered at once. Its inbound stack assigns each user's requests
/// to a cohort and counts their outcomes: 5xx is a failure.
async fn edge(
    substation: &Substation,
    inventory: SocketAddr,
    client: InventoryClient,
) -> Result<SocketAddr, BoxError> {
    let handler = tower::service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        let item = req
            .uri()
            .path()
            .strip_prefix("/product/")
            .map(str::to_owned);
        async move {
            let Some(item) = item else {
                return Ok::<_, Infallible>(page(StatusCode::OK, "home".to_owned()));
            };
            // Called inside the edge's response future: the request's cohort is the
            // current one here, so the FaultLayer of "inventory" below sees it.
            let call = Request::get(format!("http://{inventory}/stock/{item}"))
                .body(Empty::new())
                .expect("valid");
            Ok(match client.oneshot(call).await {
                Ok(r) if r.status().is_success() => page(
                    StatusCode::OK,
                    format!("product {item}: {}", String::from_utf8_lossy(r.body())),
                ),
                _ => page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "product page unavailable".to_owned(),
                ),
            })
        }
    });
    let edge = ExperimentLayer::new(substation)
        .key(|req: &Request<Incoming>, put| {
            if let Some(user) = req.headers().get(USER) {
                put(user.as_bytes());
            }
        })
        .classify(ServerErrorsAsFailures)
        .layer(handler);
    serve(hyper::service::service_fn(move |req| {
        edge.clone().oneshot(req)
    }))
    .await
}

/// What the load generator saw, by cohort (0: none, 1: control, 2: experiment).
#[derive(Default)]
struct Tally {
    requests: [u64; 3],
    failures: [u64; 3],
    /// Product pages answered with the fallback's answer.
    fallback: [u64; 3],
    users: [HashSet<u32>; 3],
    failed_users: [HashSet<u32>; 3],
    /// Requests sent after the verdict was seen, and those of them that failed.
    after_stop: u64,
    failed_after_stop: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for i in 0..3 {
            self.requests[i] += other.requests[i];
            self.failures[i] += other.failures[i];
            self.fallback[i] += other.fallback[i];
            self.users[i].extend(&other.users[i]);
            self.failed_users[i].extend(&other.failed_users[i]);
        }
        self.after_stop += other.after_stop;
        self.failed_after_stop += other.failed_after_stop;
    }

    fn total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

fn cohort_index(arm: Option<Arm>) -> usize {
    match arm {
        None => 0,
        Some(Arm::Control) => 1,
        Some(Arm::Experiment) => 2,
    }
}

/// Flags shared by the load generator's workers.
#[derive(Default)]
struct Load {
    next: AtomicU64,
    stopped: AtomicBool,
    after_stop: AtomicU64,
    done: AtomicBool,
}

/// One worker: requests from random users until `done`, each tallied under the
/// user's cohort (`cohorts`, read from the registry while the run was live).
async fn worker(
    edge: SocketAddr,
    users: u32,
    cohorts: Arc<Vec<Option<Arm>>>,
    load: Arc<Load>,
) -> Tally {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut tally = Tally::default();
    while !load.done.load(SeqCst) {
        let n = load.next.fetch_add(1, Relaxed);
        let user = (draw(n) % u64::from(users)) as u32;
        let path = if draw(n ^ 0xA5A5) % 100 < PRODUCT_PAGES {
            format!("/product/{}", draw(n ^ 0x5A5A) % 500)
        } else {
            "/".to_owned()
        };
        let after_stop = load.stopped.load(SeqCst);
        let req = Request::get(format!("http://{edge}{path}"))
            .header(USER, user_id(user))
            .body(Empty::new())
            .expect("valid");
        let (ok, body) = match client.request(req).await {
            Ok(resp) => {
                let ok = !resp.status().is_server_error();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                (ok && body.is_ok(), body.unwrap_or_default())
            }
            Err(_) => (false, Bytes::new()),
        };
        let c = cohort_index(cohorts[user as usize]);
        tally.requests[c] += 1;
        tally.users[c].insert(user);
        if !ok {
            tally.failures[c] += 1;
            tally.failed_users[c].insert(user);
        }
        if body.ends_with(FALLBACK_ANSWER.as_bytes()) {
            tally.fallback[c] += 1;
        }
        if after_stop {
            load.after_stop.fetch_add(1, Relaxed);
            tally.after_stop += 1;
            tally.failed_after_stop += u64::from(!ok);
        }
    }
    tally
}

/// Polls `check` every 10 ms until it gives a value, or fails after `limit`.
async fn until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T, BoxError> {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("never happened within {limit:?}: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status_of(substation: &Substation, name: &str) -> Option<ExperimentStatus> {
    substation
        .experiments()
        .into_iter()
        .find(|s| s.name == name)
}

/// What one run gave.
struct RunReport {
    status: ExperimentStatus,
    verdict: ExperimentResult,
    /// From the write's return to the verdict seen by this process.
    seen_after: Duration,
    stored: ExperimentResult,
    tally: Tally,
    cohort_users: [usize; 3],
}

/// Writes experiment `name`, runs the load against `edge` until its verdict is in and
/// recorded in etcd, and reports.
async fn run(
    plan: &Plan,
    substation: &Substation,
    etcd: &mut etcd_client::Client,
    edge: SocketAddr,
    name: &str,
) -> Result<RunReport, BoxError> {
    let value = serde_json::json!({
        "policy": "inventory",
        "abort_percent": 100,
        "control_percent": 5,
        "experiment_percent": 5,
        "max_drop_points": 5,
        "min_requests": plan.min_requests,
        "max_duration_ms": plan.duration_ms,
    })
    .to_string();
    let key = format!("{PREFIX}/experiments/{name}");
    println!("$ etcdctl put {key} '{value}'");
    etcd.put(key.as_str(), value.as_str(), None).await?;
    let written = Instant::now();
    until(
        "the experiment runs here",
        Duration::from_secs(30),
        async || status_of(substation, name).filter(|s| s.state == RunState::Running),
    )
    .await?;

    // Each user's cohort, as the edge assigns it while the run is live.
    let cohorts: Vec<Option<Arm>> = (0..plan.users)
        .map(|u| substation.experiment_cohort(name, user_id(u).as_bytes()))
        .collect();
    if status_of(substation, name).is_none_or(|s| s.state != RunState::Running) {
        return Err("the run ended before its cohorts were read".into());
    }
    let mut cohort_users = [0; 3];
    for arm in &cohorts {
        cohort_users[cohort_index(*arm)] += 1;
    }
    println!(
        "  cohorts of {} users: control {}, experiment {}, neither {}",
        n(plan.users),
        n(cohort_users[1]),
        n(cohort_users[2]),
        n(cohort_users[0])
    );
    let cohorts = Arc::new(cohorts);
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..plan.workers)
        .map(|_| tokio::spawn(worker(edge, plan.users, cohorts.clone(), load.clone())))
        .collect();

    // Until the verdict, a line a second (fewer in the long run).
    let every = if plan.quick { 1_000 } else { 5_000 };
    let mut next_line = every;
    let limit = Duration::from_millis(plan.duration_ms) + Duration::from_secs(60);
    let status = until("a verdict", limit, async || {
        let s = status_of(substation, name)?;
        if s.state.is_final() {
            return Some(s);
        }
        let ms = written.elapsed().as_millis() as u64;
        if ms >= next_line {
            next_line += every;
            println!(
                "  {:>5.1} s  control {:>5} requests {:>5.1} % ok   experiment {:>5} requests {:>5.1} % ok",
                ms as f64 / 1000.0,
                s.control.requests,
                s.control.success_percent(),
                s.experiment.requests,
                s.experiment.success_percent()
            );
        }
        None
    })
    .await?;
    let seen_after = written.elapsed();
    load.stopped.store(true, SeqCst);
    let verdict = status
        .verdict
        .clone()
        .ok_or("a final state without a verdict")?;

    // The verdict as stored beside the experiment, for every other process; and some
    // traffic after the stop.
    let result_key = format!("{key}/result");
    let stored = until("the verdict in etcd", Duration::from_secs(30), async || {
        let got = etcd.get(result_key.as_str(), None).await.ok()?;
        let r: ExperimentResult = serde_json::from_slice(got.kvs().first()?.value()).ok()?;
        (r.run == status.run && r.state.is_final()).then_some(r)
    })
    .await?;
    until(
        "traffic after the stop",
        Duration::from_secs(30),
        async || (load.after_stop.load(Relaxed) >= 500).then_some(()),
    )
    .await?;
    load.done.store(true, SeqCst);
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await?);
    }
    Ok(RunReport {
        status,
        verdict,
        seen_after,
        stored,
        tally,
        cohort_users,
    })
}

/// Fails with `what` unless `ok`.
fn check(ok: bool, what: String) -> Result<(), BoxError> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("the story did not happen: {what}").into())
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Lines common to both runs.
fn report(r: &RunReport) {
    let v = &r.verdict;
    let (c, e) = (v.control, v.experiment);
    let took = v
        .stopped_ms
        .unwrap_or(v.started_ms)
        .saturating_sub(v.started_ms);
    println!(
        "  verdict: {} after {:.1} s (seen here {:.1} s after the write): {}",
        v.state.as_str(),
        secs(took),
        r.seen_after.as_secs_f64(),
        v.reason.as_deref().unwrap_or("")
    );
    println!(
        "  the edge counted: control {:.1} % of {} requests, experiment {:.1} % of {}",
        c.success_percent(),
        n(c.requests),
        e.success_percent(),
        n(e.requests)
    );
    let t = &r.tally;
    println!(
        "  the load generator sent {} requests; failed, by the user's cohort: control {} of {}, experiment {} of {}, neither {} of {}; sent after the stop: {} of {}",
        n(t.total()),
        n(t.failures[1]),
        n(t.requests[1]),
        n(t.failures[2]),
        n(t.requests[2]),
        n(t.failures[0]),
        n(t.requests[0]),
        n(t.failed_after_stop),
        n(t.after_stop)
    );
    println!(
        "  etcd {PREFIX}/experiments/{}/result: {} (run {}, by {})",
        r.status.name,
        r.stored.state.as_str(),
        r.stored.run,
        r.stored.by.as_deref().unwrap_or("?")
    );
}

/// Whether etcd can be run here: this example starts its own.
fn etcd_runnable() -> Result<(), BoxError> {
    let bin = std::env::var_os("SUBSTATION_ETCD").unwrap_or_else(|| "etcd".into());
    match std::process::Command::new(&bin)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "this example starts its own etcd and cannot run {bin:?}: {e} (install Debian's \
             etcd-server, or set SUBSTATION_ETCD to an etcd binary)"
        )
        .into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            quick,
            users: 20_000,
            workers: 16,
            duration_ms: 6_000,
            min_requests: 100,
            stop_within: Duration::from_secs(20),
        }
    } else {
        Plan {
            quick,
            users: 100_000,
            workers: 32,
            duration_ms: 30_000,
            min_requests: 500,
            stop_within: Duration::from_secs(60),
        }
    };
    etcd_runnable()?;
    let etcd = support::Etcd::start().await;
    let mut etcd_client = etcd.client().await;
    let substation = Substation::builder()
        // A generous timeout: this story is about the experiment, and a loopback call on
        // a loaded CI machine must not time out into the fallback.
        .policy(
            "inventory",
            PolicySettings::default().with(|s| s.timeout.ms = Some(10_000)),
        )
        .source(EtcdSource::new([etcd.endpoint()], PREFIX))
        .build()?;
    substation.initialized().await;

    let marks = Arc::new(Marks::default());
    let inventory_addr = inventory(marks.clone()).await?;
    let policy = substation.policy("inventory");
    // Innermost: the fault layer of the experiment's policy (it injects for the
    // experiment cohort only), then the header that carries the cohort to inventory.
    let to_inventory = FaultLayer::new(&policy).layer(PropagateLayer::new().layer(hyper_client()));
    println!(
        "etcd {}, inventory {inventory_addr}; {} users, {PRODUCT_PAGES} % of requests are product pages (they call inventory)",
        etcd.endpoint(),
        n(plan.users)
    );

    // Run 1: a fallback that answers well.
    println!("\nRun 1: the edge answers from a static fallback when inventory fails");
    let good: InventoryClient = BoxCloneSyncService::new(
        PolicyLayer::new(&policy)
            .classify(ServerErrorsAsFailures)
            .fallback(Fallback::new().static_with(|_: &(), _| {
                Response::new(Bytes::from_static(FALLBACK_ANSWER.as_bytes()))
            }))
            .layer(to_inventory.clone()),
    );
    let edge1 = edge(&substation, inventory_addr, good).await?;
    let marks_before = marks.control.load(Relaxed);
    let r1 = run(
        &plan,
        &substation,
        &mut etcd_client,
        edge1,
        "no-inventory-1",
    )
    .await?;
    report(&r1);
    let t = &r1.tally;
    println!(
        "  the fallback answered {} product pages of the experiment cohort ({} elsewhere)",
        t.fallback[2],
        t.fallback[0] + t.fallback[1]
    );
    let v = &r1.verdict;
    let lasted = v.stopped_ms.unwrap_or(0).saturating_sub(v.started_ms);
    check(
        v.state == RunState::Passed && r1.stored.state == RunState::Passed,
        format!(
            "run 1 passed (here: {}, in etcd: {})",
            v.state.as_str(),
            r1.stored.state.as_str()
        ),
    )?;
    // The records' times are the wall clock's; the run's end is the library's coarse
    // millisecond clock's: a few ms apart at most.
    check(
        lasted + 250 >= plan.duration_ms,
        format!(
            "run 1 ran its full duration: {lasted} ms from start to stop in its record (max_duration_ms {})",
            plan.duration_ms
        ),
    )?;
    check(
        v.control.requests >= plan.min_requests && v.experiment.requests >= plan.min_requests,
        format!(
            "each cohort had its {} requests to judge ({} and {})",
            plan.min_requests, v.control.requests, v.experiment.requests
        ),
    )?;
    check(
        v.control.successes == v.control.requests
            && v.experiment.successes == v.experiment.requests
            && t.failures.iter().sum::<u64>() == 0,
        "the KPI is the same in both cohorts: no request failed".to_owned(),
    )?;
    check(
        t.fallback[2] > 0 && t.fallback[0] + t.fallback[1] == 0,
        "inventory failed for the experiment cohort only (the fallback's answers)".to_owned(),
    )?;
    check(
        marks.control.load(Relaxed) > marks_before && marks.experiment.load(Relaxed) == 0,
        format!(
            "inventory saw the cohort header: {} requests marked control, {} marked experiment (aborted before leaving the edge)",
            marks.control.load(Relaxed) - marks_before,
            marks.experiment.load(Relaxed)
        ),
    )?;

    // Run 2: the fallback is broken (a replica that was decommissioned).
    println!("\nRun 2: the next release's fallback calls a decommissioned inventory replica");
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let broken: InventoryClient = BoxCloneSyncService::new(
        PolicyLayer::new(&policy)
            .classify(ServerErrorsAsFailures)
            .fallback(Fallback::new().service(
                hyper_client(),
                move |req: &Request<Empty<Bytes>>| {
                    Request::get(format!("http://{gone}{}", req.uri().path()))
                        .body(Empty::new())
                        .ok()
                },
            ))
            .layer(to_inventory),
    );
    let edge2 = edge(&substation, inventory_addr, broken).await?;
    let r2 = run(
        &plan,
        &substation,
        &mut etcd_client,
        edge2,
        "no-inventory-2",
    )
    .await?;
    report(&r2);
    let t = &r2.tally;
    println!(
        "  users affected: {} (of {} in the experiment cohort, {} in all); outside the experiment cohort: {}",
        t.failed_users[2].len(),
        n(r2.cohort_users[2]),
        n(plan.users),
        t.failed_users[0].len() + t.failed_users[1].len()
    );
    let v = &r2.verdict;
    let lasted = Duration::from_millis(
        v.stopped_ms
            .unwrap_or(u64::MAX)
            .saturating_sub(v.started_ms),
    );
    check(
        v.state == RunState::Aborted && r2.stored.state == RunState::Aborted,
        format!(
            "run 2 aborted (here: {}, in etcd: {})",
            v.state.as_str(),
            r2.stored.state.as_str()
        ),
    )?;
    check(
        lasted <= plan.stop_within,
        format!(
            "run 2 stopped {:.1} s after it started (bound {:?})",
            lasted.as_secs_f64(),
            plan.stop_within
        ),
    )?;
    check(
        v.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("experiment success"))
            && r2.stored.reason == v.reason,
        "the reason names both success rates, here and in etcd".to_owned(),
    )?;
    check(
        t.failures[2] > 0 && t.failures[0] == 0 && t.failures[1] == 0,
        format!(
            "failures in the experiment cohort only ({}; control {}, neither {})",
            t.failures[2], t.failures[1], t.failures[0]
        ),
    )?;
    check(
        t.after_stop > 0 && t.failed_after_stop == 0,
        format!(
            "no failure after the stop ({} requests sent after it)",
            t.after_stop
        ),
    )?;
    Ok(())
}
