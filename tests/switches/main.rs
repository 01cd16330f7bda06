//! Feature switches as a user meets them: bucketing properties over many keys, flagd's
//! published vectors, live flips through the in-memory source and a real etcd, routing
//! under load, metrics, and the OpenFeature provider.

mod bucketing;
#[cfg(feature = "etcd")]
mod etcd;
mod flagd;
mod live;
mod metrics;
#[cfg(feature = "openfeature")]
mod openfeature;
mod route;
#[cfg(feature = "etcd")]
#[path = "../etcd/support.rs"]
mod support;
