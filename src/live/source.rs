//! The seam between the registry and whatever feeds it settings.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use super::registry::Shared;
use crate::BoxError;
use crate::settings::{Bounded, SettingsError};

/// The scope of a stored value: which layer of the lookup it belongs to. A policy's
/// effective settings are the library defaults, overridden by the code defaults given to
/// the builder, then by the [`Scope::Shared`] value, then by the [`Scope::App`] value —
/// field by field. (Named so as not to collide with `tower::Layer` in users' imports;
/// fields holding it keep the name `layer`.)
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Fleet-wide defaults shared by many applications.
    Shared,
    /// This application's own values; they win.
    App,
}

impl Scope {
    pub(crate) fn index(self) -> usize {
        match self {
            Scope::Shared => 0,
            Scope::App => 1,
        }
    }
}

/// A settings key: what one stored value configures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Key {
    /// `policies/<name>`: the [`PolicySettings`](crate::settings::PolicySettings) of one
    /// dependency.
    Policy(String),
    /// `switches/<name>`: the [`SwitchSettings`](crate::switch::SwitchSettings) of one
    /// feature switch.
    Switch(String),
    /// `global`: the [`GlobalSettings`](crate::settings::GlobalSettings) of the registry.
    Global,
    /// `experiments/<name>`: the [`ExperimentSettings`](crate::settings::ExperimentSettings)
    /// of one chaos experiment.
    Experiment(String),
    /// `experiments/<name>/result`: the [`ExperimentResult`](crate::settings::ExperimentResult)
    /// of an experiment's run, written by the library.
    ExperimentResult(String),
}

impl Key {
    /// Parses a key relative to a prefix, e.g. `policies/recommendations`.
    pub fn parse(key: &str) -> Result<Key, SettingsError> {
        if key == "global" {
            return Ok(Key::Global);
        }
        let invalid = || {
            SettingsError::new(
                "",
                format!(
                    "{} is not a known key (expected `policies/<name>`, `switches/<name>`, `experiments/<name>`, `experiments/<name>/result` or `global`)",
                    Bounded::key(key)
                ),
            )
        };
        let (kind, name) = key.split_once('/').ok_or_else(invalid)?;
        let (make, name): (fn(String) -> Key, &str) = match kind {
            "policies" => (Key::Policy, name),
            "switches" => (Key::Switch, name),
            "experiments" => match name.strip_suffix("/result") {
                Some(name) => (Key::ExperimentResult, name),
                None => (Key::Experiment, name),
            },
            _ => return Err(invalid()),
        };
        if !valid_name(name) {
            return Err(SettingsError::new(
                "",
                format!(
                    "{} is not a valid name (1 to 128 of A-Z a-z 0-9 _ . -)",
                    Bounded::key(name)
                ),
            ));
        }
        Ok(make(name.to_owned()))
    }

    /// The name of the policy, switch or experiment this key configures (empty for
    /// `global`).
    pub fn name(&self) -> &str {
        match self {
            Key::Policy(name)
            | Key::Switch(name)
            | Key::Experiment(name)
            | Key::ExperimentResult(name) => name,
            Key::Global => "",
        }
    }
}

/// Whether `name` is a valid policy or switch name.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Policy(name) => write!(f, "policies/{name}"),
            Key::Switch(name) => write!(f, "switches/{name}"),
            Key::Global => f.write_str("global"),
            Key::Experiment(name) => write!(f, "experiments/{name}"),
            Key::ExperimentResult(name) => write!(f, "experiments/{name}/result"),
        }
    }
}

/// One change to one key of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The layer the key lives in.
    pub layer: Scope,
    /// The key, relative to the layer's prefix (e.g. `policies/recommendations`); one
    /// that is not a known key is rejected like a bad value.
    pub key: String,
    /// The new value (JSON), or `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// Every key of one layer with its value (JSON), as listed.
pub type Entries = Vec<(String, Vec<u8>)>;

/// A batch of changes that the registry applies as one atomic snapshot swap.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// Some keys changed at `revision` (for etcd: every event of one revision).
    Changes {
        /// The source's revision after these changes.
        revision: u64,
        /// The changes, applied in order.
        changes: Vec<Change>,
    },
    /// The complete contents of some layers at `revision` (a fresh listing): keys of
    /// those layers not in their entries are deleted, the others put; unchanged values
    /// change nothing.
    Replace {
        /// The source's revision of this listing.
        revision: u64,
        /// Each listed layer with every key it holds and its value (JSON).
        layers: Vec<(Scope, Entries)>,
    },
}

/// How current the settings in force are, as the sources report it. Serialized as an
/// object with `state` (`defaults_only`, `live`, `stale`, `from_disk`), `revision`, and
/// times as milliseconds since the Unix epoch (`since_ms`, `written_ms`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Health {
    /// No source has delivered anything: code defaults only.
    DefaultsOnly,
    /// A source is connected and settings are current as of `revision`.
    Live {
        /// The last revision applied.
        revision: u64,
    },
    /// The source lost its store; settings are those of `revision`, kept since `since`.
    Stale {
        /// The last revision applied.
        revision: u64,
        /// When the source noticed.
        since: SystemTime,
        /// Why.
        reason: String,
    },
    /// Settings come from a disk snapshot written at `written` (the store is unreachable).
    FromDisk {
        /// The snapshot's revision.
        revision: u64,
        /// When the snapshot was written.
        written: SystemTime,
    },
}

impl serde::Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let ms = |t: &SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let mut m = serializer.serialize_map(None)?;
        match self {
            Health::DefaultsOnly => m.serialize_entry("state", "defaults_only")?,
            Health::Live { revision } => {
                m.serialize_entry("state", "live")?;
                m.serialize_entry("revision", revision)?;
            }
            Health::Stale {
                revision,
                since,
                reason,
            } => {
                m.serialize_entry("state", "stale")?;
                m.serialize_entry("revision", revision)?;
                m.serialize_entry("since_ms", &ms(since))?;
                m.serialize_entry("reason", reason)?;
            }
            Health::FromDisk { revision, written } => {
                m.serialize_entry("state", "from_disk")?;
                m.serialize_entry("revision", revision)?;
                m.serialize_entry("written_ms", &ms(written))?;
            }
        }
        m.end()
    }
}

/// What kind of refusal a [`Rejection`] is.
///
/// Each layer's value is validated merged with the layers *below* it (library defaults ←
/// code default ← shared ← application), never with the ones above: whether a value is
/// accepted does not depend on the order the layers were written in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectionKind {
    /// Not JSON, not in the documented form (an unknown field, a wrong type, a field
    /// given twice), or under no valid key: dropped. The layer keeps its last good value.
    #[default]
    Malformed,
    /// In the documented form, but not valid merged with the layers below it (a range,
    /// or a rule across fields, such as `breaker.buckets` dividing
    /// `breaker.window_ms`). The layer keeps its last good value; the value is kept too,
    /// tried again whenever a layer below it changes, and takes effect by itself once
    /// it is valid. (A rule it breaks on its own, a range, holds it until it is
    /// replaced.)
    Invalid,
    /// The layer's value in force was valid when it arrived, but a later change below
    /// it (a write or a delete) makes it break a rule: it is left out of the effective
    /// settings — whole, as the same value would be if it arrived now, so that a
    /// running and a restarted process reading the same store agree — until a change to
    /// either layer makes it valid again, when it is back by itself.
    Conflict,
}

impl RejectionKind {
    /// `"malformed"`, `"invalid"` or `"conflict"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::Invalid => "invalid",
            RejectionKind::Conflict => "conflict",
        }
    }
}

/// A value the registry refused, or a value in force that a change below it put in
/// conflict (see [`RejectionKind`]); what is in force is the key's last good value.
///
/// Displayed as `"policies/recs" (App layer, revision 7): timeout.ms: 0 is not in
/// 1..=3600000`: the key quoted and escaped, a long one cut, like the error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Rejection {
    /// What kind of refusal it is.
    pub kind: RejectionKind,
    /// The layer of the refused value.
    pub layer: Scope,
    /// The key of the refused value, relative to its layer's prefix, as the source
    /// sent it (it may be no valid key at all: quote it before showing it; `Display`
    /// does).
    pub key: String,
    /// The source's revision of the refused value (of a `Conflict`: of the change below
    /// that caused it).
    pub revision: u64,
    /// Why: the field and the rule it broke (serialized as its text).
    #[serde(serialize_with = "as_text")]
    pub error: SettingsError,
}

fn as_text<S: serde::Serializer>(e: &SettingsError, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(e)
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?} layer, revision {}): {}",
            Bounded::key(&self.key),
            self.layer,
            self.revision,
            self.error
        )
    }
}

/// Something that feeds settings into a [`Substation`](crate::Substation).
///
/// A source is started once, by [`Builder::build`](super::Builder::build), with a
/// [`Sink`]. It must return promptly: a source that talks to a remote store spawns its
/// own task (or thread) and pushes [`Update`]s into the sink as they come, reporting
/// outages with [`Sink::set_health`], and calls [`Sink::initialized`] once its first
/// load is done or its deadline passed. Applying an update is synchronous and never
/// blocks on I/O; it validates each key on its own.
pub trait Source: Send + 'static {
    /// Starts feeding `sink`.
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError>;
}

/// A store the registry can write back to: experiments record their runs there
/// (`experiments/<name>/result`). A source that can write hands one to its sink
/// ([`Sink::set_store`]); the etcd source and the in-memory source do.
pub trait Store: Send + Sync + 'static {
    /// Reads `key` of `layer`, hands its value (`None`: absent) to `f`, and writes what
    /// `f` returns, atomically: if the key changed in between, it reads again and asks
    /// `f` again. `Ok(false)` when `f` declined to write (returned `None`).
    fn update(
        &self,
        layer: Scope,
        key: &str,
        f: UpdateFn,
    ) -> Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>>;
}

/// The function a [`Store::update`] asks: the current value in, the value to write out
/// (`None`: write nothing).
pub type UpdateFn = Box<dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + Send>;

/// Where a [`Source`] pushes updates. Cheap to clone; does not keep the registry alive.
#[derive(Clone)]
pub struct Sink {
    pub(super) shared: Weak<Shared>,
    pub(super) initialized: Arc<std::sync::atomic::AtomicBool>,
    /// Its sender lives in the registry: dropped with it.
    pub(super) alive: tokio::sync::watch::Receiver<()>,
}

impl Sink {
    /// Applies one update as one atomic snapshot swap; returns the values of the update
    /// it rejected (each for its key alone; [`RejectionKind::Malformed`] or
    /// [`RejectionKind::Invalid`], in no particular order — a `Conflict` the update
    /// causes above it is listed in the snapshot, not returned), or `Err(Closed)` once
    /// the registry is gone — the source should stop then.
    pub fn apply(&self, update: Update) -> Result<Vec<Rejection>, Closed> {
        Ok(self.apply_full(update)?.rejections)
    }

    /// [`Sink::apply`], with the values that were waiting and became valid (the etcd
    /// source mirrors them to its disk snapshot).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn apply_full(&self, update: Update) -> Result<super::writer::Applied, Closed> {
        let shared = self.shared()?;
        Ok(shared.apply(update))
    }

    /// Says that this source has done its first load (or given up on it within its
    /// deadline and fallen back): [`Substation::initialized`](crate::Substation::initialized)
    /// waits for every source to say so. Saying it again does nothing.
    pub fn initialized(&self) {
        if let Some(shared) = self.shared.upgrade()
            && !self
                .initialized
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            shared.source_initialized();
        }
    }

    /// Reports how current the settings are.
    pub fn set_health(&self, health: Health) -> Result<(), Closed> {
        let shared = self.shared()?;
        shared.set_health(health);
        Ok(())
    }

    /// Lets the registry write to the source's store in `layers` (experiment results).
    pub fn set_store(&self, layers: &[Scope], store: Arc<dyn Store>) -> Result<(), Closed> {
        let shared = self.shared()?;
        for &layer in layers {
            shared.experiments.set_store(layer, store.clone());
        }
        Ok(())
    }

    /// The id the source announces this process under: experiments sign their records
    /// with it.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn set_instance(&self, id: &str) {
        if let Some(shared) = self.shared.upgrade() {
            shared.experiments.set_instance(id);
        }
    }

    /// Whether the registry is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.strong_count() == 0
    }

    /// Resolves when the registry is dropped: a source's task can stop waiting on its
    /// store then (race this with the store's stream).
    pub async fn closed(&self) {
        let mut alive = self.alive.clone();
        while alive.changed().await.is_ok() {}
    }

    /// A receiver told of every snapshot the registry publishes (`None` once it is gone).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn published(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.upgrade()?.published.subscribe())
    }

    /// The snapshot in force and what the registry's code knows (for fleet presence);
    /// `None` once the registry is gone. Takes the writer lock briefly.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn state(&self) -> Option<(Arc<super::Snapshot>, super::writer::Known)> {
        let shared = self.shared.upgrade()?;
        let mut w = shared.lock();
        let known = w.known();
        let snapshot = shared.snapshot.load_full();
        drop(w);
        Some((snapshot, known))
    }

    fn shared(&self) -> Result<Arc<Shared>, Closed> {
        self.shared.upgrade().ok_or(Closed(()))
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The registry a [`Sink`] feeds has been dropped.
#[derive(Debug)]
pub struct Closed(());

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the substation registry has been dropped")
    }
}

impl std::error::Error for Closed {}
