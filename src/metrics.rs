//! Metric names, their descriptions, and the handles a policy records into.
//!
//! substation emits through the [`metrics`] facade and never installs a recorder: the
//! application installs one (Prometheus, StatsD, …) **before** it builds its
//! [`Substation`](crate::Substation) or policies, because handles are registered once,
//! when a policy is created, never per call. Call [`describe`] after installing the
//! recorder to attach units and help texts.
//!
//! Policies' counts and durations are kept by the library ([`crate::stats`]) and reach
//! the recorder in batches: once a second from a background thread, when a policy is
//! dropped, and at [`flush`]. A call never calls the recorder.
//!
//! Every metric carries the label `policy` (the dependency's name).
//!
//! ```
//! // In the application, after installing a recorder:
//! substation::metrics::describe();
//! assert_eq!(substation::metrics::CALLS, "substation_calls_total");
//! ```

use metrics::{Counter, Gauge, Histogram, Unit};

/// Counter of completed, rejected or killed calls, labelled `policy` and `outcome`
/// (see the `OUTCOME_*` constants).
pub const CALLS: &str = "substation_calls_total";
/// Histogram of call durations in seconds, labelled `policy`: the calls that reached the
/// dependency and waited for it (were pending), to ±12 % (the statistics' buckets,
/// pushed once a second as each bucket's middle). A call ready on its first poll took
/// no measurable time and is not a sample (it is in [`CALLS`]): exporters whose
/// `record_many` is a loop of `record` would otherwise pay per call, in the flusher.
/// Rejected calls are not recorded.
pub const CALL_DURATION: &str = "substation_call_duration_seconds";
/// Counter of retries, labelled `policy` and `result`: `made` (an attempt after a
/// call's first), `hedge` (an extra copy of a slow call sent) or `budget_refused` (the
/// budget said no to a retry, which ended the call, or to a hedge).
pub const RETRIES: &str = "substation_retries_total";
/// Gauge of a breaker's state, labelled `policy`: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "substation_breaker_state";
/// Counter of breaker transitions, labelled `policy` and `to` (`open`, `half_open`,
/// `closed`).
pub const BREAKER_TRANSITIONS: &str = "substation_breaker_transitions_total";
/// Counter of settings values rejected by validation, labelled `key` and `kind`
/// ([`RejectionKind`](crate::live::RejectionKind): `malformed`, `invalid`, `conflict`).
pub const SETTINGS_REJECTED: &str = "substation_settings_rejected_total";

/// Counter of times a settings source listed its store again, labelled `reason`
/// (`compacted`: its watch fell behind a compaction; `rewound`: the store's revision went
/// backwards, a restore or a wipe).
pub const SOURCE_RESYNCS: &str = "substation_source_resyncs_total";
/// Counter of failed attempts of a settings source to reach its store.
pub const SOURCE_ERRORS: &str = "substation_source_errors_total";

/// `outcome` label: the call succeeded (as classified).
pub const OUTCOME_SUCCESS: &str = "success";
/// `outcome` label: the call failed (as classified), other than by timing out.
pub const OUTCOME_FAILURE: &str = "failure";
/// `outcome` label: the call timed out.
pub const OUTCOME_TIMEOUT: &str = "timeout";
/// `outcome` label: the call was rejected by an open circuit breaker.
pub const OUTCOME_REJECTED: &str = "rejected";
/// `outcome` label: the call was not made: the dependency is killed.
pub const OUTCOME_KILLED: &str = "killed";
/// `outcome` label: the call was rejected by a full bulkhead.
pub const OUTCOME_BULKHEAD_FULL: &str = "bulkhead_full";
/// Counter of fallback attempts, labelled `policy`, `tier` (`static`, `cache`,
/// `service`) and `result` (`served`, `failed`).
pub const FALLBACKS: &str = "substation_fallbacks_total";
/// Counter of injected faults, labelled `policy` and `kind` (`abort`, `delay`).
pub const FAULTS: &str = "substation_faults_injected_total";
/// Histogram of service-tier fallback durations in seconds, labelled `policy`.
pub const FALLBACK_DURATION: &str = "substation_fallback_duration_seconds";
/// Counter of switch evaluations, labelled `switch` and `result` (`on`, `off`, or the
/// variant's name). Counted exactly in per-thread stripes and pushed here in steps of
/// 1024 per stripe, so it may trail the exact count (`Switch::evaluations`) by a little.
pub const SWITCH_EVALUATIONS: &str = "substation_switch_evaluations_total";
/// Counter of changes of a switch's value, labelled `switch`.
pub const SWITCH_CHANGES: &str = "substation_switch_changes_total";

/// Counter of requests in experiment cohorts that finished, labelled `experiment`,
/// `cohort` (`control`, `experiment`) and `outcome` (`success`, `failure`): the
/// process's own counts, pushed once a second by the run's task.
pub const EXPERIMENT_REQUESTS: &str = "substation_experiment_requests_total";
/// Gauge, labelled `experiment`: 1 while a run of it assigns cohorts here, else 0.
pub const EXPERIMENT_RUNNING: &str = "substation_experiment_running";
/// Counter of experiment verdicts this process reached, labelled `experiment` and
/// `verdict` (`passed`, `aborted`, `halted`).
pub const EXPERIMENT_VERDICTS: &str = "substation_experiment_verdicts_total";

/// Pushes every live policy's counts to the recorder now (the background flush does it
/// once a second): before reading a test recorder, or at shutdown.
pub fn flush() {
    crate::stats::flush_all();
}

/// Describes every metric to the installed recorder (units and help texts).
pub fn describe() {
    metrics::describe_counter!(
        EXPERIMENT_REQUESTS,
        Unit::Count,
        "Finished requests of chaos-experiment cohorts, by cohort and outcome."
    );
    metrics::describe_gauge!(
        EXPERIMENT_RUNNING,
        Unit::Count,
        "1 while an experiment's run assigns cohorts in this process."
    );
    metrics::describe_counter!(
        EXPERIMENT_VERDICTS,
        Unit::Count,
        "Experiment verdicts reached by this process."
    );
    metrics::describe_counter!(
        CALLS,
        Unit::Count,
        "Calls through a substation policy, by outcome."
    );
    metrics::describe_counter!(
        RETRIES,
        Unit::Count,
        "Retries made, and retries the retry budget refused."
    );
    metrics::describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Duration of calls that waited for the protected service."
    );
    metrics::describe_gauge!(
        BREAKER_STATE,
        Unit::Count,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open."
    );
    metrics::describe_counter!(
        BREAKER_TRANSITIONS,
        Unit::Count,
        "Circuit breaker state transitions, by target state."
    );
    metrics::describe_counter!(
        SOURCE_RESYNCS,
        Unit::Count,
        "Full re-listings of a settings store, by reason."
    );
    metrics::describe_counter!(
        SOURCE_ERRORS,
        Unit::Count,
        "Failed attempts to reach a settings store."
    );
    metrics::describe_counter!(
        FALLBACKS,
        Unit::Count,
        "Fallback attempts, by tier and result."
    );
    metrics::describe_counter!(FAULTS, Unit::Count, "Faults injected, by kind.");
    metrics::describe_histogram!(
        FALLBACK_DURATION,
        Unit::Seconds,
        "Duration of service-tier fallbacks."
    );
    metrics::describe_counter!(
        SETTINGS_REJECTED,
        Unit::Count,
        "Settings values rejected by validation; the last good value stays in force."
    );
    metrics::describe_counter!(
        SWITCH_EVALUATIONS,
        Unit::Count,
        "Feature switch evaluations, by result (batched per thread stripe)."
    );
    metrics::describe_counter!(
        SWITCH_CHANGES,
        Unit::Count,
        "Changes of a feature switch's value."
    );
}

/// The handles of one policy, registered once when the policy is created (with the
/// recorder current then). Counts reach them in batches, from the policy's statistics
/// ([`crate::stats`]): at most once a second, and when the policy is dropped.
#[derive(Debug)]
pub(crate) struct PolicyMetrics {
    /// By statistics counter index (`stats::SUCCESS`, …).
    counters: [Counter; crate::stats::COUNTERS],
    pub(crate) duration: Histogram,
    pub(crate) state: Gauge,
    pub(crate) to_open: Counter,
    pub(crate) to_half_open: Counter,
    pub(crate) to_closed: Counter,
}

impl PolicyMetrics {
    pub(crate) fn new(policy: &str) -> Self {
        let p = policy.to_owned();
        let calls = |outcome: &'static str| metrics::counter!(CALLS, "policy" => p.clone(), "outcome" => outcome);
        let to = |state: &'static str| metrics::counter!(BREAKER_TRANSITIONS, "policy" => p.clone(), "to" => state);
        let fault =
            |kind: &'static str| metrics::counter!(FAULTS, "policy" => p.clone(), "kind" => kind);
        let retries = |result: &'static str| metrics::counter!(RETRIES, "policy" => p.clone(), "result" => result);
        let fallback = |tier: &'static str, result: &'static str| metrics::counter!(FALLBACKS, "policy" => p.clone(), "tier" => tier, "result" => result);
        PolicyMetrics {
            counters: [
                calls(OUTCOME_SUCCESS),
                calls(OUTCOME_FAILURE),
                calls(OUTCOME_TIMEOUT),
                calls(OUTCOME_REJECTED),
                calls(OUTCOME_KILLED),
                calls(OUTCOME_BULKHEAD_FULL),
                fault("abort"),
                fault("delay"),
                fallback("static", "served"),
                fallback("static", "failed"),
                fallback("cache", "served"),
                fallback("cache", "failed"),
                fallback("service", "served"),
                fallback("service", "failed"),
                retries("made"),
                retries("budget_refused"),
                retries("hedge"),
            ],
            duration: metrics::histogram!(CALL_DURATION, "policy" => p.clone()),
            state: metrics::gauge!(BREAKER_STATE, "policy" => p.clone()),
            to_open: to("open"),
            to_half_open: to("half_open"),
            to_closed: to("closed"),
        }
    }

    /// Gives the recorder what was counted between `before` and `now`.
    pub(crate) fn push(&self, now: &crate::stats::Totals, before: &crate::stats::Totals) {
        use crate::stats::bucket_value;
        for (i, counter) in self.counters.iter().enumerate() {
            let n = now.counts[i].saturating_sub(before.counts[i]);
            if n > 0 {
                counter.increment(n);
            }
        }
        for (b, (a, z)) in now.latency.iter().zip(before.latency.iter()).enumerate() {
            let n = a.saturating_sub(*z);
            if n > 0 {
                self.duration
                    .record_many(bucket_value(b) * 1e-6, n as usize);
            }
        }
    }
}
