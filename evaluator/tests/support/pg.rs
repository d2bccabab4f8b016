//! Throwaway PostgreSQL for tests, through `scripts/pg.sh`.
//!
//! `TestDb::create()` gives each test a fresh database. With `PBFLAGS_TEST_PG_URL` set (the test
//! command starts one server for the whole run), databases are created on that server; otherwise
//! the test starts a server of its own, stopped by process id when the `TestDb` is dropped.
//! `PgServer` is a private server a test can stop and start (outage tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

fn script() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../scripts/pg.sh")
}

/// A PostgreSQL server of this test's own.
pub struct PgServer {
    dir: tempfile::TempDir,
    /// URL of its `pbflags` database.
    pub url: String,
}

impl PgServer {
    /// initdb + start on a free loopback port.
    pub fn start() -> Self {
        Self::start_listening(None)
    }

    /// Like `start`, serving TLS only, with a certificate for 127.0.0.1 and localhost from a
    /// throwaway CA ([`PgServer::ca`]); `url` then verifies it (`sslmode=verify-full`).
    pub fn start_tls() -> Self {
        Self::start_with(None, true)
    }

    /// The CA of a [`PgServer::start_tls`] server.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// The server's `host:port`.
    pub fn address(&self) -> String {
        let after = self.url.split_once('@').expect("user@host").1;
        after.split('/').next().expect("host:port").to_owned()
    }

    /// Like `start`, also listening on `extra` (e.g. a Kubernetes node's bridge address) and
    /// trusting clients of its /24.
    pub fn start_listening(extra: Option<&str>) -> Self {
        Self::start_with(extra, false)
    }

    fn start_with(extra: Option<&str>, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pbflags-pg-")
            .tempdir()
            .expect("tempdir");
        let mut c = Command::new("bash");
        c.arg(script()).arg("start").arg(dir.path());
        if let Some(extra) = extra {
            c.env("PBFLAGS_PG_LISTEN", extra);
        }
        if tls {
            c.env("PBFLAGS_PG_TLS", "1");
        }
        let url = output(c);
        Self { dir, url }
    }

    /// Stops the server (by the pid in postmaster.pid).
    pub fn stop(&self) {
        run(&["stop", &self.dir.path().to_string_lossy()]);
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        run(&["start", &self.dir.path().to_string_lossy()]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(args: &[&str]) -> String {
    let mut c = Command::new("bash");
    c.arg(script()).args(args);
    output(c)
}

fn output(mut c: Command) -> String {
    let out = c.output().expect("run pg.sh");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh, empty database.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    _server: Option<PgServer>,
}

impl TestDb {
    /// Creates a database on the shared server, or starts a private server.
    pub async fn create() -> Self {
        let Some(admin_url) = std::env::var("PBFLAGS_TEST_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            let server = PgServer::start();
            return Self {
                url: server.url.clone(),
                _server: Some(server),
            };
        };
        let name = format!("t_{:016x}", fastrand::u64(..));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .expect("connect to test server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let (server, _) = base.rsplit_once('/').expect("url has a database");
        Self {
            url: format!("{server}/{name}?sslmode=disable"),
            _server: None,
        }
    }

    /// A pool on this database.
    pub async fn pool(&self) -> PgPool {
        pool(&self.url).await
    }
}

/// A small pool with short timeouts.
pub async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect")
}
