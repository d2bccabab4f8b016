//! Connection settings, the pool, and migrations.
//!
//! The database URL comes from `--database`, `PBFLAGS_DATABASE` or a file (`--database-file`, for a
//! mounted Secret). It is a secret: it never appears in logs or errors; [`DatabaseUrl`] prints
//! with the password replaced.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

/// A pooled connection idle this long is checked before it is used.
const PING_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Database arguments shared by every subcommand that talks to PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`). Prefer the environment variable or a file.
    #[arg(long, env = "PBFLAGS_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// File holding the PostgreSQL URL (e.g. a mounted Secret key); surrounding whitespace is ignored.
    #[arg(long, env = "PBFLAGS_DATABASE_FILE", conflicts_with = "database")]
    pub database_file: Option<PathBuf>,
    /// Maximum connections in the pool.
    #[arg(long, env = "PBFLAGS_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,
    /// How long to wait for a connection.
    #[arg(long, env = "PBFLAGS_DB_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_connect_timeout: Duration,
    /// Server-side statement timeout for every query.
    #[arg(long, env = "PBFLAGS_DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,
    /// PEM bundle of the CAs the database's certificate is checked against; without an `sslmode`
    /// in the URL it implies `sslmode=verify-full` [default: the system trust store].
    #[arg(long, env = "PBFLAGS_DATABASE_CA")]
    pub database_ca: Option<PathBuf>,
}

/// Why a database could not be configured or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Neither `--database`, `PBFLAGS_DATABASE` nor `--database-file` was given.
    #[error("no database: set --database, PBFLAGS_DATABASE or --database-file")]
    Missing,
    /// The URL file could not be read.
    #[error("read database file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle could not be read or holds no PEM certificate.
    #[error("database CA {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The URL does not parse (the message never includes the URL itself).
    #[error("invalid database URL ({0})")]
    InvalidUrl(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A database URL that never prints its password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// The raw URL, for the driver only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Replaces the password of a `scheme://user:password@host` URL (and any `password=` parameter).
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        if let Some(at) = out[rest..].rfind('@').map(|i| i + rest)
            && let Some(colon) = out[rest..at].find(':').map(|i| i + rest)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(p) = out.find("password") {
        // `password=…` in a URL query or a keyword/value string (spaces around `=`, quotes).
        let after = &out[p + "password".len()..];
        let eq = after.len() - after.trim_start().len();
        if after[eq..].starts_with('=') {
            let start = p + "password".len() + eq + 1;
            let value = &out[start..];
            let skip = value.len() - value.trim_start().len();
            let start = start + skip;
            let end = if out[start..].starts_with('\'') {
                // Through the closing quote (escaped quotes are skipped).
                let mut end = out.len();
                let mut escaped = false;
                for (i, c) in out[start + 1..].char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '\'' if !escaped => {
                            end = start + 1 + i + 1;
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                end
            } else {
                out[start..]
                    .find(|c: char| c == '&' || c.is_whitespace())
                    .map_or(out.len(), |i| i + start)
            };
            out.replace_range(start..end, "***");
        }
    }
    out
}

impl DatabaseArgs {
    /// The URL from the flag, the environment or the file.
    pub fn url(&self) -> Result<DatabaseUrl, DbError> {
        if let Some(u) = self.database.as_deref().filter(|u| !u.trim().is_empty()) {
            return Ok(DatabaseUrl::new(u.trim()));
        }
        if let Some(path) = &self.database_file {
            let s = std::fs::read_to_string(path).map_err(|source| DbError::File {
                path: path.clone(),
                source,
            })?;
            return Ok(DatabaseUrl::new(s.trim()));
        }
        Err(DbError::Missing)
    }

    /// Checks that a URL is given and parses, without connecting.
    pub fn validate(&self) -> Result<(), DbError> {
        self.options()?;
        Ok(())
    }

    /// The connection options: the URL's, plus the CA bundle if one is given.
    fn options(&self) -> Result<PgConnectOptions, DbError> {
        let url = self.url()?;
        let options = connect_options(url.expose())?;
        let Some(ca) = &self.database_ca else {
            return Ok(options);
        };
        check_ca(ca)?;
        let options = options.ssl_root_cert(ca);
        // A CA is given to be used: without an explicit sslmode, verify the server fully.
        Ok(if has_query_param(url.expose(), "sslmode") {
            options
        } else {
            options.ssl_mode(PgSslMode::VerifyFull)
        })
    }

    /// A pool that connects lazily: creating it never touches the network, so an evaluator starts
    /// (serving defaults) while the database is down, and connects when it comes back.
    ///
    /// A connection is checked (a round trip) before use only when it sat idle for a second or
    /// more, as pgx's pool does for v0.6: sqlx's default checks every acquire, which doubled the
    /// round trips of a cache miss under load. A connection that broke while busy fails its query;
    /// the pool drops it and the evaluation falls back as for any failed fetch.
    pub fn pool(&self) -> Result<PgPool, DbError> {
        Ok(PgPoolOptions::new()
            .max_connections(self.db_pool_size.max(1))
            .acquire_timeout(self.db_connect_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(self.pool_options()?))
    }

    /// What every pooled connection is opened with: the URL's options, the CA, the statement
    /// timeout and the application name.
    fn pool_options(&self) -> Result<PgConnectOptions, DbError> {
        let statement_ms = self.db_statement_timeout.as_millis().to_string();
        Ok(self
            .options()?
            .application_name("pbflags-evaluator")
            .options([("statement_timeout", statement_ms.as_str())]))
    }
}

/// Keeps a pool's connection settings in step with `--database-file`, so a rotated password (a
/// Secret the kubelet updates in the pod's volume) needs no restart: connections opened after a
/// change use the new URL; open ones keep theirs until the pool retires them (PostgreSQL does not
/// end sessions when a password changes). A file that does not read or parse leaves the previous
/// settings in place and is logged, without its content.
pub struct UrlFile {
    args: DatabaseArgs,
    pool: PgPool,
    current: std::sync::Mutex<String>,
}

/// What a [`UrlFile`] check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlReload {
    /// The file holds the URL in use.
    Unchanged,
    /// New connections use the file's new URL.
    Reloaded,
    /// The file changed but does not read or parse; the previous URL stays in use.
    Failed,
}

impl UrlFile {
    /// Watches `args.database_file` for `pool`; `None` when the URL does not come from a file.
    pub fn new(args: &DatabaseArgs, pool: &PgPool) -> Option<std::sync::Arc<Self>> {
        args.database.is_none().then_some(())?;
        args.database_file.as_ref()?;
        let current = args.url().map(|u| u.0).unwrap_or_default();
        Some(std::sync::Arc::new(Self {
            args: args.clone(),
            pool: pool.clone(),
            current: std::sync::Mutex::new(current),
        }))
    }

    /// Reads the file and, if its URL changed and parses, hands it to the pool.
    pub fn check(&self) -> UrlReload {
        let url = match self.args.url() {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(error = %e, "database URL file unreadable; the previous URL stays in use");
                return UrlReload::Failed;
            }
        };
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == url.0 {
            return UrlReload::Unchanged;
        }
        match self.args.pool_options() {
            Ok(options) => {
                self.pool.set_connect_options(options);
                tracing::info!(database = %url, "database URL file changed; new connections use it");
                url.0.clone_into(&mut current);
                UrlReload::Reloaded
            }
            Err(e) => {
                tracing::warn!(error = %e, "database URL file changed but is not usable; the previous URL stays in use");
                UrlReload::Failed
            }
        }
    }

    /// The file followed.
    pub fn path(&self) -> &std::path::Path {
        self.args
            .database_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
    }
}

/// Parses a PostgreSQL URL, or a libpq keyword/value string (`host=db user=flags dbname=flags`), as
/// v0.6 (pgx) accepted both; any other scheme (`mysql://`) is refused by name.
fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    match url.split_once("://") {
        Some(("postgres" | "postgresql", _)) => {}
        Some((scheme, _)) => {
            return Err(DbError::InvalidUrl(format!(
                "{scheme}:// is not PostgreSQL; use a postgres:// or postgresql:// URL"
            )));
        }
        None if url.contains('=') => return keyword_options(url),
        None => {
            return Err(DbError::InvalidUrl(
                "not a URL; use postgres://user:password@host:5432/database or \
                 host=… user=… dbname=…"
                    .to_owned(),
            ));
        }
    }
    PgConnectOptions::from_str(url).map_err(|e| DbError::InvalidUrl(redact(&e.to_string())))
}

/// The `key=value` pairs of a libpq keyword/value connection string: separated by whitespace,
/// spaces allowed around `=`, values bare or in single quotes, `\` escaping the next character.
fn keyword_pairs(dsn: &str) -> Result<Vec<(String, String)>, DbError> {
    let bad = |why: &str| DbError::InvalidUrl(format!("connection string: {why}"));
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("{key:?} has no \"=\"")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                None if quoted => {
                    return Err(bad(&format!("the value of {key} has no closing quote")));
                }
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => match chars.next() {
                    Some(c) => value.push(c),
                    None => return Err(bad(&format!("the value of {key} ends in a backslash"))),
                },
                Some(c) => value.push(c),
            }
        }
        pairs.push((key, value));
    }
}

/// Connection options from a keyword/value string. Unknown keywords are refused by name, as libpq
/// does; `connect_timeout` is accepted and left to `--db-connect-timeout`.
fn keyword_options(dsn: &str) -> Result<PgConnectOptions, DbError> {
    let bad = |why: String| DbError::InvalidUrl(format!("connection string: {why}"));
    let mut o = PgConnectOptions::new_without_pgpass();
    for (key, value) in keyword_pairs(dsn)? {
        o = match key.as_str() {
            "host" | "hostaddr" if value.starts_with('/') => o.socket(&value),
            "host" | "hostaddr" => o.host(&value),
            "port" => o.port(
                value
                    .parse()
                    .map_err(|_| bad(format!("port {value:?} is not a port number")))?,
            ),
            "dbname" => o.database(&value),
            "user" => o.username(&value),
            "password" => o.password(&value),
            "sslmode" => o.ssl_mode(
                value
                    .parse()
                    .map_err(|_| bad(format!("sslmode {value:?} is not a libpq sslmode")))?,
            ),
            "sslrootcert" => o.ssl_root_cert(&value),
            "sslcert" => o.ssl_client_cert(&value),
            "sslkey" => o.ssl_client_key(&value),
            "application_name" => o.application_name(&value),
            "connect_timeout" => o,
            other => {
                return Err(bad(format!(
                    "unsupported keyword {other:?}; use host, hostaddr, port, dbname, user, \
                     password, sslmode, sslrootcert, sslcert, sslkey, application_name or \
                     connect_timeout"
                )));
            }
        };
    }
    Ok(o)
}

/// Whether the URL's query (or the keyword/value string) sets `name`.
fn has_query_param(url: &str, name: &str) -> bool {
    if !url.contains("://") {
        return keyword_pairs(url).is_ok_and(|pairs| pairs.iter().any(|(k, _)| k == name));
    }
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name)
    })
}

/// The CA bundle must be readable and hold at least one PEM certificate.
fn check_ca(path: &std::path::Path) -> Result<(), DbError> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let bad = |why: String| DbError::Ca {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".to_owned()));
    }
    Ok(())
}

/// The migrations in `migrations/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies pending migrations and returns how many this call applied. The bookkeeping table lives in
/// the `feature_flags` schema. Concurrent runs (pods starting together) are safe: one session lock
/// serializes them, and the later runs find nothing to do.
pub async fn migrate(pool: &PgPool) -> Result<usize, DbError> {
    let mut migrator = sqlx::migrate::Migrator::with_migrations(MIGRATOR.migrations.to_vec());
    migrator.create_schema("feature_flags");
    migrator.dangerous_set_table_name("feature_flags.pbflags_migrations");
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext('pbflags-migrate'))")
        .execute(&mut *conn)
        .await?;
    let result = async {
        let before = applied_count(&mut conn).await?;
        migrator
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(DbError::Migrate)?;
        let after = applied_count(&mut conn).await?;
        Ok(usize::try_from(after - before).unwrap_or(0))
    }
    .await;
    // Released explicitly: the connection goes back to the pool, where a held lock would linger.
    sqlx::query("SELECT pg_advisory_unlock(hashtext('pbflags-migrate'))")
        .execute(&mut *conn)
        .await?;
    result
}

async fn applied_count(conn: &mut sqlx::PgConnection) -> Result<i64, DbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('feature_flags.pbflags_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM feature_flags.pbflags_migrations WHERE success")
            .fetch_one(&mut *conn)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = DatabaseUrl::new("postgres://app:s3cr3t@db:5432/flags?sslmode=disable");
        assert_eq!(
            u.to_string(),
            "postgres://app:***@db:5432/flags?sslmode=disable"
        );
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert_eq!(
            redact("postgres://db/flags?user=a&password=hunter2&x=1"),
            "postgres://db/flags?user=a&password=***&x=1"
        );
        assert_eq!(redact("postgres://app@db/flags"), "postgres://app@db/flags");
    }

    #[test]
    fn only_postgresql_urls_are_accepted() {
        let args = |url: &str| DatabaseArgs {
            database: Some(url.to_owned()),
            database_file: None,
            db_pool_size: 1,
            db_connect_timeout: Duration::from_secs(1),
            db_statement_timeout: Duration::from_secs(1),
            database_ca: None,
        };
        for ok in [
            "postgres://a@b/c",
            "postgresql://a:pw@b:5432/c?sslmode=disable",
            "host=b user=a dbname=c sslmode=disable",
        ] {
            assert!(args(ok).validate().is_ok(), "{ok}");
        }
        for (bad, says) in [
            (
                "mysql://root:hunter2@db/flags",
                "mysql:// is not PostgreSQL",
            ),
            ("db.example:5432/flags", "not a URL"),
        ] {
            let e = args(bad).validate().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn keyword_value_strings_parse_as_libpq_does() {
        let pairs = keyword_pairs(
            r"host=db.internal  port = 6432 dbname=flags user=app password='p w\'d' sslmode=require",
        )
        .unwrap();
        let want = [
            ("host", "db.internal"),
            ("port", "6432"),
            ("dbname", "flags"),
            ("user", "app"),
            ("password", "p w'd"),
            ("sslmode", "require"),
        ];
        assert_eq!(
            pairs,
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        let o = keyword_options("host=db.internal port=6432 dbname=flags user=app").unwrap();
        assert_eq!(
            (
                o.get_host(),
                o.get_port(),
                o.get_database(),
                o.get_username()
            ),
            ("db.internal", 6432, Some("flags"), "app")
        );
        assert!(matches!(
            keyword_options("host=db sslmode=verify-full")
                .unwrap()
                .get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
        assert!(has_query_param("host=db sslmode=disable", "sslmode"));
        for (bad, says) in [
            ("host=db port=x", "port \"x\" is not a port number"),
            ("host=db sslmode=sometimes", "sslmode \"sometimes\""),
            ("host=db flavour=vanilla", "unsupported keyword \"flavour\""),
            ("host=db password='open", "no closing quote"),
            ("host", "\"host\" has no \"=\""),
        ] {
            let e = keyword_options(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_in_keyword_strings_never_print() {
        for dsn in [
            "host=db password=hunter2 user=app",
            "host=db password = 'hunter 2' user=app",
            "host=db password='a\\'hunter2' user=app",
        ] {
            let r = redact(dsn);
            assert!(!r.contains("hunter"), "{r}");
            assert!(r.contains("user=app"), "{r}");
        }
    }

    #[test]
    fn a_url_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "postgres://a@b/c\n").unwrap();
        let args = DatabaseArgs {
            database: None,
            database_file: Some(f),
            db_pool_size: 1,
            db_connect_timeout: Duration::from_secs(1),
            db_statement_timeout: Duration::from_secs(1),
            database_ca: None,
        };
        assert_eq!(args.url().unwrap().redacted(), "postgres://a@b/c");
    }

    #[test]
    fn a_missing_url_is_a_clear_error() {
        let args = DatabaseArgs {
            database: None,
            database_file: None,
            db_pool_size: 1,
            db_connect_timeout: Duration::from_secs(1),
            db_statement_timeout: Duration::from_secs(1),
            database_ca: None,
        };
        assert!(
            args.url()
                .unwrap_err()
                .to_string()
                .contains("PBFLAGS_DATABASE")
        );
    }
}
