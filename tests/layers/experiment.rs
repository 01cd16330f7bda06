//! Chaos experiments through the in-memory source: cohorts (sticky, sized, disjoint,
//! the switches' bucketing), injection only into the experiment cohort, the judge's
//! automatic stop, the duration, the halt, and the pause without a store — in paused
//! time where time matters.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use substation::clock::Clock;
use substation::experiment::{self, Arm, ExperimentLayer};
use substation::fault::FaultLayer;
use substation::live::{Health, InMemorySource, Sink, Source};
use substation::settings::{ExperimentResult, RunState};
use substation::switch::SwitchSettings;
use substation::{BoxError, Substation};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A registry on tokio's clock (paused time) fed by an in-memory source.
fn registry() -> (Substation, InMemorySource) {
    let source = InMemorySource::new();
    let sub = Substation::builder()
        .clock(Clock::tokio())
        .source(source.clone())
        .build()
        .unwrap();
    (sub, source)
}

/// The edge: a request is a user id; its handler calls the dependency `policy` through
/// the policy's fault layer, and fails when the dependency does.
fn edge(
    sub: &Substation,
    policy: &str,
) -> impl Service<String, Response = (), Error = BoxError, Future: Send> + Clone + use<> {
    let dependency = FaultLayer::new(&sub.policy(policy))
        .layer(service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    ExperimentLayer::new(sub)
        .key(|user: &String, put| put(user.as_bytes()))
        .layer(service_fn(move |_user: String| {
            let dependency = dependency.clone();
            async move { dependency.oneshot(()).await }
        }))
}

fn users(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("user-{i}"))
}

#[tokio::test]
async fn cohorts_are_sticky_sized_and_bucketed_like_the_switches() {
    let (sub, source) = registry();
    source
        .put(
            "experiments/sizes",
            r#"{"policy": "db", "control_percent": 1, "experiment_percent": 1, "min_requests": 1000000000}"#,
        )
        .unwrap();
    // A switch of the same name at 1 %: its on-set is the control cohort (the same
    // murmur3 of name ++ key against the same bound).
    let switch = sub.switch("sizes");
    switch.update(SwitchSettings::percent(1.0)).unwrap();
    let other = {
        // A second registry — another process — assigns every key alike.
        let (other, source) = registry();
        source
            .put(
                "experiments/sizes",
                r#"{"policy": "db", "control_percent": 1, "experiment_percent": 1, "min_requests": 1000000000}"#,
            )
            .unwrap();
        other
    };
    let n = 100_000;
    let (mut control, mut experiment) = (0u32, 0u32);
    for user in users(n) {
        let arm = sub.experiment_cohort("sizes", user.as_bytes());
        assert_eq!(
            arm,
            sub.experiment_cohort("sizes", user.as_bytes()),
            "sticky"
        );
        assert_eq!(
            arm,
            other.experiment_cohort("sizes", user.as_bytes()),
            "every process agrees"
        );
        assert_eq!(
            arm == Some(Arm::Control),
            switch.is_on(user.as_str()),
            "{user}: the switches' bucketing"
        );
        match arm {
            Some(Arm::Control) => control += 1,
            Some(Arm::Experiment) => experiment += 1,
            None => {}
        }
    }
    for (what, count) in [("control", control), ("experiment", experiment)] {
        let percent = f64::from(count) * 100.0 / n as f64;
        assert!((percent - 1.0).abs() <= 0.2, "{what}: {percent} %");
    }
    // Growing the experiment cohort only adds keys (the top of the hash space).
    let before: Vec<bool> = users(n)
        .map(|u| sub.experiment_cohort("sizes", u.as_bytes()) == Some(Arm::Experiment))
        .collect();
    source
        .put(
            "experiments/sizes",
            r#"{"policy": "db", "control_percent": 1, "experiment_percent": 5, "min_requests": 1000000000}"#,
        )
        .unwrap();
    let mut grown = 0;
    for (user, was) in users(n).zip(before) {
        let now = sub.experiment_cohort("sizes", user.as_bytes()) == Some(Arm::Experiment);
        assert!(
            !was || now,
            "{user} left the experiment cohort when it grew"
        );
        grown += u32::from(now);
    }
    let percent = f64::from(grown) * 100.0 / n as f64;
    assert!((percent - 5.0).abs() <= 0.2, "{percent} %");
}

#[tokio::test]
async fn only_the_experiment_cohort_is_injected_into_and_concurrent_cohorts_are_disjoint() {
    let (sub, source) = registry();
    // Two experiments on the same policy with big cohorts: a key is in at most one
    // cohort of all, and only the experiment cohorts fail.
    for name in ["a-first", "b-second"] {
        source
            .put(
                &format!("experiments/{name}"),
                r#"{"policy": "db", "control_percent": 20, "experiment_percent": 20, "min_requests": 1000000000}"#,
            )
            .unwrap();
    }
    let mut svc = edge(&sub, "db");
    let mut per = std::collections::HashMap::new();
    for user in users(20_000) {
        let a = sub.experiment_cohort("a-first", user.as_bytes());
        let b = sub.experiment_cohort("b-second", user.as_bytes());
        // The first experiment by name takes a key in both: the request's cohort.
        let cohort = a
            .map(|arm| ("a-first", arm))
            .or(b.map(|arm| ("b-second", arm)));
        let failed = svc.ready().await.unwrap().call(user.clone()).await.is_err();
        let expect_failure = cohort.is_some_and(|(_, arm)| arm == Arm::Experiment);
        assert_eq!(failed, expect_failure, "{user} in {cohort:?}");
        *per.entry(cohort).or_insert(0u32) += 1;
    }
    // Both experiments got cohorts of their own; b's lost the keys a took.
    assert!(per[&Some(("a-first", Arm::Experiment))] > 3_000, "{per:?}");
    assert!(per[&Some(("b-second", Arm::Experiment))] > 1_800, "{per:?}");
    assert!(per[&None] > 5_000, "{per:?}");
    let status = sub.experiments();
    assert_eq!(status.len(), 2);
    for s in &status {
        assert_eq!(s.state, RunState::Running);
        assert_eq!(s.experiment.successes, 0, "{s:?}");
        assert_eq!(s.control.successes, s.control.requests, "{s:?}");
        assert!(s.control.requests > 1_000, "{s:?}");
    }
    // Outside the edge, nothing is in a cohort: a direct call to the dependency passes.
    assert!(experiment::current().is_none());
    let direct = FaultLayer::new(&sub.policy("db"))
        .layer(service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
    assert!(direct.oneshot(()).await.is_ok());
}

/// How many of `n` users' requests fail.
async fn failures<S>(svc: &mut S, n: usize) -> u32
where
    S: Service<String, Error = BoxError>,
{
    let mut failed = 0;
    for user in users(n) {
        failed += u32::from(svc.ready().await.unwrap().call(user).await.is_err());
    }
    failed
}

/// The stored result of experiment `name`.
fn result(sub: &Substation, name: &str) -> Option<ExperimentResult> {
    sub.snapshot()
        .experiment_result(name)
        .map(|r| (**r).clone())
}

#[tokio::test(start_paused = true)]
async fn a_bad_kpi_stops_the_experiment_at_once_and_records_the_verdict_once() {
    let (sub, source) = registry();
    source
        .put(
            "experiments/no-db",
            r#"{"policy": "db", "control_percent": 10, "experiment_percent": 10, "min_requests": 50}"#,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await; // the run's task writes `running`
    let started = result(&sub, "no-db").expect("the running record");
    assert_eq!(started.state, RunState::Running);
    let mut svc = edge(&sub, "db");
    let (mut failed_while_running, mut failed_after) = (0, 0);
    let mut stopped_at = None;
    for (i, user) in users(5_000).enumerate() {
        let failed = svc.ready().await.unwrap().call(user).await.is_err();
        let running = sub.experiments()[0].state == RunState::Running;
        match (stopped_at, failed) {
            (None, true) => failed_while_running += 1,
            (Some(_), true) => failed_after += 1,
            _ => {}
        }
        if !running && stopped_at.is_none() {
            stopped_at = Some(i);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stopped_at = stopped_at.expect("the judge stopped it");
    assert_eq!(failed_after, 0, "nothing injected after the stop");
    // 50 requests per cohort at 10 % each: ~500 requests, then the first judgement.
    assert!(
        (400..1_000).contains(&stopped_at),
        "stopped after {stopped_at} requests"
    );
    assert!(failed_while_running >= 50, "{failed_while_running}");
    let status = &sub.experiments()[0];
    assert_eq!(status.state, RunState::Aborted);
    let verdict = status.verdict.clone().unwrap();
    assert!(
        verdict
            .reason
            .as_deref()
            .unwrap()
            .starts_with("experiment success 0.0 % vs control 100.0 %"),
        "{verdict:?}"
    );
    // Written to the store, once, with the run's start.
    let stored = result(&sub, "no-db").expect("the verdict");
    assert_eq!(stored.state, RunState::Aborted);
    assert_eq!(stored.started_ms, started.started_ms);
    assert_eq!(stored.run, started.run);
    assert_eq!(stored.deviation_points, Some(100.0));
    assert!(stored.experiment.requests >= 50 && stored.control.requests >= 50);
}

#[tokio::test(start_paused = true)]
async fn a_verdict_from_the_store_stops_this_process_and_deleting_it_runs_again() {
    let (sub, source) = registry();
    source
        .put(
            "experiments/no-db",
            r#"{"policy": "db", "control_percent": 20, "experiment_percent": 20, "min_requests": 1000000000}"#,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let running = result(&sub, "no-db").unwrap();
    let mut svc = edge(&sub, "db");
    assert!(failures(&mut svc, 1_000).await > 100);
    // Another process decided: its verdict, written with the run's id, stops this one.
    let verdict = format!(
        r#"{{"run": "{}", "state": "aborted", "started_ms": {}, "stopped_ms": {}, "reason": "decided elsewhere", "by": "other-1"}}"#,
        running.run,
        running.started_ms,
        running.started_ms + 5
    );
    source.put("experiments/no-db/result", &verdict).unwrap();
    assert_eq!(failures(&mut svc, 1_000).await, 0);
    let status = &sub.experiments()[0];
    assert_eq!(status.state, RunState::Aborted);
    assert_eq!(
        status.verdict.as_ref().unwrap().by.as_deref(),
        Some("other-1")
    );
    // The operator deletes the result: the same experiment runs again.
    source.delete("experiments/no-db/result");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(sub.experiments()[0].state, RunState::Running);
    assert_eq!(result(&sub, "no-db").unwrap().state, RunState::Running);
    assert!(failures(&mut svc, 1_000).await > 100);
    // A result that is not a result is refused, for that key alone.
    let err = source
        .put(
            "experiments/no-db/result",
            r#"{"run": "x", "state": "passed", "started_ms": 1}"#,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "run: expected 16 hex digits");
    assert_eq!(sub.experiments()[0].state, RunState::Running);
}

#[tokio::test(start_paused = true)]
async fn the_maximum_duration_passes_it_and_one_write_halts_every_experiment() {
    let (sub, source) = registry();
    source
        .put(
            "experiments/short",
            r#"{"policy": "db", "max_duration_ms": 60000, "min_requests": 1000000000}"#,
        )
        .unwrap();
    source
        .put(
            "experiments/long-a",
            r#"{"policy": "db", "max_duration_ms": 3600000, "min_requests": 1000000000}"#,
        )
        .unwrap();
    source
        .put(
            "experiments/long-b",
            r#"{"policy": "cache", "max_duration_ms": 3600000, "min_requests": 1000000000}"#,
        )
        .unwrap();
    // No traffic at all: the run's task ends it on time.
    tokio::time::sleep(Duration::from_millis(59_900)).await;
    assert_eq!(sub.experiments()[2].state, RunState::Running);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let short = result(&sub, "short").unwrap();
    assert_eq!(short.state, RunState::Passed);
    assert!(short.reason.unwrap().contains("full duration"));
    // Halt all: one write.
    source
        .put("global", r#"{"halt_experiments": true}"#)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for name in ["long-a", "long-b"] {
        let r = result(&sub, name).unwrap();
        assert_eq!(r.state, RunState::Halted, "{name}");
        assert_eq!(
            r.reason.as_deref(),
            Some("halted by global.halt_experiments")
        );
    }
    // The passed verdict stays what it was.
    assert_eq!(result(&sub, "short").unwrap().state, RunState::Passed);
    let mut svc = edge(&sub, "db");
    for user in users(2_000) {
        svc.ready().await.unwrap().call(user).await.unwrap();
    }
}

/// A source whose health a test sets (the in-memory source is always live).
#[derive(Clone, Default)]
struct Flaky(Arc<Mutex<Option<Sink>>>);

impl Source for Flaky {
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError> {
        sink.initialized();
        *self.0.lock().unwrap() = Some(sink);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn without_its_store_a_process_stops_injecting_after_the_bound_and_resumes_with_it() {
    let source = InMemorySource::new();
    let flaky = Flaky::default();
    let sub = Substation::builder()
        .clock(Clock::tokio())
        .source(source.clone())
        .source(flaky.clone())
        .build()
        .unwrap();
    source
        .put(
            "experiments/no-db",
            r#"{"policy": "db", "control_percent": 30, "experiment_percent": 30, "min_requests": 1000000000, "offline_stop_ms": 5000}"#,
        )
        .unwrap();
    let mut svc = edge(&sub, "db");
    assert!(failures(&mut svc, 500).await > 100);
    let sink = flaky.0.lock().unwrap().clone().unwrap();
    sink.set_health(Health::Stale {
        revision: 1,
        since: std::time::SystemTime::now(),
        reason: "etcd unreachable".into(),
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert!(
        failures(&mut svc, 500).await > 100,
        "still within the bound"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(failures(&mut svc, 500).await, 0, "paused past the bound");
    let status = &sub.experiments()[0];
    assert!(
        status.paused && status.state == RunState::Running,
        "{status:?}"
    );
    sink.set_health(Health::Live { revision: 2 }).unwrap();
    assert!(failures(&mut svc, 500).await > 100, "resumed");
}

#[tokio::test]
async fn the_cohort_follows_a_spawned_task_only_when_scoped() {
    let (sub, source) = registry();
    source
        .put(
            "experiments/e",
            r#"{"policy": "db", "control_percent": 50, "experiment_percent": 50, "min_requests": 1000000000}"#,
        )
        .unwrap();
    let seen = ExperimentLayer::new(&sub)
        .key(|user: &String, put| put(user.as_bytes()))
        .layer(service_fn(|_: String| async {
            let here = experiment::current().map(|c| c.arm());
            let lost = tokio::spawn(async { experiment::current().is_some() })
                .await
                .unwrap();
            let cohort = experiment::current().unwrap();
            let kept = tokio::spawn(cohort.scope(async { experiment::current().map(|c| c.arm()) }))
                .await
                .unwrap();
            Ok::<_, Infallible>((here, lost, kept))
        }));
    let (here, lost, kept) = seen.oneshot("user-1".to_owned()).await.unwrap();
    assert!(here.is_some());
    assert!(!lost, "a task-local does not follow tokio::spawn");
    assert_eq!(kept, here);
}

#[tokio::test(start_paused = true)]
async fn cohorts_and_verdicts_reach_the_metrics() {
    use substation::metrics::{EXPERIMENT_REQUESTS, EXPERIMENT_VERDICTS};
    let metrics = substation::testkit::Metrics::new();
    // The run's handles are made with the recorder current when it starts.
    let (sub, source) = metrics.capture(|| {
        let (sub, source) = registry();
        source
            .put(
                "experiments/no-db",
                r#"{"policy": "db", "control_percent": 10, "experiment_percent": 10, "min_requests": 50}"#,
            )
            .unwrap();
        (sub, source)
    });
    let _source = source;
    let mut svc = edge(&sub, "db");
    let mut i = 0;
    while sub.experiments()[0].state == RunState::Running {
        let _ = svc.ready().await.unwrap().call(format!("user-{i}")).await;
        i += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the run's task pushes its counts
    let status = &sub.experiments()[0];
    let count = |cohort: &str, outcome: &str| {
        metrics.counter(
            EXPERIMENT_REQUESTS,
            &[
                ("experiment", "no-db"),
                ("cohort", cohort),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(count("control", "success"), status.control.successes);
    assert_eq!(count("control", "failure"), 0);
    assert_eq!(count("experiment", "failure"), status.experiment.requests);
    assert!(status.experiment.requests >= 50);
    let verdicts = |v: &str| metrics.counter(EXPERIMENT_VERDICTS, &[("verdict", v)]);
    assert_eq!((verdicts("aborted"), verdicts("passed")), (1, 0));
}
