//! The configured tiers: what each needs and how it answers.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use metrics::Histogram;
use tower::util::BoxCloneSyncService;

use super::error::NoCachedResponse;
use crate::settings::{FallbackSettings, Tier};
use crate::{BoxError, Policy};

/// What a fallback is answering for: the dependency's error, or why it was not called.
pub type Cause = dyn std::error::Error + Send + Sync + 'static;

pub(crate) type StaticFn<P, Resp> = Box<dyn Fn(&P, &Cause) -> Resp + Send + Sync>;

/// The static tier: a value (which needs nothing of the request, so a short-circuited
/// call need not even take its parts), or a function of the parts and the cause.
pub(crate) enum StaticTier<P, Resp> {
    Value(Box<dyn Fn() -> Resp + Send + Sync>),
    With(StaticFn<P, Resp>),
}

impl<P, Resp> StaticTier<P, Resp> {
    #[inline]
    pub(crate) fn build(&self, parts: &P, cause: &Cause) -> Resp {
        match self {
            StaticTier::Value(value) => value(),
            StaticTier::With(build) => build(parts, cause),
        }
    }
}
pub(crate) type CloneFn<Req> = Box<dyn Fn(&Req) -> Option<Req> + Send + Sync>;

/// The cache tier, erased over its key type.
pub(crate) trait CacheTier<P, Resp>: Send + Sync {
    /// The response cached for `parts`, unless older than `max_stale_ms`.
    fn get(&self, parts: &P, now: u64, max_stale_ms: u64) -> Result<Resp, BoxError>;
    /// Stores a good response, at most once per `refresh_ms` per key.
    fn fill(&self, parts: &P, resp: &Resp, now: u64, refresh_ms: u64);
}

/// Slots of the lossy "when was this key last refreshed" table.
const RECENT_SLOTS: usize = 4096;

pub(crate) struct KeyedCache<P, Resp> {
    cache: quick_cache::sync::Cache<P, (u64, Resp)>,
    /// Per key-hash slot, which key last refreshed it and when: the high 32 bits are
    /// the key's hash (its upper half), the low 32 the time in ms (wrapping). Bounds
    /// refreshes per key without a lookup; a slot another key stamped since does not
    /// hold this key back (it is refreshed: a collision costs an insert, never a
    /// missing entry).
    recent: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<P, Resp> KeyedCache<P, Resp>
where
    P: Hash + Eq + Clone + Send + Sync + 'static,
    Resp: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(capacity: usize) -> Self {
        KeyedCache {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            recent: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
        }
    }
}

impl<P, Resp> CacheTier<P, Resp> for KeyedCache<P, Resp>
where
    P: Hash + Eq + Clone + Send + Sync + 'static,
    Resp: Clone + Send + Sync + 'static,
{
    fn get(&self, parts: &P, now: u64, max_stale_ms: u64) -> Result<Resp, BoxError> {
        match self.cache.get(parts) {
            Some((at, resp)) if now.saturating_sub(at) <= max_stale_ms => Ok(resp),
            _ => Err(NoCachedResponse::new().into()),
        }
    }

    #[inline]
    fn fill(&self, parts: &P, resp: &Resp, now: u64, refresh_ms: u64) {
        let hash = self.hasher.hash_one(parts);
        let slot = &self.recent[hash as usize % RECENT_SLOTS];
        let tag = hash >> 32;
        let stamp = slot.load(Ordering::Relaxed);
        let same_key = stamp >> 32 == tag && stamp != 0;
        let since = (now as u32).wrapping_sub(stamp as u32);
        if refresh_ms != 0 && same_key && u64::from(since) < refresh_ms {
            return;
        }
        slot.store(tag << 32 | u64::from(now as u32), Ordering::Relaxed);
        self.cache.insert(parts.clone(), (now, resp.clone()));
    }
}

pub(crate) struct ServiceTier<Req, Resp> {
    pub(crate) service: BoxCloneSyncService<Req, Resp, BoxError>,
    pub(crate) clone_request: CloneFn<Req>,
    /// Service-tier calls in flight (each holds a clone while it runs).
    pub(crate) in_flight: Arc<AtomicU32>,
}

/// The tiers as the builder collects them, before they belong to a policy.
pub(crate) struct Config<Req, Resp, P> {
    pub(crate) parts: Box<dyn Fn(&Req) -> P + Send + Sync>,
    /// The tiers in the order the code added them.
    pub(crate) added: Vec<Tier>,
    pub(crate) static_fn: Option<StaticTier<P, Resp>>,
    pub(crate) cache: Option<Box<dyn CacheTier<P, Resp>>>,
    pub(crate) service: Option<ServiceTier<Req, Resp>>,
    pub(crate) on_answer: Option<AnswerHook<Resp>>,
}

/// What [`Fallback::on_answer`](super::Fallback::on_answer) installs.
pub(crate) type AnswerHook<Resp> = Box<dyn Fn(&mut Resp, Tier) + Send + Sync>;

/// Everything the fallback needs, shared by every service and future of one layer, and
/// dropped with the last of them. Holds its policy, so a lease on the tiers keeps the
/// policy's state alive too.
pub(crate) struct Tiers<Req, Resp, P> {
    pub(crate) policy: Policy,
    pub(crate) parts: Box<dyn Fn(&Req) -> P + Send + Sync>,
    pub(crate) added: Vec<Tier>,
    pub(crate) static_fn: Option<StaticTier<P, Resp>>,
    pub(crate) cache: Option<Box<dyn CacheTier<P, Resp>>>,
    pub(crate) service: Option<ServiceTier<Req, Resp>>,
    on_answer: Option<AnswerHook<Resp>>,
    pub(crate) service_duration: Histogram,
    default_order: Order,
    static_order: Order,
}

impl<Req, Resp, P> Tiers<Req, Resp, P> {
    /// The tiers of `config` for `policy`: metric handles registered under its name,
    /// the orders used when the settings name none precomputed.
    pub(crate) fn new(policy: &Policy, config: Config<Req, Resp, P>) -> Self {
        let name = policy.name();
        let mut tiers = Tiers {
            policy: policy.clone(),
            parts: config.parts,
            added: config.added,
            static_fn: config.static_fn,
            cache: config.cache,
            service: config.service,
            on_answer: config.on_answer,
            service_duration: metrics::histogram!(crate::metrics::FALLBACK_DURATION, "policy" => name.to_owned()),
            default_order: Order::default(),
            static_order: Order::default(),
        };
        tiers.default_order = tiers.compute_order(&tiers.added, true);
        tiers.static_order = tiers.compute_order(&tiers.added, false);
        tiers
    }

    /// `tier` answers with `resp`: counted, and shown to the answer hook.
    #[inline]
    pub(crate) fn served(&self, tier: Tier, mut resp: Resp) -> Resp {
        self.count(tier, true);
        if let Some(hook) = &self.on_answer {
            hook(&mut resp, tier);
        }
        resp
    }

    /// Counts an answer of `tier` (`served`) or its failure, in the policy's statistics.
    #[inline]
    pub(crate) fn count(&self, tier: Tier, served: bool) {
        let t = match tier {
            Tier::Static => 0,
            Tier::Cache => 1,
            Tier::Service => 2,
        };
        let counter = crate::stats::FALLBACK + 2 * t + usize::from(!served);
        self.policy.shared().stats.count(counter);
    }

    /// The tiers to try, in order: the settings' order, or the code's; only configured
    /// tiers; a non-critical dependency uses its static tier alone.
    #[inline]
    pub(crate) fn order(&self, s: &FallbackSettings, critical: bool) -> Order {
        match (&s.tiers, critical) {
            (None, true) => self.default_order,
            (None, false) => self.static_order,
            (Some(wanted), _) => self.compute_order(wanted, critical),
        }
    }

    fn compute_order(&self, wanted: &[Tier], critical: bool) -> Order {
        let mut order = Order::default();
        for &t in wanted {
            let configured = match t {
                Tier::Static => self.static_fn.is_some(),
                Tier::Cache => self.cache.is_some(),
                Tier::Service => self.service.is_some(),
            };
            if configured && (critical || t == Tier::Static) && self.added.contains(&t) {
                order.push(t);
            }
        }
        order
    }
}

/// Up to three tiers, in the order to try them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Order {
    tiers: [Option<Tier>; 3],
    len: u8,
}

impl Order {
    fn push(&mut self, t: Tier) {
        if (self.len as usize) < 3 {
            self.tiers[self.len as usize] = Some(t);
            self.len += 1;
        }
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<Tier> {
        self.tiers.get(i).copied().flatten()
    }
}
