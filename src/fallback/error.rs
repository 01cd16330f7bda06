//! The fallback's errors.

use std::fmt;

use crate::BoxError;
use crate::settings::Tier;

/// Every fallback tier failed. The dependency's own error is at the end of the
/// `source()` chain (and [`FallbackFailed::original`]); each tier's error is a
/// [`TierFailed`] link before it, in the order the tiers were tried.
#[derive(Debug)]
pub struct FallbackFailed {
    chain: BoxError,
}

impl FallbackFailed {
    pub(crate) fn new(original: BoxError, tiers: Vec<(Tier, BoxError)>) -> Self {
        let mut chain = original;
        for (tier, cause) in tiers.into_iter().rev() {
            chain = Box::new(TierFailed {
                tier,
                cause,
                next: chain,
            });
        }
        FallbackFailed { chain }
    }

    /// The dependency's error (or the reason it was not called: `OpenCircuit`,
    /// `Killed`, `BulkheadFull`, `Elapsed`, …).
    pub fn original(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        let mut e: &(dyn std::error::Error + Send + Sync + 'static) = &*self.chain;
        while let Some(link) = e.downcast_ref::<TierFailed>() {
            e = &*link.next;
        }
        e
    }

    /// Each tier that was tried, with its error.
    pub fn tiers(&self) -> Vec<(Tier, &(dyn std::error::Error + Send + Sync + 'static))> {
        let mut out = Vec::new();
        let mut e: &(dyn std::error::Error + Send + Sync + 'static) = &*self.chain;
        while let Some(link) = e.downcast_ref::<TierFailed>() {
            out.push((link.tier, &*link.cause));
            e = &*link.next;
        }
        out
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the call failed and so did every fallback tier: {}",
            self.original()
        )
    }
}

impl std::error::Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.chain)
    }
}

/// One fallback tier's failure, a link in [`FallbackFailed`]'s chain.
#[derive(Debug)]
pub struct TierFailed {
    tier: Tier,
    cause: BoxError,
    next: BoxError,
}

impl TierFailed {
    /// The tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Why it failed.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }
}

impl fmt::Display for TierFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fallback failed: {}", self.tier.as_str(), self.cause)
    }
}

impl std::error::Error for TierFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.next)
    }
}

unit_error!(
    /// The cache tier had no response for the key, or only one older than
    /// `fallback.cache_max_stale_ms`.
    NoCachedResponse,
    "no cached response fresh enough"
);
unit_error!(
    /// The service tier had no request: the request-cloning function declined.
    NoRequest,
    "the request could not be cloned for the alternate service"
);
unit_error!(
    /// The service tier was skipped: `fallback.max_concurrent` calls already in flight.
    FallbackBusy,
    "too many fallback calls in flight"
);
unit_error!(
    /// The dependency answered, but with a response classified as a failure (e.g. an
    /// HTTP 5xx); this stands for it where an error is expected.
    FailedResponse,
    "the dependency answered with a failure"
);
