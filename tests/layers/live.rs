use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use substation::breaker::error::OpenCircuit;
use substation::breaker::{BreakerState, CircuitBreakerLayer};
use substation::clock::Clock;
use substation::live::{Change, Health, InMemorySource, RejectionKind, Scope, Source, Update};
use substation::settings::PolicySettings;
use substation::{BoxError, Substation};
use tower::Layer as _;

use crate::support::{Flaky, call_now};

fn code_default() -> PolicySettings {
    let mut s = PolicySettings::default();
    s.timeout.ms = Some(300);
    s.breaker.min_calls = 5;
    s
}

fn registry() -> (Substation, InMemorySource, InMemorySource) {
    let app = InMemorySource::new();
    let fleet = InMemorySource::shared_defaults();
    let sub = Substation::builder()
        .clock(Clock::manual().0)
        .policy("recs", code_default())
        .source(fleet.clone())
        .source(app.clone())
        .build()
        .unwrap();
    (sub, app, fleet)
}

#[test]
fn layers_override_field_by_field_and_deletes_fall_back() {
    let (sub, app, fleet) = registry();
    let recs = sub.policy("recs");
    assert_eq!(recs.settings().timeout.ms, Some(300), "code default");
    assert_eq!(*sub.snapshot().health(), Health::DefaultsOnly);

    fleet
        .put(
            "policies/recs",
            r#"{"timeout": {"ms": 200}, "breaker": {"error_rate": 20}}"#,
        )
        .unwrap();
    assert_eq!(recs.settings().timeout.ms, Some(200));
    assert_eq!(recs.settings().breaker.min_calls, 5, "code default kept");

    app.put("policies/recs", r#"{"timeout": {"ms": 100}}"#)
        .unwrap();
    let s = recs.settings();
    assert_eq!(
        (s.timeout.ms, s.breaker.error_rate, s.breaker.min_calls),
        (Some(100), 20.0, 5)
    );

    app.delete("policies/recs");
    assert_eq!(
        recs.settings().timeout.ms,
        Some(200),
        "back to the shared default"
    );
    fleet.delete("policies/recs");
    assert_eq!(*recs.settings(), code_default(), "back to the code default");

    // A policy without a code default takes library defaults, then stored values.
    app.put("policies/other", r#"{"breaker": {"min_calls": 7}}"#)
        .unwrap();
    assert_eq!(sub.policy("other").settings().breaker.min_calls, 7);
    assert_eq!(sub.snapshot().policies().len(), 2);
    assert_eq!(sub.snapshot().policy("other").unwrap().breaker.min_calls, 7);
}

#[test]
fn a_bad_value_is_rejected_for_its_key_alone() {
    let (sub, app, _fleet) = registry();
    let recs = sub.policy("recs");
    let other = sub.policy("other");
    app.put("policies/recs", r#"{"timeout": {"ms": 50}}"#)
        .unwrap();
    for (bad, reason) in [
        (r#"{"timeout": {"ms": 50"#, "malformed JSON"),
        (
            r#"{"breaker": {"error_rate": 150}}"#,
            "breaker.error_rate: 150 is not in 0..=100",
        ),
        (
            r#"{"breaker": {"colour": "red"}}"#,
            "breaker.colour: unknown field `colour`",
        ),
        (r#"[1, 2]"#, "expected an object, found an array"),
        (r#""#, "malformed JSON"),
    ] {
        let err = app.put("policies/recs", bad).unwrap_err();
        assert!(err.to_string().starts_with(reason), "{bad}: {err}");
        assert_eq!(
            recs.settings().timeout.ms,
            Some(50),
            "last good value kept after {bad}"
        );
        let snap = sub.snapshot();
        let rejected: Vec<_> = snap.rejected().collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].key, "policies/recs");
        assert_eq!(rejected[0].revision, snap.revision());
    }
    // Other keys are unaffected, in the same batch too.
    let source: Box<dyn Source> = Box::new(InMemorySource::new());
    drop(source);
    app.put("policies/other", r#"{"timeout": {"ms": 75}}"#)
        .unwrap();
    assert_eq!(other.settings().timeout.ms, Some(75));
    assert_eq!(
        sub.snapshot().rejected().count(),
        1,
        "recs is still rejected"
    );
    // A good value clears the rejection.
    app.put("policies/recs", r#"{"timeout": {"ms": 60}}"#)
        .unwrap();
    assert_eq!(sub.snapshot().rejected().count(), 0);
    assert_eq!(recs.settings().timeout.ms, Some(60));
    // Unknown keys are refused with a clear error.
    let err = app.put("colours/x", "{}").unwrap_err();
    assert!(err.to_string().contains("not a known key"), "{err}");
    let err = app.put("policies/bad name!", "{}").unwrap_err();
    assert!(err.to_string().contains("not a valid name"), "{err}");
}

/// Forms serde would accept but the documentation does not: each is rejected for its key
/// with the field named, and the last good value stays.
#[test]
fn only_the_documented_forms_are_accepted() {
    let (sub, app, fleet) = registry();
    let recs = sub.policy("recs");
    app.put("policies/recs", r#"{"timeout": {"ms": 50}}"#)
        .unwrap();
    for (bad, reason) in [
        (
            r#"{"breaker": ["force_open"]}"#,
            "breaker: expected an object, found an array",
        ),
        (
            r#"{"timeout": [5]}"#,
            "timeout: expected an object, found an array",
        ),
        (
            r#"{"breaker": {"mode": {"force_open": null}}}"#,
            "breaker.mode: expected a string, found an object",
        ),
        (r#"{"kill": true, "kill": false}"#, "kill: duplicate field"),
        (
            r#"{"breaker": {"error_rate": 150, "error_rate": 5}}"#,
            "breaker.error_rate: duplicate field",
        ),
        (
            r#"{"breaker": {"error_rate": 5, "error_rate": 150}}"#,
            "breaker.error_rate: duplicate field",
        ),
        ("null", "expected an object, found null"),
        ("5", "expected an object, found a number"),
    ] {
        let err = app.put("policies/recs", bad).unwrap_err();
        assert_eq!(err.to_string(), reason, "{bad}");
        let s = recs.settings();
        assert_eq!(s.timeout.ms, Some(50), "last good value kept after {bad}");
        assert!(!s.kill && s.breaker.error_rate == 50.0, "{bad}");
        let snap = sub.snapshot();
        let rejected: Vec<_> = snap.rejected().collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].error.to_string(), reason);
    }
    // A value is checked on its own too, not only merged: a shared value in another
    // form is refused even while the application's value hides it.
    app.put("policies/recs", r#"{"timeout": {"ms": 60}}"#)
        .unwrap();
    let err = fleet
        .put("policies/recs", r#"{"timeout": [5]}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeout: expected an object, found an array"
    );
    app.delete("policies/recs");
    assert_eq!(recs.settings().timeout.ms, Some(300), "the code default");

    let err = app
        .put(
            "switches/s",
            r#"{"variants": [{"name": "a", "weight": 1, "value": null}]}"#,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "variants[0].value: must not be null");
    let err = app
        .put(
            "global",
            r#"{"shed_non_critical": true, "shed_non_critical": false}"#,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "shed_non_critical: duplicate field");
}

/// A source that hands its sink to the test, like a store that pushes asynchronously.
struct Manual(Arc<std::sync::Mutex<Option<substation::live::Sink>>>);

impl Manual {
    /// A registry fed by a `Manual` source, and that source's sink.
    fn registry() -> (Substation, substation::live::Sink) {
        let slot = Arc::new(std::sync::Mutex::new(None));
        let sub = Substation::builder()
            .source(Manual(slot.clone()))
            .build()
            .unwrap();
        let sink = slot.lock().unwrap().clone().unwrap();
        (sub, sink)
    }
}

impl Source for Manual {
    fn start(self: Box<Self>, sink: substation::live::Sink) -> Result<(), BoxError> {
        *self.0.lock().unwrap() = Some(sink);
        Ok(())
    }
}

#[test]
fn an_update_is_one_atomic_snapshot_and_replace_diffs() {
    let (sub, sink) = Manual::registry();
    let put = |name: &str, json: &str| Change {
        layer: Scope::App,
        key: format!("policies/{name}"),
        value: Some(json.as_bytes().to_vec()),
    };
    let rejected = sink
        .apply(Update::Changes {
            revision: 7,
            changes: vec![
                put("a", r#"{"timeout": {"ms": 1}}"#),
                put("b", r#"{"timeout": {"ms": 0}}"#),
                put("c", r#"{"timeout": {"ms": 3}}"#),
                Change {
                    layer: Scope::App,
                    key: "stray/key".into(),
                    value: Some(b"{}".to_vec()),
                },
            ],
        })
        .unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    let of = |key: &str| rejected.iter().find(|r| r.key == key).unwrap();
    assert!(
        of("stray/key")
            .error
            .to_string()
            .contains("not a known key")
    );
    assert_eq!(of("stray/key").kind, RejectionKind::Malformed);
    assert_eq!(
        of("policies/b").kind,
        RejectionKind::Invalid,
        "in form, out of range"
    );
    let snap = sub.snapshot();
    assert_eq!(snap.revision(), 7);
    assert_eq!(*snap.health(), Health::Live { revision: 7 });
    assert_eq!(
        snap.policies().map(|(k, _)| k).collect::<Vec<_>>(),
        ["a", "c"]
    );

    // A fresh listing: `a` is gone, `c` changes, `d` appears.
    let a = sub.policy("a");
    let mut changes = sub.subscribe();
    sink.apply(Update::Replace {
        revision: 9,
        layers: vec![(
            Scope::App,
            vec![
                ("policies/c".into(), br#"{"timeout": {"ms": 30}}"#.to_vec()),
                ("policies/d".into(), br#"{}"#.to_vec()),
            ],
        )],
    })
    .unwrap();
    let snap = sub.snapshot();
    assert_eq!(snap.revision(), 9);
    assert_eq!(
        snap.policies().map(|(k, _)| k).collect::<Vec<_>>(),
        ["c", "d"]
    );
    assert_eq!(
        a.settings().timeout.ms,
        Some(1000),
        "deleted: library default"
    );
    assert_eq!(snap.policy("c").unwrap().timeout.ms, Some(30));
    assert_eq!(
        snap.rejected().count(),
        0,
        "b was not listed: its rejection is gone"
    );
    let notice = changes.try_recv().unwrap();
    assert_eq!(notice.revision, 9);
    assert_eq!(&notice.keys[..], ["policies/a", "policies/c", "policies/d"]);

    sink.set_health(Health::Stale {
        revision: 9,
        since: std::time::SystemTime::now(),
        reason: "connection refused".into(),
    })
    .unwrap();
    assert!(matches!(sub.snapshot().health(), Health::Stale { .. }));
    drop(sub);
    assert!(sink.is_closed());
    assert!(
        sink.apply(Update::Changes {
            revision: 10,
            changes: vec![]
        })
        .is_err()
    );
}

#[test]
fn settings_changes_keep_the_breaker_state_and_apply_to_running_services() {
    let (sub, app, _fleet) = registry();
    let recs = sub.policy("recs");
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&recs).layer(flaky.clone());
    flaky.fail(true);
    for _ in 0..5 {
        let _ = call_now(&mut svc, 1);
    }
    assert_eq!(recs.breaker_state(), BreakerState::Open);
    app.put("policies/recs", r#"{"breaker": {"error_rate": 90}}"#)
        .unwrap();
    assert_eq!(
        recs.breaker_state(),
        BreakerState::Open,
        "a threshold change keeps state"
    );
    assert!(call_now(&mut svc, 1).unwrap_err().is::<OpenCircuit>());
    app.put("policies/recs", r#"{"breaker": {"mode": "force_closed"}}"#)
        .unwrap();
    flaky.fail(false);
    assert_eq!(
        call_now(&mut svc, 3).unwrap(),
        3,
        "the operator's override applies at once"
    );
    // The same handle from the registry is the same policy.
    assert_eq!(
        sub.policy("recs").breaker_state(),
        BreakerState::ForcedClosed
    );
}

/// Flips of the breaker's mode while threads call through it: once a flip is applied
/// (its `put` returned), every thread sees it on its next call; no call sees a value
/// that is not yet applied, nor one that was replaced.
///
/// A sequence number tells each call what is in force: odd while a `put` is being
/// applied, `2·i` once flip `i` is. A call that read the same even number before and
/// after itself ran entirely under flip `i` and must see exactly its mode; a call that
/// straddles a `put` may see either. After each flip, every thread must have made such a
/// call under it.
#[test]
fn flips_under_concurrent_load_are_seen_by_every_thread() {
    const THREADS: usize = 2;
    const FLIPS: u64 = 200;
    let (sub, app, _fleet) = registry();
    let recs = sub.policy("recs");
    let svc = CircuitBreakerLayer::new(&recs).layer(Flaky::default());
    // Flip 0 is the code default (`normal`); odd flips force the breaker open.
    let open = |flip: u64| flip % 2 == 1;
    let seq = AtomicU64::new(0);
    let seen: Vec<AtomicU64> = (0..THREADS).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut svc = svc.clone();
                let (seq, seen, stop) = (&seq, &seen, &stop);
                s.spawn(move || {
                    let mut calls = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let before = seq.load(Ordering::Acquire);
                        let rejected = match call_now(&mut svc, 1) {
                            Ok(_) => false,
                            Err(e) if e.is::<OpenCircuit>() => true,
                            Err(e) => panic!("{e}"),
                        };
                        let after = seq.load(Ordering::Acquire);
                        calls += 1;
                        if before == after && before % 2 == 0 {
                            let flip = before / 2;
                            assert_eq!(
                                rejected,
                                open(flip),
                                "thread {t}, a call entirely under flip {flip}"
                            );
                            seen[t].store(flip, Ordering::Release);
                        }
                    }
                    calls
                })
            })
            .collect();
        'flips: for flip in 1..=FLIPS {
            seq.store(2 * flip - 1, Ordering::Release);
            let mode = if open(flip) { "force_open" } else { "normal" };
            app.put(
                "policies/recs",
                &format!(r#"{{"breaker": {{"mode": "{mode}"}}}}"#),
            )
            .unwrap();
            seq.store(2 * flip, Ordering::Release);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while let Some(t) = (0..THREADS).find(|&t| seen[t].load(Ordering::Acquire) < flip) {
                if workers.iter().any(|w| w.is_finished()) {
                    break 'flips; // a worker failed: its panic is joined below
                }
                if std::time::Instant::now() > deadline {
                    stop.store(true, Ordering::Release);
                    panic!("thread {t} made no call under flip {flip}");
                }
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Release);
        for w in workers {
            assert!(w.join().unwrap() >= FLIPS);
        }
    });
}

#[test]
fn shedding_non_critical_kills_them_all_at_once() {
    let app = InMemorySource::new();
    let fleet = InMemorySource::shared_defaults();
    let optional = PolicySettings::default().with(|s| s.critical = false);
    let sub = Substation::builder()
        .policy("recs", optional.clone())
        .policy("ads", optional)
        .policy("payments", PolicySettings::default())
        .source(fleet.clone())
        .source(app.clone())
        .build()
        .unwrap();
    let (recs, ads, payments) = (
        sub.policy("recs"),
        sub.policy("ads"),
        sub.policy("payments"),
    );
    assert!(!recs.is_killed() && !ads.is_killed() && !payments.is_killed());
    fleet
        .put("global", r#"{"shed_non_critical": true}"#)
        .unwrap();
    assert!(
        recs.is_killed() && ads.is_killed(),
        "every non-critical policy is shed"
    );
    assert!(!payments.is_killed(), "critical ones are not");
    assert!(sub.snapshot().global().shed_non_critical);
    // A policy created later, or one that becomes non-critical, is shed too.
    app.put("policies/payments", r#"{"critical": false}"#)
        .unwrap();
    assert!(payments.is_killed());
    app.put("global", r#"{"shed_non_critical": false}"#)
        .unwrap();
    assert!(
        !recs.is_killed() && !payments.is_killed(),
        "the app overrides the fleet"
    );
    app.delete("global");
    assert!(recs.is_killed());
    fleet.delete("global");
    assert!(!recs.is_killed());
    // Each policy's own kill switch.
    app.put("policies/ads", r#"{"kill": true}"#).unwrap();
    assert!(ads.is_killed() && !recs.is_killed());
    let err = app.put("global", r#"{"shed": true}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

/// The events of two layers' watches may interleave out of revision order: the
/// snapshot's revision only moves forward with them; a listing sets it (it may go down,
/// after a wiped etcd).
#[test]
fn the_revision_moves_forward_with_events_and_is_set_by_a_listing() {
    let (sub, sink) = Manual::registry();
    let change = |layer: Scope, ms: u32| Change {
        layer,
        key: "policies/p".into(),
        value: Some(format!(r#"{{"timeout": {{"ms": {ms}}}}}"#).into_bytes()),
    };
    let mut notices = sub.subscribe();
    for (revision, layer, ms) in [(9, Scope::App, 5), (7, Scope::Shared, 6)] {
        sink.apply(Update::Changes {
            revision,
            changes: vec![change(layer, ms)],
        })
        .unwrap();
    }
    assert_eq!(sub.snapshot().revision(), 9);
    assert_eq!(*sub.snapshot().health(), Health::Live { revision: 9 });
    assert_eq!(
        sub.policy("p").settings().timeout.ms,
        Some(5),
        "the app layer wins"
    );
    assert_eq!(notices.try_recv().unwrap().revision, 9);
    sink.apply(Update::Replace {
        revision: 3,
        layers: vec![(Scope::App, vec![("policies/p".into(), b"{}".to_vec())])],
    })
    .unwrap();
    assert_eq!(sub.snapshot().revision(), 3);
}

/// Every event logged on this thread while `f` runs, one line each, fields formatted the
/// way `tracing-subscriber`'s formatter does (`Debug` of each recorded value).
fn logged<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    use std::fmt::Write as _;
    use tracing::field::{Field, Visit};

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<String>>>);
    struct Line(String);
    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = Line(event.metadata().level().to_string());
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    let capture = Capture::default();
    let r = tracing::subscriber::with_default(capture.clone(), f);
    let lines = capture.0.lock().unwrap().clone();
    (r, lines)
}

/// A key can carry a newline or a terminal escape and a value can be megabytes: neither
/// is written raw, nor whole, into the log or a rejection.
#[test]
fn forged_keys_and_huge_values_are_escaped_and_cut() {
    let (sub, sink) = Manual::registry();
    let forged = "policies/x\n2026-01-01 ERROR forged line \x1b[31mred";
    let huge = "y".repeat(1_400_000);
    let huge_ctl = "\x1b[31m\n".repeat(200_000); // 1.4 MB of control characters
    let change = |key: &str, value: String| Change {
        layer: Scope::App,
        key: key.to_owned(),
        value: Some(value.into_bytes()),
    };
    let changes = vec![
        change(forged, "{}".into()),
        change(&format!("policies/{huge}"), "{}".into()),
        change(
            "policies/a",
            format!(r#"{{"breaker": {{"mode": "{huge}"}}}}"#),
        ),
        change("policies/b", format!(r#"{{"kill": "{huge}"}}"#)),
        change(
            "policies/c",
            format!(
                r#"{{"{}": 1}}"#,
                huge_ctl.replace('\x1b', "\\u001b").replace('\n', "\\n")
            ),
        ),
        change("policies/d", format!(r#""{huge}""#)),
        change("policies/e", format!("[{}1]", "1,".repeat(700_000))),
    ];
    let n = changes.len();
    let (rejected, lines) = logged(|| {
        sink.apply(Update::Changes {
            revision: 3,
            changes,
        })
        .unwrap()
    });
    assert_eq!(rejected.len(), n, "{rejected:?}");
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("rejected")).collect();
    assert_eq!(warnings.len(), n, "{lines:?}");
    let snapshot = sub.snapshot();
    let texts = rejected
        .iter()
        .map(|r| r.to_string())
        .chain(snapshot.rejected().map(|r| r.to_string()))
        .chain(warnings.iter().map(|l| l.to_string()));
    for text in texts {
        assert!(text.len() < 1_000, "{} bytes: {text}", text.len());
        assert!(
            !text.contains(['\n', '\r', '\x1b']),
            "raw control character in {text:?}"
        );
    }
    // The forged key is shown quoted and escaped, whole (it is short).
    let shown = r#""policies/x\n2026-01-01 ERROR forged line \u{1b}[31mred""#;
    assert!(
        rejected[0].to_string().starts_with(shown),
        "{}",
        rejected[0]
    );
    assert!(warnings[0].contains(shown), "{}", warnings[0]);
    assert!(
        warnings[2].contains(r#"error="breaker.mode: unknown variant `yyyy"#),
        "the error is quoted too: {}",
        warnings[2]
    );
    // Long input is cut, and says by how much.
    for r in &rejected[1..5] {
        assert!(r.to_string().contains(" bytes cut]…"), "{r}");
    }
    assert!(
        rejected[2]
            .error
            .to_string()
            .starts_with("breaker.mode: unknown variant `yyyy"),
        "{}",
        rejected[2].error
    );
    assert!(
        rejected[2].error.to_string().ends_with("`metrics_only`"),
        "the end of the message is kept: {}",
        rejected[2].error
    );
    assert_eq!(
        rejected[5].error.to_string(),
        "expected an object, found a string"
    );
}

/// `build` says what was wrong with a type to match on, and keeps the cause as its
/// `source()`.
#[test]
fn build_errors_are_typed() {
    use std::error::Error as _;
    use substation::live::{BuildError, Key, NameKind};
    use substation::switch::SwitchSettings;

    let err = Substation::builder()
        .policy("bad name!", PolicySettings::default())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::InvalidName { kind: NameKind::Policy, name } if name == "bad name!"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"invalid policy name "bad name!" (expected 1 to 128 of A-Z a-z 0-9 _ . -)"#
    );
    assert!(err.source().is_none());
    let err = Substation::builder()
        .switch("", SwitchSettings::on())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::InvalidName { kind: NameKind::Switch, name } if name.is_empty()),
        "{err:?}"
    );

    let mut bad = PolicySettings::default();
    bad.breaker.error_rate = 150.0;
    let err = Substation::builder()
        .policy("recs", bad)
        .build()
        .unwrap_err();
    match &err {
        BuildError::InvalidDefault { key, error } => {
            assert_eq!(*key, Key::Policy("recs".into()));
            assert_eq!(error.field(), "breaker.error_rate");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "invalid code default of policies/recs: breaker.error_rate: 150 is not in 0..=100"
    );
    let cause = err.source().unwrap();
    assert!(cause.is::<substation::settings::SettingsError>());
    let err = Substation::builder()
        .switch("s", SwitchSettings::percent(f64::NAN))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::InvalidDefault { key: Key::Switch(name), error } if name == "s" && error.field() == "percent"),
        "{err:?}"
    );

    struct Failing;
    impl Source for Failing {
        fn start(self: Box<Self>, _: substation::live::Sink) -> Result<(), BoxError> {
            Err("connection refused".into())
        }
    }
    let first = InMemorySource::new();
    let err = Substation::builder()
        .source(first)
        .source(Failing)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::Source { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "source 1 failed to start: connection refused"
    );
    assert_eq!(err.source().unwrap().to_string(), "connection refused");
    // Still a `BoxError` for `?`.
    let boxed: BoxError = err.into();
    assert!(boxed.is::<BuildError>());
}

/// Names from input go through `try_policy` / `try_switch`: an invalid one is an error,
/// not a panic; `policy` / `switch` keep panicking for names from code.
#[test]
fn the_fallible_forms_return_an_error_for_an_invalid_name() {
    let (sub, app, _fleet) = registry();
    let err = sub.try_policy("bad name!\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#""bad name!\n" is not a valid policy name (1 to 128 of A-Z a-z 0-9 _ . -)"#
    );
    let err = sub.try_switch(&"x".repeat(129)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("is not a valid switch name (1 to 128 of A-Z a-z 0-9 _ . -)")
    );
    app.put("policies/recs", r#"{"timeout": {"ms": 42}}"#)
        .unwrap();
    let recs = sub.try_policy("recs").unwrap();
    assert_eq!(recs.settings().timeout.ms, Some(42));
    assert_eq!(sub.policy("recs").settings().timeout.ms, Some(42));
    assert!(!sub.try_switch("s").unwrap().is_on("u1"));
    let panicked = std::panic::catch_unwind(|| sub.policy("bad name!")).unwrap_err();
    assert!(
        panicked
            .downcast_ref::<String>()
            .unwrap()
            .contains("not a valid policy name")
    );
}

/// The registry holds no policy alive: one that nobody holds any more is made again,
/// with the settings in force; one in use is handed out again and kept up to date.
#[test]
fn a_policy_nobody_holds_is_made_again_with_the_settings_in_force() {
    let (sub, app, fleet) = registry();
    let recs = sub.policy("recs");
    let flaky = Flaky::default();
    let mut svc = CircuitBreakerLayer::new(&recs).layer(flaky.clone());
    flaky.fail(true);
    for _ in 0..5 {
        let _ = call_now(&mut svc, 1);
    }
    assert_eq!(recs.breaker_state(), BreakerState::Open);
    drop(recs);
    assert_eq!(
        sub.policy("recs").breaker_state(),
        BreakerState::Open,
        "held by a service: the same policy"
    );
    drop(svc);
    app.put("policies/recs", r#"{"timeout": {"ms": 77}}"#)
        .unwrap();
    let recs = sub.policy("recs");
    assert_eq!(
        recs.breaker_state(),
        BreakerState::Closed,
        "nobody held it: a new one"
    );
    assert_eq!(recs.settings().timeout.ms, Some(77));
    assert_eq!(recs.settings().breaker.min_calls, 5, "the code default");
    // Updates and shedding reach the live one, and a new one is made shed.
    app.put(
        "policies/recs",
        r#"{"timeout": {"ms": 78}, "critical": false}"#,
    )
    .unwrap();
    assert_eq!(recs.settings().timeout.ms, Some(78));
    fleet
        .put("global", r#"{"shed_non_critical": true}"#)
        .unwrap();
    assert!(recs.is_killed());
    drop(recs);
    assert!(sub.policy("recs").is_killed());
    // Switches alike.
    let switch = sub.switch("s");
    app.put("switches/s", r#"{"percent": 100}"#).unwrap();
    assert!(switch.is_on("u"));
    drop(switch);
    assert!(sub.switch("s").is_on("u"));
}

/// A subscriber that falls more than 1,024 notices behind is told so (and by how much),
/// then gets the newest notices; the snapshot has everything.
#[test]
fn a_subscriber_that_lags_is_told_so() {
    use tokio::sync::broadcast::error::TryRecvError;

    let (sub, app, _fleet) = registry();
    let mut notices = sub.subscribe();
    for ms in 1..=1_100u32 {
        app.put(
            "policies/recs",
            &format!(r#"{{"timeout": {{"ms": {ms}}}}}"#),
        )
        .unwrap();
    }
    assert_eq!(notices.try_recv(), Err(TryRecvError::Lagged(1_100 - 1_024)));
    let first = notices.try_recv().unwrap();
    assert_eq!(first.revision, 1_100 - 1_024 + 1);
    let mut last = first.revision;
    while let Ok(n) = notices.try_recv() {
        assert_eq!(n.revision, last + 1, "in order, none skipped after the lag");
        last = n.revision;
    }
    assert_eq!(last, sub.snapshot().revision());
    assert_eq!(sub.policy("recs").settings().timeout.ms, Some(1_100));
}

/// One change in `layer`: a value (`Some`) or a delete.
fn at(layer: Scope, key: &str, json: Option<&str>) -> Change {
    Change {
        layer,
        key: key.into(),
        value: json.map(|j| j.as_bytes().to_vec()),
    }
}

/// Applies one change as its own update; the refusals it returns.
fn apply_one(
    sink: &substation::live::Sink,
    revision: u64,
    change: Change,
) -> Vec<substation::live::Rejection> {
    sink.apply(Update::Changes {
        revision,
        changes: vec![change],
    })
    .unwrap()
}

/// `(window_ms, buckets)` of policy `name` in force, as the snapshot and as the live
/// handle see it.
fn window(sub: &Substation, name: &str) -> (u64, u32) {
    let snap = sub.snapshot();
    let b = &snap.policy(name).unwrap().breaker;
    let live = sub.policy(name).settings();
    assert_eq!(
        (live.breaker.window_ms, live.breaker.buckets),
        (b.window_ms, b.buckets)
    );
    (b.window_ms, b.buckets)
}

/// A layer's value is validated over the layers below it only, so what is in force does
/// not depend on the order the layers were written in; a value invalid over them is
/// kept and takes effect by itself once a change below makes it valid (no write lost).
#[test]
fn a_value_invalid_over_the_layers_below_takes_effect_when_they_change() {
    let app = |_rev: u64| {
        at(
            Scope::App,
            "policies/p",
            Some(r#"{"breaker": {"buckets": 7}}"#),
        )
    };
    let shared = at(
        Scope::Shared,
        "policies/p",
        Some(r#"{"breaker": {"window_ms": 7000}}"#),
    );
    // The application's value first: 7 buckets do not divide the default 10 s window.
    let (sub, sink) = Manual::registry();
    let p = sub.policy("p");
    let rejected = sink
        .apply(Update::Changes {
            revision: 2,
            changes: vec![app(2)],
        })
        .unwrap();
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(
        (r.kind, r.layer, r.revision),
        (RejectionKind::Invalid, Scope::App, 2)
    );
    assert_eq!(
        r.error.to_string(),
        "breaker.buckets: 7 does not divide breaker.window_ms (10000) evenly"
    );
    assert_eq!(sub.snapshot().rejected().count(), 1, "listed");
    assert_eq!(
        (p.settings().breaker.window_ms, p.settings().breaker.buckets),
        (10_000, 10)
    );
    // The shared window that 7 divides: the waiting value is now in force, unasked.
    let mut changes = sub.subscribe();
    let rejected = sink
        .apply(Update::Changes {
            revision: 3,
            changes: vec![shared.clone()],
        })
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(window(&sub, "p"), (7_000, 7));
    assert_eq!(
        (p.settings().breaker.window_ms, p.settings().breaker.buckets),
        (7_000, 7)
    );
    assert_eq!(sub.snapshot().rejected().count(), 0, "no longer refused");
    assert_eq!(&changes.try_recv().unwrap().keys[..], ["policies/p"]);

    // The same writes in the other order: the same settings, nothing refused.
    let (other, sink) = Manual::registry();
    sink.apply(Update::Changes {
        revision: 2,
        changes: vec![shared],
    })
    .unwrap();
    let rejected = sink
        .apply(Update::Changes {
            revision: 3,
            changes: vec![app(3)],
        })
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(window(&other, "p"), (7_000, 7));

    // A waiting value replaced by a malformed one is gone: the layer's latest write
    // is the malformed one, and nothing of the waiting one comes back later.
    let (sub, sink) = Manual::registry();
    sink.apply(Update::Changes {
        revision: 2,
        changes: vec![app(2)],
    })
    .unwrap();
    let bad = at(
        Scope::App,
        "policies/p",
        Some(r#"{"breaker": {"bukets": 7}}"#),
    );
    let rejected = sink
        .apply(Update::Changes {
            revision: 3,
            changes: vec![bad],
        })
        .unwrap();
    assert_eq!(rejected[0].kind, RejectionKind::Malformed);
    let shared = at(
        Scope::Shared,
        "policies/p",
        Some(r#"{"breaker": {"window_ms": 7000}}"#),
    );
    sink.apply(Update::Changes {
        revision: 4,
        changes: vec![shared],
    })
    .unwrap();
    assert_eq!(window(&sub, "p"), (7_000, 10));
    let listed: Vec<_> = sub
        .snapshot()
        .rejected()
        .map(|r| (r.kind, r.revision))
        .collect();
    assert_eq!(listed, [(RejectionKind::Malformed, 3)]);
    // ... and deleting the key clears what the layer held.
    sink.apply(Update::Changes {
        revision: 5,
        changes: vec![at(Scope::App, "policies/p", None)],
    })
    .unwrap();
    assert_eq!(sub.snapshot().rejected().count(), 0);

    // The value in force written again over a waiting one: the latest write wins, the
    // waiting one is gone (a later change below does not bring it back).
    let (sub, sink) = Manual::registry();
    let apply = |revision, change| apply_one(&sink, revision, change);
    let good = || at(Scope::App, "policies/p", Some(r#"{"timeout": {"ms": 5}}"#));
    assert!(apply(2, good()).is_empty());
    assert_eq!(apply(3, app(3))[0].kind, RejectionKind::Invalid);
    assert!(apply(4, good()).is_empty());
    assert_eq!(sub.snapshot().rejected().count(), 0);
    apply(
        5,
        at(
            Scope::Shared,
            "policies/p",
            Some(r#"{"breaker": {"window_ms": 7000}}"#),
        ),
    );
    assert_eq!(window(&sub, "p"), (7_000, 10));
    assert_eq!(sub.policy("p").settings().timeout.ms, Some(5));

    // The same refused value written again is refused at its new revision (what `set
    // --wait` looks for); a listing that sends it again keeps the write's revision.
    let (sub, sink) = Manual::registry();
    let apply = |revision, change| apply_one(&sink, revision, change);
    assert_eq!(apply(2, app(2))[0].revision, 2);
    assert_eq!(apply(3, app(3))[0].revision, 3);
    assert_eq!(sub.snapshot().rejected().next().unwrap().revision, 3);
    let listed = vec![(
        "policies/p".into(),
        br#"{"breaker": {"buckets": 7}}"#.to_vec(),
    )];
    sink.apply(Update::Replace {
        revision: 9,
        layers: vec![(Scope::App, listed)],
    })
    .unwrap();
    assert_eq!(sub.snapshot().rejected().next().unwrap().revision, 3);
}

/// A change below a value in force (a write or a delete) that makes it break a rule is
/// not refused for it: the value above is left out — whole, as it would be if it arrived
/// now, so a process restarted on the same store agrees — and listed as a `Conflict`; a
/// later change that makes it valid puts it back by itself.
#[test]
fn a_change_below_that_breaks_a_value_in_force_leaves_it_out_as_a_restart_would() {
    let (sub, sink) = Manual::registry();
    let p = sub.policy("p");
    let apply = |revision, changes| sink.apply(Update::Changes { revision, changes }).unwrap();
    let shared = |json| at(Scope::Shared, "policies/p", json);
    let app_json = r#"{"kill": true, "breaker": {"buckets": 7, "min_calls": 3}}"#;
    let none = apply(
        2,
        vec![
            shared(Some(r#"{"breaker": {"window_ms": 7000}}"#)),
            at(Scope::App, "policies/p", Some(app_json)),
        ],
    );
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(window(&sub, "p"), (7_000, 7));
    assert!(p.settings().kill);

    // The shared value is deleted: the default 10 s window, which 7 does not divide.
    let none = apply(3, vec![shared(None)]);
    assert!(
        none.is_empty(),
        "a conflict is not a refusal of the update: {none:?}"
    );
    assert_eq!(
        window(&sub, "p"),
        (10_000, 10),
        "the application's value is left out"
    );
    assert_eq!(p.settings().breaker.min_calls, 20);
    assert!(!p.settings().kill, "whole");
    let snap = sub.snapshot();
    let listed: Vec<_> = snap.rejected().collect();
    assert_eq!(listed.len(), 1);
    let r = listed[0];
    assert_eq!(
        (r.kind, r.layer, r.revision),
        (RejectionKind::Conflict, Scope::App, 3)
    );
    assert_eq!(
        r.error.to_string(),
        "breaker.buckets: 7 does not divide breaker.window_ms (10000) evenly, merged with the layers below it \
         since they changed; the value is left out until a change makes it valid"
    );
    // A process started on the same store (a listing) has the same settings in force.
    let (restarted, sink2) = Manual::registry();
    sink2
        .apply(Update::Replace {
            revision: 3,
            layers: vec![
                (
                    Scope::App,
                    vec![("policies/p".into(), app_json.as_bytes().to_vec())],
                ),
                (Scope::Shared, vec![]),
            ],
        })
        .unwrap();
    assert_eq!(*restarted.policy("p").settings(), *p.settings());

    // A shared write that makes it valid again: back, by itself.
    apply(
        4,
        vec![shared(Some(r#"{"breaker": {"window_ms": 14000}}"#))],
    );
    assert_eq!(window(&sub, "p"), (14_000, 7), "valid again: back");
    assert_eq!(p.settings().breaker.min_calls, 3);
    assert!(p.settings().kill);
    assert_eq!(sub.snapshot().rejected().count(), 0);
    // A shared write that breaks it is accepted too (it is valid over what is below it).
    apply(
        5,
        vec![shared(Some(r#"{"breaker": {"window_ms": 15000}}"#))],
    );
    assert_eq!(window(&sub, "p"), (15_000, 10));
    assert_eq!(sub.snapshot().rejected().next().unwrap().revision, 5);

    // The application's value replaced: the conflict goes with it.
    apply(
        6,
        vec![at(
            Scope::App,
            "policies/p",
            Some(r#"{"kill": true, "breaker": {"buckets": 5}}"#),
        )],
    );
    assert_eq!(window(&sub, "p"), (15_000, 5));
    assert_eq!(sub.snapshot().rejected().count(), 0);

    // An experiment whose application value needs the shared one (its `policy`): with
    // the shared value deleted nothing valid is left, and no experiment is in force.
    let e = |layer, json| at(layer, "experiments/e", json);
    assert!(apply(7, vec![e(Scope::Shared, Some(r#"{"policy": "p"}"#))]).is_empty());
    assert!(apply(8, vec![e(Scope::App, Some(r#"{"abort_percent": 50}"#))]).is_empty());
    assert_eq!(sub.snapshot().experiment("e").unwrap().abort_percent, 50.0);
    apply(9, vec![e(Scope::Shared, None)]);
    let snap = sub.snapshot();
    assert!(snap.experiment("e").is_none(), "{:?}", snap.experiment("e"));
    let running = |x: &substation::experiment::ExperimentStatus| {
        x.name == "e" && x.state == substation::settings::RunState::Running
    };
    assert!(
        !sub.experiments().iter().any(running),
        "{:?}",
        sub.experiments()
    );
    let r = snap.rejected().next().unwrap();
    assert_eq!(
        (r.kind, r.layer, r.key.as_str()),
        (RejectionKind::Conflict, Scope::App, "experiments/e")
    );

    // A code default below: a value invalid over it is refused, the last good one stays.
    let source = InMemorySource::new();
    let mut default = PolicySettings::default();
    default.breaker.window_ms = 9_000;
    default.breaker.buckets = 9;
    let sub = Substation::builder()
        .policy("q", default)
        .source(source.clone())
        .build()
        .unwrap();
    source
        .put(
            "policies/q",
            r#"{"breaker": {"buckets": 3}, "timeout": {"ms": 50}}"#,
        )
        .unwrap();
    assert_eq!(window(&sub, "q"), (9_000, 3));
    let err = source
        .put("policies/q", r#"{"breaker": {"buckets": 7}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("7 does not divide"), "{err}");
    assert_eq!(window(&sub, "q"), (9_000, 3), "the last good value stays");
}
