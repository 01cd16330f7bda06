//! The etcd source's [`Store`]: compare-and-swap writes of experiment results.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::time::timeout;

use super::EtcdSource;
use super::driver::connect;
use crate::BoxError;
use crate::live::source::{Scope, Store, UpdateFn};

/// How many times a write is tried again when the key changed under it.
const ATTEMPTS: usize = 8;

/// Writes with the source's settings (endpoints, user, TLS) through a client of its
/// own, connected on first use and replaced after an error. Every request is bounded
/// by the source's request timeout.
pub(super) struct EtcdStore(Arc<Inner>);

struct Inner {
    cfg: EtcdSource,
    client: Mutex<Option<Client>>,
}

impl EtcdStore {
    pub(super) fn new(cfg: EtcdSource) -> Arc<EtcdStore> {
        Arc::new(EtcdStore(Arc::new(Inner {
            cfg,
            client: Mutex::new(None),
        })))
    }
}

impl Inner {
    async fn client(&self) -> Result<Client, BoxError> {
        let held = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(c) = held {
            return Ok(c);
        }
        let c = connect(&self.cfg).await?;
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    async fn update_at(&self, full: String, mut f: UpdateFn) -> Result<bool, BoxError> {
        let mut client = self.client().await?;
        let out = self.attempts(&mut client, &full, &mut f).await;
        if out.is_err() {
            // Connect again next time (etcd may have moved or restarted).
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        out
    }

    async fn attempts(
        &self,
        client: &mut Client,
        full: &str,
        f: &mut UpdateFn,
    ) -> Result<bool, BoxError> {
        let limit = self.cfg.request_timeout;
        for _ in 0..ATTEMPTS {
            let got = timeout(limit, client.get(full.as_bytes(), None))
                .await
                .map_err(|_| "reading from etcd timed out")??;
            let (current, revision) = match got.kvs().first() {
                Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
                None => (None, 0),
            };
            let Some(value) = f(current.as_deref()) else {
                return Ok(false);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    full.as_bytes(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(full.as_bytes(), value, None)]);
            let done = timeout(limit, client.txn(txn))
                .await
                .map_err(|_| "writing to etcd timed out")??;
            if done.succeeded() {
                return Ok(true);
            }
        }
        Err(format!("{full:?} kept changing under {ATTEMPTS} compare-and-swap attempts").into())
    }
}

impl Store for EtcdStore {
    fn update(
        &self,
        layer: Scope,
        key: &str,
        f: UpdateFn,
    ) -> Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>> {
        let Some(prefix) = self.0.cfg.prefix_of(layer) else {
            return Box::pin(std::future::ready(Err(
                "the etcd source has no shared prefix".into(),
            )));
        };
        let full = format!("{prefix}{key}");
        let inner = self.0.clone();
        Box::pin(async move { inner.update_at(full, f).await })
    }
}
