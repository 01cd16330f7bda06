//! What applying one changed key costs with 10,000 policies loaded, and what the loaded
//! settings weigh.
//!
//! Group `apply`: `one_key_of_10000` applies an update that changes one policy's value
//! (alternating between two values so that every update is a real change) through the
//! registry's `Sink`, as the etcd source does for each watch event: parse, validate
//! with its layers, update the live policy, publish a new snapshot, notify subscribers.
//! All 10,000 policies have live handles.
//!
//! Memory: a counting global allocator reports the bytes held by the registry after
//! loading (printed once, before the measurements).
//!
//! Run with `cargo bench --workspace --bench apply`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use substation::live::{Change, Scope, Sink, Source, Update};
use substation::{BoxError, Substation};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A source that hands its sink to the benchmark.
struct Handoff(Arc<Mutex<Option<Sink>>>);

impl Source for Handoff {
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError> {
        *self.0.lock().unwrap() = Some(sink);
        sink_ready(&self.0);
        Ok(())
    }
}

fn sink_ready(slot: &Arc<Mutex<Option<Sink>>>) {
    if let Some(s) = slot.lock().unwrap().as_ref() {
        s.initialized();
    }
}

const POLICIES: usize = 10_000;

fn value(i: usize, ms: u64) -> Vec<u8> {
    format!(
        r#"{{"timeout": {{"ms": {ms}}}, "breaker": {{"min_calls": {}}}}}"#,
        10 + i % 50
    )
    .into_bytes()
}

fn apply(c: &mut Criterion) {
    let before = LIVE.load(Ordering::Relaxed);
    let slot = Arc::new(Mutex::new(None));
    let sub = Substation::builder()
        .source(Handoff(slot.clone()))
        .build()
        .unwrap();
    let sink = slot.lock().unwrap().clone().unwrap();
    let entries = (0..POLICIES)
        .map(|i| (format!("policies/p{i}"), value(i, 100 + i as u64)))
        .collect();
    sink.apply(Update::Replace {
        revision: 1,
        layers: vec![(Scope::App, entries)],
    })
    .unwrap();
    let registry_bytes = LIVE.load(Ordering::Relaxed) - before;
    let handles: Vec<_> = (0..POLICIES)
        .map(|i| sub.policy(&format!("p{i}")))
        .collect();
    let with_handles = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "apply: {POLICIES} policies loaded: registry {:.1} MiB ({} B per policy); with a live handle each {:.1} MiB",
        registry_bytes as f64 / (1 << 20) as f64,
        registry_bytes / POLICIES as isize,
        with_handles as f64 / (1 << 20) as f64,
    );
    assert_eq!(sub.snapshot().policies().len(), POLICIES);

    let mut g = c.benchmark_group("apply");
    let mut revision = 1;
    g.bench_function("one_key_of_10000", |b| {
        b.iter(|| {
            revision += 1;
            let i = (revision as usize * 7919) % POLICIES;
            let update = Update::Changes {
                revision,
                changes: vec![Change {
                    layer: Scope::App,
                    key: format!("policies/p{i}"),
                    // Key i comes back every 10,000 revisions: a new value each time.
                    value: Some(value(i, 1 + (revision / POLICIES as u64) % 2)),
                }],
            };
            black_box(sink.apply(update).unwrap());
        })
    });
    // The value each key already holds (a listing after a reconnect sends every key
    // again): nothing changes, nothing is refreshed.
    g.bench_function("unchanged_key_of_10000", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n += 1;
            let i = (n * 7919) % POLICIES;
            let stored = sub
                .snapshot()
                .policy(&format!("p{i}"))
                .unwrap()
                .timeout
                .ms
                .unwrap();
            let update = Update::Changes {
                revision,
                changes: vec![Change {
                    layer: Scope::App,
                    key: format!("policies/p{i}"),
                    value: Some(value(i, stored)),
                }],
            };
            black_box(sink.apply(update).unwrap());
        })
    });
    g.finish();
    drop(handles);
}

criterion_group!(benches, apply);
criterion_main!(benches);
