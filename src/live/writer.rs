//! The writer side of the registry: layers of stored values, validation key by key,
//! rejections, and applying an [`Update`] as one snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imbl::OrdMap;
use serde_json::Value;

use super::handles::Handles;
use super::merge::merge;
use super::registry::{Changed, Shared, Snapshot};
use super::source::{Change, Health, Key, Rejection, Scope, Update};
use crate::experiment::run::Table;
use crate::policy::WeakPolicy;
use crate::settings::decode::{self, Settings};
use crate::settings::{Bounded, GlobalSettings, PolicySettings, SettingsError};
use crate::settings::{ExperimentResult, ExperimentSettings};
use crate::switch::{SwitchSettings, WeakSwitch};

/// The registry's state behind its lock: what every layer holds, what was refused, and
/// the effective values published in each snapshot.
pub(crate) struct Writer {
    /// Code defaults, as JSON objects.
    defaults: HashMap<Key, Value>,
    /// The last good value of every key, per layer.
    layers: [BTreeMap<Key, Value>; 2],
    /// Each rejection with the raw value it refused (a listing that brings the same
    /// value again is not rejected, logged and counted again).
    rejected: BTreeMap<(Scope, String), (Rejection, Fingerprint)>,
    /// The policies and switches in use, held weakly: the registry keeps none alive.
    pub(super) policies: Handles<WeakPolicy>,
    pub(super) switches: Handles<WeakSwitch>,
    /// Effective settings of every policy / switch with a default or a stored value;
    /// updated key by key (persistent maps: publishing a snapshot copies nothing).
    pub(super) effective: OrdMap<String, Arc<PolicySettings>>,
    pub(super) switch_values: OrdMap<String, Arc<SwitchSettings>>,
    pub(super) global: Arc<GlobalSettings>,
    rejected_view: OrdMap<(Scope, String), Rejection>,
    pub(super) health: Health,
    revision: u64,
    /// The experiments' runs (none in a writer made to check one value).
    experiments: Option<Arc<Table>>,
    pub(super) experiment_values: OrdMap<String, Arc<ExperimentSettings>>,
    pub(super) experiment_results: OrdMap<String, Arc<ExperimentResult>>,
}

impl Shared {
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
        if let Some(t) = &w.experiments {
            t.set_health(&w.health);
            t.sync();
        }
        self.publish(w.snapshot());
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
}

impl Writer {
    /// A writer holding code defaults only, with their effective values computed.
    pub(super) fn new(defaults: HashMap<Key, Value>, experiments: Option<Arc<Table>>) -> Writer {
        let mut writer = Writer {
            defaults,
            layers: Default::default(),
            rejected: BTreeMap::new(),
            policies: Handles::new(),
            switches: Handles::new(),
            effective: OrdMap::new(),
            switch_values: OrdMap::new(),
            global: Arc::default(),
            rejected_view: OrdMap::new(),
            health: Health::DefaultsOnly,
            revision: 0,
            experiments,
            experiment_values: OrdMap::new(),
            experiment_results: OrdMap::new(),
        };
        let keys: Vec<Key> = writer.defaults.keys().cloned().collect();
        for key in keys {
            writer.refresh(&key);
        }
        writer
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            policies: self.effective.clone(),
            switches: self.switch_values.clone(),
            global: self.global.clone(),
            rejected: self.rejected_view.clone(),
            health: self.health.clone(),
            experiments: self.experiment_values.clone(),
            experiment_results: self.experiment_results.clone(),
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
                let settings = match decode::from_value::<PolicySettings>(&merged) {
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
                let settings = match decode::from_value::<SwitchSettings>(&merged) {
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
            Key::Experiment(name) => self.refresh_experiment::<ExperimentSettings>(
                key,
                name,
                |w| &mut w.experiment_values,
                |t, name, v, home| t.set_experiment(name, v.map(|v| (v, home))),
            ),
            Key::ExperimentResult(name) => self.refresh_experiment::<ExperimentResult>(
                key,
                name,
                |w| &mut w.experiment_results,
                |t, name, v, _| t.set_result(name, v),
            ),
            Key::Global => {
                let global = match decode::from_value::<GlobalSettings>(&merged) {
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
                if let Some(t) = &self.experiments {
                    t.set_halt(global.halt_experiments);
                }
                if global.halt_experiments != self.global.halt_experiments {
                    tracing::warn!(
                        halt = global.halt_experiments,
                        "substation: halting of every experiment changed"
                    );
                }
                self.global = Arc::new(global);
                let shed = self.global.shed_non_critical;
                self.policies
                    .for_each(|policy| policy.set_shed(shed && !policy.settings().critical));
                true
            }
        }
    }

    /// An experiment's value or result: decoded, handed to the experiments' table and
    /// published in the snapshot.
    fn refresh_experiment<T: Settings + PartialEq + Clone>(
        &mut self,
        key: &Key,
        name: &str,
        map: fn(&mut Writer) -> &mut OrdMap<String, Arc<T>>,
        give: fn(&Table, &str, Option<T>, Scope),
    ) -> bool {
        // A run's record is read from one layer (the application's if it has one), not
        // merged: a verdict must not lend its fields to another layer's record.
        let value_of = |w: &Writer| match key {
            Key::ExperimentResult(_) => w.layers[Scope::App.index()]
                .get(key)
                .or_else(|| w.layers[Scope::Shared.index()].get(key))
                .cloned()
                .unwrap_or_default(),
            _ => w.merged(key, None),
        };
        let value = if self.stored(key) {
            match decode::from_value::<T>(&value_of(self)) {
                Ok(v) => Some(v),
                Err(e) => return self.invalid_combination(key, &e),
            }
        } else {
            None
        };
        let home = if self.layers[Scope::App.index()].contains_key(key) {
            Scope::App
        } else {
            Scope::Shared
        };
        let map = map(self);
        let changed = match &value {
            Some(v) if map.get(name).is_some_and(|old| **old == *v) => false,
            Some(v) => {
                map.insert(name.to_owned(), Arc::new(v.clone()));
                true
            }
            None => map.remove(name).is_some(),
        };
        if changed && let Some(t) = &self.experiments {
            give(t, name, value, home);
        }
        changed
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
    fn merged(&self, key: &Key, candidate: Option<(Scope, &Value)>) -> Value {
        let mut merged = match self.defaults.get(key) {
            Some(v) => v.clone(),
            None => Value::Object(Default::default()),
        };
        for layer in [Scope::Shared, Scope::App] {
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

    /// Checks a stored value: on its own, it must be in exactly the documented form
    /// (its ranges may depend on the layers below it); merged with `key`'s other
    /// layers, it must be valid. Every part of a value that no layer above hides is in
    /// the merged value, whose strict decoding checks its form; so only a value under
    /// another layer's is decoded on its own too.
    fn validate(&self, key: &Key, layer: Scope, value: &Value) -> Result<(), SettingsError> {
        fn check<T: Settings>(alone: Option<&Value>, merged: &Value) -> Result<(), SettingsError> {
            if let Some(value) = alone {
                decode::decode::<T>(value)?;
            }
            decode::from_value::<T>(merged).map(drop)
        }
        let hidden = layer == Scope::Shared && self.layers[Scope::App.index()].contains_key(key);
        let alone = hidden.then_some(value);
        let merged = self.merged(key, Some((layer, value)));
        match key {
            Key::Policy(_) => check::<PolicySettings>(alone, &merged),
            Key::Switch(_) => check::<SwitchSettings>(alone, &merged),
            Key::Global => check::<GlobalSettings>(alone, &merged),
            Key::Experiment(_) => check::<ExperimentSettings>(alone, &merged),
            Key::ExperimentResult(_) => check::<ExperimentResult>(alone, &merged),
        }
    }

    fn reject(
        &mut self,
        layer: Scope,
        key: String,
        revision: u64,
        error: SettingsError,
        bytes: Vec<u8>,
    ) -> Rejection {
        let print = Fingerprint::of(&bytes);
        if let Some((old, refused)) = self.rejected.get(&(layer, key.clone()))
            && *refused == print
            && old.error.to_string() == error.to_string()
        {
            return old.clone(); // the same value refused again (a listing): said once
        }
        // Both come from outside: the key quoted, escaped and cut if long; the error
        // (escaped and cut already) quoted, so that neither can pass for another field.
        tracing::warn!(key = %Bounded::key(&key), ?layer, revision, error = ?error.to_string(), "settings value rejected; keeping the last good value");
        let label = Bounded::new(&key, 96, 32).to_string();
        metrics::counter!(crate::metrics::SETTINGS_REJECTED, "key" => label).increment(1);
        let r = Rejection {
            layer,
            key: key.clone(),
            revision,
            error,
        };
        self.rejected
            .insert((layer, key.clone()), (r.clone(), print));
        self.rejected_view.insert((layer, key), r.clone());
        r
    }

    fn clear_rejection(&mut self, layer: Scope, key: &str) {
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
                        Scope::App if self.layers[Scope::Shared.index()].contains_key(&key) => {
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
                let parsed = decode::parse(&bytes).and_then(|v| {
                    self.validate(&key, layer, &v)?;
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

/// What the fleet presence of one instance reports about its code: each known name
/// with its code default (if any).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) struct Known {
    pub(crate) policies: Vec<(String, Option<Value>)>,
    pub(crate) switches: Vec<(String, Option<Value>)>,
    /// The breaker state of each policy in use.
    pub(crate) breakers: Vec<(String, &'static str)>,
}

impl Writer {
    /// The names this registry knows — code defaults and handles in use — with their
    /// code defaults and the breaker states of the policies in use.
    pub(crate) fn known(&mut self) -> Known {
        let mut policies = std::collections::BTreeMap::new();
        let mut switches = std::collections::BTreeMap::new();
        for (key, value) in &self.defaults {
            match key {
                Key::Policy(name) => drop(policies.insert(name.clone(), Some(value.clone()))),
                Key::Switch(name) => drop(switches.insert(name.clone(), Some(value.clone()))),
                _ => {}
            }
        }
        let mut breakers = Vec::new();
        self.policies.for_each(|p| {
            policies.entry(p.name().to_owned()).or_insert(None);
            breakers.push((p.name().to_owned(), p.breaker_state().as_str()));
        });
        self.switches.for_each(|s| {
            switches.entry(s.name().to_owned()).or_insert(None);
        });
        breakers.sort();
        Known {
            policies: policies.into_iter().collect(),
            switches: switches.into_iter().collect(),
            breakers,
        }
    }

    /// A writer holding one key's code default and stored layers (values a registry
    /// accepted), to check a candidate value the way a registry would.
    pub(super) fn for_key(
        key: &Key,
        code_default: Option<&Value>,
        shared: Option<&Value>,
        app: Option<&Value>,
    ) -> Writer {
        let mut defaults = HashMap::new();
        if let Some(d) = code_default {
            defaults.insert(key.clone(), d.clone());
        }
        let mut w = Writer::new(defaults, None);
        for (layer, value) in [(Scope::Shared, shared), (Scope::App, app)] {
            if let Some(v) = value {
                w.layers[layer.index()].insert(key.clone(), v.clone());
            }
        }
        w
    }

    /// Checks `value` for `key` in `layer` as [`Writer::change`] would.
    pub(super) fn check(
        &self,
        key: &Key,
        layer: Scope,
        value: &Value,
    ) -> Result<(), SettingsError> {
        self.validate(key, layer, value)
    }

    /// `key`'s layers merged, decoded and checked: its effective value in full.
    pub(super) fn effective_of(&self, key: &Key) -> Result<Value, SettingsError> {
        fn full<T: Settings>(merged: &Value) -> Result<Value, SettingsError> {
            let settings = decode::from_value::<T>(merged)?;
            serde_json::to_value(&settings).map_err(|e| SettingsError::new("", e.to_string()))
        }
        let merged = self.merged(key, None);
        match key {
            Key::Policy(_) => full::<PolicySettings>(&merged),
            Key::Switch(_) => full::<SwitchSettings>(&merged),
            Key::Global => full::<GlobalSettings>(&merged),
            Key::Experiment(_) => full::<ExperimentSettings>(&merged),
            Key::ExperimentResult(_) => full::<ExperimentResult>(&merged),
        }
    }
}

/// What is kept of a refused value to tell it again: its length and a 64-bit hash, not
/// the bytes (up to 1.5 MB a key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    hash: u64,
}

impl Fingerprint {
    fn of(bytes: &[u8]) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        Fingerprint {
            len: bytes.len(),
            hash: h.finish(),
        }
    }
}
