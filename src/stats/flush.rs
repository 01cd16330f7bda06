//! The flusher: once a second, every live policy's counts go to the `metrics` facade.
//!
//! Policies register when they are made; the list holds weak references and is pruned
//! as policies are dropped, so it is bounded by the policies alive at once. The thread
//! starts with the first registration and stops after ten passes found no policy; a
//! policy dropped between passes flushes its remainder itself (`PolicyCore`'s drop).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::lease::{Shared, WeakShared};
use crate::policy::PolicyCore;

/// How often the flusher runs.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

struct State {
    policies: Vec<WeakShared<PolicyCore>>,
    running: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    policies: Vec::new(),
    running: false,
});

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a new policy with the flusher (starting it if it is not running).
pub(crate) fn register(policy: WeakShared<PolicyCore>) {
    let mut s = lock();
    s.policies.push(policy);
    if !s.running {
        let spawned = std::thread::Builder::new()
            .name("substation-stats".into())
            .spawn(run);
        match spawned {
            Ok(_) => s.running = true,
            // Counts still reach the facade: at every `metrics::flush()`, and when a
            // policy is dropped.
            Err(error) => {
                tracing::error!(%error, "substation: could not start the statistics flusher; metrics are pushed when policies are dropped or flushed by hand")
            }
        }
    }
}

/// Forgets the policies that are gone: called by a policy's state as it is dropped, on
/// the thread that drops it (so the list never holds more than the policies alive, and
/// what it frees is freed where the policy went).
pub(crate) fn forget_dead() {
    lock().policies.retain(|weak| !weak.is_dead());
}

/// The live policies of a pass, in a buffer reused from pass to pass (a pass allocates
/// nothing once it has held as many policies as are alive; it shrinks when far larger).
static PASS: Mutex<Vec<Shared<PolicyCore>>> = Mutex::new(Vec::new());

/// Flushes every live policy now; returns how many there were.
pub(crate) fn flush_all() -> usize {
    let mut live = PASS.lock().unwrap_or_else(PoisonError::into_inner);
    live.extend(lock().policies.iter().filter_map(WeakShared::upgrade));
    // Outside the list's lock: a policy dropped here (its last holder gone meanwhile)
    // flushes itself and forgets itself, and may retire other state.
    for policy in live.iter() {
        policy.flush();
    }
    let n = live.len();
    live.clear();
    if live.capacity() > 64 && live.capacity() > 4 * n {
        live.shrink_to(2 * n);
    }
    n
}

/// Passes without a live policy after which the thread stops (policies built and
/// dropped one after another keep one thread, not one each).
const IDLE_PASSES: u32 = 10;

fn run() {
    let mut idle = 0;
    loop {
        std::thread::sleep(INTERVAL);
        idle = if flush_all() == 0 { idle + 1 } else { 0 };
        if idle >= IDLE_PASSES {
            let mut s = lock();
            if s.policies.iter().all(WeakShared::is_dead) {
                s.policies.clear();
                s.running = false;
                return;
            }
            idle = 0;
        }
    }
}
