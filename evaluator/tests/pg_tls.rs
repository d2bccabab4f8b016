//! TLS to PostgreSQL: a throwaway server that accepts TLS only (`scripts/pg.sh` with
//! `PBFLAGS_PG_TLS=1`, certificate from a throwaway CA), reached with each `sslmode`, with and
//! without `--database-ca`, and a root evaluator serving state read over it.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;

use std::path::PathBuf;
use std::time::Duration;

use pbflags_evaluator::sources::pg::admin::{self, StateChange};
use pbflags_evaluator::sources::pg::db::{DatabaseArgs, DbError};
use pbflags_proto::v1::{EvaluateRequest, EvaluationSource};
use pg::PgServer;
use server::Running;

fn args(url: String, ca: Option<PathBuf>) -> DatabaseArgs {
    DatabaseArgs {
        database: Some(url),
        database_file: None,
        db_pool_size: 2,
        db_connect_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(5),
        database_ca: ca,
    }
}

/// Connects with `args` and reports whether the session is encrypted, or the error.
async fn session_ssl(args: &DatabaseArgs) -> Result<bool, String> {
    let pool = args.pool().map_err(|e| e.to_string())?;
    let r =
        sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string());
    pool.close().await;
    r
}

#[tokio::test]
async fn every_sslmode_behaves_as_libpq_documents_and_cleartext_is_refused() {
    let server = PgServer::start_tls();
    let base = format!("postgres://pbflags@{}/pbflags", server.address());
    let localhost = base.replace("127.0.0.1", "localhost");
    let ca = Some(server.ca());

    // The CA implies verify-full when the URL names no sslmode.
    assert_eq!(session_ssl(&args(base.clone(), ca.clone())).await, Ok(true));
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = format!("{localhost}?sslmode={mode}");
        assert_eq!(
            session_ssl(&args(url, ca.clone())).await,
            Ok(true),
            "{mode}"
        );
    }
    // A libpq keyword/value string, as v0.6 accepted.
    let (host, port) = server
        .address()
        .split_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();
    let dsn = format!(
        "host={host} port={port} user=pbflags dbname=pbflags sslmode=verify-full sslrootcert='{}'",
        server.ca().display()
    );
    assert_eq!(session_ssl(&args(dsn, None)).await, Ok(true));
    // require encrypts without checking the certificate.
    assert_eq!(
        session_ssl(&args(format!("{base}?sslmode=require"), None)).await,
        Ok(true)
    );
    // Verification against the system trust store fails: the throwaway CA is not in it.
    let err = session_ssl(&args(format!("{base}?sslmode=verify-full"), None))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // The server refuses cleartext.
    let err = session_ssl(&args(format!("{base}?sslmode=disable"), None))
        .await
        .unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
}

#[test]
fn a_database_ca_that_is_missing_or_not_pem_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.crt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for path in [dir.path().join("missing.crt"), not_pem] {
        let a = args("postgres://u@127.0.0.1:1/d".into(), Some(path.clone()));
        let err = a.validate().unwrap_err();
        assert!(matches!(err, DbError::Ca { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}

#[tokio::test]
async fn a_root_serves_state_read_over_verified_tls() {
    let server = PgServer::start_tls();
    let url = format!("postgres://pbflags@{}/pbflags", server.address());
    let pool = args(url.clone(), Some(server.ca())).pool().unwrap();
    server::migrate_and_sync_example(&pool).await;
    admin::set_state(
        &pool,
        "notifications/2",
        StateChange::Set("weekly".into()),
        "t",
    )
    .await
    .unwrap();

    let ca = server.ca().to_string_lossy().into_owned();
    let root = Running::start(&["--database", &url, "--database-ca", &ca]).await;
    let ev = root
        .client()
        .await
        .evaluate(EvaluateRequest {
            flag_id: "notifications/2".into(),
            entity_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ev.source, EvaluationSource::Global as i32);
    assert_eq!(
        ev.value.and_then(|v| v.value),
        Some(pbflags_proto::v1::flag_value::Value::StringValue(
            "weekly".into()
        ))
    );
    root.stop().await;
}
