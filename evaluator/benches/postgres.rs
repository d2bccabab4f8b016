//! Latency against a real PostgreSQL on loopback: cold misses (flag state fetched from the
//! database), 100 concurrent misses for one flag (counted in queries), and a cold BulkEvaluate of
//! 100 flags for an entity; then misses during an outage, with the database refusing connections
//! and black-holed (a listener that accepts and never answers). Starts its own throwaway server
//! with scripts/pg.sh.
//! `cargo bench -p pbflags-evaluator --bench postgres`

#[path = "../tests/support/engine.rs"]
mod harness;
#[path = "../tests/support/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_evaluator::core::engine::Engine;
use pbflags_evaluator::core::registry::{ContentHash, Registry, Snapshot};
use pbflags_evaluator::metrics::{Backend, Metrics};
use pbflags_evaluator::sources::pg::admin::{self, StateChange};
use pbflags_evaluator::sources::pg::source::PgSource;
use pbflags_evaluator::sources::pg::{db, sync};
use pbflags_proto::v1::{FlagType, FlagValue, State};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn fetches(m: &Metrics, op: &str) -> u64 {
    let needle =
        format!("pbflags_fetch_duration_seconds_count{{backend=\"db\",operation=\"{op}\"}} ");
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.parse().unwrap_or(0))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = pg::PgServer::start();
        let pool = pg::pool(&server.url).await;
        db::migrate(&pool).await.expect("migrate");
        let flags: Vec<_> = (1..=100)
            .map(|i| {
                let mut d = harness::def(&format!("bench/{i}"), "user", Some(FlagValue::int64(0)));
                d.flag_type = FlagType::Int64;
                d
            })
            .collect();
        sync::sync(&pool, &flags, false).await.expect("sync");
        for i in (1..=100).step_by(3) {
            admin::set_state(&pool, &format!("bench/{i}"), StateChange::Set(i.to_string()), "bench").await.expect("set");
        }
        admin::set_override(&pool, "bench/7", "u1", State::Enabled, Some("70"), "bench").await.expect("override");

        let metrics = Metrics::new();
        let registry = Arc::new(Registry::new(Snapshot::new(flags, ContentHash::default(), vec![])));
        let source = Arc::new(PgSource::new(pool.clone(), Duration::from_secs(2), metrics.clone()));
        let engine = Arc::new(Engine::new(registry, source, Backend::Db, CacheConfig::default(), metrics.clone()));

        // Cold misses: flush, then evaluate (only the evaluation is timed).
        let mut samples = Vec::with_capacity(2000);
        for n in 0..2000 {
            engine.caches().flush();
            let id = format!("bench/{}", n % 100 + 1);
            let t = Instant::now();
            let ev = engine.evaluate(&id, "").await;
            samples.push(t.elapsed());
            std::hint::black_box(ev);
        }
        samples.sort();
        println!(
            "cold miss (flag state from PostgreSQL, loopback), n=2000: p50 {:?}, p99 {:?}, max {:?}",
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );

        // 100 concurrent misses for one flag.
        engine.caches().flush();
        let before = fetches(&metrics, "flag_state");
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.evaluate("bench/1", "").await.source })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        println!("100 concurrent misses for one flag: {} query", fetches(&metrics, "flag_state") - before);

        // Cold BulkEvaluate of 100 flags for an entity.
        let mut bulk = Vec::new();
        for _ in 0..200 {
            engine.caches().flush();
            let (o, f) = (fetches(&metrics, "overrides"), fetches(&metrics, "flag_state"));
            let t = Instant::now();
            let out = engine.bulk_evaluate(Vec::new(), "u1").await;
            bulk.push(t.elapsed());
            assert_eq!(out.len(), 100);
            assert_eq!((fetches(&metrics, "overrides") - o, fetches(&metrics, "flag_state") - f), (1, 1));
        }
        bulk.sort();
        println!(
            "cold BulkEvaluate of 100 flags for an entity, n=200: 2 queries each; p50 {:?}, p99 {:?}",
            percentile(&bulk, 0.50),
            percentile(&bulk, 0.99)
        );
        drop(server);

        // Outages: 2,000 cold misses (500 ms fetch timeout, as configured by default), one every
        // 2.5 ms so the run spans about ten probe intervals, against a database that refuses
        // connections, then one that is black-holed.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = l.local_addr().expect("addr").port();
            drop(l); // nothing listens there now: connections are refused
            format!("postgres://u@127.0.0.1:{port}/flags?sslmode=disable")
        };
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hole_url = format!(
            "postgres://u@{}/flags?sslmode=disable",
            hole.local_addr().expect("addr")
        );
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hole.accept().await {
                held.push(s); // accepted, never answered
            }
        });
        for (name, url) in [("refusing connections", refused), ("black-holed", hole_url)] {
            let args = db::DatabaseArgs {
                database: Some(url),
                database_file: None,
                db_pool_size: 4,
                db_connect_timeout: Duration::from_secs(5),
                db_statement_timeout: Duration::from_secs(5),
                database_ca: None,
            };
            let metrics = Metrics::new();
            let flags: Vec<_> = (1..=100)
                .map(|i| harness::def(&format!("bench/{i}"), "", Some(FlagValue::int64(0))))
                .collect();
            let registry = Arc::new(Registry::new(Snapshot::new(flags, ContentHash::default(), vec![])));
            let source = Arc::new(PgSource::new(
                args.pool().expect("lazy pool"),
                Duration::from_millis(500),
                metrics.clone(),
            ));
            let engine = Engine::new(registry, source, Backend::Db, CacheConfig::default(), metrics.clone());
            let mut samples = Vec::with_capacity(2000);
            let started = Instant::now();
            let mut pace = tokio::time::interval(Duration::from_micros(2500));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..2000 {
                pace.tick().await;
                let t = Instant::now();
                let ev = engine.evaluate(&format!("bench/{}", n % 100 + 1), "").await;
                samples.push(t.elapsed());
                std::hint::black_box(ev);
                engine.caches().flush();
            }
            let elapsed = started.elapsed();
            let calls = fetches(&metrics, "flag_state");
            let first: Vec<_> = samples[..3].iter().map(|d| format!("{d:.1?}")).collect();
            // Once known down: every miss after the three that degraded the source.
            let mut known_down = samples[3..].to_vec();
            known_down.sort();
            println!(
                "outage, database {name}: 2000 misses in {elapsed:.2?}, {calls} source calls \
                 (the first three misses {}); once known down: p50 {:?}, p99 {:?}, max {:?}",
                first.join(", "),
                percentile(&known_down, 0.50),
                percentile(&known_down, 0.99),
                known_down[known_down.len() - 1]
            );
        }
    });
}
