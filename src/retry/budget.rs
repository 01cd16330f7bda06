//! The retry budget of a policy: retries ≤ a percentage of recent requests plus a
//! reserve per second of the window, shared by every clone and thread of the policy.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::policy::PolicyCore;
use crate::settings::RetrySettings;
use crate::stats::{BULKHEAD_FULL, FAILURE, REJECTED, SUCCESS, TIMEOUT};

/// Samples kept: one per tenth of the window at most.
const SAMPLES: usize = 12;

/// The counts at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug, Default)]
struct Window {
    /// Oldest first; the oldest is the window's base.
    samples: VecDeque<Sample>,
    /// Retries granted since the policy was made.
    retries: u64,
}

/// A policy's retry budget. Touched only when a call would be retried (never on a
/// call's first attempt): requests are read from the policy's statistics, which count
/// every attempt anyway.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    window: Mutex<Window>,
}

impl Budget {
    /// Takes one retry from the budget; `false` if the budget has none left.
    pub(crate) fn withdraw(&self, core: &PolicyCore, settings: &RetrySettings) -> bool {
        let now = core.clock.now_ms();
        let attempts = core
            .stats
            .sum(&[SUCCESS, FAILURE, TIMEOUT, REJECTED, BULKHEAD_FULL]);
        let span = settings.budget_window_ms;
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let requests = attempts.saturating_sub(w.retries);
        let now_sample = Sample {
            at_ms: now,
            requests,
            retries: w.retries,
        };
        // The base is the newest sample at least a window old. With none recent enough
        // to tell how many requests the window saw (no retry for a window), counting
        // starts now: conservative — only the reserve until requests come in.
        while w.samples.len() >= 2 && w.samples[1].at_ms.saturating_add(span) <= now {
            w.samples.pop_front();
        }
        if w.samples
            .back()
            .is_none_or(|last| last.at_ms.saturating_add(span) <= now)
        {
            w.samples.clear();
            w.samples.push_back(now_sample);
        }
        let base = w.samples[0];
        let recent_requests = requests.saturating_sub(base.requests) as f64;
        let recent_retries = w.retries.saturating_sub(base.retries) as f64;
        let allowed = settings.budget_percent / 100.0 * recent_requests
            + f64::from(settings.budget_min_per_s) * span as f64 / 1000.0;
        if recent_retries + 1.0 > allowed {
            return false;
        }
        w.retries += 1;
        let due = w
            .samples
            .back()
            .is_some_and(|last| last.at_ms.saturating_add(span / 10) <= now);
        if due {
            if w.samples.len() == SAMPLES {
                w.samples.pop_front();
            }
            let retries = w.retries;
            w.samples.push_back(Sample {
                retries,
                ..now_sample
            });
        }
        true
    }
}
