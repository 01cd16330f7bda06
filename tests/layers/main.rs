//! Behaviour of the layers as a user meets it: real tower services, live settings.

mod breaker;
mod fallback;
mod experiment;
mod fault;
mod live;
mod metrics;
mod ownership;
mod readiness;
mod retry;
mod stats;
mod support;
mod timeout;
