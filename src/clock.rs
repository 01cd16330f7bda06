//! Millisecond clocks that cost one atomic load to read.
//!
//! A real clock read (`Instant::now()`) costs ≈ 24 ns on the machines this library is
//! measured on, more than the whole closed-breaker path may cost. The layers therefore
//! read time from a [`Clock`]:
//!
//! - [`Clock::coarse()`] (the default): a process-wide counter of milliseconds that a
//!   background thread advances once per millisecond **while some coarse clock exists**;
//!   reading it is one relaxed atomic load, its resolution about one millisecond. The
//!   thread starts with the first coarse clock and stops within a millisecond of the
//!   last one's drop: a process that no longer uses substation has no thread waking up.
//!   If the thread cannot be started, the clock reads `Instant::now()` instead (slower,
//!   never wrong).
//! - [`Clock::tokio()`]: reads `tokio::time::Instant::now()`, so it follows
//!   `tokio::time::pause` and `advance` in tests (a real clock read per call otherwise).
//! - [`Clock::manual()`]: a clock that only moves when a test calls
//!   [`ManualClock::advance`].
//!
//! ```
//! use std::time::Duration;
//! use substation::clock::Clock;
//!
//! let (clock, handle) = Clock::manual();
//! let t0 = clock.now_ms();
//! handle.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now_ms() - t0, 1500);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Milliseconds since [`start`], advanced by the ticker thread while it runs.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
/// The running ticker, if any coarse clock exists.
static TICKER: Mutex<Weak<Ticker>> = Mutex::new(Weak::new());

/// Offset added to every clock so that `0` never means "now" (it is used as "unset").
const EPOCH_OFFSET_MS: u64 = 1;

/// The instant all coarse (and precise) readings count from.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn precise_ms() -> u64 {
    start().elapsed().as_millis() as u64 + EPOCH_OFFSET_MS
}

/// Keeps the ticker thread running; the thread stops once the last one is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

type Spawn = fn(Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::Thread>;

fn spawn_thread(f: Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::Thread> {
    std::thread::Builder::new()
        .name("substation-clock".into())
        .spawn(f)
        .map(|h| h.thread().clone())
}

/// The running ticker, or a new one.
fn ticker() -> Option<Arc<Ticker>> {
    let mut running = TICKER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = running.upgrade() {
        return Some(t);
    }
    let t = start_ticker(spawn_thread)?;
    *running = Arc::downgrade(&t);
    Some(t)
}

fn start_ticker(spawn: Spawn) -> Option<Arc<Ticker>> {
    // Fresh before the first read (the thread may have been stopped for a while).
    COARSE_MS.fetch_max(precise_ms(), Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = spawn(Box::new(move || {
        while !flag.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(1));
            // `fetch_max`: a stopping ticker and its successor may overlap briefly.
            COARSE_MS.fetch_max(precise_ms(), Ordering::Relaxed);
        }
    }));
    match spawned {
        Ok(thread) => Some(Arc::new(Ticker { stop, thread })),
        Err(error) => {
            tracing::error!(%error, "substation: could not start the coarse clock thread; reading the system clock instead");
            None
        }
    }
}

fn coarse_from(ticker: Option<Arc<Ticker>>) -> Clock {
    Clock {
        kind: match ticker {
            Some(t) => Kind::Coarse { _ticker: t },
            None => Kind::Precise,
        },
    }
}

/// A source of monotonic time in milliseconds; see the [module docs](self).
///
/// Cheap to clone (at most a reference count); the response futures never hold one.
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Reads [`COARSE_MS`]; the `Arc` keeps its ticker running.
    Coarse {
        _ticker: Arc<Ticker>,
    },
    /// The coarse clock's stand-in when its thread could not start.
    Precise,
    Tokio(tokio::time::Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The process-wide coarse clock (one millisecond resolution, one atomic load to
    /// read). Its ticker thread runs while some coarse clock exists.
    pub fn coarse() -> Self {
        coarse_from(ticker())
    }

    /// A clock that reads tokio's time, so that it follows `tokio::time::pause`.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::time::Instant::now` under `pause`.
    pub fn tokio() -> Self {
        Clock {
            kind: Kind::Tokio(tokio::time::Instant::now()),
        }
    }

    /// A clock that only moves when the returned handle says so.
    pub fn manual() -> (Self, ManualClock) {
        let ms = Arc::new(AtomicU64::new(EPOCH_OFFSET_MS));
        (
            Clock {
                kind: Kind::Manual(ms.clone()),
            },
            ManualClock { ms },
        )
    }

    /// Milliseconds since an arbitrary fixed point; never zero.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.kind {
            Kind::Coarse { .. } => COARSE_MS.load(Ordering::Relaxed),
            Kind::Precise => precise_ms(),
            Kind::Tokio(start) => start.elapsed().as_millis() as u64 + EPOCH_OFFSET_MS,
            Kind::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }
}

impl Clock {
    /// Microseconds since an arbitrary fixed point, read precisely (a real clock read
    /// for the coarse clock: for latencies of calls that were pending, not per call).
    pub fn now_us(&self) -> u64 {
        match &self.kind {
            Kind::Coarse { .. } | Kind::Precise => {
                start().elapsed().as_micros() as u64 + EPOCH_OFFSET_MS * 1000
            }
            Kind::Tokio(start) => start.elapsed().as_micros() as u64 + EPOCH_OFFSET_MS * 1000,
            Kind::Manual(ms) => ms.load(Ordering::Relaxed) * 1000,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::coarse()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Coarse { .. } => "coarse",
            Kind::Precise => "precise",
            Kind::Tokio(_) => "tokio",
            Kind::Manual(_) => "manual",
        };
        f.debug_struct("Clock")
            .field("kind", &kind)
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

/// The handle that moves a [`Clock::manual()`] clock. Cheap to clone.
#[derive(Clone)]
pub struct ManualClock {
    ms: Arc<AtomicU64>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.ms.load(Ordering::Relaxed))
            .finish()
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Whether the coarse clock's thread runs now (for tests).
#[doc(hidden)]
pub fn coarse_ticking() -> bool {
    TICKER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .strong_count()
        > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_advances() {
        let clock = Clock::coarse();
        let t0 = clock.now_ms();
        assert!(t0 >= EPOCH_OFFSET_MS);
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.now_ms() < t0 + 5 {
            assert!(Instant::now() < deadline, "coarse clock did not advance");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_clock_that_cannot_tick_reads_the_system_clock() {
        let clock = coarse_from(start_ticker(|_| Err(std::io::Error::other("no threads"))));
        assert!(matches!(clock.kind, Kind::Precise));
        let t0 = clock.now_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.now_ms() >= t0 + 5, "time must not stand still");
    }

    #[test]
    fn manual_clocks_are_freed() {
        let (clock, handle) = Clock::manual();
        let Kind::Manual(ms) = &clock.kind else {
            panic!()
        };
        let weak = Arc::downgrade(ms);
        handle.advance(Duration::from_millis(3));
        assert_eq!(clock.now_ms(), EPOCH_OFFSET_MS + 3);
        drop((clock, handle));
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now_ms();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now_ms() - t0, 3000);
    }
}
