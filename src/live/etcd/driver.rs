//! The task that lists, watches and recovers; see the [module docs](super).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, ConnectOptions, GetOptions, KvClient, WatchClient, WatchOptions, WatchResponse,
    WatchStream,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout};

use super::disk::{self, Mirror};
use super::{EtcdSource, tls};
use crate::BoxError;
use crate::live::source::{Change, Health, Scope, Sink, Update};

const LAYERS: [Scope; 2] = [Scope::App, Scope::Shared];

/// The largest message accepted from etcd: what etcd sends at most (its gRPC send limit
/// is `math.MaxInt32`), and what its own Go client accepts. A watcher that fell behind
/// catches up in batches of up to 1,000 revisions, and a listing holds a whole prefix:
/// both pass tonic's default of 4 MiB with large values, and a watcher refusing them
/// could never catch up.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// Why a watch ended.
enum WatchEnd {
    /// List again: the watch's start was compacted, or the revision went backwards.
    Relist(&'static str),
    /// etcd refused the client's authentication token when the watch was created
    /// (expired, or etcd restarted): renew it and watch again.
    Reauthenticate,
    /// Retry after a backoff.
    Failed(BoxError),
    /// The registry is gone.
    Closed,
}

/// A client and the two services the driver uses, which accept etcd's largest messages.
struct Conn {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
}

pub(super) struct Driver {
    cfg: EtcdSource,
    sink: Sink,
    /// The last revision applied per layer (the watch resumes at +1).
    last: [u64; 2],
    /// The highest revision applied: a listing below it means etcd has lost data.
    high: u64,
    need_list: bool,
    live_once: bool,
    from_disk: bool,
    stale_since: Option<SystemTime>,
    failures: u32,
    /// Whether etcd has answered the current client since it was made.
    answered: bool,
    mirror: Arc<Mutex<Mirror>>,
    disk_dirty: Option<Arc<Notify>>,
}

impl Driver {
    pub(super) fn new(cfg: EtcdSource, sink: Sink) -> Self {
        Driver {
            cfg,
            sink,
            last: [0; 2],
            high: 0,
            need_list: true,
            live_once: false,
            from_disk: false,
            stale_since: None,
            failures: 0,
            answered: false,
            mirror: Arc::default(),
            disk_dirty: None,
        }
    }

    /// Loads the disk snapshot (then says so on `disk_done`), and lists and watches
    /// until the registry is dropped.
    pub(super) async fn run(mut self, disk_done: oneshot::Sender<()>) {
        if let Some(path) = self.cfg.snapshot_file.clone() {
            self.load_snapshot(&path).await;
            let notify = Arc::new(Notify::new());
            tokio::spawn(write_snapshots(
                path,
                self.mirror.clone(),
                notify.clone(),
                self.sink.clone(),
            ));
            self.disk_dirty = Some(notify);
        }
        let _ = disk_done.send(());
        let mut conn: Option<Conn> = None;
        let mut reauthenticated = false;
        loop {
            if self.sink.is_closed() {
                return;
            }
            let mut c = match conn.take() {
                Some(c) => c,
                None => {
                    self.answered = false;
                    match self.connect().await {
                        Ok(c) => c,
                        Err(e) => {
                            self.failed(e).await;
                            continue;
                        }
                    }
                }
            };
            if self.need_list
                && let Err(e) = self.list(&mut c).await
            {
                conn = self.keep(c);
                self.failed(e).await;
                continue;
            }
            let end = self.watch(&mut c).await;
            if !matches!(end, WatchEnd::Reauthenticate) {
                reauthenticated = false;
            }
            match end {
                WatchEnd::Relist(reason) => {
                    tracing::warn!(prefix = %self.cfg.prefix, reason, "substation: listing etcd again");
                    metrics::counter!(crate::metrics::SOURCE_RESYNCS, "reason" => reason)
                        .increment(1);
                    self.need_list = true;
                    conn = Some(c);
                }
                WatchEnd::Reauthenticate if !reauthenticated => {
                    // The watch never started: nothing was missed, and the next watch
                    // starts where this one would have. A new token, and watch again.
                    reauthenticated = true;
                    tracing::debug!(prefix = %self.cfg.prefix, "substation: etcd refused the authentication token; renewing it");
                    match timeout(self.cfg.request_timeout, c.client.refresh_token()).await {
                        Ok(Ok(())) => conn = Some(c),
                        Ok(Err(e)) => {
                            self.need_list = true;
                            conn = self.keep(c);
                            self.failed(e.into()).await;
                        }
                        Err(_) => {
                            self.need_list = true;
                            conn = self.keep(c);
                            self.failed("renewing the etcd authentication token timed out".into())
                                .await;
                        }
                    }
                }
                WatchEnd::Reauthenticate => {
                    self.need_list = true;
                    conn = self.keep(c);
                    self.failed("etcd refused a freshly renewed authentication token".into())
                        .await;
                }
                WatchEnd::Failed(e) => {
                    // Listed again before watching again, rather than resumed from the
                    // last revision: while it was away, etcd may have been wiped or
                    // restored and then written past that revision, and a resumed watch
                    // would follow the new history from the middle, silently. A listing
                    // is diffed against the registry, so it changes only what changed.
                    self.need_list = true;
                    conn = self.keep(c);
                    self.failed(e).await;
                }
                WatchEnd::Closed => return,
            }
        }
    }

    /// Reads the disk snapshot in a blocking thread, within the connect deadline, and
    /// applies it (before anything from etcd).
    async fn load_snapshot(&mut self, path: &std::path::Path) {
        let deadline = self.cfg.connect_timeout;
        let read = tokio::task::spawn_blocking({
            let path = path.to_owned();
            move || disk::read(&path)
        });
        let (mirror, written) = match timeout(deadline, read).await {
            Ok(Ok(Ok(read))) => read,
            Ok(Ok(Err(e))) if is_not_found(&*e) => {
                tracing::info!(prefix = %self.cfg.prefix, path = %path.display(), "substation: no disk snapshot yet");
                return;
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(prefix = %self.cfg.prefix, path = %path.display(), error = %e, "substation: ignoring the disk snapshot");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(prefix = %self.cfg.prefix, path = %path.display(), error = %e, "substation: reading the disk snapshot failed; ignoring it");
                return;
            }
            Err(_) => {
                // The blocking thread stays behind until the read returns.
                tracing::warn!(prefix = %self.cfg.prefix, path = %path.display(), deadline_ms = deadline.as_millis() as u64, "substation: the disk snapshot could not be read within the connect deadline (a hung file system?); ignoring it");
                return;
            }
        };
        let age = written.elapsed().unwrap_or_default();
        tracing::info!(prefix = %self.cfg.prefix, path = %path.display(), revision = mirror.revision, age_s = age.as_secs(), "substation: starting from the disk snapshot until etcd answers");
        let update = Update::Replace {
            revision: mirror.revision,
            layers: vec![
                (Scope::App, to_entries(&mirror.app)),
                (Scope::Shared, to_entries(&mirror.shared)),
            ],
        };
        if self.sink.apply(update).is_err() {
            return; // closed: `run` notices
        }
        let _ = self.sink.set_health(Health::FromDisk {
            revision: mirror.revision,
            written,
        });
        self.from_disk = true;
        *self.mirror.lock().unwrap_or_else(PoisonError::into_inner) = mirror;
    }

    /// Keeps the client for the next attempt, unless it has failed repeatedly (then a new
    /// one starts from fresh connections).
    fn keep(&self, c: Conn) -> Option<Conn> {
        (self.failures < 3).then_some(c)
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let client = connect(&self.cfg).await?;
        Ok(Conn {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            client,
        })
    }

    async fn list(&mut self, c: &mut Conn) -> Result<(), BoxError> {
        let req = self.cfg.request_timeout;
        let app = timeout(
            req,
            c.kv.get(
                self.cfg.prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await
        .map_err(|_| "listing etcd timed out")??;
        let revision = app.header().map_or(0, |h| h.revision()).max(0) as u64;
        if revision < self.high {
            rewound(&self.cfg.prefix, self.high, revision);
        }
        let mut layers = vec![(Scope::App, self.entries(Scope::App, app.kvs()))];
        if let Some(shared) = self.cfg.shared_prefix.clone() {
            let opts = GetOptions::new()
                .with_prefix()
                .with_revision(revision as i64);
            let resp = timeout(req, c.kv.get(shared, Some(opts)))
                .await
                .map_err(|_| "listing etcd timed out")??;
            layers.push((Scope::Shared, self.entries(Scope::Shared, resp.kvs())));
        }
        let mut fresh = Mirror {
            revision,
            ..Mirror::default()
        };
        for (layer, entries) in &layers {
            let map = mirror_layer(&mut fresh, *layer);
            for (k, v) in entries {
                map.insert(k.clone(), String::from_utf8_lossy(v).into_owned());
            }
        }
        let Ok(applied) = self.sink.apply_full(Update::Replace { revision, layers }) else {
            return Ok(()); // closed: `run` notices
        };
        let rejected = applied.rejections;
        {
            // The disk keeps the last good values: a rejected one is replaced by the
            // value it failed to replace (if any).
            let mut m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
            for r in &rejected {
                let kept = mirror_layer(&mut m, r.layer).get(&r.key).cloned();
                let map = mirror_layer(&mut fresh, r.layer);
                match kept {
                    Some(v) => map.insert(r.key.clone(), v),
                    None => map.remove(&r.key),
                };
            }
            mirror_promoted(&mut fresh, applied.promoted);
            *m = fresh;
        }
        self.last = [revision; 2];
        self.high = revision;
        self.need_list = false;
        self.answered = true;
        self.became_live(revision);
        self.dirty();
        tracing::info!(prefix = %self.cfg.prefix, revision, "substation: settings listed from etcd");
        Ok(())
    }

    fn entries(&self, layer: Scope, kvs: &[etcd_client::KeyValue]) -> Vec<(String, Vec<u8>)> {
        let prefix = self.cfg.prefix_of(layer).unwrap_or_default();
        kvs.iter()
            .map(|kv| (relative(kv.key(), prefix), kv.value().to_vec()))
            .collect()
    }

    async fn watch(&mut self, c: &mut Conn) -> WatchEnd {
        let req = self.cfg.request_timeout;
        let mut layers = Vec::new();
        let mut stream: Option<WatchStream> = None;
        for layer in LAYERS {
            let Some(prefix) = self.cfg.prefix_of(layer).map(str::to_owned) else {
                continue;
            };
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.last[layer.index()] as i64 + 1);
            let created = match &mut stream {
                None => timeout(req, c.watch.watch(prefix, Some(opts)))
                    .await
                    .map(|r| r.map(|s| stream = Some(s))),
                Some(s) => timeout(req, s.watch(prefix, Some(opts))).await,
            };
            match created {
                Ok(Ok(())) => layers.push(layer),
                Ok(Err(e)) => return WatchEnd::Failed(e.into()),
                Err(_) => return WatchEnd::Failed("creating the etcd watch timed out".into()),
            }
        }
        let Some(mut stream) = stream else {
            return WatchEnd::Failed("no prefix to watch".into());
        };
        // The acknowledgements come in the order of the requests.
        let mut ids: Vec<(i64, Scope)> = Vec::new();
        while ids.len() < layers.len() {
            let resp = match timeout(req, stream.message()).await {
                Err(_) => return WatchEnd::Failed("creating the etcd watch timed out".into()),
                Ok(Err(e)) => return WatchEnd::Failed(e.into()),
                Ok(Ok(None)) => return WatchEnd::Failed("the etcd watch stream ended".into()),
                Ok(Ok(Some(resp))) => resp,
            };
            if resp.created() {
                let layer = layers[ids.len()];
                if resp.canceled() {
                    return self.cancelled(&resp);
                }
                if let Some(end) = self.check_header(layer, &resp) {
                    return end;
                }
                ids.push((resp.watch_id(), layer));
            } else if let Some(&(_, layer)) = ids.iter().find(|(id, _)| *id == resp.watch_id()) {
                if resp.canceled() {
                    return self.cancelled(&resp);
                }
                if let Some(end) = self.check_header(layer, &resp) {
                    return end;
                }
                // A watch already acknowledged replays or streams while the next one is
                // being created: its events are applied like any others, never dropped.
                tracing::debug!(
                    prefix = %self.cfg.prefix,
                    layer = ?layer,
                    events = resp.events().len(),
                    "substation: applying events of an acknowledged watch while the next one is created"
                );
                if self.apply_events(layer, &resp).is_err() {
                    return WatchEnd::Closed;
                }
            }
        }
        self.became_live(self.high);
        self.follow(&mut stream, &ids).await
    }

    /// Applies what an established watch delivers, and checks that etcd is alive: after
    /// `keep_alive.0` without a message it asks for progress, and declares the watch
    /// dead if nothing arrives within `keep_alive.1` of the request.
    async fn follow(&mut self, stream: &mut WatchStream, ids: &[(i64, Scope)]) -> WatchEnd {
        let (interval, patience) = self.cfg.keep_alive;
        // Since the last message, or since the driver was done with it: time spent
        // applying is not silence.
        let mut heard = Instant::now();
        let mut asked: Option<Instant> = None;
        loop {
            let wake = match asked {
                None => heard + interval,
                Some(at) => at + patience,
            };
            let waited = first(
                stream.message(),
                first(tokio::time::sleep_until(wake), self.sink.closed()),
            )
            .await;
            let next = match waited {
                Either::Left(next) => next,
                Either::Right(Either::Right(())) => return WatchEnd::Closed,
                Either::Right(Either::Left(())) if asked.is_some() => {
                    return WatchEnd::Failed(
                        format!(
                            "etcd answered nothing for {:?} after a watch progress request: the \
                             server is frozen or the connection is lost",
                            patience
                        )
                        .into(),
                    );
                }
                Either::Right(Either::Left(())) => {
                    // Sent on the stream; bounded in case its buffer is full.
                    match timeout(patience, stream.request_progress()).await {
                        Ok(Ok(())) => asked = Some(Instant::now()),
                        Ok(Err(e)) => return WatchEnd::Failed(e.into()),
                        Err(_) => {
                            return WatchEnd::Failed(
                                "sending a watch progress request to etcd timed out".into(),
                            );
                        }
                    }
                    continue;
                }
            };
            let resp = match next {
                Ok(Some(resp)) => resp,
                Ok(None) => return WatchEnd::Failed("the etcd watch stream ended".into()),
                Err(e) => return WatchEnd::Failed(e.into()),
            };
            asked = None;
            // A progress answer (watch id -1) belongs to no watch: it only proves that
            // etcd is alive. Its revision is not compared: etcd takes it when the
            // request arrives, and events of later revisions may be sent before it.
            if let Some(&(_, layer)) = ids.iter().find(|(id, _)| *id == resp.watch_id()) {
                if resp.canceled() {
                    return self.cancelled(&resp);
                }
                if let Some(end) = self.check_header(layer, &resp) {
                    return end;
                }
                if self.apply_events(layer, &resp).is_err() {
                    return WatchEnd::Closed;
                }
            }
            heard = Instant::now();
        }
    }

    fn cancelled(&self, resp: &WatchResponse) -> WatchEnd {
        if resp.compact_revision() > 0 {
            tracing::warn!(prefix = %self.cfg.prefix, compacted = resp.compact_revision(), last = ?self.last, "substation: the etcd watch's start revision was compacted");
            WatchEnd::Relist("compacted")
        } else if resp.cancel_reason().contains("invalid auth token") {
            WatchEnd::Reauthenticate
        } else {
            WatchEnd::Failed(format!("etcd cancelled the watch: {}", resp.cancel_reason()).into())
        }
    }

    /// A server whose revision is below what was applied has lost data (restored from
    /// a backup, or wiped): everything must be listed again. Compared per layer: the
    /// two watches of a stream are not ordered with each other (after a pause, etcd may
    /// send the application's watch's batch up to revision 900, then the shared
    /// watch's batch at revision 850), while one watch never goes back.
    fn check_header(&self, layer: Scope, resp: &WatchResponse) -> Option<WatchEnd> {
        let revision = resp.header()?.revision();
        let applied = self.last[layer.index()];
        if revision >= 0 && (revision as u64) < applied {
            rewound(&self.cfg.prefix, applied, revision as u64);
            return Some(WatchEnd::Relist("rewound"));
        }
        None
    }

    /// Applies a watch response's events, one update per revision, in order.
    fn apply_events(&mut self, layer: Scope, resp: &WatchResponse) -> Result<(), ()> {
        let prefix = self.cfg.prefix_of(layer).unwrap_or_default().to_owned();
        let i = layer.index();
        let mut changes = Vec::new();
        let mut revision = 0u64;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let rev = kv.mod_revision().max(0) as u64;
            if rev <= self.last[i] {
                tracing::debug!(
                    prefix = %self.cfg.prefix,
                    rev,
                    last = self.last[i],
                    "substation: skipping an etcd event already applied"
                );
                continue;
            }
            if rev != revision && !changes.is_empty() {
                self.apply_changes(layer, revision, std::mem::take(&mut changes))?;
            }
            revision = rev;
            // A delete's key-value is a tombstone: etcd resets a key's version to 0 on
            // deletion and every put makes it at least 1 (mvccpb.KeyValue.version).
            // `Event::event_type` is not used: it panics on a type it does not know.
            let value = match kv.version() {
                0 => None,
                _ => Some(kv.value().to_vec()),
            };
            changes.push(Change {
                layer,
                key: relative(kv.key(), &prefix),
                value,
            });
        }
        if !changes.is_empty() {
            self.apply_changes(layer, revision, changes)?;
        }
        Ok(())
    }

    fn apply_changes(
        &mut self,
        layer: Scope,
        revision: u64,
        changes: Vec<Change>,
    ) -> Result<(), ()> {
        let mirrored: Vec<(String, Option<String>)> = changes
            .iter()
            .map(|c| {
                let value = c
                    .value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                (c.key.clone(), value)
            })
            .collect();
        let applied = self
            .sink
            .apply_full(Update::Changes { revision, changes })
            .map_err(|_| ())?;
        let rejected = applied.rejections;
        {
            // The disk keeps the last good values: a rejected value is not mirrored.
            let mut m = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
            m.revision = m.revision.max(revision);
            let map = mirror_layer(&mut m, layer);
            for (key, value) in mirrored {
                if rejected.iter().any(|r| r.layer == layer && r.key == key) {
                    continue;
                }
                match value {
                    Some(v) => map.insert(key, v),
                    None => map.remove(&key),
                };
            }
            mirror_promoted(&mut m, applied.promoted);
        }
        self.last[layer.index()] = revision;
        self.high = self.high.max(revision);
        self.dirty();
        Ok(())
    }

    fn became_live(&mut self, revision: u64) {
        if let Some(since) = self.stale_since.take() {
            let down = since.elapsed().unwrap_or_default();
            tracing::info!(prefix = %self.cfg.prefix, revision, down_ms = down.as_millis() as u64, "substation: etcd watch live again");
        }
        self.failures = 0;
        self.live_once = true;
        let _ = self.sink.set_health(Health::Live { revision });
        self.sink.initialized();
    }

    /// Reports a failure and waits out the backoff.
    async fn failed(&mut self, error: BoxError) {
        self.failures = self.failures.saturating_add(1);
        let text = chain(&*error);
        let reason = tls::explain(&*error, &text, !self.answered, &self.cfg).unwrap_or(text);
        let since = *self.stale_since.get_or_insert_with(SystemTime::now);
        if self.failures == 1 {
            tracing::warn!(prefix = %self.cfg.prefix, error = %reason, "substation: etcd unavailable; keeping the settings in force");
        } else {
            tracing::debug!(prefix = %self.cfg.prefix, error = %reason, failures = self.failures, "substation: etcd still unavailable");
        }
        metrics::counter!(crate::metrics::SOURCE_ERRORS).increment(1);
        if self.live_once || !self.from_disk {
            let _ = self.sink.set_health(Health::Stale {
                revision: self.high,
                since,
                reason,
            });
        }
        let (min, max) = self.cfg.backoff;
        let exp = min.saturating_mul(1 << self.failures.min(16));
        let base = exp.min(max);
        let pause = tokio::time::sleep(base.mul_f64(0.5 + fastrand::f64()));
        let _ = first(pause, self.sink.closed()).await;
    }

    fn dirty(&self) {
        if let Some(n) = &self.disk_dirty {
            n.notify_one();
        }
    }
}

/// A client configured from `cfg` (endpoints, authentication, TLS), connected within
/// its request timeout. Shared by the driver and the presence task.
pub(super) async fn connect(cfg: &EtcdSource) -> Result<Client, BoxError> {
    // No HTTP/2 keep-alive: stock etcd answers pings more often than every 5 s with
    // GOAWAY (see `EtcdSource::keep_alive`); the watch checks liveness itself.
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.request_timeout)
        .with_require_leader(true);
    if let Some((user, password)) = &cfg.user {
        // A request refused for an expired token is retried once with a new one.
        opts = opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = tls::options(cfg) {
        opts = opts.with_tls(tls);
    }
    // With a user, `connect` authenticates, which is a request that may hang.
    let connecting = Client::connect(cfg.endpoints.clone(), Some(opts));
    Ok(timeout(cfg.request_timeout, connecting)
        .await
        .map_err(|_| "connecting to etcd timed out")??)
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Whichever of two futures finishes first (the other is dropped).
async fn first<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(Either::Left(v));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Values refused earlier (`Invalid`, not mirrored then) that a change below made valid
/// and put in force: the disk keeps them now, as their canonical JSON.
fn mirror_promoted(m: &mut Mirror, promoted: Vec<(Scope, String, serde_json::Value)>) {
    for (layer, key, value) in promoted {
        mirror_layer(m, layer).insert(key, value.to_string());
    }
}

fn mirror_layer(m: &mut Mirror, layer: Scope) -> &mut std::collections::BTreeMap<String, String> {
    match layer {
        Scope::App => &mut m.app,
        Scope::Shared => &mut m.shared,
    }
}

fn relative(key: &[u8], prefix: &str) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_owned()
}

fn rewound(prefix: &str, high: u64, now: u64) {
    tracing::error!(
        prefix,
        applied = high,
        server = now,
        "substation: etcd's revision went BACKWARDS ({high} applied, server at {now}): it was restored from a backup or its data was wiped; listing everything again"
    );
}

fn to_entries(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect()
}

fn is_not_found(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// An error and its sources, joined: "transport error: tls handshake: unknown issuer".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        source = inner.source();
    }
    s
}

/// Writes the disk snapshot after changes, at most every 50 ms, off the watch task.
async fn write_snapshots(
    path: std::path::PathBuf,
    mirror: Arc<Mutex<Mirror>>,
    dirty: Arc<Notify>,
    sink: Sink,
) {
    loop {
        if let Either::Right(()) = first(dirty.notified(), sink.closed()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let copy = mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let path2 = path.clone();
        match tokio::task::spawn_blocking(move || disk::write(&path2, &copy)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "substation: could not write the disk snapshot")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "substation: the disk snapshot writer failed")
            }
        }
    }
}
