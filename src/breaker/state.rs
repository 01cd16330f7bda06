//! The breaker's state machine, apart from the request path.
//!
//! The whole state is one `AtomicU64`, changed only by compare-and-swap, so admission,
//! trial permits and transitions are exact however many threads race:
//!
//! ```text
//! bits 0..2    state: 0 closed, 1 open, 2 half-open
//! bits 2..22   episode: +1 on every transition (tells a stale trial from a current one)
//! bits 22..64  open:      the time (ms) the open state ends
//!              half-open: trial permits left (14 bits) | trial successes (14) | trials (14)
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::breaker::window::{Record, Shape, Window, WindowCounts};
use crate::clock::Clock;
use crate::metrics::PolicyMetrics;
use crate::settings::{BreakerMode, BreakerSettings};

/// The state of a circuit breaker as callers meet it. Serialized as its
/// [`as_str`](BreakerState::as_str) name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls pass and are counted.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A limited number of trial calls decide whether to close or re-open.
    HalfOpen,
    /// `breaker.mode` is `force_open`: every call is rejected.
    ForcedOpen,
    /// `breaker.mode` is `force_closed`: every call passes; the breaker never opens.
    ForcedClosed,
}

impl BreakerState {
    /// The state's name as used in metrics and logs (`closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::ForcedClosed => "forced_closed",
        }
    }

    /// Whether calls are rejected in this state (half-open rejects only those beyond
    /// its trials, so it is not counted here).
    pub fn rejects(self) -> bool {
        matches!(self, BreakerState::Open | BreakerState::ForcedOpen)
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_MASK: u64 = 0b11;
const EPISODE_SHIFT: u32 = 2;
const EPISODE_MASK: u64 = (1 << 20) - 1;
const PAYLOAD_SHIFT: u32 = 22;
const FIELD_BITS: u32 = 14;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn state(self) -> u64 {
        self.0 & STATE_MASK
    }
    fn episode(self) -> u64 {
        (self.0 >> EPISODE_SHIFT) & EPISODE_MASK
    }
    fn payload(self) -> u64 {
        self.0 >> PAYLOAD_SHIFT
    }
    fn make(state: u64, episode: u64, payload: u64) -> Word {
        Word(state | (episode & EPISODE_MASK) << EPISODE_SHIFT | payload << PAYLOAD_SHIFT)
    }
    /// The next state, in a new episode.
    fn next(self, state: u64, payload: u64) -> Word {
        Word::make(state, self.episode() + 1, payload)
    }
    fn permits(self) -> u64 {
        self.payload() & FIELD_MASK
    }
    fn successes(self) -> u64 {
        (self.payload() >> FIELD_BITS) & FIELD_MASK
    }
    fn trials(self) -> u64 {
        (self.payload() >> (2 * FIELD_BITS)) & FIELD_MASK
    }
    fn half_open(permits: u64, successes: u64, trials: u64) -> u64 {
        permits | successes << FIELD_BITS | trials << (2 * FIELD_BITS)
    }
}

/// What `admit` decided for one call.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Let it through (closed, forced closed, or a dry-run rejection).
    Admit,
    /// Let it through as a half-open trial.
    Trial(u64),
    /// Reject it.
    Reject,
}

/// A breaker's shared state: the state word, the re-open count and the window.
#[derive(Debug)]
pub(crate) struct BreakerCore {
    word: AtomicU64,
    /// When the state (or the mode) last changed, in ms since the Unix epoch.
    changed_at: AtomicU64,
    /// Consecutive re-opens (trial failures) since the breaker last closed.
    reopens: AtomicU32,
    pub(crate) window: Window,
}

/// What a transition needs to be reported.
pub(crate) struct Ctx<'a> {
    pub(crate) policy: &'a str,
    pub(crate) metrics: &'a PolicyMetrics,
}

impl BreakerCore {
    pub(crate) fn new() -> Self {
        BreakerCore {
            word: AtomicU64::new(0),
            changed_at: AtomicU64::new(crate::stats::unix_ms()),
            reopens: AtomicU32::new(0),
            window: Window::new(),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match Word(self.word.load(Acquire)).state() {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Notes a change of state or mode (off the request path).
    pub(crate) fn changed(&self) {
        self.changed_at.store(crate::stats::unix_ms(), Relaxed);
    }

    /// When the state or mode last changed, in ms since the Unix epoch.
    pub(crate) fn changed_at(&self) -> u64 {
        self.changed_at.load(Relaxed)
    }

    /// Whether the breaker is closed (the fast path's only question).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Acquire) & STATE_MASK == CLOSED
    }

    /// The common decisions without leaving the caller's code: `Some(true)` admit (closed),
    /// `Some(false)` reject (open and not yet due for a trial), `None` ask [`Self::admit`].
    #[inline]
    pub(crate) fn quick_admit(&self, mode: BreakerMode, clock: &Clock) -> Option<bool> {
        if mode != BreakerMode::Normal {
            return None;
        }
        let w = self.word.load(Acquire);
        match w & STATE_MASK {
            CLOSED => Some(true),
            OPEN if clock.now_ms() < w >> PAYLOAD_SHIFT => Some(false),
            _ => None,
        }
    }

    /// Whether a trial could be admitted now (open and due, or half-open with a permit
    /// left), or the breaker is closed: a look, not a reservation.
    #[inline]
    pub(crate) fn may_admit(&self, now: u64) -> bool {
        let w = Word(self.word.load(Acquire));
        match w.state() {
            CLOSED => true,
            OPEN => now >= w.payload(),
            _ => w.permits() > 0,
        }
    }

    /// Decides whether a call may go through.
    pub(crate) fn admit(&self, now: u64, s: &BreakerSettings, ctx: &Ctx<'_>) -> Admission {
        match s.mode {
            BreakerMode::ForceOpen => return Admission::Reject,
            BreakerMode::ForceClosed => {
                // A trip racing with the switch to force-closed is undone here.
                if !self.is_closed() {
                    self.close(ctx);
                }
                return Admission::Admit;
            }
            BreakerMode::Normal | BreakerMode::MetricsOnly => {}
        }
        let reject = || match s.mode {
            BreakerMode::MetricsOnly => Admission::Admit,
            _ => Admission::Reject,
        };
        let mut w = Word(self.word.load(Acquire));
        loop {
            let (next, admission) = match w.state() {
                CLOSED => return Admission::Admit,
                OPEN if now < w.payload() => return reject(),
                OPEN => {
                    let n = u64::from(s.half_open_calls).clamp(1, FIELD_MASK);
                    // Take the first permit ourselves.
                    let next = w.next(HALF_OPEN, Word::half_open(n - 1, 0, n));
                    (next, Admission::Trial(next.episode()))
                }
                _ if w.permits() == 0 => return reject(),
                _ => (
                    Word(w.0 - (1 << PAYLOAD_SHIFT)),
                    Admission::Trial(w.episode()),
                ),
            };
            match self
                .word
                .compare_exchange_weak(w.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    if w.state() == OPEN {
                        self.changed();
                        transitioned(ctx, BreakerState::HalfOpen, None);
                    }
                    return admission;
                }
                Err(actual) => w = Word(actual),
            }
        }
    }

    /// A trial's permit comes back unused (its call was dropped before it finished).
    pub(crate) fn release_trial(&self, episode: u64) {
        let _ = self.word.fetch_update(AcqRel, Acquire, |w| {
            let w = Word(w);
            (w.state() == HALF_OPEN && w.episode() == episode && w.permits() < w.trials())
                .then_some(w.0 + (1 << PAYLOAD_SHIFT))
        });
    }

    /// Records the outcome of an admitted call and moves the state machine.
    pub(crate) fn on_result(
        &self,
        trial: Option<u64>,
        rec: Record,
        now: u64,
        s: &BreakerSettings,
        ctx: &Ctx<'_>,
    ) {
        if let Some(episode) = trial {
            return self.on_trial_result(episode, rec, now, s, ctx);
        }
        if !self.is_closed() {
            // Calls admitted while open (metrics-only) or that started before it opened
            // do not count: the window is cleared when the breaker closes.
            return;
        }
        let shape = shape(s);
        self.window.record(now, || shape, rec);
        if (rec.failed || rec.slow) && s.mode != BreakerMode::ForceClosed {
            let counts = self.window.counts(now, shape);
            if should_trip(&counts, s) {
                self.trip_from_closed(now, s, ctx, &counts);
            }
        }
    }

    fn on_trial_result(
        &self,
        episode: u64,
        rec: Record,
        now: u64,
        s: &BreakerSettings,
        ctx: &Ctx<'_>,
    ) {
        let failed = rec.failed || (rec.slow && s.slow_call_ms.is_some());
        let mut w = Word(self.word.load(Acquire));
        loop {
            if w.state() != HALF_OPEN || w.episode() != episode {
                return; // a stale trial
            }
            let next = if failed {
                let reopens = self.reopens.load(Relaxed) + 1;
                w.next(OPEN, now + open_duration(s, reopens))
            } else if w.successes() + 1 >= w.trials() {
                // Cleared before the switch: once closed, calls are admitted and counted
                // at once, and must not read the window that tripped it. (Half-open,
                // nothing but trials is recorded, so clearing early loses nothing.)
                self.window.reset();
                w.next(CLOSED, 0)
            } else {
                Word(w.0 + (1 << (PAYLOAD_SHIFT + FIELD_BITS)))
            };
            match self
                .word
                .compare_exchange_weak(w.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    match next.state() {
                        OPEN => {
                            self.reopens.fetch_add(1, Relaxed);
                            self.changed();
                            transitioned(ctx, BreakerState::Open, None);
                        }
                        CLOSED => {
                            self.reopens.store(0, Relaxed);
                            self.changed();
                            transitioned(ctx, BreakerState::Closed, None);
                        }
                        _ => {}
                    }
                    return;
                }
                Err(actual) => w = Word(actual),
            }
        }
    }

    fn trip_from_closed(
        &self,
        now: u64,
        s: &BreakerSettings,
        ctx: &Ctx<'_>,
        counts: &WindowCounts,
    ) {
        let w = Word(self.word.load(Acquire));
        if w.state() != CLOSED {
            return;
        }
        let next = w.next(OPEN, now + open_duration(s, 0));
        if self
            .word
            .compare_exchange(w.0, next.0, AcqRel, Acquire)
            .is_ok()
        {
            self.reopens.store(0, Relaxed);
            self.changed();
            transitioned(ctx, BreakerState::Open, Some(counts));
        }
    }

    /// Forces the state to closed with an empty window (used when the mode becomes
    /// force-closed, and by tests).
    /// Retries until the state is closed: a trial result or an admission racing with
    /// it must not leave a force-closed breaker open.
    #[cold]
    pub(crate) fn close(&self, ctx: &Ctx<'_>) {
        let mut w = Word(self.word.load(Acquire));
        loop {
            if w.state() == CLOSED {
                return;
            }
            // Cleared before the switch (see `on_trial_result`).
            self.window.reset();
            match self
                .word
                .compare_exchange(w.0, w.next(CLOSED, 0).0, AcqRel, Acquire)
            {
                Ok(_) => {
                    self.reopens.store(0, Relaxed);
                    self.changed();
                    transitioned(ctx, BreakerState::Closed, None);
                    return;
                }
                Err(actual) => w = Word(actual),
            }
        }
    }

    /// The counts of the window as of `now`.
    pub(crate) fn counts(&self, now: u64, s: &BreakerSettings) -> WindowCounts {
        self.window.counts(now, shape(s))
    }
}

#[inline]
pub(crate) fn shape(s: &BreakerSettings) -> Shape {
    Shape {
        bucket_ms: s.bucket_ms().max(1),
        buckets: u64::from(s.buckets.max(1)),
    }
}

fn should_trip(c: &WindowCounts, s: &BreakerSettings) -> bool {
    if c.calls < u64::from(s.min_calls) {
        return false;
    }
    let calls = c.calls as f64;
    let errors = c.failures > 0 && c.failures as f64 * 100.0 >= s.error_rate * calls;
    let slow =
        s.slow_call_ms.is_some() && c.slow > 0 && c.slow as f64 * 100.0 >= s.slow_call_rate * calls;
    errors || slow
}

/// The open duration after `reopens` consecutive trial failures, with backoff and jitter.
fn open_duration(s: &BreakerSettings, reopens: u32) -> u64 {
    let base = s.open_ms as f64;
    let backed_off = if s.open_backoff > 1.0 {
        (base * s.open_backoff.powi(reopens.min(64) as i32)).min(s.open_max_ms as f64)
    } else {
        base
    };
    let jittered = if s.open_jitter > 0.0 {
        backed_off * (1.0 + s.open_jitter * (2.0 * fastrand::f64() - 1.0))
    } else {
        backed_off
    };
    (jittered as u64).max(1)
}

#[cold]
fn transitioned(ctx: &Ctx<'_>, to: BreakerState, counts: Option<&WindowCounts>) {
    let m = ctx.metrics;
    match to {
        BreakerState::Open => {
            m.to_open.increment(1);
            m.state.set(1.0);
            match counts {
                Some(c) => tracing::warn!(
                    policy = ctx.policy,
                    calls = c.calls,
                    failures = c.failures,
                    slow = c.slow,
                    "circuit breaker opened"
                ),
                None => tracing::warn!(
                    policy = ctx.policy,
                    "circuit breaker re-opened: a trial call failed"
                ),
            }
        }
        BreakerState::HalfOpen => {
            m.to_half_open.increment(1);
            m.state.set(2.0);
            tracing::info!(
                policy = ctx.policy,
                "circuit breaker half-open: admitting trial calls"
            );
        }
        _ => {
            m.to_closed.increment(1);
            m.state.set(0.0);
            tracing::info!(policy = ctx.policy, "circuit breaker closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(m: &PolicyMetrics) -> Ctx<'_> {
        Ctx {
            policy: "t",
            metrics: m,
        }
    }
    const OK: Record = Record {
        failed: false,
        slow: false,
    };
    const FAIL: Record = Record {
        failed: true,
        slow: false,
    };

    #[test]
    fn trips_reopens_and_closes() {
        let m = PolicyMetrics::new("t");
        let c = BreakerCore::new();
        let s = BreakerSettings {
            min_calls: 4,
            half_open_calls: 2,
            ..Default::default()
        };
        let now = 10_000;
        for _ in 0..2 {
            c.on_result(None, OK, now, &s, &ctx(&m));
        }
        c.on_result(None, FAIL, now, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Closed, "3 calls < min_calls");
        c.on_result(None, FAIL, now, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Open, "2 of 4 failed = 50 %");
        assert!(matches!(
            c.admit(now + 4_999, &s, &ctx(&m)),
            Admission::Reject
        ));
        // Half-open: exactly two permits.
        let Admission::Trial(e1) = c.admit(now + 5_000, &s, &ctx(&m)) else {
            panic!()
        };
        let Admission::Trial(e2) = c.admit(now + 5_000, &s, &ctx(&m)) else {
            panic!()
        };
        assert!(matches!(
            c.admit(now + 5_000, &s, &ctx(&m)),
            Admission::Reject
        ));
        assert_eq!(e1, e2);
        // A dropped trial gives its permit back.
        c.release_trial(e2);
        let Admission::Trial(e3) = c.admit(now + 5_001, &s, &ctx(&m)) else {
            panic!()
        };
        c.on_result(Some(e1), OK, now + 5_010, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::HalfOpen);
        c.on_result(Some(e3), FAIL, now + 5_010, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Open, "a failed trial re-opens");
        let Admission::Trial(e4) = c.admit(now + 10_010, &s, &ctx(&m)) else {
            panic!()
        };
        let Admission::Trial(e5) = c.admit(now + 10_010, &s, &ctx(&m)) else {
            panic!()
        };
        c.on_result(Some(e4), OK, now + 10_020, &s, &ctx(&m));
        c.on_result(Some(e3), FAIL, now + 10_020, &s, &ctx(&m)); // stale trial: ignored
        c.on_result(Some(e5), OK, now + 10_020, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Closed);
        assert_eq!(
            c.counts(now + 10_020, &s),
            WindowCounts::default(),
            "closing clears the window"
        );
    }

    #[test]
    fn backoff_and_jitter_bound_the_open_duration() {
        let s = BreakerSettings {
            open_ms: 1_000,
            open_backoff: 2.0,
            open_max_ms: 5_000,
            ..Default::default()
        };
        assert_eq!(open_duration(&s, 0), 1_000);
        assert_eq!(open_duration(&s, 1), 2_000);
        assert_eq!(open_duration(&s, 2), 4_000);
        assert_eq!(open_duration(&s, 3), 5_000);
        assert_eq!(open_duration(&s, 1000), 5_000);
        let j = BreakerSettings {
            open_jitter: 0.1,
            ..s
        };
        for _ in 0..1000 {
            let d = open_duration(&j, 0);
            assert!((900..=1_100).contains(&d), "{d}");
        }
    }

    #[test]
    fn slow_calls_trip_when_enabled() {
        let m = PolicyMetrics::new("t");
        let c = BreakerCore::new();
        let slow = Record {
            failed: false,
            slow: true,
        };
        let off = BreakerSettings {
            min_calls: 2,
            ..Default::default()
        };
        c.on_result(None, slow, 1_000, &off, &ctx(&m));
        c.on_result(None, slow, 1_000, &off, &ctx(&m));
        assert_eq!(
            c.state(),
            BreakerState::Closed,
            "slow-call tracking is off by default"
        );
        let on = BreakerSettings {
            slow_call_ms: Some(100),
            slow_call_rate: 100.0,
            ..off
        };
        c.on_result(None, slow, 1_000, &on, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Open);
    }

    #[test]
    fn modes() {
        let m = PolicyMetrics::new("t");
        let c = BreakerCore::new();
        let mut s = BreakerSettings {
            min_calls: 1,
            ..Default::default()
        };
        s.mode = BreakerMode::ForceOpen;
        assert!(matches!(c.admit(1, &s, &ctx(&m)), Admission::Reject));
        s.mode = BreakerMode::ForceClosed;
        c.on_result(None, FAIL, 1, &s, &ctx(&m));
        assert_eq!(c.state(), BreakerState::Closed, "force-closed never trips");
        s.mode = BreakerMode::MetricsOnly;
        c.on_result(None, FAIL, 1, &s, &ctx(&m));
        assert_eq!(
            c.state(),
            BreakerState::Open,
            "metrics-only runs the state machine"
        );
        assert!(
            matches!(c.admit(2, &s, &ctx(&m)), Admission::Admit),
            "but never rejects"
        );
        s.mode = BreakerMode::Normal;
        assert!(matches!(c.admit(2, &s, &ctx(&m)), Admission::Reject));
    }
}
