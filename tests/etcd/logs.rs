//! What the library logged: a process-wide `tracing` subscriber that keeps every event of
//! substation's own targets, so that a test can count listings, failures, warnings and
//! errors of its source — the events an operator would see.
//!
//! The subscriber is installed once per process and shared by every test in it (under
//! `cargo test` they run on threads of one process): a test reads only the lines whose
//! `prefix` field is its source's prefix, so each test gives its source a
//! [`unique_prefix`].

#![allow(
    dead_code,
    reason = "each test module uses a different part of the capture"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// One event: its level, its message and its other fields, formatted.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub(crate) level: Level,
    pub(crate) message: String,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Line {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.level, self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

struct Capture;

fn ours(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("substation")
}

impl Subscriber for Capture {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if ours(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        ours(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut line);
        LINES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
}

/// Installs the capture (once per process).
pub(crate) fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(Capture)
            .expect("no other global tracing subscriber in the etcd tests");
    });
}

/// Every line logged so far with `prefix` as its `prefix` field.
pub(crate) fn lines(prefix: &str) -> Vec<Line> {
    LINES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|l| l.field("prefix") == Some(prefix))
        .cloned()
        .collect()
}

/// The lines of `prefix` whose message contains `text`.
pub(crate) fn matching(prefix: &str, text: &str) -> Vec<Line> {
    lines(prefix)
        .into_iter()
        .filter(|l| l.message.contains(text))
        .collect()
}

/// The lines of `prefix` at WARN or ERROR.
pub(crate) fn warnings(prefix: &str) -> Vec<Line> {
    lines(prefix)
        .into_iter()
        .filter(|l| l.level <= Level::WARN)
        .collect()
}

/// How many listings the source of `prefix` has applied.
pub(crate) fn listings(prefix: &str) -> usize {
    matching(prefix, "settings listed from etcd").len()
}

/// How many failed attempts to reach etcd the source of `prefix` has reported (the first
/// of a series is a WARN, the next ones DEBUG).
pub(crate) fn failures(prefix: &str) -> Vec<Line> {
    lines(prefix)
        .into_iter()
        .filter(|l| {
            l.message.contains("etcd unavailable") || l.message.contains("etcd still unavailable")
        })
        .collect()
}

/// `/substation-test/<tag>-<n>-<pid>/`: a prefix no other test of this process uses.
pub(crate) fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "/substation-test/{tag}-{}-{}/",
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

/// Prints `lines`, one a line, for a failed assertion.
pub(crate) fn show(lines: &[Line]) -> String {
    lines.iter().map(|l| format!("\n  {l}")).collect()
}
