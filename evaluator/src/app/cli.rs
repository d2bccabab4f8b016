//! Command-line interface: the subcommands of `pbflags-evaluator` and their arguments.
//!
//! Parsing only; each subcommand's work lives in its own module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::sources::pg::db::DatabaseArgs;

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
    /// Serve flag evaluations (gRPC, gRPC-Web and Connect on one port), in root or proxy mode.
    Serve(Box<crate::app::config::ServeArgs>),
    /// Parse a descriptor set and list its flags, with warnings for anything suspicious.
    Descriptors(DescriptorsArgs),
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Write flag definitions from descriptors into the database (one transaction).
    Sync(SyncArgs),
    /// Read and change flags: state, kills, overrides, audit log.
    Flags(FlagsArgs),
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
    /// Also write the outcome as one JSON line to this file (e.g. `/dev/termination-log` in a
    /// Kubernetes Job): `{"accepted":true,"sha256":…,"flags":N}` or
    /// `{"accepted":false,"reason":…}`.
    #[arg(long, env = "PBFLAGS_REPORT")]
    pub report: Option<PathBuf>,
}

/// Arguments of `migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The database.
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Arguments of `sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The descriptor set to sync.
    #[arg(long, env = "PBFLAGS_DESCRIPTORS")]
    pub descriptors: PathBuf,
    /// Apply breaking changes (type changes, layer changes) instead of refusing them.
    #[arg(long)]
    pub allow_breaking: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the outcome as one JSON line to this file (e.g. `/dev/termination-log` in a
    /// Kubernetes Job): `{"accepted":true,"sha256":…,"flags":N}` or
    /// `{"accepted":false,"reason":…}`.
    #[arg(long, env = "PBFLAGS_REPORT")]
    pub report: Option<PathBuf>,
    /// The database.
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// Arguments of `flags`.
#[derive(Debug, clap::Args)]
pub struct FlagsArgs {
    /// Who makes the change, for the audit log (default: the OS user).
    #[arg(long, env = "PBFLAGS_ACTOR", global = true)]
    pub actor: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The database.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// A root's admin API (`--admin-listen`) instead of a database, e.g. `http://127.0.0.1:9200`
    /// after `kubectl port-forward svc/NAME-admin 9200`.
    #[arg(long, env = "PBFLAGS_ADMIN_SERVER", global = true)]
    pub server: Option<String>,
    /// File holding the admin token (`--server`): its first non-empty line.
    #[arg(long, env = "PBFLAGS_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA bundle an https:// `--server` is checked against [default: the system trust store].
    #[arg(long, env = "PBFLAGS_ADMIN_SERVER_CA", global = true)]
    pub server_ca: Option<std::path::PathBuf>,
    /// The action.
    #[command(subcommand)]
    pub action: FlagsAction,
}

/// Actions of `flags`.
#[derive(Debug, Subcommand)]
pub enum FlagsAction {
    /// List every flag with its state and value.
    List,
    /// Show one flag and its overrides.
    Get {
        /// Flag id, e.g. `notifications/1`.
        flag_id: String,
    },
    /// Enable a flag with a value (parsed against the flag's type).
    Set {
        /// Flag id.
        flag_id: String,
        /// The value: true/false, an integer, a number or a string.
        #[arg(long, allow_hyphen_values = true)]
        value: String,
    },
    /// Return a flag to its compiled default (state DEFAULT, value cleared).
    Default {
        /// Flag id.
        flag_id: String,
    },
    /// Kill a flag globally: every evaluation returns the compiled default.
    Kill {
        /// Flag id.
        flag_id: String,
    },
    /// Undo a kill: ENABLED with the stored value if there is one, else DEFAULT.
    Unkill {
        /// Flag id.
        flag_id: String,
    },
    /// Per-entity overrides.
    #[command(subcommand)]
    Override(OverrideAction),
    /// Show the audit log, newest first.
    Audit {
        /// Only this flag.
        flag_id: Option<String>,
        /// How many entries (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// Actions of `flags override`.
#[derive(Debug, Subcommand)]
pub enum OverrideAction {
    /// Set an override: with `--value`, ENABLED with that value; with `--default`, the compiled default.
    Set {
        /// Flag id.
        flag_id: String,
        /// Entity id.
        entity_id: String,
        /// The value for this entity.
        #[arg(long, allow_hyphen_values = true, required_unless_present = "default")]
        value: Option<String>,
        /// Serve the compiled default to this entity.
        #[arg(long, conflicts_with = "value")]
        default: bool,
    },
    /// Remove an override.
    Rm {
        /// Flag id.
        flag_id: String,
        /// Entity id.
        entity_id: String,
    },
}
