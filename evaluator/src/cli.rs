//! Command-line interface: the subcommands of `pbflags-evaluator` and their arguments.
//!
//! Parsing only; each subcommand's work lives in its own module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The pbflags evaluator: serves flags defined as protobuf options.
#[derive(Debug, Parser)]
#[command(name = "pbflags-evaluator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse a descriptor set and list its flags, with warnings for anything suspicious.
    Descriptors(DescriptorsArgs),
}

/// Arguments of `descriptors`.
#[derive(Debug, clap::Args)]
pub struct DescriptorsArgs {
    /// The descriptor set (`buf build -o descriptors.pb`, or `protoc --include_imports -o`).
    #[arg(long, env = "PBFLAGS_DESCRIPTORS")]
    pub descriptors: PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}
