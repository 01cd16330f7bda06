//! Live flips through a real etcd (the harness of `tests/etcd`, started on a random
//! loopback port).

use std::time::Duration;

use substation::Substation;
use substation::live::etcd::EtcdSource;
use substation::switch::SwitchSettings;

use crate::support::{Etcd, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_flips_through_etcd() {
    crate::skip_without_etcd!();
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let substation = Substation::builder()
        .switch("new-checkout", SwitchSettings::off())
        .source(
            EtcdSource::new([etcd.endpoint()], "/substation/app")
                .shared_prefix("/substation/shared"),
        )
        .build()
        .unwrap();
    substation.initialized().await;
    let switch = substation.switch("new-checkout");
    assert!(!switch.is_on("user-1"));

    let deadline = Duration::from_secs(30);
    let share = |switch: &substation::switch::Switch| {
        (0..10_000)
            .filter(|i| switch.is_on(format!("user-{i}")))
            .count()
    };
    // The fleet rolls out to 10 %; this application follows.
    kv.put(
        "/substation/shared/switches/new-checkout",
        r#"{"percent": 10}"#,
        None,
    )
    .await
    .unwrap();
    eventually("10 % from the shared layer", deadline, || async {
        switch.settings().percent == 10.0
    })
    .await;
    let on = share(&switch);
    assert!((900..1_100).contains(&on), "{on}");

    // The application's own value overrides it: the kill.
    kv.put(
        "/substation/app/switches/new-checkout",
        r#"{"on": false}"#,
        None,
    )
    .await
    .unwrap();
    eventually("killed", deadline, || async {
        switch.settings().on == Some(false)
    })
    .await;
    assert_eq!(share(&switch), 0);

    // A bad value is rejected for its key; the kill stays.
    kv.put(
        "/substation/app/switches/new-checkout",
        r#"{"percent": 101}"#,
        None,
    )
    .await
    .unwrap();
    eventually("rejected", deadline, || async {
        substation.snapshot().rejected().count() == 1
    })
    .await;
    assert_eq!(share(&switch), 0);

    // Deleted: back to the shared 10 %, the same users as before.
    kv.delete("/substation/app/switches/new-checkout", None)
        .await
        .unwrap();
    eventually("back to 10 %", deadline, || async {
        switch.settings().on.is_none() && substation.snapshot().rejected().count() == 0
    })
    .await;
    assert_eq!(share(&switch), on);
}
