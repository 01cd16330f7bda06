//! The dashboard example's world, shared with `tests/browser.rs` (included with
//! `#[path]`): a [`Substation`] with an in-memory source, eight named dependencies (and
//! as many light extra ones as asked) behind the policy stack with fallbacks and fault
//! injection, three switches, steady traffic, an edge (a product page calling
//! `inventory` and `recommendations` for each user) behind an [`ExperimentLayer`], and
//! the dashboard served on loopback.
//!
//! The knobs a story turns: [`Scenario::fail`] (a dependency answers errors),
//! [`Scenario::source`] (settings, as an operator would write them),
//! [`Scenario::store`] (the settings' health, as a store outage would report it) and
//! [`Scenario::start_experiments`] (two chaos experiments at the edge: one the judge
//! aborts, one that passes). Dropping the scenario stops its traffic and its server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use substation::dashboard::{Dashboard, Serving};
use substation::experiment::ExperimentLayer;
use substation::fallback::Fallback;
use substation::fault::FaultLayer;
use substation::live::{Health, InMemorySource, Sink, Source};
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::switch::{DecimalKey, SwitchSettings, VariantSettings};
use substation::{BoxError, Substation};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt, service_fn};

/// How a dependency's fallback answers.
#[derive(Clone, Copy, Debug)]
enum Tiers {
    /// A fixed answer.
    Static,
    /// The last good answer for the key, else a fixed one.
    CacheStatic,
    /// A replica (an alternate service), else a fixed answer.
    ServiceStatic,
}

/// One named dependency of the scenario.
#[derive(Clone, Copy, Debug)]
struct Spec {
    /// The named ones' name (the extra ones are named apart).
    name: &'static str,
    /// Calls per second.
    rps: f64,
    /// Typical latency (ms); a call takes 0.5–1.5× it, one in fifty 4× it.
    median_ms: f64,
    /// Failures per 10,000 calls when healthy.
    base_fail: u32,
    tiers: Tiers,
    /// The switch its callers evaluate on each call.
    switch: Option<&'static str>,
}

/// The dependencies a story talks about, busiest first.
const SPECS: &[Spec] = &[
    Spec {
        name: "catalog",
        rps: 60.0,
        median_ms: 4.0,
        base_fail: 20,
        tiers: Tiers::CacheStatic,
        switch: None,
    },
    Spec {
        name: "search",
        rps: 45.0,
        median_ms: 12.0,
        base_fail: 50,
        tiers: Tiers::ServiceStatic,
        switch: Some("search-v2"),
    },
    Spec {
        name: "pricing",
        rps: 40.0,
        median_ms: 3.0,
        base_fail: 0,
        tiers: Tiers::CacheStatic,
        switch: None,
    },
    Spec {
        name: "inventory",
        rps: 30.0,
        median_ms: 6.0,
        base_fail: 100,
        tiers: Tiers::Static,
        switch: None,
    },
    Spec {
        name: "payments",
        rps: 25.0,
        median_ms: 20.0,
        base_fail: 50,
        tiers: Tiers::Static,
        switch: Some("new-checkout"),
    },
    Spec {
        name: "recommendations",
        rps: 20.0,
        median_ms: 15.0,
        base_fail: 200,
        tiers: Tiers::Static,
        switch: Some("ranking"),
    },
    Spec {
        name: "reviews",
        rps: 15.0,
        median_ms: 8.0,
        base_fail: 100,
        tiers: Tiers::CacheStatic,
        switch: None,
    },
    Spec {
        name: "shipping",
        rps: 10.0,
        median_ms: 60.0,
        base_fail: 50,
        tiers: Tiers::Static,
        switch: None,
    },
];

/// The names of the dependencies a story talks about.
pub(crate) fn named() -> Vec<&'static str> {
    SPECS.iter().map(|s| s.name).collect()
}

/// What to start.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Where the dashboard listens (port 0: any free port).
    pub(crate) addr: SocketAddr,
    /// Light dependencies added to the eight named ones (`dep-01`, …), to see a full
    /// dashboard.
    pub(crate) extra: usize,
    /// The dashboard stream's interval.
    pub(crate) interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra: 0,
            interval: Duration::from_secs(1),
        }
    }
}

/// What a dependency's static fallback answers.
const DEFAULT_ANSWER: &str = "default answer";

/// Requests per second at the edge (the product page), over 10,000 users.
const EDGE_RPS: f64 = 50.0;

/// A dependency in this process: answers after a while, or fails as often as its knob
/// says.
#[derive(Debug)]
struct Dependency {
    median_ms: f64,
    base_fail: u32,
    /// Failures per 10,000 calls now.
    fail: AtomicU32,
}

impl Dependency {
    async fn call(&self, user: u64) -> Result<String, std::io::Error> {
        let factor = if fastrand::u32(0..50) == 0 {
            4.0
        } else {
            0.5 + fastrand::f64()
        };
        tokio::time::sleep(Duration::from_secs_f64(self.median_ms * factor / 1000.0)).await;
        if fastrand::u32(0..10_000) < self.fail.load(Relaxed) {
            return Err(std::io::Error::other("503 service unavailable"));
        }
        Ok(format!("answer for user {user}"))
    }
}

/// The settings' health as a store would report it: a [`Source`] that delivers no
/// value, only its health.
#[derive(Clone, Debug, Default)]
pub(crate) struct StoreHealth {
    sink: Arc<Mutex<Option<Sink>>>,
}

impl Source for StoreHealth {
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError> {
        sink.initialized();
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(sink);
        Ok(())
    }
}

impl StoreHealth {
    fn set(&self, health: impl FnOnce(u64) -> Health, substation: &Substation) {
        let revision = substation.snapshot().revision();
        if let Some(sink) = &*self.sink.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = sink.set_health(health(revision));
        }
    }

    /// The store is unreachable: the settings in force are stale, for `reason`.
    pub(crate) fn stale(&self, substation: &Substation, reason: &str) {
        self.set(
            |revision| Health::Stale {
                revision,
                since: SystemTime::now(),
                reason: reason.to_owned(),
            },
            substation,
        );
    }

    /// The store is back: the settings are live.
    pub(crate) fn live(&self, substation: &Substation) {
        self.set(|revision| Health::Live { revision }, substation);
    }
}

/// The running scenario; stops its traffic and server when dropped.
pub(crate) struct Scenario {
    /// The registry the dashboard shows.
    pub(crate) substation: Substation,
    /// The application's settings, as an operator writes them.
    pub(crate) source: InMemorySource,
    /// The settings' health.
    pub(crate) store: StoreHealth,
    dependencies: BTreeMap<String, Arc<Dependency>>,
    traffic: Vec<tokio::task::JoinHandle<()>>,
    serving: Serving,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("addr", &self.serving.local_addr())
            .field("dependencies", &self.dependencies.len())
            .finish_non_exhaustive()
    }
}

type Svc = BoxCloneSyncService<u64, String, BoxError>;

/// The settings every dependency starts with: a short window and open duration, so that
/// a story moves in seconds.
fn defaults(spec: &Spec) -> PolicySettings {
    PolicySettings::default().with(|s| {
        s.timeout.ms = Some(if spec.median_ms >= 50.0 { 200 } else { 100 });
        s.breaker.window_ms = 5_000;
        s.breaker.min_calls = 10;
        s.breaker.open_ms = 2_000;
        s.bulkhead.max_concurrent = Some(64);
    })
}

impl Scenario {
    /// Builds the registry, starts the traffic and serves the dashboard.
    pub(crate) async fn start(options: Options) -> Result<Scenario, BoxError> {
        let extra = (1..=options.extra).map(|i| {
            let spec = Spec {
                name: "",
                rps: 2.0 + (i % 5) as f64,
                median_ms: 2.0 + (i % 7) as f64,
                base_fail: 10 * (i % 4) as u32,
                tiers: Tiers::Static,
                switch: None,
            };
            (format!("dep-{i:02}"), spec)
        });
        let specs: Vec<(String, Spec)> = SPECS
            .iter()
            .map(|s| (s.name.to_owned(), *s))
            .chain(extra)
            .collect();

        let source = InMemorySource::new();
        let store = StoreHealth::default();
        let mut builder = Substation::builder()
            .switch("new-checkout", SwitchSettings::percent(25.0))
            .switch(
                "ranking",
                SwitchSettings::variants([
                    VariantSettings::new("control", 70),
                    VariantSettings::new("ml-v2", 30),
                ]),
            )
            .switch("search-v2", SwitchSettings::percent(100.0));
        for (name, spec) in &specs {
            builder = builder.policy(name, defaults(spec));
        }
        let substation = builder
            .source(source.clone())
            .source(store.clone())
            .build()?;
        substation.initialized().await;
        // Rolled back by an operator: 100 % underneath, off for everyone.
        source.put("switches/search-v2", r#"{"percent": 100, "on": false}"#)?;

        let mut dependencies = BTreeMap::new();
        let mut services = BTreeMap::new();
        let mut traffic = Vec::new();
        for (name, spec) in &specs {
            let dependency = Arc::new(Dependency {
                median_ms: spec.median_ms,
                base_fail: spec.base_fail,
                fail: AtomicU32::new(spec.base_fail),
            });
            dependencies.insert(name.clone(), dependency.clone());
            let svc = protect(&substation, name, spec.tiers, dependency);
            services.insert(name.clone(), svc.clone());
            let switch = spec.switch.map(|name| substation.switch(name));
            let period = Duration::from_secs_f64(1.0 / spec.rps);
            traffic.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The calls in flight belong to this task: aborting it ends them.
                let mut calls = tokio::task::JoinSet::new();
                for n in 0u64.. {
                    ticks.tick().await;
                    while calls.try_join_next().is_some() {}
                    let user = n.wrapping_mul(7919) % 10_000;
                    if let Some(switch) = &switch {
                        let key = DecimalKey::from(user);
                        if switch.settings().variants.is_empty() {
                            let _ = switch.is_on(key);
                        } else {
                            switch.with_variant(key, |_| ());
                        }
                    }
                    let svc = svc.clone();
                    calls.spawn(async move {
                        let _ = svc.oneshot(user).await;
                    });
                }
            }));
        }

        traffic.push(tokio::spawn(edge(
            &substation,
            services["inventory"].clone(),
            services["recommendations"].clone(),
        )));

        let serving = Dashboard::new(&substation)
            .interval(options.interval)
            .serve(options.addr)
            .await?;
        Ok(Scenario {
            substation,
            source,
            store,
            dependencies,
            traffic,
            serving,
        })
    }

    /// The dashboard's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.serving.local_addr()
    }

    /// The dashboard page's URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr())
    }

    /// Makes `dependency` fail every call (`true`) or heals it (back to its usual rate).
    pub(crate) fn fail(&self, dependency: &str, failing: bool) {
        let d = &self.dependencies[dependency];
        d.fail
            .store(if failing { 10_000 } else { d.base_fail }, Relaxed);
    }

    /// Starts two chaos experiments at the edge, 10 % of users in each cohort, judged
    /// from 20 requests a cohort:
    ///
    /// - `inventory-outage` fails `inventory` for its experiment cohort. The fallback's
    ///   default answer is no good to the product page (no stock, no page): the
    ///   experiment cohort's requests fail, and the judge aborts it within seconds.
    /// - `recommendations-outage` fails `recommendations`. The page does without
    ///   personal picks (the fallback's answer will do): the cohorts do equally well,
    ///   and it passes after `passing_ms`.
    pub(crate) fn start_experiments(&self, passing_ms: u64) -> Result<(), BoxError> {
        self.source.put(
            "experiments/inventory-outage",
            r#"{"policy": "inventory", "control_percent": 10, "experiment_percent": 10, "min_requests": 20}"#,
        )?;
        self.source.put(
            "experiments/recommendations-outage",
            &format!(
                r#"{{"policy": "recommendations", "control_percent": 10, "experiment_percent": 10, "min_requests": 20, "max_duration_ms": {passing_ms}}}"#
            ),
        )?;
        Ok(())
    }

    /// Every dependency's name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.dependencies.keys().cloned().collect()
    }

    /// The dashboard's `/status`.
    pub(crate) async fn status(&self) -> Result<serde_json::Value, BoxError> {
        let (code, value) = http_json("GET", &format!("{}status", self.url()), None).await?;
        if code != 200 {
            return Err(format!("GET /status: {code}").into());
        }
        Ok(value)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for task in &self.traffic {
            task.abort();
        }
    }
}

/// The edge's traffic: the product page for one user after another, behind the
/// experiment layer (the user is the sticky key). The page needs `inventory`'s real
/// answer (stock); `recommendations` may answer from its fallback.
fn edge(
    substation: &Substation,
    inventory: Svc,
    recommendations: Svc,
) -> impl Future<Output = ()> + Send + 'static {
    let page = ExperimentLayer::new(substation)
        .key(|user: &u64, put| put(&user.to_le_bytes()))
        .layer(service_fn(move |user: u64| {
            let (inventory, recommendations) = (inventory.clone(), recommendations.clone());
            async move {
                let stock = inventory.oneshot(user).await?;
                if stock == DEFAULT_ANSWER {
                    return Err::<(), BoxError>("no stock information: no product page".into());
                }
                let _picks = recommendations.oneshot(user).await?;
                Ok(())
            }
        }));
    async move {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / EDGE_RPS));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The requests in flight belong to this task: aborting it ends them.
        let mut requests = tokio::task::JoinSet::new();
        for n in 0u64.. {
            ticks.tick().await;
            while requests.try_join_next().is_some() {}
            let page = page.clone();
            requests.spawn(async move {
                let _ = page.oneshot(n.wrapping_mul(7919) % 10_000).await;
            });
        }
    }
}

/// `dependency` behind its policy's stack, with its fallback; faults (and chaos
/// experiments on the policy) are injected innermost, where the dependency would fail.
fn protect(substation: &Substation, name: &str, tiers: Tiers, dependency: Arc<Dependency>) -> Svc {
    let policy = substation.policy(name);
    let inner = FaultLayer::new(&policy).layer(service_fn(move |user: u64| {
        let dependency = dependency.clone();
        async move { dependency.call(user).await }
    }));
    let fallback = Fallback::with_parts(|user: &u64| *user % 500);
    let fallback = match tiers {
        Tiers::Static => fallback.static_value(DEFAULT_ANSWER.to_owned()),
        Tiers::CacheStatic => fallback
            .cache(1_000)
            .static_value(DEFAULT_ANSWER.to_owned()),
        Tiers::ServiceStatic => fallback
            .service(
                service_fn(|user: u64| async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, std::io::Error>(format!("replica answer for user {user}"))
                }),
                |user: &u64| Some(*user),
            )
            .static_value(DEFAULT_ANSWER.to_owned()),
    };
    BoxCloneSyncService::new(PolicyLayer::new(&policy).fallback(fallback).layer(inner))
}

/// One HTTP/1.1 request with an optional JSON body; the status and the JSON answer
/// (`null` for an empty body). Bounded by 60 s.
pub(crate) async fn http_json(
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let exchange = async {
        let response = client.request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| format!("{method} {url}: {code}, not JSON ({e})"))?
        };
        Ok::<_, BoxError>((code, value))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer in 60 s"))?
}
