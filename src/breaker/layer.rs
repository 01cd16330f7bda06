use tower::Layer;

use super::CircuitBreaker;
use crate::Policy;
use crate::classify::ErrorsAsFailures;

/// Builds [`CircuitBreaker`] services from a policy; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    policy: Policy,
    classify: C,
}

impl CircuitBreakerLayer {
    /// A layer protecting calls with `policy`'s breaker; every `Err` is a failure.
    pub fn new(policy: &Policy) -> Self {
        CircuitBreakerLayer {
            policy: policy.clone(),
            classify: ErrorsAsFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies outcomes with `classify` instead (see [`crate::classify`]).
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            policy: self.policy,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, &self.policy, self.classify.clone())
    }
}
