//! Policies: the named, live protection of one dependency.
//!
//! A [`Policy`] is a cheap handle to one dependency's settings and runtime state (its
//! breaker and window, its bulkhead count, its metric handles). Every layer built from
//! the same policy shares that state, and reads the policy's settings on each call, so
//! [`Policy::update`] (or a change from a settings [`Source`](crate::live::Source))
//! applies to the next call without rebuilding any service and without losing breaker
//! state.
//!
//! ```
//! use substation::{Policy, settings::PolicySettings};
//!
//! let policy = Policy::new("recommendations", PolicySettings::default())?;
//! let mut s = (*policy.settings()).clone();
//! s.breaker.error_rate = 25.0;
//! policy.update(s)?;
//! assert_eq!(policy.settings().breaker.error_rate, 25.0);
//! # Ok::<(), substation::settings::SettingsError>(())
//! ```
//!
//! # Lifetime of the runtime state
//! The state belongs to the policy's handles, the layers and services built from it,
//! and their unfinished response futures: it is freed when the last of them is gone,
//! and a new policy of the same name starts from scratch (a fresh breaker, its metric
//! handles registered with the recorder current at its creation). Response futures
//! hold it by a lease that costs two plain stores per call instead of an `Arc` clone
//! (see `ARCHITECTURE.md`, "Ownership").

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::breaker::state::{BreakerCore, Ctx};
use crate::breaker::{BreakerState, WindowCounts};
use crate::clock::Clock;
use crate::lease::{Shared, WeakShared};
use crate::live::valid_name;
use crate::metrics::PolicyMetrics;
use crate::settings::{BreakerMode, PolicySettings, SettingsError};
use crate::stats::{PolicyStats, Stats};

/// The runtime state of one policy, shared by its handles, services and futures.
pub(crate) struct PolicyCore {
    pub(crate) name: Box<str>,
    pub(crate) clock: Clock,
    pub(crate) settings: ArcSwap<PolicySettings>,
    pub(crate) breaker: BreakerCore,
    pub(crate) metrics: PolicyMetrics,
    /// Killed by the registry's `shed_non_critical` (a non-critical policy).
    pub(crate) shed: AtomicBool,
    /// Calls in flight through the bulkhead.
    pub(crate) inflight: AtomicU32,
    /// Counts by outcome, fallback answers, latencies (see [`crate::stats`]).
    pub(crate) stats: Stats,
    /// The retry budget (used by [`crate::retry`] only when a call would be retried).
    pub(crate) retry_budget: crate::retry::Budget,
    /// Serializes `Policy::update`, so that each compares the settings it replaced
    /// with the ones it stored.
    updates: Mutex<()>,
}

impl Drop for PolicyCore {
    fn drop(&mut self) {
        // The last counts reach the recorder (the flusher runs once a second), and the
        // flusher forgets this policy.
        self.flush();
        crate::stats::forget_dead();
    }
}

impl PolicyCore {
    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            policy: &self.name,
            metrics: &self.metrics,
        }
    }

    /// Pushes the counts since the last flush to the policy's metric handles.
    pub(crate) fn flush(&self) {
        self.stats.flush(&self.metrics);
    }

    /// Whether calls are killed now, given the settings in force.
    #[inline]
    pub(crate) fn killed(&self, settings: &PolicySettings) -> bool {
        settings.kill || self.shed.load(Ordering::Relaxed)
    }
}

/// A named, live policy; see the [module docs](self).
#[derive(Clone)]
pub struct Policy {
    core: Shared<PolicyCore>,
}

impl Policy {
    /// A policy of its own, with the coarse clock, outside any
    /// [`Substation`](crate::Substation). Fails if the name is not a valid name (1 to
    /// 128 of `A-Z a-z 0-9 _ . -`) or `settings` are invalid.
    pub fn new(name: &str, settings: PolicySettings) -> Result<Self, SettingsError> {
        Self::with_clock(name, settings, Clock::coarse())
    }

    /// A policy of its own that reads time from `clock` (for tests, see
    /// [`Clock::manual`] and [`Clock::tokio`]).
    pub fn with_clock(
        name: &str,
        settings: PolicySettings,
        clock: Clock,
    ) -> Result<Self, SettingsError> {
        if !valid_name(name) {
            return Err(SettingsError::new(
                "",
                format!("{name:?} is not a valid policy name (1 to 128 of A-Z a-z 0-9 _ . -)"),
            ));
        }
        settings.validate()?;
        let metrics = PolicyMetrics::new(name);
        metrics.state.set(0.0);
        let policy = Policy {
            core: Shared::new(PolicyCore {
                name: name.into(),
                clock,
                settings: ArcSwap::from_pointee(settings),
                breaker: BreakerCore::new(),
                metrics,
                shed: AtomicBool::new(false),
                inflight: AtomicU32::new(0),
                stats: Stats::new(),
                retry_budget: crate::retry::Budget::default(),
                updates: Mutex::new(()),
            }),
        };
        crate::stats::register(policy.core.downgrade());
        Ok(policy)
    }

    /// The policy's name (the dependency it protects).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<PolicySettings> {
        self.core.settings.load_full()
    }

    /// Replaces the settings; the next call through any layer of this policy uses them.
    ///
    /// Threshold changes keep the breaker's window; a new window shape (`window_ms` or
    /// `buckets`) starts an empty window. Switching to `force_closed` closes the
    /// breaker. Policies of a [`Substation`](crate::Substation) are updated by its
    /// sources, which overwrite values set here on their next change.
    pub fn update(&self, settings: PolicySettings) -> Result<(), SettingsError> {
        settings.validate()?;
        let core = &*self.core;
        let _serial = core.updates.lock().unwrap_or_else(PoisonError::into_inner);
        let new = Arc::new(settings);
        let old = core.settings.swap(new.clone());
        if !old.breaker.same_window(&new.breaker) {
            core.breaker.window.reset();
        }
        if new.breaker.mode == BreakerMode::ForceClosed
            && old.breaker.mode != BreakerMode::ForceClosed
        {
            core.breaker.close(&core.ctx());
        }
        if new.breaker.mode != old.breaker.mode {
            core.breaker.changed();
        }
        Ok(())
    }

    /// Whether calls are killed now: by the policy's kill switch, or because it is
    /// non-critical and the registry sheds non-critical dependencies.
    pub fn is_killed(&self) -> bool {
        self.core.killed(&self.core.settings.load())
    }

    pub(crate) fn set_shed(&self, shed: bool) {
        self.core.shed.store(shed, Ordering::Relaxed);
    }

    /// Calls in flight through the policy's bulkhead now.
    pub fn in_flight(&self) -> u32 {
        self.core.inflight.load(Ordering::Relaxed)
    }

    /// The breaker's state as callers meet it: a forced mode (`force_open`,
    /// `force_closed`) wins over the state machine, which keeps running underneath.
    pub fn breaker_state(&self) -> BreakerState {
        match self.core.settings.load().breaker.mode {
            BreakerMode::ForceOpen => BreakerState::ForcedOpen,
            BreakerMode::ForceClosed => BreakerState::ForcedClosed,
            BreakerMode::Normal | BreakerMode::MetricsOnly => self.core.breaker.state(),
        }
    }

    /// The counts in the breaker's rolling window now (empty unless closed: the window
    /// is cleared whenever the breaker closes).
    pub fn window(&self) -> WindowCounts {
        let s = self.core.settings.load();
        self.core
            .breaker
            .counts(self.core.clock.now_ms(), &s.breaker)
    }

    /// The policy's statistics: calls by outcome and fallback answers over the last
    /// 10 s and since it was made, latency percentiles, calls in flight, the breaker;
    /// see [`crate::stats`]. The first call starts keeping the samples of the rolling
    /// view (until then its figures are the totals).
    pub fn stats(&self) -> PolicyStats {
        let core = &*self.core;
        PolicyStats::from_samples(
            &core.name,
            &core.stats.history(),
            self.core.in_flight(),
            self.breaker_state(),
            core.breaker.changed_at(),
        )
    }

    /// The clock this policy reads.
    pub fn clock(&self) -> &Clock {
        &self.core.clock
    }

    pub(crate) fn shared(&self) -> &Shared<PolicyCore> {
        &self.core
    }

    /// Whether both handles are the same policy (not only the same name).
    #[cfg(test)]
    pub(crate) fn same(&self, other: &Policy) -> bool {
        self.core.ptr_eq(&other.core)
    }

    /// A handle that does not keep the policy alive.
    pub(crate) fn downgrade(&self) -> WeakPolicy {
        WeakPolicy(self.core.downgrade())
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

/// A [`Policy`] that is not kept alive by this handle (the registry's view).
#[derive(Clone, Debug)]
pub(crate) struct WeakPolicy(WeakShared<PolicyCore>);

impl WeakPolicy {
    /// The policy, if some handle, service or future still holds it.
    pub(crate) fn upgrade(&self) -> Option<Policy> {
        self.0.upgrade().map(|core| Policy { core })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_rejected() {
        let mut s = PolicySettings::default();
        s.breaker.error_rate = 150.0;
        let err = Policy::new("p", s.clone()).unwrap_err();
        assert_eq!(err.to_string(), "breaker.error_rate: 150 is not in 0..=100");
        let p = Policy::new("p", PolicySettings::default()).unwrap();
        assert!(p.update(s).is_err());
        assert_eq!(
            p.settings().breaker.error_rate,
            50.0,
            "last good value kept"
        );
        assert!(Policy::new("not a name", PolicySettings::default()).is_err());
    }

    #[test]
    fn a_policy_of_the_same_name_starts_afresh() {
        let a = Policy::new("reused-name", PolicySettings::default()).unwrap();
        let weak = a.downgrade();
        let b = Policy::new("reused-name", PolicySettings::default()).unwrap();
        assert!(!a.same(&b), "live policies never share");
        drop(a);
        assert!(weak.upgrade().is_none(), "freed with its last handle");
    }

    #[test]
    fn forced_modes_are_what_callers_meet() {
        let p = Policy::new("forced", PolicySettings::default()).unwrap();
        let mut s = PolicySettings::default();
        s.breaker.mode = BreakerMode::ForceOpen;
        p.update(s.clone()).unwrap();
        assert_eq!(p.breaker_state(), BreakerState::ForcedOpen);
        s.breaker.mode = BreakerMode::ForceClosed;
        p.update(s.clone()).unwrap();
        assert_eq!(p.breaker_state(), BreakerState::ForcedClosed);
        s.breaker.mode = BreakerMode::Normal;
        p.update(s).unwrap();
        assert_eq!(p.breaker_state(), BreakerState::Closed);
    }
}
