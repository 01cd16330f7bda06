//! A source held in memory: for tests, demos and applications without a store.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::source::{Change, Key, Scope, Sink, Source, Store, Update, UpdateFn};
use crate::BoxError;
use crate::settings::{PolicySettings, SettingsError};

/// A [`Source`] whose values are set from code: a test flips a breaker mode or a
/// timeout, a demo moves a setting. Changes made after the registry is built apply
/// synchronously — when `put` returns, every layer built from the policy sees the new
/// value. Cheap to clone; clones share the same values.
///
/// ```
/// use substation::{Substation, live::InMemorySource};
///
/// let source = InMemorySource::new();
/// let substation = Substation::builder().source(source.clone()).build().unwrap();
/// source.put("policies/search", r#"{"breaker": {"mode": "force_open"}}"#).unwrap();
/// assert_eq!(substation.snapshot().revision(), 1);
/// ```
#[derive(Clone)]
pub struct InMemorySource {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    layer: Scope,
    sink: Option<Sink>,
    pending: Vec<Change>,
    revision: u64,
    /// What each key holds (for [`Store::update`]).
    values: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for InMemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("InMemorySource")
            .field("layer", &inner.layer)
            .field("revision", &inner.revision)
            .finish_non_exhaustive()
    }
}

impl Default for InMemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemorySource {
    /// A source of the application's own values ([`Scope::App`]).
    pub fn new() -> Self {
        Self::for_layer(Scope::App)
    }

    /// A source of fleet-wide defaults ([`Scope::Shared`]).
    pub fn shared_defaults() -> Self {
        Self::for_layer(Scope::Shared)
    }

    fn for_layer(layer: Scope) -> Self {
        InMemorySource {
            inner: Arc::new(Mutex::new(Inner {
                layer,
                sink: None,
                pending: Vec::new(),
                revision: 0,
                values: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `json` under `key` (e.g. `policies/recommendations`). Once the registry
    /// is built, returns the rejection if the value is invalid (the key keeps its last
    /// good value); before, the value waits and is validated at build time.
    pub fn put(&self, key: &str, json: &str) -> Result<(), SettingsError> {
        Key::parse(key)?;
        self.send(key.to_owned(), Some(json.as_bytes().to_vec()))
    }

    /// Stores a policy's settings (serialized to JSON).
    pub fn put_policy(&self, name: &str, settings: &PolicySettings) -> Result<(), SettingsError> {
        let json =
            serde_json::to_vec(settings).map_err(|e| SettingsError::new("", e.to_string()))?;
        let key = format!("policies/{name}");
        Key::parse(&key)?;
        self.send(key, Some(json))
    }

    /// Deletes `key`: the policy falls back to the next layer. Unknown keys are ignored.
    pub fn delete(&self, key: &str) {
        let _ = self.send(key.to_owned(), None);
    }

    fn send(&self, key: String, value: Option<Vec<u8>>) -> Result<(), SettingsError> {
        // The lock is held while applying so that concurrent writers apply in revision
        // order; applying never blocks on I/O.
        let mut inner = self.lock();
        Self::send_locked(&mut inner, key, value)
    }

    fn send_locked(
        inner: &mut Inner,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), SettingsError> {
        match &value {
            Some(v) => drop(inner.values.insert(key.clone(), v.clone())),
            None => drop(inner.values.remove(&key)),
        }
        let change = Change {
            layer: inner.layer,
            key,
            value,
        };
        let Some(sink) = inner.sink.clone() else {
            inner.pending.push(change);
            return Ok(());
        };
        inner.revision += 1;
        let update = Update::Changes {
            revision: inner.revision,
            changes: vec![change],
        };
        match sink.apply(update) {
            Ok(mut rejected) => match rejected.pop() {
                Some(r) => Err(r.error),
                None => Ok(()),
            },
            Err(closed) => Err(SettingsError::new("", closed.to_string())),
        }
    }
}

impl Source for InMemorySource {
    fn start(self: Box<Self>, sink: Sink) -> Result<(), BoxError> {
        let mut inner = self.lock();
        let changes = std::mem::take(&mut inner.pending);
        if !changes.is_empty() {
            inner.revision += 1;
            sink.apply(Update::Changes {
                revision: inner.revision,
                changes,
            })?;
        }
        sink.initialized();
        sink.set_store(&[inner.layer], Arc::new(self.as_ref().clone()))?;
        inner.sink = Some(sink);
        Ok(())
    }
}

impl Store for InMemorySource {
    fn update(
        &self,
        layer: Scope,
        key: &str,
        mut f: UpdateFn,
    ) -> Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>> {
        let result = (|| {
            let mut inner = self.lock();
            if layer != inner.layer {
                return Err(
                    format!("this in-memory source holds the {:?} layer", inner.layer).into(),
                );
            }
            let Some(value) = f(inner.values.get(key).map(Vec::as_slice)) else {
                return Ok(false);
            };
            Self::send_locked(&mut inner, key.to_owned(), Some(value))?;
            Ok(true)
        })();
        Box::pin(std::future::ready(result))
    }
}
