//! The registry: [`Builder`], [`Substation`] and the [`Snapshot`]s it publishes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use imbl::OrdMap;

use serde_json::Value;

use super::error::{BuildError, NameKind};
use super::source::{Health, Key, Rejection, Sink, Source, valid_name};
use super::writer::Writer;
use crate::Policy;
use crate::clock::Clock;
use crate::settings::decode::Settings;
use crate::settings::{
    Bounded, ExperimentResult, ExperimentSettings, GlobalSettings, PolicySettings, SettingsError,
};
use crate::switch::{Switch, SwitchSettings};

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
    ///
    /// Fails with [`BuildError::InvalidName`] or [`BuildError::InvalidDefault`] for a
    /// bad code default, and with [`BuildError::Source`] if a source fails to start
    /// (sources started before it see the registry gone: [`Sink::is_closed`]).
    pub fn build(self) -> Result<Substation, BuildError> {
        let mut defaults = HashMap::new();
        for (name, settings) in self.defaults {
            if !valid_name(&name) {
                let kind = NameKind::Policy;
                return Err(BuildError::InvalidName { kind, name });
            }
            let key = Key::Policy(name);
            defaults.insert(key.clone(), code_default(key, &settings)?);
        }
        for (name, settings) in self.switch_defaults {
            if !valid_name(&name) {
                let kind = NameKind::Switch;
                return Err(BuildError::InvalidName { kind, name });
            }
            let key = Key::Switch(name);
            defaults.insert(key.clone(), code_default(key, &settings)?);
        }
        defaults.insert(Key::Global, code_default(Key::Global, &self.global)?);
        let (pending_tx, _) = tokio::sync::watch::channel(self.sources.len());
        let (changes, _) = tokio::sync::broadcast::channel(CHANGES_CAPACITY);
        let (alive, alive_rx) = tokio::sync::watch::channel(());
        let clock = self.clock.unwrap_or_default();
        let experiments = crate::experiment::run::Table::new(clock.clone());
        let writer = Writer::new(defaults, Some(experiments.clone()));
        let shared = Arc::new(Shared {
            experiments,
            clock,
            snapshot: ArcSwap::from_pointee(writer.snapshot()),
            writer: Mutex::new(writer),
            pending: pending_tx,
            changes,
            published: tokio::sync::watch::channel(0).0,
            _alive: alive,
        });
        for (index, source) in self.sources.into_iter().enumerate() {
            source
                .start(Sink {
                    shared: Arc::downgrade(&shared),
                    initialized: Default::default(),
                    alive: alive_rx.clone(),
                })
                .map_err(|error| BuildError::Source { index, error })?;
        }
        Ok(Substation { shared })
    }
}

/// `Ok` if `name` is a valid name for a `kind` (policy, switch).
fn check_name(name: &str, kind: &str) -> Result<(), SettingsError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(SettingsError::new(
        "",
        format!(
            "{} is not a valid {kind} name (1 to 128 of A-Z a-z 0-9 _ . -)",
            Bounded::key(name)
        ),
    ))
}

/// A code default, validated, as the JSON object the writer merges.
fn code_default<T: Settings>(key: Key, settings: &T) -> Result<Value, BuildError> {
    let invalid = |error| BuildError::InvalidDefault {
        key: key.clone(),
        error,
    };
    settings.check().map_err(invalid)?;
    serde_json::to_value(settings).map_err(|e| invalid(SettingsError::new("", e.to_string())))
}

/// How many change notices a slow subscriber may fall behind before it misses some.
pub(super) const CHANGES_CAPACITY: usize = 1024;

/// A notice that settings changed: which keys, at which revision. See
/// [`Substation::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The revision after the change.
    pub revision: u64,
    /// The keys whose effective value changed (e.g. `policies/recommendations`).
    pub keys: Arc<[String]>,
}

/// The registry of an application's policies; see the [module docs](super).
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

    /// Every experiment run this process knows, in name order: settings, this process's
    /// counts per cohort, state and verdict (see [`experiment`](crate::experiment)).
    pub fn experiments(&self) -> Vec<crate::experiment::ExperimentStatus> {
        self.shared.experiments.status()
    }

    /// The cohort `key` belongs to in experiment `name`'s current run here, running or
    /// stopped (`None`: in neither, or no such experiment): the edge's bucketing, for
    /// tests and tools. While the run is live the edge assigns exactly this, unless an
    /// experiment earlier by name holds the key (cohorts of concurrent runs are disjoint).
    pub fn experiment_cohort(&self, name: &str, key: &[u8]) -> Option<crate::experiment::Arm> {
        self.shared.experiments.run(name)?.arm_of(key)
    }

    pub(crate) fn experiment_table(&self) -> Arc<crate::experiment::run::Table> {
        self.shared.experiments.clone()
    }

    /// The live policy `name`: the one in use while any handle, layer or service of it
    /// is alive, else a new one with the effective settings (and a fresh breaker). The
    /// registry keeps no policy alive. Cheap enough for setup code (it takes the
    /// registry's writer lock), not meant for each request: keep the handle, or the
    /// layers built from it.
    ///
    /// # Panics
    /// If `name` is not a valid name (1 to 128 of `A-Z a-z 0-9 _ . -`): names come from
    /// code, not from input. [`Substation::try_policy`] returns an error instead.
    pub fn policy(&self, name: &str) -> Policy {
        self.try_policy(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The live policy `name`, like [`Substation::policy`], or an error if `name` is not
    /// a valid name (for names that come from input).
    pub fn try_policy(&self, name: &str) -> Result<Policy, SettingsError> {
        check_name(name, "policy")?;
        let mut w = self.shared.lock();
        if let Some(p) = w.policies.get(name) {
            return Ok(p);
        }
        let settings = match w.effective.get(name) {
            Some(s) => (**s).clone(),
            None => PolicySettings::default(),
        };
        let policy = Policy::with_clock(name, settings, self.shared.clock.clone())?;
        policy.set_shed(w.global.shed_non_critical && !policy.settings().critical);
        w.policies.insert(name, policy.downgrade());
        Ok(policy)
    }

    /// The live switch `name`: the one in use while any handle of it is alive, else a
    /// new one with the effective value (and fresh evaluation counts). For setup code,
    /// like [`Substation::policy`].
    ///
    /// # Panics
    /// If `name` is not a valid name. [`Substation::try_switch`] returns an error
    /// instead.
    pub fn switch(&self, name: &str) -> Switch {
        self.try_switch(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The live switch `name`, like [`Substation::switch`], or an error if `name` is not
    /// a valid name (for names that come from input).
    pub fn try_switch(&self, name: &str) -> Result<Switch, SettingsError> {
        check_name(name, "switch")?;
        let mut w = self.shared.lock();
        if let Some(s) = w.switches.get(name) {
            return Ok(s);
        }
        let settings = match w.switch_values.get(name) {
            Some(s) => (**s).clone(),
            None => SwitchSettings::default(),
        };
        let switch = Switch::detached(name, settings)?;
        w.switches.insert(name, switch.downgrade());
        Ok(switch)
    }

    /// Every policy in use now — made through this registry and still held by a handle,
    /// layer, service or call — sorted by name. For status pages and diagnostics.
    pub fn policies(&self) -> Vec<Policy> {
        let mut all = Vec::new();
        self.shared
            .lock()
            .policies
            .for_each(|p| all.push(p.clone()));
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Every switch in use now (made through this registry and still held), sorted by
    /// name.
    pub fn switches(&self) -> Vec<Switch> {
        let mut all = Vec::new();
        self.shared
            .lock()
            .switches
            .for_each(|s| all.push(s.clone()));
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
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
    pub(super) revision: u64,
    pub(super) policies: OrdMap<String, Arc<PolicySettings>>,
    pub(super) switches: OrdMap<String, Arc<SwitchSettings>>,
    pub(super) global: Arc<GlobalSettings>,
    pub(super) rejected: OrdMap<super::writer::Slot, Rejection>,
    pub(super) health: Health,
    pub(super) experiments: OrdMap<String, Arc<ExperimentSettings>>,
    pub(super) experiment_results: OrdMap<String, Arc<ExperimentResult>>,
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

    /// The experiment `name` (key `experiments/<name>`), if one is stored.
    pub fn experiment(&self, name: &str) -> Option<&Arc<ExperimentSettings>> {
        self.experiments.get(name)
    }

    /// Every stored experiment, in name order.
    pub fn experiments(&self) -> impl ExactSizeIterator<Item = (&str, &Arc<ExperimentSettings>)> {
        self.experiments.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The record of experiment `name`'s run in the store (`experiments/<name>/result`).
    pub fn experiment_result(&self, name: &str) -> Option<&Arc<ExperimentResult>> {
        self.experiment_results.get(name)
    }

    /// How current the settings are.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

pub(crate) struct Shared {
    pub(super) clock: Clock,
    /// The experiments' runs (also held by the edge layers).
    pub(super) experiments: Arc<crate::experiment::run::Table>,
    pub(super) writer: Mutex<Writer>,
    pub(super) snapshot: ArcSwap<Snapshot>,
    /// Sources that have not yet said `initialized`.
    pub(super) pending: tokio::sync::watch::Sender<usize>,
    pub(super) changes: tokio::sync::broadcast::Sender<Changed>,
    /// Counts published snapshots (every apply and health change, a rejection too):
    /// what the fleet presence task waits on.
    pub(super) published: tokio::sync::watch::Sender<u64>,
    /// Dropped with the registry, which tells sources to stop (`Sink::closed`).
    _alive: tokio::sync::watch::Sender<()>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_health(&self, health: Health) {
        let mut w = self.lock();
        self.experiments.set_health(&health);
        w.health = health;
        self.publish(w.snapshot());
    }

    /// Publishes `snapshot` and tells the presence task (under the writer lock).
    pub(super) fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn source_initialized(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100,000 names used once each through one registry: it keeps none of them alive,
    /// and its maps stay bounded by the handles alive at once.
    #[test]
    fn the_registry_keeps_no_policy_or_switch_alive() {
        let sub = Substation::builder().build().unwrap();
        let kept_policy = sub.policy("kept");
        let kept_switch = sub.switch("kept");
        let mut alive = Vec::new();
        let (mut most_policies, mut most_switches) = (0, 0);
        for i in 0..100_000 {
            let policy = sub.policy(&format!("p{i}"));
            let switch = sub.switch(&format!("s{i}"));
            if i % 1_000 == 0 {
                // A few stay in use: the bound follows the handles alive at once.
                alive.push((policy, switch));
            }
            let w = sub.shared.lock();
            let bound = 2 * (alive.len() + 2) + 64;
            assert!(w.policies.len() <= bound, "{} at {i}", w.policies.len());
            assert!(w.switches.len() <= bound, "{} at {i}", w.switches.len());
            most_policies = most_policies.max(w.policies.len());
            most_switches = most_switches.max(w.switches.len());
        }
        assert!(most_policies <= 2 * 102 + 64 && most_switches <= 2 * 102 + 64);
        // The handles in use are the ones the registry hands out again.
        let again = sub.policy("kept");
        assert!(again.same(&kept_policy));
        let (policy, switch) = &alive[50];
        assert!(sub.policy("p50000").same(policy));
        sub.switch("s50000").update(SwitchSettings::on()).unwrap();
        assert!(switch.is_on("u"), "the same switch");
        assert!(kept_switch.settings().on.is_none());
    }
}
