//! What the fleet says: presence documents, waiting for a write to be applied, status,
//! and following changes; and a key's history from etcd's watch.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use serde_json::{Value, json};
use substation::live::etcd::{Presence, presence_prefix};
use substation::live::{Key, RejectionKind, Scope};
use tokio::time::{Instant, timeout};

use crate::commands::show;
use crate::store::Store;
use crate::{Exit, Failure, Global, Output, Report};

/// The announced instances of the application prefix.
pub(crate) struct Instances {
    /// Where they announce (`<prefix>.instances/`).
    pub(crate) prefix: String,
    /// The revision they were read at.
    pub(crate) revision: i64,
    /// Each one's document, by id.
    pub(crate) all: BTreeMap<String, Presence>,
}

pub(crate) async fn instances(store: &Store) -> Result<Instances, Failure> {
    let (revision, all) = store.instances().await?;
    Ok(Instances {
        prefix: presence_prefix(&store.prefix),
        revision,
        all,
    })
}

/// Where one instance stands with a write at `revision`.
#[derive(Clone, Debug, PartialEq)]
enum Standing {
    Applied,
    Rejected(String),
    Pending,
    Gone,
}

fn standing(p: &Presence, key: &str, layer: Scope, revision: u64) -> Standing {
    if let Some(r) = p.rejected.iter().find(|r| {
        // A conflict is about a value in force since earlier, not about this write.
        r.kind != RejectionKind::Conflict
            && r.key == key
            && r.layer == layer
            && r.revision == revision
    }) {
        return Standing::Rejected(r.error.clone());
    }
    if p.revision >= revision {
        Standing::Applied
    } else {
        Standing::Pending
    }
}

async fn create_watch(
    store: &Store,
    key: String,
    opts: WatchOptions,
) -> Result<etcd_client::WatchStream, Failure> {
    let mut w = store.client.watch_client();
    let stream = store.call("watching", w.watch(key, Some(opts))).await?;
    Ok(stream)
}

/// Waits until every instance watching the written layer has applied (or refused) the
/// write at `revision`, or `secs` pass; reports who did what.
pub(crate) async fn wait(
    store: &Store,
    key: &Key,
    layer: Scope,
    revision: i64,
    secs: f64,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs.clamp(0.0, 86_400.0));
    let fleet = instances(store).await?;
    let relevant = |p: &Presence| match layer {
        Scope::App => true,
        _ => p.shared_prefix.as_deref() == store.shared_prefix.as_deref(),
    };
    let mut seen: BTreeMap<String, Option<Presence>> = fleet
        .all
        .into_iter()
        .filter(|(_, p)| relevant(p))
        .map(|(id, p)| (id, Some(p)))
        .collect();
    if seen.is_empty() {
        return Ok(Report {
            exit: Exit::Ok,
            text: format!(
                "no instance announces itself under {}: nobody to confirm the write\n",
                fleet.prefix
            ),
            json: json!({"instances": 0, "applied": [], "rejected": [], "pending": [], "converged": true}),
        });
    }
    let raw = key.to_string();
    let target = revision as u64;
    let all_settled = |seen: &BTreeMap<String, Option<Presence>>| {
        seen.values().all(|p| match p {
            Some(p) => standing(p, &raw, layer, target) != Standing::Pending,
            None => true,
        })
    };
    if !all_settled(&seen) {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(fleet.revision + 1);
        let mut stream = create_watch(store, fleet.prefix.clone(), opts).await?;
        while !all_settled(&seen) {
            let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    return Err(crate::store::etcd_error(&store.endpoints, "watching", e));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
            };
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let id = String::from_utf8_lossy(kv.key())
                    .strip_prefix(&fleet.prefix)
                    .unwrap_or_default()
                    .to_owned();
                match ev.event_type() {
                    EventType::Put => {
                        if let Ok(p) = serde_json::from_slice::<Presence>(kv.value())
                            && relevant(&p)
                        {
                            seen.insert(id, Some(p));
                        }
                    }
                    EventType::Delete => {
                        if seen.contains_key(&id) {
                            seen.insert(id, None);
                        }
                    }
                }
            }
        }
    }
    let took = started.elapsed();
    let (mut applied, mut rejected, mut pending, mut gone) = (vec![], vec![], vec![], vec![]);
    // Applied, and so put a stored value above it in conflict (left out there).
    let mut conflicts = vec![];
    for (id, p) in seen.iter().filter_map(|(id, p)| Some((id, p.as_ref()?))) {
        for r in &p.rejected {
            if r.kind == RejectionKind::Conflict && r.key == raw && r.revision == target {
                conflicts.push(json!({"id": id, "layer": r.layer, "error": r.error}));
            }
        }
    }
    for (id, p) in &seen {
        let s = match p {
            Some(p) => standing(p, &raw, layer, target),
            None => Standing::Gone,
        };
        match s {
            Standing::Applied => applied.push(json!({"id": id})),
            Standing::Rejected(e) => rejected.push(json!({"id": id, "error": e})),
            Standing::Pending => {
                let p = p.as_ref().expect("pending instances have a document");
                pending.push(json!({"id": id, "revision": p.revision, "health": p.health}))
            }
            Standing::Gone => gone.push(json!({"id": id})),
        }
    }
    let converged = rejected.is_empty() && pending.is_empty();
    let mut text = format!(
        "fleet: {}/{} applied revision {revision} in {} ms",
        applied.len(),
        seen.len(),
        took.as_millis()
    );
    text += if converged {
        "\n"
    } else {
        " — NOT CONVERGED\n"
    };
    for r in &rejected {
        text += &format!(
            "  rejected   {}: {}\n",
            r["id"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        );
    }
    for c in &conflicts {
        text += &format!(
            "  conflict   {}: the {} value of {raw} is left out: {}\n",
            c["id"].as_str().unwrap_or(""),
            c["layer"].as_str().unwrap_or(""),
            c["error"].as_str().unwrap_or("")
        );
    }
    for p in &pending {
        text += &format!(
            "  no answer  {}: still at revision {} ({}) after {secs} s — frozen, partitioned or overloaded?\n",
            p["id"].as_str().unwrap_or(""),
            p["revision"],
            p["health"]["state"].as_str().unwrap_or("?")
        );
    }
    for g in &gone {
        text += &format!(
            "  gone       {}: withdrew while waiting\n",
            g["id"].as_str().unwrap_or("")
        );
    }
    if seen.len() <= 20 || !converged {
        for a in &applied {
            text += &format!("  applied    {}\n", a["id"].as_str().unwrap_or(""));
        }
    }
    Ok(Report {
        exit: if converged {
            Exit::Ok
        } else {
            Exit::NotConverged
        },
        text,
        json: json!({"instances": seen.len(), "applied": applied, "rejected": rejected,
            "pending": pending, "gone": gone, "conflicts": conflicts, "converged": converged,
            "took_ms": took.as_millis() as u64}),
    })
}

/// One change of one key.
pub(crate) struct Event {
    pub(crate) revision: i64,
    /// `None`: deleted.
    pub(crate) value: Option<Vec<u8>>,
}

/// A key's changes as far back as etcd keeps them.
pub(crate) struct History {
    /// The revision the history reaches (etcd's, when read).
    pub(crate) revision: i64,
    /// Where history starts, if etcd compacted older revisions.
    pub(crate) compacted: Option<i64>,
    pub(crate) events: Vec<Event>,
}

/// Replays `full`'s events from the oldest revision etcd keeps, up to now: a watch from
/// revision 1 (or from the compaction revision, if etcd says so). etcd 3.4 answers a
/// progress request at once, not after the replay, so the end of the replay is told by
/// the key's current mod revision (the last event up to now) when it exists; for a
/// deleted key, by a batch whose header reaches the read revision (a catch-up batch
/// holds every event up to it), or by a quiet half second.
pub(crate) async fn history(store: &Store, full: &str) -> Result<History, Failure> {
    let mut kv = store.client.kv_client();
    let head = store.call("reading", kv.get(full, None)).await?;
    let now = head.header().map_or(0, |h| h.revision());
    let last = head.kvs().first().map(etcd_client::KeyValue::mod_revision);
    let mut start = 1;
    let mut compacted = None;
    'again: loop {
        let opts = WatchOptions::new().with_start_revision(start);
        let mut stream = create_watch(store, full.to_owned(), opts).await?;
        let mut events = Vec::new();
        let deadline = Instant::now() + store.request_timeout * 4;
        loop {
            let quiet = if last.is_some() {
                store.request_timeout
            } else {
                Duration::from_millis(500)
            };
            let msg: WatchResponse = match timeout(quiet, stream.message()).await {
                Err(_) if last.is_none() => break,
                Err(_) => {
                    return Err(Failure::new(
                        Exit::Unreachable,
                        "reading the history from etcd timed out",
                    ));
                }
                Ok(Err(e)) => {
                    return Err(crate::store::etcd_error(
                        &store.endpoints,
                        "reading the history",
                        e,
                    ));
                }
                Ok(Ok(None)) => {
                    return Err(Failure::new(
                        Exit::Unreachable,
                        "etcd ended the history watch",
                    ));
                }
                Ok(Ok(Some(m))) => m,
            };
            if msg.canceled() {
                if msg.compact_revision() > 0 {
                    start = msg.compact_revision();
                    compacted = Some(start);
                    continue 'again;
                }
                return Err(Failure::new(
                    Exit::Unreachable,
                    format!("etcd cancelled the history watch: {}", msg.cancel_reason()),
                ));
            }
            let mut done = false;
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                if kv.mod_revision() > now {
                    done = true;
                    continue;
                }
                done |= Some(kv.mod_revision()) == last;
                events.push(Event {
                    revision: kv.mod_revision(),
                    value: match ev.event_type() {
                        EventType::Put => Some(kv.value().to_vec()),
                        EventType::Delete => None,
                    },
                });
            }
            let reached = msg.header().map_or(0, |h| h.revision());
            if last.is_none() && !msg.events().is_empty() && reached >= now {
                done = true;
            }
            if done || Instant::now() > deadline {
                break;
            }
        }
        return Ok(History {
            revision: now,
            compacted,
            events,
        });
    }
}

pub(crate) async fn status(g: &Global) -> Result<Report, Failure> {
    let store = Store::connect(g).await?;
    let fleet = instances(&store).await?;
    let (_, app) = store.list(&store.prefix).await?;
    let shared = match &store.shared_prefix {
        Some(p) => store.list(p).await?.1,
        None => Vec::new(),
    };
    let latest = app
        .iter()
        .chain(shared.iter())
        .map(|(_, s)| s.mod_revision)
        .max()
        .unwrap_or(0);
    let stored: std::collections::BTreeSet<String> = app
        .iter()
        .chain(shared.iter())
        .map(|(k, _)| k.clone())
        .collect();
    let mut text = format!(
        "{} — {} instance(s); etcd revision {}, last settings change at {latest}\n",
        store.prefix,
        fleet.all.len(),
        fleet.revision
    );
    let mut list = Vec::new();
    let mut unstored = std::collections::BTreeSet::new();
    for (id, p) in &fleet.all {
        let state = p.health["state"].as_str().unwrap_or("?");
        let behind = (p.revision as i64) < latest;
        text += &format!(
            "  {id:<28} rev {:<8}{} {state:<13} v{}",
            p.revision,
            if behind { " BEHIND" } else { "       " },
            p.version
        );
        let breakers: Vec<String> = p
            .policies
            .iter()
            .filter_map(|(n, k)| {
                k.breaker
                    .as_deref()
                    .filter(|b| *b != "closed")
                    .map(|b| format!("{n}={b}"))
            })
            .collect();
        if !breakers.is_empty() {
            text += &format!("  breakers: {}", breakers.join(" "));
        }
        text.push('\n');
        if let Some(address) = &p.address {
            text += &format!("      at {}\n", address.escape_debug());
        }
        if let Some(reason) = p.health["reason"].as_str() {
            text += &format!("      stale: {reason}\n");
        }
        for r in &p.rejected {
            text += &format!(
                "      rejects {} (rev {}): {}\n",
                r.key.escape_debug(),
                r.revision,
                r.error
            );
        }
        for n in p.policies.keys() {
            let k = format!("policies/{n}");
            if !stored.contains(&k) {
                unstored.insert(k);
            }
        }
        for n in p.switches.keys() {
            let k = format!("switches/{n}");
            if !stored.contains(&k) {
                unstored.insert(k);
            }
        }
        list.push(json!({"id": id, "revision": p.revision, "behind": behind, "health": p.health,
            "rejected": p.rejected, "breakers": breakers, "version": p.version, "host": p.host, "pid": p.pid, "address": p.address}));
    }
    if fleet.all.is_empty() {
        text += &format!("  no instance announces itself under {}\n", fleet.prefix);
    }
    if !unstored.is_empty() {
        text += &format!(
            "  known names with no stored value (code defaults in force): {}\n",
            unstored.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: json!({"prefix": store.prefix, "revision": fleet.revision, "latest_change": latest,
            "instances": list, "unstored": unstored}),
    })
}

pub(crate) async fn watch(
    g: &Global,
    only: Option<&str>,
    count: Option<usize>,
) -> Result<Report, Failure> {
    let store = Store::connect(g).await?;
    let pp = presence_prefix(&store.prefix);
    let mut w = store.client.watch_client();
    let rel = only.unwrap_or("");
    let mut watched = vec![(format!("{}{rel}", store.prefix), "app")];
    if let Some(s) = &store.shared_prefix {
        watched.push((format!("{s}{rel}"), "shared"));
    }
    if only.is_none() {
        watched.push((pp.clone(), "instance"));
    }
    let (first, rest) = watched.split_first().expect("one prefix at least");
    let mut stream = store
        .call(
            "watching",
            w.watch(first.0.as_str(), Some(WatchOptions::new().with_prefix())),
        )
        .await?;
    for (p, _) in rest {
        store
            .call(
                "watching",
                stream.watch(p.as_str(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
    }
    if g.output == Output::Text {
        eprintln!(
            "watching {} (Ctrl-C stops)",
            watched
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut lines = 0usize;
    let mut last_rev: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        if count.is_some_and(|c| lines >= c) {
            // Every line is printed already: nothing more to say.
            return Ok(Report {
                exit: Exit::Ok,
                text: String::new(),
                json: Value::Null,
            });
        }
        let msg = match stream.message().await {
            Err(e) => return Err(crate::store::etcd_error(&store.endpoints, "watching", e)),
            Ok(None) => return Err(Failure::new(Exit::Unreachable, "etcd ended the watch")),
            Ok(Some(m)) => m,
        };
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let full = String::from_utf8_lossy(kv.key()).into_owned();
            let rev = kv.mod_revision();
            let time = now_hms();
            let (line, j) = if let Some(id) = full.strip_prefix(&pp) {
                match ev.event_type() {
                    EventType::Put => {
                        let Ok(p) = serde_json::from_slice::<Presence>(kv.value()) else {
                            continue;
                        };
                        if last_rev.insert(id.to_owned(), p.revision) == Some(p.revision)
                            && p.rejected.is_empty()
                        {
                            continue; // only breaker or health detail changed
                        }
                        let state = p.health["state"].as_str().unwrap_or("?").to_owned();
                        (
                            format!(
                                "{time} instance {id} at revision {} ({state}{})",
                                p.revision,
                                if p.rejected.is_empty() {
                                    String::new()
                                } else {
                                    format!(", {} rejected", p.rejected.len())
                                }
                            ),
                            json!({"kind": "instance", "id": id, "revision": p.revision, "health": p.health, "rejected": p.rejected}),
                        )
                    }
                    EventType::Delete => {
                        last_rev.remove(id);
                        (
                            format!("{time} instance {id} gone"),
                            json!({"kind": "instance_gone", "id": id}),
                        )
                    }
                }
            } else {
                let (layer, key) = watched
                    .iter()
                    .filter(|(_, l)| *l != "instance")
                    .find_map(|(p, l)| {
                        let base = p.strip_suffix(rel).unwrap_or(p);
                        full.strip_prefix(base).map(|k| (*l, k.to_owned()))
                    })
                    .unwrap_or(("?", full.clone()));
                match ev.event_type() {
                    EventType::Put => (
                        format!(
                            "{time} rev {rev} {layer:<6} set {} = {}",
                            key.escape_debug(),
                            show(kv.value())
                        ),
                        json!({"kind": "set", "layer": layer, "key": key, "revision": rev, "value": serde_json::from_slice::<Value>(kv.value()).ok()}),
                    ),
                    EventType::Delete => (
                        format!("{time} rev {rev} {layer:<6} del {}", key.escape_debug()),
                        json!({"kind": "del", "layer": layer, "key": key, "revision": rev}),
                    ),
                }
            };
            match g.output {
                Output::Text => crate::say(&line),
                Output::Json => crate::say(&j.to_string()),
            }
            lines += 1;
        }
    }
}

fn now_hms() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
