//! The dashboard, live: eight in-process dependencies behind the policy stack, steady
//! traffic, three feature switches, and the dashboard served on loopback — with a story
//! to watch there, told over and over: `payments` starts failing (its breaker opens,
//! its fallback answers), an operator kills `reviews`, the settings store becomes
//! unreachable (the banner turns stale) and a bad value is refused (listed as rejected);
//! then everything heals (the breaker closes) and `new-checkout` rolls further out.
//! Meanwhile two chaos experiments run at the edge (a product page calling `inventory`
//! and `recommendations`): `inventory-outage` is aborted by its judge within seconds
//! (the page cannot do without stock), `recommendations-outage` passes (it can do
//! without personal picks).
//!
//! Run: `cargo run --example dashboard --features dashboard` and open the address it
//! prints (`-- --port 9090` to choose the port, `--policies 50` for a full page).
//! `-- --quick` is the self-checking run CI makes (≈ 10 s): it reads `/status` and
//! fails unless the breaker opened and closed, counts grew, the fallback answered, the
//! kill switch, the outage and the rejection showed, the rollout moved, and the one
//! experiment was aborted and the other passed.

#[path = "dashboard/scenario.rs"]
mod scenario;

use std::time::{Duration, Instant};

use serde_json::Value;
use substation::BoxError;

use self::scenario::{Options, Scenario};

struct Args {
    port: u16,
    policies: usize,
    quick: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut args = Args {
        port: 0,
        policies: 8,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => args.port = it.next().ok_or("--port needs a number")?.parse()?,
            "--policies" => {
                args.policies = it.next().ok_or("--policies needs a number")?.parse()?
            }
            "--quick" => args.quick = true,
            "-h" | "--help" => {
                println!("usage: dashboard [--port <port>] [--policies <n>] [--quick]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// How long each phase of the story lasts.
struct Pace {
    /// Traffic before anything happens.
    warm: Duration,
    /// With the breaker open, the dependency killed, the store away.
    hold: Duration,
    /// After everything healed.
    calm: Duration,
    /// How long the breaker may take to open, or to close after the healing.
    deadline: Duration,
}

/// What the story saw through `/status`.
#[derive(Debug, Default)]
struct Seen {
    opened: Option<Duration>,
    closed: Option<Duration>,
    stale: bool,
    rejected: bool,
    killed: bool,
}

fn policy<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["policies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn breaker(status: &Value, name: &str) -> String {
    policy(status, name)
        .and_then(|p| p["stats"]["breaker"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

/// Every call of a policy's totals (made or not).
fn calls(status: &Value, name: &str) -> u64 {
    let Some(t) = policy(status, name).map(|p| &p["stats"]["totals"]) else {
        return 0;
    };
    [
        "success",
        "failure",
        "timeout",
        "rejected",
        "killed",
        "bulkhead_full",
    ]
    .iter()
    .map(|k| t[*k].as_u64().unwrap_or(0))
    .sum()
}

fn experiment<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["experiments"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn experiment_state(status: &Value, name: &str) -> String {
    experiment(status, name)
        .and_then(|e| e["state"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

fn fallback_served(status: &Value, name: &str) -> u64 {
    let Some(f) = policy(status, name).map(|p| &p["stats"]["fallback_totals"]) else {
        return 0;
    };
    ["static", "cache", "service"]
        .iter()
        .map(|t| f[*t]["served"].as_u64().unwrap_or(0))
        .sum()
}

/// Polls `/status` until `done` holds for it (returning how long that took), or the
/// deadline passes.
async fn wait_for(
    scenario: &Scenario,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Option<Duration>, BoxError> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done(&scenario.status().await?) {
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

fn say(started: Instant, what: &str) {
    println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
}

/// One telling of the story.
async fn story(
    scenario: &Scenario,
    pace: &Pace,
    rollout: u32,
    started: Instant,
) -> Result<Seen, BoxError> {
    let mut seen = Seen::default();
    tokio::time::sleep(pace.warm).await;

    say(started, "payments starts failing every call");
    scenario.fail("payments", true);
    seen.opened = wait_for(scenario, pace.deadline, |s| {
        breaker(s, "payments") == "open"
    })
    .await?;
    match seen.opened {
        Some(t) => say(
            started,
            &format!("payments' breaker is open ({} ms later)", t.as_millis()),
        ),
        None => say(started, "payments' breaker did NOT open"),
    }

    say(
        started,
        "an operator kills reviews; the settings store goes away; a bad value for pricing is refused",
    );
    scenario
        .source
        .put("policies/reviews", r#"{"kill": true}"#)?;
    scenario.store.stale(
        &scenario.substation,
        "etcd unreachable: connection refused (simulated)",
    );
    if let Err(e) = scenario
        .source
        .put("policies/pricing", r#"{"timeout": {"ms": 0}}"#)
    {
        say(started, &format!("  refused: {e}"));
    }
    tokio::time::sleep(pace.hold).await;
    let status = scenario.status().await?;
    seen.stale = status["health"]["state"] == "stale";
    seen.rejected = status["rejected"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["key"] == "policies/pricing"));
    seen.killed = policy(&status, "reviews").is_some_and(|p| p["settings"]["kill"] == true);

    say(
        started,
        "payments heals; reviews is revived; the store is back; pricing's value is fixed",
    );
    scenario.fail("payments", false);
    scenario.source.put("policies/reviews", "{}")?;
    scenario.source.put("policies/pricing", "{}")?;
    scenario.store.live(&scenario.substation);
    seen.closed = wait_for(scenario, pace.deadline, |s| {
        breaker(s, "payments") == "closed"
    })
    .await?;
    match seen.closed {
        Some(t) => say(
            started,
            &format!("payments' breaker is closed ({} ms later)", t.as_millis()),
        ),
        None => say(started, "payments' breaker did NOT close"),
    }

    say(started, &format!("new-checkout rolls out to {rollout} %"));
    scenario.source.put(
        "switches/new-checkout",
        &format!(r#"{{"percent": {rollout}}}"#),
    )?;
    tokio::time::sleep(pace.calm).await;
    Ok(seen)
}

/// The quick run: one telling, checked through `/status`.
async fn quick(scenario: &Scenario, started: Instant) -> Result<(), BoxError> {
    // Let every policy take some calls first (the first sample of the rolling view).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = scenario.status().await?;
    let pace = Pace {
        warm: Duration::from_millis(1_000),
        hold: Duration::from_millis(1_200),
        calm: Duration::from_millis(500),
        deadline: Duration::from_secs(8),
    };
    let seen = story(scenario, &pace, 50, started).await?;
    // The experiments started with the scenario: one aborted within seconds, the other
    // ran its 4 s.
    wait_for(scenario, pace.deadline, |s| {
        experiment_state(s, "inventory-outage") != "running"
            && experiment_state(s, "recommendations-outage") != "running"
    })
    .await?;
    let after = scenario.status().await?;

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failures.push(what);
        }
    };
    check(seen.opened.is_some(), "payments' breaker opened".into());
    check(
        seen.closed.is_some(),
        "payments' breaker closed again".into(),
    );
    for name in scenario::named() {
        let (a, b) = (calls(&before, name), calls(&after, name));
        check(b > a, format!("{name}: calls grew ({a} → {b})"));
    }
    let (a, b) = (
        fallback_served(&before, "payments"),
        fallback_served(&after, "payments"),
    );
    check(
        b > a,
        format!("payments: the fallback answered ({a} → {b})"),
    );
    let killed = policy(&after, "reviews")
        .map_or(0, |p| p["stats"]["totals"]["killed"].as_u64().unwrap_or(0));
    check(
        seen.killed && killed > 0,
        format!("reviews: killed, {killed} calls answered without it"),
    );
    check(seen.stale, "the health showed stale settings".into());
    check(seen.rejected, "pricing's bad value was listed".into());
    check(
        after["health"]["state"] == "live"
            && after["rejected"].as_array().is_some_and(Vec::is_empty),
        "healthy again: live, nothing rejected".into(),
    );
    let switch = after["switches"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "new-checkout"));
    check(
        switch.is_some_and(|s| {
            s["settings"]["percent"] == 50.0
                && s["evaluations"]
                    .as_object()
                    .is_some_and(|e| e.values().filter_map(Value::as_u64).sum::<u64>() > 0)
        }),
        "new-checkout: at 50 %, evaluated".into(),
    );
    let counted = |e: &Value| {
        ["control", "experiment"]
            .iter()
            .all(|c| e[*c]["requests"].as_u64() > Some(0))
    };
    let aborted = experiment(&after, "inventory-outage");
    let reason = aborted
        .and_then(|e| e["verdict"]["reason"].as_str())
        .unwrap_or("");
    check(
        aborted.is_some_and(|e| e["state"] == "aborted" && counted(e))
            && reason.starts_with("experiment success"),
        format!(
            "inventory-outage: {}: {reason}",
            experiment_state(&after, "inventory-outage")
        ),
    );
    let passed = experiment(&after, "recommendations-outage");
    check(
        passed.is_some_and(|e| e["state"] == "passed" && counted(e)),
        format!(
            "recommendations-outage: {}: {}",
            experiment_state(&after, "recommendations-outage"),
            passed
                .and_then(|e| e["verdict"]["reason"].as_str())
                .unwrap_or("")
        ),
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("the story did not happen as told: {}", failures.join("; ")).into())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    let started = Instant::now();
    let scenario = Scenario::start(Options {
        addr: ([127, 0, 0, 1], args.port).into(),
        extra: args.policies.saturating_sub(scenario::named().len()),
        ..Options::default()
    })
    .await?;
    println!(
        "dashboard of {} dependencies: {}",
        scenario.names().len(),
        scenario.url()
    );
    let passing_ms = if args.quick { 4_000 } else { 60_000 };
    say(
        started,
        &format!(
            "chaos experiments start at the edge: inventory-outage (the page needs stock: to be aborted), recommendations-outage (to pass in {} s)",
            passing_ms / 1000
        ),
    );
    scenario.start_experiments(passing_ms)?;
    if args.quick {
        return quick(&scenario, started).await;
    }
    let pace = Pace {
        warm: Duration::from_secs(10),
        hold: Duration::from_secs(20),
        calm: Duration::from_secs(20),
        deadline: Duration::from_secs(30),
    };
    println!("(the story repeats; stop with Ctrl-C)");
    for round in 0u32.. {
        story(
            &scenario,
            &pace,
            if round % 2 == 0 { 50 } else { 25 },
            started,
        )
        .await?;
    }
    Ok(())
}
