//! Zero allocations when evaluating a switch, proven with a counting global allocator
//! (counts are per thread, so tests running in parallel do not disturb each other).
#![allow(unsafe_code)] // a `GlobalAlloc` impl is unsafe by definition

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use substation::switch::{DecimalKey, Switch, SwitchSettings, VariantSettings};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

const KEYS: [&str; 4] = [
    "user-0000000001",
    "user-0000000002",
    "tenant-acme-0003",
    "user-0000000004",
];

#[test]
fn evaluations_allocate_nothing() {
    let percent = Switch::detached("alloc-percent", SwitchSettings::percent(25.0)).unwrap();
    let on = Switch::detached("alloc-on", SwitchSettings::on()).unwrap();
    let variants = Switch::detached(
        "alloc-variants",
        SwitchSettings::variants([
            VariantSettings::new("a", 1),
            VariantSettings::new("b", 2),
            VariantSettings::new("c", 3),
            VariantSettings::new("d", 4),
        ]),
    )
    .unwrap();
    let strings = Switch::detached(
        "alloc-strings",
        SwitchSettings::variants([
            VariantSettings::new("x", 1).value("x"),
            VariantSettings::new("y", 1).value(true),
        ]),
    )
    .unwrap();
    let mut picker = variants.variants();
    // Warm up: thread-local stripe index, arc-swap's per-thread debt slots, the cache.
    percent.is_on(KEYS[0]);
    on.is_on(KEYS[0]);
    strings.is_on(KEYS[0]);
    picker.pick(KEYS[0]);
    variants.with_variant(KEYS[0], |_| ());

    let n = allocations(|| {
        for i in 0..100_000 {
            let key = KEYS[i % KEYS.len()];
            std::hint::black_box(percent.is_on(key));
            std::hint::black_box(percent.is_on(DecimalKey::from(i as u64)));
            std::hint::black_box(percent.is_on_random());
            std::hint::black_box(on.is_on(key));
            std::hint::black_box(picker.pick(key).index());
            std::hint::black_box(picker.pick_random().index());
            std::hint::black_box(variants.with_variant(key, |v| v.index()));
            std::hint::black_box(strings.is_on(key)); // the slow path
        }
    });
    assert_eq!(n, 0, "allocations while evaluating");

    // Across a live change, the handles keep working without allocating per call.
    variants
        .update(SwitchSettings::variants([VariantSettings::new("z", 1)]))
        .unwrap();
    picker.pick(KEYS[0]); // the cache takes the new value
    let n = allocations(|| {
        for key in KEYS.iter().cycle().take(10_000) {
            assert_eq!(picker.pick(key).name(), "z");
        }
    });
    assert_eq!(n, 0);
}
