//! A test kit for applications' own integration suites (feature `test-util`).
//!
//! Failure handling that was never exercised does not work. With this kit a test flips
//! kill switches, breaker modes, switches and faults through an
//! [`InMemorySource`](crate::live::InMemorySource), drives a [`Scripted`] dependency
//! (a sequence of outcomes and latencies), and reads the metrics the layers emitted
//! with [`Metrics`]. Everything works under `tokio::time::pause` (build policies with
//! [`Clock::tokio`](crate::clock::Clock::tokio)).
//!
//! The worked example — "prove my client serves the cached answer when the dependency
//! fails":
//!
//! ```
//! use std::time::Duration;
//! use substation::{Substation, clock::Clock, fallback::Fallback, live::InMemorySource};
//! use substation::stack::PolicyLayer;
//! use substation::testkit::{Metrics, Scripted, Step};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let metrics = Metrics::new();
//! let settings = InMemorySource::new();
//! // Build under the test recorder, on tokio's (paused) clock.
//! let substation = metrics.capture(|| {
//!     Substation::builder().clock(Clock::tokio()).source(settings.clone()).build().unwrap()
//! });
//! let policy = metrics.capture(|| substation.policy("prices"));
//!
//! // The dependency answers once, then fails, then stalls past the timeout.
//! let dependency = Scripted::new([
//!     Step::ok("12.50 EUR".to_owned()),
//!     Step::err("503 service unavailable"),
//!     Step::ok("late".to_owned()).after(Duration::from_secs(5)),
//! ]);
//! let client = metrics.capture(|| {
//!     PolicyLayer::new(&policy)
//!         .fallback(Fallback::with_parts(|item: &u32| *item).cache(100))
//!         .layer(dependency.clone())
//! });
//!
//! assert_eq!(client.clone().oneshot(7).await.unwrap(), "12.50 EUR");   // fills the cache
//! assert_eq!(client.clone().oneshot(7).await.unwrap(), "12.50 EUR");   // failed: cached
//! assert_eq!(client.clone().oneshot(7).await.unwrap(), "12.50 EUR");   // timed out: cached
//! assert_eq!(dependency.calls(), 3);
//! assert_eq!(metrics.counter("substation_fallbacks_total", &[("tier", "cache"), ("result", "served")]), 2);
//! assert_eq!(metrics.counter("substation_calls_total", &[("outcome", "timeout")]), 1, "totals, read again");
//!
//! // Flip the kill switch from the test: the dependency is not called any more.
//! settings.put("policies/prices", r#"{"kill": true}"#).unwrap();
//! assert_eq!(client.clone().oneshot(7).await.unwrap(), "12.50 EUR");
//! assert_eq!(dependency.calls(), 3);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::Service;

use crate::BoxError;

/// One scripted answer: an outcome, after an optional latency.
#[derive(Debug)]
pub struct Step<T> {
    outcome: Result<T, String>,
    after: Duration,
}

impl<T> Step<T> {
    /// Answers `value`.
    pub fn ok(value: T) -> Self {
        Step {
            outcome: Ok(value),
            after: Duration::ZERO,
        }
    }

    /// Fails with an error whose message is `message`.
    pub fn err(message: impl Into<String>) -> Self {
        Step {
            outcome: Err(message.into()),
            after: Duration::ZERO,
        }
    }

    /// Answers only after `latency` (tokio's time: pausable).
    pub fn after(mut self, latency: Duration) -> Self {
        self.after = latency;
        self
    }
}

/// The error a [`Scripted`] step fails with.
#[derive(Debug)]
pub struct ScriptedError(String);

impl fmt::Display for ScriptedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScriptedError {}

/// A dependency that answers a script, step by step; the last step repeats. Clones
/// share the script and the call count.
pub struct Scripted<T> {
    steps: Arc<Mutex<VecDeque<Step<T>>>>,
    calls: Arc<AtomicUsize>,
}

impl<T> Clone for Scripted<T> {
    fn clone(&self) -> Self {
        Scripted {
            steps: self.steps.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl<T> fmt::Debug for Scripted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scripted")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl<T> Scripted<T> {
    /// A dependency answering `steps` in order (the last one repeats).
    pub fn new(steps: impl IntoIterator<Item = Step<T>>) -> Self {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many calls reached it.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Appends steps to the script.
    pub fn push(&self, step: Step<T>) {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(step);
    }
}

impl<T: Clone + Send + 'static, Req> Service<Req> for Scripted<T> {
    type Response = T;
    type Error = ScriptedError;
    type Future = Pin<Box<dyn Future<Output = Result<T, ScriptedError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ScriptedError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (outcome, after) = {
            let mut steps = self.steps.lock().unwrap_or_else(PoisonError::into_inner);
            let step = if steps.len() > 1 {
                steps.pop_front()
            } else {
                None
            };
            match step.as_ref().or(steps.front()) {
                Some(s) => (s.outcome.clone(), s.after),
                None => (Err("the script is empty".to_owned()), Duration::ZERO),
            }
        };
        Box::pin(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            outcome.map_err(ScriptedError)
        })
    }
}

/// Reads the metrics that layers emitted: build policies, switches and layers inside
/// [`Metrics::capture`] so that their handles record here, without installing a global
/// recorder.
pub struct Metrics {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
    /// Totals so far: a debugging snapshot drains the counters it reads.
    totals: Mutex<Vec<Total>>,
}

/// A counter's name, labels and total so far.
type Total = (String, Vec<(String, String)>, u64);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A new, empty metrics store.
    pub fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Metrics {
            recorder,
            snapshotter,
            totals: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with this store as the thread's recorder (handles created inside record
    /// here for good).
    pub fn capture<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The total of counter `name` so far, over every label set that contains
    /// `labels` (the policies' counts are flushed to the recorder first).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        // Policies' counts reach recorders in batches: push them now.
        crate::metrics::flush();
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let DebugValue::Counter(n) = value else {
                continue;
            };
            let name = key.key().name().to_owned();
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match totals
                .iter_mut()
                .find(|(k, l, _)| *k == name && *l == labels)
            {
                Some((.., total)) => *total += n,
                None => totals.push((name, labels, n)),
            }
        }
        totals
            .iter()
            .filter(|(k, l, _)| {
                k == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| l.iter().any(|(k, v)| k == lk && v == lv))
            })
            .map(|(.., total)| total)
            .sum()
    }
}

/// A boxed error with `message`, for scripted services of your own.
pub fn error(message: &str) -> BoxError {
    Box::new(ScriptedError(message.to_owned()))
}
