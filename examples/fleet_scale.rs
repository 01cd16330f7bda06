//! Fleet presence at scale: N simulated instances (each a `Substation` with its own
//! `EtcdSource` and etcd connection, announcing itself) on one etcd this example starts
//! (fsync on). Measures etcd's CPU and write rate at steady state, then the time from a
//! settings write until every instance's presence says it applied it — what
//! `substation set --wait` waits for.
//!
//! Run: `cargo run --release --example fleet_scale -- --instances 1000 --steady 30 --writes 30`
//! (quick mode in `scripts/test.sh`: `--instances 50 --steady 3 --writes 5`). It fails if
//! an instance never confirms a write.

#[path = "../tests/etcd/support.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use substation::live::etcd::{EtcdSource, Presence, presence_prefix};
use substation::settings::PolicySettings;
use substation::{BoxError, Substation};

const PREFIX: &str = "/substation/scale/";

struct Args {
    instances: usize,
    steady: u64,
    writes: usize,
    /// `false`: the same fleet without presence (to tell its share of etcd's load).
    announce: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        instances: 1000,
        steady: 30,
        writes: 30,
        announce: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--instances" => a.instances = value.parse()?,
            "--steady" => a.steady = value.parse()?,
            "--writes" => a.writes = value.parse()?,
            "--announce" => a.announce = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(a)
}

/// The pid of the etcd serving `endpoint` (found by its command line).
fn etcd_pid(endpoint: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("etcd") && cmd.contains(&format!("--listen-client-urls={endpoint}")) {
            return Some(pid);
        }
    }
    None
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let a = args()?;
    let etcd = support::Etcd::start_with(support::EtcdOptions {
        fsync: true,
        extra_args: vec!["--max-txn-ops=10000".into()],
        ..Default::default()
    })
    .await;
    let endpoint = etcd.endpoint();
    let pid = etcd_pid(&endpoint).ok_or("etcd's pid not found")?;
    let mut client = etcd.client().await;
    let doing = if a.announce {
        "announcing"
    } else {
        "watching (presence off)"
    };
    println!(
        "{} instances {doing} on one etcd ({endpoint}, fsync on)",
        a.instances
    );

    let started = Instant::now();
    let mut fleet = Vec::with_capacity(a.instances);
    for i in 0..a.instances {
        let mut source = EtcdSource::new([endpoint.clone()], PREFIX);
        if a.announce {
            source = source.announce_as(format!("sim-{i:04}"));
        }
        let sub = Substation::builder()
            .policy("payments", PolicySettings::default())
            .policy("search", PolicySettings::default())
            .source(source)
            .build()?;
        let held = (sub.policy("payments"), sub.policy("search"));
        fleet.push((sub, held));
    }
    let presence = presence_prefix(PREFIX);
    let count = |c: &mut etcd_client::Client| {
        let presence = presence.clone();
        let mut c = c.clone();
        async move {
            c.get(
                presence,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map(|r| r.count() as usize)
            .unwrap_or(0)
        }
    };
    let expected = if a.announce { a.instances } else { 0 };
    while count(&mut client).await < expected {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the fleet did not announce itself within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("all announced in {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await; // the start's rewrites settle

    // Steady state: nothing changes; presence costs lease keep-alives only.
    let rev = |c: &mut etcd_client::Client| {
        let mut c = c.clone();
        async move {
            c.get("x", None)
                .await
                .map(|r| r.header().map_or(0, |h| h.revision()))
                .unwrap_or(0)
        }
    };
    let (rev0, cpu0, t0) = (rev(&mut client).await, cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(a.steady)).await;
    let (rev1, cpu1, secs) = (
        rev(&mut client).await,
        cpu_secs(pid),
        t0.elapsed().as_secs_f64(),
    );
    let writes_per_sec = (rev1 - rev0) as f64 / secs;
    println!(
        "steady state over {secs:.0} s: etcd CPU {:.1} % of one core, {writes_per_sec:.2} writes/s ({:.3} per instance per minute)",
        100.0 * (cpu1 - cpu0) / secs,
        writes_per_sec * 60.0 / a.instances as f64
    );

    if !a.announce {
        return Ok(()); // nothing announces: nothing to confirm
    }

    // Writes: time until every instance's presence reports the write's revision.
    let mut took = Vec::new();
    let mut cpu_writes = 0.0;
    for w in 0..a.writes {
        let value = format!(r#"{{"timeout": {{"ms": {}}}}}"#, 100 + w);
        let head = client
            .get(
                presence.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )
            .await?;
        let from = head.header().map_or(0, |h| h.revision()) + 1;
        let mut watch = client
            .watch(
                presence.clone(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await?;
        let cpu_before = cpu_secs(pid);
        let put_at = Instant::now();
        let written = client
            .put(format!("{PREFIX}policies/payments"), value, None)
            .await?;
        let target = written.header().map_or(0, |h| h.revision()) as u64;
        let mut applied: HashMap<String, ()> = HashMap::new();
        while applied.len() < a.instances {
            let msg = tokio::time::timeout(Duration::from_secs(30), watch.message())
                .await
                .map_err(|_| {
                    format!(
                        "write {w}: only {} of {} confirmed within 30 s",
                        applied.len(),
                        a.instances
                    )
                })??
                .ok_or("watch ended")?;
            for ev in msg.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                let p: Presence = serde_json::from_slice(kv.value())?;
                if p.revision >= target {
                    applied.insert(p.id, ());
                }
            }
        }
        took.push(put_at.elapsed());
        cpu_writes += cpu_secs(pid) - cpu_before;
        // The rate limit (one presence write per 500 ms per instance) is not measured here.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    took.sort();
    println!(
        "write → all {} confirmed: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} writes; etcd CPU per write {:.2} s",
        a.instances,
        percentile(&took, 0.5).as_secs_f64() * 1000.0,
        percentile(&took, 0.99).as_secs_f64() * 1000.0,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        took.len(),
        cpu_writes / took.len().max(1) as f64
    );

    // Dropped: every presence key is withdrawn (leases revoked).
    let dropped = Instant::now();
    drop(fleet);
    while count(&mut client).await > 0 {
        if dropped.elapsed() > Duration::from_secs(30) {
            return Err("presence keys left 30 s after the fleet was dropped".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "all withdrawn {:.2} s after the fleet was dropped",
        dropped.elapsed().as_secs_f64()
    );
    Ok(())
}
