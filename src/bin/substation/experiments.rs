//! Chaos experiments: `experiments` lists every experiment with its run's record;
//! `halt-experiments` stops (or resumes) them all with one write of `global`.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use substation::live::{Key, Scope, check};
use substation::settings::{CohortCounts, ExperimentResult, ExperimentSettings, RunState};

use crate::commands::{self, as_json, stored_for};
use crate::store::{Layers, Store, Stored};
use crate::{Exit, Failure, Global, NewOpts, Report, WriteOpts, fleet};

/// The run id the library gives experiment `name` with this effective value.
fn run_id(name: &str, settings: &ExperimentSettings) -> String {
    substation::experiment::run_id(name, settings)
}

/// A UTC date and time, `2026-12-04 17:30:21 UTC`, from ms since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60
    )
}

/// A duration for people: `850 ms`, `42.0 s`, `9 min 51 s`, `2 h 5 min`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 120 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 7200 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s / 60) % 60)
    }
}

/// Text from the store, shown on one line: control characters escaped.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One experiment's keys in both layers.
#[derive(Default)]
struct Keys {
    value: Layers,
    result: Layers,
}

fn layers_of(l: &Layers) -> Vec<&'static str> {
    let mut out = Vec::new();
    if l.app.is_some() {
        out.push("app");
    }
    if l.shared.is_some() {
        out.push("shared");
    }
    out
}

fn cohort_json(c: &CohortCounts) -> Value {
    json!({
        "requests": c.requests,
        "successes": c.successes,
        "success_percent": (c.requests > 0).then(|| c.success_percent()),
    })
}

fn cohort_text(c: &CohortCounts) -> String {
    if c.requests == 0 {
        "no request".to_owned()
    } else {
        format!("{} req, {:.1} % ok", c.requests, c.success_percent())
    }
}

/// `substation experiments`.
pub(crate) async fn list(g: &Global) -> Result<Report, Failure> {
    let store = Store::connect(g).await?;
    let under = |prefix: &str| format!("{prefix}experiments/");
    let (revision, app) = store.list_at(&under(&store.prefix), None).await?;
    let mut global = Layers {
        revision,
        app: store
            .get_at(&format!("{}global", store.prefix), revision)
            .await?,
        shared: None,
    };
    let shared = match &store.shared_prefix {
        Some(p) => {
            global.shared = store.get_at(&format!("{p}global"), revision).await?;
            store.list_at(&under(p), Some(revision)).await?.1
        }
        None => Vec::new(),
    };
    let halted = check::effective_value("global", &stored_for(&global, None))
        .ok()
        .and_then(|g| g["halt_experiments"].as_bool())
        .unwrap_or(false);

    // Every name with a value or a result in either layer; keys that are not an
    // experiment's (the registry refuses them) are listed apart.
    let mut names: BTreeMap<String, Keys> = BTreeMap::new();
    let mut strays = Vec::new();
    for (layer, kvs) in [(Scope::App, app), (Scope::Shared, shared)] {
        for (rel, stored) in kvs {
            let slot = |l: &mut Layers, s: Stored| match layer {
                Scope::App => l.app = Some(s),
                _ => l.shared = Some(s),
            };
            match Key::parse(&format!("experiments/{rel}")) {
                Ok(Key::Experiment(name)) => {
                    slot(&mut names.entry(name).or_default().value, stored)
                }
                Ok(Key::ExperimentResult(name)) => {
                    slot(&mut names.entry(name).or_default().result, stored)
                }
                _ => strays.push(format!("experiments/{rel}")),
            }
        }
    }

    let now = now_ms();
    let mut text = format!(
        "experiments under {} (etcd revision {revision}){}\n",
        under(&store.prefix),
        match &store.shared_prefix {
            Some(p) => format!(" and {}", under(p)),
            None => String::new(),
        }
    );
    if halted {
        text += "  global.halt_experiments: true — every experiment is halted (substation halt-experiments --resume lifts it)\n";
    }
    if names.is_empty() {
        text += "  no experiment\n";
    }
    let mut list = Vec::new();
    for (name, keys) in &names {
        let key = format!("experiments/{name}");
        let (settings, settings_error) = if keys.value.app.is_some() || keys.value.shared.is_some()
        {
            match check::effective_value(&key, &stored_for(&keys.value, None)) {
                Ok(v) => (serde_json::from_value::<ExperimentSettings>(v).ok(), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        let result_key = format!("{key}/result");
        let (result, result_error) = if keys.result.app.is_some() || keys.result.shared.is_some() {
            match check::effective_value(&result_key, &stored_for(&keys.result, None)) {
                Ok(v) => (serde_json::from_value::<ExperimentResult>(v).ok(), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        let run = settings.as_ref().map(|s| run_id(name, s));
        // The record is this run's (the value's): else it is of an earlier value.
        let current = result
            .as_ref()
            .is_some_and(|r| run.as_deref().is_none_or(|id| r.run == id));
        let state = match (&settings, &result) {
            (_, Some(r)) if current => r.state.as_str(),
            (Some(_), _) => "pending",
            (None, _) => "unknown",
        };
        let left = match (&settings, &result) {
            (Some(s), Some(r)) if current && r.state == RunState::Running => Some(
                s.max_duration_ms
                    .saturating_sub(now.saturating_sub(r.started_ms)),
            ),
            _ => None,
        };

        // Text.
        text += &format!("  {name}  {}", state.to_uppercase());
        match &settings {
            Some(s) => {
                text += &format!(
                    "  policy {}, {} % + {} % of keys, bound {} points, judged from {} requests a cohort",
                    s.policy,
                    s.control_percent,
                    s.experiment_percent,
                    s.max_drop_points,
                    s.min_requests
                );
                if halted && state == "running" {
                    text += " (halting)";
                }
                text.push('\n');
            }
            None => match &settings_error {
                Some(e) => {
                    text += &format!(
                        "\n    invalid value: {e} (the processes keep their last good value)\n"
                    )
                }
                None => text += "\n    no experiment value (deleted): the record of its last run\n",
            },
        }
        if let Some(e) = &result_error {
            text += &format!("    invalid record: {e}\n");
        }
        match &result {
            Some(r) if current => {
                let mut line = format!("    started {}", utc(r.started_ms));
                if let Some(stopped) = r.stopped_ms {
                    line += &format!(
                        ", stopped {} (after {})",
                        utc(stopped),
                        span(stopped.saturating_sub(r.started_ms))
                    );
                }
                if let Some(left) = left {
                    line += &format!(", {} left", span(left));
                }
                if let Some(by) = &r.by {
                    line += &format!(", by {}", clean(by));
                }
                text += &line;
                text.push('\n');
                if r.state.is_final() {
                    text += &format!(
                        "    control {}; experiment {}; deviation {}\n",
                        cohort_text(&r.control),
                        cohort_text(&r.experiment),
                        r.deviation_points
                            .map_or("–".to_owned(), |d| format!("{d:.1} points"))
                    );
                } else {
                    text += "    (live counts are each process's: its dashboard's /status)\n";
                }
                if let Some(reason) = &r.reason {
                    text += &format!("    reason: {}\n", clean(reason));
                }
            }
            Some(r) => {
                text += &format!(
                    "    no record of this run yet; the stored one ({}, run {}) is of an earlier value\n",
                    r.state.as_str(),
                    clean(&r.run)
                );
            }
            None if settings.is_some() => {
                text += "    no record yet: no process has started it\n";
            }
            None => {}
        }

        list.push(json!({
            "name": name,
            "key": key,
            "layers": layers_of(&keys.value),
            "settings": settings,
            "settings_error": settings_error,
            "run": run,
            "state": state,
            "current": current,
            "left_ms": left,
            "started_ms": result.as_ref().filter(|_| current).map(|r| r.started_ms),
            "stopped_ms": result.as_ref().filter(|_| current).and_then(|r| r.stopped_ms),
            "reason": result.as_ref().filter(|_| current).and_then(|r| r.reason.clone()),
            "by": result.as_ref().filter(|_| current).and_then(|r| r.by.clone()),
            "control": result.as_ref().filter(|_| current).map(|r| cohort_json(&r.control)),
            "experiment": result.as_ref().filter(|_| current).map(|r| cohort_json(&r.experiment)),
            "deviation_points": result.as_ref().filter(|_| current).and_then(|r| r.deviation_points),
            "result_layers": layers_of(&keys.result),
            "result": keys.result.app.as_ref().or(keys.result.shared.as_ref()).map(|s| as_json(&s.value)),
            "result_error": result_error,
        }));
    }
    if !strays.is_empty() {
        text += &format!(
            "  not experiment keys (refused by the processes): {}\n",
            strays
                .iter()
                .map(|k| clean(k))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: json!({
            "prefix": store.prefix,
            "shared_prefix": store.shared_prefix,
            "revision": revision,
            "halt_experiments": halted,
            "experiments": list,
            "strays": strays,
        }),
    })
}

/// `substation halt-experiments [--resume]`.
pub(crate) async fn halt(g: &Global, resume: bool, wopts: &WriteOpts) -> Result<Report, Failure> {
    let store = Store::connect(g).await?;
    let layer = wopts.layer();
    store.prefix_of(layer)?;
    let key = Key::Global;
    let fleet = fleet::instances(&store).await?;
    let layer_name = if layer == Scope::App { "app" } else { "shared" };
    let before = store.layers(&key).await?;
    let mut report = if resume && before.of(layer).is_none() {
        Report {
            exit: Exit::Ok,
            text: format!("nothing to resume: no `global` value in the {layer_name} layer\n"),
            json: json!({"key": "global", "written": false}),
        }
    } else {
        let new = NewOpts {
            new: false,
            skip_fleet_check: false,
        };
        let mut r = commands::patch_with(
            &store,
            g.output,
            &key,
            layer,
            &fleet,
            &new,
            wopts,
            &|value| {
                let Some(m) = value.as_object_mut() else {
                    return Err(Failure::new(
                        Exit::Refused,
                        "the stored `global` is not a JSON object; replace it whole with `set`",
                    ));
                };
                if resume {
                    m.remove("halt_experiments");
                } else {
                    m.insert("halt_experiments".into(), Value::Bool(true));
                }
                Ok(())
            },
        )
        .await?;
        r.json["written"] = json!(true);
        r
    };
    // Where things stand now, both layers merged.
    let after = store.layers(&key).await?;
    let halted = check::effective_value("global", &stored_for(&after, None))
        .ok()
        .and_then(|g| g["halt_experiments"].as_bool())
        .unwrap_or(false);
    report.json["halt_experiments"] = json!(halted);
    if resume {
        if halted {
            let other = if layer == Scope::App { "shared" } else { "app" };
            let warning = format!(
                "experiments are still halted: the {other} layer's `global` sets halt_experiments \
                 (resume there{})",
                if layer == Scope::App {
                    " with --shared"
                } else {
                    " without --shared"
                }
            );
            crate::warn(g.output, &warning);
            report.json["warnings"] = json!([warning]);
        } else {
            report.text += "experiments may run again; a halted run stays halted: delete its result \
                            (`substation del experiments/<name>/result`) to run it again\n";
        }
    } else {
        report.text += &format!(
            "every experiment is halted: each process stops injecting as it applies this write \
             (verdict `halted`); `substation halt-experiments --resume{}` lifts it\n",
            if layer == Scope::App { "" } else { " --shared" }
        );
    }
    Ok(report)
}
