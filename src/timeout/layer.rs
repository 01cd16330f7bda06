use tower::Layer;

use super::Timeout;
use crate::Policy;

/// Builds [`Timeout`] services from a policy; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    policy: Policy,
}

impl TimeoutLayer {
    /// A layer applying `policy`'s live timeout.
    pub fn new(policy: &Policy) -> Self {
        TimeoutLayer {
            policy: policy.clone(),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, &self.policy)
    }
}
