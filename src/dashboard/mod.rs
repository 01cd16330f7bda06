//! See it live: a status page, its JSON, and a Hystrix-compatible event stream for a
//! [`Substation`] (feature `dashboard`).
//!
//! [`Dashboard`] is a tower `Service` of `http::Request`s an application mounts under
//! any path of its own server (axum, hyper, tonic's); [`Dashboard::serve`] runs it on an
//! address of its own for an application without one. Routes, relative to where it is
//! mounted (only `GET`):
//!
//! - `…/` or `…/index.html`: one self-contained HTML page — a tile per policy (volume,
//!   error %, p99, breaker state, fallback share, a sparkline of the last three
//!   minutes), the switches with their rollout, the [chaos experiments](crate::experiment)
//!   when there are any (state — an aborted one in red and counted in the header —, the
//!   cohorts' requests and success rates side by side, the deviation against the
//!   bound, the time left or the verdict's reason), the settings' health and
//!   rejections — fed by the stream and by `status` every 2 s. It finds `stream` and
//!   `status` beside itself, also when opened without the trailing slash under a
//!   router that strips its prefix (axum's `nest_service`). 50 tiles fit a 1440 × 900
//!   laptop screen; names, keys and reasons are shown as text, never parsed as markup.
//! - `…/status`: JSON of the whole registry: settings health and revision, rejected
//!   values, every policy in use (its settings and [statistics](crate::stats)), every
//!   switch (value, evaluations by variant, changes), and `experiments`: every chaos
//!   experiment this process runs or ran, as
//!   [`ExperimentStatus`](crate::experiment::ExperimentStatus) (the counts are this
//!   process's; a verdict's record may come from another process).
//! - `…/stream`: Server-Sent Events: every interval (1 s by default) one `data:` event
//!   per policy in the Hystrix dashboard's `HystrixCommand` format (the field names and
//!   units the Hystrix dashboard and Turbine read), with a `substation` object added
//!   for what Hystrix has no field for, then a `: ping` comment. An existing Hystrix
//!   dashboard or Turbine can read a Rust process unchanged.
//!
//! A slow or gone client never holds the application back: each stream makes its next
//! event only when the connection has taken the last one (intervals it could not take
//! are skipped), and nothing is buffered for it.
//!
//! # Security
//! Read-only: nothing it serves changes anything. Off unless mounted or served. It
//! shows every policy's, switch's and experiment's **name and settings**, experiments'
//! verdicts, and the rejected values' keys and reasons — mount it where those may be
//! seen (an admin port, behind your authentication). It never shows credentials: the
//! etcd source's user, password and TLS material are not part of any of it.
//!
//! ```no_run
//! use substation::{Substation, dashboard::Dashboard};
//!
//! # async fn run() -> Result<(), substation::BoxError> {
//! let substation = Substation::builder().build()?;
//! let serving = Dashboard::new(&substation).serve("127.0.0.1:9090".parse()?).await?;
//! println!("dashboard on http://{}/", serving.local_addr());
//! # Ok(()) }
//! ```

mod body;
mod hystrix;
mod status;

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

use crate::Substation;

pub use self::body::Body;

/// The page (vanilla JS, no external resource).
const PAGE: &str = include_str!("page.html");

/// The status page, its JSON and its event stream; see the [module docs](self).
#[derive(Clone)]
pub struct Dashboard {
    substation: Substation,
    interval: Duration,
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// The dashboard of `substation`'s policies and switches.
    pub fn new(substation: &Substation) -> Self {
        Dashboard {
            substation: substation.clone(),
            interval: Duration::from_secs(1),
        }
    }

    /// How often the stream reports (default 1 s; at least 100 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Serves the dashboard on `addr` (HTTP/1.1) in a task of the current tokio runtime,
    /// until the returned [`Serving`] is dropped.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<Serving> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // The connections belong to this task: stopping it (dropping `Serving`) ends
            // them too, open streams included.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let service = hyper_util::service::TowerToHyperService::new(self.clone());
                        connections.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Serving { local_addr, task })
    }

    fn respond(&self, path: &str) -> http::Response<Body> {
        // Mounted anywhere: the page is `…/` (so that its relative `stream` and `status`
        // resolve beside it), the rest by the last segment.
        let last = path.rsplit('/').next().unwrap_or("");
        match last {
            "status" => json(status::status(&self.substation, self.interval)),
            "stream" => http::Response::builder()
                .header(http::header::CONTENT_TYPE, "text/event-stream")
                .header(http::header::CACHE_CONTROL, "no-cache")
                .body(Body::stream(self.substation.clone(), self.interval))
                .expect("a valid response"),
            "" | "index.html" => http::Response::builder()
                .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(Body::full(PAGE.as_bytes().to_vec()))
                .expect("a valid response"),
            _ => plain(http::StatusCode::NOT_FOUND, "not found"),
        }
    }
}

fn json(value: serde_json::Value) -> http::Response<Body> {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(Body::full(value.to_string().into_bytes()))
        .expect("a valid response")
}

fn plain(status: http::StatusCode, text: &str) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::full(text.as_bytes().to_vec()))
        .expect("a valid response")
}

impl<B> Service<http::Request<B>> for Dashboard {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let response = if req.method() == http::Method::GET {
            self.respond(req.uri().path())
        } else {
            plain(http::StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only")
        };
        std::future::ready(Ok(response))
    }
}

/// A dashboard being served; stops serving (and ends its connections) when dropped.
#[derive(Debug)]
pub struct Serving {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The address it listens on (the port the system chose, for a port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}
