//! Settings from etcd, hot-reloaded by a watch that never loses a write.
//!
//! # Keys
//! Under an application-chosen prefix, one key per policy (and, later, per switch):
//!
//! ```text
//! <prefix>/policies/<name>   a PolicySettings JSON object, e.g. {"timeout": {"ms": 250}}
//! ```
//!
//! An optional shared prefix holds fleet-wide defaults with the same layout; the
//! application's prefix wins, field by field (see [`crate::live`]). Values are plain
//! JSON that an operator writes with `etcdctl put`.
//!
//! # The watch
//! 1. List both prefixes (linearizable) at one revision R; apply as one snapshot.
//! 2. Watch both from R + 1, on one stream. Apply the events of each revision as one
//!    snapshot swap, in order; a layer's revision advances only over what was seen.
//! 3. On a stream error or end: mark the settings stale, back off (jittered), list
//!    again and watch from there (the registry diffs the listing: only what changed
//!    changes). Resuming from the last applied revision + 1 would be cheaper, but an
//!    etcd wiped or restored, then written past that revision while the watcher was
//!    away, would be followed from the middle of a new history.
//! 4. Watch cancelled because R + 1 was compacted: list again (the registry diffs).
//! 5. A revision below the last applied one (etcd restored or wiped): list again, and
//!    log it loudly. A listing below the highest revision applied, or an answer for one
//!    layer's watch below what that layer applied, is such a rewind; the two watches of
//!    a stream are not ordered with each other (after a pause, the shared watch may
//!    report a revision the application's watch has passed), so they are not compared.
//!
//! # Noticing a dead etcd
//! Every request and watch creation has its own timeout (etcd may accept TCP and not
//! answer). An established watch is checked with etcd's **watch progress requests**
//! (etcd ≥ 3.4): after [`EtcdSource::keep_alive`]'s interval (1 s) without a message,
//! the watch asks for one; if nothing arrives within its timeout (1.5 s), the watch
//! is declared dead. A frozen server is so noticed within ≈ 2.5 s, and an idle watch
//! costs etcd one small answer a second. There is **no HTTP/2 ping**: stock etcd
//! refuses pings more often than every 5 s (`--grpc-keepalive-min-time`), and pings
//! while no stream is open at all, with `GOAWAY ENHANCE_YOUR_CALM too_many_pings`,
//! which tears the watch down and costs a full listing each time. `require-leader`
//! turns a lost quorum into an error instead of silence; every failure is retried, so
//! a dead member among several endpoints costs retries, not the watch.
//!
//! # Authentication and TLS
//! With [`EtcdSource::user`], a token that etcd no longer accepts (expired, or etcd
//! restarted) is renewed and the request or watch retried at once: no failure, no
//! stale settings. TLS material is checked when the source starts: a CA or a client
//! key that is not usable PEM, a key that does not belong to its certificate, or an
//! `http://` endpoint with TLS make [`Builder::build`](crate::live::Builder::build)
//! fail with what is wrong. A handshake that fails says why (the server's certificate
//! not signed by the CA given, a server name that does not match, a client certificate
//! refused) in the log and in [`Health::Stale`](crate::live::Health::Stale).
//!
//! # Start and outages
//! [`Source::start`] never blocks: it does no I/O. With a [`EtcdSource::snapshot_file`],
//! the last known good settings are read from disk by the source's task (off the
//! caller, in a blocking thread, within [`EtcdSource::connect_timeout`]; anything but a
//! regular file is refused unopened, so a FIFO or a device at that path cannot hang
//! it), applied before anything from etcd, served until etcd answers, and rewritten
//! atomically after changes. The first load has a deadline
//! ([`EtcdSource::connect_timeout`], 500 ms by default) after which
//! [`Substation::initialized`](crate::Substation::initialized) resolves anyway (with
//! the disk snapshot in force if there is one), while the source keeps connecting in
//! the background. [`Health`](crate::live::Health) tells the application which of these it is in.
//!
//! ```no_run
//! use std::time::Duration;
//! use substation::{Substation, live::etcd::EtcdSource};
//!
//! # async fn run() -> Result<(), substation::BoxError> {
//! let substation = Substation::builder()
//!     .source(
//!         EtcdSource::new(["http://127.0.0.1:2379"], "/substation/checkout")
//!             .shared_prefix("/substation/shared")
//!             .snapshot_file("/var/lib/checkout/substation.snapshot")
//!             .connect_timeout(Duration::from_millis(500)),
//!     )
//!     .build()?;
//! substation.initialized().await; // at most ≈ 500 ms
//! let policy = substation.policy("payments");
//! # Ok(()) }
//! ```

mod disk;
mod driver;
pub mod presence;
mod store;
mod tls;

pub use self::presence::{Presence, presence_prefix};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::source::{Scope, Sink, Source};
use crate::BoxError;

/// A [`Source`] that reads and watches settings in etcd; see the [module docs](self).
#[derive(Clone)]
pub struct EtcdSource {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) shared_prefix: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The liveness check of an established watch: (interval, timeout).
    pub(crate) keep_alive: (Duration, Duration),
    pub(crate) backoff: (Duration, Duration),
    pub(crate) user: Option<(String, String)>,
    /// The CA (PEM) and the server name to expect.
    pub(crate) tls_ca: Option<(Vec<u8>, Option<String>)>,
    /// The client certificate chain and key (PEM).
    pub(crate) tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) snapshot_file: Option<PathBuf>,
    /// The instance id to announce under, if the process announces itself.
    pub(crate) announce: Option<String>,
    /// The address the process announces (its status page, say), if any.
    pub(crate) announce_address: Option<String>,
}

impl fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSource")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("shared_prefix", &self.shared_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls_ca.is_some())
            .field("tls_identity", &self.tls_identity.is_some())
            .field("snapshot_file", &self.snapshot_file)
            .field("announce", &self.announce)
            .finish_non_exhaustive()
    }
}

fn normalize(prefix: impl Into<String>) -> String {
    let mut p = prefix.into();
    if !p.ends_with('/') {
        p.push('/');
    }
    p
}

impl EtcdSource {
    /// Watches `<prefix>/…` on `endpoints` (e.g. `http://10.0.0.1:2379`; `https://` with
    /// [`EtcdSource::tls`]).
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        EtcdSource {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: normalize(prefix),
            shared_prefix: None,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            keep_alive: (Duration::from_secs(1), Duration::from_millis(1500)),
            backoff: (Duration::from_millis(25), Duration::from_secs(2)),
            user: None,
            tls_ca: None,
            tls_identity: None,
            snapshot_file: None,
            announce: None,
            announce_address: None,
        }
    }

    /// Also watches fleet-wide defaults under `prefix` ([`Scope::Shared`]).
    pub fn shared_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.shared_prefix = Some(normalize(prefix));
        self
    }

    /// The deadline of the first load (default 500 ms): past it,
    /// [`Substation::initialized`](crate::Substation::initialized) resolves with the disk
    /// snapshot or the code defaults in force, and the source keeps trying.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The timeout of each request and of each watch creation (default 2 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How an established watch tells a quiet etcd from a dead one (default 1 s and
    /// 1.5 s): after `interval` without a message, the watch sends etcd a watch
    /// progress request; if nothing arrives within `timeout` of it, the watch is
    /// declared dead (settings stale, list again). A frozen server or a silently lost
    /// connection is noticed within about `interval + timeout` (2.5 s by default).
    ///
    /// These are not HTTP/2 pings, and the source sends none: stock etcd allows a
    /// ping at most every 5 s (`--grpc-keepalive-min-time`) and none while no stream is
    /// open, and answers more with `GOAWAY ENHANCE_YOUR_CALM too_many_pings`, which
    /// ends the watch. A progress request is an ordinary message on the watch stream
    /// that etcd (3.4 and later) answers with its current revision; one a second per
    /// watcher is negligible work for etcd. `timeout` must exceed the time the largest
    /// watch response takes to arrive (a catch-up batch of large values over a slow
    /// link), which counts as silence.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = (interval, timeout);
        self
    }

    /// Bounds of the jittered exponential backoff between retries (default 25 ms to 2 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// Authenticates as `user` (etcd's user/password authentication).
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Connects with TLS: the CA to trust (PEM), and the server name to expect (default:
    /// the endpoint's host). Endpoints must then be `https://`. The PEM is checked when
    /// the source starts: [`Builder::build`](crate::live::Builder::build) fails if it
    /// holds no usable certificate.
    pub fn tls(mut self, ca_pem: impl AsRef<[u8]>, domain: Option<&str>) -> Self {
        self.tls_ca = Some((ca_pem.as_ref().to_vec(), domain.map(str::to_owned)));
        self
    }

    /// Presents a client certificate (PEM certificate chain and key) over TLS; needs
    /// [`EtcdSource::tls`]. Checked when the source starts: a key that does not parse,
    /// or that does not belong to the certificate, fails
    /// [`Builder::build`](crate::live::Builder::build).
    pub fn tls_identity(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        self.tls_identity = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// Keeps the last known good settings in `path` (written atomically after changes)
    /// and starts from it when etcd cannot be reached.
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// Announces this process to the fleet (see [`presence`]): a key
    /// `<prefix>.instances/<host>-<pid>`, bound to a 10 s lease kept alive, holding the
    /// revision applied, the health, the rejected values, the names the code knows and
    /// the breaker states. What `substation set --wait` and `substation status` read.
    /// Gone when the registry is dropped (the lease is revoked) or the process dies.
    pub fn announce(mut self) -> Self {
        self.announce = Some(presence::default_id());
        self
    }

    /// Announces this process under `id` (1 to 128 of `A-Z a-z 0-9 _ . -`; checked by
    /// [`Builder::build`](crate::live::Builder::build)), like [`EtcdSource::announce`].
    pub fn announce_as(mut self, id: impl Into<String>) -> Self {
        self.announce = Some(id.into());
        self
    }

    /// An address to include in this process's presence (e.g. its dashboard,
    /// `http://10.0.0.7:9090/substation/`), shown by `substation status`.
    pub fn announce_address(mut self, address: impl Into<String>) -> Self {
        self.announce_address = Some(address.into());
        self
    }

    pub(crate) fn prefix_of(&self, layer: Scope) -> Option<&str> {
        match layer {
            Scope::App => Some(&self.prefix),
            Scope::Shared => self.shared_prefix.as_deref(),
        }
    }
}

impl Source for EtcdSource {
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "EtcdSource must be started inside a tokio runtime (build the Substation in async code)")?;
        if self.endpoints.is_empty() {
            return Err("EtcdSource needs at least one endpoint".into());
        }
        tls::validate(&self)?;
        if let Some(id) = &self.announce {
            presence::check_id(id)?;
        }
        // The disk snapshot is read by the driver, off the caller: a hung file system
        // must not block `build`. The deadline waits for that read (itself bounded by
        // the same deadline), so that `initialized` never resolves before it.
        let deadline = self.connect_timeout;
        let (disk_done, disk_read) = tokio::sync::oneshot::channel();
        let timer_sink = sink.clone();
        runtime.spawn(async move {
            tokio::time::sleep(deadline).await;
            let _ = disk_read.await;
            timer_sink.initialized();
        });
        if let Some(id) = self.announce.clone() {
            sink.set_instance(&id);
            runtime.spawn(presence::run((*self).clone(), sink.clone(), id));
        }
        // Experiments write their runs' records beside their values.
        let layers: &[Scope] = if self.shared_prefix.is_some() {
            &[Scope::App, Scope::Shared]
        } else {
            &[Scope::App]
        };
        sink.set_store(layers, store::EtcdStore::new((*self).clone()))?;
        runtime.spawn(driver::Driver::new(*self, sink).run(disk_done));
        Ok(())
    }
}
