//! The pbflags evaluator: descriptor parsing, the flag registry and its hot reload, the evaluation
//! engine, and the sources and servers around it.

pub mod cli;
pub mod commands;
pub mod config;
pub mod descriptor;
pub mod engine;
pub mod list;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod poller;
pub mod registry;
pub mod serve;
pub mod server;
pub mod trace_context;
pub mod upstream;
pub mod watcher;
