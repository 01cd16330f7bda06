//! Failure classification: which outcomes count against a dependency.
//!
//! The breaker (and later the fallback) asks a [`Classify`] what a finished call was;
//! the classifier is chosen per layer and is independent of the breaker, as in
//! tower-http's `classify` module. The default, [`ErrorsAsFailures`], counts every `Err`
//! as a failure and every `Ok` as a success. Behind features:
//!
//! - `http`: [`ServerErrorsAsFailures`] for `http::Response` — 5xx failures, 4xx not.
//! - `tonic`: [`GrpcCodes`] — UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
//!   INTERNAL and UNKNOWN are failures; INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
//!   PERMISSION_DENIED and the other caller-side codes are not.
//!
//! ```
//! use substation::classify::{Classify, ErrorsAsFailures, Outcome};
//!
//! let ok: Result<u32, &str> = Ok(1);
//! let err: Result<u32, &str> = Err("boom");
//! assert_eq!(ErrorsAsFailures.classify(&ok), Outcome::Success);
//! assert_eq!(ErrorsAsFailures.classify(&err), Outcome::Failure);
//!
//! // A classifier of your own: a 200 whose body says "degraded" is a failure, say.
//! #[derive(Clone, Copy)]
//! struct Degraded;
//! impl Classify<&'static str, ()> for Degraded {
//!     fn classify(&self, r: &Result<&'static str, ()>) -> Outcome {
//!         match r {
//!             Ok(body) if !body.contains("degraded") => Outcome::Success,
//!             _ => Outcome::Failure,
//!         }
//!     }
//! }
//! assert_eq!(Degraded.classify(&Ok("degraded")), Outcome::Failure);
//! ```

#[cfg(feature = "tonic")]
mod grpc;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "tonic")]
pub use self::grpc::{GrpcCodes, GrpcResponse};
#[cfg(feature = "http")]
pub use self::http::ServerErrorsAsFailures;

/// What a finished call counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job (a 404 usually counts here: the caller's problem).
    Success,
    /// The dependency failed (a 5xx, a transport error, a timeout).
    Failure,
}

/// Decides what a finished call counts as. Called once per completed call on the
/// request path: keep it cheap (a classifier is cloned into each response future, so
/// make it `Copy` or small).
pub trait Classify<T, E> {
    /// Classifies one result.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// The default classifier: every `Err` is a failure, every `Ok` a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}
