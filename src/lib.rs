//! Live resilience middleware for [Tower](tower): kill switches, tiered fallbacks,
//! bulkheads, circuit breakers, timeouts, retries and hedging, fault injection and percentage feature
//! switches, whose every setting can change while the service runs.
//!
//! Each dependency an application calls gets a named [`Policy`]. Layers built from the
//! policy ([`stack::PolicyLayer`] for all of them at once, or each alone) read its
//! settings on every call, so a new value — from code, from a test, or pushed by a
//! settings [`live::Source`] into a [`Substation`] — applies to the next call without
//! rebuilding the service stack and without losing the breaker's state.
//!
//! ```
//! use substation::{BoxError, Substation, breaker::CircuitBreakerLayer, timeout::TimeoutLayer};
//! use substation::settings::PolicySettings;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let substation = Substation::builder()
//!     .policy("recommendations", PolicySettings::default())
//!     .build()?;
//! let policy = substation.policy("recommendations");
//! let client = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(&policy))
//!     .layer(TimeoutLayer::new(&policy))
//!     .service(service_fn(|user: u64| async move { Ok::<_, BoxError>(format!("picks for {user}")) }));
//! assert_eq!(client.oneshot(7).await?, "picks for 7");
//! # Ok(())
//! # }
//! ```
//!
//! Module map:
//! - the protections: [`stack`] (the whole policy stack in one layer), [`kill`],
//!   [`fallback`], [`bulkhead`], [`breaker`], [`timeout`] — each a view of the one
//!   engine in [`guard`] — [`retry`] (live retries with a budget, and hedging) and
//!   [`fault`] (fault injection);
//! - [`switch`]: feature switches (sticky percentages, variants, routing);
//! - [`policy`] (named live policies and their runtime state), [`settings`] (plain data
//!   and validation), [`live`] (the registry, its snapshots and sources, etcd among
//!   them);
//! - [`classify`] (what counts as a failure), [`metrics`] (names and `describe()`),
//!   [`clock`], and behind `test-util`, `testkit`.

// `unsafe` is confined to `lease` (shared ownership without a locked instruction per
// call; see its docs and ARCHITECTURE.md), which allows it explicitly.
#![deny(unsafe_code)]

/// A zero-sized error type (boxing it into a `BoxError` allocates nothing), with a
/// lowercase message.
macro_rules! unit_error {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name(());

        impl $name {
            #[doc = concat!("A new `", stringify!($name), "`.")]
            pub fn new() -> Self {
                $name(())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($msg)
            }
        }

        impl std::error::Error for $name {}
    };
}

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod clock;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod experiment;
pub mod fallback;
pub mod fault;
pub mod guard;
pub mod kill;
mod lease;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod retry;
pub mod settings;
pub mod stack;
pub mod stats;
pub mod switch;
#[cfg(feature = "test-util")]
pub mod testkit;
mod thread;
pub mod timeout;

pub use crate::live::Substation;
pub use crate::policy::Policy;

/// The error type of every substation layer: the inner error, or one of substation's
/// own ([`timeout::error::Elapsed`], [`breaker::error::OpenCircuit`], …), boxed. Tell
/// them apart with `err.is::<T>()` or `downcast_ref`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// README.md's examples, compiled and run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
