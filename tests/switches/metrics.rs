//! Evaluation counts and change counts through the `metrics` facade.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use substation::switch::{Switch, SwitchSettings, VariantSettings};

fn counters(recorder: &DebuggingRecorder) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            seen.insert(format!("{}{{{}}}", key.name(), labels.join(",")), n);
        }
    }
    seen
}

#[test]
fn evaluations_are_counted_in_batches_and_exactly() {
    let recorder = DebuggingRecorder::new();
    let switch = metrics::with_local_recorder(&recorder, || {
        substation::metrics::describe();
        Switch::detached("counted", SwitchSettings::on()).unwrap()
    });
    // One thread: one stripe. 2,500 evaluations push two batches of 1024.
    for i in 0..2_500u32 {
        assert!(switch.is_on(i.to_le_bytes()));
    }
    let seen = counters(&recorder);
    assert_eq!(
        seen["substation_switch_evaluations_total{switch=counted,result=on}"],
        2_048
    );
    assert_eq!(switch.evaluations(), vec![("on".to_owned(), 2_500)]);

    // A change of variants pushes the remainder of the old variants' counts.
    // Handles for new variants are registered when the value changes: under the
    // recorder too.
    metrics::with_local_recorder(&recorder, || {
        switch
            .update(SwitchSettings::variants([VariantSettings::new("a", 1)]))
            .unwrap();
    });
    let mut variants = switch.variants();
    for _ in 0..10 {
        assert_eq!(variants.pick("k").name(), "a");
    }
    metrics::with_local_recorder(&recorder, || {
        switch
            .update(SwitchSettings::variants([VariantSettings::new("b", 1)]))
            .unwrap();
    });
    let seen = counters(&recorder);
    assert_eq!(
        seen["substation_switch_evaluations_total{switch=counted,result=a}"],
        10
    );
    assert_eq!(seen["substation_switch_changes_total{switch=counted}"], 2);
    let exact: HashMap<String, u64> = switch.evaluations().into_iter().collect();
    assert_eq!((exact["on"], exact["a"]), (2_500, 10));
}
