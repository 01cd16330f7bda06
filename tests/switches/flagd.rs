//! flagd ≥ 0.15 "fractional v2" compatibility, against flagd-testbed's published
//! vectors: `evaluator/gherkin/fractional.feature` (examples tagged `@fractional-v2`) of
//! github.com/open-feature/flagd-testbed, with the flags it evaluates from
//! `evaluator/flags/testkit-flags.json`. A flag's bucketing value there is
//! `cat(<seed>, <key>)`, where the seed is the flag's key unless the flag names one; here
//! the seed is the switch's name.

use substation::switch::{Switch, SwitchSettings, VariantSettings, fractional_bucket};

fn suits(values: [&str; 4]) -> SwitchSettings {
    SwitchSettings::variants(
        ["clubs", "diamonds", "hearts", "spades"]
            .into_iter()
            .zip(values)
            .map(|(name, value)| VariantSettings::new(name, 25).value(value)),
    )
}

fn check(switch: &Switch, vectors: &[(&str, &str)]) {
    let mut variants = switch.variants();
    for (key, want) in vectors {
        let got = variants.pick(key).value().as_str().unwrap().to_owned();
        assert_eq!(got, *want, "switch `{}`, key `{key}`", switch.name());
    }
}

/// "Fractional operator": flag `fractional-flag`, bucketing value
/// `cat($flagd.flagKey, user.name)`, four suits at 25 each.
#[test]
fn fractional_flag() {
    let switch = Switch::detached(
        "fractional-flag",
        suits(["clubs", "diamonds", "hearts", "spades"]),
    )
    .unwrap();
    check(
        &switch,
        &[
            ("jack", "hearts"),
            ("queen", "spades"),
            ("ten", "clubs"),
            ("nine", "diamonds"),
            ("3", "clubs"),
        ],
    );
}

/// "Fractional operator shorthand": flag `fractional-flag-shorthand`, bucketing value
/// flag key + targeting key, `[["heads"], ["tails", 1]]` (a missing weight is 1).
#[test]
fn fractional_flag_shorthand() {
    let switch = Switch::detached(
        "fractional-flag-shorthand",
        SwitchSettings::variants([
            VariantSettings::new("heads", 1),
            VariantSettings::new("tails", 1),
        ]),
    )
    .unwrap();
    check(
        &switch,
        &[("jon@company.com", "heads"), ("jane@company.com", "tails")],
    );
}

/// "Fractional operator with shared seed" and "Second fractional operator with shared
/// seed": flags A and B bucket by `cat("shared-seed", user.name)`, so a switch named
/// `shared-seed` puts every key in the same suit as both.
#[test]
fn fractional_flags_with_shared_seed() {
    let a = Switch::detached(
        "shared-seed",
        suits(["clubs", "diamonds", "hearts", "spades"]),
    )
    .unwrap();
    check(
        &a,
        &[
            ("seven", "hearts"),
            ("eight", "diamonds"),
            ("nine", "clubs"),
            ("two", "spades"),
        ],
    );
    let b = Switch::detached(
        "shared-seed",
        suits([
            "ace-of-clubs",
            "ace-of-diamonds",
            "ace-of-hearts",
            "ace-of-spades",
        ]),
    )
    .unwrap();
    check(
        &b,
        &[
            ("seven", "ace-of-hearts"),
            ("eight", "ace-of-diamonds"),
            ("nine", "ace-of-clubs"),
            ("two", "ace-of-spades"),
        ],
    );
}

/// "Fractional operator hash edge cases": flag `fractional-hash-edge-flag` buckets by the
/// targeting key alone (no seed), `[["lower", 50], ["upper", 50]]`; the keys were chosen
/// so that their hashes fall on the critical boundary values.
#[test]
fn hash_edge_cases() {
    let vectors = [
        ("ejOoVL", "lower"),
        ("bY9fO-", "lower"),
        ("SI7p-", "lower"),
        ("6LvT0", "upper"),
        ("ceQdGm", "upper"),
    ];
    for (key, want) in vectors {
        let bucket = fractional_bucket(b"", key.as_bytes(), 100);
        let got = if bucket < 50 { "lower" } else { "upper" };
        assert_eq!(got, want, "key `{key}` (bucket {bucket})");
    }
}

/// A percentage switch is flagd's `[["on", p], ["off", 100 - p]]`: same cohort.
#[test]
fn a_percentage_is_a_two_variant_split() {
    let percent = Switch::detached("fractional-flag", SwitchSettings::percent(25.0)).unwrap();
    let split = Switch::detached(
        "fractional-flag",
        SwitchSettings::variants([
            VariantSettings::new("on", 25).value(true),
            VariantSettings::new("off", 75).value(false),
        ]),
    )
    .unwrap();
    let mut variants = split.variants();
    for i in 0..20_000 {
        let key = format!("user-{i}");
        let bucket = fractional_bucket(b"fractional-flag", key.as_bytes(), 100);
        assert_eq!(percent.is_on(&key), bucket < 25, "{key}");
        assert_eq!(variants.pick(&key).name() == "on", bucket < 25, "{key}");
    }
    // "jack" is in the third quarter (hearts above): on at 75 %, off at 50 %.
    percent.update(SwitchSettings::percent(75.0)).unwrap();
    assert!(percent.is_on("jack"));
    percent.update(SwitchSettings::percent(50.0)).unwrap();
    assert!(!percent.is_on("jack"));
}
