//! Policies: the named, live protection of one dependency.
//!
//! A [`Policy`] is a cheap handle to one dependency's settings and runtime state (its
//! breaker and window). Every layer built from the same policy shares that state, and
//! reads the policy's settings on each call, so [`Policy::update`] (or a change from a
//! settings [`Source`](crate::live::Source)) applies to the next call without
//! rebuilding any service and without losing breaker state.
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
//! The request path may not bump a shared reference count per call (under two threads
//! that alone costs more than the whole call), so response futures refer to a policy's
//! runtime state by `&'static` reference. That state is allocated once per policy name
//! and recycled: when the last handle and service of a policy are dropped, its state
//! returns to a pool and is reused by the next policy of the same name. A generation
//! number keeps late futures of the old owner from touching the new owner's breaker.
//! Memory is therefore bounded by the number of policies alive at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::breaker::state::{BreakerCore, Ctx};
use crate::breaker::{BreakerState, WindowCounts};
use crate::clock::Clock;
use crate::metrics::PolicyMetrics;
use crate::settings::{BreakerMode, PolicySettings, SettingsError};

/// The runtime state of one policy; `'static` and recycled (see the module docs).
#[derive(Debug)]
pub(crate) struct PolicyCore {
    pub(crate) name: Box<str>,
    pub(crate) generation: AtomicU32,
    pub(crate) settings: ArcSwap<PolicySettings>,
    pub(crate) breaker: BreakerCore,
    pub(crate) metrics: PolicyMetrics,
    /// Killed by the registry's `shed_non_critical` (a non-critical policy).
    pub(crate) shed: AtomicBool,
    /// Calls in flight through the bulkhead.
    pub(crate) inflight: AtomicU32,
}

impl PolicyCore {
    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            policy: &self.name,
            metrics: &self.metrics,
        }
    }
}

static POOL: Mutex<Option<HashMap<Box<str>, Vec<&'static PolicyCore>>>> = Mutex::new(None);

fn acquire(name: &str, settings: PolicySettings) -> (&'static PolicyCore, u32) {
    let recycled = POOL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
        .and_then(|pool| pool.get_mut(name)?.pop());
    let core = match recycled {
        Some(core) => {
            core.breaker.reset();
            core.settings.store(Arc::new(settings));
            core
        }
        None => Box::leak(Box::new(PolicyCore {
            name: name.into(),
            generation: AtomicU32::new(0),
            settings: ArcSwap::from_pointee(settings),
            breaker: BreakerCore::new(),
            metrics: PolicyMetrics::new(name),
            shed: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
        })),
    };
    core.metrics.state.set(0.0);
    core.shed.store(false, Ordering::Relaxed);
    (core, core.generation.load(Ordering::Acquire))
}

fn release(core: &'static PolicyCore) {
    core.generation.fetch_add(1, Ordering::AcqRel);
    POOL.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .entry(core.name.clone())
        .or_default()
        .push(core);
}

struct Owner {
    core: &'static PolicyCore,
    generation: u32,
    clock: Clock,
}

impl Drop for Owner {
    fn drop(&mut self) {
        release(self.core);
    }
}

/// A named, live policy; see the [module docs](self).
#[derive(Clone)]
pub struct Policy {
    owner: Arc<Owner>,
}

impl Policy {
    /// A policy of its own, with the coarse clock, outside any
    /// [`Substation`](crate::Substation). Fails if `settings` are invalid.
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
        settings.validate()?;
        let (core, generation) = acquire(name, settings);
        Ok(Policy {
            owner: Arc::new(Owner {
                core,
                generation,
                clock,
            }),
        })
    }

    /// The policy's name (the dependency it protects).
    pub fn name(&self) -> &str {
        &self.owner.core.name
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<PolicySettings> {
        self.owner.core.settings.load_full()
    }

    /// Replaces the settings; the next call through any layer of this policy uses them.
    ///
    /// Threshold changes keep the breaker's window; a new window shape (`window_ms` or
    /// `buckets`) starts an empty window. Switching to `force_closed` closes the
    /// breaker. Policies of a [`Substation`](crate::Substation) are updated by its
    /// sources, which overwrite values set here on their next change.
    pub fn update(&self, settings: PolicySettings) -> Result<(), SettingsError> {
        settings.validate()?;
        let core = self.owner.core;
        let old = core.settings.swap(Arc::new(settings));
        let new = core.settings.load();
        if !old.breaker.same_window(&new.breaker) {
            core.breaker.window.reset();
        }
        if new.breaker.mode == BreakerMode::ForceClosed
            && old.breaker.mode != BreakerMode::ForceClosed
        {
            core.breaker.close(&core.ctx());
        }
        Ok(())
    }

    /// Whether calls are killed now: by the policy's kill switch, or because it is
    /// non-critical and the registry sheds non-critical dependencies.
    pub fn is_killed(&self) -> bool {
        let core = self.owner.core;
        core.settings.load().kill || core.shed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_shed(&self, shed: bool) {
        self.owner.core.shed.store(shed, Ordering::Relaxed);
    }

    /// Calls in flight through the policy's bulkhead now.
    pub fn in_flight(&self) -> u32 {
        self.owner.core.inflight.load(Ordering::Relaxed)
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.owner.core.breaker.state()
    }

    /// The counts in the breaker's rolling window now (empty unless closed: the window
    /// is cleared whenever the breaker closes).
    pub fn window(&self) -> WindowCounts {
        let s = self.owner.core.settings.load();
        self.owner
            .core
            .breaker
            .counts(self.owner.clock.now_ms(), &s.breaker)
    }

    /// The clock this policy reads.
    pub fn clock(&self) -> &Clock {
        &self.owner.clock
    }

    pub(crate) fn core(&self) -> &'static PolicyCore {
        self.owner.core
    }

    pub(crate) fn generation(&self) -> u32 {
        self.owner.generation
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
    }

    #[test]
    fn runtime_state_is_recycled_by_name() {
        let a = Policy::new("recycled-policy", PolicySettings::default()).unwrap();
        let core_a = a.core() as *const PolicyCore;
        let gen_a = a.generation();
        drop(a);
        let b = Policy::new("recycled-policy", PolicySettings::default()).unwrap();
        assert_eq!(b.core() as *const PolicyCore, core_a);
        assert_ne!(b.generation(), gen_a);
        let c = Policy::new("recycled-policy", PolicySettings::default()).unwrap();
        assert_ne!(
            c.core() as *const PolicyCore,
            core_a,
            "live policies never share"
        );
    }
}

/// A handle that does not keep a policy alive (the registry holds these, so a name no
/// longer used is freed).
#[derive(Clone, Debug)]
pub(crate) struct WeakPolicy(std::sync::Weak<Owner>);

impl Policy {
    /// A handle to this policy that does not keep it alive.
    pub(crate) fn downgrade(&self) -> WeakPolicy {
        WeakPolicy(Arc::downgrade(&self.owner))
    }
}

impl WeakPolicy {
    /// The policy, while a handle, layer or service of it is alive.
    pub(crate) fn upgrade(&self) -> Option<Policy> {
        self.0.upgrade().map(|owner| Policy { owner })
    }
}
