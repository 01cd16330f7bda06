//! Fleet presence: a running registry says, in etcd, what it has applied.
//!
//! With [`EtcdSource::announce`](super::EtcdSource::announce), the source keeps one key
//! per process, `<prefix>.instances/<id>` (for the prefix `/substation/checkout/`,
//! `/substation/checkout.instances/web-1-4242`), bound to a lease of
//! [`LEASE_TTL_SECS`] that the task keeps alive. It holds a [`Presence`] document: the
//! revision applied, the health, the rejected keys with their reasons, the policy and
//! switch names the code knows with their code defaults, the breaker states of the
//! policies in use, the library version. The key is rewritten when the document
//! changes, at most once per [`MIN_INTERVAL`] (the first change after a quiet spell is
//! written at once); breaker states are looked at once a second. The key disappears
//! when the registry is dropped (the lease is revoked) or the process dies (the lease
//! expires).
//!
//! The key is *beside* the watched prefix, not under it: under it, every process would
//! receive every other process's presence writes (1,000 processes × 1,000 writes after
//! each change), and its own write would count as a change to apply.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, PutOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::{Instant, timeout};

use super::EtcdSource;
use super::driver;
use crate::BoxError;
use crate::live::source::{Scope, Sink, valid_name};

/// The presence lease's time to live: a process that dies without revoking it is gone
/// from the fleet within this many seconds.
pub const LEASE_TTL_SECS: i64 = 10;

/// The least time between two writes of one process's presence key.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// How often breaker states (which change without a settings change) are looked at.
const POLL: Duration = Duration::from_secs(1);

/// At most this many names of each kind, and rejections, are listed (a bounded key).
const MAX_LISTED: usize = 1000;

/// The prefix of the presence keys of the processes watching `prefix`:
/// `/substation/checkout/` → `/substation/checkout.instances/`.
pub fn presence_prefix(prefix: &str) -> String {
    format!("{}.instances/", prefix.trim_end_matches('/'))
}

/// What one process announces; see the [module docs](self). Serialized as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Presence {
    /// The instance id (default: host name and process id, `web-1-4242`).
    pub id: String,
    /// The substation library version it runs.
    pub version: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The application prefix it watches.
    pub prefix: String,
    /// The shared prefix it watches, if any.
    pub shared_prefix: Option<String>,
    /// The address it announces ([`EtcdSource::announce_address`]), if any.
    pub address: Option<String>,
    /// When it started announcing (milliseconds since the Unix epoch).
    pub started_ms: u64,
    /// The etcd revision of the last change it applied (its settings are current as of
    /// this revision).
    pub revision: u64,
    /// Its [`Health`](crate::live::Health), serialized.
    pub health: Value,
    /// The values it refuses, with the reasons.
    pub rejected: Vec<Rejected>,
    /// The policy names its code knows (code defaults and policies in use).
    pub policies: BTreeMap<String, KnownName>,
    /// The switch names its code knows.
    pub switches: BTreeMap<String, KnownName>,
    /// Whether some names or rejections were left out (more than 1,000 of a kind).
    pub truncated: bool,
}

/// A value an instance refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Rejected {
    /// What kind of refusal it is (`malformed` when an older instance did not say).
    #[serde(default)]
    pub kind: crate::live::RejectionKind,
    /// The layer of the refused value.
    pub layer: Scope,
    /// The key, relative to the layer's prefix.
    pub key: String,
    /// The revision of the refused value.
    pub revision: u64,
    /// Why: the field and the rule (the registry's message).
    pub error: String,
}

/// A policy or switch name an instance knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct KnownName {
    /// Its code default, in full (`None`: no code default, the library's apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A policy in use: its breaker state (`closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
}

/// The default instance id: the host name and the process id.
pub(super) fn default_id() -> String {
    crate::live::default_instance_id()
}

/// Checks an instance id (it is part of an etcd key).
pub(super) fn check_id(id: &str) -> Result<(), BoxError> {
    if valid_name(id) {
        Ok(())
    } else {
        Err(format!(
            "EtcdSource::announce_as: {id:?} is not a valid instance id (1 to 128 of A-Z a-z 0-9 _ . -)"
        )
        .into())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Announces the registry behind `sink` until it is dropped, then revokes the lease.
pub(super) async fn run(cfg: EtcdSource, sink: Sink, id: String) {
    let Some(mut published) = sink.published() else {
        return;
    };
    let me = Me {
        key: format!("{}{}", presence_prefix(&cfg.prefix), id),
        id,
        host: crate::live::host_name(),
        started_ms: now_ms(),
    };
    // The lease in force, to revoke when the registry goes (no lock across `.await`).
    let lease: Mutex<Option<(Client, i64)>> = Mutex::new(None);
    tokio::select! {
        () = announce(&cfg, &sink, &me, &mut published, &lease) => {}
        () = sink.closed() => {}
    }
    let held = lease.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((mut client, lease_id)) = held {
        match timeout(cfg.request_timeout, client.lease_revoke(lease_id)).await {
            Ok(Ok(_)) => tracing::debug!(key = %me.key, "substation: presence withdrawn"),
            _ => {
                tracing::debug!(key = %me.key, "substation: presence lease not revoked; it expires")
            }
        }
    }
}

struct Me {
    key: String,
    id: String,
    host: String,
    started_ms: u64,
}

/// Keeps the presence key written; returns when the registry is gone.
async fn announce(
    cfg: &EtcdSource,
    sink: &Sink,
    me: &Me,
    published: &mut tokio::sync::watch::Receiver<u64>,
    lease: &Mutex<Option<(Client, i64)>>,
) {
    let mut failures: u32 = 0;
    loop {
        match session(cfg, sink, me, published, lease, &mut failures).await {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(key = %me.key, error = %e, "substation: cannot announce this instance in etcd; retrying");
                } else {
                    tracing::debug!(key = %me.key, error = %e, failures, "substation: still cannot announce this instance");
                }
                let (min, max) = cfg.backoff;
                let base = min.saturating_mul(1 << failures.min(16)).min(max);
                tokio::time::sleep(base.mul_f64(0.5 + fastrand::f64())).await;
            }
        }
    }
}

/// One lease: grant it, write the document whenever it changes (rate-limited), keep
/// the lease alive. `Ok` when the registry is gone; `Err` to start again.
async fn session(
    cfg: &EtcdSource,
    sink: &Sink,
    me: &Me,
    published: &mut tokio::sync::watch::Receiver<u64>,
    lease: &Mutex<Option<(Client, i64)>>,
    failures: &mut u32,
) -> Result<(), BoxError> {
    let req = cfg.request_timeout;
    let old = lease.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((mut client, id)) = old {
        // A lease from a failed session: its key is rewritten below; revoke it if etcd
        // answers (else it expires).
        let _ = timeout(req, client.lease_revoke(id)).await;
    }
    let mut client = driver::connect(cfg).await?;
    let granted = timeout(req, client.lease_grant(LEASE_TTL_SECS, None))
        .await
        .map_err(|_| "granting the presence lease timed out")??;
    let lease_id = granted.id();
    *lease.lock().unwrap_or_else(PoisonError::into_inner) = Some((client.clone(), lease_id));
    let (mut keeper, mut answers) = timeout(req, client.lease_keep_alive(lease_id))
        .await
        .map_err(|_| "keeping the presence lease alive timed out")??;
    let renew_every = Duration::from_secs(LEASE_TTL_SECS as u64 / 3);
    let mut renew_at = Instant::now() + renew_every;
    let mut written: Option<Presence> = None;
    let mut last_put: Option<Instant> = None;
    loop {
        let Some(doc) = document(cfg, sink, me) else {
            return Ok(());
        };
        if written.as_ref() != Some(&doc) {
            if let Some(at) = last_put
                && at.elapsed() < MIN_INTERVAL
            {
                tokio::time::sleep_until(at + MIN_INTERVAL).await;
                continue; // what is in force by now
            }
            let bytes = serde_json::to_vec(&doc)?;
            let opts = PutOptions::new().with_lease(lease_id);
            timeout(req, client.put(me.key.as_str(), bytes, Some(opts)))
                .await
                .map_err(|_| "writing the presence key timed out")??;
            if *failures > 0 {
                tracing::info!(key = %me.key, "substation: instance announced again");
                *failures = 0;
            }
            last_put = Some(Instant::now());
            written = Some(doc);
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep(POLL) => {}
            () = tokio::time::sleep_until(renew_at) => {
                timeout(req, keeper.keep_alive())
                    .await
                    .map_err(|_| "renewing the presence lease timed out")??;
                let answer = timeout(req, answers.message())
                    .await
                    .map_err(|_| "renewing the presence lease timed out")??
                    .ok_or("the presence lease's keep-alive stream ended")?;
                if answer.ttl() <= 0 {
                    return Err("the presence lease expired".into());
                }
                renew_at = Instant::now() + renew_every;
            }
        }
    }
}

/// The document in force; `None` once the registry is gone.
fn document(cfg: &EtcdSource, sink: &Sink, me: &Me) -> Option<Presence> {
    let (snapshot, known) = sink.state()?;
    let mut truncated = false;
    let mut rejected = Vec::new();
    for r in snapshot.rejected() {
        if rejected.len() == MAX_LISTED {
            truncated = true;
            break;
        }
        rejected.push(Rejected {
            kind: r.kind,
            layer: r.layer,
            key: r.key.chars().take(256).collect(),
            revision: r.revision,
            error: r.error.to_string(),
        });
    }
    let breakers: BTreeMap<_, _> = known.breakers.into_iter().collect();
    let mut listed = |names: Vec<(String, Option<Value>)>, with_breakers: bool| {
        truncated |= names.len() > MAX_LISTED;
        names
            .into_iter()
            .take(MAX_LISTED)
            .map(|(name, default)| {
                let breaker = with_breakers
                    .then(|| breakers.get(&name).map(|s| (*s).to_owned()))
                    .flatten();
                (name, KnownName { default, breaker })
            })
            .collect::<BTreeMap<_, _>>()
    };
    let policies = listed(known.policies, true);
    let switches = listed(known.switches, false);
    Some(Presence {
        id: me.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: me.host.clone(),
        pid: std::process::id(),
        prefix: cfg.prefix.clone(),
        shared_prefix: cfg.shared_prefix.clone(),
        address: cfg.announce_address.clone(),
        started_ms: me.started_ms,
        revision: snapshot.revision(),
        health: serde_json::to_value(snapshot.health()).unwrap_or(Value::Null),
        rejected,
        policies,
        switches,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_keys_sit_beside_the_watched_prefix() {
        assert_eq!(
            presence_prefix("/substation/checkout/"),
            "/substation/checkout.instances/"
        );
        assert!(!presence_prefix("/a/b/").starts_with("/a/b/"));
    }

    #[test]
    fn default_ids_are_valid_names() {
        let id = default_id();
        assert!(check_id(&id).is_ok(), "{id}");
        assert!(id.ends_with(&std::process::id().to_string()));
        assert!(check_id("bad/id").is_err());
    }
}
