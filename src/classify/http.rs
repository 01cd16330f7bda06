use super::{Classify, Outcome};

/// Classifies `http::Response`s by status: 5xx are failures, everything else (4xx
/// included — the caller's mistake, not the dependency's) a success; every `Err` (a
/// transport error, a timeout) is a failure.
///
/// ```
/// use substation::classify::{Classify, Outcome, ServerErrorsAsFailures};
///
/// let r = |code: u16| -> Result<http::Response<()>, ()> {
///     Ok(http::Response::builder().status(code).body(()).unwrap())
/// };
/// assert_eq!(ServerErrorsAsFailures.classify(&r(503)), Outcome::Failure);
/// assert_eq!(ServerErrorsAsFailures.classify(&r(404)), Outcome::Success);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerErrorsAsFailures;

impl<B, E> Classify<http::Response<B>, E> for ServerErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if !response.status().is_server_error() => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        for (code, outcome) in [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (302, Outcome::Success),
            (400, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Success),
            (500, Outcome::Failure),
            (502, Outcome::Failure),
            (503, Outcome::Failure),
            (504, Outcome::Failure),
        ] {
            let r: Result<_, ()> = Ok(http::Response::builder().status(code).body(()).unwrap());
            assert_eq!(ServerErrorsAsFailures.classify(&r), outcome, "{code}");
        }
        let e: Result<http::Response<()>, &str> = Err("connection refused");
        assert_eq!(ServerErrorsAsFailures.classify(&e), Outcome::Failure);
    }
}
