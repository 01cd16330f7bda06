//! Behaviour of the layers as a user meets it: real tower services, live settings.

mod breaker;
mod experiment;
mod experiment_hops;
mod fallback;
mod fault;
mod live;
mod metrics;
mod ownership;
mod readiness;
mod retry;
mod stats;
mod support;
mod timeout;
