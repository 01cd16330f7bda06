//! The OpenFeature provider through the `open-feature` client: every value type, the
//! targeting key as the bucketing key, reasons and variants.

use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason, OpenFeature};
use substation::Substation;
use substation::live::InMemorySource;
use substation::switch::openfeature::SubstationProvider;
use substation::switch::{SwitchSettings, VariantSettings};

/// A client of its own (a named provider), so that tests running at once do not meet.
async fn client(name: &str, substation: &Substation) -> open_feature::Client {
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(name, SubstationProvider::new(substation))
        .await;
    api.create_named_client(name)
}

fn user(key: &str) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(key)
}

#[tokio::test]
async fn booleans_follow_the_switch_with_reasons() {
    let source = InMemorySource::new();
    let substation = Substation::builder()
        .switch("of-bool", SwitchSettings::percent(50.0))
        .source(source.clone())
        .build()
        .unwrap();
    let client = client("of-bool", &substation).await;
    let switch = substation.switch("of-bool");
    for i in 0..200 {
        let key = format!("user-{i}");
        let d = client
            .get_bool_details("of-bool", Some(&user(&key)), None)
            .await
            .unwrap();
        assert_eq!(d.value, switch.is_on(&key), "{key}");
        assert_eq!(d.reason, Some(EvaluationReason::Split));
        assert_eq!(
            d.variant.as_deref(),
            Some(if d.value { "on" } else { "off" })
        );
    }
    // No targeting key on a split switch: the off variant, reason DEFAULT.
    let d = client
        .get_bool_details("of-bool", None, None)
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.reason),
        (false, Some(EvaluationReason::Default))
    );

    source
        .put("switches/of-bool", r#"{"percent": 100}"#)
        .unwrap();
    let d = client
        .get_bool_details("of-bool", Some(&user("u")), None)
        .await
        .unwrap();
    assert_eq!((d.value, d.reason), (true, Some(EvaluationReason::Static)));
    let d = client
        .get_bool_details("of-bool", None, None)
        .await
        .unwrap();
    assert_eq!((d.value, d.reason), (true, Some(EvaluationReason::Static)));

    source
        .put("switches/of-bool", r#"{"percent": 100, "on": false}"#)
        .unwrap();
    let d = client
        .get_bool_details("of-bool", Some(&user("u")), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.reason),
        (false, Some(EvaluationReason::Disabled))
    );
    assert_eq!(d.variant.as_deref(), Some("off"));
}

#[tokio::test]
async fn every_value_type() {
    let one = |name: &str, value: serde_json::Value| {
        SwitchSettings::variants([VariantSettings::new(name, 1).value(value)])
    };
    let substation = Substation::builder()
        .switch(
            "of-string",
            SwitchSettings::variants([VariantSettings::new("blue", 1)]),
        )
        .switch("of-int", one("ten", 10.into()))
        .switch("of-float", one("half", 0.5.into()))
        .switch(
            "of-struct",
            one(
                "template",
                serde_json::json!({"title": "hi", "perPage": 100, "images": true, "tags": ["a"]}),
            ),
        )
        .build()
        .unwrap();
    let client = client("of-types", &substation).await;
    let ctx = user("u");
    let d = client
        .get_string_details("of-string", Some(&ctx), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value.as_str(), d.variant.as_deref()),
        ("blue", Some("blue"))
    );
    assert_eq!(d.reason, Some(EvaluationReason::Static));
    assert_eq!(
        client
            .get_int_value("of-int", Some(&ctx), None)
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        client
            .get_float_value("of-float", Some(&ctx), None)
            .await
            .unwrap(),
        0.5
    );
    assert_eq!(
        client
            .get_float_value("of-int", Some(&ctx), None)
            .await
            .unwrap(),
        10.0
    );
    let d = client
        .get_struct_details::<open_feature::StructValue>("of-struct", Some(&ctx), None)
        .await
        .unwrap();
    let fields = &d.value.fields;
    assert_eq!(fields["title"], open_feature::Value::String("hi".into()));
    assert_eq!(fields["perPage"], open_feature::Value::Int(100));
    assert_eq!(fields["images"], open_feature::Value::Bool(true));
    assert_eq!(
        fields["tags"],
        open_feature::Value::Array(vec![open_feature::Value::String("a".into())])
    );

    // Errors: a value of another type, and a switch nobody configured.
    let e = client
        .get_int_details("of-string", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    let e = client
        .get_bool_details("nowhere", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    // The caller's default, reason ERROR, through the value API.
    assert!(
        client
            .get_bool_value("nowhere", Some(&ctx), None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn variants_are_split_by_targeting_key_like_flagd() {
    // flagd-testbed's `fractional-flag` vectors (see flagd.rs), through the SDK.
    let suits = ["clubs", "diamonds", "hearts", "spades"];
    let substation = Substation::builder()
        .switch(
            "fractional-flag",
            SwitchSettings::variants(suits.map(|s| VariantSettings::new(s, 25))),
        )
        .build()
        .unwrap();
    let client = client("of-flagd", &substation).await;
    for (key, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
    ] {
        let d = client
            .get_string_details("fractional-flag", Some(&user(key)), None)
            .await
            .unwrap();
        assert_eq!(
            (d.value.as_str(), d.reason.clone()),
            (want, Some(EvaluationReason::Split)),
            "{key}"
        );
    }
}
