//! The bulkhead: a live cap on a dependency's calls in flight.
//!
//! With `bulkhead.max_concurrent` set, at most that many calls of the policy are in
//! flight at once (across every service built from it); one more is rejected at once —
//! no queue — with [`BulkheadFull`], which a fallback can catch. The slot is taken in
//! `poll_ready` (a rejection answers `Ready` without polling the inner service, like
//! tower's `LoadShed`) and given back when the response future finishes or is dropped.
//! `null` (the default) means no limit and costs nothing. The service is the crate's one
//! [`Guard`] with the bulkhead stage alone.
//!
//! ```
//! use substation::{Policy, bulkhead::{BulkheadFull, BulkheadLayer}, settings::PolicySettings};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut s = PolicySettings::default();
//! s.bulkhead.max_concurrent = Some(1);
//! let policy = Policy::new("search", s).unwrap();
//! let svc = BulkheadLayer::new(&policy).layer(service_fn(|()| std::future::pending::<Result<(), std::io::Error>>()));
//! let mut a = svc.clone();
//! let _in_flight = a.ready().await.unwrap().call(());
//! let err = svc.oneshot(()).await.unwrap_err();
//! assert!(err.is::<BulkheadFull>());
//! # }
//! ```

use tower::Layer;

use crate::Policy;
use crate::classify::ErrorsAsFailures;
use crate::guard::{Guard, stages};

unit_error!(
    /// The call was rejected: the policy's bulkhead is full. Zero-sized.
    BulkheadFull,
    "bulkhead full: too many calls in flight"
);

/// Caps the policy's calls in flight; see the [module docs](self).
pub type Bulkhead<S> = Guard<S, ErrorsAsFailures, stages::Bulkhead>;

/// The response future of [`Bulkhead`]: holds the slot until it finishes or drops.
pub type BulkheadFuture<F> =
    crate::guard::future::ResponseFuture<F, ErrorsAsFailures, stages::Bulkhead>;

/// Builds [`Bulkhead`] services; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    policy: Policy,
}

impl BulkheadLayer {
    /// A layer applying `policy`'s bulkhead.
    pub fn new(policy: &Policy) -> Self {
        BulkheadLayer {
            policy: policy.clone(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard::plain(inner, &self.policy)
    }
}
