//! substation's whole story in under 30 seconds: a flaky upstream behind the one-line
//! policy stack, steady traffic, and a live per-second table while settings change —
//! a fault is injected, the upstream breaks (the breaker opens, the fallbacks answer),
//! heals (the breaker closes), is killed and revived by its kill switch, and a new code
//! path is rolled out to 50 % then 100 % of users.
//!
//! The dashboard (`substation::dashboard`) is served on loopback while the story runs;
//! the demo prints its address first (`--port <port>` to choose it, `--keep` to keep
//! serving after the story until Ctrl-C).
//!
//! Run: `scripts/demo.sh` (or `cargo run --example demo --features dashboard --
//! --duration <secs>`). With
//! no external service it keeps its settings in memory; with `--etcd <url>` — or an
//! `etcd` binary on `PATH` that it can start — every change is an etcd write that the
//! watch applies. It exits 0 after telling the story, and fails if the story did not
//! happen (the breaker did not open and close, the fallback did not serve, the kill
//! switch or the rollout had no effect).

#[path = "../tests/etcd/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use substation::breaker::BreakerState;
use substation::dashboard::Dashboard;
use substation::fallback::Fallback;
use substation::fault::FaultLayer;
use substation::live::InMemorySource;
use substation::live::etcd::EtcdSource;
use substation::settings::PolicySettings;
use substation::stack::PolicyLayer;
use substation::switch::{DecimalKey, SwitchSettings};
use substation::{BoxError, Substation};
use tower::{Layer, ServiceExt, service_fn};

const HEALTHY: u8 = 0;
const BROKEN: u8 = 1;

/// Where settings are written: memory, or etcd through a client.
enum Settings {
    Memory(InMemorySource),
    Etcd(Box<etcd_client::Client>),
}

impl Settings {
    async fn put(&mut self, key: &str, json: &str) -> Result<(), BoxError> {
        println!("        ── $ substation set {key} '{json}'");
        match self {
            Settings::Memory(m) => m.put(key, json)?,
            Settings::Etcd(c) => {
                c.put(format!("/substation/demo/{key}"), json, None).await?;
            }
        }
        Ok(())
    }
}

struct Args {
    duration: u64,
    etcd: Option<String>,
    port: u16,
    keep: bool,
}

fn args() -> Result<Args, BoxError> {
    let (mut duration, mut etcd, mut port, mut keep) = (24, None, 0, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => duration = it.next().ok_or("--duration needs seconds")?.parse()?,
            "--etcd" => etcd = Some(it.next().ok_or("--etcd needs a URL")?),
            "--port" => port = it.next().ok_or("--port needs a number")?.parse()?,
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("usage: demo [--duration <secs>] [--etcd <url>] [--port <port>] [--keep]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(Args {
        duration: duration.max(8),
        etcd,
        port,
        keep,
    })
}

type Counts = Vec<(String, Vec<(String, String)>, u64)>;

/// The counters' increments since the last call (a debugging snapshot drains them).
fn drain(snap: &Snapshotter) -> Counts {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            DebugValue::Counter(n) => Some((
                k.key().name().to_owned(),
                k.key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect()
}

fn counter(counts: &Counts, name: &str, label: (&str, &str)) -> u64 {
    counts
        .iter()
        .filter(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map(|(.., v)| v)
        .sum()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Args {
        duration,
        etcd: etcd_url,
        port,
        keep,
    } = args()?;
    // Settings: etcd if given or startable, else memory.
    let mut own_etcd = None;
    let etcd_url = match etcd_url {
        Some(u) => Some(u),
        None if std::path::Path::new("/usr/bin/etcd").exists() || which("etcd") => {
            let e = support::Etcd::start().await;
            let url = e.endpoint();
            own_etcd = Some(e);
            Some(url)
        }
        None => None,
    };
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let mut defaults = PolicySettings::default();
    defaults.timeout.ms = Some(100);
    defaults.breaker.window_ms = 2_000;
    defaults.breaker.min_calls = 10;
    defaults.breaker.open_ms = 500;
    let builder = Substation::builder()
        .policy("pricing", defaults)
        .switch("new-pricing", SwitchSettings::default());
    let (substation, mut settings) = match &etcd_url {
        Some(url) => {
            println!("settings: etcd at {url} (prefix /substation/demo)");
            let sub = builder
                .source(EtcdSource::new([url.clone()], "/substation/demo"))
                .build()?;
            (
                sub,
                Settings::Etcd(Box::new(
                    etcd_client::Client::connect([url.as_str()], None).await?,
                )),
            )
        }
        None => {
            println!("settings: in memory (no etcd found)");
            let mem = InMemorySource::new();
            (builder.source(mem.clone()).build()?, Settings::Memory(mem))
        }
    };
    substation.initialized().await;
    // The dashboard: every policy's tile, the switches and the settings' health, live.
    let dashboard = Dashboard::new(&substation)
        .serve(([127, 0, 0, 1], port).into())
        .await?;
    println!(
        "dashboard: http://{}/  (status: /status, Hystrix stream: /stream)",
        dashboard.local_addr()
    );
    let policy = metrics::with_local_recorder(&recorder, || substation.policy("pricing"));
    let rollout = substation.switch("new-pricing");

    // The upstream: old and new pricing code paths, breakable.
    let state = Arc::new(AtomicU8::new(HEALTHY));
    let upstream = |path: &'static str| {
        let state = state.clone();
        service_fn(move |user: u64| {
            let broken = state.load(Relaxed) == BROKEN;
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if broken {
                    return Err(std::io::Error::other("503"));
                }
                Ok(format!("{path} price for user {user}"))
            }
        })
    };
    let protect = |svc| {
        metrics::with_local_recorder(&recorder, || {
            PolicyLayer::new(&policy)
                .fallback(
                    Fallback::with_parts(|user: &u64| *user % 50)
                        .cache(1_000)
                        .static_value("list price".to_owned()),
                )
                .layer(FaultLayer::new(&policy).layer(svc))
        })
    };
    let old = protect(upstream("old"));
    let new = protect(upstream("new"));

    // Steady traffic: 4 callers; each answer is sorted by where it came from.
    let served_new = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    for w in 0..4u64 {
        let (old, new, rollout) = (old.clone(), new.clone(), rollout.clone());
        let (served_new, latencies) = (served_new.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut user = w;
            loop {
                let start = Instant::now();
                let svc_new = rollout.is_on(DecimalKey::from(user));
                let r = if svc_new {
                    new.clone().oneshot(user).await
                } else {
                    old.clone().oneshot(user).await
                };
                if matches!(&r, Ok(s) if s.starts_with("new")) {
                    served_new.fetch_add(1, Relaxed);
                }
                latencies
                    .lock()
                    .unwrap()
                    .push(start.elapsed().as_micros() as u64);
                user = user.wrapping_add(4);
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        });
    }

    // The story, on a timeline scaled to --duration.
    let d = Duration::from_secs(duration);
    let at = |f: f64| d.mul_f64(f);
    let story: Vec<(Duration, &str)> = vec![
        (at(0.10), "inject a fault: 30 % of calls abort"),
        (at(0.25), "stop the fault; the upstream breaks"),
        (at(0.45), "the upstream heals"),
        (at(0.60), "kill switch on"),
        (at(0.70), "kill switch off; roll the new path out to 50 %"),
        (at(0.85), "roll it out to 100 %"),
    ];
    println!(
        "{:>5}  {:>5} {:>5} {:>6} {:>6} {:>6} {:>5}  {:<9} {:>7}  event",
        "s", "calls", "ok", "cache", "static", "short", "new", "breaker", "p99 ms"
    );
    let started = Instant::now();
    let mut next = 0;
    let mut last_new = 0u64;
    let (mut opened, mut closed_after, mut fallback_served, mut killed_ok, mut all_new) =
        (false, false, 0, false, false);
    // One row per second (per half second for short runs, so that every phase gets one).
    let tick = if duration >= 20 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    };
    println!("one row per {} ms", tick.as_millis());
    while started.elapsed() < d {
        tokio::time::sleep(tick).await;
        // The counts read below cover the half-second that just ended: the phase before
        // any event processed now.
        let phase = next;
        let mut event = String::new();
        while next < story.len() && started.elapsed() >= story[next].0 {
            event = story[next].1.to_owned();
            match next {
                0 => {
                    settings
                        .put("policies/pricing", r#"{"fault": {"abort_percent": 30}}"#)
                        .await?
                }
                1 => {
                    settings.put("policies/pricing", "{}").await?;
                    state.store(BROKEN, Relaxed);
                }
                2 => state.store(HEALTHY, Relaxed),
                3 => {
                    settings
                        .put("policies/pricing", r#"{"kill": true}"#)
                        .await?
                }
                4 => {
                    settings.put("policies/pricing", "{}").await?;
                    settings
                        .put("switches/new-pricing", r#"{"percent": 50}"#)
                        .await?;
                }
                _ => {
                    settings
                        .put("switches/new-pricing", r#"{"percent": 100}"#)
                        .await?
                }
            }
            next += 1;
        }
        // Policies push their counts to the recorder once a second; push them now so
        // that the row covers exactly the tick that just ended.
        substation::metrics::flush();
        let counts = drain(&snap);
        let new_now = served_new.load(Relaxed);
        let delta = [
            [
                "success",
                "failure",
                "timeout",
                "rejected",
                "killed",
                "bulkhead_full",
            ]
            .iter()
            .map(|o| counter(&counts, "substation_calls_total", ("outcome", o)))
            .sum::<u64>(),
            counter(&counts, "substation_calls_total", ("outcome", "success")),
            counter(&counts, "substation_fallbacks_total", ("tier", "cache")),
            counter(&counts, "substation_fallbacks_total", ("tier", "static")),
            counter(&counts, "substation_calls_total", ("outcome", "rejected"))
                + counter(&counts, "substation_calls_total", ("outcome", "killed")),
            new_now - last_new,
        ];
        last_new = new_now;
        let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
        lat.sort_unstable();
        let p99 = lat
            .get(lat.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or(0);
        let state_now = policy.breaker_state();
        opened |= state_now == BreakerState::Open;
        closed_after |= opened && phase >= 3 && state_now == BreakerState::Closed;
        fallback_served += delta[2] + delta[3];
        // Killed: the fallback answers; only calls already in flight (4 callers) succeed.
        killed_ok |= phase == 4 && delta[1] <= 4 && delta[4] > 0;
        // Everyone on the new path: every success came from it (but calls in flight).
        all_new |= phase == 6 && delta[5] > 0 && delta[5] + 4 >= delta[1];
        println!(
            "{:>5.1}  {:>5} {:>5} {:>6} {:>6} {:>6} {:>5}  {:<9} {:>7.2}  {event}",
            started.elapsed().as_secs_f64(),
            delta[0],
            delta[1],
            delta[2],
            delta[3],
            delta[4],
            delta[5],
            if policy.is_killed() {
                "killed"
            } else {
                state_now.as_str()
            },
            p99 as f64 / 1000.0,
        );
    }
    if keep {
        println!(
            "\nthe story is told; the dashboard stays at http://{}/ until Ctrl-C",
            dashboard.local_addr()
        );
        // Ctrl-C ends the process (and the etcd it started, in the same process group).
        std::future::pending::<()>().await;
    }
    drop(dashboard);
    drop(own_etcd);
    println!(
        "\nbreaker opened: {opened}; closed again: {closed_after}; fallback answers: {fallback_served}; kill switch held: {killed_ok}; rollout reached everyone: {all_new}"
    );
    if !(opened && closed_after && fallback_served > 0 && killed_ok && all_new) {
        return Err("the story did not happen as told".into());
    }
    Ok(())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}
