//! Retries for `http` clients (hyper's, reqwest's services, anything of
//! `http::Request` → `http::Response`).

use std::time::{Duration, SystemTime};

use super::{Retryable, Verdict, is_rejection};
use crate::BoxError;

/// Retries an HTTP call on a connection error or a 502, 503 or 504, never on a 4xx or
/// another status, and only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT,
/// DELETE) unless [`Http::any_method`] says otherwise; honours `Retry-After` (seconds or
/// an HTTP date) as the wait. The request's body must be `Clone` (e.g. `Full<Bytes>`,
/// `String`, `()`); a request with extensions loses them in the copy (`http` cannot
/// copy them).
#[derive(Clone, Debug, Default)]
pub struct Http {
    any_method: bool,
}

impl Http {
    /// Retries idempotent requests.
    pub fn new() -> Self {
        Http::default()
    }

    /// Retries requests of every method: for an application whose POSTs are idempotent
    /// (an idempotency key, a dedup on the server).
    pub fn any_method(mut self) -> Self {
        self.any_method = true;
        self
    }
}

fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl<B: Clone, Resp> Retryable<http::Request<B>, http::Response<Resp>> for Http {
    fn clone_request(&self, req: &http::Request<B>) -> Option<http::Request<B>> {
        if !self.any_method && !idempotent(req.method()) {
            return None;
        }
        let mut copy = http::Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }

    fn verdict(&self, result: &Result<http::Response<Resp>, BoxError>) -> Verdict {
        match result {
            Ok(resp) => match resp.status().as_u16() {
                502..=504 => match retry_after(resp.headers()) {
                    Some(after) => Verdict::RetryAfter(after),
                    None => Verdict::Retry,
                },
                _ => Verdict::Done,
            },
            Err(e) if is_rejection(e) => Verdict::Done,
            Err(_) => Verdict::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(soon).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            (Duration::from_secs(28)..=Duration::from_secs(30)).contains(&d),
            "{d:?}"
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_server_unavailability_and_connection_errors_are_retried() {
        let r = Http::new();
        let copy = |r: &Http, req: &http::Request<()>| {
            Retryable::<http::Request<()>, http::Response<()>>::clone_request(r, req)
        };
        let verdict = |res: &Result<http::Response<()>, BoxError>| {
            Retryable::<http::Request<()>, http::Response<()>>::verdict(&r, res)
        };
        let resp = |code: u16| -> Result<http::Response<()>, BoxError> {
            Ok(http::Response::builder().status(code).body(()).unwrap())
        };
        for code in [502, 503, 504] {
            assert_eq!(verdict(&resp(code)), Verdict::Retry, "{code}");
        }
        for code in [200, 400, 404, 429, 500, 501] {
            assert_eq!(verdict(&resp(code)), Verdict::Done, "{code}");
        }
        let refused: Result<http::Response<()>, BoxError> =
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
        assert_eq!(verdict(&refused), Verdict::Retry);
        let open: Result<http::Response<()>, BoxError> =
            Err(crate::breaker::error::OpenCircuit::new().into());
        assert_eq!(verdict(&open), Verdict::Done);
        let get = http::Request::get("/a").header("x", "1").body(()).unwrap();
        let copied = copy(&r, &get).unwrap();
        assert_eq!(
            (copied.uri(), copied.headers()["x"].to_str().unwrap()),
            (get.uri(), "1")
        );
        let post = http::Request::post("/a").body(()).unwrap();
        assert!(copy(&r, &post).is_none());
        assert!(copy(&Http::new().any_method(), &post).is_some());
    }
}
