//! pgrouter's integration tests, in one binary: a module per topic, most on
//! real local clusters the test kit starts (see `support`). Run one topic
//! with a filter, e.g. `cargo test --test it -- routing::`.
//!
//! Two tests are binaries of their own, because each changes something
//! process-wide: `tests/alloc.rs` installs a counting global allocator, and
//! `tests/metrics.rs` (with the `metrics` feature) installs the global
//! metrics recorder, which every manager built after it would record into.

mod support;

mod aurora;
mod axum_service;
mod capabilities;
mod config_extremes;
mod containers;
mod credentials;
mod deadlines;
mod dedicated;
mod env_regions;
mod failover;
mod freshness;
mod health;
mod hedging;
mod lifecycle;
mod outcomes;
mod pgbouncer;
mod pool_lifetimes;
mod repository;
mod routing;
mod spans;
mod sslmode;
mod testcontainers;
mod tls;
mod transactions;
mod writes;
mod written_reads;
