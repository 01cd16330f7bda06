//! Feature switches end to end: a percentage rollout that keeps the same users in as it
//! grows, an instant rollback, an A/B test with weighted variants, and a request router
//! between the old and the new code path — all changed live through a settings source.
//!
//! Run with `cargo run --example switches` (the in-memory source stands in for etcd,
//! where an operator would `etcdctl put <prefix>/switches/<name> '<json>'`).

use substation::live::InMemorySource;
use substation::switch::{DecimalKey, RouteLayer, SwitchSettings};
use substation::{BoxError, Substation};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const USERS: u64 = 100_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let settings = InMemorySource::new();
    let substation = Substation::builder()
        .switch("checkout-v2", SwitchSettings::off())
        .switch("layout", SwitchSettings::off())
        .source(settings.clone())
        .build()?;

    // 1. A sticky rollout: 1 % → 10 % → 50 %; nobody who was in drops out.
    let switch = substation.switch("checkout-v2");
    let mut cohort: Vec<u64> = Vec::new();
    for percent in [1, 10, 50] {
        settings.put(
            "switches/checkout-v2",
            &format!(r#"{{"percent": {percent}}}"#),
        )?;
        let on: Vec<u64> = (0..USERS)
            .filter(|u| switch.is_on(DecimalKey::from(*u)))
            .collect();
        let kept = cohort.iter().all(|u| on.binary_search(u).is_ok());
        println!(
            "{percent:>3} %: {:>6} of {USERS} users on ({:.2} %), everyone already in stayed in: {kept}",
            on.len(),
            on.len() as f64 * 100.0 / USERS as f64
        );
        cohort = on;
    }

    // 2. A bad release: one write turns it off for everyone, the rollout kept underneath.
    settings.put("switches/checkout-v2", r#"{"percent": 50, "on": false}"#)?;
    let on = (0..USERS)
        .filter(|u| switch.is_on(DecimalKey::from(*u)))
        .count();
    println!("rolled back: {on} users on");
    settings.put("switches/checkout-v2", r#"{"percent": 50}"#)?;

    // 3. An A/B test: three layouts by weight, each user always sees the same one.
    settings.put(
        "switches/layout",
        r#"{"variants": [{"name": "control", "weight": 50},
                         {"name": "grid", "weight": 25, "value": {"columns": 3}},
                         {"name": "list", "weight": 25, "value": {"columns": 1}}]}"#,
    )?;
    let mut layout = substation.switch("layout").variants();
    let mut counts = std::collections::BTreeMap::new();
    for u in 0..USERS {
        *counts
            .entry(layout.pick(DecimalKey::from(u)).name().to_owned())
            .or_insert(0) += 1;
    }
    println!("layouts: {counts:?}");
    let v = layout.pick("user-42");
    println!("user-42 sees `{}` with {}", v.name(), v.value());

    // 4. Old and new code paths behind one service, routed per user id.
    let old =
        service_fn(|user: u64| async move { Ok::<_, BoxError>(format!("v1 checkout for {user}")) });
    let new =
        service_fn(|user: u64| async move { Ok::<_, BoxError>(format!("v2 checkout for {user}")) });
    let checkout = ServiceBuilder::new()
        .layer(RouteLayer::new(&switch, new, |user: &u64| {
            Some(DecimalKey::from(*user))
        }))
        .service(old);
    for user in [1, 2, 3, 4] {
        println!("{}", checkout.clone().oneshot(user).await?);
    }

    // 5. What was evaluated, exactly (the metrics facade gets the same in batches).
    println!("checkout-v2 evaluations: {:?}", switch.evaluations());
    Ok(())
}
