//! The pbflags evaluator: flags defined as protobuf options, evaluated over gRPC, gRPC-Web and
//! Connect from PostgreSQL (root mode) or an upstream evaluator (proxy mode).
//!
//! # Module map
//!
//! | module | role |
//! | --- | --- |
//! | [`app`] | the binary's wiring: arguments, configuration, logging, the subcommands, `serve` |
//! | [`server`] | the one listener: gRPC, gRPC-Web, Connect, health, metrics, TLS |
//! | [`reload`] | background tasks that keep inputs fresh: the descriptor file, the kill set, and the one file-watching mechanism (also used for TLS certificates) |
//! | [`sources`] | where state comes from: PostgreSQL ([`sources::pg`]) or an upstream evaluator |
//! | [`protocol`] | wire details shared by the server and the upstream client: the Connect codec and status table, trace context |
//! | [`core`] | descriptors, the registry, the pure precedence rules ([`core::decide`]), the caching engine |
//! | [`metrics`] | the Prometheus registry every layer counts into |
//!
//! # Dependency rule
//!
//! Dependencies point one way, down this list: `app` → `server` → `reload`, `sources` →
//! `protocol` → `core` → `metrics` (modules of one rank, such as `reload` and `sources`, do not
//! name each other). A module never names one above it; `tests/layers.rs` checks
//! this on the sources. [`core::decide`] depends on nothing but the flag definitions and the
//! protobuf types: no async, no clock, no metrics.

pub mod app;
pub mod core;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod sources;
