//! Millisecond clocks that cost one atomic load to read.
//!
//! A real clock read (`Instant::now()`) costs ≈ 24 ns on the machines this library is
//! measured on, more than the whole closed-breaker path may cost. The layers therefore
//! read time from a [`Clock`]:
//!
//! - [`Clock::coarse()`] (the default): a process-wide counter of milliseconds that a
//!   background thread advances once per millisecond. Reading it is one relaxed atomic
//!   load; its resolution is about one millisecond.
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
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the coarse clock started, advanced by the ticker thread.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
static COARSE_START: OnceLock<Instant> = OnceLock::new();

/// Offset added to every clock so that `0` never means "now" (it is used as "unset").
const EPOCH_OFFSET_MS: u64 = 1;

fn coarse_start() -> Instant {
    *COARSE_START.get_or_init(|| {
        let start = Instant::now();
        COARSE_MS.store(EPOCH_OFFSET_MS, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("substation-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    let ms = start.elapsed().as_millis() as u64 + EPOCH_OFFSET_MS;
                    COARSE_MS.store(ms, Ordering::Relaxed);
                }
            });
        if let Err(error) = spawned {
            // Without the ticker the coarse clock would stand still; say so loudly. Layers
            // keep working (breakers never leave the open state by time, though), so
            // applications should use `Clock::tokio()` on such a platform.
            tracing::error!(%error, "substation: could not start the coarse clock thread");
        }
        start
    })
}

/// A source of monotonic time in milliseconds; see the [module docs](self).
///
/// A `Clock` is one pointer, `Copy`, so response futures carry it without a reference
/// count. Tokio and manual clocks leak a few bytes each when created (tests create
/// them; applications use the coarse clock).
#[derive(Clone, Copy)]
pub struct Clock {
    kind: &'static Kind,
}

enum Kind {
    Coarse,
    Tokio(tokio::time::Instant),
    Manual(AtomicU64),
}

static COARSE: Kind = Kind::Coarse;

impl Clock {
    /// The process-wide coarse clock (one millisecond resolution, one atomic load to read).
    pub fn coarse() -> Self {
        coarse_start();
        Clock { kind: &COARSE }
    }

    /// A clock that reads tokio's time, so that it follows `tokio::time::pause`.
    pub fn tokio() -> Self {
        Clock {
            kind: Box::leak(Box::new(Kind::Tokio(tokio::time::Instant::now()))),
        }
    }

    /// A clock that only moves when the returned handle says so.
    pub fn manual() -> (Self, ManualClock) {
        let kind: &'static Kind =
            Box::leak(Box::new(Kind::Manual(AtomicU64::new(EPOCH_OFFSET_MS))));
        (Clock { kind }, ManualClock { kind })
    }

    /// Milliseconds since an arbitrary fixed point; never zero.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match self.kind {
            Kind::Coarse => COARSE_MS.load(Ordering::Relaxed),
            Kind::Tokio(start) => start.elapsed().as_millis() as u64 + EPOCH_OFFSET_MS,
            Kind::Manual(ms) => ms.load(Ordering::Relaxed),
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
            Kind::Coarse => "coarse",
            Kind::Tokio(_) => "tokio",
            Kind::Manual(_) => "manual",
        };
        f.debug_struct("Clock")
            .field("kind", &kind)
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

/// The handle that moves a [`Clock::manual()`] clock.
#[derive(Clone, Copy)]
pub struct ManualClock {
    kind: &'static Kind,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").finish_non_exhaustive()
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        if let Kind::Manual(ms) = self.kind {
            ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now_ms();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now_ms() - t0, 3000);
    }
}
