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
//! Retries, if wanted, belong outside the whole stack (or between fallback and
//! bulkhead): a retry inside the breaker would hide failures from it.
//!
//! Readiness follows the kill switch's rule ([`crate::kill`]): a kill preempts a caller
//! waiting for the dependency to become ready (the bulkhead slot and any trial permit
//! of that wait go back at once), and a call the dependency said it is ready for is
//! made.
//!
//! Every setting of every layer is read from the policy on each call, so one change —
//! from code, a test, or etcd — applies to the next call. The stack is not a
//! composition of the individual layers but the one engine they are views of
//! ([`Guard`](crate::guard::Guard)) with every stage on, under the fallback: one
//! settings read, one readiness decision, one response future. The individual layers
//! ([`KillSwitchLayer`](crate::kill::KillSwitchLayer),
//! [`FallbackLayer`](crate::fallback::FallbackLayer),
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

/// The protection of one dependency without a fallback: kill switch → bulkhead →
/// circuit breaker → timeout, as one service.
pub type Protected<S, C = ErrorsAsFailures> = Guard<S, C, stages::All>;

/// The protection of one dependency with a fallback: kill switch and fallback, then
/// bulkhead, circuit breaker and timeout, as one service.
pub type PolicyService<S, Req, Resp, P, C = ErrorsAsFailures> =
    FallbackService<S, Req, Resp, P, C, stages::All>;

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
            fallback: FallbackLayer::new(&self.policy, fallback).classify(self.classify),
        }
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
    fallback: FallbackLayer<Req, Resp, P, C>,
}

impl<Req, Resp, P, C: Clone> Clone for PolicyLayerWithFallback<Req, Resp, P, C> {
    fn clone(&self) -> Self {
        PolicyLayerWithFallback {
            fallback: self.fallback.clone(),
        }
    }
}

impl<S, Req, Resp, P, C: Clone> Layer<S> for PolicyLayerWithFallback<Req, Resp, P, C> {
    type Service = PolicyService<S, Req, Resp, P, C>;

    fn layer(&self, service: S) -> Self::Service {
        self.fallback.service(service)
    }
}
