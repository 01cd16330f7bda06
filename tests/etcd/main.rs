//! Live settings from a real etcd: single node and 3-node clusters started by the tests
//! on random loopback ports, broken in every way an operator meets.

#![cfg(feature = "etcd")]

mod common;
mod experiment;
mod faults;
mod harness;
mod liveness;
mod logs;
mod presence;
mod proxy;
mod security;
mod startup;
mod support;
mod watch;
