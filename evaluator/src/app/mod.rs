//! The binary's wiring: arguments ([`cli`]), configuration ([`config`]), logging and tracing
//! ([`logging`]), the database subcommands ([`commands`]), the `descriptors` subcommand
//! ([`descriptors`]) and `serve` ([`serve`]), which assembles the layers below.

pub mod cli;
pub mod commands;
pub mod config;
pub mod descriptors;
pub mod logging;
pub mod remote;
pub mod serve;
