//! Live values through the registry and the in-memory source.

use substation::Substation;
use substation::live::InMemorySource;
use substation::switch::{Reason, SwitchSettings};

fn registry(default: SwitchSettings) -> (Substation, InMemorySource) {
    let source = InMemorySource::new();
    let substation = Substation::builder()
        .switch("new-search", default)
        .source(source.clone())
        .build()
        .unwrap();
    (substation, source)
}

#[test]
fn a_partial_value_merges_over_the_code_default() {
    let (substation, source) = registry(SwitchSettings::on());
    let switch = substation.switch("new-search");
    assert!(switch.is_on("u1"));
    source
        .put("switches/new-search", r#"{"percent": 20}"#)
        .unwrap();
    assert_eq!(*switch.settings(), SwitchSettings::percent(20.0));
    let on = (0..10_000)
        .filter(|i| switch.is_on(format!("u{i}")))
        .count();
    assert!((1_800..2_200).contains(&on), "{on}");
    // The kill: off for every key, the percentage kept underneath.
    source
        .put("switches/new-search", r#"{"percent": 20, "on": false}"#)
        .unwrap();
    assert!((0..10_000).all(|i| !switch.is_on(format!("u{i}"))));
    assert_eq!(switch.resolve(Some(b"u1")).reason, Reason::Disabled);
    // Deleted: back to the code default.
    source.delete("switches/new-search");
    assert_eq!(*switch.settings(), SwitchSettings::on());
    assert!(switch.is_on("u1"));
}

#[test]
fn a_rejected_value_keeps_the_last_good_one() {
    let (substation, source) = registry(SwitchSettings::off());
    let switch = substation.switch("new-search");
    source
        .put("switches/new-search", r#"{"percent": 100}"#)
        .unwrap();
    let err = source
        .put("switches/new-search", r#"{"percent": 150}"#)
        .unwrap_err();
    assert_eq!(err.to_string(), "percent: 150 is not in 0..=100");
    assert!(switch.is_on("u1"), "last good value kept");
    let err = source
        .put(
            "switches/new-search",
            r#"{"variants": [{"name": "a", "weight": 1}], "algorithm": "md5"}"#,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("algorithm: unknown variant `md5`"),
        "{err}"
    );
    assert_eq!(substation.snapshot().rejected().count(), 1);
    assert!(switch.is_on("u1"));
}

#[test]
fn an_unknown_switch_is_off_and_never_an_error() {
    let source = InMemorySource::new();
    let substation = Substation::builder()
        .source(source.clone())
        .build()
        .unwrap();
    let switch = substation.switch("not-configured");
    assert!(!switch.is_on("u1"));
    assert!(!switch.is_on_random());
    // Configured later: the handle obtained before sees it.
    source
        .put("switches/not-configured", r#"{"on": true}"#)
        .unwrap();
    assert!(switch.is_on("u1"));
}

#[test]
fn variants_change_live_and_arrays_replace_whole() {
    let (substation, source) = registry(SwitchSettings::off());
    let switch = substation.switch("new-search");
    let mut variants = switch.variants();
    assert_eq!(variants.pick("u1").name(), "off");
    source
        .put(
            "switches/new-search",
            r##"{"variants": [{"name": "blue", "weight": 1, "value": {"color": "#00f"}}, {"name": "red", "weight": 0}]}"##,
        )
        .unwrap();
    let v = variants.pick("u1");
    assert_eq!(
        (v.name(), v.value()["color"].as_str()),
        ("blue", Some("#00f"))
    );
    source
        .put(
            "switches/new-search",
            r#"{"variants": [{"name": "red", "weight": 1}]}"#,
        )
        .unwrap();
    assert_eq!(switch.settings().variants.len(), 1, "the list was replaced");
    assert_eq!(variants.pick("u1").value(), "red");
}

#[tokio::test]
async fn a_change_is_announced() {
    let (substation, source) = registry(SwitchSettings::off());
    let switch = substation.switch("new-search");
    let mut changes = switch.subscribe();
    let mut registry_changes = substation.subscribe();
    source
        .put("switches/new-search", r#"{"percent": 5}"#)
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changes.borrow_and_update().percent, 5.0);
    let notice = registry_changes.recv().await.unwrap();
    assert_eq!(&*notice.keys, ["switches/new-search".to_owned()]);
    // The same value again is no change.
    source
        .put("switches/new-search", r#"{"percent": 5}"#)
        .unwrap();
    assert!(!changes.has_changed().unwrap());
}
