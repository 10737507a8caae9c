//! The integration tests, one binary with one module per area (as ripgrep
//! does), so the shared harness in `common` is compiled once. Every test
//! drives the real binary against real PostgreSQL servers.
//!
//! Run one area with `scripts/test --test it tls::`, one test with
//! `scripts/test --test it tls::client_certificate_authentication`.

mod common;

mod backup;
mod data_kinds;
mod delta;
mod faults;
mod harness_smoke;
mod incremental;
mod memory;
mod sources;
mod tar_format;
mod tls;
mod verify;
mod versions;
