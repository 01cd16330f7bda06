//! The edge: [`ExperimentLayer`] assigns cohorts, scopes the request's work with its
//! cohort, and records the KPI.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, Cache};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::run::{Active, Table};
use super::{Arm, Cohort, enter};
use crate::Substation;
use crate::classify::{Classify, ErrorsAsFailures, Outcome};

/// The key function of a layer without one: assigns nothing.
pub type NoKey<Req> = fn(&Req, &mut dyn FnMut(&[u8]));

fn no_key<Req>(_: &Req, _: &mut dyn FnMut(&[u8])) {}
type AdoptFn<Req> = Arc<dyn for<'a> Fn(&'a Req) -> Option<(&'a str, Arm)> + Send + Sync>;
type AttachFn<Req> = Arc<dyn Fn(&mut Req, &Cohort) + Send + Sync>;

/// What every service of one layer shares.
struct Shared<Req> {
    table: Arc<Table>,
    adopt: Option<AdoptFn<Req>>,
    attach: Option<AttachFn<Req>>,
}

impl<Req> Clone for Shared<Req> {
    fn clone(&self) -> Self {
        Shared {
            table: self.table.clone(),
            adopt: self.adopt.clone(),
            attach: self.attach.clone(),
        }
    }
}

/// The edge of a service in chaos experiments: assigns each request to a cohort of the
/// running experiments by its sticky key, runs the request's work with that cohort as
/// the [`current`](super::current) one, and counts each cohort request's outcome (by
/// `C`, a [`Classify`]) for the experiment's judge. See the [module docs](super).
///
/// Outside every experiment — none running, or a key in no cohort — a request passes
/// with one pointer compare (plus its key's hash per running experiment).
///
/// The key function is stored by type (`K`), not boxed: it inlines into the call.
pub struct ExperimentLayer<Req, C = ErrorsAsFailures, K = NoKey<Req>> {
    shared: Shared<Req>,
    classify: C,
    key: K,
}

impl<Req, C: Clone, K: Clone> Clone for ExperimentLayer<Req, C, K> {
    fn clone(&self) -> Self {
        ExperimentLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            key: self.key.clone(),
        }
    }
}

impl<Req, C, K> fmt::Debug for ExperimentLayer<Req, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExperimentLayer")
            .field("adopts", &self.shared.adopt.is_some())
            .finish_non_exhaustive()
    }
}

impl<Req> ExperimentLayer<Req> {
    /// A layer for the experiments of `substation` (every `Err` a failed request).
    /// Without [`key`](Self::key) it assigns nothing (it may still adopt cohorts from
    /// upstream, see [`http`](Self::http)).
    pub fn new(substation: &Substation) -> Self {
        ExperimentLayer {
            shared: Shared {
                table: substation.experiment_table(),
                adopt: None,
                attach: None,
            },
            classify: ErrorsAsFailures,
            key: no_key::<Req>,
        }
    }
}

impl<Req, C, K> ExperimentLayer<Req, C, K> {
    /// The sticky key of a request (a user, session or device id): the function hands
    /// its bytes to the callback, or does not call it for a request without one (which
    /// then joins no cohort).
    pub fn key<K2>(self, key: K2) -> ExperimentLayer<Req, C, K2>
    where
        K2: Fn(&Req, &mut dyn FnMut(&[u8])) + Clone,
    {
        ExperimentLayer {
            shared: self.shared,
            classify: self.classify,
            key,
        }
    }

    /// What counts as a successful request (the KPI): e.g.
    /// [`ServerErrorsAsFailures`](crate::classify::ServerErrorsAsFailures) for HTTP,
    /// [`GrpcCodes`](crate::classify::GrpcCodes) for gRPC, or a function of the result.
    pub fn classify<C2>(self, classify: C2) -> ExperimentLayer<Req, C2, K> {
        ExperimentLayer {
            shared: self.shared,
            classify,
            key: self.key,
        }
    }

    /// Adopts the cohort an upstream service assigned, when the request carries one:
    /// `adopt` returns the experiment's name and the arm. An adopted request is not
    /// counted here (its edge judges it) and not assigned again.
    pub fn adopt(
        mut self,
        adopt: impl for<'a> Fn(&'a Req) -> Option<(&'a str, Arm)> + Send + Sync + 'static,
    ) -> Self {
        self.shared.adopt = Some(Arc::new(adopt));
        self
    }

    /// Hands a request's cohort to the request itself before the inner service sees it
    /// (e.g. into its extensions).
    pub fn attach(mut self, attach: impl Fn(&mut Req, &Cohort) + Send + Sync + 'static) -> Self {
        self.shared.attach = Some(Arc::new(attach));
        self
    }
}

#[cfg(feature = "http")]
impl<B, C, K> ExperimentLayer<http::Request<B>, C, K> {
    /// For an HTTP (or tonic) server: adopts the cohort an upstream
    /// [`PropagateLayer`](super::PropagateLayer) wrote into the `substation-experiment`
    /// header, and puts each request's [`Cohort`] into its extensions.
    pub fn http(self) -> Self {
        self.adopt(|req: &http::Request<B>| super::propagate::parse(req.headers()))
            .attach(|req: &mut http::Request<B>, cohort: &Cohort| {
                req.extensions_mut().insert(cohort.clone());
            })
    }
}

impl<S, Req, C: Clone, K: Clone> Layer<S> for ExperimentLayer<Req, C, K> {
    type Service = Experiment<S, Req, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Experiment {
            inner,
            active: Cache::new(ActiveOf(self.shared.table.clone())),
            shared: Arc::new(self.shared.clone()),
            classify: self.classify.clone(),
            key: self.key.clone(),
        }
    }
}

/// The table's active list, for an [`arc_swap::Cache`].
#[derive(Clone)]
struct ActiveOf(Arc<Table>);

impl Deref for ActiveOf {
    type Target = ArcSwap<Active>;

    fn deref(&self) -> &ArcSwap<Active> {
        &self.0.active
    }
}

/// Assigns cohorts and records outcomes; see [`ExperimentLayer`].
pub struct Experiment<S, Req, C, K = NoKey<Req>> {
    inner: S,
    active: Cache<ActiveOf, Arc<Active>>,
    shared: Arc<Shared<Req>>,
    classify: C,
    key: K,
}

impl<S: Clone, Req, C: Clone, K: Clone> Clone for Experiment<S, Req, C, K> {
    fn clone(&self) -> Self {
        Experiment {
            inner: self.inner.clone(),
            active: self.active.clone(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, Req, C, K> fmt::Debug for Experiment<S, Req, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Experiment")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, K> Experiment<S, Req, C, K> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S, Req, C, K> Service<Req> for Experiment<S, Req, C, K>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    K: Fn(&Req, &mut dyn FnMut(&[u8])),
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ExperimentFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let Experiment {
            inner,
            active,
            shared,
            classify,
            key,
        } = self;
        let active = active.load();
        if active.runs.is_empty() {
            return ExperimentFuture::pass(inner.call(req));
        }
        assign(inner, active, shared, classify, key, req)
    }
}

/// Some experiment runs: finds the request's cohort, if any, and calls `inner` with it
/// as the current one.
#[inline(always)]
fn assign<S, Req, C, K>(
    inner: &mut S,
    active: &Active,
    shared: &Shared<Req>,
    classify: &C,
    key: &K,
    mut req: Req,
) -> ExperimentFuture<S::Future, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    K: Fn(&Req, &mut dyn FnMut(&[u8])),
{
    let mut cohort = None;
    let mut assigned_here = false;
    let adopted = shared.adopt.as_ref().and_then(|adopt| adopt(&req));
    if let Some((name, arm)) = adopted {
        // Upstream's cohort: never assigned again here, never counted here.
        if let Some(run) = active.runs.iter().find(|r| &*r.name == name)
            && run.is_live()
        {
            cohort = Some(Cohort {
                arm,
                run: run.clone(),
            });
        }
    } else {
        // The first run whose cohorts hold the key takes it, live or paused: cohorts
        // of concurrent runs stay disjoint. Only an index leaves the callback.
        let mut hit = None;
        key(&req, &mut |bytes| {
            for (i, b) in active.buckets.iter().enumerate() {
                if let Some(arm) = b.arm_of(bytes) {
                    hit = Some((i, arm));
                    return;
                }
            }
        });
        if let Some((i, arm)) = hit {
            let run = &active.runs[i];
            if run.is_live() {
                cohort = Some(Cohort {
                    arm,
                    run: run.clone(),
                });
                assigned_here = true;
            }
        }
    }
    let Some(cohort) = cohort else {
        return ExperimentFuture::pass(inner.call(req));
    };
    if let Some(attach) = &shared.attach {
        attach(&mut req, &cohort);
    }
    let mut scope = Some(cohort);
    let future = enter(&mut scope, || inner.call(req));
    ExperimentFuture {
        kind: Kind::Cohort {
            inner: future,
            cohort: scope,
            record: assigned_here,
            classify: classify.clone(),
        },
    }
}

pin_project! {
    /// The response future of [`Experiment`]: the inner future, polled with the
    /// request's cohort as the current one, its outcome counted when it finishes.
    pub struct ExperimentFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Pass {
            #[pin]
            inner: F,
        },
        Cohort {
            #[pin]
            inner: F,
            cohort: Option<Cohort>,
            // Assigned here (not adopted): count its outcome.
            record: bool,
            classify: C,
        },
    }
}

impl<F, C> ExperimentFuture<F, C> {
    #[inline]
    fn pass(inner: F) -> Self {
        ExperimentFuture {
            kind: Kind::Pass { inner },
        }
    }
}

impl<F, C> fmt::Debug for ExperimentFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cohort = match &self.kind {
            Kind::Pass { .. } => None,
            Kind::Cohort { cohort, .. } => cohort.as_ref().map(|c| c.arm),
        };
        f.debug_struct("ExperimentFuture")
            .field("cohort", &cohort)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, C> Future for ExperimentFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Pass { inner } => inner.poll(cx),
            KindProj::Cohort {
                inner,
                cohort,
                record,
                classify,
            } => {
                let out = enter(cohort, || inner.poll(cx));
                if let Poll::Ready(result) = &out
                    && std::mem::take(record)
                    && let Some(c) = cohort
                {
                    let success = classify.classify(result) == Outcome::Success;
                    c.run.record(c.arm, success);
                }
                out
            }
        }
    }
}
