//! How fast an etcd write reaches every watching process.
//!
//! ```text
//! cargo run --release --example propagation -- --watchers <W> --writes 1000 [--endpoint URL]
//! ```
//!
//! Starts its own single-node etcd (fsync on) unless `--endpoint` is given, then W
//! independent watchers — each a `Substation` with its own `EtcdSource` and its own
//! client, like W processes — and writes one policy value after another. For every
//! (watcher, write) pair it measures the time from sending the put to the new value
//! being visible in that watcher's snapshot (its change notice is sent right after the
//! swap). The last line is machine-readable:
//!
//! ```text
//! propagation watchers=<W> p50_us=<n> p99_us=<n> all_converged_p99_us=<n> lost=<n>
//! ```
//!
//! `all_converged` is, per write, the time until the last watcher has it; `lost` counts
//! writes some watcher never saw.

#[path = "../tests/etcd/support.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use substation::live::etcd::EtcdSource;
use substation::{BoxError, Substation};

struct Args {
    watchers: usize,
    writes: u64,
    endpoint: Option<String>,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        watchers: 1,
        writes: 1000,
        endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--watchers" => a.watchers = value()?.parse()?,
            "--writes" => a.writes = value()?.parse()?,
            "--endpoint" => a.endpoint = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: --watchers W --writes N [--endpoint URL]"
                )
                .into());
            }
        }
    }
    if a.watchers == 0 || a.writes == 0 {
        return Err("--watchers and --writes must be at least 1".into());
    }
    Ok(a)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    let mut own = None;
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => {
            let etcd = support::Etcd::start_with(support::EtcdOptions {
                fsync: true,
                ..Default::default()
            })
            .await;
            let e = etcd.endpoint();
            own = Some(etcd);
            e
        }
    };
    let prefix = format!("/substation-propagation/{}/", std::process::id());

    // Each watcher records when each revision became visible to it.
    type Seen = Arc<Mutex<HashMap<u64, Instant>>>;
    let mut watchers = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    for _ in 0..args.watchers {
        let sub = Substation::builder()
            .source(EtcdSource::new([endpoint.clone()], prefix.clone()))
            .build()?;
        sub.initialized().await;
        let mut changes = sub.subscribe();
        let log: Seen = Arc::default();
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok(change) = changes.recv().await {
                let now = Instant::now();
                log2.lock().unwrap().insert(change.revision, now);
            }
        });
        seen.push(log);
        watchers.push(sub);
    }

    let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let key = format!("{prefix}policies/p");
    let mut sent = Vec::with_capacity(args.writes as usize);
    for i in 1..=args.writes {
        let value = format!(r#"{{"timeout": {{"ms": {i}}}}}"#);
        let t0 = Instant::now();
        let resp = client.put(key.as_str(), value, None).await?;
        sent.push((resp.header().map_or(0, |h| h.revision()) as u64, t0));
    }

    // Wait (bounded) until every watcher has the last write.
    let last = sent.last().map_or(0, |s| s.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !seen.iter().all(|s| s.lock().unwrap().contains_key(&last)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut pairs = Vec::new();
    let mut converged = Vec::new();
    let mut lost = 0;
    for (revision, t0) in &sent {
        let mut worst = Some(Duration::ZERO);
        for s in &seen {
            match s.lock().unwrap().get(revision) {
                Some(t) => {
                    let d = t.saturating_duration_since(*t0);
                    pairs.push(d.as_micros() as u64);
                    worst = worst.map(|w| w.max(d));
                }
                None => worst = None,
            }
        }
        match worst {
            Some(w) => converged.push(w.as_micros() as u64),
            None => lost += 1,
        }
    }
    pairs.sort_unstable();
    converged.sort_unstable();
    drop(watchers);
    drop(own);
    println!(
        "propagation watchers={} p50_us={} p99_us={} all_converged_p99_us={} lost={}",
        args.watchers,
        percentile(&pairs, 0.50),
        percentile(&pairs, 0.99),
        percentile(&converged, 0.99),
        lost
    );
    if lost > 0 {
        return Err(format!("{lost} writes were never seen by some watcher").into());
    }
    Ok(())
}
