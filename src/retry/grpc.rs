//! Retries for tonic clients: a service of `tonic::Request<M>` → `tonic::Response<R>`
//! (a generated client's call wrapped as a `tower::Service`, or your own).

use std::time::Duration;

use super::{Retryable, Verdict, is_rejection};
use crate::BoxError;

/// Retries a gRPC call that failed with `UNAVAILABLE` (the server did not process it) or
/// with a transport error (no `Status`: the connection failed), honouring the server's
/// pushback as the wait: a `google.rpc.RetryInfo` in the status details, else the
/// `grpc-retry-pushback-ms` trailer of gRFC A6 (a negative or malformed one means "do
/// not retry"). Other codes stand. A request is copied with its message
/// (`M: Clone`) and metadata — its extensions are lost, as `tonic` cannot copy them.
///
/// At the `Channel` level (`http::Request<tonic::body::Body>`) the body is a stream
/// that cannot be copied: put the retry stage around the generated client's call
/// instead, or give [`Errors::cloning`](super::Errors::cloning) a function that
/// rebuilds the request.
#[derive(Clone, Debug, Default)]
pub struct Grpc {
    _private: (),
}

impl Grpc {
    /// Retries `UNAVAILABLE` and transport errors.
    pub fn new() -> Self {
        Grpc::default()
    }
}

/// What a failed call's status says about retrying it.
pub(crate) fn status_verdict(status: &tonic::Status) -> Verdict {
    use tonic_types::StatusExt as _;
    if status.code() != tonic::Code::Unavailable {
        return Verdict::Done;
    }
    // google.rpc.RetryInfo in the status details (`grpc-status-details-bin`).
    if let Some(delay) = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
    {
        return Verdict::RetryAfter(delay);
    }
    match status.metadata().get("grpc-retry-pushback-ms") {
        None => Verdict::Retry,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(ms) => Verdict::RetryAfter(Duration::from_millis(ms)),
            // gRFC A6: a negative or unparsable pushback means the server asks not to.
            None => Verdict::Done,
        },
    }
}

impl<M: Clone, R> Retryable<tonic::Request<M>, tonic::Response<R>> for Grpc {
    fn clone_request(&self, req: &tonic::Request<M>) -> Option<tonic::Request<M>> {
        let mut copy = tonic::Request::new(req.get_ref().clone());
        *copy.metadata_mut() = req.metadata().clone();
        Some(copy)
    }

    fn verdict(&self, result: &Result<tonic::Response<R>, BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Done,
            Err(e) if is_rejection(e) => Verdict::Done,
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                Some(status) => status_verdict(status),
                None => Verdict::Retry,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(result: Result<tonic::Response<()>, BoxError>) -> Verdict {
        Retryable::<tonic::Request<()>, tonic::Response<()>>::verdict(&Grpc::new(), &result)
    }

    #[test]
    fn unavailable_is_retried_after_its_pushback_other_codes_stand() {
        assert_eq!(verdict(Ok(tonic::Response::new(()))), Verdict::Done);
        assert_eq!(
            verdict(Err(tonic::Status::unavailable("restarting").into())),
            Verdict::Retry
        );
        let mut pushed = tonic::Status::unavailable("busy");
        pushed
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(
            verdict(Err(pushed.into())),
            Verdict::RetryAfter(Duration::from_millis(250))
        );
        use tonic_types::{ErrorDetails, StatusExt as _};
        let informed = tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "overloaded",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1_500))),
        );
        assert_eq!(
            verdict(Err(informed.into())),
            Verdict::RetryAfter(Duration::from_millis(1_500))
        );
        let mut refused = tonic::Status::unavailable("go away");
        refused
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(verdict(Err(refused.into())), Verdict::Done);
        for status in [
            tonic::Status::invalid_argument("bad"),
            tonic::Status::not_found("gone"),
            tonic::Status::deadline_exceeded("late"),
            tonic::Status::internal("bug"),
        ] {
            assert_eq!(verdict(Err(status.into())), Verdict::Done);
        }
        let transport: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(verdict(Err(transport)), Verdict::Retry);
        let killed: BoxError = crate::kill::Killed::new().into();
        assert_eq!(verdict(Err(killed)), Verdict::Done);
    }

    #[test]
    fn a_copy_keeps_the_message_and_metadata() {
        let mut req = tonic::Request::new(String::from("ping"));
        req.metadata_mut().insert("x-user", "7".parse().unwrap());
        let copy = Retryable::<tonic::Request<String>, tonic::Response<()>>::clone_request(
            &Grpc::new(),
            &req,
        )
        .unwrap();
        assert_eq!(copy.get_ref(), "ping");
        assert_eq!(copy.metadata().get("x-user").unwrap(), "7");
    }
}
