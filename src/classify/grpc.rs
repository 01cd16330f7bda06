use std::any::Any;

use tonic::{Code, Status};

use super::{Classify, Outcome};
use crate::BoxError;

/// Classifies gRPC outcomes by status code.
///
/// Failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
/// `INTERNAL`, `UNKNOWN` (the dependency's trouble). Every other code — `OK`,
/// `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
/// `UNAUTHENTICATED`, `FAILED_PRECONDITION`, … — is a success: the dependency answered.
///
/// It reads the code from wherever it is:
/// - an `http::Response` (a layer around a tonic `Channel`): the `grpc-status` header of
///   a trailers-only response (how servers answer an error before any message); a
///   non-200 HTTP status is mapped as gRPC does (502/503/504 → `UNAVAILABLE`, …).
///   A code that arrives only in the trailers after a streamed body is not seen here.
/// - a `tonic::Response` (a layer around a generated client's method): `OK`.
/// - an `Err` that is a `tonic::Status`, or a `BoxError` with a `Status` in its
///   `source()` chain: its code. Any other `Err` (transport, timeout) is a failure.
///
/// ```
/// use substation::classify::{Classify, GrpcCodes, Outcome};
///
/// let not_found: Result<tonic::Response<()>, tonic::Status> = Err(tonic::Status::not_found("no"));
/// let unavailable: Result<tonic::Response<()>, tonic::Status> = Err(tonic::Status::unavailable("down"));
/// assert_eq!(GrpcCodes::default().classify(&not_found), Outcome::Success);
/// assert_eq!(GrpcCodes::default().classify(&unavailable), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCodes {
    failures: u32,
}

const DEFAULT_FAILURES: [Code; 5] = [
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Internal,
    Code::Unknown,
];

impl Default for GrpcCodes {
    fn default() -> Self {
        GrpcCodes::failing(&DEFAULT_FAILURES)
    }
}

impl GrpcCodes {
    /// A classifier that counts exactly `codes` as failures.
    pub fn failing(codes: &[Code]) -> Self {
        GrpcCodes {
            failures: codes.iter().fold(0, |m, c| m | 1 << (*c as i32 as u32)),
        }
    }

    /// Whether `code` counts as a failure.
    pub fn is_failure(&self, code: Code) -> bool {
        self.failures & (1 << (code as i32 as u32)) != 0
    }

    fn of(&self, code: Code) -> Outcome {
        if self.is_failure(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    fn of_error(&self, error: &dyn Any) -> Outcome {
        if let Some(status) = error.downcast_ref::<Status>() {
            return self.of(status.code());
        }
        if let Some(boxed) = error.downcast_ref::<BoxError>() {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**boxed);
            while let Some(e) = source {
                if let Some(status) = e.downcast_ref::<Status>() {
                    return self.of(status.code());
                }
                source = e.source();
            }
        }
        Outcome::Failure
    }
}

/// A successful response whose gRPC code [`GrpcCodes`] can read.
pub trait GrpcResponse {
    /// The gRPC code this response carries (`OK` if it does not say).
    fn grpc_code(&self) -> Code;
}

impl<B> GrpcResponse for http::Response<B> {
    fn grpc_code(&self) -> Code {
        if let Some(value) = self.headers().get("grpc-status") {
            return value
                .to_str()
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .map_or(Code::Unknown, Code::from_i32);
        }
        match self.status().as_u16() {
            200 => Code::Ok,
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502..=504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl<T> GrpcResponse for tonic::Response<T> {
    fn grpc_code(&self) -> Code {
        Code::Ok
    }
}

impl<T: GrpcResponse, E: 'static> Classify<T, E> for GrpcCodes {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(response) => self.of(response.grpc_code()),
            Err(error) => self.of_error(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, grpc: Option<&str>) -> Result<http::Response<()>, BoxError> {
        let mut b = http::Response::builder().status(status);
        if let Some(code) = grpc {
            b = b.header("grpc-status", code);
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn codes() {
        let c = GrpcCodes::default();
        let failures = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
        ];
        for code in (0..=16).map(Code::from_i32) {
            let r: Result<tonic::Response<()>, Status> = Err(Status::new(code, "x"));
            let expect = if failures.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(c.classify(&r), expect, "{code:?}");
            let h = http(200, Some(&(code as i32).to_string()));
            assert_eq!(c.classify(&h), expect, "{code:?} in a header");
        }
    }

    #[test]
    fn responses_and_errors() {
        let c = GrpcCodes::default();
        assert_eq!(c.classify(&http(200, None)), Outcome::Success);
        assert_eq!(c.classify(&http(503, None)), Outcome::Failure);
        assert_eq!(c.classify(&http(200, Some("garbage"))), Outcome::Failure);
        let transport: Result<http::Response<()>, BoxError> = Err("connection refused".into());
        assert_eq!(c.classify(&transport), Outcome::Failure);
        let boxed: Result<http::Response<()>, BoxError> = Err(Box::new(Status::not_found("x")));
        assert_eq!(c.classify(&boxed), Outcome::Success);
        let ok: Result<tonic::Response<()>, Status> = Ok(tonic::Response::new(()));
        assert_eq!(c.classify(&ok), Outcome::Success);
        let custom = GrpcCodes::failing(&[Code::NotFound]);
        let nf: Result<tonic::Response<()>, Status> = Err(Status::not_found("x"));
        assert_eq!(custom.classify(&nf), Outcome::Failure);
    }
}
