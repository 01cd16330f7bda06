//! Live settings: a registry of named policies fed by sources, published as snapshots.
//!
//! A [`Substation`] holds every policy of an application. Its settings come in layers,
//! each overriding the one before it field by field: the library defaults, the code
//! defaults given to the [`Builder`], the fleet's [`Scope::Shared`] values, and the
//! application's own [`Scope::App`] values. [`Source`]s push [`Update`]s into the
//! registry; each update is applied as **one** atomic swap of the published
//! [`Snapshot`] (readers load it lock-free), and each policy touched by it gets its new
//! settings before the swap is visible.
//!
//! Every key is validated alone. A malformed or out-of-range value is rejected for that
//! key only: its last good value stays in force, the reason is logged (`warn`, with key
//! and revision), counted (`substation_settings_rejected_total`) and readable from
//! [`Snapshot::rejected`]. A deleted key falls back to the next layer, and says so in the
//! log.
//!
//! Each layer is validated merged with the layers below it, never the ones above, so the
//! outcome does not depend on write order. A value in form but invalid over the layers
//! below ([`RejectionKind::Invalid`]) is kept and takes effect by itself once a change
//! below makes it valid; a value in force that a change below breaks
//! ([`RejectionKind::Conflict`]) is left out until a change makes it valid again.
//!
//! ```
//! use substation::{Substation, live::InMemorySource, settings::PolicySettings};
//!
//! let source = InMemorySource::new();
//! let substation = Substation::builder()
//!     .policy("recommendations", PolicySettings::default())
//!     .source(source.clone())
//!     .build()
//!     .unwrap();
//! let policy = substation.policy("recommendations");
//!
//! source.put("policies/recommendations", r#"{"timeout": {"ms": 150}}"#).unwrap();
//! assert_eq!(policy.settings().timeout.ms, Some(150));
//!
//! let err = source.put("policies/recommendations", r#"{"timeout": {"ms": 0}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "timeout.ms: 0 is not in 1..=3600000");
//! assert_eq!(policy.settings().timeout.ms, Some(150), "last good value kept");
//! assert_eq!(substation.snapshot().rejected().count(), 1);
//!
//! source.delete("policies/recommendations");
//! assert_eq!(policy.settings().timeout.ms, Some(1000), "back to the code default");
//! ```

// Files: `registry.rs` (`Substation`, `Builder`, `Snapshot`), `error.rs` (`BuildError`),
// `writer.rs` (the layers of stored values, validation key by key, rejections, applying
// an `Update`), `handles.rs` (weak handles to the policies and switches in use),
// `merge.rs` (layers merged field by field), `source.rs` (the `Source` / `Sink` seam),
// `memory.rs` (`InMemorySource`), `check.rs` (the registry's validation for tools such
// as the `substation` CLI) and `etcd/` (with `presence.rs`, fleet presence).

pub mod check;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod handles;
mod memory;
mod merge;
mod registry;
mod source;
mod writer;

pub use self::error::{BuildError, NameKind};
pub use self::memory::InMemorySource;
pub use self::registry::{Builder, Changed, Snapshot, Substation};
pub use self::source::{
    Change, Closed, Entries, Health, Key, Rejection, RejectionKind, Scope, Sink, Source, Store,
    Update, UpdateFn, valid_name,
};

/// The default instance id: the host name and the process id, with any character
/// outside `A-Z a-z 0-9 _ . -` replaced by `-`, its last 128 characters.
pub(crate) fn default_instance_id() -> String {
    let id = format!("{}-{}", host_name(), std::process::id());
    let id: Vec<char> = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    id[id.len().saturating_sub(128)..].iter().collect()
}

/// This machine's host name (`unknown` if it cannot be read).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
