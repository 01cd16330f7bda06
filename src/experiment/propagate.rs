//! Across services: the cohort in the `substation-experiment` header (feature `http`).

use std::fmt;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue};
use tower::{Layer, Service};

use super::{Arm, current_with};

/// The header (and gRPC metadata key) that carries a request's cohort to the next
/// service: `<experiment>=<control|experiment>`, e.g. `substation-experiment:
/// no-inventory=experiment`. Like FIT's failure context, it is trusted: it belongs on
/// internal hops, and an edge facing the internet should not adopt it
/// (`ExperimentLayer::http` is for services behind the edge, or strip it there).
pub const HEADER: &str = "substation-experiment";

/// Parses the header: an experiment name and an arm; anything else is no cohort.
pub(crate) fn parse(headers: &HeaderMap) -> Option<(&str, Arm)> {
    let value = headers.get(HEADER)?.to_str().ok()?;
    let (name, arm) = value.trim().split_once('=')?;
    let arm = match arm.trim() {
        "control" => Arm::Control,
        "experiment" => Arm::Experiment,
        _ => return None,
    };
    let name = name.trim();
    crate::live::valid_name(name).then_some((name, arm))
}

/// Writes the current request's cohort (if any) into outgoing requests'
/// `substation-experiment` header: put it on the clients a handler calls other services
/// with (a hyper client, a tonic channel).
///
/// ```
/// use substation::experiment::{HEADER, PropagateLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = PropagateLayer::new().layer(service_fn(|req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(req.headers().contains_key(HEADER))
/// }));
/// // Outside any cohort nothing is added.
/// assert!(!client.oneshot(http::Request::new(())).await.unwrap());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateLayer {
    _private: (),
}

impl PropagateLayer {
    /// The layer.
    pub fn new() -> Self {
        PropagateLayer { _private: () }
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Propagate<S> {
        Propagate { inner }
    }
}

/// Adds the cohort header; see [`PropagateLayer`].
#[derive(Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S: fmt::Debug> fmt::Debug for Propagate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Propagate")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B> Service<http::Request<B>> for Propagate<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        let value = current_with(|c| {
            c.and_then(|c| {
                HeaderValue::try_from(format!("{}={}", c.experiment(), c.arm().as_str())).ok()
            })
        });
        match value {
            Some(v) => drop(req.headers_mut().insert(HEADER, v)),
            // Not in a cohort here: nothing from an earlier hop is passed on.
            None => drop(req.headers_mut().remove(HEADER)),
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_parsed_strictly() {
        let mut h = HeaderMap::new();
        for (value, want) in [
            ("exp=experiment", Some(("exp", Arm::Experiment))),
            (" exp = control ", Some(("exp", Arm::Control))),
            ("exp=other", None),
            ("exp", None),
            ("a b=control", None),
            ("=control", None),
        ] {
            h.insert(HEADER, HeaderValue::from_static(value));
            assert_eq!(parse(&h), want, "{value}");
        }
    }
}
