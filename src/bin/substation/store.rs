//! etcd for the CLI: connecting, reading one key's layers, compare-and-swap writes,
//! the fleet's presence documents, and etcd's errors put in words with an exit code.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use substation::live::etcd::{Presence, presence_prefix};
use substation::live::{Key, Scope};

use crate::{Exit, Failure, Global};

/// The connection and what every command needs to know about where settings live.
pub(crate) struct Store {
    pub(crate) client: Client,
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) shared_prefix: Option<String>,
    pub(crate) request_timeout: Duration,
}

/// One stored value.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
}

/// Both layers of one key, read at one revision.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layers {
    pub(crate) revision: i64,
    pub(crate) app: Option<Stored>,
    pub(crate) shared: Option<Stored>,
}

impl Layers {
    pub(crate) fn of(&self, layer: Scope) -> Option<&Stored> {
        match layer {
            Scope::App => self.app.as_ref(),
            _ => self.shared.as_ref(),
        }
    }
}

fn normalize(prefix: &str) -> String {
    let mut p = prefix.to_owned();
    if !p.ends_with('/') {
        p.push('/');
    }
    p
}

/// An etcd error as the operator should read it, with its exit code.
pub(crate) fn etcd_error(endpoints: &[String], what: &str, e: etcd_client::Error) -> Failure {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("authentication failed") || lower.contains("invalid auth token") {
        return Failure::new(
            Exit::Unreachable,
            format!("etcd refused the credentials ({what}): {text}; check --user and --password"),
        );
    }
    if lower.contains("permission denied") {
        return Failure::new(
            Exit::Refused,
            format!("etcd refused {what}: {text}; the user needs read/write access to the prefix"),
        );
    }
    if lower.contains("user name is empty") || lower.contains("authentication is not enabled") {
        return Failure::new(
            Exit::Unreachable,
            format!("etcd: {text} ({what}); check --user"),
        );
    }
    Failure::new(
        Exit::Unreachable,
        format!(
            "cannot reach etcd at {} ({what}): {}; check --endpoints and that etcd is running",
            endpoints.join(","),
            one_line(&text)
        ),
    )
}

/// The cause in a few words: tonic's errors nest the useful part deep inside.
fn one_line(s: &str) -> String {
    let lower = s.to_lowercase();
    for (needle, said) in [
        ("connection refused", "connection refused"),
        ("no leader", "etcd has no leader (quorum lost?)"),
        ("dns error", "the host name does not resolve"),
        (
            "invalid peer certificate",
            "the server's certificate is not trusted (--cacert)",
        ),
        (
            "certificate",
            "TLS handshake failed (check --cacert, --cert, --key)",
        ),
        (
            "handshake",
            "TLS handshake failed (does the endpoint speak TLS? check --cacert, --cert, --key)",
        ),
        ("timed out", "timed out"),
        ("deadline", "timed out"),
        ("broken pipe", "connection lost"),
        ("connection reset", "connection reset"),
    ] {
        if lower.contains(needle) {
            return said.to_owned();
        }
    }
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    one.chars().take(200).collect()
}

fn timed_out(endpoints: &[String], what: &str) -> Failure {
    Failure::new(
        Exit::Unreachable,
        format!(
            "etcd at {} did not answer ({what}) in time; check --endpoints and that etcd is running",
            endpoints.join(",")
        ),
    )
}

impl Store {
    pub(crate) async fn connect(g: &Global) -> Result<Store, Failure> {
        let endpoints: Vec<String> = g
            .endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(Failure::new(
                Exit::Refused,
                "no etcd endpoint: give --endpoints",
            ));
        }
        let request_timeout = Duration::from_millis(g.request_timeout_ms.max(1));
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(request_timeout)
            .with_timeout(request_timeout)
            .with_require_leader(true);
        if let Some(user) = &g.user {
            let password = g.password.clone().unwrap_or_default();
            opts = opts.with_user(user.clone(), password);
        }
        if g.cacert.is_some() || g.cert.is_some() {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|e| {
                    Failure::new(Exit::Refused, format!("cannot read {}: {e}", p.display()))
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &g.cacert {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let Some(domain) = &g.tls_domain {
                tls = tls.domain_name(domain);
            }
            match (&g.cert, &g.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(Failure::new(Exit::Refused, "--cert and --key go together"));
                }
            }
            opts = opts.with_tls(tls);
        }
        let connecting = Client::connect(endpoints.clone(), Some(opts));
        let client = match tokio::time::timeout(request_timeout, connecting).await {
            Err(_) => return Err(timed_out(&endpoints, "connecting")),
            Ok(Err(e)) => return Err(etcd_error(&endpoints, "connecting", e)),
            Ok(Ok(c)) => c,
        };
        Ok(Store {
            client,
            endpoints,
            prefix: normalize(&g.prefix),
            shared_prefix: g.shared_prefix.as_deref().map(normalize),
            request_timeout,
        })
    }

    /// Runs one request with the request timeout and the error mapping.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.request_timeout, f).await {
            Err(_) => Err(timed_out(&self.endpoints, what)),
            Ok(Err(e)) => Err(etcd_error(&self.endpoints, what, e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// The prefix of `layer`; the shared one must have been given.
    pub(crate) fn prefix_of(&self, layer: Scope) -> Result<&str, Failure> {
        match layer {
            Scope::App => Ok(&self.prefix),
            _ => self.shared_prefix.as_deref().ok_or_else(|| {
                Failure::new(
                    Exit::Refused,
                    "--shared needs --shared-prefix (the fleet's prefix)",
                )
            }),
        }
    }

    pub(crate) fn full_key(&self, layer: Scope, key: &Key) -> Result<String, Failure> {
        Ok(format!("{}{key}", self.prefix_of(layer)?))
    }

    /// Both layers of `key` at one revision.
    pub(crate) async fn layers(&self, key: &Key) -> Result<Layers, Failure> {
        let mut kv = self.client.kv_client();
        let app_key = self.full_key(Scope::App, key)?;
        let resp = self.call("reading", kv.get(app_key, None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let stored = |kvs: &[etcd_client::KeyValue]| {
            kvs.first().map(|kv| Stored {
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            })
        };
        let app = stored(resp.kvs());
        let shared = match &self.shared_prefix {
            Some(p) => {
                let opts = GetOptions::new().with_revision(revision);
                let resp = self
                    .call("reading", kv.get(format!("{p}{key}"), Some(opts)))
                    .await?;
                stored(resp.kvs())
            }
            None => None,
        };
        Ok(Layers {
            revision,
            app,
            shared,
        })
    }

    /// Every key under `prefix` (relative) with its value and mod revision.
    pub(crate) async fn list(&self, prefix: &str) -> Result<(i64, Vec<(String, Stored)>), Failure> {
        self.list_at(prefix, None).await
    }

    /// [`Store::list`] at `revision` (`None`: the latest); and the revision read.
    pub(crate) async fn list_at(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> Result<(i64, Vec<(String, Stored)>), Failure> {
        let mut kv = self.client.kv_client();
        let mut opts = GetOptions::new().with_prefix();
        if let Some(r) = revision {
            opts = opts.with_revision(r);
        }
        let resp = self.call("listing", kv.get(prefix, Some(opts))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let out = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
                (
                    rel,
                    Stored {
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    },
                )
            })
            .collect();
        Ok((revision, out))
    }

    /// The value of `full` at `revision`.
    pub(crate) async fn get_at(
        &self,
        full: &str,
        revision: i64,
    ) -> Result<Option<Stored>, Failure> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new().with_revision(revision);
        let resp = self.call("reading", kv.get(full, Some(opts))).await?;
        Ok(resp.kvs().first().map(|kv| Stored {
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// The presence documents of the instances watching this prefix, by id, and the
    /// revision they were read at. Documents that do not parse are skipped.
    pub(crate) async fn instances(&self) -> Result<(i64, BTreeMap<String, Presence>), Failure> {
        let (revision, kvs) = self.list(&presence_prefix(&self.prefix)).await?;
        let mut out = BTreeMap::new();
        for (id, stored) in kvs {
            if let Ok(p) = serde_json::from_slice::<Presence>(&stored.value) {
                out.insert(id, p);
            }
        }
        Ok((revision, out))
    }

    /// Writes (or deletes, with `None`) `full` if its mod revision is still `expected`
    /// (0: absent). `Ok(Ok(revision))` when written; `Ok(Err(now))` on a conflict, with
    /// what is stored now.
    pub(crate) async fn cas(
        &self,
        full: &str,
        expected: i64,
        value: Option<&[u8]>,
    ) -> Result<Result<i64, Option<Stored>>, Failure> {
        let op = match value {
            Some(v) => TxnOp::put(full, v, None),
            None => TxnOp::delete(full, None),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(full, CompareOp::Equal, expected)])
            .and_then([op])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.client.kv_client();
        let resp = self.call("writing", kv.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Ok(revision));
        }
        let now = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| Stored {
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            }),
            _ => None,
        });
        Ok(Err(now))
    }
}
