//! The one-line policy stack: everything that protects one dependency, in order.
//!
//! [`PolicyLayer`] builds, from one live [`Policy`], outermost first:
//!
//! ```text
//! kill switch → fallback → bulkhead → circuit breaker → timeout → the dependency
//! ```
//!
//! - **Kill switch first**: a killed dependency costs nothing — not a bulkhead slot, not
//!   a breaker count — and goes straight to the fallback (it is fused with the fallback
//!   layer, so that "killed" can be answered by the fallback at all).
//! - **Fallback outside everything that can fail**: it catches the open circuit, the
//!   full bulkhead, the timeout and the dependency's own failures alike. This is the
//!   order of failsafe-go and of Microsoft's standard resilience handler (fallback
//!   outermost) and of Polly's pipelines; Hystrix runs its fallback on the same set of
//!   events (short-circuit, rejection, timeout, failure).
//! - **Bulkhead outside the breaker**: a call rejected for lack of room says nothing
//!   about the dependency's health, so the breaker must not count it (failsafe-go and
//!   Microsoft order them the same way; Hystrix checks the breaker first). With the
//!   breaker open and the bulkhead full, the caller meets the bulkhead
//!   (`BulkheadFull`); with only the breaker open, no slot is taken — the bulkhead's
//!   count is read, not changed.
//! - **Timeout innermost**: it bounds the dependency itself, and the breaker counts a
//!   timeout as a failure (Hystrix, resilience4j, failsafe-go all do).
//!
//! - **Retries between the fallback and the bulkhead** ([`PolicyLayer::retry`], off
//!   until `retry.max_attempts` is above 1): each attempt takes its own bulkhead slot
//!   and is seen by the breaker (a retry inside the breaker would hide failures from
//!   it) and bounded by the timeout; the fallback answers only when the retries are
//!   spent or refused by the budget; a killed dependency is not retried. A rejection
//!   by the stack (open circuit, full bulkhead) ends the call at once: the dependency
//!   was not asked. See [`crate::retry`].
//!
//! Readiness follows the kill switch's rule ([`crate::kill`]): a kill preempts a caller
//! waiting for the dependency to become ready (the bulkhead slot and any trial permit
//! of that wait go back at once), and a call the dependency said it is ready for is
//! made.
//!
//! Every setting of every layer is read from the policy on each call, so one change —
//! from code, a test, or etcd — applies to the next call. The stack is not a
//! composition of the individual layers but the one engine they are views of
//! ([`Guard`]) with every stage on, under the fallback: one
//! settings read, one readiness decision, one response future. The individual layers
//! ([`KillSwitchLayer`](crate::kill::KillSwitchLayer),
//! [`FallbackLayer`],
//! [`BulkheadLayer`](crate::bulkhead::BulkheadLayer),
//! [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer),
//! [`TimeoutLayer`](crate::timeout::TimeoutLayer)) compose the same way for those who
//! build their own, with something between them.
//!
//! ```
//! use substation::{Policy, fallback::Fallback, settings::PolicySettings, stack::PolicyLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut settings = PolicySettings::default();
//! settings.kill = true; // an operator switched the dependency off
//! let policy = Policy::new("recommendations", settings).unwrap();
//! let client = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(&policy).fallback(Fallback::new().static_value("bestsellers")))
//!     .service(service_fn(|_: u64| async { Ok::<_, std::io::Error>("personal picks") }));
//! assert_eq!(client.oneshot(7).await.unwrap(), "bestsellers");
//! # }
//! ```

use tower::Layer;

use crate::Policy;
use crate::classify::ErrorsAsFailures;
use crate::fallback::{Fallback, FallbackLayer, FallbackService};
use crate::guard::{Guard, stages};
use crate::retry::{Retry, RetryLayer, SharedRetry};

/// The protection of one dependency without a fallback: kill switch → bulkhead →
/// circuit breaker → timeout, as one service.
pub type Protected<S, C = ErrorsAsFailures> = Guard<S, C, stages::All>;

/// The protection of one dependency with a fallback: kill switch and fallback, then
/// bulkhead, circuit breaker and timeout, as one service.
pub type PolicyService<S, Req, Resp, P, C = ErrorsAsFailures> =
    FallbackService<S, Req, Resp, P, C, stages::All>;

/// The protection of one dependency with retries and without a fallback: kill switch,
/// then the retry stage, then bulkhead, circuit breaker and timeout for each attempt.
pub type RetryingService<S, R, C = ErrorsAsFailures> =
    Guard<Retry<Guard<S, C, stages::Attempt>, SharedRetry<R>>, C, stages::Kill>;

/// The protection of one dependency with retries and a fallback: kill switch and
/// fallback, then the retry stage, then bulkhead, circuit breaker and timeout for each
/// attempt.
pub type RetryingPolicyService<S, R, Req, Resp, P, C = ErrorsAsFailures> = FallbackService<
    Retry<Guard<S, C, stages::Attempt>, SharedRetry<R>>,
    Req,
    Resp,
    P,
    C,
    stages::Kill,
>;

/// Builds the whole protection of a dependency from its policy; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct PolicyLayer<C = ErrorsAsFailures> {
    policy: Policy,
    classify: C,
}

impl PolicyLayer {
    /// The stack for `policy`; every `Err` counts as a failure.
    pub fn new(policy: &Policy) -> Self {
        PolicyLayer {
            policy: policy.clone(),
            classify: ErrorsAsFailures,
        }
    }
}

impl<C: Clone> PolicyLayer<C> {
    /// Classifies outcomes with `classify` (for the breaker and the fallback alike).
    pub fn classify<C2>(self, classify: C2) -> PolicyLayer<C2> {
        PolicyLayer {
            policy: self.policy,
            classify,
        }
    }

    /// Adds a fallback. Its tiers live as long as the layer, the services built from it
    /// and their unfinished calls (see [`crate::fallback`]).
    pub fn fallback<Req: 'static, Resp: 'static, P: 'static>(
        self,
        fallback: Fallback<Req, Resp, P>,
    ) -> PolicyLayerWithFallback<Req, Resp, P, C> {
        PolicyLayerWithFallback {
            policy: self.policy.clone(),
            fallback: FallbackLayer::new(&self.policy, fallback).classify(self.classify),
        }
    }

    /// Adds the retry stage between the kill switch and the bulkhead, deciding with
    /// `retry` ([`crate::retry::Errors`], [`crate::retry::Http`], or your own
    /// [`Retryable`](crate::retry::Retryable)). It retries once the policy's `retry.max_attempts` is above 1.
    pub fn retry<R>(self, retry: R) -> PolicyLayerWithRetry<R, C> {
        PolicyLayerWithRetry {
            retry: RetryLayer::new(&self.policy, retry),
            policy: self.policy,
            classify: self.classify,
        }
    }
}

/// [`PolicyLayer`] with the retry stage.
#[derive(Clone, Debug)]
pub struct PolicyLayerWithRetry<R, C = ErrorsAsFailures> {
    policy: Policy,
    classify: C,
    retry: RetryLayer<R>,
}

impl<S, R, C> Layer<S> for PolicyLayerWithRetry<R, C>
where
    S: Clone + Send + 'static,
    C: Clone + Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    type Service = RetryingService<S, R, C>;

    fn layer(&self, service: S) -> Self::Service {
        let attempt: Guard<S, C, stages::Attempt> =
            Guard::with_classify(service, &self.policy, self.classify.clone());
        Guard::with_classify(
            self.retry.layer(attempt),
            &self.policy,
            self.classify.clone(),
        )
    }
}

impl<S, C: Clone> Layer<S> for PolicyLayer<C> {
    type Service = Protected<S, C>;

    fn layer(&self, service: S) -> Self::Service {
        Guard::with_classify(service, &self.policy, self.classify.clone())
    }
}

/// [`PolicyLayer`] with a fallback.
#[derive(Debug)]
pub struct PolicyLayerWithFallback<Req: 'static, Resp: 'static, P: 'static, C = ErrorsAsFailures> {
    policy: Policy,
    fallback: FallbackLayer<Req, Resp, P, C>,
}

impl<Req, Resp, P, C: Clone> Clone for PolicyLayerWithFallback<Req, Resp, P, C> {
    fn clone(&self) -> Self {
        PolicyLayerWithFallback {
            policy: self.policy.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<Req, Resp, P, C: Clone> PolicyLayerWithFallback<Req, Resp, P, C> {
    /// Adds the retry stage inside the fallback, outside the bulkhead: the fallback
    /// answers once the retries are spent or refused. See [`PolicyLayer::retry`].
    pub fn retry<R>(self, retry: R) -> PolicyLayerWithFallbackAndRetry<Req, Resp, P, R, C> {
        PolicyLayerWithFallbackAndRetry {
            retry: RetryLayer::new(&self.policy, retry),
            policy: self.policy,
            fallback: self.fallback,
        }
    }
}

/// [`PolicyLayer`] with a fallback and the retry stage.
#[derive(Debug)]
pub struct PolicyLayerWithFallbackAndRetry<
    Req: 'static,
    Resp: 'static,
    P: 'static,
    R,
    C = ErrorsAsFailures,
> {
    policy: Policy,
    fallback: FallbackLayer<Req, Resp, P, C>,
    retry: RetryLayer<R>,
}

impl<Req, Resp, P, R, C: Clone> Clone for PolicyLayerWithFallbackAndRetry<Req, Resp, P, R, C> {
    fn clone(&self) -> Self {
        PolicyLayerWithFallbackAndRetry {
            policy: self.policy.clone(),
            fallback: self.fallback.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<S, Req, Resp, P, R, C> Layer<S> for PolicyLayerWithFallbackAndRetry<Req, Resp, P, R, C>
where
    S: Clone + Send + 'static,
    C: Clone + Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    type Service = RetryingPolicyService<S, R, Req, Resp, P, C>;

    fn layer(&self, service: S) -> Self::Service {
        let attempt: Guard<S, C, stages::Attempt> =
            Guard::with_classify(service, &self.policy, self.fallback.classifier().clone());
        self.fallback
            .service::<_, stages::Kill>(self.retry.layer(attempt))
    }
}

impl<S, Req, Resp, P, C: Clone> Layer<S> for PolicyLayerWithFallback<Req, Resp, P, C> {
    type Service = PolicyService<S, Req, Resp, P, C>;

    fn layer(&self, service: S) -> Self::Service {
        self.fallback.service(service)
    }
}
