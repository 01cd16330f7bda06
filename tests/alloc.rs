//! Zero allocations on the hot paths, and flat memory across breaker cycles, proven
//! with a counting global allocator (counts are per thread, so tests running in
//! parallel do not disturb each other).
#![allow(unsafe_code)] // a `GlobalAlloc` impl is unsafe by definition

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use substation::breaker::{BreakerState, CircuitBreakerLayer};
use substation::clock::Clock;
use substation::settings::PolicySettings;
use substation::timeout::TimeoutLayer;
use substation::{BoxError, Policy};
use tower::{Layer, Service, service_fn};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + layout.size() as i64));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE_BYTES.try_with(|c| c.set(c.get() - layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

fn call_now<S: Service<u32>>(svc: &mut S, req: u32) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("not ready"),
    }
}

fn ok_service() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = std::future::Ready<Result<u32, BoxError>>,
> + Clone {
    service_fn(|x: u32| std::future::ready(Ok(x)))
}

fn failing_service() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = std::future::Ready<Result<u32, BoxError>>,
> + Clone {
    service_fn(|_: u32| std::future::ready(Err::<u32, BoxError>(Box::new(Failed))))
}

/// The inner services' error: zero-sized, so boxing it allocates nothing and the counts
/// are the layers' alone.
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

#[test]
fn closed_breaker_and_timeout_allocate_nothing_per_call() {
    let policy = Policy::new("alloc-closed", PolicySettings::default()).unwrap();
    let mut svc =
        CircuitBreakerLayer::new(&policy).layer(TimeoutLayer::new(&policy).layer(ok_service()));
    for i in 0..100 {
        call_now(&mut svc, i).unwrap(); // warm up (thread-local stripe index)
    }
    let before = allocs();
    for i in 0..10_000 {
        assert_eq!(call_now(&mut svc, i).unwrap(), i);
    }
    assert_eq!(allocs() - before, 0);
}

#[test]
fn open_breaker_allocates_nothing_per_rejection() {
    let policy = Policy::new("alloc-open", PolicySettings::default()).unwrap();
    let mut failing = CircuitBreakerLayer::new(&policy).layer(failing_service());
    for i in 0..20 {
        let _ = call_now(&mut failing, i);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    let mut svc = CircuitBreakerLayer::new(&policy).layer(ok_service());
    let _ = call_now(&mut svc, 0);
    let before = allocs();
    for i in 0..10_000 {
        assert!(call_now(&mut svc, i).is_err());
    }
    assert_eq!(allocs() - before, 0);
}

#[test]
fn timeout_alone_allocates_nothing_on_a_ready_future() {
    let policy = Policy::new("alloc-timeout", PolicySettings::default()).unwrap();
    let mut svc = TimeoutLayer::new(&policy).layer(ok_service());
    let _ = call_now(&mut svc, 0);
    let before = allocs();
    for i in 0..10_000 {
        call_now(&mut svc, i).unwrap();
    }
    assert_eq!(allocs() - before, 0);
}

#[test]
fn memory_stays_flat_across_a_million_breaker_cycles() {
    let (clock, time) = Clock::manual();
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 1;
    s.breaker.open_ms = 10;
    let policy = Policy::with_clock("alloc-cycles", s, clock).unwrap();
    let mut failing = CircuitBreakerLayer::new(&policy).layer(failing_service());
    let mut ok = CircuitBreakerLayer::new(&policy).layer(ok_service());
    let mut cycle = |i: u32| {
        let _ = call_now(&mut failing, i); // trips: closed → open
        time.advance(Duration::from_millis(10));
        call_now(&mut ok, i).unwrap(); // the trial: open → half-open → closed
    };
    for i in 0..1_000 {
        cycle(i);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    let (bytes, count) = (live_bytes(), allocs());
    for i in 0..1_000_000 {
        cycle(i);
    }
    assert_eq!(policy.breaker_state(), BreakerState::Closed);
    assert_eq!(
        live_bytes() - bytes,
        0,
        "bytes still allocated after 1,000,000 cycles"
    );
    assert_eq!(allocs() - count, 0, "allocations during 1,000,000 cycles");
}

#[test]
fn the_policy_stack_allocates_nothing_when_ready_open_or_killed() {
    use substation::fallback::Fallback;
    use substation::stack::PolicyLayer;
    let mut s = PolicySettings::default();
    s.bulkhead.max_concurrent = Some(100);
    s.breaker.open_ms = 3_600_000;
    s.breaker.open_max_ms = 3_600_000;
    let count = |svc: &mut dyn FnMut(u32) -> u32, expect: u32| {
        for i in 0..100 {
            assert_eq!(svc(i), expect); // warm up
        }
        let before = allocs();
        for i in 0..10_000 {
            assert_eq!(svc(i), expect);
        }
        allocs() - before
    };

    let policy = Policy::new("alloc-stack-ready", s.clone()).unwrap();
    let mut ready = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value(7u32))
        .layer(ok_service());
    assert_eq!(
        count(&mut |_| call_now(&mut ready, 1).unwrap(), 1),
        0,
        "ready"
    );

    let policy = Policy::new("alloc-stack-open", s.clone()).unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::new().static_value(7u32));
    let mut tripper = layer.layer(failing_service());
    for i in 0..20 {
        call_now(&mut tripper, i).unwrap();
    }
    assert_eq!(policy.breaker_state(), BreakerState::Open);
    let mut open = layer.layer(ok_service());
    assert_eq!(
        count(&mut |i| call_now(&mut open, i).unwrap(), 7),
        0,
        "open + static"
    );

    s.kill = true;
    let policy = Policy::new("alloc-stack-killed", s).unwrap();
    let mut killed = PolicyLayer::new(&policy)
        .fallback(Fallback::new().static_value(7u32))
        .layer(ok_service());
    assert_eq!(
        count(&mut |i| call_now(&mut killed, i).unwrap(), 7),
        0,
        "killed + static"
    );
}

#[test]
fn the_cache_tier_answers_without_allocating() {
    use substation::fallback::Fallback;
    use substation::stack::PolicyLayer;
    let mut s = PolicySettings::default();
    s.breaker.min_calls = 1_000_000; // stays closed: the failure path is measured
    let policy = Policy::new("alloc-cache-hit", s).unwrap();
    let layer = PolicyLayer::new(&policy).fallback(Fallback::with_parts(|x: &u32| *x).cache(16));
    call_now(&mut layer.layer(ok_service()), 3).unwrap();
    let mut failing = layer.layer(failing_service());
    for _ in 0..100 {
        assert_eq!(call_now(&mut failing, 3).unwrap(), 3);
    }
    let before = allocs();
    for _ in 0..10_000 {
        assert_eq!(call_now(&mut failing, 3).unwrap(), 3);
    }
    assert_eq!(allocs() - before, 0);
}

#[test]
fn the_retry_stage_allocates_nothing_when_the_first_attempt_answers() {
    use substation::retry::Errors;
    use substation::stack::PolicyLayer;
    let settings = PolicySettings::default().with(|s| s.retry.max_attempts = 3);
    let policy = Policy::new("alloc-retry", settings).unwrap();
    let mut svc = PolicyLayer::new(&policy)
        .retry(Errors::cloning(|n: &u32| Some(*n)))
        .layer(ok_service());
    for i in 0..100 {
        call_now(&mut svc, i).unwrap();
    }
    let before = allocs();
    for i in 0..10_000 {
        assert_eq!(call_now(&mut svc, i).unwrap(), i);
    }
    assert_eq!(allocs() - before, 0);
}
