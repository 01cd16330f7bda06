//! The event stream in the Hystrix dashboard's `HystrixCommand` format.
//!
//! Field names, value types and units are those the Hystrix dashboard and Turbine read
//! (hystrix-metrics-event-stream): counts over the rolling window (10 s), latencies in
//! whole milliseconds, the `propertyValue_*` a command reports. substation's notions map
//! onto Hystrix's: a rejection by the open breaker or the kill switch is a short
//! circuit, a full bulkhead a semaphore rejection, a fallback answer a fallback success
//! (a tier that could not answer a fallback failure), a cache-tier answer also a
//! response from cache. What Hystrix has no field for is in `substation`.

use serde_json::{Value, json};

use crate::breaker::BreakerState;
use crate::settings::{BreakerMode, PolicySettings};
use crate::stats::{Latency, PolicyStats};
use crate::{Policy, Substation};

/// One interval's events: a `data:` line per policy in use, then a keep-alive comment.
pub(super) fn events(substation: &Substation) -> String {
    let mut out = String::new();
    for policy in substation.policies() {
        let stats = policy.stats();
        let settings = policy.settings();
        out.push_str("data: ");
        out.push_str(&command(&policy, &stats, &settings, crate::stats::unix_ms()).to_string());
        out.push_str("\n\n");
    }
    out.push_str(": ping\n\n");
    out
}

/// A policy as a `HystrixCommand` event.
pub(super) fn command(
    policy: &Policy,
    stats: &PolicyStats,
    settings: &PolicySettings,
    now_ms: u64,
) -> Value {
    let c = &stats.calls;
    let made = c.made();
    let percentiles = |made: u64| {
        let q = |q: f64| Latency::quantile(&stats.buckets, made, q).round() as u64;
        json!({
            "0": q(0.0), "25": q(0.25), "50": q(0.5), "75": q(0.75), "90": q(0.9),
            "95": q(0.95), "99": q(0.99), "99.5": q(0.995), "100": q(1.0),
        })
    };
    let b = &settings.breaker;
    let open = !matches!(
        stats.breaker,
        BreakerState::Closed | BreakerState::ForcedClosed
    );
    let fallback_failed =
        stats.fallback.static_.failed + stats.fallback.cache.failed + stats.fallback.service.failed;
    let mut m = serde_json::Map::new();
    let mut put = |key: &str, value: Value| {
        m.insert(key.to_owned(), value);
    };
    put("type", json!("HystrixCommand"));
    put("name", json!(policy.name()));
    put("group", json!("substation"));
    put("currentTime", json!(now_ms));
    put("isCircuitBreakerOpen", json!(open));
    put("errorPercentage", json!(c.error_percent().round() as u64));
    put("errorCount", json!(c.failure + c.timeout));
    put("requestCount", json!(c.all()));
    put("rollingCountBadRequests", json!(0));
    put("rollingCountCollapsedRequests", json!(0));
    put("rollingCountEmit", json!(0));
    put("rollingCountExceptionsThrown", json!(0));
    put("rollingCountFailure", json!(c.failure));
    put("rollingCountFallbackEmit", json!(0));
    put("rollingCountFallbackFailure", json!(fallback_failed));
    put("rollingCountFallbackMissing", json!(0));
    put("rollingCountFallbackRejection", json!(0));
    put(
        "rollingCountFallbackSuccess",
        json!(stats.fallback.served()),
    );
    put(
        "rollingCountResponsesFromCache",
        json!(stats.fallback.cache.served),
    );
    put("rollingCountSemaphoreRejected", json!(c.bulkhead_full));
    put("rollingCountShortCircuited", json!(c.rejected + c.killed));
    put("rollingCountSuccess", json!(c.success));
    put("rollingCountThreadPoolRejected", json!(0));
    put("rollingCountTimeout", json!(c.timeout));
    put("currentConcurrentExecutionCount", json!(stats.in_flight));
    put("rollingMaxConcurrentExecutionCount", json!(stats.in_flight));
    put(
        "latencyExecute_mean",
        json!(stats.latency.mean.round() as u64),
    );
    put("latencyExecute", json!(percentiles(made)));
    put(
        "latencyTotal_mean",
        json!(stats.latency.mean.round() as u64),
    );
    put("latencyTotal", json!(percentiles(made)));
    put(
        "propertyValue_circuitBreakerRequestVolumeThreshold",
        json!(b.min_calls),
    );
    put(
        "propertyValue_circuitBreakerSleepWindowInMilliseconds",
        json!(b.open_ms),
    );
    put(
        "propertyValue_circuitBreakerErrorThresholdPercentage",
        json!(b.error_rate.round() as u64),
    );
    put(
        "propertyValue_circuitBreakerForceOpen",
        json!(b.mode == BreakerMode::ForceOpen),
    );
    put(
        "propertyValue_circuitBreakerForceClosed",
        json!(b.mode == BreakerMode::ForceClosed),
    );
    put(
        "propertyValue_circuitBreakerEnabled",
        json!(b.mode != BreakerMode::MetricsOnly),
    );
    put(
        "propertyValue_executionIsolationStrategy",
        json!("SEMAPHORE"),
    );
    put(
        "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
        json!(settings.timeout.ms.unwrap_or(0)),
    );
    put(
        "propertyValue_executionTimeoutInMilliseconds",
        json!(settings.timeout.ms.unwrap_or(0)),
    );
    put(
        "propertyValue_executionIsolationThreadInterruptOnTimeout",
        json!(true),
    );
    put(
        "propertyValue_executionIsolationThreadPoolKeyOverride",
        json!(null),
    );
    put(
        "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
        json!(settings.bulkhead.max_concurrent.unwrap_or(0)),
    );
    put(
        "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
        json!(settings.fallback.max_concurrent),
    );
    put(
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
        json!(crate::stats::ROLLING_MS),
    );
    put("propertyValue_requestCacheEnabled", json!(false));
    put("propertyValue_requestLogEnabled", json!(false));
    put("reportingHosts", json!(1));
    put(
        "substation",
        json!({
            "breaker": stats.breaker,
            "breaker_since_ms": stats.breaker_since_ms,
            "killed": c.killed,
            "rejected": c.rejected,
            "bulkhead_full": c.bulkhead_full,
            "fallback": stats.fallback,
            "latency_ms": stats.latency,
            "window_ms": stats.window_ms,
            "kill": settings.kill,
        }),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a `HystrixCommand` event as the Hystrix dashboard and Turbine read
    /// it (hystrix-metrics-event-stream's documented format, Hystrix 1.5): every field,
    /// with its JSON type.
    const HYSTRIX_COMMAND: &[(&str, &str)] = &[
        ("type", "string"),
        ("name", "string"),
        ("group", "string"),
        ("currentTime", "number"),
        ("isCircuitBreakerOpen", "bool"),
        ("errorPercentage", "number"),
        ("errorCount", "number"),
        ("requestCount", "number"),
        ("rollingCountBadRequests", "number"),
        ("rollingCountCollapsedRequests", "number"),
        ("rollingCountEmit", "number"),
        ("rollingCountExceptionsThrown", "number"),
        ("rollingCountFailure", "number"),
        ("rollingCountFallbackEmit", "number"),
        ("rollingCountFallbackFailure", "number"),
        ("rollingCountFallbackMissing", "number"),
        ("rollingCountFallbackRejection", "number"),
        ("rollingCountFallbackSuccess", "number"),
        ("rollingCountResponsesFromCache", "number"),
        ("rollingCountSemaphoreRejected", "number"),
        ("rollingCountShortCircuited", "number"),
        ("rollingCountSuccess", "number"),
        ("rollingCountThreadPoolRejected", "number"),
        ("rollingCountTimeout", "number"),
        ("currentConcurrentExecutionCount", "number"),
        ("rollingMaxConcurrentExecutionCount", "number"),
        ("latencyExecute_mean", "number"),
        ("latencyExecute", "percentiles"),
        ("latencyTotal_mean", "number"),
        ("latencyTotal", "percentiles"),
        (
            "propertyValue_circuitBreakerRequestVolumeThreshold",
            "number",
        ),
        (
            "propertyValue_circuitBreakerSleepWindowInMilliseconds",
            "number",
        ),
        (
            "propertyValue_circuitBreakerErrorThresholdPercentage",
            "number",
        ),
        ("propertyValue_circuitBreakerForceOpen", "bool"),
        ("propertyValue_circuitBreakerForceClosed", "bool"),
        ("propertyValue_circuitBreakerEnabled", "bool"),
        ("propertyValue_executionIsolationStrategy", "string"),
        (
            "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
            "number",
        ),
        ("propertyValue_executionTimeoutInMilliseconds", "number"),
        (
            "propertyValue_executionIsolationThreadInterruptOnTimeout",
            "bool",
        ),
        (
            "propertyValue_executionIsolationThreadPoolKeyOverride",
            "null",
        ),
        (
            "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
            "number",
        ),
        (
            "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
            "number",
        ),
        (
            "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
            "number",
        ),
        ("propertyValue_requestCacheEnabled", "bool"),
        ("propertyValue_requestLogEnabled", "bool"),
        ("reportingHosts", "number"),
    ];

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_u64() || n.is_i64() => "number",
            Value::Number(_) => "float",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(o)
                if ["0", "25", "50", "75", "90", "95", "99", "99.5", "100"]
                    .iter()
                    .all(|k| o.get(*k).is_some_and(Value::is_u64)) =>
            {
                "percentiles"
            }
            Value::Object(_) => "object",
        }
    }

    #[test]
    fn an_event_has_every_field_the_hystrix_dashboard_reads_with_its_type() {
        let policy = Policy::new("hystrix-shape", PolicySettings::default()).unwrap();
        let event = command(
            &policy,
            &policy.stats(),
            &policy.settings(),
            1_700_000_000_000,
        );
        let object = event.as_object().unwrap();
        for (field, want) in HYSTRIX_COMMAND {
            let got = object.get(*field).map_or("missing", kind);
            assert_eq!(got, *want, "{field}");
        }
        assert_eq!(object["type"], "HystrixCommand");
        assert_eq!(object["name"], "hystrix-shape");
        // Integers, as Hystrix sends them: its dashboard adds them up across hosts.
        for (field, value) in object {
            if let Value::Number(n) = value {
                assert!(n.is_u64(), "{field}: {n}");
            }
        }
    }
}
