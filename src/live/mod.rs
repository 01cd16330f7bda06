//! Live settings: a registry of named policies fed by sources, published as snapshots.
//!
//! A [`Substation`] holds every policy of an application. Its settings come in layers,
//! each overriding the one before it field by field: the library defaults, the code
//! defaults given to the [`Builder`], the fleet's [`Layer::Shared`] values, and the
//! application's own [`Layer::App`] values. [`Source`]s push [`Update`]s into the
//! registry; each update is applied as **one** atomic swap of the published
//! [`Snapshot`] (readers load it lock-free), and each policy touched by it gets its new
//! settings before the swap is visible.
//!
//! Every key is validated alone. A malformed or out-of-range value is rejected for that
//! key only: its last good value stays in force, the reason is logged (`warn`, with key
//! and revision), counted (`substation_settings_rejected_total`) and readable from
//! [`Snapshot::rejected`]. A deleted key falls back to the next layer, and says so in the
//! log.
//!
//! ```
//! use substation::{Substation, live::InMemorySource, settings::PolicySettings};
//!
//! let source = InMemorySource::new();
//! let substation = Substation::builder()
//!     .policy("recommendations", PolicySettings::default())
//!     .source(source.clone())
//!     .build()
//!     .unwrap();
//! let policy = substation.policy("recommendations");
//!
//! source.put("policies/recommendations", r#"{"timeout": {"ms": 150}}"#).unwrap();
//! assert_eq!(policy.settings().timeout.ms, Some(150));
//!
//! let err = source.put("policies/recommendations", r#"{"timeout": {"ms": 0}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "timeout.ms: 0 is not in 1..=3600000");
//! assert_eq!(policy.settings().timeout.ms, Some(150), "last good value kept");
//! assert_eq!(substation.snapshot().rejected().count(), 1);
//!
//! source.delete("policies/recommendations");
//! assert_eq!(policy.settings().timeout.ms, Some(1000), "back to the code default");
//! ```

#[cfg(feature = "etcd")]
pub mod etcd;
mod memory;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use imbl::OrdMap;
use serde_json::Value;

use crate::clock::Clock;
use crate::settings::{GlobalSettings, PolicySettings, SettingsError};
use crate::switch::{Switch, SwitchSettings};
use crate::{BoxError, Policy};

pub use self::memory::InMemorySource;
pub use self::source::{
    Change, Closed, Entries, Health, Key, Layer, Rejection, Sink, Source, Update, valid_name,
};

/// Builds a [`Substation`]: clock, code defaults and sources.
#[must_use]
pub struct Builder {
    clock: Option<Clock>,
    defaults: HashMap<String, PolicySettings>,
    switch_defaults: HashMap<String, SwitchSettings>,
    global: GlobalSettings,
    sources: Vec<Box<dyn Source>>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("clock", &self.clock)
            .field("defaults", &self.defaults.keys())
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Builder {
    /// Reads time from `clock` (default: [`Clock::coarse`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The code default of policy `name`: what it uses when no source says otherwise.
    pub fn policy(mut self, name: &str, settings: PolicySettings) -> Self {
        self.defaults.insert(name.to_owned(), settings);
        self
    }

    /// The code default of switch `name`.
    pub fn switch(mut self, name: &str, settings: SwitchSettings) -> Self {
        self.switch_defaults.insert(name.to_owned(), settings);
        self
    }

    /// The code default of the registry-wide settings (key `global`).
    pub fn global(mut self, settings: GlobalSettings) -> Self {
        self.global = settings;
        self
    }

    /// Adds a source of settings; sources are started in order by [`Builder::build`].
    pub fn source(mut self, source: impl Source) -> Self {
        self.sources.push(Box::new(source));
        self
    }

    /// Validates the code defaults, builds the registry and starts its sources. Returns
    /// at once; [`Substation::initialized`] waits for the sources' first loads.
    pub fn build(self) -> Result<Substation, BoxError> {
        let mut defaults = HashMap::new();
        for (name, settings) in self.defaults {
            if !valid_name(&name) {
                return Err(format!("`{name}` is not a valid policy name").into());
            }
            settings
                .validate()
                .map_err(|e| format!("code default of policy `{name}`: {e}"))?;
            defaults.insert(Key::Policy(name), serde_json::to_value(settings)?);
        }
        for (name, settings) in self.switch_defaults {
            if !valid_name(&name) {
                return Err(format!("`{name}` is not a valid switch name").into());
            }
            let value = serde_json::to_value(settings)?;
            SwitchSettings::from_value(value.clone())
                .map_err(|e| format!("code default of switch `{name}`: {e}"))?;
            defaults.insert(Key::Switch(name), value);
        }
        defaults.insert(Key::Global, serde_json::to_value(self.global)?);
        let (pending_tx, _) = tokio::sync::watch::channel(self.sources.len());
        let (changes, _) = tokio::sync::broadcast::channel(CHANGES_CAPACITY);
        let (alive, alive_rx) = tokio::sync::watch::channel(());
        let mut writer = Writer {
            defaults,
            layers: Default::default(),
            rejected: BTreeMap::new(),
            policies: HashMap::new(),
            switches: HashMap::new(),
            effective: OrdMap::new(),
            switch_values: OrdMap::new(),
            global: Arc::default(),
            rejected_view: OrdMap::new(),
            health: Health::DefaultsOnly,
            revision: 0,
        };
        let keys: Vec<Key> = writer.defaults.keys().cloned().collect();
        for key in keys {
            writer.refresh(&key);
        }
        let shared = Arc::new(Shared {
            clock: self.clock.unwrap_or_default(),
            snapshot: ArcSwap::from_pointee(writer.snapshot()),
            writer: Mutex::new(writer),
            pending: pending_tx,
            changes,
            _alive: alive,
        });
        for source in self.sources {
            source.start(Sink {
                shared: Arc::downgrade(&shared),
                initialized: Default::default(),
                alive: alive_rx.clone(),
            })?;
        }
        Ok(Substation { shared })
    }
}

/// How many change notices a slow subscriber may fall behind before it misses some.
const CHANGES_CAPACITY: usize = 1024;

/// A notice that settings changed: which keys, at which revision. See
/// [`Substation::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The revision after the change.
    pub revision: u64,
    /// The keys whose effective value changed (e.g. `policies/recommendations`).
    pub keys: Arc<[String]>,
}

/// The registry of an application's policies; see the [module docs](self).
#[derive(Clone)]
pub struct Substation {
    shared: Arc<Shared>,
}

impl fmt::Debug for Substation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("Substation")
            .field("revision", &snapshot.revision)
            .field("health", &snapshot.health)
            .finish_non_exhaustive()
    }
}

impl Substation {
    /// A builder.
    pub fn builder() -> Builder {
        Builder {
            clock: None,
            defaults: HashMap::new(),
            switch_defaults: HashMap::new(),
            global: GlobalSettings::default(),
            sources: Vec::new(),
        }
    }

    /// The live policy `name`, created on first use with its effective settings. Cheap
    /// enough for setup code (it takes the registry's writer lock), not meant for each
    /// request: keep the handle, or the layers built from it.
    ///
    /// # Panics
    /// If `name` is not a valid name (1 to 128 of `A-Z a-z 0-9 _ . -`): names come from
    /// code, not from input.
    pub fn policy(&self, name: &str) -> Policy {
        assert!(valid_name(name), "`{name}` is not a valid policy name");
        let mut w = self.shared.lock();
        if let Some(p) = w.policies.get(name) {
            return p.clone();
        }
        let settings = match w.effective.get(name) {
            Some(s) => (**s).clone(),
            None => PolicySettings::default(),
        };
        let policy = Policy::with_clock(name, settings, self.shared.clock.clone())
            .expect("effective settings are validated");
        policy.set_shed(w.global.shed_non_critical && !policy.settings().critical);
        w.policies.insert(name.to_owned(), policy.clone());
        policy
    }

    /// The live switch `name`, created on first use with its effective value. For setup
    /// code, like [`Substation::policy`].
    ///
    /// # Panics
    /// If `name` is not a valid name.
    pub fn switch(&self, name: &str) -> Switch {
        assert!(valid_name(name), "`{name}` is not a valid switch name");
        let mut w = self.shared.lock();
        if let Some(s) = w.switches.get(name) {
            return s.clone();
        }
        let settings = match w.switch_values.get(name) {
            Some(s) => (**s).clone(),
            None => SwitchSettings::default(),
        };
        let switch = Switch::detached(name, settings);
        w.switches.insert(name.to_owned(), switch.clone());
        switch
    }

    /// The settings in force now, as one consistent snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Notices of every later change (which keys, at which revision). A subscriber that
    /// falls more than 1024 notices behind gets `Lagged` and should re-read
    /// [`Substation::snapshot`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Changed> {
        self.shared.changes.subscribe()
    }

    /// Resolves once every source has done its first load or passed its deadline (the
    /// etcd source's connect deadline is 500 ms by default). Never needed for
    /// correctness — layers work from code defaults meanwhile — but lets an application
    /// start serving with its stored settings in force.
    pub async fn initialized(&self) {
        let mut pending = self.shared.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// The clock the registry's policies read.
    pub fn clock(&self) -> Clock {
        self.shared.clock.clone()
    }
}

/// One consistent view of the settings in force. Cheap to keep: taking one is a
/// reference-count increment, and its maps share structure with the next one.
#[derive(Clone, Debug)]
pub struct Snapshot {
    revision: u64,
    policies: OrdMap<String, Arc<PolicySettings>>,
    switches: OrdMap<String, Arc<SwitchSettings>>,
    global: Arc<GlobalSettings>,
    rejected: OrdMap<(Layer, String), Rejection>,
    health: Health,
}

impl Snapshot {
    /// The last revision applied (0 before any source delivered).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The effective settings of policy `name`, if it has a code default or a stored
    /// value.
    pub fn policy(&self, name: &str) -> Option<&Arc<PolicySettings>> {
        self.policies.get(name)
    }

    /// Every policy that has a code default or a stored value, by name.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = (&str, &Arc<PolicySettings>)> {
        self.policies.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The effective value of switch `name`, if it has a code default or a stored value.
    pub fn switch(&self, name: &str) -> Option<&Arc<SwitchSettings>> {
        self.switches.get(name)
    }

    /// Every switch that has a code default or a stored value, by name.
    pub fn switches(&self) -> impl ExactSizeIterator<Item = (&str, &Arc<SwitchSettings>)> {
        self.switches.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The registry-wide settings in force.
    pub fn global(&self) -> &GlobalSettings {
        &self.global
    }

    /// The values currently rejected, with the reasons.
    pub fn rejected(&self) -> impl ExactSizeIterator<Item = &Rejection> {
        self.rejected.values()
    }

    /// How current the settings are.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

pub(crate) struct Shared {
    clock: Clock,
    writer: Mutex<Writer>,
    snapshot: ArcSwap<Snapshot>,
    /// Sources that have not yet said `initialized`.
    pending: tokio::sync::watch::Sender<usize>,
    changes: tokio::sync::broadcast::Sender<Changed>,
    /// Dropped with the registry, which tells sources to stop (`Sink::closed`).
    _alive: tokio::sync::watch::Sender<()>,
}

struct Writer {
    /// Code defaults, as JSON objects.
    defaults: HashMap<Key, Value>,
    /// The last good value of every key, per layer.
    layers: [BTreeMap<Key, Value>; 2],
    /// Each rejection with the raw value it refused (a listing that brings the same
    /// value again is not rejected, logged and counted again).
    rejected: BTreeMap<(Layer, String), (Rejection, Vec<u8>)>,
    policies: HashMap<String, Policy>,
    switches: HashMap<String, Switch>,
    /// Effective settings of every policy / switch with a default or a stored value;
    /// updated key by key (persistent maps: publishing a snapshot copies nothing).
    effective: OrdMap<String, Arc<PolicySettings>>,
    switch_values: OrdMap<String, Arc<SwitchSettings>>,
    global: Arc<GlobalSettings>,
    rejected_view: OrdMap<(Layer, String), Rejection>,
    health: Health,
    revision: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn apply(&self, update: Update) -> Vec<Rejection> {
        let mut w = self.lock();
        let mut rejections = Vec::new();
        // A listing sets the revision (it may go down: a wiped or restored etcd); the
        // events of a watch only move it forward (two layers' streams may interleave).
        let listing = matches!(update, Update::Replace { .. });
        let (revision, changes) = match update {
            Update::Changes { revision, changes } => (revision, changes),
            Update::Replace { revision, layers } => {
                let mut changes = Vec::new();
                for (layer, entries) in layers {
                    let listed: std::collections::BTreeSet<&str> =
                        entries.iter().map(|(k, _)| k.as_str()).collect();
                    let stored = w.layers[layer.index()].keys().map(|k| k.to_string());
                    let rejected = w
                        .rejected
                        .keys()
                        .filter(|(l, _)| *l == layer)
                        .map(|(_, k)| k.clone());
                    let gone: std::collections::BTreeSet<String> = stored
                        .chain(rejected)
                        .filter(|k| !listed.contains(k.as_str()))
                        .collect();
                    changes.extend(gone.into_iter().map(|key| Change {
                        layer,
                        key,
                        value: None,
                    }));
                    changes.extend(entries.into_iter().map(|(key, value)| Change {
                        layer,
                        key,
                        value: Some(value),
                    }));
                }
                (revision, changes)
            }
        };
        let mut touched = Vec::new();
        for change in changes {
            if let Some(r) = w.change(change, revision, &mut touched) {
                rejections.push(r);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let mut changed = Vec::new();
        for key in &touched {
            if w.refresh(key) {
                changed.push(key.to_string());
            }
        }
        w.revision = if listing {
            revision
        } else {
            w.revision.max(revision)
        };
        if let Health::Live { .. } | Health::DefaultsOnly = w.health {
            w.health = Health::Live {
                revision: w.revision,
            };
        }
        self.snapshot.store(Arc::new(w.snapshot()));
        if !changed.is_empty() {
            // Sent under the lock (a broadcast send never waits): notices arrive in the
            // order the snapshots were published.
            let _ = self.changes.send(Changed {
                revision,
                keys: changed.into(),
            });
        }
        drop(w);
        rejections
    }

    fn set_health(&self, health: Health) {
        let mut w = self.lock();
        w.health = health;
        self.snapshot.store(Arc::new(w.snapshot()));
    }

    pub(crate) fn source_initialized(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Writer {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            policies: self.effective.clone(),
            switches: self.switch_values.clone(),
            global: self.global.clone(),
            rejected: self.rejected_view.clone(),
            health: self.health.clone(),
        }
    }

    fn stored(&self, key: &Key) -> bool {
        self.defaults.contains_key(key) || self.layers.iter().any(|layer| layer.contains_key(key))
    }

    /// Recomputes `key`'s effective value; updates its live handle and the published
    /// maps. Returns whether it changed.
    fn refresh(&mut self, key: &Key) -> bool {
        let merged = self.merged(key, None);
        match key {
            Key::Policy(name) => {
                let settings = match PolicySettings::from_value(merged) {
                    Ok(s) => s,
                    Err(e) => return self.invalid_combination(key, &e),
                };
                if let Some(policy) = self.policies.get(name.as_str()) {
                    if *policy.settings() != settings
                        && let Err(e) = policy.update(settings.clone())
                    {
                        tracing::error!(%key, error = %e, "substation: invalid effective settings");
                    }
                    policy.set_shed(self.global.shed_non_critical && !settings.critical);
                }
                if !self.stored(key) {
                    return self.effective.remove(name.as_str()).is_some();
                }
                if self
                    .effective
                    .get(name.as_str())
                    .is_some_and(|old| **old == settings)
                {
                    return false;
                }
                self.effective.insert(name.clone(), Arc::new(settings));
                true
            }
            Key::Switch(name) => {
                let settings = match SwitchSettings::from_value(merged) {
                    Ok(s) => s,
                    Err(e) => return self.invalid_combination(key, &e),
                };
                if let Some(switch) = self.switches.get(name.as_str())
                    && *switch.settings() != settings
                    && let Err(e) = switch.update(settings.clone())
                {
                    tracing::error!(%key, error = %e, "substation: invalid effective settings");
                }
                if !self.stored(key) {
                    return self.switch_values.remove(name.as_str()).is_some();
                }
                if self
                    .switch_values
                    .get(name.as_str())
                    .is_some_and(|old| **old == settings)
                {
                    return false;
                }
                self.switch_values.insert(name.clone(), Arc::new(settings));
                true
            }
            Key::Global => {
                let global = match GlobalSettings::from_value(merged) {
                    Ok(g) => g,
                    Err(e) => return self.invalid_combination(key, &e),
                };
                if *self.global == global {
                    return false;
                }
                if global.shed_non_critical != self.global.shed_non_critical {
                    tracing::warn!(
                        shed = global.shed_non_critical,
                        "substation: shedding of non-critical dependencies changed"
                    );
                }
                self.global = Arc::new(global);
                for policy in self.policies.values() {
                    let critical = policy.settings().critical;
                    policy.set_shed(self.global.shed_non_critical && !critical);
                }
                true
            }
        }
    }

    fn invalid_combination(&self, key: &Key, e: &SettingsError) -> bool {
        // Every stored value was validated with the layers below it when it was
        // accepted; a later change below can still break a cross-field rule. Keep what
        // is in force.
        tracing::error!(%key, error = %e, "substation: effective settings invalid; keeping the previous ones");
        false
    }

    /// `key`'s layers merged field by field (code default ← shared ← app), with
    /// `candidate` in place of one layer's value.
    fn merged(&self, key: &Key, candidate: Option<(Layer, &Value)>) -> Value {
        let mut merged = match self.defaults.get(key) {
            Some(v) => v.clone(),
            None => Value::Object(Default::default()),
        };
        for layer in [Layer::Shared, Layer::App] {
            let value = match candidate {
                Some((l, v)) if l == layer => Some(v),
                _ => self.layers[layer.index()].get(key),
            };
            if let Some(value) = value {
                merge(&mut merged, value);
            }
        }
        merged
    }

    fn validate(key: &Key, merged: Value) -> Result<(), SettingsError> {
        match key {
            Key::Policy(_) => PolicySettings::from_value(merged).map(drop),
            Key::Switch(_) => SwitchSettings::from_value(merged).map(drop),
            Key::Global => GlobalSettings::from_value(merged).map(drop),
        }
    }

    fn reject(
        &mut self,
        layer: Layer,
        key: String,
        revision: u64,
        error: SettingsError,
        bytes: Vec<u8>,
    ) -> Rejection {
        if let Some((old, refused)) = self.rejected.get(&(layer, key.clone()))
            && *refused == bytes
            && old.error.to_string() == error.to_string()
        {
            return old.clone(); // the same value refused again (a listing): said once
        }
        tracing::warn!(%key, ?layer, revision, %error, "settings value rejected; keeping the last good value");
        metrics::counter!(crate::metrics::SETTINGS_REJECTED, "key" => key.clone()).increment(1);
        let r = Rejection {
            layer,
            key: key.clone(),
            revision,
            error,
        };
        self.rejected
            .insert((layer, key.clone()), (r.clone(), bytes));
        self.rejected_view.insert((layer, key), r.clone());
        r
    }

    fn clear_rejection(&mut self, layer: Layer, key: &str) {
        let slot = (layer, key.to_owned());
        if self.rejected.remove(&slot).is_some() {
            self.rejected_view.remove(&slot);
        }
    }

    fn change(
        &mut self,
        change: Change,
        revision: u64,
        touched: &mut Vec<Key>,
    ) -> Option<Rejection> {
        let Change {
            layer,
            key: raw,
            value,
        } = change;
        let key = match Key::parse(&raw) {
            Ok(key) => key,
            Err(error) => {
                return match value {
                    Some(bytes) => Some(self.reject(layer, raw, revision, error, bytes)),
                    None => {
                        self.clear_rejection(layer, &raw);
                        None
                    }
                };
            }
        };
        match value {
            None => {
                self.clear_rejection(layer, &raw);
                if self.layers[layer.index()].remove(&key).is_some() {
                    let next = match layer {
                        Layer::App if self.layers[Layer::Shared.index()].contains_key(&key) => {
                            "the shared default"
                        }
                        _ if self.defaults.contains_key(&key) => "the code default",
                        _ => "the library defaults",
                    };
                    tracing::info!(%key, ?layer, revision, "settings key deleted; falling back to {next}");
                    touched.push(key);
                }
                None
            }
            Some(bytes) => {
                let parsed = serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| SettingsError::new("", format!("malformed JSON: {e}")))
                    .and_then(|v| match v {
                        Value::Object(_) => Ok(v),
                        other => Err(SettingsError::new(
                            "",
                            format!("expected a JSON object, found `{other}`"),
                        )),
                    })
                    .and_then(|v| {
                        Self::validate(&key, self.merged(&key, Some((layer, &v))))?;
                        Ok(v)
                    });
                match parsed {
                    Ok(value) => {
                        self.clear_rejection(layer, &raw);
                        let old = self.layers[layer.index()].insert(key.clone(), value.clone());
                        if old.as_ref() != Some(&value) {
                            touched.push(key);
                        }
                        None
                    }
                    Err(error) => Some(self.reject(layer, raw, revision, error, bytes)),
                }
            }
        }
    }
}

/// Overrides `base` with `over`, recursing into objects (a JSON merge patch, except
/// that `null` is a value, not a deletion: `"ms": null` turns a timeout off).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_overrides_field_by_field() {
        let mut base = serde_json::json!({"timeout": {"ms": 1000}, "breaker": {"min_calls": 20, "error_rate": 50.0}});
        merge(
            &mut base,
            &serde_json::json!({"breaker": {"error_rate": 10}, "timeout": {"ms": null}}),
        );
        assert_eq!(
            base,
            serde_json::json!({"timeout": {"ms": null}, "breaker": {"min_calls": 20, "error_rate": 10}})
        );
    }
}
