//! Root mode against a real PostgreSQL: migrations, the state source (v0.6's integration scenarios),
//! outages, malformed rows, descriptor sync and flag administration.

#[path = "support/engine.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::Duration;

use harness::{def, exact_ttl};
use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_evaluator::core::clock::Clock;
use pbflags_evaluator::core::descriptor::FlagDef;
use pbflags_evaluator::core::engine::Engine;
use pbflags_evaluator::core::registry::{ContentHash, Registry, Snapshot};
use pbflags_evaluator::metrics::{Backend, Metrics};
use pbflags_evaluator::sources::pg::admin::{self, AdminError, StateChange};
use pbflags_evaluator::sources::pg::changes;
use pbflags_evaluator::sources::pg::db;
use pbflags_evaluator::sources::pg::source::PgSource;
use pbflags_evaluator::sources::pg::sync::{self, SyncError};
use pbflags_proto::v1::{EvaluationSource as Src, EvaluatorStatus, FlagType, FlagValue, State};
use pg::{PgServer, TestDb};
use sqlx::PgPool;

async fn migrated(db: &TestDb) -> PgPool {
    let pool = db.pool().await;
    db::migrate(&pool).await.expect("migrate");
    pool
}

fn notif(number: u32, flag_type: FlagType, layer: &str, default: Option<FlagValue>) -> FlagDef {
    let mut d = def(&format!("notif/{number}"), layer, default);
    d.flag_type = flag_type;
    d.feature_id = "notif".into();
    d.field_number = number;
    d.description = format!("flag {number}");
    d
}

fn flags() -> Vec<FlagDef> {
    vec![
        notif(1, FlagType::Bool, "user", Some(FlagValue::bool(true))),
        notif(2, FlagType::String, "", Some(FlagValue::string("daily"))),
        notif(3, FlagType::Int64, "", Some(FlagValue::int64(3))),
        notif(4, FlagType::Double, "", Some(FlagValue::double(0.75))),
    ]
}

fn engine(pool: PgPool, config: CacheConfig) -> (Arc<Engine>, Metrics) {
    let metrics = Metrics::new();
    let registry = Arc::new(Registry::new(Snapshot::new(
        flags(),
        ContentHash::default(),
        vec![],
    )));
    let source = Arc::new(PgSource::new(
        pool,
        Duration::from_millis(500),
        metrics.clone(),
    ));
    (
        Arc::new(Engine::with_clock(
            registry,
            source,
            Backend::Db,
            config,
            metrics.clone(),
            Clock::manual(),
        )),
        metrics,
    )
}

async fn synced() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    sync::sync(&pool, &flags(), false).await.expect("sync");
    (db, pool)
}

fn fetches(m: &Metrics, op: &str) -> u64 {
    let text = m.render();
    let needle =
        format!("pbflags_fetch_duration_seconds_count{{backend=\"db\",operation=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.parse().expect("count"))
}

/// Moves the engine's manual clock past every cache TTL.
fn expire(engine: &Engine) {
    let c = engine.caches();
    let ttl = c.config().flag_ttl.max(c.config().override_ttl);
    c.clock().advance(ttl + Duration::from_millis(1));
}

// ---- migrations --------------------------------------------------------------------------------

#[tokio::test]
async fn migrate_creates_the_v0_6_schema_and_keeps_its_bookkeeping_in_feature_flags() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    assert_eq!(db::migrate(&pool).await.unwrap(), 2);
    assert_eq!(
        db::migrate(&pool).await.unwrap(),
        0,
        "a second run applies nothing"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('feature_flags', 'public') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "feature_flags.features",
            "feature_flags.flag_audit_log",
            "feature_flags.flag_overrides",
            "feature_flags.flags",
            "feature_flags.pbflags_migrations"
        ]
    );
}

#[tokio::test]
async fn migrate_adopts_a_database_migrated_by_v0_6() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    // v0.6's goose migration, as it ran: no IF NOT EXISTS, plus goose's own table in public.
    for stmt in [
        "CREATE SCHEMA IF NOT EXISTS feature_flags",
        "CREATE TABLE feature_flags.features (feature_id VARCHAR(255) PRIMARY KEY NOT NULL, display_name VARCHAR(255) NOT NULL DEFAULT '', description VARCHAR(1024) NOT NULL DEFAULT '', owner VARCHAR(255) NOT NULL DEFAULT '', created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE TABLE feature_flags.flags (flag_id VARCHAR(512) PRIMARY KEY NOT NULL, feature_id VARCHAR(255) NOT NULL REFERENCES feature_flags.features(feature_id), field_number INT NOT NULL, display_name VARCHAR(255) NOT NULL DEFAULT '', flag_type VARCHAR(20) NOT NULL, layer VARCHAR(50) NOT NULL DEFAULT 'GLOBAL', description VARCHAR(1024) NOT NULL DEFAULT '', default_value BYTEA, state VARCHAR(20) NOT NULL DEFAULT 'DEFAULT', value BYTEA, archived_at TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), CONSTRAINT valid_state CHECK (state IN ('ENABLED','DEFAULT','KILLED')), CONSTRAINT uq_flags_feature_field UNIQUE (feature_id, field_number))",
        "CREATE INDEX idx_flags_killed ON feature_flags.flags(state) WHERE state = 'KILLED'",
        "CREATE TABLE feature_flags.flag_overrides (flag_id VARCHAR(512) NOT NULL REFERENCES feature_flags.flags(flag_id) ON DELETE CASCADE, entity_id VARCHAR(255) NOT NULL, state VARCHAR(20) NOT NULL DEFAULT 'ENABLED', value BYTEA, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (flag_id, entity_id), CONSTRAINT valid_override_state CHECK (state IN ('ENABLED','DEFAULT','KILLED')))",
        "CREATE INDEX idx_overrides_entity ON feature_flags.flag_overrides(entity_id)",
        "CREATE INDEX idx_overrides_killed ON feature_flags.flag_overrides(state) WHERE state = 'KILLED'",
        "CREATE TABLE feature_flags.flag_audit_log (id BIGSERIAL PRIMARY KEY, flag_id VARCHAR(512) NOT NULL, action VARCHAR(50) NOT NULL, old_value BYTEA, new_value BYTEA, actor VARCHAR(255) NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE INDEX idx_audit_flag ON feature_flags.flag_audit_log(flag_id, created_at DESC)",
        "CREATE TABLE goose_db_version (id SERIAL PRIMARY KEY, version_id BIGINT NOT NULL, is_applied BOOLEAN NOT NULL, tstamp TIMESTAMP DEFAULT now())",
        "INSERT INTO feature_flags.features (feature_id) VALUES ('legacy')",
        "INSERT INTO feature_flags.flags (flag_id, feature_id, field_number, flag_type, state, value) VALUES ('legacy/1', 'legacy', 1, 'BOOL', 'ENABLED', '\\x0801')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(db::migrate(&pool).await.unwrap(), 2);
    let (row, _) = admin::get(&pool, "legacy/1").await.unwrap();
    assert_eq!(
        (row.state, row.value),
        (Some(State::Enabled), Some(FlagValue::bool(true))),
        "existing data is kept"
    );
    // The notification triggers only add notifications: a write as v0.6's tools make it still
    // works, and is announced.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen(changes::CHANNEL).await.unwrap();
    sqlx::query("UPDATE feature_flags.flags SET state = 'KILLED', updated_at = now() WHERE flag_id = 'legacy/1'")
        .execute(&pool)
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changes::Change::parse(n.payload()),
        Some(changes::Change {
            flag_id: "legacy/1".into(),
            entity_id: None
        })
    );
}

#[tokio::test]
async fn concurrent_migrations_all_succeed() {
    let db = TestDb::create().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            db::migrate(&pg::pool(&url).await).await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().expect("every concurrent migrate succeeds");
    }
    assert_eq!(applied, 2, "exactly one of them applied the migrations");
}

// ---- v0.6 integration scenarios ------------------------------------------------------------------

#[tokio::test]
async fn state_lifecycle_default_enabled_killed_default() {
    let (_db, pool) = synced().await;
    let (engine, _) = engine(pool.clone(), exact_ttl());
    let ev = engine.evaluate("notif/1", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Default)
    );

    admin::set_state(&pool, "notif/1", StateChange::Set("false".into()), "t")
        .await
        .unwrap();
    expire(&engine);
    let ev = engine.evaluate("notif/1", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(false)), Src::Global)
    );

    admin::set_state(&pool, "notif/1", StateChange::Kill, "t")
        .await
        .unwrap();
    engine.poll_kill_set().await.unwrap();
    let ev = engine.evaluate("notif/1", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Killed)
    );

    admin::set_state(&pool, "notif/1", StateChange::Default, "t")
        .await
        .unwrap();
    engine.poll_kill_set().await.unwrap();
    expire(&engine);
    let ev = engine.evaluate("notif/1", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Default)
    );
}

#[tokio::test]
async fn ids_postgresql_cannot_store_are_answered_without_a_query_and_keep_health() {
    let (_db, pool) = synced().await;
    let (engine, metrics) = engine(pool, exact_ttl());
    assert_eq!(engine.evaluate("notif/2", "").await.source, Src::Default);
    let queries = fetches(&metrics, "flag_state") + fetches(&metrics, "overrides");
    for (flag, entity) in [("no\0such", ""), ("notif/1", "us\0er"), ("x\0", "y\0")] {
        let ev = engine.evaluate(flag, entity).await;
        assert_eq!(ev.source, Src::Default, "{flag:?} {entity:?}");
    }
    let ids = vec!["a\0".to_owned(), "notif/1".to_owned()];
    let bulk = engine.bulk_evaluate(ids.clone(), "e\0").await;
    assert_eq!(bulk.len(), 2);
    assert_eq!(engine.health().consecutive_failures(), 0);
    assert_eq!(engine.health().status(), EvaluatorStatus::Serving);
    assert!(
        fetches(&metrics, "flag_state") + fetches(&metrics, "overrides") > queries,
        "the engine still asked its source, which answered without failing"
    );
}

#[tokio::test]
async fn override_lifecycle() {
    let (_db, pool) = synced().await;
    let (engine, _) = engine(pool.clone(), exact_ttl());
    assert_eq!(
        engine.evaluate("notif/1", "user-1").await.source,
        Src::Default
    );
    admin::set_override(
        &pool,
        "notif/1",
        "user-1",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    expire(&engine);
    let ev = engine.evaluate("notif/1", "user-1").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(false)), Src::Override)
    );
    let ev = engine.evaluate("notif/1", "user-2").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Default)
    );
    admin::remove_override(&pool, "notif/1", "user-1", "t")
        .await
        .unwrap();
    engine.caches().flush();
    let ev = engine.evaluate("notif/1", "user-1").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Default)
    );
}

#[tokio::test]
async fn all_four_types_read_back_from_the_database() {
    let (_db, pool) = synced().await;
    for (id, v) in [
        ("notif/1", "false"),
        ("notif/2", "weekly"),
        ("notif/3", "-7"),
        ("notif/4", "0.125"),
    ] {
        admin::set_state(&pool, id, StateChange::Set(v.into()), "t")
            .await
            .unwrap();
    }
    let (engine, _) = engine(pool, exact_ttl());
    let want = [
        FlagValue::bool(false),
        FlagValue::string("weekly"),
        FlagValue::int64(-7),
        FlagValue::double(0.125),
    ];
    for (i, w) in want.iter().enumerate() {
        let ev = engine.evaluate(&format!("notif/{}", i + 1), "").await;
        assert_eq!((ev.value(), ev.source), (Some(w), Src::Global));
    }
}

#[tokio::test]
async fn archived_flags_serve_their_last_value() {
    let (_db, pool) = synced().await;
    admin::set_state(&pool, "notif/3", StateChange::Set("5".into()), "t")
        .await
        .unwrap();
    sync::sync(&pool, &flags()[..2], false).await.unwrap();
    let (engine, _) = engine(pool, exact_ttl());
    let ev = engine.evaluate("notif/3", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::int64(5)), Src::Archived)
    );
}

#[tokio::test]
async fn a_global_kill_beats_an_entity_override() {
    let (_db, pool) = synced().await;
    admin::set_override(
        &pool,
        "notif/1",
        "user-1",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    admin::set_state(&pool, "notif/1", StateChange::Kill, "t")
        .await
        .unwrap();
    let (engine, _) = engine(pool, exact_ttl());
    engine.poll_kill_set().await.unwrap();
    let ev = engine.evaluate("notif/1", "user-1").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::bool(true)), Src::Killed)
    );
}

#[tokio::test]
async fn unknown_and_database_only_flags() {
    let (_db, pool) = synced().await;
    let (engine, _) = engine(pool.clone(), exact_ttl());
    let ev = engine.evaluate("nope/1", "").await;
    assert_eq!((ev.value(), ev.source), (None, Src::Default));
    sqlx::query("INSERT INTO feature_flags.flags (flag_id, feature_id, field_number, flag_type) VALUES ('notif/99', 'notif', 99, 'BOOL')")
        .execute(&pool)
        .await
        .unwrap();
    let ev = engine.evaluate("notif/99", "").await;
    assert_eq!((ev.value(), ev.source), (None, Src::Default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_entity_evaluations_are_correct() {
    let (_db, pool) = synced().await;
    for i in (0..20).step_by(2) {
        admin::set_override(
            &pool,
            "notif/1",
            &format!("u{i}"),
            State::Enabled,
            Some("false"),
            "t",
        )
        .await
        .unwrap();
    }
    let (engine, _) = engine(pool, exact_ttl());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { (i, engine.evaluate("notif/1", &format!("u{i}")).await) })
        })
        .collect();
    for t in tasks {
        let (i, ev) = t.await.unwrap();
        let want = if i % 2 == 0 {
            (false, Src::Override)
        } else {
            (true, Src::Default)
        };
        assert_eq!(
            (ev.value().cloned(), ev.source),
            (Some(FlagValue::bool(want.0)), want.1),
            "u{i}"
        );
    }
}

// ---- coalescing and batching, counted in queries ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_for_one_flag_make_one_query() {
    let (_db, pool) = synced().await;
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "t")
        .await
        .unwrap();
    let (engine, metrics) = engine(pool, CacheConfig::default());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.evaluate("notif/2", "").await.source })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Src::Global);
    }
    assert_eq!(fetches(&metrics, "flag_state"), 1);
}

#[tokio::test]
async fn bulk_evaluation_of_a_hundred_uncached_flags_for_an_entity_takes_two_queries() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let many: Vec<FlagDef> = (1..=100)
        .map(|i| notif(i, FlagType::Int64, "user", Some(FlagValue::int64(0))))
        .collect();
    sync::sync(&pool, &many, false).await.unwrap();
    admin::set_override(&pool, "notif/7", "u1", State::Enabled, Some("7"), "t")
        .await
        .unwrap();
    admin::set_state(&pool, "notif/8", StateChange::Set("8".into()), "t")
        .await
        .unwrap();
    let metrics = Metrics::new();
    let registry = Arc::new(Registry::new(Snapshot::new(
        many,
        ContentHash::default(),
        vec![],
    )));
    let source = Arc::new(PgSource::new(pool, Duration::from_secs(2), metrics.clone()));
    let engine = Engine::new(
        registry,
        source,
        Backend::Db,
        CacheConfig::default(),
        metrics.clone(),
    );
    let out = engine.bulk_evaluate(Vec::new(), "u1").await;
    assert_eq!(out.len(), 100);
    assert_eq!(
        (out[6].1.source, out[7].1.source, out[0].1.source),
        (Src::Override, Src::Global, Src::Default)
    );
    assert_eq!(
        (
            fetches(&metrics, "overrides"),
            fetches(&metrics, "flag_state")
        ),
        (1, 1)
    );
}

// ---- outages and bad data --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_stale_or_default_then_recovers() {
    let server = PgServer::start();
    let pool = pg::pool(&server.url).await;
    db::migrate(&pool).await.unwrap();
    sync::sync(&pool, &flags(), false).await.unwrap();
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "t")
        .await
        .unwrap();
    admin::set_state(&pool, "notif/3", StateChange::Kill, "t")
        .await
        .unwrap();
    let (engine, _) = engine(pool.clone(), exact_ttl());
    engine.poll_kill_set().await.unwrap();
    assert_eq!(engine.evaluate("notif/2", "").await.source, Src::Global);
    assert_eq!(engine.health().status(), EvaluatorStatus::Serving);

    server.stop();
    expire(&engine);
    for _ in 0..3 {
        let ev = engine.evaluate("notif/2", "").await;
        assert_eq!(
            (ev.value(), ev.source),
            (Some(&FlagValue::string("weekly")), Src::Cached)
        );
        let ev = engine.evaluate("notif/4", "user-9").await;
        assert_eq!(
            (ev.value(), ev.source),
            (Some(&FlagValue::double(0.75)), Src::Default)
        );
    }
    assert!(engine.poll_kill_set().await.is_err());
    assert_eq!(
        engine.evaluate("notif/3", "").await.source,
        Src::Killed,
        "the kill set is kept"
    );
    assert_eq!(engine.health().status(), EvaluatorStatus::Degraded);

    server.restart();
    sqlx::query("UPDATE feature_flags.flags SET value = $1 WHERE flag_id = 'notif/2'")
        .bind(pbflags_evaluator::sources::pg::values::encode_value(Some(
            &FlagValue::string("monthly"),
        )))
        .execute(&pool)
        .await
        .unwrap();
    expire(&engine);
    // The first miss after the probe interval probes in the background (answering from the
    // stale value at once); once the probe succeeds, misses fetch again.
    let mut ev = engine.evaluate("notif/2", "").await;
    for _ in 0..100 {
        if ev.source == Src::Global {
            break;
        }
        assert_eq!(ev.source, Src::Cached, "{ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        ev = engine.evaluate("notif/2", "").await;
    }
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::string("monthly")), Src::Global)
    );
    assert_eq!(engine.health().status(), EvaluatorStatus::Serving);
}

#[tokio::test]
async fn evaluation_starts_without_a_database_and_connects_when_it_appears() {
    let db = TestDb::create().await;
    let args = db::DatabaseArgs {
        database: Some("postgres://nobody@127.0.0.1:1/none".into()),
        database_file: None,
        db_pool_size: 2,
        db_connect_timeout: Duration::from_millis(200),
        db_statement_timeout: Duration::from_secs(1),
        database_ca: None,
    };
    let lazy = args.pool().expect("a lazy pool needs no server");
    let (engine, _) = engine(lazy, exact_ttl());
    let ev = engine.evaluate("notif/2", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::string("daily")), Src::Default)
    );
    assert_ne!(engine.health().status(), EvaluatorStatus::Serving);
    drop(db);
}

#[tokio::test]
async fn malformed_rows_are_counted_and_never_panic() {
    let (_db, pool) = synced().await;
    sqlx::query("ALTER TABLE feature_flags.flags DROP CONSTRAINT valid_state")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE feature_flags.flags SET state = 'ENABLED', value = '\\xffffff' WHERE flag_id = 'notif/2'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE feature_flags.flags SET state = 'PAUSED', value = '\\x1805' WHERE flag_id = 'notif/3'")
        .execute(&pool)
        .await
        .unwrap();
    let (engine, metrics) = engine(pool, exact_ttl());
    let ev = engine.evaluate("notif/2", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::string("daily")), Src::Default)
    );
    let ev = engine.evaluate("notif/3", "").await;
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::int64(3)), Src::Default)
    );
    assert_eq!(metrics.invalid_values.get(), 2);
    assert_eq!(
        engine.health().status(),
        EvaluatorStatus::Serving,
        "bad rows are not outages"
    );
}

// ---- sync ----------------------------------------------------------------------------------------

#[tokio::test]
async fn sync_writes_definitions_and_a_second_run_changes_nothing() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let first = sync::sync(&pool, &flags(), false).await.unwrap();
    assert_eq!((first.features_written, first.flags_added.len()), (1, 4));
    let again = sync::sync(&pool, &flags(), false).await.unwrap();
    assert_eq!(again.changes(), 0, "{again:?}");
    let (row, _) = admin::get(&pool, "notif/2").await.unwrap();
    assert_eq!(
        (row.description.as_str(), row.layer.as_str()),
        ("flag 2", "GLOBAL")
    );
    assert_eq!(row.default_value, Some(FlagValue::string("daily")));
    let (row, _) = admin::get(&pool, "notif/1").await.unwrap();
    assert_eq!(row.layer, "USER");
}

#[tokio::test]
async fn sync_never_touches_runtime_state() {
    let (_db, pool) = synced().await;
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "t")
        .await
        .unwrap();
    admin::set_override(&pool, "notif/1", "u", State::Enabled, Some("false"), "t")
        .await
        .unwrap();
    let mut changed = flags();
    changed[1].description = "new words".into();
    let report = sync::sync(&pool, &changed, false).await.unwrap();
    assert_eq!(report.flags_updated, ["notif/2"]);
    let (row, _) = admin::get(&pool, "notif/2").await.unwrap();
    assert_eq!(
        (row.state, row.value),
        (Some(State::Enabled), Some(FlagValue::string("weekly")))
    );
    assert_eq!(admin::get(&pool, "notif/1").await.unwrap().1.len(), 1);
}

#[tokio::test]
async fn sync_archives_removed_flags_including_those_of_vanished_features() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let mut all = flags();
    let mut other = def("other/1", "", None);
    other.feature_id = "other".into();
    all.push(other);
    sync::sync(&pool, &all, false).await.unwrap();
    let report = sync::sync(&pool, &flags()[..3], false).await.unwrap();
    assert_eq!(report.flags_archived, ["notif/4", "other/1"]);
    assert!(admin::get(&pool, "other/1").await.unwrap().0.archived);
    let back = sync::sync(&pool, &flags(), false).await.unwrap();
    assert_eq!(
        back.flags_updated,
        ["notif/4"],
        "re-adding a flag un-archives it"
    );
}

#[tokio::test]
async fn breaking_changes_are_refused_naming_the_flag_unless_allowed() {
    let (_db, pool) = synced().await;
    let mut changed = flags();
    changed[2].flag_type = FlagType::String;
    changed[0].layer = "".into();
    let err = sync::sync(&pool, &changed, false).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SyncError::Breaking(ref v) if v.len() == 2),
        "{msg}"
    );
    assert!(
        msg.contains("notif/3: type changes from INT64 to STRING"),
        "{msg}"
    );
    assert!(msg.contains("notif/1: layer USER becomes global"), "{msg}");

    let mut other_layer = flags();
    other_layer[0].layer = "entity".into();
    assert!(
        sync::sync(&pool, &other_layer, false)
            .await
            .unwrap_err()
            .to_string()
            .contains("moves to another layer")
    );

    let mut to_layer = flags();
    to_layer[1].layer = "user".into();
    sync::sync(&pool, &to_layer, false)
        .await
        .expect("global -> layer is allowed");

    sync::sync(&pool, &changed, true)
        .await
        .expect("--allow-breaking applies them");
    assert_eq!(
        admin::get(&pool, "notif/3").await.unwrap().0.flag_type,
        FlagType::String
    );
}

#[tokio::test]
async fn syncing_zero_flags_is_refused() {
    let (_db, pool) = synced().await;
    assert!(matches!(
        sync::sync(&pool, &[], false).await,
        Err(SyncError::NoFlags)
    ));
    assert!(!admin::get(&pool, "notif/1").await.unwrap().0.archived);
}

// ---- flag administration ---------------------------------------------------------------------------

#[tokio::test]
async fn every_change_writes_an_audit_row() {
    let (_db, pool) = synced().await;
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "alice")
        .await
        .unwrap();
    admin::set_state(&pool, "notif/2", StateChange::Kill, "bob")
        .await
        .unwrap();
    assert_eq!(
        admin::set_state(&pool, "notif/2", StateChange::Unkill, "bob")
            .await
            .unwrap(),
        State::Enabled
    );
    admin::set_override(
        &pool,
        "notif/1",
        "u1",
        State::Enabled,
        Some("false"),
        "carol",
    )
    .await
    .unwrap();
    admin::set_override(&pool, "notif/1", "u1", State::Default, None, "carol")
        .await
        .unwrap();
    admin::remove_override(&pool, "notif/1", "u1", "dave")
        .await
        .unwrap();
    admin::remove_override(&pool, "notif/1", "nobody", "dave")
        .await
        .unwrap();
    let log = admin::audit_log(&pool, None, 50).await.unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("REMOVE_OVERRIDE", "dave"),
            ("REMOVE_OVERRIDE", "dave"),
            ("UPDATE_OVERRIDE", "carol"),
            ("CREATE_OVERRIDE", "carol"),
            ("UPDATE_STATE", "bob"),
            ("UPDATE_STATE", "bob"),
            ("UPDATE_STATE", "alice")
        ]
    );
    assert_eq!(log[6].new_value, Some(FlagValue::string("weekly")));
    assert_eq!(
        admin::audit_log(&pool, Some("notif/2"), 2)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn refused_changes_leave_no_trace() {
    let (_db, pool) = synced().await;
    let e = admin::set_state(&pool, "notif/3", StateChange::Set("abc".into()), "t")
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "notif/3 is INT64; 'abc' is not an integer");
    assert!(matches!(
        admin::set_override(&pool, "notif/2", "u", State::Enabled, Some("x"), "t").await,
        Err(AdminError::GlobalLayer(_))
    ));
    assert!(matches!(
        admin::set_override(&pool, "notif/1", "u", State::Killed, None, "t").await,
        Err(AdminError::EntityKill(_))
    ));
    assert!(matches!(
        admin::set_state(&pool, "nope/1", StateChange::Kill, "t").await,
        Err(AdminError::NotFound(_))
    ));
    assert!(admin::audit_log(&pool, None, 50).await.unwrap().is_empty());
    let (row, overrides) = admin::get(&pool, "notif/3").await.unwrap();
    assert_eq!((row.state, overrides.len()), (Some(State::Default), 0));
}

#[tokio::test]
async fn unicode_and_quote_laden_ids_are_stored_verbatim() {
    let (_db, pool) = synced().await;
    let entity = "robert'); DROP TABLE feature_flags.flags;-- 🦀";
    admin::set_override(&pool, "notif/1", entity, State::Enabled, Some("false"), "t")
        .await
        .unwrap();
    let (_, overrides) = admin::get(&pool, "notif/1").await.unwrap();
    assert_eq!(overrides[0].entity_id, entity);
}

/// The database a fresh connection of `pool` lands in (the previous connection is closed first,
/// so the pool opens a new one with its current settings).
async fn fresh_connection_database(pool: &PgPool) -> Result<String, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    conn.close().await?;
    Ok(name)
}

#[tokio::test]
async fn a_changed_database_url_file_reaches_new_connections_without_a_restart() {
    let (first, second) = (TestDb::create().await, TestDb::create().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, format!("{}\n", first.url)).unwrap();
    let args = db::DatabaseArgs {
        database: None,
        database_file: Some(file.clone()),
        db_pool_size: 1,
        db_connect_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(5),
        database_ca: None,
    };
    let pool = args.pool().unwrap();
    let watch = db::UrlFile::new(&args, &pool).expect("the URL comes from a file");
    let name_of = |url: &str| {
        url.rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        fresh_connection_database(&pool).await.unwrap(),
        name_of(&first.url)
    );
    assert_eq!(watch.check(), db::UrlReload::Unchanged);

    // The Secret is rotated: the kubelet writes the new URL into the volume.
    std::fs::write(&file, &second.url).unwrap();
    assert_eq!(watch.check(), db::UrlReload::Reloaded);
    assert_eq!(
        fresh_connection_database(&pool).await.unwrap(),
        name_of(&second.url)
    );
    assert_eq!(watch.check(), db::UrlReload::Unchanged);

    // A broken file is refused; the pool keeps the URL it had, and takes a fixed file later.
    for broken in ["mysql://root@db/flags", "not a url"] {
        std::fs::write(&file, broken).unwrap();
        assert_eq!(watch.check(), db::UrlReload::Failed, "{broken}");
        assert_eq!(
            fresh_connection_database(&pool).await.unwrap(),
            name_of(&second.url)
        );
    }
    std::fs::remove_file(&file).unwrap();
    assert_eq!(watch.check(), db::UrlReload::Failed, "a missing file");
    std::fs::write(&file, &first.url).unwrap();
    assert_eq!(watch.check(), db::UrlReload::Reloaded);
    assert_eq!(
        fresh_connection_database(&pool).await.unwrap(),
        name_of(&first.url)
    );

    // The watch notices a change by itself.
    let stop = tokio_util::sync::CancellationToken::new();
    let task = pbflags_evaluator::app::serve::follow_database_file(
        watch.clone(),
        Duration::from_millis(100),
        stop.clone(),
    );
    std::fs::write(&file, &second.url).unwrap();
    let mut landed = String::new();
    for _ in 0..100 {
        landed = fresh_connection_database(&pool).await.unwrap();
        if landed == name_of(&second.url) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(landed, name_of(&second.url));
    stop.cancel();
    task.await.unwrap();
}

// ---- change notifications ----------------------------------------------------------------------

/// Evaluates `flag_id` for `entity_id` until `want` holds (5 s at most); the engine's manual clock
/// never expires an entry, so only a notification can bring a change.
async fn eventually_evaluates(
    engine: &Engine,
    flag_id: &str,
    entity_id: &str,
    want: impl Fn(&pbflags_evaluator::core::engine::Evaluation) -> bool,
) {
    let mut last = None;
    for _ in 0..500 {
        let ev = engine.evaluate(flag_id, entity_id).await;
        if want(&ev) {
            return;
        }
        last = Some(ev);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{flag_id} for {entity_id:?} never changed: {last:?}");
}

/// An engine following `pool`'s change notifications, once it listens.
async fn following(pool: &PgPool) -> (Arc<Engine>, Metrics, tokio_util::sync::CancellationToken) {
    let (engine, metrics) = engine(pool.clone(), exact_ttl());
    let stop = tokio_util::sync::CancellationToken::new();
    changes::spawn(pool.clone(), engine.clone(), stop.clone());
    for _ in 0..500 {
        if metrics.change_stream_connected.get() == 1 {
            return (engine, metrics, stop);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the engine never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_caches_through_notifications_without_waiting_for_a_ttl() {
    let (_db, pool) = synced().await;
    let (engine, metrics, stop) = following(&pool).await;
    let string = |s: &str| Some(FlagValue::string(s));
    let ev = engine.evaluate("notif/2", "").await;
    assert_eq!(
        (ev.value().cloned(), ev.source),
        (string("daily"), Src::Default)
    );

    // A state set the way the CLI sets it.
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "t")
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/2", "", |ev| {
        ev.source == Src::Global && ev.value() == string("weekly").as_ref()
    })
    .await;
    // A kill made with plain SQL, as v0.6's tools or a database administrator make it.
    sqlx::query("UPDATE feature_flags.flags SET state = 'KILLED' WHERE flag_id = 'notif/2'")
        .execute(&pool)
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/2", "", |ev| ev.source == Src::Killed).await;
    sqlx::query("UPDATE feature_flags.flags SET state = 'ENABLED' WHERE flag_id = 'notif/2'")
        .execute(&pool)
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/2", "", |ev| ev.source == Src::Global).await;

    // A new override, where "no override" was cached, and its removal.
    let ev = engine.evaluate("notif/1", "user-1").await;
    assert_eq!(ev.source, Src::Default);
    admin::set_override(
        &pool,
        "notif/1",
        "user-1",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    eventually_evaluates(&engine, "notif/1", "user-1", |ev| {
        ev.source == Src::Override && ev.value() == Some(&FlagValue::bool(false))
    })
    .await;
    admin::remove_override(&pool, "notif/1", "user-1", "t")
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/1", "user-1", |ev| ev.source == Src::Default).await;
    assert!(metrics.change_events("flag") >= 3, "{}", metrics.render());
    assert!(
        metrics.change_events("override") >= 2,
        "{}",
        metrics.render()
    );

    // Evaluations of unchanged flags stay cached through all of it.
    let before = fetches(&metrics, "flag_state");
    engine.evaluate("notif/3", "").await;
    let fetched = fetches(&metrics, "flag_state");
    admin::set_state(&pool, "notif/4", StateChange::Set("0.5".into()), "t")
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/4", "", |ev| ev.source == Src::Global).await;
    let after_notif_4 = fetches(&metrics, "flag_state");
    engine.evaluate("notif/3", "").await;
    assert_eq!(
        fetches(&metrics, "flag_state"),
        after_notif_4,
        "notif/3 stayed cached"
    );
    assert!(fetched > before);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_connection_resyncs_and_shows_changes_made_meanwhile() {
    let (_db, pool) = synced().await;
    let (engine, metrics, stop) = following(&pool).await;
    assert_eq!(engine.evaluate("notif/2", "").await.source, Src::Default);
    let resyncs = metrics.change_events("resync");

    // The LISTEN connection is ended by the server; the change lands while nobody listens.
    let mut ended = 0;
    for _ in 0..100 {
        ended = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN%' AND datname = current_database()) t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if ended > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ended, 1, "one LISTEN connection");
    admin::set_state(&pool, "notif/2", StateChange::Set("weekly".into()), "t")
        .await
        .unwrap();
    eventually_evaluates(&engine, "notif/2", "", |ev| ev.source == Src::Global).await;
    assert!(
        metrics.change_events("resync") > resyncs,
        "the reconnection resynced: {}",
        metrics.render()
    );
    for _ in 0..500 {
        if metrics.change_stream_connected.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.change_stream_connected.get(), 1, "listening again");
    stop.cancel();
}
