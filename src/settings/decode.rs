//! Strict decoding, one mechanism for every settings type.
//!
//! serde's derive is lenient in ways an operator never means: a struct may be written as
//! an array (`{"timeout": [5]}`), a unit variant as a map (`{"mode": {"force_open":
//! null}}`), an `Option` skipped when `None` may be given as `null`, and a JSON object
//! may repeat a field (the last one wins, silently). So a value is decoded in three
//! steps:
//!
//! 1. [`parse`]: JSON bytes to a [`Value`], refusing any field given twice (named by its
//!    path: `breaker.error_rate: duplicate field`);
//! 2. [`decode`]: the value must be an object; serde decodes it (`deny_unknown_fields`,
//!    errors named by path through `serde_path_to_error`);
//! 3. the decoded value is serialized again — its canonical form — and the input must be
//!    a part of it: every field present there, with the same JSON kind at every path,
//!    equal scalars (numbers compared as numbers, so `5` for `5.0` is fine). Any other
//!    form serde accepted is refused, named by path (`timeout: expected an object,
//!    found an array`). The check serializes against the input without building the
//!    canonical form (`conform.rs`); only when it fails is the form built, to name the
//!    field.
//!
//! A type takes part by implementing [`Settings`] (its validation, `check`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess};
use serde::{Deserializer, Serialize};
use serde_json::Value;

use super::conform;
use super::error::SettingsError;

/// A settings type: decoded strictly, then validated.
pub(crate) trait Settings: Serialize + DeserializeOwned {
    /// Checks every field against its rule; the first broken rule is returned.
    fn check(&self) -> Result<(), SettingsError>;
}

/// Parses, decodes strictly and validates JSON bytes.
pub(crate) fn from_json<T: Settings>(json: &[u8]) -> Result<T, SettingsError> {
    from_value(&parse(json)?)
}

/// Decodes strictly and validates an already parsed value.
pub(crate) fn from_value<T: Settings>(value: &Value) -> Result<T, SettingsError> {
    let settings: T = decode(value)?;
    settings.check()?;
    Ok(settings)
}

/// Parses JSON bytes into a [`Value`]; a field given twice in one object is an error
/// that names it.
pub(crate) fn parse(json: &[u8]) -> Result<Value, SettingsError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| SettingsError::new("", format!("malformed JSON: {e}")))?;
    // Well-formed: a second pass only looks for repeated fields (it builds nothing).
    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let found = NoDuplicates {
        path: Path::Root,
        duplicate: &mut duplicate,
    }
    .deserialize(&mut de);
    match (found, duplicate) {
        (_, Some(error)) => Err(error),
        (Ok(()), None) => Ok(value),
        // Cannot happen: the first pass parsed the same bytes.
        (Err(e), None) => Err(SettingsError::new("", format!("malformed JSON: {e}"))),
    }
}

/// Decodes `value` as a `T` in exactly its documented form (see the module docs);
/// ranges are not checked.
pub(crate) fn decode<T: Serialize + DeserializeOwned>(value: &Value) -> Result<T, SettingsError> {
    if !value.is_object() {
        return Err(SettingsError::new(
            "",
            format!("expected an object, found {}", kind(value)),
        ));
    }
    let decoded = match T::deserialize(value) {
        Ok(decoded) => decoded,
        // Tracking the path costs several times the decoding: only a failure pays it.
        Err(_) => serde_path_to_error::deserialize(value).map_err(path_error)?,
    };
    if !conform::conforms(&decoded, value) {
        // Rare: build the canonical form to say where and why (this walk is the rule;
        // the fast one may only raise false alarms).
        let canonical = serde_json::to_value(&decoded)
            .map_err(|e| SettingsError::new("", format!("cannot be represented: {e}")))?;
        part_of(value, &canonical, Path::Root)?;
    }
    Ok(decoded)
}

/// A deserialization error, with the path of the field it happened at.
fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> SettingsError {
    let path = e.path().to_string();
    let field = if path == "." { String::new() } else { path };
    SettingsError::new(field, e.into_inner().to_string())
}

/// Whether `input` is a part of `canonical`: same kinds, equal scalars, no field that
/// the canonical form does not have; if not, where and why.
fn part_of(input: &Value, canonical: &Value, path: Path<'_>) -> Result<(), SettingsError> {
    let mismatch = |message: String| Err(SettingsError::new(path.to_string(), message));
    match (input, canonical) {
        (Value::Object(input), Value::Object(canonical)) => {
            for (k, v) in input {
                let path = Path::Key(&path, k);
                match canonical.get(k) {
                    Some(c) => part_of(v, c, path)?,
                    None if v.is_null() => {
                        return Err(SettingsError::new(path.to_string(), "must not be null"));
                    }
                    None => {
                        return Err(SettingsError::new(path.to_string(), "is not accepted here"));
                    }
                }
            }
            Ok(())
        }
        (Value::Array(input), Value::Array(canonical)) => {
            if input.len() != canonical.len() {
                return mismatch(format!(
                    "{} elements read as {}",
                    input.len(),
                    canonical.len()
                ));
            }
            for (i, (v, c)) in input.iter().zip(canonical).enumerate() {
                part_of(v, c, Path::Index(&path, i))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) => {
            if conform::same_number(a, b) {
                Ok(())
            } else {
                mismatch(format!("{a} reads as {b}"))
            }
        }
        (Value::String(a), Value::String(b)) if a != b => mismatch(format!("{a:?} reads as {b:?}")),
        (Value::Bool(a), Value::Bool(b)) if a != b => mismatch(format!("{a} reads as {b}")),
        (a, b) if kind(a) != kind(b) => {
            mismatch(format!("expected {}, found {}", kind(b), kind(a)))
        }
        _ => Ok(()),
    }
}

/// A JSON value's kind, with its article.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a value is, built on the stack while walking and formatted only for an error:
/// `breaker.error_rate`, `variants[1].name` (the form `serde_path_to_error` uses).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Walks a JSON document and fails at the first field given twice in one object,
/// recording its path in `duplicate`.
struct NoDuplicates<'a> {
    path: Path<'a>,
    duplicate: &'a mut Option<SettingsError>,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for NoDuplicates<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(NoDuplicates {
                path: Path::Index(&self.path, i),
                duplicate: &mut *self.duplicate,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                *self.duplicate = Some(SettingsError::new(
                    Path::Key(&self.path, &key).to_string(),
                    "duplicate field",
                ));
                return Err(de::Error::custom("duplicate field"));
            }
            map.next_value_seed(NoDuplicates {
                path: Path::Key(&self.path, &key),
                duplicate: &mut *self.duplicate,
            })?;
            seen.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::settings::{GlobalSettings, PolicySettings};
    use crate::switch::SwitchSettings;

    fn policy(json: &str) -> Result<PolicySettings, String> {
        PolicySettings::from_json(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn other_forms_serde_accepts_are_rejected_with_the_field_named() {
        for (json, want) in [
            (
                r#"{"breaker":["force_open"]}"#,
                "breaker: expected an object, found an array",
            ),
            (
                r#"{"timeout":[5]}"#,
                "timeout: expected an object, found an array",
            ),
            (
                r#"{"timeout":[]}"#,
                "timeout: expected an object, found an array",
            ),
            (
                r#"{"breaker":{"mode":{"force_open":null}}}"#,
                "breaker.mode: expected a string, found an object",
            ),
            (
                r#"{"fault":{"target":{"all":null}}}"#,
                "fault.target: expected a string, found an object",
            ),
            (
                r#"{"fallback":{"tiers":["cache",{"static":null}]}}"#,
                "fallback.tiers[1]: expected a string, found an object",
            ),
            (
                r#"{"fallback":{"on":[true]}}"#,
                "fallback.on: expected an object, found an array",
            ),
        ] {
            assert_eq!(policy(json).unwrap_err(), want, "{json}");
        }
    }

    #[test]
    fn a_field_given_twice_is_rejected_whatever_the_order() {
        for (json, want) in [
            (r#"{"kill":true,"kill":false}"#, "kill: duplicate field"),
            (r#"{"kill":true,"kill":true}"#, "kill: duplicate field"),
            (
                r#"{"breaker":{"error_rate":150,"error_rate":5}}"#,
                "breaker.error_rate: duplicate field",
            ),
            (
                r#"{"breaker":{"error_rate":5,"error_rate":150}}"#,
                "breaker.error_rate: duplicate field",
            ),
            (
                r#"{"breaker":{},"timeout":{},"breaker":{}}"#,
                "breaker: duplicate field",
            ),
        ] {
            assert_eq!(policy(json).unwrap_err(), want, "{json}");
        }
        let err = SwitchSettings::from_json(
            br#"{"variants":[{"name":"a","weight":1,"value":{"x":1,"x":2}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "variants[0].value.x: duplicate field");
        assert_eq!(err.field(), "variants[0].value.x");
    }

    #[test]
    fn a_null_variant_value_is_rejected() {
        let err =
            SwitchSettings::from_json(br#"{"variants":[{"name":"a","weight":1,"value":null}]}"#)
                .unwrap_err();
        assert_eq!(err.to_string(), "variants[0].value: must not be null");
    }

    #[test]
    fn the_public_decoders_take_objects_only() {
        for value in [
            json!(null),
            json!([]),
            json!([true]),
            json!(5),
            json!("x"),
            json!(true),
        ] {
            let kind = super::kind(&value);
            let want = format!("expected an object, found {kind}");
            assert_eq!(
                PolicySettings::from_value(value.clone())
                    .unwrap_err()
                    .to_string(),
                want
            );
            assert_eq!(
                GlobalSettings::from_value(value.clone())
                    .unwrap_err()
                    .to_string(),
                want
            );
            assert_eq!(
                SwitchSettings::from_value(value.clone())
                    .unwrap_err()
                    .to_string(),
                want
            );
            let json = value.to_string();
            assert_eq!(policy(&json).unwrap_err(), want);
            assert_eq!(
                SwitchSettings::from_json(json.as_bytes())
                    .unwrap_err()
                    .to_string(),
                want
            );
        }
        assert_eq!(
            GlobalSettings::from_value(json!({"shed_non_critical": [true]}))
                .unwrap_err()
                .to_string(),
            "shed_non_critical: invalid type: sequence, expected a boolean"
        );
    }

    #[test]
    fn the_documented_forms_are_accepted() {
        let s = policy(
            r#"{"kill":false,"timeout":{"ms":null},"breaker":{"mode":"metrics_only","error_rate":5,"slow_call_ms":300},
                "bulkhead":{"max_concurrent":null},"fallback":{"tiers":["cache","static"],"on":{"open":false}},
                "fault":{"target":{"keys":5},"abort_percent":1}}"#,
        )
        .unwrap();
        assert_eq!(s.breaker.error_rate, 5.0, "an integer for a float");
        assert_eq!(s.timeout.ms, None);
        assert_eq!(s.fault.target, crate::settings::FaultTarget::Keys(5.0));
        policy(r#"{"fault":{"target":"marked"}}"#).unwrap();
        policy(r#"{"fault":{"target":"all"}}"#).unwrap();
        let v = SwitchSettings::from_json(
            br#"{"on":null,"percent":5,"variants":[{"name":"a","weight":1,"value":{"deep":[1,{"x":null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(v.variants[0].value, Some(json!({"deep": [1, {"x": null}]})));
        // Every canonical form reads back as itself.
        let all = serde_json::to_value(PolicySettings::default()).unwrap();
        assert_eq!(
            PolicySettings::from_value(all).unwrap(),
            PolicySettings::default()
        );
    }

    /// The fast check (serializing against the input) and the slow one (building the
    /// canonical form) agree, over mutated shapes of valid values.
    #[test]
    fn the_fast_check_agrees_with_the_canonical_form() {
        fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        pointers(v, format!("{at}/{k}"), out);
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        pointers(v, format!("{at}/{i}"), out);
                    }
                }
                _ => {}
            }
            out.push(at);
        }
        /// Whether serde decodes `v`, and if so whether it is in the canonical form.
        fn agree<T: serde::Serialize + serde::de::DeserializeOwned>(
            v: &serde_json::Value,
        ) -> Option<bool> {
            let decoded = serde_json::from_value::<T>(v.clone()).ok()?;
            let canonical = serde_json::to_value(&decoded).unwrap();
            let slow = super::part_of(v, &canonical, super::Path::Root).is_ok();
            assert_eq!(super::conform::conforms(&decoded, v), slow, "{v}");
            Some(slow)
        }
        let replacements = [
            json!(null),
            json!([]),
            json!([1]),
            json!({}),
            json!("force_open"),
            json!({"force_open": null}),
            json!({"keys": 1}),
            json!({"x": 1, "y": [null]}),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(true),
        ];
        let policy = json!({"kill": true, "timeout": {"ms": 5}, "breaker": {"mode": "force_open",
            "slow_call_ms": 10, "error_rate": 5}, "fallback": {"tiers": ["static"], "on": {"open": true}},
            "fault": {"target": {"keys": 5}}, "bulkhead": {"max_concurrent": null}});
        let switch = json!({"on": true, "percent": 5, "variants": [{"name": "a", "weight": 1,
            "value": {"x": [1, {"y": null}], "z": "s"}}, {"name": "b", "weight": 2}]});
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut canonical, mut other) = (0, 0);
        for valid in [&policy, &switch] {
            let mut all = Vec::new();
            pointers(valid, String::new(), &mut all);
            for _ in 0..5_000 {
                let mut v = valid.clone();
                for _ in 0..rng.usize(1..3) {
                    if let Some(node) = v.pointer_mut(&all[rng.usize(..all.len())]) {
                        *node = replacements[rng.usize(..replacements.len())].clone();
                    }
                }
                let seen = if valid == &policy {
                    agree::<PolicySettings>(&v)
                } else {
                    agree::<SwitchSettings>(&v)
                };
                match seen {
                    Some(true) => canonical += 1,
                    Some(false) => other += 1,
                    None => {}
                }
            }
        }
        // Both answers are exercised.
        assert!(canonical > 500 && other > 100, "{canonical} / {other}");
    }
}
