//! Chaos experiments on real traffic, as Netflix's ChAP runs them: a control and an
//! experiment cohort, a KPI compared live, an automatic stop.
//!
//! A plain fault ([`FaultLayer`](crate::fault::FaultLayer) with `fault.*`) hits a
//! percentage of *every* caller, so only a large, long experiment shows an effect, and a
//! bad fallback hurts everyone in scope. An experiment instead takes a small slice of
//! real traffic — by a sticky key (user, session, device) — splits it into two equal
//! cohorts, fails one dependency for the experiment cohort only, compares the success
//! rate of the two cohorts' requests, and stops itself when the experiment cohort does
//! worse than the bound allows.
//!
//! - **One value in the store** starts it, key `experiments/<name>`
//!   ([`ExperimentSettings`](crate::settings::ExperimentSettings)): the policy to fail,
//!   how (abort %, delay), the cohort sizes, the KPI bound, the minimum sample, the
//!   maximum duration. Validated like every value; nothing runs unless written.
//! - **At the edge** of the service (its inbound handler stack), an [`ExperimentLayer`]
//!   assigns each request to a cohort — none, control or experiment — by murmur3 of the
//!   experiment's name and the key, the switches' flagd-compatible bucketing (control
//!   is the bottom of the hash space, experiment the top, so each stays the same set
//!   of keys while its size is unchanged). It records each finished request of a
//!   cohort as a success or failure (its [`Classify`](crate::classify::Classify)): the
//!   KPI.
//! - **The cohort travels with the request:** while the edge's response future is
//!   polled, the cohort is the task's [`current`] one (a task-local), which the
//!   dependency side's [`FaultLayer`](crate::fault::FaultLayer) of the experiment's
//!   policy reads; with feature `http` it is also in the request's extensions, and
//!   [`PropagateLayer`] writes it into outgoing requests' `substation-experiment`
//!   header (an HTTP header, or gRPC metadata under tonic), which the next service's
//!   `ExperimentLayer::http` adopts — so an experiment can fail a dependency two
//!   services down for exactly the experiment cohort.
//! - **Judging:** each process judges the cohorts it assigned, on every finished
//!   request once both cohorts have `min_requests`: it stops when the control's
//!   success rate minus the experiment's is above `max_drop_points` with 99 % one-sided
//!   confidence (`(d − b)/se > 2.326`). It stops injecting at once, then writes the
//!   verdict beside the experiment, `experiments/<name>/result`
//!   ([`ExperimentResult`]), with compare-and-swap,
//!   once; every other process sees it and stops. `max_duration_ms` ends a run the same
//!   way ("passed"); `global.halt_experiments: true` stops every run at once
//!   ("halted"). Each stop is a `tracing` event and counted in
//!   `substation_experiment_verdicts_total`; cohorts' counts are pushed to
//!   `substation_experiment_requests_total` once a second.
//! - **Safety rails:** only requests of the experiment cohort are ever injected into,
//!   and only by the experiment's policy's `FaultLayer`; a request is in at most one
//!   cohort of all the experiments running (the runs are tried in name order, the first
//!   whose cohorts hold the key takes it); a process whose store has been unreachable
//!   for `offline_stop_ms` assigns and injects nothing until it is back.
//!
//! ```
//! use std::convert::Infallible;
//! use substation::experiment::{self, Arm, ExperimentLayer};
//! use substation::fault::FaultLayer;
//! use substation::live::InMemorySource;
//! use substation::Substation;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = InMemorySource::new();
//! let sub = Substation::builder().source(source.clone()).build().unwrap();
//! // The dependency, behind its policy's fault layer.
//! let inventory = FaultLayer::new(&sub.policy("inventory"))
//!     .layer(service_fn(|_: ()| async { Ok::<_, Infallible>("in stock") }));
//! // The edge: a request is a user id; the handler calls the dependency.
//! let edge = ExperimentLayer::new(&sub)
//!     .key(|user: &String, put| put(user.as_bytes()))
//!     .layer(service_fn(move |_user: String| {
//!         let inventory = inventory.clone();
//!         async move { inventory.oneshot(()).await.map_err(|_| "inventory failed") }
//!     }));
//!
//! source.put("experiments/no-inventory", r#"{"policy": "inventory", "control_percent": 10, "experiment_percent": 10, "min_requests": 20}"#).unwrap();
//! let mut failed = 0;
//! for i in 0..1_000 {
//!     let user = format!("user-{i}");
//!     if edge.clone().oneshot(user.clone()).await.is_err() {
//!         // Only users of the experiment cohort ever fail.
//!         assert_eq!(sub.experiment_cohort("no-inventory", user.as_bytes()), Some(Arm::Experiment));
//!         failed += 1;
//!     }
//! }
//! // The judge stopped it after 20 requests a cohort (success 0 % vs 100 %).
//! assert!(failed >= 20 && failed < 100, "{failed}");
//! let status = &sub.experiments()[0];
//! assert_eq!(status.state.as_str(), "aborted");
//! # }
//! ```

mod layer;
#[cfg(feature = "http")]
mod propagate;
pub(crate) mod run;

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pub use self::layer::{Experiment, ExperimentFuture, ExperimentLayer, NoKey};
#[cfg(feature = "http")]
pub use self::propagate::{HEADER, Propagate, PropagateLayer};
use self::run::Run;
use crate::settings::{CohortCounts, ExperimentResult, FaultSettings, RunState};

/// The cohort a request belongs to in one experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arm {
    /// Not injected into; its success rate is the baseline.
    Control = 0,
    /// Injected into at the experiment's policy.
    Experiment = 1,
}

impl Arm {
    /// `control` or `experiment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Control => "control",
            Arm::Experiment => "experiment",
        }
    }
}

/// A request's place in a running experiment: which experiment and which cohort. Cheap
/// to clone (a reference count).
#[derive(Clone)]
pub struct Cohort {
    pub(crate) arm: Arm,
    pub(crate) run: Arc<Run>,
}

impl fmt::Debug for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cohort")
            .field("experiment", &self.experiment())
            .field("arm", &self.arm)
            .finish()
    }
}

impl Cohort {
    /// Control or experiment.
    pub fn arm(&self) -> Arm {
        self.arm
    }

    /// The experiment's name.
    pub fn experiment(&self) -> &str {
        &self.run.name
    }

    /// The policy the experiment fails.
    pub fn policy(&self) -> &str {
        &self.run.settings.policy
    }

    /// Runs `future` with this cohort as the [`current`] one, e.g. a task spawned by a
    /// handler (a task-local does not follow `tokio::spawn`).
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            inner: future,
            cohort: Some(self),
        }
    }
}

thread_local! {
    /// The cohort of the request being polled on this thread (set by [`Scoped`]).
    static CURRENT: RefCell<Option<Cohort>> = const { RefCell::new(None) };
}

/// The cohort of the request this task is serving, if it is in one (inside the
/// response future of an [`ExperimentLayer`], or a [`Cohort::scope`]).
pub fn current() -> Option<Cohort> {
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|c| c.clone()))
        .ok()
        .flatten()
}

/// Calls `f` with the current cohort, without cloning it.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn current_with<R>(f: impl FnOnce(Option<&Cohort>) -> R) -> R {
    let mut f = Some(f);
    let out = CURRENT.try_with(|c| match c.try_borrow() {
        Ok(c) => (f.take().expect("called once"))(c.as_ref()),
        Err(_) => (f.take().expect("called once"))(None),
    });
    match out {
        Ok(r) => r,
        Err(_) => (f.take().expect("called once"))(None),
    }
}

/// What the fault layer of `policy` injects into the current call: the settings of the
/// experiment whose experiment cohort the call belongs to, if it is live and fails
/// `policy`.
#[inline]
pub(crate) fn injection(policy: &str) -> Option<FaultSettings> {
    if run::RUNNING_RUNS.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return None;
    }
    CURRENT
        .try_with(|c| {
            let c = c.try_borrow().ok()?;
            let cohort = c.as_ref()?;
            injection_of(cohort, policy)
        })
        .ok()
        .flatten()
}

#[cold]
fn injection_of(cohort: &Cohort, policy: &str) -> Option<FaultSettings> {
    (cohort.arm == Arm::Experiment && cohort.run.settings.policy == policy && cohort.run.is_live())
        .then(|| cohort.run.fault.clone())
}

pin_project! {
    /// A future polled with a cohort as the [`current`] one; see [`Cohort::scope`].
    #[derive(Debug)]
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        cohort: Option<Cohort>,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        enter(this.cohort, || this.inner.poll(cx))
    }
}

/// Runs `f` with `cohort` as the current one: swapped in, and back out afterwards (also
/// if `f` panics), so nesting and interleaved tasks on one thread see their own.
#[inline]
pub(crate) fn enter<R>(cohort: &mut Option<Cohort>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Option<Cohort>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            swap(self.0);
        }
    }
    fn swap(cohort: &mut Option<Cohort>) {
        let _ = CURRENT.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                std::mem::swap(&mut *c, cohort);
            }
        });
    }
    swap(cohort);
    let restore = Restore(cohort);
    let out = f();
    drop(restore);
    out
}

/// One experiment run as this process sees it: its settings, its cohorts' counts here,
/// and its verdict if it has one. See [`Substation::experiments`](crate::Substation::experiments).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ExperimentStatus {
    /// The experiment's name (key `experiments/<name>`).
    pub name: String,
    /// The policy it fails.
    pub policy: String,
    /// The run's id (a hash of the value).
    pub run: String,
    /// Running, or its verdict.
    pub state: RunState,
    /// Running but paused: the store has been unreachable longer than `offline_stop_ms`.
    pub paused: bool,
    /// The run's start (ms since the Unix epoch).
    pub started_ms: u64,
    /// Time left before `max_duration_ms` (while running).
    pub left_ms: Option<u64>,
    /// The control cohort as this process counted it.
    pub control: CohortCounts,
    /// The experiment cohort as this process counted it.
    pub experiment: CohortCounts,
    /// The control cohort's share of keys (percent).
    pub control_percent: f64,
    /// The experiment cohort's share of keys (percent).
    pub experiment_percent: f64,
    /// The KPI bound (percentage points).
    pub max_drop_points: f64,
    /// Requests each cohort needs before it is judged.
    pub min_requests: u64,
    /// The verdict's record, once stopped: this process's, or the one in the store.
    pub verdict: Option<ExperimentResult>,
}

/// The id of experiment `name`'s run with this (effective) value, as results carry it
/// in `run`: 16 hex digits of FNV-1a (64 bits) over the name, a NUL byte and the value's
/// canonical JSON. Stable across processes and versions; tools use it to tell the
/// record of the current value from one an earlier value left.
///
/// ```
/// use substation::{experiment, settings::ExperimentSettings};
///
/// let id = experiment::run_id("no-inventory", &ExperimentSettings::new("inventory"));
/// assert_eq!(id.len(), 16);
/// assert_ne!(id, experiment::run_id("no-inventory-2", &ExperimentSettings::new("inventory")));
/// ```
pub fn run_id(name: &str, settings: &crate::settings::ExperimentSettings) -> String {
    format!("{:016x}", run::run_id(name, settings))
}

/// This process in experiment records (`by`) when its source does not announce one:
/// host name and pid.
pub(crate) fn default_instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(crate::live::default_instance_id)
}
