//! The breaker opening and closing, live: a dependency that fails for a while, a
//! circuit breaker that stops calling it, trial calls, recovery, and an operator's
//! settings change — all printed as it happens.
//!
//! Run: `cargo run --example demo` (add `-- --duration <secs>` to bound it; the story
//! takes about 4 s and the demo exits 0 when it is told).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use substation::breaker::error::OpenCircuit;
use substation::breaker::{BreakerState, CircuitBreakerLayer};
use substation::live::InMemorySource;
use substation::settings::{BreakerMode, PolicySettings};
use substation::timeout::TimeoutLayer;
use substation::timeout::error::Elapsed;
use substation::{BoxError, Substation};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    rejected: AtomicU64,
}

impl Tally {
    fn take(&self) -> [u64; 4] {
        [&self.ok, &self.failed, &self.timed_out, &self.rejected]
            .map(|c| c.swap(0, Ordering::Relaxed))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let duration = parse_duration()?;
    let mut defaults = PolicySettings::default();
    defaults.timeout.ms = Some(50);
    defaults.breaker.window_ms = 1_000;
    defaults.breaker.min_calls = 10;
    defaults.breaker.open_ms = 500;
    let settings = InMemorySource::new();
    let substation = Substation::builder()
        .policy("inventory", defaults)
        .source(settings.clone())
        .build()?;
    let policy = substation.policy("inventory");

    // The dependency: healthy, then broken (errors and a stall), then healed. Its error
    // is a concrete type: an inner `BoxError` trips a rustc limitation when the stack is
    // moved into `tokio::spawn` ("implementation of `From` is not general enough"),
    // with tower's own layers too.
    let broken = Arc::new(AtomicBool::new(false));
    let dependency = {
        let broken = broken.clone();
        service_fn(move |n: u64| {
            let broken = broken.load(Ordering::Relaxed);
            async move {
                if broken {
                    if n.is_multiple_of(2) {
                        tokio::time::sleep(Duration::from_secs(1)).await; // a stall
                    }
                    return Err(std::io::Error::other("503 service unavailable"));
                }
                Ok(n)
            }
        })
    };
    let client = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(&policy))
        .layer(TimeoutLayer::new(&policy))
        .service(dependency);

    // Steady traffic: 4 callers, one call each per 5 ms.
    let tally = Arc::new(Tally::default());
    for worker in 0..4u64 {
        let client = client.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut n = worker;
            loop {
                let counter = match client.clone().oneshot(n).await {
                    Ok(_) => &tally.ok,
                    Err(e) if e.is::<OpenCircuit>() => &tally.rejected,
                    Err(e) if e.is::<Elapsed>() => &tally.timed_out,
                    Err(_) => &tally.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                n += 4;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    type Step = (u64, &'static str, Box<dyn Fn()>);
    let script: [Step; 5] = [
        (0, "dependency healthy", Box::new(|| {})),
        (800, "dependency breaks: errors and 1 s stalls", {
            let b = broken.clone();
            Box::new(move || b.store(true, Ordering::Relaxed))
        }),
        (
            2_000,
            "dependency heals; the next trial call will close the breaker",
            {
                let b = broken.clone();
                Box::new(move || b.store(false, Ordering::Relaxed))
            },
        ),
        (
            3_000,
            "operator: etcdctl put .../policies/inventory '{\"breaker\":{\"mode\":\"force_open\"}}'",
            {
                let s = settings.clone();
                Box::new(move || {
                    s.put("policies/inventory", r#"{"breaker":{"mode":"force_open"}}"#)
                        .expect("valid")
                })
            },
        ),
        (
            3_500,
            "operator deletes the key: back to the code defaults",
            {
                let s = settings.clone();
                Box::new(move || s.delete("policies/inventory"))
            },
        ),
    ];

    println!(
        "{:>6}  {:>5} {:>6} {:>8} {:>8}  {:<11}  event",
        "ms", "ok", "failed", "timeout", "rejected", "breaker"
    );
    let start = Instant::now();
    let mut next = 0;
    let mut seen = Vec::new();
    let end = Duration::from_secs(duration.unwrap_or(4)).min(Duration::from_secs(4));
    while start.elapsed() < end {
        let ms = start.elapsed().as_millis() as u64;
        let mut event = String::new();
        while next < script.len() && script[next].0 <= ms {
            (script[next].2)();
            event = script[next].1.to_owned();
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let [ok, failed, timed_out, rejected] = tally.take();
        let state = policy.breaker_state();
        seen.push(state);
        let shown = match policy.settings().breaker.mode {
            BreakerMode::ForceOpen => "forced open",
            BreakerMode::ForceClosed => "forced closed",
            _ => state.as_str(),
        };
        println!("{ms:>6}  {ok:>5} {failed:>6} {timed_out:>8} {rejected:>8}  {shown:<11}  {event}");
    }
    let opened = seen.contains(&BreakerState::Open);
    let closed_again = seen
        .iter()
        .skip_while(|s| **s != BreakerState::Open)
        .any(|s| *s == BreakerState::Closed);
    println!("\nbreaker opened: {opened}; closed again after recovery: {closed_again}");
    // The whole story ran: it must have happened as told.
    if end >= Duration::from_secs(4) && !(opened && closed_again) {
        return Err("the breaker did not open and close as the story says".into());
    }
    Ok(())
}

fn parse_duration() -> Result<Option<u64>, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut duration = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let v = args.next().ok_or("--duration needs a number of seconds")?;
                duration = Some(v.parse().map_err(|e| format!("--duration {v}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("usage: demo [--duration <secs>]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(duration)
}
