//! The kill switch: a live per-policy off switch for a dependency.
//!
//! While the policy's `kill` is `true` — or the policy is non-critical and the registry
//! sheds non-critical dependencies (`global.shed_non_critical`) — calls never reach the
//! inner service: `poll_ready` answers `Ready` without polling it and the call fails at
//! once with [`Killed`]. Inside a [`PolicyLayer`](crate::stack::PolicyLayer) with a
//! fallback, a killed call goes straight to the fallback instead.
//!
//! The service is the crate's one [`Guard`] with the kill stage
//! alone. The switch is read in `poll_ready`. A caller still waiting for the inner service to
//! become ready (a reconnecting channel) is checked again on every `poll_ready`, so a
//! kill preempts the wait. Once the inner service has said it is ready, the call is
//! committed to it — the layers below may hold a bulkhead slot or a half-open trial
//! for it — and the kill applies from the next call.
//!
//! ```
//! use substation::{Policy, kill::{KillSwitchLayer, Killed}, settings::PolicySettings};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::new("ads", PolicySettings::default()).unwrap();
//! let svc = KillSwitchLayer::new(&policy).layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
//! let mut s = (*policy.settings()).clone();
//! s.kill = true;
//! policy.update(s).unwrap();
//! assert!(svc.oneshot(1).await.unwrap_err().is::<Killed>());
//! # }
//! ```

use tower::Layer;

use crate::Policy;
use crate::classify::ErrorsAsFailures;
use crate::guard::{Guard, stages};

unit_error!(
    /// The call was not made: the dependency is killed (its policy's kill switch, or
    /// shedding of non-critical dependencies). Zero-sized: boxing it allocates nothing.
    Killed,
    "dependency killed by its kill switch"
);

/// Fails calls at once while the policy is killed; see the [module docs](self).
pub type KillSwitch<S> = Guard<S, ErrorsAsFailures, stages::Kill>;

/// The response future of [`KillSwitch`].
pub type KillFuture<F> = crate::guard::future::ResponseFuture<F, ErrorsAsFailures, stages::Kill>;

/// Builds [`KillSwitch`] services; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct KillSwitchLayer {
    policy: Policy,
}

impl KillSwitchLayer {
    /// A layer obeying `policy`'s kill switch.
    pub fn new(policy: &Policy) -> Self {
        KillSwitchLayer {
            policy: policy.clone(),
        }
    }
}

impl<S> Layer<S> for KillSwitchLayer {
    type Service = KillSwitch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::plain(inner, &self.policy)
    }
}
