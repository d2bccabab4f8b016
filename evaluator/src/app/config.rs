//! Configuration of `serve`: command-line flags, `PBFLAGS_*` environment variables and an optional
//! YAML file with pbflags v0.6's keys, merged with precedence flag > environment > file > default,
//! then validated into an immutable [`Config`] before any port is bound or database touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::app::logging::{LogFormat, Tracing};
use crate::core::cache::CacheConfig;
use crate::server::conn::Limits as ConnLimits;
use crate::server::service::IdLimits;
use crate::server::tls::TlsFiles;
use crate::sources::pg::db::DatabaseArgs;
use crate::sources::upstream::{UpstreamCa, UpstreamProtocol};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a duration like 500ms, 30s or 5m)"))
}

/// Arguments of `serve`, in groups. Every setting is optional here so the file can fill what flags
/// and the environment leave unset; defaults are applied last.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// YAML configuration file (keys of pbflags v0.6: descriptors, server, listen, database, cache.*).
    #[arg(long, env = "PBFLAGS_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to serve and where state comes from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Caches.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The listener and its limits.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// TLS on the listener.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The descriptors, and the state source: a database (root mode) or an upstream (proxy mode).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// The descriptor set to serve (hot-reloaded).
    #[arg(long, env = "PBFLAGS_DESCRIPTORS")]
    pub descriptors: Option<PathBuf>,
    /// Upstream evaluator base URL (proxy mode), e.g. `http://pbflags-root:9201`.
    #[arg(long, visible_alias = "upstream", env = "PBFLAGS_SERVER")]
    pub server: Option<String>,
    /// Protocol of the upstream calls in proxy mode: connect is binary proto over HTTP/1.1, as v0.6
    /// proxies call; grpc is HTTP/2.
    #[arg(long, env = "PBFLAGS_UPSTREAM_PROTOCOL", value_enum, default_value_t)]
    pub upstream_protocol: UpstreamProtocol,
    /// PEM bundle of the CAs an https:// upstream is checked against [default: the system trust
    /// store].
    #[arg(long, env = "PBFLAGS_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// A missing `--upstream-ca` file means the system trust store, not an error: for a mounted
    /// TLS Secret that may or may not have a `ca.crt` (the operator sets it).
    #[arg(long, env = "PBFLAGS_UPSTREAM_CA_OPTIONAL", requires = "upstream_ca")]
    pub upstream_ca_optional: bool,
    /// Apply database migrations before serving (root mode).
    #[arg(long, env = "PBFLAGS_MIGRATE")]
    pub migrate: bool,
    /// Follow changes as they are made, so kills, states and overrides reach the caches at once
    /// (root: PostgreSQL's notifications; proxy: the upstream's change stream); `false` leaves
    /// changes to the TTLs.
    #[arg(long, env = "PBFLAGS_CHANGE_NOTIFICATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub change_notifications: bool,
    /// Most subscribers of this evaluator's change stream (`WatchChanges`) at a time; more are
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PBFLAGS_MAX_WATCHERS", default_value_t = crate::core::engine::DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// Root mode: serve `FlagAdminService` (pbflags v0.6's admin API) on this address, apart from
    /// the evaluation listener [default: off].
    #[arg(long, env = "PBFLAGS_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// The admin listener's bearer tokens: lines of `NAME ROLE TOKEN`, role `viewer` or `editor`
    /// (followed like the TLS files). Without it the admin listener must be bound to loopback.
    #[arg(long, env = "PBFLAGS_ADMIN_TOKEN_FILE", requires = "admin_listen")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin web UI's banner: the environment's name, e.g. `production` [default: no banner].
    #[arg(long, env = "PBFLAGS_ENV_NAME")]
    pub env_name: Option<String>,
    /// The banner's colour (`#rgb`, `#rrggbb` or a CSS colour name) [default: derived from the
    /// name: red for prod…, amber for staging…, green for dev…].
    #[arg(long, env = "PBFLAGS_ENV_COLOR")]
    pub env_color: Option<String>,
    /// Let a reloaded descriptor set that declares no flags replace one that declares some (by
    /// default such a set is refused as a likely truncated file).
    #[arg(long, env = "PBFLAGS_ALLOW_EMPTY_DESCRIPTORS")]
    pub allow_empty_descriptors: bool,
    /// The database (root mode).
    #[command(flatten)]
    pub db: DatabaseArgs,
}

/// The `cache:` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Kill-set poll interval [default: 30s].
    #[arg(long, env = "PBFLAGS_CACHE_KILL_TTL", value_parser = duration)]
    pub kill_ttl: Option<Duration>,
    /// Flag state cache TTL [default: 5m].
    #[arg(long, env = "PBFLAGS_CACHE_FLAG_TTL", value_parser = duration)]
    pub flag_ttl: Option<Duration>,
    /// Override cache TTL [default: 5m].
    #[arg(long, env = "PBFLAGS_CACHE_OVERRIDE_TTL", value_parser = duration)]
    pub override_ttl: Option<Duration>,
    /// Override cache capacity [default: 10000].
    #[arg(long, env = "PBFLAGS_CACHE_OVERRIDE_MAX_ENTRIES")]
    pub override_max_entries: Option<u64>,
    /// ± jitter on cache TTLs, percent [default: 20].
    #[arg(long, env = "PBFLAGS_CACHE_JITTER_PERCENT")]
    pub jitter_percent: Option<u32>,
    /// Timeout of one source call [default: 500ms].
    #[arg(long, env = "PBFLAGS_CACHE_FETCH_TIMEOUT", value_parser = duration)]
    pub fetch_timeout: Option<Duration>,
    /// Capacity of each last-known-value store [default: 100000].
    #[arg(long, env = "PBFLAGS_CACHE_LAST_KNOWN_MAX_ENTRIES")]
    pub last_known_max_entries: Option<u64>,
    /// Bytes all caches together may hold, ids and values included [default: 67108864 (64 MiB)].
    #[arg(long, env = "PBFLAGS_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,
}

/// The listener, request limits, shutdown and reload timing, the runtime.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Listen address for gRPC, gRPC-Web, Connect, /metrics and health [default: localhost:9201].
    #[arg(long, env = "PBFLAGS_LISTEN")]
    pub listen: Option<String>,
    /// Largest accepted request body, bytes [default: 4194304].
    #[arg(long, env = "PBFLAGS_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most flag ids in one BulkEvaluate [default: 1000].
    #[arg(long, env = "PBFLAGS_MAX_BULK_FLAGS")]
    pub max_bulk_flags: Option<usize>,
    /// How long in-flight requests may take to finish at shutdown [default: 10s].
    #[arg(long, env = "PBFLAGS_SHUTDOWN_TIMEOUT", value_parser = duration)]
    pub shutdown_timeout: Option<Duration>,
    /// How long to keep serving after a shutdown signal, not ready, before draining: the time load
    /// balancers (Kubernetes endpoints) need to stop sending new connections [default: 0s; the
    /// operator sets 5s].
    #[arg(long, env = "PBFLAGS_SHUTDOWN_DELAY", value_parser = duration)]
    pub shutdown_delay: Option<Duration>,
    /// How often the descriptor file's hash is compared [default: 30s].
    #[arg(long, env = "PBFLAGS_DESCRIPTOR_POLL_INTERVAL", value_parser = duration)]
    pub descriptor_poll_interval: Option<Duration>,
    /// Runtime worker threads; 1 runs everything on one thread (the least CPU per request)
    /// [default: the CPUs available to the process, cgroup quota included].
    #[arg(long, env = "PBFLAGS_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Longest wait for a request's HTTP/1.1 headers [default: 10s].
    #[arg(long, env = "PBFLAGS_HEADER_READ_TIMEOUT", value_parser = duration)]
    pub header_read_timeout: Option<Duration>,
    /// Longest wait for a complete request body [default: 10s].
    #[arg(long, env = "PBFLAGS_BODY_READ_TIMEOUT", value_parser = duration)]
    pub body_read_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed [default: 120s].
    #[arg(long, env = "PBFLAGS_IDLE_TIMEOUT", value_parser = duration)]
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval to find dead peers [default: 30s].
    #[arg(long, env = "PBFLAGS_HTTP2_KEEPALIVE_INTERVAL", value_parser = duration)]
    pub http2_keepalive_interval: Option<Duration>,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed [default: 20s].
    #[arg(long, env = "PBFLAGS_HTTP2_KEEPALIVE_TIMEOUT", value_parser = duration)]
    pub http2_keepalive_timeout: Option<Duration>,
    /// Most client connections served at once; more are closed on accept [default: 10000].
    #[arg(long, env = "PBFLAGS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest flag id accepted, bytes [default: 256].
    #[arg(long, env = "PBFLAGS_MAX_FLAG_ID_BYTES")]
    pub max_flag_id_bytes: Option<usize>,
    /// Longest entity id accepted, bytes [default: 1024].
    #[arg(long, env = "PBFLAGS_MAX_ENTITY_ID_BYTES")]
    pub max_entity_id_bytes: Option<usize>,
}

/// TLS on the listener.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve TLS with (needs --tls-key); unset: cleartext.
    #[arg(long, env = "PBFLAGS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PBFLAGS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the TLS files (and a `--database-file`) are checked for changes, behind file
    /// events [default: 10s].
    #[arg(long, env = "PBFLAGS_TLS_POLL_INTERVAL", value_parser = duration)]
    pub tls_poll_interval: Option<Duration>,
}

/// Logs and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "PBFLAGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter, e.g. info or pbflags_evaluator=debug [default: info].
    #[arg(long, env = "PBFLAGS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// OTLP/gRPC endpoint for traces (the standard variable); unset: no trace export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of traces sampled, 0 to 1 (parent-based) [default: 1].
    #[arg(long, env = "PBFLAGS_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

/// The YAML file. Unknown keys are errors, except v0.6's admin-UI keys, which are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    descriptors: Option<PathBuf>,
    server: Option<String>,
    listen: Option<String>,
    database: Option<String>,
    #[serde(default)]
    cache: FileCache,
    #[serde(default)]
    tls: FileTls,
    admin: Option<serde_yaml_ng::Value>,
    env_name: Option<String>,
    env_color: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    kill_ttl: Option<String>,
    flag_ttl: Option<String>,
    override_ttl: Option<String>,
    override_max_entries: Option<u64>,
    jitter_percent: Option<u32>,
    fetch_timeout: Option<String>,
    last_known_max_entries: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    poll_interval: Option<String>,
}

/// Where state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PostgreSQL.
    Root,
    /// An upstream evaluator at this base URL.
    Proxy(String),
}

/// The validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Descriptor file.
    pub descriptors: PathBuf,
    /// Root or proxy.
    pub mode: Mode,
    /// Listen address as given (host:port).
    pub listen: String,
    /// Database settings (root mode).
    pub db: DatabaseArgs,
    /// Run migrations first.
    pub migrate: bool,
    /// A reloaded set without flags may replace one with flags.
    pub allow_empty_descriptors: bool,
    /// Follow changes as they are made (root: PostgreSQL; proxy: the upstream's stream).
    pub change_notifications: bool,
    /// Most change stream subscribers.
    pub max_watchers: usize,
    /// The admin listener, if on.
    pub admin: Option<Admin>,
    /// Cache settings.
    pub cache: CacheConfig,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Most ids per BulkEvaluate.
    pub max_bulk_flags: usize,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// Time served not-ready after a shutdown signal, before the drain.
    pub shutdown_delay: Duration,
    /// Descriptor hash poll interval.
    pub descriptor_poll_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Trace export.
    pub tracing: Tracing,
    /// Protocol of upstream calls (proxy mode).
    pub upstream_protocol: UpstreamProtocol,
    /// CAs for an https:// upstream (proxy mode).
    pub upstream_ca: UpstreamCa,
    /// TLS certificate files; `None` serves cleartext.
    pub tls: Option<TlsFiles>,
    /// TLS file check interval.
    pub tls_poll_interval: Duration,
    /// Runtime worker threads (1: a single-threaded runtime).
    pub worker_threads: usize,
    /// Timeouts and the connection cap.
    pub connections: ConnLimits,
    /// Longest flag and entity ids accepted.
    pub ids: IdLimits,
    /// Keys of the configuration file that v0.6 used and this evaluator ignores (the admin UI's).
    pub ignored_keys: Vec<&'static str>,
}

/// A setting that is missing or invalid; the message names it. Exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(setting: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{setting}: {why}"))
}

fn at_least_one(setting: &str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(bad(setting, "must be at least 1")),
        v => Ok(v.unwrap_or(default)),
    }
}

fn file_duration(key: &str, v: Option<&String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| duration(s).map_err(|e| bad(&format!("cache.{key} (config file)"), e)))
        .transpose()
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("--config", format!("{}: {e}", path.display())))?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| bad("--config", format!("{}: {e}", path.display())))
}

impl ServeArgs {
    /// Merges flags and environment (already in `self`) over the file over defaults, and validates
    /// each group.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        self.resolve_over(file)
    }

    /// Like [`ServeArgs::resolve`], with `text` as the content of the configuration file (for
    /// tests and the configuration fuzz target).
    pub fn resolve_with_file_text(&self, text: &str) -> Result<Config, ConfigError> {
        self.resolve_over(parse_file(text, Path::new("<text>"))?)
    }

    fn resolve_over(&self, file: FileConfig) -> Result<Config, ConfigError> {
        // v0.6's `admin` key (an admin listener without authentication) is accepted and ignored;
        // logged once logging runs (see `serve`).
        let ignored_keys = file.admin.iter().map(|_| "admin").collect();
        let source = self.source.resolve(&file)?;
        let admin = self.source.admin(&source.mode, &file)?;
        let listener = self.listener.resolve(&file)?;
        let telemetry = self.telemetry.resolve()?;
        let (tls, tls_poll_interval) = self.tls.resolve(&file.tls)?;
        Ok(Config {
            descriptors: source.descriptors,
            mode: source.mode,
            db: source.db,
            migrate: self.source.migrate,
            allow_empty_descriptors: self.source.allow_empty_descriptors,
            change_notifications: self.source.change_notifications,
            max_watchers: self.source.max_watchers,
            admin,
            upstream_protocol: self.source.upstream_protocol,
            upstream_ca: source.upstream_ca,
            cache: self.cache.resolve(&file.cache)?,
            listen: listener.listen,
            max_request_bytes: listener.max_request_bytes,
            max_bulk_flags: listener.max_bulk_flags,
            shutdown_timeout: listener.shutdown_timeout,
            shutdown_delay: listener.shutdown_delay,
            descriptor_poll_interval: listener.descriptor_poll_interval,
            worker_threads: listener.worker_threads,
            connections: listener.connections,
            ids: listener.ids,
            ignored_keys,
            tls,
            tls_poll_interval,
            log_format: self.telemetry.log_format,
            log_level: telemetry.0,
            tracing: telemetry.1,
        })
    }
}

/// The admin listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where it listens.
    pub listen: String,
    /// The token file; `None` only on a loopback address.
    pub token_file: Option<PathBuf>,
    /// The web UI's environment banner.
    pub banner: Option<crate::server::ui::Banner>,
}

impl SourceArgs {
    fn admin(&self, mode: &Mode, file: &FileConfig) -> Result<Option<Admin>, ConfigError> {
        let Some(listen) = self.admin_listen.clone().filter(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        if *mode != Mode::Root {
            return Err(bad(
                "admin_listen",
                "the admin API is served by a root (with a database), never by a proxy",
            ));
        }
        let addrs = resolve_listen(&listen).map_err(|e| bad("admin_listen", e))?;
        if let Some(f) = &self.admin_token_file {
            crate::server::tokens::Tokens::open(f).map_err(|e| bad("admin_token_file", e))?;
        } else if !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(bad(
                "admin_listen",
                format!(
                    "{listen} is not a loopback address: the admin API changes flags, so it needs \
                     --admin-token-file (or bind it to 127.0.0.1)"
                ),
            ));
        }
        let name = self.env_name.as_ref().or(file.env_name.as_ref());
        let color = self.env_color.as_ref().or(file.env_color.as_ref());
        let banner = name
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| crate::server::ui::Banner::new(n, color.map(String::as_str)))
            .transpose()
            .map_err(|e| bad("env_color", e))?;
        Ok(Some(Admin {
            listen,
            token_file: self.admin_token_file.clone(),
            banner,
        }))
    }
}

/// What [`SourceArgs`] resolve to.
struct Source {
    descriptors: PathBuf,
    mode: Mode,
    db: DatabaseArgs,
    upstream_ca: UpstreamCa,
}

impl SourceArgs {
    fn resolve(&self, file: &FileConfig) -> Result<Source, ConfigError> {
        let descriptors = self
            .descriptors
            .clone()
            .or_else(|| file.descriptors.clone())
            .ok_or_else(|| bad("descriptors", "required (--descriptors, PBFLAGS_DESCRIPTORS or `descriptors:` in the config file)"))?;
        let mut db = self.db.clone();
        if db.database.is_none() && db.database_file.is_none() {
            db.database.clone_from(&file.database);
        }
        let has_db = db.database.as_deref().is_some_and(|u| !u.trim().is_empty())
            || db.database_file.is_some();
        let server = self
            .server
            .clone()
            .or_else(|| file.server.clone())
            .filter(|s| !s.trim().is_empty());
        let mode = match (has_db, server) {
            (true, Some(_)) => {
                return Err(bad(
                    "database / server",
                    "set one: a database (root mode) or an upstream server (proxy mode), not both",
                ));
            }
            (true, None) => Mode::Root,
            (false, Some(url)) => Mode::Proxy(upstream_url(&url)?),
            (false, None) => {
                return Err(bad(
                    "database / server",
                    "one is required: a database (root mode) or an upstream server (proxy mode)",
                ));
            }
        };
        if mode == Mode::Root {
            db.validate().map_err(|e| bad("database", e))?;
        }
        if self.migrate && mode != Mode::Root {
            return Err(bad("--migrate", "needs a database (root mode)"));
        }
        let upstream_ca = match (&self.upstream_ca, &mode) {
            (None, _) => UpstreamCa::System,
            (Some(path), Mode::Proxy(url))
                if url.starts_with("https://") && self.upstream_ca_optional && !path.exists() =>
            {
                UpstreamCa::System
            }
            (Some(path), Mode::Proxy(url)) if url.starts_with("https://") => {
                let ca = UpstreamCa::File(path.clone());
                crate::sources::upstream::roots(&ca).map_err(|e| bad("upstream_ca", e))?;
                ca
            }
            (Some(_), _) => {
                return Err(bad("upstream_ca", "only used with an https:// server"));
            }
        };
        Ok(Source {
            descriptors,
            mode,
            db,
            upstream_ca,
        })
    }
}

/// An upstream base URL: http:// or https:// with a host; the trailing slash is dropped.
fn upstream_url(url: &str) -> Result<String, ConfigError> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| bad("server", format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
        return Err(bad(
            "server",
            format!("{url:?} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

impl CacheArgs {
    fn resolve(&self, fc: &FileCache) -> Result<CacheConfig, ConfigError> {
        let d = CacheConfig::default();
        let cache = CacheConfig {
            kill_ttl: self
                .kill_ttl
                .or(file_duration("kill_ttl", fc.kill_ttl.as_ref())?)
                .unwrap_or(d.kill_ttl),
            flag_ttl: self
                .flag_ttl
                .or(file_duration("flag_ttl", fc.flag_ttl.as_ref())?)
                .unwrap_or(d.flag_ttl),
            override_ttl: self
                .override_ttl
                .or(file_duration("override_ttl", fc.override_ttl.as_ref())?)
                .unwrap_or(d.override_ttl),
            override_max_entries: self
                .override_max_entries
                .or(fc.override_max_entries)
                .unwrap_or(d.override_max_entries),
            flag_max_entries: d.flag_max_entries,
            jitter_percent: self
                .jitter_percent
                .or(fc.jitter_percent)
                .unwrap_or(d.jitter_percent),
            fetch_timeout: self
                .fetch_timeout
                .or(file_duration("fetch_timeout", fc.fetch_timeout.as_ref())?)
                .unwrap_or(d.fetch_timeout),
            last_known_max_entries: self
                .last_known_max_entries
                .or(fc.last_known_max_entries)
                .unwrap_or(d.last_known_max_entries),
            max_bytes: self.cache_max_bytes.or(fc.max_bytes).unwrap_or(d.max_bytes),
        };
        if cache.max_bytes < 1 << 20 {
            return Err(bad("cache.max_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if cache.kill_ttl < Duration::from_millis(100) {
            return Err(bad(
                "cache.kill_ttl",
                "must be at least 100ms (a zero interval would poll in a tight loop)",
            ));
        }
        if cache.flag_ttl.is_zero() || cache.override_ttl.is_zero() {
            return Err(bad(
                "cache.flag_ttl / cache.override_ttl",
                "must be greater than zero",
            ));
        }
        if cache.override_max_entries == 0 || cache.last_known_max_entries == 0 {
            return Err(bad(
                "cache.override_max_entries / cache.last_known_max_entries",
                "must be at least 1",
            ));
        }
        if cache.jitter_percent > 100 {
            return Err(bad("cache.jitter_percent", "must be between 0 and 100"));
        }
        if cache.fetch_timeout.is_zero() {
            return Err(bad("cache.fetch_timeout", "must be greater than zero"));
        }
        Ok(cache)
    }
}

/// What [`ListenerArgs`] resolve to.
struct Listener {
    listen: String,
    max_request_bytes: usize,
    max_bulk_flags: usize,
    shutdown_timeout: Duration,
    shutdown_delay: Duration,
    descriptor_poll_interval: Duration,
    worker_threads: usize,
    connections: ConnLimits,
    ids: IdLimits,
}

impl ListenerArgs {
    fn resolve(&self, file: &FileConfig) -> Result<Listener, ConfigError> {
        let listen = self
            .listen
            .clone()
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| "localhost:9201".to_owned());
        resolve_listen(&listen).map_err(|e| bad("listen", e))?;
        let max_request_bytes = self.max_request_bytes.unwrap_or(4 << 20);
        let max_bulk_flags = self.max_bulk_flags.unwrap_or(1000);
        if max_request_bytes == 0 || max_bulk_flags == 0 {
            return Err(bad(
                "max_request_bytes / max_bulk_flags",
                "must be at least 1",
            ));
        }
        let descriptor_poll_interval = self
            .descriptor_poll_interval
            .unwrap_or(Duration::from_secs(30));
        if descriptor_poll_interval < Duration::from_millis(100) {
            return Err(bad("descriptor_poll_interval", "must be at least 100ms"));
        }
        let worker_threads = match self.worker_threads {
            Some(0) => return Err(bad("worker_threads", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        };
        Ok(Listener {
            listen,
            max_request_bytes,
            max_bulk_flags,
            shutdown_timeout: self.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
            shutdown_delay: self.shutdown_delay.unwrap_or(Duration::ZERO),
            descriptor_poll_interval,
            worker_threads,
            connections: self.connections()?,
            ids: IdLimits {
                flag_id: at_least_one("max_flag_id_bytes", self.max_flag_id_bytes, 256)?,
                entity_id: at_least_one("max_entity_id_bytes", self.max_entity_id_bytes, 1024)?,
            },
        })
    }

    fn connections(&self) -> Result<ConnLimits, ConfigError> {
        let d = ConnLimits::default();
        let positive = |name: &str, v: Option<Duration>, default: Duration| match v {
            Some(v) if v.is_zero() => Err(bad(name, "must be greater than zero")),
            v => Ok(v.unwrap_or(default)),
        };
        let limits = ConnLimits {
            header_read_timeout: positive(
                "header_read_timeout",
                self.header_read_timeout,
                d.header_read_timeout,
            )?,
            body_read_timeout: positive(
                "body_read_timeout",
                self.body_read_timeout,
                d.body_read_timeout,
            )?,
            idle_timeout: positive("idle_timeout", self.idle_timeout, d.idle_timeout)?,
            keepalive_interval: positive(
                "http2_keepalive_interval",
                self.http2_keepalive_interval,
                d.keepalive_interval,
            )?,
            keepalive_timeout: positive(
                "http2_keepalive_timeout",
                self.http2_keepalive_timeout,
                d.keepalive_timeout,
            )?,
            max_connections: match self.max_connections {
                Some(0) => return Err(bad("max_connections", "must be at least 1")),
                Some(n) if n > tokio::sync::Semaphore::MAX_PERMITS => {
                    return Err(bad("max_connections", "too large"));
                }
                v => v.unwrap_or(d.max_connections),
            },
        };
        Ok(limits)
    }
}

impl TlsArgs {
    /// The certificate files (checked to load) and the file check interval.
    fn resolve(&self, ft: &FileTls) -> Result<(Option<TlsFiles>, Duration), ConfigError> {
        let tls = match (
            self.tls_cert.clone().or_else(|| ft.cert_file.clone()),
            self.tls_key.clone().or_else(|| ft.key_file.clone()),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let files = TlsFiles { cert, key };
                crate::server::tls::load(&files).map_err(|e| bad("tls", e))?;
                Some(files)
            }
            (Some(_), None) => return Err(bad("tls_key", "required with tls_cert")),
            (None, Some(_)) => return Err(bad("tls_cert", "required with tls_key")),
        };
        let poll = match self.tls_poll_interval {
            Some(d) => d,
            None => ft
                .poll_interval
                .as_deref()
                .map(duration)
                .transpose()
                .map_err(|e| bad("tls.poll_interval (config file)", e))?
                .unwrap_or(Duration::from_secs(10)),
        };
        if poll < Duration::from_millis(100) {
            return Err(bad("tls_poll_interval", "must be at least 100ms"));
        }
        Ok((tls, poll))
    }
}

impl TelemetryArgs {
    /// The log filter (checked to parse) and the trace export settings.
    fn resolve(&self) -> Result<(String, Tracing), ConfigError> {
        let log_level = self.log_level.clone().unwrap_or_else(|| "info".to_owned());
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| bad("log_level", e))?;
        let sample_ratio = self.trace_sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(bad("trace_sample_ratio", "must be between 0 and 1"));
        }
        let otlp_endpoint = self.otlp_endpoint.clone().filter(|e| !e.trim().is_empty());
        if let Some(e) = &otlp_endpoint {
            e.parse::<http::Uri>()
                .map_err(|err| bad("otlp_endpoint", format!("{e:?} is not a URL: {err}")))?;
        }
        Ok((
            log_level,
            Tracing {
                otlp_endpoint,
                sample_ratio,
            },
        ))
    }
}

/// Resolves `host:port` (`:9201` means every interface) to socket addresses.
pub fn resolve_listen(listen: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs as _;
    let spec = if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_owned()
    };
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| format!("{listen:?} is not a host:port address ({e})"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{listen:?} resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        let mut all = vec!["t"];
        all.extend_from_slice(argv);
        T::try_parse_from(all).expect("parses").args
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        let s = p.to_string_lossy().into_owned();
        (dir, s)
    }

    #[test]
    fn defaults_match_v0_6() {
        let c = args(&["--descriptors", "d.pb", "--server", "http://root:9201"])
            .resolve()
            .unwrap();
        assert_eq!(c.listen, "localhost:9201");
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.mode, Mode::Proxy("http://root:9201".into()));
    }

    #[test]
    fn the_file_names_tls_files_and_their_problems_are_named() {
        let (_d, path) = file(
            "descriptors: /f.pb\nserver: http://file:1\ntls:\n  cert_file: /nope/tls.crt\n  key_file: /nope/tls.key\n  poll_interval: 1m\n",
        );
        let e = args(&["--config", &path])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls") && e.contains("/nope/tls.crt"), "{e}");
        let (_d, path) =
            file("descriptors: /f.pb\nserver: http://file:1\ntls:\n  poll_interval: 10ms\n");
        let e = args(&["--config", &path])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_poll_interval"), "{e}");
        let (_d, path) = file("descriptors: /f.pb\nserver: http://file:1\ntls:\n  cert: x\n");
        let e = args(&["--config", &path])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cert`"), "{e}");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let (_d, path) = file(
            "descriptors: /f.pb\nserver: http://file:1\nlisten: 127.0.0.1:7000\ncache:\n  flag_ttl: 2m\n  kill_ttl: 10s\n  jitter_percent: 5\n",
        );
        let c = args(&["--config", &path, "--kill-ttl", "3s"])
            .resolve()
            .unwrap();
        assert_eq!(c.descriptors, PathBuf::from("/f.pb"));
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.cache.kill_ttl, Duration::from_secs(3), "flag beats file");
        assert_eq!(
            c.cache.flag_ttl,
            Duration::from_secs(120),
            "file beats default"
        );
        assert_eq!(c.cache.jitter_percent, 5);
        assert_eq!(c.cache.override_ttl, Duration::from_secs(300), "default");
    }

    #[test]
    fn invalid_settings_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--server", "http://x:1"], "descriptors"),
            (&["--descriptors", "d"], "database / server"),
            (&["--descriptors", "d", "--server", "ftp://x"], "server"),
            (
                &[
                    "--descriptors",
                    "d",
                    "--server",
                    "http://x:1",
                    "--kill-ttl",
                    "0s",
                ],
                "cache.kill_ttl",
            ),
            (
                &[
                    "--descriptors",
                    "d",
                    "--server",
                    "http://x:1",
                    "--jitter-percent",
                    "150",
                ],
                "cache.jitter_percent",
            ),
            (
                &[
                    "--descriptors",
                    "d",
                    "--server",
                    "http://x:1",
                    "--listen",
                    "nonsense",
                ],
                "listen",
            ),
            (
                &["--descriptors", "d", "--server", "http://x:1", "--migrate"],
                "--migrate",
            ),
            (
                &[
                    "--descriptors",
                    "d",
                    "--server",
                    "http://x:1",
                    "--database",
                    "postgres://a@b/c",
                ],
                "not both",
            ),
        ];
        for (argv, name) in cases {
            let e = args(argv).resolve().unwrap_err().to_string();
            assert!(e.contains(name), "{argv:?}: {e}");
        }
    }

    #[test]
    fn unknown_file_keys_and_bad_durations_are_errors() {
        let (_d, path) = file("descriptors: d\nserver: http://x:1\ncache:\n  flag_tll: 5m\n");
        assert!(
            args(&["--config", &path])
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("flag_tll")
        );
        let (_d, path) = file("descriptors: d\nserver: http://x:1\ncache:\n  flag_ttl: 5\n");
        assert!(
            args(&["--config", &path])
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("cache.flag_ttl")
        );
        let (_d, path) =
            file("descriptors: d\nserver: http://x:1\nadmin: ':9200'\nenv_color: red\n");
        let c = args(&["--config", &path])
            .resolve()
            .expect("v0.6's admin key is ignored");
        assert_eq!(c.ignored_keys, ["admin"]);
    }

    #[test]
    fn the_ui_banner_comes_from_flags_or_the_file_and_refuses_unsafe_colours() {
        let (_d, path) =
            file("descriptors: d\ndatabase: postgres://u:p@db/flags\nenv_name: production\n");
        let admin = |extra: &[&str]| {
            let mut a = vec!["--config", path.as_str(), "--admin-listen", "127.0.0.1:0"];
            a.extend_from_slice(extra);
            args(&a).resolve().map(|c| c.admin.and_then(|a| a.banner))
        };
        let b = admin(&[]).unwrap().unwrap();
        assert_eq!(
            (b.name.as_str(), b.color.as_str()),
            ("production", "#b91c1c")
        );
        let b = admin(&["--env-name", "qa", "--env-color", "#123456"])
            .unwrap()
            .unwrap();
        assert_eq!((b.name.as_str(), b.color.as_str()), ("qa", "#123456"));
        let e = admin(&["--env-color", "red;x"]).unwrap_err().to_string();
        assert!(e.contains("env_color") && e.contains("not a colour"), "{e}");
    }

    #[test]
    fn root_mode_takes_the_database_from_the_file() {
        let (_d, path) = file("descriptors: d\ndatabase: postgres://u:p@db/flags\n");
        let c = args(&["--config", &path]).resolve().unwrap();
        assert_eq!(c.mode, Mode::Root);
    }
}
