//! Benchmarks for substation live in this crate's bench targets.
