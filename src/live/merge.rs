//! Merging layers of JSON values field by field.

use serde_json::Value;

/// Overrides `base` with `over`, recursing into objects (a JSON merge patch, except
/// that `null` is a value, not a deletion: `"ms": null` turns a timeout off).
pub(super) fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_overrides_field_by_field() {
        let mut base = serde_json::json!({"timeout": {"ms": 1000}, "breaker": {"min_calls": 20, "error_rate": 50.0}});
        merge(
            &mut base,
            &serde_json::json!({"breaker": {"error_rate": 10}, "timeout": {"ms": null}}),
        );
        assert_eq!(
            base,
            serde_json::json!({"timeout": {"ms": null}, "breaker": {"min_calls": 20, "error_rate": 10}})
        );
    }
}
