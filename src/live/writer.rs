//! The writer side of the registry: layers of stored values, validation key by key,
//! rejections, and applying an [`Update`] as one snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imbl::OrdMap;
use serde_json::Value;

use super::handles::Handles;
use super::merge::merge;
use super::registry::{Changed, Shared, Snapshot};
use super::source::{Change, Health, Key, Rejection, RejectionKind, Scope, Update};
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
    /// A layer's latest value when it is in form but not valid merged with the layers
    /// below it: tried again whenever its key is refreshed (see [`Writer::fold`]).
    waiting: BTreeMap<(Scope, Key), Waiting>,
    /// Each rejection with the raw value it refused (a listing that brings the same
    /// value again is not rejected, logged and counted again). Slot: layer, key, and
    /// whether it is a `Conflict` (of the value in force) or a refusal of the latest
    /// write (both may stand at once).
    rejected: BTreeMap<Slot, (Rejection, Fingerprint)>,
    /// Values that became valid while waiting and are now in force, since the last
    /// [`Shared::apply`] (the etcd source mirrors them to its disk snapshot).
    promoted: Vec<(Scope, String, Value)>,
    /// The update being applied is a listing (values sent again, at the listing's
    /// revision), not new writes.
    listing: bool,
    /// The policies and switches in use, held weakly: the registry keeps none alive.
    pub(super) policies: Handles<WeakPolicy>,
    pub(super) switches: Handles<WeakSwitch>,
    /// Effective settings of every policy / switch with a default or a stored value;
    /// updated key by key (persistent maps: publishing a snapshot copies nothing).
    pub(super) effective: OrdMap<String, Arc<PolicySettings>>,
    pub(super) switch_values: OrdMap<String, Arc<SwitchSettings>>,
    pub(super) global: Arc<GlobalSettings>,
    rejected_view: OrdMap<Slot, Rejection>,
    pub(super) health: Health,
    revision: u64,
    /// The experiments' runs (none in a writer made to check one value).
    experiments: Option<Arc<Table>>,
    pub(super) experiment_values: OrdMap<String, Arc<ExperimentSettings>>,
    pub(super) experiment_results: OrdMap<String, Arc<ExperimentResult>>,
}

/// Where a rejection is kept: layer, key, and whether it is a `Conflict`.
pub(super) type Slot = (Scope, String, bool);

/// A layer's latest value, waiting to be valid merged with the layers below it.
struct Waiting {
    value: Value,
    /// The revision it arrived at.
    revision: u64,
    print: Fingerprint,
    /// Arrived in the update being applied: its rejection is returned to the source.
    fresh: bool,
}

/// What [`Shared::apply`] did besides publishing.
#[derive(Default)]
pub(crate) struct Applied {
    /// The values of the update it refused (`Malformed` or `Invalid`).
    pub(crate) rejections: Vec<Rejection>,
    /// Values that were waiting (refused as `Invalid` earlier, in any layer) and became
    /// valid with this update, now in force: layer, key, value.
    pub(crate) promoted: Vec<(Scope, String, Value)>,
}

impl Shared {
    pub(crate) fn apply(&self, update: Update) -> Applied {
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
                        .filter(|(l, _, _)| *l == layer)
                        .map(|(_, k, _)| k.clone());
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
        w.listing = listing;
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
            if w.refresh(key, revision, &mut rejections) {
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
        let promoted = std::mem::take(&mut w.promoted);
        drop(w);
        Applied {
            rejections,
            promoted,
        }
    }
}

impl Writer {
    /// A writer holding code defaults only, with their effective values computed.
    pub(super) fn new(defaults: HashMap<Key, Value>, experiments: Option<Arc<Table>>) -> Writer {
        let mut writer = Writer {
            defaults,
            layers: Default::default(),
            waiting: BTreeMap::new(),
            rejected: BTreeMap::new(),
            promoted: Vec::new(),
            listing: false,
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
            writer.refresh(&key, 0, &mut Vec::new());
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

    /// Recomputes `key`'s effective value (settling its layers: [`Writer::settle`]);
    /// updates its live handle and the published maps. Returns whether it changed.
    fn refresh(&mut self, key: &Key, revision: u64, rejections: &mut Vec<Rejection>) -> bool {
        let merged = self.settle(key, revision, rejections);
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
                merged,
                |w| &mut w.experiment_values,
                |t, name, v, home| t.set_experiment(name, v.map(|v| (v, home))),
            ),
            Key::ExperimentResult(name) => self.refresh_experiment::<ExperimentResult>(
                key,
                name,
                merged,
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
        merged: Value,
        map: fn(&mut Writer) -> &mut OrdMap<String, Arc<T>>,
        give: fn(&Table, &str, Option<T>, Scope),
    ) -> bool {
        let value = match key {
            Key::ExperimentResult(_) => self.record_of(key),
            _ => merged,
        };
        let value = if self.stored(key) {
            match decode::from_value::<T>(&value) {
                Ok(v) => Some(v),
                // No layer valid over the ones below it is left, and an experiment has
                // no defaults for its required fields: none is in force (each layer's
                // refusal or conflict is listed).
                Err(_) if matches!(key, Key::Experiment(_)) => None,
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
        // Cannot happen: the fold merges only layers valid over the ones below them, and
        // code defaults are validated when the registry is built. Keep what is in force.
        tracing::error!(%key, error = %e, "substation: effective settings invalid; keeping the previous ones");
        false
    }

    /// `key`'s layers folded bottom-up: library defaults ← code default ← shared ← app,
    /// each layer merged field by field over the ones below it when the merge is valid.
    /// Per layer: a waiting value (or `candidate`, for a check) valid over the layers
    /// below takes the layer's place; else the layer's last good value is merged if it
    /// is valid there, and left out whole if a change below made it invalid (a
    /// `Conflict`). A run's record
    /// (`ExperimentResult`) is never merged: each layer's is checked on its own.
    ///
    /// Returns the effective value (valid, if the code default is) and what was found
    /// per layer. Pure: [`Writer::settle`] applies the findings.
    fn fold(&self, key: &Key, candidate: Option<(Scope, &Value)>) -> (Value, [LayerFold; 2]) {
        let merges = !matches!(key, Key::ExperimentResult(_));
        let empty = Value::Object(Default::default());
        let mut acc = self.defaults.get(key).unwrap_or(&empty).clone();
        let mut found: [LayerFold; 2] = Default::default();
        for layer in [Scope::Shared, Scope::App] {
            let i = layer.index();
            let base = if merges { &acc } else { &empty };
            let waiting = match candidate {
                Some((l, v)) if l == layer => Some(v),
                _ if self.waiting.is_empty() => None,
                _ => self.waiting.get(&(layer, key.clone())).map(|w| &w.value),
            };
            if let Some(value) = waiting {
                match valid_over(key, base, value) {
                    Ok(merged) => {
                        found[i].promote = true;
                        if merges {
                            acc = merged;
                        }
                        continue;
                    }
                    Err(e) => found[i].invalid = Some(e),
                }
            }
            let Some(good) = self.layers[i].get(key) else {
                continue;
            };
            match valid_over(key, base, good) {
                Ok(merged) => {
                    if merges {
                        acc = merged;
                    }
                }
                Err(e) => {
                    // Left out whole, as the same value would be if it arrived now
                    // (a listing after a restart): a running and a restarted process
                    // reading the same store agree.
                    let message = format!(
                        "{}, merged with the layers below it since they changed; the value is left out \
                         until a change makes it valid",
                        e.message()
                    );
                    found[i].conflict = Some(SettingsError::new(e.field(), message));
                }
            }
        }
        (acc, found)
    }

    /// Folds `key` ([`Writer::fold`]) and applies what it found: a waiting value now
    /// valid becomes the layer's value (and its rejection goes); one still invalid keeps
    /// its `Invalid` rejection (returned in `rejections` if it arrived in this update);
    /// a value in force in conflict gets a `Conflict` rejection at `revision`, one no
    /// longer in conflict loses it. Returns the effective value.
    fn settle(&mut self, key: &Key, revision: u64, rejections: &mut Vec<Rejection>) -> Value {
        let (effective, found) = self.fold(key, None);
        let raw = key.to_string();
        for (layer, found) in [Scope::Shared, Scope::App].into_iter().zip(found) {
            let slot = (layer, key.clone());
            if found.promote {
                let Some(w) = self.waiting.remove(&slot) else {
                    continue; // cannot happen: only a waiting value is promoted
                };
                let refused = self.clear_rejection(layer, &raw, false);
                if !w.fresh {
                    if refused {
                        tracing::info!(%key, ?layer, revision = w.revision, "substation: a settings value refused earlier is valid now and in force");
                    }
                    self.promoted.push((layer, raw.clone(), w.value.clone()));
                }
                self.layers[layer.index()].insert(key.clone(), w.value);
            } else if let Some(error) = found.invalid
                && let Some(w) = self.waiting.get_mut(&slot)
            {
                let (at, print, fresh) = (w.revision, w.print, std::mem::take(&mut w.fresh));
                // Not in form on its own: malformed, dropped (checked only here, on
                // the failure path; a value in force passed the merged decoding, which
                // checks the form of every field it has).
                let (error, kind) = match Writer::form(key, &w.value) {
                    Err(e) => {
                        self.waiting.remove(&slot);
                        (e, RejectionKind::Malformed)
                    }
                    Ok(()) => (error, RejectionKind::Invalid),
                };
                let r = self.reject(layer, raw.clone(), at, error, print, kind);
                if fresh {
                    rejections.push(r);
                }
            }
            match found.conflict {
                Some(error) => {
                    let print = self.layers[layer.index()]
                        .get(key)
                        .map(|v| Fingerprint::of(v.to_string().as_bytes()))
                        .unwrap_or(Fingerprint { len: 0, hash: 0 });
                    let kind = RejectionKind::Conflict;
                    self.reject(layer, raw.clone(), revision, error, print, kind);
                }
                None => {
                    self.clear_rejection(layer, &raw, true);
                }
            }
        }
        effective
    }

    /// A run's record (`ExperimentResult`): one layer's value, the application's if it
    /// has one, never merged — a verdict must not lend its fields to another layer's
    /// record.
    fn record_of(&self, key: &Key) -> Value {
        self.layers[Scope::App.index()]
            .get(key)
            .or_else(|| self.layers[Scope::Shared.index()].get(key))
            .cloned()
            .unwrap_or_default()
    }

    /// Checks a value's form on its own: the documented form, every field known and of
    /// its kind (ranges and rules are checked merged, by the fold).
    fn form(key: &Key, value: &Value) -> Result<(), SettingsError> {
        match key {
            Key::Policy(_) => decode::decode::<PolicySettings>(value).map(drop),
            Key::Switch(_) => decode::decode::<SwitchSettings>(value).map(drop),
            Key::Global => decode::decode::<GlobalSettings>(value).map(drop),
            Key::Experiment(_) => decode::decode::<ExperimentSettings>(value).map(drop),
            Key::ExperimentResult(_) => decode::decode::<ExperimentResult>(value).map(drop),
        }
    }

    fn reject(
        &mut self,
        layer: Scope,
        key: String,
        revision: u64,
        error: SettingsError,
        print: Fingerprint,
        kind: RejectionKind,
    ) -> Rejection {
        let slot = (layer, key.clone(), kind == RejectionKind::Conflict);
        if let Some((old, refused)) = self.rejected.get_mut(&slot)
            && *refused == print
            && old.kind == kind
            && old.error.to_string() == error.to_string()
        {
            // The same value refused again: said once. A new write of it (not a
            // listing, which sends it again at its own revision) is refused at its own
            // revision, which is what a tool waiting on that write looks for.
            if !self.listing && kind != RejectionKind::Conflict && old.revision != revision {
                old.revision = revision;
                self.rejected_view.insert(slot, old.clone());
            }
            return old.clone();
        }
        // Both come from outside: the key quoted, escaped and cut if long; the error
        // (escaped and cut already) quoted, so that neither can pass for another field.
        let (k, e) = (Bounded::key(&key), error.to_string());
        match kind {
            RejectionKind::Malformed => {
                tracing::warn!(key = %k, ?layer, revision, error = ?e, "settings value rejected; keeping the last good value")
            }
            RejectionKind::Invalid => {
                tracing::warn!(key = %k, ?layer, revision, error = ?e, "settings value invalid over the layers below it; keeping the last good value, and the value to try again when they change")
            }
            RejectionKind::Conflict => {
                tracing::error!(key = %k, ?layer, revision, error = ?e, "settings value in force conflicts with a change below it; left out until a change makes it valid")
            }
        }
        let label = Bounded::new(&key, 96, 32).to_string();
        metrics::counter!(crate::metrics::SETTINGS_REJECTED, "key" => label, "kind" => kind.as_str()).increment(1);
        let r = Rejection {
            kind,
            layer,
            key,
            revision,
            error,
        };
        self.rejected.insert(slot.clone(), (r.clone(), print));
        self.rejected_view.insert(slot, r.clone());
        r
    }

    /// Drops the rejection in `layer`'s slot for `key` (the conflict, or the refusal of
    /// the latest write); whether there was one.
    fn clear_rejection(&mut self, layer: Scope, key: &str, conflict: bool) -> bool {
        let slot = (layer, key.to_owned(), conflict);
        let had = self.rejected.remove(&slot).is_some();
        if had {
            self.rejected_view.remove(&slot);
        }
        had
    }

    /// Takes one change into the layers. A value is parsed here (JSON, no field twice)
    /// and waits; whether it is valid over the layers below it, and if not whether it is
    /// malformed or invalid, is for [`Writer::settle`] to say when `key` is refreshed (it
    /// is pushed on `touched`).
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
                    Some(bytes) => {
                        let print = Fingerprint::of(&bytes);
                        let kind = RejectionKind::Malformed;
                        Some(self.reject(layer, raw, revision, error, print, kind))
                    }
                    None => {
                        self.clear_rejection(layer, &raw, false);
                        None
                    }
                };
            }
        };
        let slot = (layer, key.clone());
        match value {
            None => {
                let refused = self.clear_rejection(layer, &raw, false);
                let waiting = self.waiting.remove(&slot).is_some();
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
                } else if refused || waiting {
                    touched.push(key);
                }
                None
            }
            Some(bytes) => {
                let print = Fingerprint::of(&bytes);
                match decode::parse(&bytes) {
                    // The value in force again (a listing, a repeated write), with
                    // nothing waiting or refused in its slot: nothing changes.
                    Ok(value)
                        if self.layers[layer.index()].get(&key) == Some(&value)
                            && !self.waiting.contains_key(&slot)
                            && !self.rejected.contains_key(&(layer, raw.clone(), false)) =>
                    {
                        None
                    }
                    Ok(value) => {
                        let fresh = true;
                        let w = Waiting {
                            value,
                            revision,
                            print,
                            fresh,
                        };
                        self.waiting.insert(slot, w);
                        touched.push(key);
                        None
                    }
                    Err(error) => {
                        // The latest write of this layer: an older one waiting is gone.
                        if self.waiting.remove(&slot).is_some() {
                            touched.push(key);
                        }
                        let kind = RejectionKind::Malformed;
                        Some(self.reject(layer, raw, revision, error, print, kind))
                    }
                }
            }
        }
    }
}

/// What [`Writer::fold`] found in one layer of a key.
#[derive(Default)]
struct LayerFold {
    /// The layer's waiting value is valid over the layers below: it takes the layer's
    /// place.
    promote: bool,
    /// Why the waiting value is not valid over the layers below.
    invalid: Option<SettingsError>,
    /// Why the layer's value in force is not valid over the layers below (it is left
    /// out).
    conflict: Option<SettingsError>,
}

/// `base` with `value` merged over it, if the result is valid for `key`.
fn valid_over(key: &Key, base: &Value, value: &Value) -> Result<Value, SettingsError> {
    fn check<T: Settings>(merged: &Value) -> Result<(), SettingsError> {
        decode::from_value::<T>(merged).map(drop)
    }
    let mut merged = base.clone();
    merge(&mut merged, value);
    match key {
        Key::Policy(_) => check::<PolicySettings>(&merged),
        Key::Switch(_) => check::<SwitchSettings>(&merged),
        Key::Global => check::<GlobalSettings>(&merged),
        Key::Experiment(_) => check::<ExperimentSettings>(&merged),
        Key::ExperimentResult(_) => check::<ExperimentResult>(&merged),
    }?;
    Ok(merged)
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

    /// Checks `value` for `key` in `layer` as the registry would: its form on its own,
    /// then valid over the layers below it.
    pub(super) fn check(
        &self,
        key: &Key,
        layer: Scope,
        value: &Value,
    ) -> Result<(), SettingsError> {
        Writer::form(key, value)?;
        let (_, found) = self.fold(key, Some((layer, value)));
        match &found[layer.index()] {
            LayerFold { promote: true, .. } => Ok(()),
            LayerFold {
                invalid: Some(e), ..
            } => Err(e.clone()),
            _ => Err(SettingsError::new("", "not valid over the layers below it")),
        }
    }

    /// The values in force that the layers below them put in conflict: layer and why
    /// (see [`RejectionKind::Conflict`]).
    pub(super) fn conflicts_of(&self, key: &Key) -> Vec<(Scope, SettingsError)> {
        let (_, found) = self.fold(key, None);
        [Scope::Shared, Scope::App]
            .into_iter()
            .zip(found)
            .filter_map(|(layer, f)| Some((layer, f.conflict?)))
            .collect()
    }

    /// `key`'s layers merged, decoded and checked: its effective value in full.
    pub(super) fn effective_of(&self, key: &Key) -> Result<Value, SettingsError> {
        fn full<T: Settings>(merged: &Value) -> Result<Value, SettingsError> {
            let settings = decode::from_value::<T>(merged)?;
            serde_json::to_value(&settings).map_err(|e| SettingsError::new("", e.to_string()))
        }
        let merged = match key {
            Key::ExperimentResult(_) => self.record_of(key),
            _ => self.fold(key, None).0,
        };
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
