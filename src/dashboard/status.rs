//! `…/status`: the whole registry as JSON.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Substation;

/// The registry: settings health and revision, rejected values, every policy in use
/// (settings and statistics), every switch in use (value, evaluations, changes), every
/// chaos experiment this process runs or ran (settings, its cohorts' counts here, state
/// and verdict: [`ExperimentStatus`](crate::experiment::ExperimentStatus)).
pub(super) fn status(substation: &Substation, interval: Duration) -> Value {
    let snapshot = substation.snapshot();
    let policies: Vec<Value> = substation
        .policies()
        .iter()
        .map(|p| {
            json!({
                "name": p.name(),
                "settings": *p.settings(),
                "stats": p.stats(),
            })
        })
        .collect();
    let switches: Vec<Value> = substation
        .switches()
        .iter()
        .map(|s| {
            let evaluations: serde_json::Map<String, Value> = s
                .evaluations()
                .into_iter()
                .map(|(k, n)| (k, json!(n)))
                .collect();
            json!({
                "name": s.name(),
                "settings": *s.settings(),
                "evaluations": evaluations,
                "changes": s.changes(),
            })
        })
        .collect();
    json!({
        "now_ms": crate::stats::unix_ms(),
        "interval_ms": interval.as_millis() as u64,
        "revision": snapshot.revision(),
        "health": snapshot.health(),
        "rejected": snapshot.rejected().collect::<Vec<_>>(),
        "policies": policies,
        "switches": switches,
        "experiments": substation.experiments(),
    })
}
