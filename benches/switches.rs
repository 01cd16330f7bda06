//! What evaluating a feature switch costs, next to Unleash's Rust engine (Yggdrasil)
//! and to substation's own OpenFeature provider behind the `open-feature` client.
//!
//! Group `switch_eval` (its function names are parsed by tools; keep them):
//!
//! - `substation_percent`: `Switch::is_on(key)` on a 50 % switch (sticky: murmur3 of
//!   name ++ key, a threshold compare, a per-thread counter).
//! - `substation_onoff`: `Switch::is_on(key)` on a switch that is fully on.
//! - `substation_variant`: `Variants::pick(key)` over 4 weighted variants (10/20/30/40).
//! - `yggdrasil_rollout`: `unleash_yggdrasil::EngineState::is_enabled` for a toggle with
//!   one `flexibleRollout` strategy at 50 %, sticky on `userId`, with a prebuilt
//!   `Context` per key (as an SDK would hold one per request).
//! - `openfeature_percent`: `Client::get_bool_value` of open-feature 0.3 through
//!   `SubstationProvider`, the same 50 % switch, a prebuilt `EvaluationContext` per
//!   key; the future completes on its first poll, with a no-op waker.
//!
//! Every case cycles through the same 1,024 keys of 16 bytes (`user-0000000042`-like),
//! so no per-iteration formatting is measured.
//!
//! Run with `cargo bench --workspace --bench switches`.

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::Substation;
use substation::switch::openfeature::SubstationProvider;
use substation::switch::{Switch, SwitchSettings, VariantSettings};

const KEYS: usize = 1024;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user-{i:011}")).collect()
}

/// Polls a future that must complete at once.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the future did not complete on its first poll"),
    }
}

fn yggdrasil() -> unleash_yggdrasil::EngineState {
    let features: unleash_yggdrasil::ClientFeatures = serde_json::from_value(serde_json::json!({
        "version": 2,
        "features": [{
            "name": "checkout-v2",
            "enabled": true,
            "strategies": [{
                "name": "flexibleRollout",
                "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "checkout-v2"}
            }]
        }]
    }))
    .expect("client features");
    let engine = unleash_yggdrasil::EngineState::default();
    engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(features));
    engine
}

fn switch_eval(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("switch_eval");

    let percent = Switch::detached("checkout-v2", SwitchSettings::percent(50.0)).unwrap();
    let mut i = 0;
    g.bench_function("substation_percent", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(percent.is_on(black_box(&keys[i])))
        })
    });

    let onoff = Switch::detached("checkout-v2", SwitchSettings::on()).unwrap();
    g.bench_function("substation_onoff", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(onoff.is_on(black_box(&keys[i])))
        })
    });

    let variants = Switch::detached(
        "layout",
        SwitchSettings::variants([
            VariantSettings::new("a", 10),
            VariantSettings::new("b", 20),
            VariantSettings::new("c", 30),
            VariantSettings::new("d", 40),
        ]),
    )
    .unwrap();
    let mut picker = variants.variants();
    g.bench_function("substation_variant", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(picker.pick(black_box(&keys[i])).index())
        })
    });

    let engine = yggdrasil();
    let contexts: Vec<unleash_yggdrasil::Context> = keys
        .iter()
        .map(|k| unleash_yggdrasil::Context {
            user_id: Some(k.clone()),
            ..Default::default()
        })
        .collect();
    let on = contexts
        .iter()
        .filter(|c| engine.is_enabled("checkout-v2", c, &None))
        .count();
    assert!(
        (400..624).contains(&on),
        "the rollout is at about 50 %: {on}"
    );
    g.bench_function("yggdrasil_rollout", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(engine.is_enabled("checkout-v2", black_box(&contexts[i]), &None))
        })
    });

    let substation = Substation::builder()
        .switch("checkout-v2", SwitchSettings::percent(50.0))
        .build()
        .expect("registry");
    let client = now(async {
        let mut api = open_feature::OpenFeature::singleton_mut().await;
        api.set_provider(SubstationProvider::new(&substation)).await;
        api.create_client()
    });
    let contexts: Vec<open_feature::EvaluationContext> = keys
        .iter()
        .map(|k| open_feature::EvaluationContext::default().with_targeting_key(k.as_str()))
        .collect();
    let registry_switch = substation.switch("checkout-v2");
    for (k, ctx) in keys.iter().zip(&contexts).take(64) {
        let v = now(client.get_bool_value("checkout-v2", Some(ctx), None)).expect("resolves");
        assert_eq!(
            v,
            registry_switch.is_on(k),
            "same answer through OpenFeature"
        );
    }
    g.bench_function("openfeature_percent", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(now(client.get_bool_value(
                "checkout-v2",
                Some(black_box(&contexts[i])),
                None,
            )))
        })
    });
    g.finish();
}

criterion_group!(benches, switch_eval);
criterion_main!(benches);
