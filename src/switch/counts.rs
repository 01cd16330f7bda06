//! Evaluation counts: per-thread stripes of relaxed atomic counters, pushed to the
//! `metrics` facade in batches so that the hot path never touches the recorder.
//!
//! The first threads to evaluate any switch (4 per core, 8 to 64) get a stripe of
//! their own in every switch; the rest share one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use metrics::Counter;

use super::settings::MAX_VARIANTS;

/// Slot of `is_on` answering true.
pub(crate) const ON: usize = 0;
/// Slot of `is_on` answering false.
pub(crate) const OFF: usize = 1;
/// Slots `2..` count variant picks by position.
pub(crate) const SLOTS: usize = 2 + MAX_VARIANTS;

/// The facade counter advances once per this many evaluations of one result on one
/// stripe.
pub(crate) const BATCH: u64 = 1024;

#[repr(align(128))]
#[derive(Debug)]
struct Stripe([AtomicU64; SLOTS]);

/// The labels and facade handles of the slots, for the value in force.
#[derive(Debug)]
pub(crate) struct Labels {
    pub(crate) names: Vec<Box<str>>,
    pub(crate) counters: Vec<Counter>,
}

impl Labels {
    pub(crate) fn new(switch: &str, variants: &[&str]) -> Labels {
        let names: Vec<Box<str>> = ["on", "off"]
            .iter()
            .chain(variants)
            .map(|n| Box::<str>::from(*n))
            .collect();
        let counters = names
            .iter()
            .map(|n| {
                metrics::counter!(crate::metrics::SWITCH_EVALUATIONS, "switch" => switch.to_owned(), "result" => n.to_string())
            })
            .collect();
        Labels { names, counters }
    }
}

#[derive(Debug)]
pub(crate) struct Counts {
    /// One stripe of its own for each of the first `exclusive` threads (by
    /// `thread_index`), then one that later threads share.
    stripes: Box<[Stripe]>,
    exclusive: usize,
    labels: ArcSwap<Labels>,
    /// Counts drained from variant slots when the variants changed, by result name.
    drained: Mutex<Vec<(Box<str>, u64)>>,
}

use crate::thread::index as thread_index;

impl Counts {
    pub(crate) fn new(labels: Labels) -> Counts {
        let exclusive = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .saturating_mul(4)
            .clamp(8, 64);
        Counts {
            stripes: (0..=exclusive)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            exclusive,
            labels: ArcSwap::from_pointee(labels),
            drained: Mutex::new(Vec::new()),
        }
    }

    /// Counts one evaluation with result `slot`.
    #[inline]
    pub(crate) fn bump(&self, slot: usize) {
        let i = thread_index();
        let n = if i < self.exclusive {
            let counter = &self.stripes[i].0[slot];
            if slot <= OFF {
                // This thread is the only writer of its stripe's on/off counters (they
                // are never reset), so a plain load and store is exact — and a third
                // of the cost of a locked read-modify-write.
                let n = counter.load(Relaxed);
                counter.store(n + 1, Relaxed);
                n
            } else {
                // Variant counters are drained by `relabel` from another thread.
                counter.fetch_add(1, Relaxed)
            }
        } else {
            self.stripes[self.exclusive].0[slot].fetch_add(1, Relaxed)
        };
        if n % BATCH == BATCH - 1 {
            self.flush(slot, BATCH);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush(&self, slot: usize, n: u64) {
        if let Some(c) = self.labels.load().counters.get(slot) {
            c.increment(n);
        }
    }

    /// New labels for the variant slots: what the old variants counted is drained
    /// into the exact totals and the facade first.
    pub(crate) fn relabel(&self, labels: Labels) {
        let old = self.labels.load_full();
        let mut drained = self.drained.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in 2..old.names.len() {
            let mut total = 0;
            for stripe in self.stripes.iter() {
                let n = stripe.0[slot].swap(0, Relaxed);
                // What the batches already pushed is in the facade; push the rest.
                self.flush(slot, n % BATCH);
                total += n;
            }
            add(&mut drained, &old.names[slot], total);
        }
        self.labels.store(Arc::new(labels));
    }

    /// Exact evaluation counts by result (`on`, `off`, variant names); zero counts
    /// are left out.
    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        let labels = self.labels.load();
        let mut out = self
            .drained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (slot, name) in labels.names.iter().enumerate() {
            let n: u64 = self.stripes.iter().map(|s| s.0[slot].load(Relaxed)).sum();
            add(&mut out, name, n);
        }
        out.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.into(), n))
            .collect()
    }
}

fn add(totals: &mut Vec<(Box<str>, u64)>, name: &str, n: u64) {
    match totals.iter_mut().find(|(k, _)| &**k == name) {
        Some((_, t)) => *t += n,
        None => totals.push((name.into(), n)),
    }
}
