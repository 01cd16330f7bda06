//! Distribution, monotonicity, stickiness and independence over 100,000 keys.

use substation::switch::{Switch, SwitchSettings, VariantSettings};

const KEYS: usize = 100_000;

/// Keys of about 16 bytes, like a user id.
fn key(i: usize) -> String {
    format!("user-{i:011}")
}

fn on_share(switch: &Switch) -> f64 {
    let on = (0..KEYS).filter(|&i| switch.is_on(key(i))).count();
    on as f64 * 100.0 / KEYS as f64
}

#[test]
fn distribution_is_within_one_percent() {
    let switch = Switch::detached("checkout-v2", SwitchSettings::off()).unwrap();
    for percent in [1.0, 10.0, 50.0, 99.99] {
        switch.update(SwitchSettings::percent(percent)).unwrap();
        let share = on_share(&switch);
        eprintln!("{percent} %: {share:.3} % of {KEYS} keys on");
        assert!(
            (share - percent).abs() <= 1.0,
            "{percent} %: {share} % of keys are on"
        );
        // Tighter, by the binomial's standard deviation: within 5 σ.
        let sigma = (percent * (100.0 - percent) / KEYS as f64).sqrt();
        assert!(
            (share - percent).abs() <= 5.0 * sigma,
            "{percent} %: {share} % is more than 5 σ ({sigma}) away"
        );
    }
    for (percent, want) in [(0.0, 0.0), (100.0, 100.0)] {
        switch.update(SwitchSettings::percent(percent)).unwrap();
        assert_eq!(on_share(&switch), want);
    }
}

#[test]
fn variants_split_by_weight() {
    let switch = Switch::detached(
        "layout",
        SwitchSettings::variants([
            VariantSettings::new("a", 10),
            VariantSettings::new("b", 20),
            VariantSettings::new("c", 30),
            VariantSettings::new("d", 40),
        ]),
    )
    .unwrap();
    let mut variants = switch.variants();
    let mut counts = [0usize; 4];
    for i in 0..KEYS {
        counts[variants.pick(key(i)).index()] += 1;
    }
    for (i, want) in [10.0, 20.0, 30.0, 40.0].into_iter().enumerate() {
        let share = counts[i] as f64 * 100.0 / KEYS as f64;
        assert!((share - want).abs() <= 1.0, "variant {i}: {share} %");
    }
    // The handle without a cache agrees.
    for i in 0..1000 {
        let name = switch.with_variant(key(i), |v| v.name().to_owned());
        assert_eq!(variants.pick(key(i)).name(), name);
    }
}

#[test]
fn random_draws_follow_the_percentage() {
    let switch = Switch::detached("sampled", SwitchSettings::percent(20.0)).unwrap();
    let on = (0..KEYS).filter(|_| switch.is_on_random()).count();
    let share = on as f64 * 100.0 / KEYS as f64;
    assert!((share - 20.0).abs() <= 1.0, "{share}");
    let off = Switch::detached("never", SwitchSettings::off()).unwrap();
    assert!((0..1000).all(|_| !off.is_on_random()));
}

#[test]
fn raising_only_adds_keys_and_lowering_only_removes() {
    let switch = Switch::detached("rollout", SwitchSettings::off()).unwrap();
    let steps = [0.01, 1.0, 5.0, 10.0, 33.3333, 50.0, 99.0, 99.99, 100.0];
    let mut previous = vec![false; KEYS];
    for percent in steps {
        switch.update(SwitchSettings::percent(percent)).unwrap();
        let now: Vec<bool> = (0..KEYS).map(|i| switch.is_on(key(i))).collect();
        for i in 0..KEYS {
            assert!(
                !previous[i] || now[i],
                "raising to {percent} % removed key {i}"
            );
        }
        previous = now;
    }
    for percent in steps.iter().rev() {
        switch.update(SwitchSettings::percent(*percent)).unwrap();
        let now: Vec<bool> = (0..KEYS).map(|i| switch.is_on(key(i))).collect();
        for i in 0..KEYS {
            assert!(
                previous[i] || !now[i],
                "lowering to {percent} % added key {i}"
            );
        }
        previous = now;
    }
}

#[test]
fn answers_are_sticky_across_handles_and_updates_to_other_fields() {
    let a = Switch::detached("sticky", SwitchSettings::percent(30.0)).unwrap();
    let b = Switch::detached("sticky", SwitchSettings::percent(30.0)).unwrap();
    let first: Vec<bool> = (0..10_000).map(|i| a.is_on(key(i))).collect();
    for (i, on) in first.iter().enumerate() {
        assert_eq!(a.is_on(key(i)), *on);
        assert_eq!(b.is_on(key(i)), *on, "same name, same answer");
    }
    // An override flips everything, and removing it restores the same cohort.
    let mut off = SwitchSettings::percent(30.0);
    off.on = Some(false);
    a.update(off).unwrap();
    assert!((0..10_000).all(|i| !a.is_on(key(i))));
    a.update(SwitchSettings::percent(30.0)).unwrap();
    assert!((0..10_000).all(|i| a.is_on(key(i)) == first[i]));
}

#[test]
fn switches_are_independent() {
    let a = Switch::detached("feature-a", SwitchSettings::percent(50.0)).unwrap();
    let b = Switch::detached("feature-b", SwitchSettings::percent(50.0)).unwrap();
    let both = (0..KEYS)
        .filter(|&i| a.is_on(key(i)) && b.is_on(key(i)))
        .count();
    let share = both as f64 * 100.0 / KEYS as f64;
    eprintln!("both on: {share:.3} % (independent: 25 %)");
    assert!((share - 25.0).abs() <= 1.0, "{share} % of keys are in both");
    // At 10 % each, the overlap is about 1 %, not 10 %.
    a.update(SwitchSettings::percent(10.0)).unwrap();
    b.update(SwitchSettings::percent(10.0)).unwrap();
    let both = (0..KEYS)
        .filter(|&i| a.is_on(key(i)) && b.is_on(key(i)))
        .count();
    let share = both as f64 * 100.0 / KEYS as f64;
    assert!((share - 1.0).abs() <= 0.5, "{share} % of keys are in both");
}
