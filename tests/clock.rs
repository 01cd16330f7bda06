//! The coarse clock's thread runs while a coarse clock exists, and only then: a process
//! that stops using substation has no thread waking 1,000 times a second. (A binary of
//! its own: no other test may hold a clock meanwhile.)

use std::time::{Duration, Instant};

use substation::Policy;
use substation::clock::Clock;
use substation::settings::PolicySettings;

/// Whether a thread named `substation-clock` (truncated by Linux to 15 bytes) runs.
fn ticking() -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("Linux /proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .any(|name| name.trim_end() == "substation-cloc")
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_coarse_clock_thread_runs_only_while_a_clock_exists() {
    assert!(!ticking(), "no clock yet");
    let clock = Clock::coarse();
    eventually("the thread starts with the first clock", ticking);
    let policy = Policy::new("clock-owner", PolicySettings::default()).unwrap();
    drop(clock);
    std::thread::sleep(Duration::from_millis(20));
    assert!(ticking(), "the policy's clock keeps it running");
    let before = policy.clock().now_ms();
    eventually("time advances", || policy.clock().now_ms() >= before + 5);
    let last = policy.clock().now_ms();
    drop(policy);
    eventually("the thread stops with the last clock", || !ticking());

    // A new clock starts it again, and time goes on from where it was.
    std::thread::sleep(Duration::from_millis(30));
    let clock = Clock::coarse();
    assert!(clock.now_ms() >= last + 30, "fresh at once, not frozen");
    eventually("started again", ticking);
    drop(clock);
    eventually("stopped again", || !ticking());
}
