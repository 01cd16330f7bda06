//! The runs of experiments in one registry: the table the edge layers read, each run's
//! counts, the judge, and the task that writes a run's records to the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::live::{Health, Scope, Store};
use crate::settings::{
    CohortCounts, ExperimentResult, ExperimentSettings, FaultSettings, RunState,
};
use crate::switch::murmur::Prefix;

use super::Arm;

const RUNNING: u8 = 0;
const PASSED: u8 = 1;
const ABORTED: u8 = 2;
const HALTED: u8 = 3;
/// The value was deleted or replaced: the run ends without a verdict of its own.
const WITHDRAWN: u8 = 4;

/// Runs in state running, in every registry of the process: the fault layers skip
/// looking for a cohort while it is 0 (a count, never a list: nothing accumulates).
pub(crate) static RUNNING_RUNS: AtomicUsize = AtomicUsize::new(0);

/// One cohort's counts (its own cache line: the two cohorts are written by different
/// requests).
#[derive(Default)]
#[repr(align(64))]
struct Counts {
    requests: AtomicU64,
    successes: AtomicU64,
}

impl Counts {
    fn read(&self) -> CohortCounts {
        // Successes first: a concurrent record never makes them exceed the requests.
        let successes = self.successes.load(Ordering::Acquire);
        let requests = self.requests.load(Ordering::Acquire);
        CohortCounts {
            requests,
            successes: successes.min(requests),
        }
    }
}

/// What a run's task has to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// The `running` record (this process saw the run first, as far as it knows).
    Start,
    /// The verdict this process reached.
    Verdict,
}

/// One run of one experiment in this process.
pub(crate) struct Run {
    pub(crate) name: Arc<str>,
    /// A hash of the experiment's value: the run's identity across processes.
    pub(crate) id: u64,
    pub(crate) settings: Arc<ExperimentSettings>,
    /// What the experiment injects, as fault settings (target: every call handed to it).
    pub(crate) fault: FaultSettings,
    prefix: Prefix,
    /// `h < control_below`: control; `h >= experiment_from`: experiment (`h` the
    /// 32-bit murmur3 of name ++ key, as the switches bucket).
    control_below: u64,
    experiment_from: u64,
    /// The layer the experiment's value lives in: where its records are written.
    home: Scope,
    clock: Clock,
    state: AtomicU8,
    /// The clock's ms at which the run has lasted `max_duration_ms`.
    ends_ms: AtomicU64,
    /// The clock's ms from which the run is paused for want of its store (`u64::MAX`:
    /// the store is there).
    offline_ms: AtomicU64,
    /// Wall-clock start (ms since the epoch).
    started_wall: AtomicU64,
    counts: [Counts; 2],
    /// The final record, once stopped (this process's verdict or the store's).
    verdict: Mutex<Option<ExperimentResult>>,
    pending: Mutex<Pending>,
    /// The store's final result for this run has been seen (so a deleted result means
    /// "run it again", not "not written yet").
    settled: AtomicBool,
    /// The pause for want of the store has been logged.
    paused_logged: AtomicBool,
    pub(crate) notify: tokio::sync::Notify,
    table: Weak<Table>,
    /// Metric handles, made with the recorder current when the run started (a handle
    /// holds no invariant a panic could break: the registry stays unwind-safe).
    metrics: std::panic::AssertUnwindSafe<RunMetrics>,
}

/// A run's metric handles.
struct RunMetrics {
    /// `[cohort][success, failure]`.
    requests: [[metrics::Counter; 2]; 2],
    running: metrics::Gauge,
    /// Passed, aborted, halted.
    verdicts: [metrics::Counter; 3],
}

impl RunMetrics {
    fn new(name: &str) -> RunMetrics {
        let request = |cohort: &'static str, outcome: &'static str| {
            metrics::counter!(
                crate::metrics::EXPERIMENT_REQUESTS,
                "experiment" => name.to_owned(),
                "cohort" => cohort,
                "outcome" => outcome
            )
        };
        let verdict = |verdict: RunState| {
            metrics::counter!(
                crate::metrics::EXPERIMENT_VERDICTS,
                "experiment" => name.to_owned(),
                "verdict" => verdict.as_str()
            )
        };
        RunMetrics {
            requests: [
                [request("control", "success"), request("control", "failure")],
                [
                    request("experiment", "success"),
                    request("experiment", "failure"),
                ],
            ],
            running: metrics::gauge!(
                crate::metrics::EXPERIMENT_RUNNING,
                "experiment" => name.to_owned()
            ),
            verdicts: [
                verdict(RunState::Passed),
                verdict(RunState::Aborted),
                verdict(RunState::Halted),
            ],
        }
    }

    /// The counts so far, and whether the run assigns cohorts.
    fn push(&self, (control, experiment): (CohortCounts, CohortCounts), running: bool) {
        for (c, [ok, failed]) in [control, experiment].iter().zip(&self.requests) {
            ok.absolute(c.successes);
            failed.absolute(c.requests - c.successes);
        }
        self.running.set(if running { 1.0 } else { 0.0 });
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("name", &self.name)
            .field("id", &format_args!("{:016x}", self.id))
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if *self.state.get_mut() == RUNNING {
            RUNNING_RUNS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// `percent` of 2³² (`0..=100`).
fn share(percent: f64) -> u64 {
    ((percent / 100.0) * 4_294_967_296.0).round() as u64
}

/// FNV-1a, 64 bits: a run's id from its canonical JSON (stable across processes and
/// versions, unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The run id of experiment `name` with this effective value.
pub(crate) fn run_id(name: &str, settings: &ExperimentSettings) -> u64 {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend(serde_json::to_vec(settings).unwrap_or_default());
    fnv1a(&bytes)
}

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Run {
    fn new(name: &str, settings: Arc<ExperimentSettings>, home: Scope, table: &Arc<Table>) -> Run {
        let clock = table.clock.clone();
        let now = clock.now_ms();
        RUNNING_RUNS.fetch_add(1, Ordering::AcqRel);
        let fault = FaultSettings {
            abort_percent: settings.abort_percent,
            delay_percent: settings.delay_percent,
            delay_ms: settings.delay_ms,
            ..FaultSettings::default()
        };
        Run {
            name: name.into(),
            id: run_id(name, &settings),
            prefix: Prefix::new(name.as_bytes()),
            control_below: share(settings.control_percent),
            experiment_from: (1u64 << 32) - share(settings.experiment_percent),
            fault,
            home,
            state: AtomicU8::new(RUNNING),
            ends_ms: AtomicU64::new(now.saturating_add(settings.max_duration_ms)),
            offline_ms: AtomicU64::new(u64::MAX),
            started_wall: AtomicU64::new(wall_ms()),
            counts: Default::default(),
            verdict: Mutex::new(None),
            pending: Mutex::new(Pending::Nothing),
            settled: AtomicBool::new(false),
            paused_logged: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            table: Arc::downgrade(table),
            metrics: std::panic::AssertUnwindSafe(RunMetrics::new(name)),
            settings,
            clock,
        }
    }

    /// This process's id for records: the one its source announces, else host and pid.
    fn instance(&self) -> String {
        self.table
            .upgrade()
            .and_then(|t| lock(&t.instance).clone())
            .unwrap_or_else(|| super::default_instance_id().to_owned())
    }

    /// The run id as written in results: 16 hex digits.
    pub(crate) fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }

    /// The cohort of a key, if any.
    #[inline]
    pub(crate) fn arm_of(&self, key: &[u8]) -> Option<Arm> {
        self.bucket().arm_of(key)
    }

    fn bucket(&self) -> Bucket {
        Bucket {
            prefix: self.prefix,
            control_below: self.control_below,
            experiment_from: self.experiment_from,
        }
    }

    /// Whether the run assigns cohorts and injects now: running, within its duration,
    /// and not paused for want of its store. Reads the clock.
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        if self.state.load(Ordering::Acquire) != RUNNING {
            return false;
        }
        let until = self
            .ends_ms
            .load(Ordering::Relaxed)
            .min(self.offline_ms.load(Ordering::Relaxed));
        let now = self.clock.now_ms();
        if now < until {
            return true;
        }
        self.time_up(now);
        false
    }

    /// The duration or the store's absence caught up with the run (seen by a request
    /// before the task's timer).
    #[cold]
    fn time_up(&self, now: u64) {
        if now >= self.ends_ms.load(Ordering::Relaxed) {
            self.stop_passed();
        } else {
            self.log_paused();
        }
    }

    fn log_paused(&self) {
        if !self.paused_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                experiment = %self.name,
                offline_stop_ms = self.settings.offline_stop_ms,
                "substation: experiment paused: the settings store has been unreachable too long; injecting nothing until it is back"
            );
        }
    }

    pub(crate) fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            RUNNING => RunState::Running,
            PASSED => RunState::Passed,
            ABORTED => RunState::Aborted,
            _ => RunState::Halted,
        }
    }

    fn is_withdrawn(&self) -> bool {
        self.state.load(Ordering::Acquire) == WITHDRAWN
    }

    pub(crate) fn counts(&self) -> (CohortCounts, CohortCounts) {
        (self.counts[0].read(), self.counts[1].read())
    }

    /// Records a finished request of a cohort this process assigned, and judges.
    pub(crate) fn record(&self, arm: Arm, success: bool) {
        if self.state.load(Ordering::Acquire) != RUNNING {
            return; // the verdict's counts stay those it was reached on
        }
        let c = &self.counts[arm as usize];
        if success {
            c.successes.fetch_add(1, Ordering::AcqRel);
        }
        c.requests.fetch_add(1, Ordering::AcqRel);
        let (control, experiment) = self.counts();
        if let Some(judged) = judge(&self.settings, control, experiment) {
            self.stop(RunState::Aborted, judged.reason, Some(judged.deviation));
        }
    }

    fn stop_passed(&self) {
        let reason = format!(
            "ran its full duration ({} ms) within the bound",
            self.settings.max_duration_ms
        );
        let (c, e) = self.counts();
        let deviation =
            (c.requests > 0 && e.requests > 0).then(|| c.success_percent() - e.success_percent());
        self.stop(RunState::Passed, reason, deviation);
    }

    /// Stops the run with this process's verdict; `false` if it was stopped already.
    pub(crate) fn stop(&self, to: RunState, reason: String, deviation: Option<f64>) -> bool {
        let stopped = self.stop_quietly(to, reason, deviation);
        if stopped && let Some(table) = self.table.upgrade() {
            table.republish();
        }
        stopped
    }

    /// [`Run::stop`] without publishing the table's active list (its caller does).
    fn stop_quietly(&self, to: RunState, reason: String, deviation: Option<f64>) -> bool {
        let code = match to {
            RunState::Passed => PASSED,
            RunState::Aborted => ABORTED,
            _ => HALTED,
        };
        if self
            .state
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        RUNNING_RUNS.fetch_sub(1, Ordering::AcqRel);
        let (control, experiment) = self.counts();
        let record = ExperimentResult {
            run: self.id_hex(),
            state: to,
            started_ms: self.started_wall.load(Ordering::Relaxed),
            stopped_ms: Some(wall_ms()),
            reason: Some(reason),
            control,
            experiment,
            deviation_points: deviation.map(|d| (d * 1000.0).round() / 1000.0),
            by: Some(self.instance()),
        };
        log_verdict(&self.name, &record, "this process");
        self.metrics.verdicts[usize::from(code - 1)].increment(1);
        *lock(&self.verdict) = Some(record);
        *lock(&self.pending) = Pending::Verdict;
        self.notify.notify_one();
        true
    }

    /// Another process's verdict for this run, from the store.
    fn settle(&self, result: &ExperimentResult) {
        self.settled.store(true, Ordering::Release);
        let code = match result.state {
            RunState::Passed => PASSED,
            RunState::Aborted => ABORTED,
            _ => HALTED,
        };
        if self
            .state
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            RUNNING_RUNS.fetch_sub(1, Ordering::AcqRel);
            log_verdict(&self.name, result, "the store");
            *lock(&self.verdict) = Some(result.clone());
            *lock(&self.pending) = Pending::Nothing;
            self.notify.notify_one();
        }
    }

    /// The start another process recorded for this run.
    fn adopt_start(&self, started_wall: u64) {
        if self.started_wall.swap(started_wall, Ordering::AcqRel) == started_wall {
            return;
        }
        // ends = now + what is left of the duration from the recorded start.
        let elapsed = wall_ms().saturating_sub(started_wall);
        let left = self.settings.max_duration_ms.saturating_sub(elapsed);
        self.ends_ms
            .store(self.clock.now_ms().saturating_add(left), Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn withdraw(&self) {
        if self.state.swap(WITHDRAWN, Ordering::AcqRel) == RUNNING {
            RUNNING_RUNS.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(experiment = %self.name, run = %self.id_hex(), "substation: experiment withdrawn (its value was deleted or changed) before a verdict");
        }
        *lock(&self.pending) = Pending::Nothing;
        self.notify.notify_one();
    }

    fn set_offline(&self, since: Option<u64>) {
        let at = since.map_or(u64::MAX, |s| {
            s.saturating_add(self.settings.offline_stop_ms)
        });
        self.offline_ms.store(at, Ordering::Relaxed);
        if since.is_none() && self.paused_logged.swap(false, Ordering::AcqRel) {
            tracing::info!(experiment = %self.name, "substation: experiment resumed: the settings store is back");
        }
        self.notify.notify_one();
    }

    /// What the status page and the CLI show.
    pub(crate) fn status(&self) -> super::ExperimentStatus {
        let (control, experiment) = self.counts();
        let verdict = lock(&self.verdict).clone();
        let state = self.state();
        let now = self.clock.now_ms();
        let paused = state == RunState::Running
            && now >= self.offline_ms.load(Ordering::Relaxed)
            && !self.is_withdrawn();
        super::ExperimentStatus {
            name: self.name.to_string(),
            policy: self.settings.policy.clone(),
            run: self.id_hex(),
            state,
            paused,
            started_ms: self.started_wall.load(Ordering::Relaxed),
            left_ms: (state == RunState::Running)
                .then(|| self.ends_ms.load(Ordering::Relaxed).saturating_sub(now)),
            control,
            experiment,
            control_percent: self.settings.control_percent,
            experiment_percent: self.settings.experiment_percent,
            max_drop_points: self.settings.max_drop_points,
            min_requests: self.settings.min_requests,
            verdict,
        }
    }
}

fn log_verdict(name: &str, r: &ExperimentResult, by: &str) {
    let reason = crate::settings::Bounded::new(r.reason.as_deref().unwrap_or(""), 200, 40);
    let (c, e) = (r.control, r.experiment);
    // One event, at `warn` for an abort or a halt, else `info` (a level must be constant).
    macro_rules! stopped {
        ($level:ident) => {
            tracing::$level!(
                experiment = %name,
                verdict = r.state.as_str(),
                reason = %reason,
                control_requests = c.requests,
                control_success_percent = c.success_percent(),
                experiment_requests = e.requests,
                experiment_success_percent = e.success_percent(),
                deviation_points = r.deviation_points,
                decided_by = by,
                "substation: experiment stopped"
            )
        };
    }
    match r.state {
        RunState::Aborted | RunState::Halted => stopped!(warn),
        _ => stopped!(info),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An experiment judged out of bounds.
#[derive(Debug, PartialEq)]
pub(crate) struct Judged {
    pub(crate) deviation: f64,
    pub(crate) reason: String,
}

/// The one-sided z of the rule: 99 % confidence.
pub(crate) const Z: f64 = 2.326;

/// The rule: with at least `min_requests` finished requests in each cohort, the run is
/// aborted when the control's success rate minus the experiment's exceeds
/// `max_drop_points` **and** a one-sided test says so at 99 % confidence:
/// `(d − b) / se > 2.326`, `d` the difference of the rates, `b` the bound,
/// `se = √(p_c(1−p_c)/n_c + p_e(1−p_e)/n_e)` (with `se = 0` — both rates 0 or 1 — the
/// difference alone decides).
pub(crate) fn judge(
    s: &ExperimentSettings,
    control: CohortCounts,
    experiment: CohortCounts,
) -> Option<Judged> {
    if control.requests < s.min_requests || experiment.requests < s.min_requests {
        return None;
    }
    let (nc, ne) = (control.requests as f64, experiment.requests as f64);
    let pc = control.successes as f64 / nc;
    let pe = experiment.successes as f64 / ne;
    let d = pc - pe;
    let b = s.max_drop_points / 100.0;
    if d <= b {
        return None;
    }
    let se = (pc * (1.0 - pc) / nc + pe * (1.0 - pe) / ne).sqrt();
    if se > 0.0 && (d - b) / se <= Z {
        return None;
    }
    Some(Judged {
        deviation: d * 100.0,
        reason: format!(
            "experiment success {:.1} % vs control {:.1} % ({} and {} requests): {:.1} points below, bound {}",
            pe * 100.0,
            pc * 100.0,
            experiment.requests,
            control.requests,
            d * 100.0,
            s.max_drop_points
        ),
    })
}

/// What assigning a key to a run's cohorts needs, stored inline in [`Active`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    prefix: Prefix,
    control_below: u64,
    experiment_from: u64,
}

impl Bucket {
    /// The cohort of a key (murmur3 of the run's name ++ key), if any.
    #[inline]
    pub(crate) fn arm_of(&self, key: &[u8]) -> Option<Arm> {
        let h = u64::from(self.prefix.hash(key));
        if h < self.control_below {
            Some(Arm::Control)
        } else if h >= self.experiment_from {
            Some(Arm::Experiment)
        } else {
            None
        }
    }
}

/// The runs the edge evaluates, in name order (every process assigns the same cohorts),
/// with their buckets side by side (no pointer to follow per run).
#[derive(Default)]
pub(crate) struct Active {
    pub(crate) runs: Box<[Arc<Run>]>,
    pub(crate) buckets: Box<[Bucket]>,
}

/// Every experiment known to one registry; held by the registry and by the layers.
pub(crate) struct Table {
    pub(crate) clock: Clock,
    pub(crate) active: ArcSwap<Active>,
    state: Mutex<TableState>,
    stores: Mutex<[Option<Arc<dyn Store>>; 2]>,
    /// The id the source announces this process under, if any.
    instance: Mutex<Option<String>>,
}

#[derive(Default)]
struct TableState {
    experiments: BTreeMap<String, (Arc<ExperimentSettings>, Scope)>,
    results: BTreeMap<String, Arc<ExperimentResult>>,
    runs: BTreeMap<String, Arc<Run>>,
    halted: bool,
    /// The clock's ms since which the store has been out of reach.
    offline_since: Option<u64>,
    dirty: BTreeSet<String>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("active", &self.active.load().runs.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub(crate) fn new(clock: Clock) -> Arc<Table> {
        Arc::new(Table {
            clock,
            active: ArcSwap::from_pointee(Active::default()),
            state: Mutex::new(TableState::default()),
            stores: Mutex::new([None, None]),
            instance: Mutex::new(None),
        })
    }

    /// The id this process announces itself under (records' `by`).
    pub(crate) fn set_instance(&self, id: &str) {
        *lock(&self.instance) = Some(id.to_owned());
    }

    pub(crate) fn set_store(&self, layer: Scope, store: Arc<dyn Store>) {
        lock(&self.stores)[layer.index()] = Some(store);
    }

    fn store(&self, layer: Scope) -> Option<Arc<dyn Store>> {
        lock(&self.stores)[layer.index()].clone()
    }

    /// An experiment's effective value (or its removal); applied by [`Table::sync`].
    pub(crate) fn set_experiment(&self, name: &str, value: Option<(ExperimentSettings, Scope)>) {
        let mut st = lock(&self.state);
        match value {
            Some((s, home)) => drop(st.experiments.insert(name.to_owned(), (Arc::new(s), home))),
            None => drop(st.experiments.remove(name)),
        }
        st.dirty.insert(name.to_owned());
    }

    /// A run's record from the store (or its removal); applied by [`Table::sync`].
    pub(crate) fn set_result(&self, name: &str, value: Option<ExperimentResult>) {
        let mut st = lock(&self.state);
        match value {
            Some(r) => drop(st.results.insert(name.to_owned(), Arc::new(r))),
            None => drop(st.results.remove(name)),
        }
        st.dirty.insert(name.to_owned());
    }

    /// `global.halt_experiments`.
    pub(crate) fn set_halt(&self, halted: bool) {
        let mut st = lock(&self.state);
        if st.halted != halted {
            st.halted = halted;
            let names: Vec<String> = st.runs.keys().cloned().collect();
            st.dirty.extend(names);
        }
    }

    /// How current the settings are: a store out of reach pauses every run after its
    /// `offline_stop_ms`.
    pub(crate) fn set_health(&self, health: &Health) {
        let mut st = lock(&self.state);
        let offline = !matches!(health, Health::Live { .. } | Health::DefaultsOnly);
        let since = match (offline, st.offline_since) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => Some(self.clock.now_ms()),
        };
        if since != st.offline_since {
            st.offline_since = since;
            for run in st.runs.values() {
                run.set_offline(since);
            }
        }
    }

    /// Applies what changed since the last sync: starts, settles, halts and withdraws
    /// runs, and publishes the active list. Called by the registry after each update
    /// (under its writer lock: nothing here waits).
    pub(crate) fn sync(self: &Arc<Table>) {
        let mut st = lock(&self.state);
        if st.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut st.dirty);
        for name in dirty {
            self.sync_one(&mut st, &name);
        }
        self.publish(&st);
    }

    fn sync_one(self: &Arc<Table>, st: &mut TableState, name: &str) {
        let Some((settings, home)) = st.experiments.get(name).cloned() else {
            if let Some(run) = st.runs.remove(name) {
                run.withdraw();
            }
            return;
        };
        let id = run_id(name, &settings);
        let result = st.results.get(name).cloned();
        let ours = result.as_ref().filter(|r| r.run == format!("{id:016x}"));
        let current = st.runs.get(name).filter(|r| r.id == id && r.home == home);
        let rerun = current.is_some_and(|run| {
            // A settled verdict whose result was deleted: run it again.
            run.settled.load(Ordering::Acquire) && ours.is_none_or(|r| !r.state.is_final())
        });
        let run = match current {
            Some(run) if !rerun => run.clone(),
            _ => {
                let run = Arc::new(Run::new(name, settings, home, self));
                run.set_offline(st.offline_since);
                if let Some(old) = st.runs.insert(name.to_owned(), run.clone()) {
                    old.withdraw();
                }
                match ours {
                    Some(r) if r.state.is_final() => {}
                    Some(r) => run.adopt_start(r.started_ms),
                    None => {
                        *lock(&run.pending) = Pending::Start;
                        tracing::info!(
                            experiment = %name,
                            run = %run.id_hex(),
                            policy = %run.settings.policy,
                            control_percent = run.settings.control_percent,
                            experiment_percent = run.settings.experiment_percent,
                            "substation: experiment started"
                        );
                    }
                }
                spawn_task(&run, self);
                run
            }
        };
        match ours {
            Some(r) if r.state.is_final() => run.settle(r),
            Some(r) => run.adopt_start(r.started_ms),
            None => {}
        }
        if st.halted {
            run.stop_quietly(
                RunState::Halted,
                "halted by global.halt_experiments".to_owned(),
                None,
            );
        }
    }

    /// Publishes the runs that may assign cohorts.
    fn publish(&self, st: &TableState) {
        let runs: Vec<Arc<Run>> = st
            .runs
            .values()
            .filter(|r| r.state.load(Ordering::Acquire) == RUNNING)
            .cloned()
            .collect();
        let buckets = runs.iter().map(|r| r.bucket()).collect();
        self.active.store(Arc::new(Active {
            runs: runs.into(),
            buckets,
        }));
    }

    /// Publishes again (a run stopped).
    fn republish(&self) {
        let st = lock(&self.state);
        self.publish(&st);
    }

    /// The status of every run, in name order.
    pub(crate) fn status(&self) -> Vec<super::ExperimentStatus> {
        let runs: Vec<Arc<Run>> = lock(&self.state).runs.values().cloned().collect();
        runs.iter().map(|r| r.status()).collect()
    }

    /// The current run of experiment `name` (running or stopped), if any.
    pub(crate) fn run(&self, name: &str) -> Option<Arc<Run>> {
        lock(&self.state).runs.get(name).cloned()
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // The runs' tasks hold a weak table: wake them so that they end now.
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for run in st.runs.values() {
            run.notify.notify_one();
        }
    }
}

/// Starts the task that writes the run's records and ends it on time, if a tokio
/// runtime is at hand (else the run still stops on time — requests see it — but
/// nothing is written to the store).
fn spawn_task(run: &Arc<Run>, table: &Arc<Table>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(drive(run.clone(), Arc::downgrade(table)))),
        Err(_) => tracing::warn!(
            experiment = %run.name,
            "substation: no tokio runtime where the experiment started: its records will not be written to the store"
        ),
    }
}

/// How often a run's counts are pushed to the metrics recorder.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// A run's task: ends it at its duration, writes its records (retrying while the store
/// is out of reach), pushes its counts to the metrics. Ends when the run is over and
/// written, withdrawn, or the registry is gone.
async fn drive(run: Arc<Run>, table: Weak<Table>) {
    let push = |running_now: bool| run.metrics.push(run.counts(), running_now);
    let mut retry_at: Option<u64> = None;
    // Failed writes are retried after 1 s, doubling to a minute (a store that refuses
    // writes — a read-only user — is told about, not hammered).
    let mut backoff_ms = 1_000u64;
    loop {
        if table.strong_count() == 0 || run.is_withdrawn() {
            push(false);
            return;
        }
        let now = run.clock.now_ms();
        let state = run.state.load(Ordering::Acquire);
        if state == RUNNING {
            // Requests may not come: the task ends the run on time too.
            if now >= run.ends_ms.load(Ordering::Relaxed) {
                run.stop_passed();
                continue;
            }
            if now >= run.offline_ms.load(Ordering::Relaxed) {
                run.log_paused();
            }
        }
        let pending = *lock(&run.pending);
        if pending != Pending::Nothing && retry_at.is_none_or(|t| now >= t) {
            match write(&run, &table, pending).await {
                Ok(()) => {
                    let mut p = lock(&run.pending);
                    if *p == pending {
                        *p = Pending::Nothing;
                    }
                    retry_at = None;
                    backoff_ms = 1_000;
                }
                Err(e) => {
                    tracing::warn!(experiment = %run.name, error = %e, retry_in_ms = backoff_ms, "substation: could not write the experiment's record; it stopped here all the same");
                    retry_at = Some(run.clock.now_ms().saturating_add(backoff_ms));
                    backoff_ms = (backoff_ms * 2).min(60_000);
                }
            }
            continue;
        }
        let running_now = run.state.load(Ordering::Acquire) == RUNNING;
        push(running_now);
        if !running_now && pending == Pending::Nothing {
            return;
        }
        // Sleep to the next thing to do: the end, the pause, a metrics push, a retry.
        let mut wake = now.saturating_add(METRICS_EVERY.as_millis() as u64);
        if running_now {
            wake = wake
                .min(run.ends_ms.load(Ordering::Relaxed))
                .min(run.offline_ms.load(Ordering::Relaxed).max(now + 1));
        }
        if let Some(t) = retry_at {
            wake = wake.min(t);
        }
        let nap = Duration::from_millis(wake.saturating_sub(now).max(1));
        tokio::select! {
            () = run.notify.notified() => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// Writes the run's `running` record or its verdict, with compare-and-swap.
async fn write(run: &Arc<Run>, table: &Weak<Table>, what: Pending) -> Result<(), crate::BoxError> {
    let Some(store) = table.upgrade().and_then(|t| t.store(run.home)) else {
        return Ok(()); // nothing to write to (a source that cannot write)
    };
    let id = run.id_hex();
    let record = match what {
        Pending::Nothing => return Ok(()),
        Pending::Start => {
            let started = run.started_wall.load(Ordering::Relaxed);
            ExperimentResult {
                run: id.clone(),
                state: RunState::Running,
                started_ms: started,
                stopped_ms: None,
                reason: None,
                control: CohortCounts::default(),
                experiment: CohortCounts::default(),
                deviation_points: None,
                by: Some(run.instance()),
            }
        }
        Pending::Verdict => match lock(&run.verdict).clone() {
            Some(v) => v,
            None => return Ok(()),
        },
    };
    let bytes = serde_json::to_vec(&record)?;
    let key = format!("experiments/{}/result", run.name);
    let start = what == Pending::Start;
    let wrote = store
        .update(
            run.home,
            &key,
            Box::new(move |current| {
                let theirs = current
                    .and_then(|b| serde_json::from_slice::<ExperimentResult>(b).ok())
                    .filter(|r| r.run == id);
                match theirs {
                    // Another process started it first / decided first: theirs stands.
                    Some(_) if start => None,
                    Some(r) if r.state.is_final() => None,
                    _ => Some(bytes.clone()),
                }
            }),
        )
        .await?;
    if wrote && what == Pending::Verdict {
        tracing::info!(experiment = %run.name, run = %run.id_hex(), "substation: experiment verdict recorded in the store");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, successes: u64) -> CohortCounts {
        CohortCounts {
            requests,
            successes,
        }
    }

    #[test]
    fn the_judge_waits_for_the_minimum_and_the_evidence() {
        let s = ExperimentSettings::new("p").with(|s| {
            s.min_requests = 100;
            s.max_drop_points = 5.0;
        });
        // Below the minimum: no judgement, however bad.
        assert_eq!(judge(&s, counts(99, 99), counts(500, 0)), None);
        // Within the bound.
        assert_eq!(judge(&s, counts(1000, 990), counts(1000, 950)), None);
        // Beyond the bound but not significant (small sample).
        assert_eq!(judge(&s, counts(100, 100), counts(100, 92)), None);
        // Clearly beyond.
        let j = judge(&s, counts(200, 199), counts(200, 122)).unwrap();
        assert!((j.deviation - 38.5).abs() < 1e-9, "{j:?}");
        assert!(
            j.reason
                .starts_with("experiment success 61.0 % vs control 99.5 %"),
            "{}",
            j.reason
        );
        // Both rates at the extremes: the difference alone decides.
        assert!(judge(&s, counts(100, 100), counts(100, 0)).is_some());
        assert!(judge(&s, counts(100, 100), counts(100, 100)).is_none());
        // An experiment doing better never aborts.
        assert!(judge(&s, counts(1000, 500), counts(1000, 1000)).is_none());
    }

    #[test]
    fn run_ids_are_stable_hashes_of_the_value() {
        let a = ExperimentSettings::new("p");
        assert_eq!(run_id("e", &a), run_id("e", &a.clone()));
        assert_ne!(
            run_id("e", &a),
            run_id("e", &a.clone().with(|s| s.min_requests = 7))
        );
        assert_ne!(
            run_id("e", &a),
            run_id("f", &a),
            "two experiments, two runs"
        );
        // Pinned: every process and version must agree on it.
        assert_eq!(format!("{:016x}", fnv1a(b"substation")), "d06be9a210c49683");
    }

    #[test]
    fn shares_of_the_hash_space() {
        assert_eq!(share(0.0), 0);
        assert_eq!(share(100.0), 1 << 32);
        assert_eq!(share(50.0), 1 << 31);
    }
}
