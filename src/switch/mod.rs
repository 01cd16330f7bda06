//! Feature switches: named, live values evaluated on the hot path — on/off, sticky
//! percentage rollouts and weighted variants, with flagd-compatible bucketing.
//!
//! ```
//! use substation::{Substation, live::InMemorySource, switch::SwitchSettings};
//!
//! let source = InMemorySource::new();
//! let substation = Substation::builder()
//!     .switch("new-checkout", SwitchSettings::off())
//!     .source(source.clone())
//!     .build()
//!     .unwrap();
//! let switch = substation.switch("new-checkout"); // once, at setup
//! assert!(!switch.is_on("user-42"));
//!
//! // An operator rolls out to 10 % of users, then to everyone, with one write each.
//! source.put("switches/new-checkout", r#"{"percent": 10}"#).unwrap();
//! let on = (0..10_000).filter(|i| switch.is_on(format!("user-{i}"))).count();
//! assert!((900..1100).contains(&on));
//! source.put("switches/new-checkout", r#"{"percent": 100}"#).unwrap();
//! assert!(switch.is_on("user-42"));
//!
//! // A bad release: off for everyone, whatever the percentage says.
//! source.put("switches/new-checkout", r#"{"percent": 100, "on": false}"#).unwrap();
//! assert!(!switch.is_on("user-42"));
//! ```
//!
//! # Bucketing
//!
//! A key's bucket is flagd's "fractional v2" (flagd ≥ 0.15):
//! `h = murmur3_x86_32(name ++ key, seed 0)`, `bucket = (h * total_weight) >> 32`, and the
//! first variant whose cumulative weight exceeds the bucket wins. A percentage switch
//! is the two variants `[on, percent]`, `[off, 100 - percent]`. So a user lands in the
//! same cohort as in flagd's SDKs for a flag of the same name, and:
//!
//! - **sticky**: the same key gets the same answer while the value stays;
//! - **monotonic**: raising a percentage only adds keys (the on set is `h < t`),
//!   lowering only removes them;
//! - **independent** across switches: the name is hashed with the key;
//! - resolution 0.0001 % for percentages; any `u32` weights for variants.
//!
//! # Cost
//!
//! The name's part of the hash is computed once per switch. [`Switch::is_on`] reads one
//! atomic word (the compiled threshold), hashes the key and bumps a per-thread counter
//! stripe: no allocation, lock, clock read or reference-count change. A switch that is
//! fully on or off skips the hash. [`Variants::pick`] reads the compiled value through
//! an [`arc_swap::Cache`] (one pointer compare).
//!
//! # Observability
//!
//! Every evaluation is counted, exactly, in per-thread stripes ([`Switch::evaluations`]);
//! the `metrics` counter `substation_switch_evaluations_total{switch, result}` advances
//! in steps of 1024 per stripe (and by the remainder when a switch's variants change),
//! so the hot path never calls the recorder. A change of value is a `tracing` event
//! (`info`), a count in `substation_switch_changes_total{switch}`, and a notice on
//! [`Switch::subscribe`].
//!
//! # Routing and OpenFeature
//!
//! [`RouteLayer`] sends each request to the old or the new service by a switch and a key
//! taken from the request. With feature `openfeature`, `openfeature::SubstationProvider`
//! serves substation's switches to the `open-feature` SDK.

mod compiled;
mod counts;
mod key;
pub(crate) mod murmur;
#[cfg(feature = "openfeature")]
pub mod openfeature;
pub mod route;
mod settings;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Cache};

use crate::settings::SettingsError;

use self::compiled::{ALL, Compiled, NOT_BOOL};
use self::counts::{Counts, Labels, OFF, ON};
use self::murmur::Prefix;

pub use self::compiled::{Reason, Variant};
pub use self::key::DecimalKey;
pub use self::route::{Route, RouteLayer};
pub use self::settings::{Algorithm, MAX_VARIANTS, SwitchSettings, VariantSettings};

/// `(murmur3_x86_32(prefix ++ key, seed 0) * total_weight) >> 32`: flagd's fractional
/// v2 bucket of a key, in `0..total_weight`. The switch `name` is the prefix.
///
/// ```
/// // flagd-testbed: "fractional-flag" with 4 × 25 sends "jack" to the third variant.
/// let bucket = substation::switch::fractional_bucket(b"fractional-flag", b"jack", 100);
/// assert!((50..75).contains(&bucket));
/// ```
pub fn fractional_bucket(prefix: &[u8], key: &[u8], total_weight: u32) -> u32 {
    let h = Prefix::new(prefix).hash(key);
    ((u64::from(h) * u64::from(total_weight)) >> 32) as u32
}

/// A live switch handle; cheap to clone. Get it once (from
/// [`Substation::switch`](crate::Substation::switch)) and evaluate it per request; see
/// the [module docs](self).
#[derive(Clone)]
pub struct Switch {
    inner: Arc<SwitchInner>,
}

struct SwitchInner {
    name: Box<str>,
    prefix: Prefix,
    /// The compiled value's boolean threshold (see `Compiled::bool_threshold`).
    threshold: AtomicU64,
    compiled: Arc<ArcSwap<Compiled>>,
    counts: Counts,
    changes: tokio::sync::watch::Sender<Arc<SwitchSettings>>,
    changes_total: metrics::Counter,
    /// Changes of value so far.
    changed: AtomicU64,
    /// Serializes updates.
    writer: Mutex<()>,
}

/// A switch's answer with its explanation; see [`Switch::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The variant served.
    pub variant: Variant,
    /// Why.
    pub reason: Reason,
}

impl Switch {
    /// A switch of its own, outside any registry. Fails if `settings` are invalid (see
    /// [`SwitchSettings::validate`]), like [`Policy::new`](crate::Policy::new).
    pub fn detached(name: &str, settings: SwitchSettings) -> Result<Switch, SettingsError> {
        settings.validate()?;
        let settings = Arc::new(settings);
        let compiled = Compiled::new(settings.clone());
        Ok(Switch {
            inner: Arc::new(SwitchInner {
                name: name.into(),
                prefix: Prefix::new(name.as_bytes()),
                threshold: AtomicU64::new(compiled.bool_threshold),
                counts: Counts::new(labels(name, &compiled)),
                compiled: Arc::new(ArcSwap::from_pointee(compiled)),
                changes: tokio::sync::watch::Sender::new(settings),
                changes_total: metrics::counter!(crate::metrics::SWITCH_CHANGES, "switch" => name.to_owned()),
                changed: AtomicU64::new(0),
                writer: Mutex::new(()),
            }),
        })
    }

    /// The switch's name (the prefix of every key's hash).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value in force now.
    pub fn settings(&self) -> Arc<SwitchSettings> {
        self.inner.compiled.load().settings.clone()
    }

    /// Replaces the value after validating it; the next evaluation uses it. A change is
    /// logged, counted and sent to [`Switch::subscribe`]rs.
    pub fn update(&self, settings: SwitchSettings) -> Result<(), SettingsError> {
        settings.validate()?;
        let inner = &*self.inner;
        let _writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = inner.compiled.load_full();
        if *old.settings == settings {
            return Ok(());
        }
        let settings = Arc::new(settings);
        let compiled = Compiled::new(settings.clone());
        let variants_changed = old
            .variants
            .iter()
            .map(Variant::name)
            .ne(compiled.variants.iter().map(Variant::name))
            || old.percentage != compiled.percentage;
        if variants_changed {
            inner.counts.relabel(labels(&inner.name, &compiled));
        }
        // The values as JSON (escaped), cut to a bounded length: a switch with many
        // variants must not write a megabyte per change to the log.
        let (from, to) = (
            serde_json::to_string(&*old.settings).unwrap_or_default(),
            serde_json::to_string(&*settings).unwrap_or_default(),
        );
        tracing::info!(
            switch = %inner.name,
            from = %crate::settings::Bounded::new(&from, 256, 64),
            to = %crate::settings::Bounded::new(&to, 256, 64),
            "substation: switch changed"
        );
        inner
            .threshold
            .store(compiled.bool_threshold, Ordering::Release);
        inner.compiled.store(Arc::new(compiled));
        inner.changes_total.increment(1);
        inner.changed.fetch_add(1, Ordering::Relaxed);
        inner.changes.send_replace(settings);
        Ok(())
    }

    /// Whether the switch is on for `key` (a user id, a tenant): sticky for as long as
    /// the value stays. For a variant switch: whether the variant picked has the value
    /// `true`.
    #[inline]
    pub fn is_on(&self, key: impl AsRef<[u8]>) -> bool {
        let t = self.inner.threshold.load(Ordering::Acquire);
        if t == 0 {
            self.inner.counts.bump(OFF);
            return false;
        }
        if t == ALL {
            self.inner.counts.bump(ON);
            return true;
        }
        if t == NOT_BOOL {
            return self.is_on_slow(Some(key.as_ref()));
        }
        self.answer(u64::from(self.inner.prefix.hash(key.as_ref())) < t)
    }

    /// Whether the switch is on for this call, drawn at random (for calls that have no
    /// key): a percentage switch at 10 % answers true for about 10 % of calls.
    #[inline]
    pub fn is_on_random(&self) -> bool {
        let t = self.inner.threshold.load(Ordering::Acquire);
        if t == NOT_BOOL {
            return self.is_on_slow(None);
        }
        self.answer(u64::from(fastrand::u32(..)) < t)
    }

    #[inline]
    fn answer(&self, on: bool) -> bool {
        self.inner.counts.bump(if on { ON } else { OFF });
        on
    }

    #[cold]
    fn is_on_slow(&self, key: Option<&[u8]>) -> bool {
        let compiled = self.inner.compiled.load();
        let h = match key {
            Some(key) => self.inner.prefix.hash(key),
            None => fastrand::u32(..),
        };
        let on = compiled.variants[compiled.pick(h)].value() == &serde_json::Value::Bool(true);
        self.answer(on)
    }

    /// Calls `f` with the variant `key` picks (sticky), and returns what it returns.
    /// For repeated picks on one thread a [`Variants`] handle is cheaper.
    pub fn with_variant<R>(&self, key: impl AsRef<[u8]>, f: impl FnOnce(&Variant) -> R) -> R {
        let compiled = self.inner.compiled.load();
        let i = compiled.pick(self.inner.prefix.hash(key.as_ref()));
        self.inner.counts.bump(2 + i);
        f(&compiled.variants[i])
    }

    /// A handle that picks variants with a cached view of the value: cheaper than
    /// [`Switch::with_variant`], for one task or thread at a time (`&mut self`).
    pub fn variants(&self) -> Variants {
        Variants {
            switch: self.clone(),
            cache: Cache::new(self.inner.compiled.clone()),
        }
    }

    /// The variant `key` picks — or, without a key, the answer every caller gets when
    /// the switch is not split, else its off / first variant with reason
    /// [`Reason::Default`] — and why. Allocates; for OpenFeature and diagnostics, not
    /// for the hot path.
    pub fn resolve(&self, key: Option<&[u8]>) -> Resolution {
        let compiled = self.inner.compiled.load();
        let (i, reason) = match (key, compiled.reason) {
            (Some(key), reason) => (compiled.pick(self.inner.prefix.hash(key)), reason),
            (None, Reason::Split) => (compiled.control, Reason::Default),
            (None, reason) => (compiled.pick(0), reason),
        };
        self.inner.counts.bump(2 + i);
        Resolution {
            variant: compiled.variants[i].clone(),
            reason,
        }
    }

    /// Exact evaluation counts so far, by result: `on` / `off` for [`Switch::is_on`],
    /// the variant's name for picks. Results never seen are left out.
    pub fn evaluations(&self) -> Vec<(String, u64)> {
        self.inner.counts.snapshot()
    }

    /// How many times the switch's value changed since it was made.
    pub fn changes(&self) -> u64 {
        self.inner.changed.load(Ordering::Relaxed)
    }

    /// A receiver that sees every change of the switch's value (a
    /// `tokio::sync::watch`: `changed().await`, then `borrow()`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<SwitchSettings>> {
        self.inner.changes.subscribe()
    }
}

/// A handle that does not keep a switch alive (the registry holds these, so a name no
/// longer used is freed).
#[derive(Clone, Debug)]
pub(crate) struct WeakSwitch(std::sync::Weak<SwitchInner>);

impl Switch {
    /// A handle to this switch that does not keep it alive.
    pub(crate) fn downgrade(&self) -> WeakSwitch {
        WeakSwitch(Arc::downgrade(&self.inner))
    }
}

impl WeakSwitch {
    /// The switch, while a handle of it is alive.
    pub(crate) fn upgrade(&self) -> Option<Switch> {
        self.0.upgrade().map(|inner| Switch { inner })
    }
}

fn labels(name: &str, compiled: &Compiled) -> Labels {
    let variants: Vec<&str> = compiled.variants.iter().map(Variant::name).collect();
    Labels::new(name, &variants)
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switch")
            .field("name", &self.name())
            .field("settings", &self.settings())
            .finish()
    }
}

/// Picks variants of one switch with a cached view of its value; see
/// [`Switch::variants`].
pub struct Variants {
    switch: Switch,
    cache: Cache<Arc<ArcSwap<Compiled>>, Arc<Compiled>>,
}

impl Variants {
    /// The variant `key` picks: sticky for as long as the value stays.
    #[inline]
    pub fn pick(&mut self, key: impl AsRef<[u8]>) -> &Variant {
        let h = self.switch.inner.prefix.hash(key.as_ref());
        self.pick_hash(h)
    }

    /// A variant drawn at random by weight, for a call without a key.
    #[inline]
    pub fn pick_random(&mut self) -> &Variant {
        self.pick_hash(fastrand::u32(..))
    }

    #[inline]
    fn pick_hash(&mut self, h: u32) -> &Variant {
        let compiled = self.cache.load();
        let i = compiled.pick(h);
        self.switch.inner.counts.bump(2 + i);
        &compiled.variants[i]
    }

    /// The switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }
}

impl fmt::Debug for Variants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Variants")
            .field("switch", &self.switch.name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur_matches_reference_values() {
        // Computed with Python's `mmh3.hash(bytes, 0, signed=False)`.
        let cases: [(&[u8], u32); 7] = [
            (b"", 0),
            (b"a", 1009084850),
            (b"ab", 2613040991),
            (b"abc", 3017643002),
            (b"abcd", 1139631978),
            (b"hello world", 1586663183),
            (b"fractional-flagjack", 2682799072),
        ];
        for (bytes, want) in cases {
            assert_eq!(murmur::murmur3_x86_32(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn prefix_state_equals_hashing_the_whole() {
        let all = b"switch-name.with-odd-length:user-1234567890";
        for split in 0..=all.len() {
            let (p, k) = all.split_at(split);
            assert_eq!(
                Prefix::new(p).hash(k),
                murmur::murmur3_x86_32(all),
                "split at {split}"
            );
        }
    }

    #[test]
    fn invalid_settings_are_an_error_not_a_panic() {
        for bad in [
            SwitchSettings::percent(150.0),
            SwitchSettings::percent(f64::NAN),
            SwitchSettings::variants([VariantSettings::new("a", 0)]),
        ] {
            let err = Switch::detached("bad", bad).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        let err = Switch::detached("bad", SwitchSettings::percent(150.0)).unwrap_err();
        assert_eq!(err.to_string(), "percent: 150 is not in 0..=100");
    }

    #[test]
    fn counts_every_result() {
        let s = Switch::detached("counted", SwitchSettings::percent(50.0)).unwrap();
        for i in 0..3000u32 {
            s.is_on(i.to_le_bytes());
        }
        let counts = s.evaluations();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 3000);
        s.update(SwitchSettings::variants([
            VariantSettings::new("a", 1),
            VariantSettings::new("b", 1),
        ]))
        .unwrap();
        let mut v = s.variants();
        for i in 0..100u32 {
            v.pick(i.to_le_bytes());
        }
        s.update(SwitchSettings::variants([VariantSettings::new("c", 1)]))
            .unwrap();
        let counts = s.evaluations();
        let get = |n: &str| counts.iter().find(|(k, _)| k == n).map_or(0, |(_, n)| *n);
        assert_eq!(get("a") + get("b"), 100);
        assert_eq!(get("on") + get("off"), 3000);
    }
}
