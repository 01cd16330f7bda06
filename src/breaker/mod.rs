//! A Hystrix-style circuit breaker with live settings.
//!
//! The breaker counts outcomes in a rolling **time** window (default 10 s in 10
//! buckets). Once the window holds at least `min_calls` calls (default 20) and the
//! failure rate reaches `error_rate` (default 50 %) — or, if `slow_call_ms` is set, the
//! slow-call rate reaches `slow_call_rate` — it opens. Timeouts count as failures. While
//! open it rejects calls for `open_ms` (default 5 s, optionally growing with
//! `open_backoff` on each consecutive re-open, spread by `open_jitter`); then it admits
//! **exactly** `half_open_calls` trial calls (default 1) however many callers race. All
//! trials succeeding closes it (with an empty window); any trial failing re-opens it. A
//! trial whose future is dropped gives its permit back, so the breaker cannot wedge in
//! half-open. `mode` switches live between `normal`, `force_open`, `force_closed` and
//! `metrics_only` (runs the state machine, never rejects).
//!
//! What counts as a failure is decided by a [`Classify`](crate::classify::Classify)
//! (default: every `Err`), chosen with [`CircuitBreakerLayer::classify`].
//!
//! # Rejection, not back-pressure
//! While open, `poll_ready` returns `Ready` **without polling the inner service**, and
//! the call fails at once with [`error::OpenCircuit`] — like tower's `LoadShed`. A
//! breaker that stayed `Pending` instead (linkerd's `Gate`) would make callers queue
//! behind a dead dependency, which is the cascade this layer exists to stop; a
//! rejection is an answer a fallback can turn into something useful.
//!
//! # Live settings
//! Settings are read from the policy on every call. Changing thresholds keeps the
//! window's counts; changing its shape (`window_ms` or `buckets`) starts an empty
//! window. The state machine and window belong to the [`Policy`], so every service
//! built from it shares one breaker.
//!
//! # Cost
//! A closed call reads the settings (one pointer compare), the state (one atomic load)
//! and the coarse clock (one atomic load), records into a per-thread stripe of the
//! window (one `fetch_add`), and holds the policy's state by a lease (two plain stores):
//! no allocation, lock, clock read or reference-count change. See BENCHMARKS.md.
//!
//! The service is the crate's one [`Guard`] with the breaker
//! stage alone; classification sees the error boxed (a timeout below is an `Elapsed`).
//!
//! ```
//! use substation::{BoxError, Policy, breaker::{BreakerState, CircuitBreakerLayer, error::OpenCircuit}};
//! use substation::settings::PolicySettings;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut settings = PolicySettings::default();
//! settings.breaker.min_calls = 4;
//! let policy = Policy::new("flaky", settings).unwrap();
//! let mut svc = CircuitBreakerLayer::new(&policy)
//!     .layer(service_fn(|fail: bool| async move {
//!         if fail { Err::<(), BoxError>("boom".into()) } else { Ok(()) }
//!     }));
//! for fail in [false, false, true, true] {
//!     let _ = svc.ready().await.unwrap().call(fail).await;
//! }
//! assert_eq!(policy.breaker_state(), BreakerState::Open);
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! assert!(err.is::<OpenCircuit>());
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
pub(crate) mod state;
pub(crate) mod window;

use crate::Policy;
use crate::classify::ErrorsAsFailures;
use crate::guard::{Guard, stages};

pub use self::layer::CircuitBreakerLayer;
pub use self::state::BreakerState;
pub use self::window::WindowCounts;

/// Protects calls with the policy's circuit breaker; see the [module docs](self).
pub type CircuitBreaker<S, C = ErrorsAsFailures> = Guard<S, C, stages::Breaker>;

impl<S, C> Guard<S, C, stages::Breaker> {
    /// Wraps `inner` with `policy`'s breaker, classifying outcomes with `classify`.
    pub fn new(inner: S, policy: &Policy, classify: C) -> Self {
        Guard::with_classify(inner, policy, classify)
    }
}
