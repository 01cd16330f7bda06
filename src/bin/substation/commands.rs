//! The commands that read, check and write one key.

use std::collections::BTreeMap;
use std::io::Read as _;

use serde_json::{Map, Value, json};
use substation::live::etcd::Presence;
use substation::live::{Key, Scope, check};

use crate::fleet::{self, Instances};
use crate::store::{Layers, Store};
use crate::{Exit, Failure, Global, NewOpts, Output, Report, SchemaKind, WriteOpts};

/// The largest value the tool writes (etcd's default request limit is 1.5 MiB).
pub(crate) const MAX_VALUE: usize = 1 << 20;

/// How many times `patch` reads and merges again after a conflict.
const PATCH_ATTEMPTS: usize = 5;

pub(crate) fn parse_key(raw: &str) -> Result<Key, Failure> {
    Key::parse(raw).map_err(|e| {
        Failure::new(
            Exit::Refused,
            format!("{e}; a key is `policies/<name>`, `switches/<name>`, `experiments/<name>`, `experiments/<name>/result` or `global`, relative to --prefix"),
        )
    })
}

/// A value argument: the JSON itself, or `-` for standard input; at most 1 MiB.
fn read_value(arg: &str) -> Result<Vec<u8>, Failure> {
    let bytes = if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_VALUE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Failure::new(Exit::Refused, format!("cannot read standard input: {e}")))?;
        buf
    } else {
        arg.as_bytes().to_vec()
    };
    check_size(&bytes)?;
    Ok(trim(bytes))
}

fn check_size(bytes: &[u8]) -> Result<(), Failure> {
    if bytes.len() > MAX_VALUE {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "the value is over 1 MiB ({} bytes or more); settings values are small JSON objects",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

fn trim(bytes: Vec<u8>) -> Vec<u8> {
    String::from_utf8(bytes)
        .map(|s| s.trim().as_bytes().to_vec())
        .unwrap_or_else(|e| e.into_bytes())
}

/// A stored value for display: compact JSON, or the raw text quoted and escaped.
pub(crate) fn show(bytes: &[u8]) -> String {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v.to_string(),
        Err(_) => format!("{:?} (not JSON)", String::from_utf8_lossy(bytes)),
    }
}

pub(crate) fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(bytes)))
}

/// A stored value as the registry would hold it (`None` if it would refuse it).
fn accepted(bytes: Option<&[u8]>) -> Option<Value> {
    check::parse(bytes?).ok().filter(Value::is_object)
}

pub(crate) fn stored_for(layers: &Layers, code_default: Option<Value>) -> check::Stored {
    check::Stored {
        code_default,
        shared: accepted(layers.shared.as_ref().map(|s| s.value.as_slice())),
        app: accepted(layers.app.as_ref().map(|s| s.value.as_slice())),
    }
}

/// The code defaults the instances announce for `key`: each distinct one with the ids
/// of the instances that have it (`None`: no code default).
fn code_defaults(
    key: &Key,
    instances: &BTreeMap<String, Presence>,
) -> Vec<(Option<Value>, Vec<String>)> {
    let mut out: Vec<(Option<Value>, Vec<String>)> = Vec::new();
    for (id, p) in instances {
        let known = match key {
            Key::Policy(name) => p.policies.get(name),
            Key::Switch(name) => p.switches.get(name),
            _ => None,
        };
        let default = known.and_then(|k| k.default.clone());
        match out.iter_mut().find(|(d, _)| *d == default) {
            Some((_, ids)) => ids.push(id.clone()),
            None => out.push((default, vec![id.clone()])),
        }
    }
    out
}

/// Refuses a name no announced instance knows, unless `--new`. An experiment's name is
/// new by nature (its `policy` is checked by [`value_warnings`]).
fn check_known(key: &Key, fleet: &Instances, new: bool) -> Result<(), Failure> {
    if new
        || matches!(
            key,
            Key::Global | Key::Experiment(_) | Key::ExperimentResult(_)
        )
    {
        return Ok(());
    }
    if fleet.all.is_empty() {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "no instance announces itself under {}, so nothing says `{}` is a name the code knows; \
                 pass --new to write it anyway (or start the processes with EtcdSource::announce)",
                fleet.prefix,
                key.name()
            ),
        ));
    }
    let knows = |p: &Presence| match key {
        Key::Policy(name) => p.policies.contains_key(name),
        Key::Switch(name) => p.switches.contains_key(name),
        _ => true,
    };
    if fleet.all.values().any(knows) {
        return Ok(());
    }
    let mut names: Vec<&str> = fleet
        .all
        .values()
        .flat_map(|p| match key {
            Key::Switch(_) => p.switches.keys().map(String::as_str).collect::<Vec<_>>(),
            _ => p.policies.keys().map(String::as_str).collect(),
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let near = names
        .iter()
        .map(|n| (distance(n, key.name()), *n))
        .filter(|(d, _)| *d <= 3)
        .min();
    let hint = match near {
        Some((_, n)) => format!(" — did you mean `{n}`?"),
        None => String::new(),
    };
    let kind = if matches!(key, Key::Switch(_)) {
        "switch"
    } else {
        "policy"
    };
    Err(Failure::new(
        Exit::Refused,
        format!(
            "no announced instance ({}) knows the {kind} `{}`{hint}; pass --new to write it anyway",
            fleet.all.len(),
            key.name()
        ),
    ))
}

/// Levenshtein distance (names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The policy names the announced instances know, sorted, and the closest to `name`
/// (within three edits).
fn closest_policy<'a>(fleet: &'a Instances, name: &str) -> Option<&'a str> {
    let mut names: Vec<&str> = fleet
        .all
        .values()
        .flat_map(|p| p.policies.keys().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .iter()
        .map(|n| (distance(n, name), *n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// `layers` with `value` stored in `layer` instead.
fn with_value(layers: &Layers, layer: Scope, value: &[u8]) -> Layers {
    let mut after = layers.clone();
    let slot = Some(crate::store::Stored {
        value: value.to_vec(),
        mod_revision: 0,
    });
    match layer {
        Scope::App => after.app = slot,
        _ => after.shared = slot,
    }
    after
}

/// What to tell the operator about a valid value before it is written: an experiment
/// whose `policy` no announced instance knows (it would fail nothing), a run's record
/// written by hand.
fn value_warnings(
    key: &Key,
    layer: Scope,
    value: &[u8],
    layers: &Layers,
    fleet: &Instances,
) -> Vec<String> {
    match key {
        Key::Experiment(_) => {
            let after = with_value(layers, layer, value);
            let Ok(effective) = check::effective_value(&key.to_string(), &stored_for(&after, None))
            else {
                return Vec::new();
            };
            let policy = effective["policy"].as_str().unwrap_or_default();
            if fleet.all.is_empty() {
                return vec![format!(
                    "no instance announces itself under {}, so nothing says the policy `{policy}` is one the code uses; \
                     the experiment fails nothing where no FaultLayer of that policy runs",
                    fleet.prefix
                )];
            }
            if fleet.all.values().any(|p| p.policies.contains_key(policy)) {
                return Vec::new();
            }
            let hint = closest_policy(fleet, policy)
                .map(|n| format!(" — did you mean `{n}`?"))
                .unwrap_or_default();
            vec![format!(
                "no announced instance ({}) knows the policy `{policy}`{hint}; the experiment fails nothing \
                 until a FaultLayer of that policy runs (its cohorts are still assigned and judged)",
                fleet.all.len()
            )]
        }
        Key::ExperimentResult(name) => vec![format!(
            "{key} is the processes' record of the run, written with compare-and-swap: a final state written \
             by hand stops the run everywhere; to run experiment `{name}` again, delete it instead (`del {key}`)"
        )],
        _ => Vec::new(),
    }
}

/// Adds `warnings` to the report's JSON (text output says them before the write).
fn attach_warnings(
    result: Result<Report, Failure>,
    warnings: &[String],
) -> Result<Report, Failure> {
    let mut report = result?;
    if !warnings.is_empty() {
        report.json["warnings"] = json!(warnings);
    }
    Ok(report)
}

fn say_warnings(output: Output, warnings: &[String]) {
    for w in warnings {
        crate::warn(output, w);
    }
}

/// What every write checks: the value as every registry would see it ([`check_all`]),
/// then the warnings it deserves. Refused values return the refusal.
fn vet(
    key: &Key,
    layer: Scope,
    value: &[u8],
    layers: &Layers,
    fleet: &Instances,
    skip_fleet: bool,
) -> Result<Vec<String>, Failure> {
    check_all(key, layer, value, layers, Some(fleet), skip_fleet)?;
    let mut warnings = value_warnings(key, layer, value, layers, fleet);
    warnings.extend(conflict_warnings(key, layer, value, layers, fleet));
    Ok(warnings)
}

/// A valid value can still make a value above it (the application's, over a shared
/// write) break a rule: the registries then leave that value out and list a conflict.
/// Said before the write, once per distinct message, with the instances whose code
/// default leads to it.
fn conflict_warnings(
    key: &Key,
    layer: Scope,
    value: &[u8],
    layers: &Layers,
    fleet: &Instances,
) -> Vec<String> {
    let after = with_value(layers, layer, value);
    let mut defaults = code_defaults(key, &fleet.all);
    if defaults.is_empty() {
        defaults.push((None, Vec::new())); // no instance announces: the library defaults
    }
    let mut said: Vec<String> = Vec::new();
    let raw = key.to_string();
    for (default, ids) in defaults {
        let Ok(found) = check::conflicts(&raw, &stored_for(&after, default.clone())) else {
            continue;
        };
        // Only what this write causes: a value already invalid over the layers below it
        // (in conflict, or waiting: the store holds it, the registries refuse it) is
        // not news.
        let before = check::conflicts(&raw, &stored_for(layers, default)).unwrap_or_default();
        for (above, error) in found {
            if before.iter().any(|(l, e)| *l == above && e == &error) {
                continue;
            }
            let who = if ids.is_empty() {
                String::new()
            } else {
                format!(" (with the code default of {})", ids.join(", "))
            };
            let text = format!(
                "after this write, the {} value of {key} conflicts: {error}{who}",
                match above {
                    Scope::App => "application's",
                    _ => "shared",
                }
            );
            if !said.contains(&text) {
                said.push(text);
            }
        }
    }
    said
}

/// Checks `value` as every registry would: with the library defaults, and with each
/// code default the fleet announces for the key (unless `skip_fleet`).
fn check_all(
    key: &Key,
    layer: Scope,
    value: &[u8],
    layers: &Layers,
    fleet: Option<&Instances>,
    skip_fleet: bool,
) -> Result<(), Failure> {
    let raw = key.to_string();
    let refused = |e: substation::settings::SettingsError, who: String| {
        Failure::new(
            Exit::Refused,
            format!("refused {raw}: {e}{who}; nothing was written"),
        )
    };
    check::check_value(layer, &raw, value, &stored_for(layers, None))
        .map_err(|e| refused(e, String::new()))?;
    if skip_fleet {
        return Ok(());
    }
    if let Some(fleet) = fleet {
        for (default, ids) in code_defaults(key, &fleet.all) {
            if default.is_none() {
                continue; // the library defaults: checked above
            }
            check::check_value(layer, &raw, value, &stored_for(layers, default)).map_err(|e| {
                refused(
                    e,
                    format!(
                        " (with the code default of {}; --skip-fleet-check writes it anyway, and they keep their last good value)",
                        ids.join(", ")
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// The effective value(s) of `key`: one per distinct code default in the fleet.
fn effective(
    key: &Key,
    layers: &Layers,
    fleet: &Instances,
) -> Vec<(Vec<String>, Result<Value, String>)> {
    let mut defaults = code_defaults(key, &fleet.all);
    if defaults.is_empty() {
        defaults.push((None, Vec::new()));
    }
    defaults
        .into_iter()
        .map(|(default, ids)| {
            let v = check::effective_value(&key.to_string(), &stored_for(layers, default))
                .map_err(|e| e.to_string());
            (ids, v)
        })
        .collect()
}

pub(crate) async fn get(g: &Global, key: Option<String>, all: bool) -> Result<Report, Failure> {
    let store = Store::connect(g).await?;
    if all || key.is_none() {
        return get_all(&store).await;
    }
    let key = parse_key(key.as_deref().unwrap_or_default())?;
    let layers = store.layers(&key).await?;
    let fleet = fleet::instances(&store).await?;
    let mut text = format!("{key}  (etcd revision {})\n", layers.revision);
    let mut j = json!({"key": key.to_string(), "revision": layers.revision});
    for (name, layer) in [("app", Scope::App), ("shared", Scope::Shared)] {
        if layer == Scope::Shared && store.shared_prefix.is_none() {
            continue;
        }
        let full = store.full_key(layer, &key)?;
        match layers.of(layer) {
            Some(s) => {
                text += &format!(
                    "  {name:<7} {}  (mod revision {}, {full})\n",
                    show(&s.value),
                    s.mod_revision
                );
                j[name] = json!({"key": full, "value": as_json(&s.value), "mod_revision": s.mod_revision});
            }
            None => {
                text += &format!("  {name:<7} —  ({full})\n");
                j[name] = Value::Null;
            }
        }
    }
    let mut eff = Vec::new();
    let nothing = layers.app.is_none() && layers.shared.is_none();
    if nothing && matches!(key, Key::Experiment(_) | Key::ExperimentResult(_)) {
        text += match key {
            Key::Experiment(_) => "  effective: none — no experiment is stored under this name\n",
            _ => "  effective: none — no process has recorded a run of this experiment\n",
        };
        j["effective"] = json!(eff);
        return Ok(Report {
            exit: Exit::Ok,
            text,
            json: j,
        });
    }
    for (ids, v) in effective(&key, &layers, &fleet) {
        let who = if ids.is_empty() {
            "library defaults".to_owned()
        } else {
            format!("instances {}", ids.join(", "))
        };
        match &v {
            Ok(v) => text += &format!("  effective ({who}): {v}\n"),
            Err(e) => {
                text += &format!(
                    "  effective ({who}): invalid — {e} (the processes keep their last good value)\n"
                )
            }
        }
        eff.push(json!({"instances": ids, "value": v.as_ref().ok(), "error": v.as_ref().err()}));
    }
    j["effective"] = json!(eff);
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: j,
    })
}

async fn get_all(store: &Store) -> Result<Report, Failure> {
    let (revision, app) = store.list(&store.prefix).await?;
    let shared = match &store.shared_prefix {
        Some(p) => store.list(p).await?.1,
        None => Vec::new(),
    };
    let fleet = fleet::instances(store).await?;
    let mut rows: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for (k, s) in &app {
        rows.entry(k.clone()).or_default().0 = Some(show(&s.value));
    }
    for (k, s) in &shared {
        rows.entry(k.clone()).or_default().1 = Some(show(&s.value));
    }
    for p in fleet.all.values() {
        for n in p.policies.keys() {
            rows.entry(format!("policies/{n}")).or_default();
        }
        for n in p.switches.keys() {
            rows.entry(format!("switches/{n}")).or_default();
        }
    }
    let mut text = format!(
        "etcd revision {revision}; {} instance(s) announced\n",
        fleet.all.len()
    );
    let mut list = Vec::new();
    for (k, (a, s)) in &rows {
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
        text += &format!("  {k:<40} app {}", shown(a));
        if store.shared_prefix.is_some() {
            text += &format!("  shared {}", shown(s));
        }
        text.push('\n');
        list.push(json!({"key": k, "app": a.as_ref().map(|v| as_json(v.as_bytes())), "shared": s.as_ref().map(|v| as_json(v.as_bytes()))}));
    }
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: json!({"revision": revision, "keys": list, "instances": fleet.all.len()}),
    })
}

/// Validates and writes `value` (`None`: delete) with compare-and-swap on
/// `expected`, then waits for the fleet if asked.
#[allow(clippy::too_many_arguments)]
async fn write(
    store: &Store,
    key: &Key,
    layer: Scope,
    expected: i64,
    value: Option<&[u8]>,
    wopts: &WriteOpts,
    verb: &str,
    extra: Value,
) -> Result<Report, Failure> {
    let full = store.full_key(layer, key)?;
    match store.cas(&full, expected, value).await? {
        Err(now) => {
            let theirs = now
                .as_ref()
                .map_or("(deleted)".to_owned(), |s| show(&s.value));
            let yours = value.map_or("(delete)".to_owned(), show);
            let at = now.as_ref().map_or(0, |s| s.mod_revision);
            Err(Failure::new(
                Exit::Conflict,
                format!(
                    "conflict: {key} changed since it was read (expected mod revision {expected}, now {at}); \
                     stored now: {theirs}; yours: {yours}; nothing was written — read it again (get) and retry"
                ),
            )
            .with_json(json!({"key": key.to_string(), "expected_mod_revision": expected, "mod_revision": at,
                "stored": now.as_ref().map(|s| as_json(&s.value)), "yours": value.map(as_json)})))
        }
        Ok(revision) => {
            let mut text = format!("{verb} {full} at revision {revision}\n");
            let mut j = json!({"key": key.to_string(), "etcd_key": full, "revision": revision, "action": verb});
            if let Value::Object(m) = extra {
                for (k, v) in m {
                    j[k] = v;
                }
            }
            let mut exit = Exit::Ok;
            if wopts.waits() {
                let report = fleet::wait(store, key, layer, revision, wopts.timeout).await?;
                text += &report.text;
                j["fleet"] = report.json;
                exit = report.exit;
            }
            Ok(Report {
                exit,
                text,
                json: j,
            })
        }
    }
}

pub(crate) async fn set(
    g: &Global,
    raw: &str,
    value: &str,
    if_mod_revision: Option<i64>,
    new: &NewOpts,
    wopts: &WriteOpts,
) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let value = read_value(value)?;
    let store = Store::connect(g).await?;
    let layer = wopts.layer();
    store.prefix_of(layer)?;
    let fleet = fleet::instances(&store).await?;
    check_known(&key, &fleet, new.new)?;
    let layers = store.layers(&key).await?;
    let warnings = vet(&key, layer, &value, &layers, &fleet, new.skip_fleet_check)?;
    say_warnings(g.output, &warnings);
    let current = layers.of(layer).map_or(0, |s| s.mod_revision);
    let expected = if_mod_revision.unwrap_or(current);
    let written = write(
        &store,
        &key,
        layer,
        expected,
        Some(&value),
        wopts,
        "set",
        json!({}),
    )
    .await;
    attach_warnings(written, &warnings)
}

/// Sets `path` (dotted) to `value` in `target`, making objects on the way.
fn assign(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{path}` is not a field path (e.g. breaker.mode)"));
    }
    let mut cur = target;
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().ok_or("not an object")?;
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return Ok(());
        }
        cur = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

fn parse_assignment(a: &str) -> Result<(String, Value), Failure> {
    let (path, raw) = a.split_once('=').ok_or_else(|| {
        Failure::new(
            Exit::Refused,
            format!(
                "`{}` is not an assignment: write field.path=value (e.g. breaker.mode=force_open)",
                a.escape_debug()
            ),
        )
    })?;
    if path.chars().any(char::is_control) {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "`{}`: control characters in a field path",
                path.escape_debug()
            ),
        ));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    Ok((path.to_owned(), value))
}

pub(crate) async fn patch(
    g: &Global,
    raw: &str,
    assignments: &[String],
    new: &NewOpts,
    wopts: &WriteOpts,
) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let parsed: Vec<(String, Value)> = assignments
        .iter()
        .map(|a| parse_assignment(a))
        .collect::<Result<_, _>>()?;
    let store = Store::connect(g).await?;
    let layer = wopts.layer();
    store.prefix_of(layer)?;
    let fleet = fleet::instances(&store).await?;
    check_known(&key, &fleet, new.new)?;
    patch_with(
        &store,
        g.output,
        &key,
        layer,
        &fleet,
        new,
        wopts,
        &|value| {
            for (path, v) in &parsed {
                assign(value, path, v.clone()).map_err(|e| Failure::new(Exit::Refused, e))?;
            }
            Ok(())
        },
    )
    .await
}

/// Reads `key`'s value in `layer` (`{}` if none), changes it with `edit`, checks it and
/// writes it with compare-and-swap; after a conflict, reads and changes it again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn patch_with(
    store: &Store,
    output: Output,
    key: &Key,
    layer: Scope,
    fleet: &Instances,
    new: &NewOpts,
    wopts: &WriteOpts,
    edit: &(dyn Fn(&mut Value) -> Result<(), Failure> + Sync),
) -> Result<Report, Failure> {
    for attempt in 1..=PATCH_ATTEMPTS {
        let layers = store.layers(key).await?;
        let current = layers.of(layer);
        let mut value = match current {
            Some(s) => check::parse(&s.value).map_err(|e| {
                Failure::new(
                    Exit::Refused,
                    format!("the stored value of {key} is not valid JSON ({e}); replace it whole with `set`"),
                )
            })?,
            None => Value::Object(Map::new()),
        };
        edit(&mut value)?;
        let bytes =
            serde_json::to_vec(&value).map_err(|e| Failure::new(Exit::Refused, e.to_string()))?;
        check_size(&bytes)?;
        let warnings = vet(key, layer, &bytes, &layers, fleet, new.skip_fleet_check)?;
        let expected = current.map_or(0, |s| s.mod_revision);
        let written = write(
            store,
            key,
            layer,
            expected,
            Some(&bytes),
            wopts,
            "patched",
            json!({"value": value}),
        )
        .await;
        match written {
            Err(f) if f.exit == Exit::Conflict && attempt < PATCH_ATTEMPTS => continue,
            Ok(mut r) => {
                say_warnings(output, &warnings);
                r.text = format!("{key} is now {value}\n{}", r.text);
                return attach_warnings(Ok(r), &warnings);
            }
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

pub(crate) async fn del(
    g: &Global,
    raw: &str,
    if_mod_revision: Option<i64>,
    wopts: &WriteOpts,
) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let store = Store::connect(g).await?;
    let layer = wopts.layer();
    store.prefix_of(layer)?;
    let layers = store.layers(&key).await?;
    let Some(current) = layers.of(layer) else {
        return Ok(Report {
            exit: Exit::Ok,
            text: format!(
                "nothing stored at {}; nothing deleted\n",
                store.full_key(layer, &key)?
            ),
            json: json!({"key": key.to_string(), "deleted": false}),
        });
    };
    let expected = if_mod_revision.unwrap_or(current.mod_revision);
    write(
        &store,
        &key,
        layer,
        expected,
        None,
        wopts,
        "deleted",
        json!({"deleted": true}),
    )
    .await
}

/// Leaves of a JSON value by dotted path.
fn leaves(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, p, out);
            }
        }
        other => {
            out.insert(path, other.clone());
        }
    }
}

fn field_diff(before: &Value, after: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves(before, String::new(), &mut a);
    leaves(after, String::new(), &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned()))
        .collect()
}

pub(crate) async fn diff(
    g: &Global,
    raw: &str,
    value: &str,
    shared: bool,
) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let value = read_value(value)?;
    let layer = if shared { Scope::Shared } else { Scope::App };
    let store = Store::connect(g).await?;
    store.prefix_of(layer)?;
    let layers = store.layers(&key).await?;
    let fleet = fleet::instances(&store).await?;
    check_all(&key, layer, &value, &layers, Some(&fleet), false)?;
    let after = with_value(&layers, layer, &value);
    let before_stored = layers.of(layer).map_or(Value::Null, |s| as_json(&s.value));
    let after_stored = as_json(&value);
    let mut text = format!(
        "{key} ({} layer)\n  stored:\n",
        if shared { "shared" } else { "app" }
    );
    let mut changes = Vec::new();
    for (p, a, b) in field_diff(&before_stored, &after_stored) {
        text += &fmt_change(&p, &a, &b);
        changes.push(json!({"field": p, "from": a, "to": b}));
    }
    text += "  effective:\n";
    let mut eff_changes = Vec::new();
    let (eb, ea) = (
        effective(&key, &layers, &fleet),
        effective(&key, &after, &fleet),
    );
    for ((ids, b), (_, a)) in eb.iter().zip(ea.iter()) {
        let (Ok(b), Ok(a)) = (b, a) else { continue };
        let d = field_diff(b, a);
        if !ids.is_empty() && eb.len() > 1 {
            text += &format!("   (instances {})\n", ids.join(", "));
        }
        if d.is_empty() {
            text += "    no change\n";
        }
        for (p, x, y) in d {
            text += &fmt_change(&p, &x, &y);
            eff_changes.push(json!({"instances": ids, "field": p, "from": x, "to": y}));
        }
    }
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: json!({"key": key.to_string(), "stored": changes, "effective": eff_changes}),
    })
}

fn fmt_change(path: &str, a: &Option<Value>, b: &Option<Value>) -> String {
    let show = |v: &Option<Value>| v.as_ref().map_or("(absent)".to_owned(), Value::to_string);
    let path = if path.is_empty() { "(value)" } else { path };
    format!("    {path}: {} → {}\n", show(a), show(b))
}

pub(crate) async fn validate(
    g: &Global,
    file: &str,
    key: Option<&str>,
    offline: bool,
) -> Result<Report, Failure> {
    let bytes = if file == "-" {
        read_value("-")?
    } else {
        let meta = std::fs::metadata(file)
            .map_err(|e| Failure::new(Exit::Refused, format!("cannot read {file}: {e}")))?;
        if meta.len() > (MAX_VALUE as u64) * 64 {
            return Err(Failure::new(
                Exit::Refused,
                format!("{file} is too large ({} bytes)", meta.len()),
            ));
        }
        std::fs::read(file)
            .map_err(|e| Failure::new(Exit::Refused, format!("cannot read {file}: {e}")))?
    };
    let values: Vec<(String, Vec<u8>)> = match key {
        Some(k) => {
            check_size(&bytes)?;
            vec![(k.to_owned(), bytes)]
        }
        None => {
            let doc: Value = check::parse(&bytes).map_err(|e| {
                Failure::new(
                    Exit::Refused,
                    format!("{file}: {e} (without --for, the file is an object of key → value)"),
                )
            })?;
            let Value::Object(m) = doc else {
                return Err(Failure::new(
                    Exit::Refused,
                    format!("{file}: expected an object of key → value (or give --for)"),
                ));
            };
            m.into_iter()
                .map(|(k, v)| (k, v.to_string().into_bytes()))
                .collect()
        }
    };
    let store = if offline {
        None
    } else {
        Some(Store::connect(g).await?)
    };
    let fleet = match &store {
        Some(s) => Some(fleet::instances(s).await?),
        None => None,
    };
    let mut text = String::new();
    let mut results = Vec::new();
    let mut bad = 0;
    for (k, v) in values {
        let outcome = async {
            let key = parse_key(&k)?;
            check_size(&v)?;
            let layers = match &store {
                Some(s) => s.layers(&key).await?,
                None => Layers::default(),
            };
            check_all(&key, Scope::App, &v, &layers, fleet.as_ref(), false)
        }
        .await;
        match outcome {
            Ok(()) => {
                text += &format!("ok       {}\n", k.escape_debug());
                results.push(json!({"key": k, "ok": true}));
            }
            Err(f) if f.exit == Exit::Refused => {
                bad += 1;
                text += &format!(
                    "invalid  {}\n",
                    f.message.replace("; nothing was written", "")
                );
                results.push(json!({"key": k, "ok": false, "error": f.message.replace("; nothing was written", "")}));
            }
            Err(f) => return Err(f),
        }
    }
    Ok(Report {
        exit: if bad == 0 { Exit::Ok } else { Exit::Refused },
        text,
        json: json!({"results": results, "invalid": bad}),
    })
}

pub(crate) fn schema(kind: SchemaKind) -> Result<Report, Failure> {
    let schema = match kind {
        SchemaKind::Policy => schemars::schema_for!(substation::settings::PolicySettings),
        SchemaKind::Switch => schemars::schema_for!(substation::switch::SwitchSettings),
        SchemaKind::Global => schemars::schema_for!(substation::settings::GlobalSettings),
        SchemaKind::Experiment => schemars::schema_for!(substation::settings::ExperimentSettings),
        SchemaKind::ExperimentResult => {
            schemars::schema_for!(substation::settings::ExperimentResult)
        }
    };
    let json =
        serde_json::to_value(&schema).map_err(|e| Failure::new(Exit::Refused, e.to_string()))?;
    Ok(Report {
        exit: Exit::Ok,
        text: serde_json::to_string_pretty(&json).unwrap_or_default(),
        json,
    })
}

pub(crate) async fn history(g: &Global, raw: &str, shared: bool) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let store = Store::connect(g).await?;
    let layer = if shared { Scope::Shared } else { Scope::App };
    let full = store.full_key(layer, &key)?;
    let h = fleet::history(&store, &full).await?;
    let mut text = format!("{full}\n");
    text += &match h.compacted {
        Some(c) => format!("  history starts at revision {c}: etcd compacted everything older\n"),
        None => "  complete history (nothing compacted)\n".to_owned(),
    };
    text += "  (etcd keeps no time per revision: revisions only)\n";
    let mut events = Vec::new();
    for e in &h.events {
        match &e.value {
            Some(v) => text += &format!("  rev {:<8} put  {}\n", e.revision, show(v)),
            None => text += &format!("  rev {:<8} del\n", e.revision),
        }
        events.push(json!({"revision": e.revision, "value": e.value.as_deref().map(as_json), "deleted": e.value.is_none()}));
    }
    if h.events.is_empty() {
        text += "  no change recorded\n";
    }
    Ok(Report {
        exit: Exit::Ok,
        text,
        json: json!({"key": key.to_string(), "etcd_key": full, "compacted": h.compacted, "revision": h.revision, "events": events}),
    })
}

pub(crate) async fn rollback(
    g: &Global,
    raw: &str,
    to: Option<i64>,
    new: &NewOpts,
    wopts: &WriteOpts,
) -> Result<Report, Failure> {
    let key = parse_key(raw)?;
    let store = Store::connect(g).await?;
    let layer = wopts.layer();
    let full = store.full_key(layer, &key)?;
    let h = fleet::history(&store, &full).await?;
    let layers = store.layers(&key).await?;
    let current = layers.of(layer).cloned();
    let target_rev = match to {
        Some(r) => r,
        None => match h.events.last() {
            Some(last) => last.revision - 1,
            None => {
                return Err(Failure::new(
                    Exit::Refused,
                    format!("{full} has no recorded change to roll back"),
                ));
            }
        },
    };
    if let Some(c) = h.compacted
        && target_rev < c
    {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "revision {target_rev} is compacted: {full}'s history starts at {c} (see `history`)"
            ),
        ));
    }
    if target_rev > h.revision || target_rev < 1 {
        return Err(Failure::new(
            Exit::Refused,
            format!("revision {target_rev} is not in 1..={}", h.revision),
        ));
    }
    // The value in force at the target revision: the last event at or before it.
    let past = h
        .events
        .iter()
        .rev()
        .find(|e| e.revision <= target_rev)
        .and_then(|e| e.value.clone());
    if past.is_none()
        && to.is_some()
        && h.compacted.is_some()
        && h.events.first().is_none_or(|e| e.revision > target_rev)
    {
        return Err(Failure::new(
            Exit::Refused,
            format!("what {full} held at revision {target_rev} is not known (compacted)"),
        ));
    }
    let expected = current.as_ref().map_or(0, |s| s.mod_revision);
    let extra = json!({"to_revision": target_rev});
    match past {
        Some(value) => {
            let fleet = fleet::instances(&store).await?;
            check_known(&key, &fleet, new.new)?;
            let warnings = vet(&key, layer, &value, &layers, &fleet, new.skip_fleet_check)?;
            if current.as_ref().is_some_and(|c| c.value == value) {
                return Ok(Report {
                    exit: Exit::Ok,
                    text: format!(
                        "{full} already holds the value of revision {target_rev}; nothing written\n"
                    ),
                    json: json!({"key": key.to_string(), "unchanged": true}),
                });
            }
            say_warnings(g.output, &warnings);
            let written = write(
                &store,
                &key,
                layer,
                expected,
                Some(&value),
                wopts,
                "rolled back",
                extra,
            )
            .await;
            attach_warnings(written, &warnings)
        }
        None if current.is_none() => Ok(Report {
            exit: Exit::Ok,
            text: format!(
                "{full} held nothing at revision {target_rev}, and holds nothing now; nothing written\n"
            ),
            json: json!({"key": key.to_string(), "unchanged": true}),
        }),
        None => {
            write(
                &store,
                &key,
                layer,
                expected,
                None,
                wopts,
                "rolled back (deleted)",
                extra,
            )
            .await
        }
    }
}
