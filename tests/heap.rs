//! Memory stays flat over 100,000 builds and drops of a full policy stack: nothing a
//! layer, service or future holds outlives it. A binary of its own: its allocator counts
//! every thread's allocations (a policy may be freed on another thread than the one
//! that built it — the statistics flusher's, the reaper's), so no other test may run
//! beside it.
#![allow(unsafe_code)] // a `GlobalAlloc` impl is unsafe by definition

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, Waker};

use substation::settings::PolicySettings;
use substation::{BoxError, Policy};
use tower::{Layer, Service, service_fn};

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn call_now<S: Service<u32>>(svc: &mut S, req: u32) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("not ready"),
    }
}

/// The inner services' error.
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

/// The response type of the ownership tests: a value with drop glue, like a real one.
#[derive(Clone, Debug, PartialEq)]
struct Answer(Box<u32>);

fn answers(
    fail: bool,
) -> impl Service<
    u32,
    Response = Answer,
    Error = BoxError,
    Future = std::future::Ready<Result<Answer, BoxError>>,
> + Clone {
    service_fn(move |x: u32| {
        std::future::ready(if fail {
            Err::<Answer, BoxError>(Box::new(Failed))
        } else {
            Ok(Answer(Box::new(x)))
        })
    })
}

#[test]
fn heap_is_flat_over_100_000_builds_of_a_full_policy_stack() {
    use substation::fallback::Fallback;
    use substation::stack::PolicyLayer;
    // Held across the builds, so that the background threads they start (the coarse
    // clock's, the statistics flusher's) do not start and stop with each of them.
    let _kept = Policy::new("alloc-build-kept", PolicySettings::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _rt = rt.enter(); // the service tier's deadline is a tokio timer
    let build = |i: u32| {
        let mut s = PolicySettings::default();
        s.bulkhead.max_concurrent = Some(10);
        // A distinct name each time: a name no longer used must cost nothing.
        let policy = Policy::new(&format!("alloc-build-{i}"), s).unwrap();
        let layer = PolicyLayer::new(&policy).fallback(
            Fallback::with_parts(|x: &u32| *x)
                .cache(16)
                .service(answers(false), |x: &u32| Some(*x + 1000))
                .static_value(Answer(Box::new(7))),
        );
        let mut ok = layer.layer(answers(false));
        let mut failing = layer.layer(answers(true));
        assert_eq!(call_now(&mut ok, 1).unwrap(), Answer(Box::new(1))); // fills the cache
        assert_eq!(
            call_now(&mut failing, 1).unwrap(),
            Answer(Box::new(1)),
            "cached"
        );
        assert_eq!(
            call_now(&mut failing, 2).unwrap(),
            Answer(Box::new(1002)),
            "the alternate service"
        );
    };
    // Warm-up: long enough for the background threads' first passes, whose reused
    // buffers (sized by the policies alive at once) then stay as they are.
    let warm = std::time::Instant::now();
    let mut i = 0;
    while warm.elapsed() < std::time::Duration::from_millis(2_500) {
        build(i);
        i += 1;
    }
    let bytes = live_bytes();
    for i in 0..100_000 {
        build(i);
    }
    // What a leak would look like: anything a build kept, times 100,000. Allowed: the
    // reused buffers of a background pass growing by a slot (bounded by the policies
    // alive at once, here two).
    let grown = live_bytes() - bytes;
    assert!(
        grown <= 512,
        "{grown} bytes still allocated after 100,000 builds and drops"
    );
}
