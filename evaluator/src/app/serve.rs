//! `pbflags-evaluator serve`: wires descriptors, the state source, the engine, the kill poller, the
//! descriptor watcher and the server together, and runs them until shutdown.
//!
//! Shutdown: the token is cancelled (first SIGTERM/SIGINT) → readiness and `grpc.health.v1` turn
//! NOT_SERVING → requests are still accepted and served for `--shutdown-delay` → the listener
//! closes and in-flight requests drain within the deadline → background tasks stop.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::config::{Config, Mode, resolve_listen};
use crate::core::clock::Clock;
use crate::core::engine::Engine;
use crate::core::registry::Registry;
use crate::core::source::StateSource;
use crate::metrics::{Backend, Metrics};
use crate::reload::descriptors::{self, DescriptorWatcher, WatcherConfig};
use crate::server::{self, AppParts, Readiness, service::Evaluator};
use crate::sources::pg::{db, source::PgSource};
use crate::sources::upstream::UpstreamSource;
use pbflags_proto::v1::flag_change_service_server::FlagChangeServiceServer;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The descriptors could not be loaded at start.
    #[error("load descriptors: {0}")]
    Descriptors(#[from] descriptors::ReloadError),
    /// Migrations were asked for and failed.
    #[error("{0}")]
    Db(#[from] db::DbError),
    /// The upstream client could not be set up (proxy mode).
    #[error("upstream: {0}")]
    Upstream(String),
    /// The TLS certificate files did not load.
    #[error("{0}")]
    Tls(#[from] server::tls::TlsError),
    /// The admin listener could not be set up.
    #[error("admin: {0}")]
    Admin(String),
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound but not yet serving evaluator (tests bind port 0 and read the address).
pub struct Prepared {
    listener: tokio::net::TcpListener,
    parts: AppParts,
    engine: Arc<Engine>,
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    watcher: DescriptorWatcher,
    config: Config,
    clock: Clock,
    tls: Option<Tls>,
    metrics: Metrics,
    /// The database URL file to follow (root mode with `--database-file`).
    database_file: Option<Arc<db::UrlFile>>,
    /// The pool whose change notifications to follow (root mode, unless switched off).
    notifications: Option<sqlx::PgPool>,
    /// The upstream whose change stream to follow (proxy mode, unless switched off).
    upstream: Option<Arc<UpstreamSource>>,
    /// The admin listener, its service and its tokens (root mode with `--admin-listen`).
    admin: Option<AdminListener>,
}

/// The admin listener, bound.
struct AdminListener {
    listener: tokio::net::TcpListener,
    service: server::admin::AdminService,
    tokens: Option<Arc<server::tokens::Tokens>>,
    banner: Option<server::ui::Banner>,
}

/// The certificate store and the rustls configuration serving from it.
struct Tls {
    store: Arc<server::tls::CertStore>,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
}

/// How often the engine's coarse clock is advanced. Everything it times is 100 ms or longer (TTLs
/// in seconds, the 500 ms probe interval, the kill poll's minimum): 50 ms of staleness is within
/// their noise, and an idle evaluator wakes 20 times a second for it instead of 200.
const CLOCK_TICK: Duration = Duration::from_millis(50);

impl Prepared {
    /// The admin listener's bound address, if it is on.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|a| a.listener.local_addr().ok())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// Loads descriptors, builds the source and engine, migrates if asked, and binds the listener.
pub async fn prepare(config: Config) -> Result<Prepared, ServeError> {
    for key in &config.ignored_keys {
        tracing::warn!(
            key,
            "config file key ignored: v0.6's admin address served without authentication; use --admin-listen (with --admin-token-file)"
        );
    }
    let snapshot = descriptors::load_file(&config.descriptors)?;
    for w in snapshot.warnings() {
        tracing::warn!(warning = %w, "descriptor warning");
    }
    tracing::info!(flags = snapshot.len(), sha256 = %snapshot.hash(), path = %config.descriptors.display(), "descriptors loaded");
    let registry = Arc::new(Registry::new(snapshot));
    let metrics = Metrics::new();
    let (mut database_file, mut notifications, mut upstream) = (None, None, None);
    let mut root_pool = None;
    let (source, backend): (Arc<dyn StateSource>, Backend) = match &config.mode {
        Mode::Root => {
            let pool = config.db.pool()?;
            database_file = db::UrlFile::new(&config.db, &pool);
            notifications = config.change_notifications.then(|| pool.clone());
            root_pool = Some(pool.clone());
            if config.migrate {
                let n = db::migrate(&pool).await?;
                tracing::info!(applied = n, "migrations applied");
            }
            (
                Arc::new(PgSource::new(
                    pool,
                    config.cache.fetch_timeout,
                    metrics.clone(),
                )),
                Backend::Db,
            )
        }
        Mode::Proxy(url) => {
            let source = Arc::new(
                UpstreamSource::new(
                    url,
                    config.cache.fetch_timeout,
                    config.upstream_protocol,
                    &config.upstream_ca,
                )
                .map_err(ServeError::Upstream)?,
            );
            upstream = config.change_notifications.then(|| source.clone());
            (source, Backend::Upstream)
        }
    };
    let clock = Clock::coarse();
    clock.tick();
    let engine = Arc::new(
        Engine::with_clock(
            registry.clone(),
            source,
            backend,
            config.cache.clone(),
            metrics.clone(),
            clock.clone(),
        )
        .max_watchers(config.max_watchers),
    );

    let tls = match config.tls.clone() {
        None => None,
        Some(files) => {
            let store = server::tls::CertStore::open(files)?;
            let config = store.server_config()?;
            Some(Tls { store, config })
        }
    };
    let addrs = resolve_listen(&config.listen).map_err(|e| ServeError::Bind {
        addr: config.listen.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;

    let admin = match (&config.admin, root_pool) {
        (Some(a), Some(pool)) => {
            let tokens = match &a.token_file {
                Some(f) => Some(server::tokens::Tokens::open(f).map_err(ServeError::Admin)?),
                None => None,
            };
            let addrs = resolve_listen(&a.listen).map_err(ServeError::Admin)?;
            let listener = tokio::net::TcpListener::bind(addrs.as_slice())
                .await
                .map_err(|source| ServeError::Bind {
                    addr: a.listen.clone(),
                    source,
                })?;
            let service = server::admin::AdminService::new(
                pool,
                registry.clone(),
                tokens.clone(),
                metrics.clone(),
            );
            Some(AdminListener {
                listener,
                service,
                tokens,
                banner: a.banner.clone(),
            })
        }
        _ => None,
    };

    let (health, grpc_health) = tonic_health::server::health_reporter();
    let readiness = Readiness::default();
    let parts = AppParts {
        evaluator: Evaluator::new(engine.clone(), config.max_bulk_flags, config.ids),
        readiness: readiness.clone(),
        grpc_routes: tonic::service::Routes::new(grpc_health).add_service(
            FlagChangeServiceServer::new(server::changes::ChangeService::new(
                engine.clone(),
                server::changes::HEARTBEAT,
            )),
        ),
        max_request_bytes: config.max_request_bytes,
    };
    let mut wc = WatcherConfig::new(&config.descriptors);
    wc.poll_interval = config.descriptor_poll_interval;
    wc.allow_empty = config.allow_empty_descriptors;
    let watcher = DescriptorWatcher::new(wc, registry, metrics.clone());
    Ok(Prepared {
        tls,
        metrics,
        database_file,
        notifications,
        upstream,
        admin,
        listener,
        parts,
        engine,
        readiness,
        health,
        watcher,
        config,
        clock,
    })
}

const SERVICE: &str = "pbflags.v1.FlagEvaluatorService";

async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE, status).await;
}

/// Checks the database URL file on file events in its directory and every `interval`.
pub fn follow_database_file(
    file: Arc<db::UrlFile>,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let path = file.path().to_owned();
    crate::reload::files::FileWatch {
        paths: vec![path],
        poll_interval: interval,
        debounce: Duration::from_millis(250),
        fs_events: true,
        sighup: false,
    }
    .spawn(
        move |_| {
            file.check();
        },
        stop,
    )
}

/// Serves until `shutdown` is cancelled.
pub async fn run(prepared: Prepared, shutdown: CancellationToken) {
    let Prepared {
        listener,
        parts,
        engine,
        readiness,
        health,
        watcher,
        config,
        clock,
        tls,
        metrics,
        database_file,
        notifications,
        upstream,
        admin,
    } = prepared;
    let tasks = CancellationToken::new();

    // Every background task is restarted if it fails (see pbflags_runtime::supervise): each
    // holds no state a restart loses (the clock, the kill set and the certificate store live
    // outside it), and serving goes on meanwhile.
    let supervised =
        |name: &'static str, start: Box<dyn FnMut() -> tokio::task::JoinHandle<()> + Send>| {
            let (tasks, metrics) = (tasks.clone(), metrics.clone());
            tokio::spawn(pbflags_runtime::supervise::supervise(
                name,
                tasks,
                start,
                move |_| metrics.task_restart(name),
            ))
        };
    let mut background = vec![
        supervised("clock", {
            let (clock, tasks) = (clock.clone(), tasks.clone());
            Box::new(move || {
                let (clock, tasks) = (clock.clone(), tasks.clone());
                tokio::spawn(async move {
                    pbflags_runtime::periodic::every(CLOCK_TICK, &tasks, || async {
                        clock.tick();
                    })
                    .await;
                })
            })
        }),
        supervised("kill_poller", {
            let (engine, tasks) = (engine.clone(), tasks.clone());
            Box::new(move || crate::reload::kills::spawn(engine.clone(), tasks.clone()))
        }),
        supervised("descriptor_watcher", {
            let (watcher, tasks) = (Arc::new(watcher), tasks.clone());
            Box::new(move || watcher.spawn(tasks.clone()))
        }),
    ];
    if let Some(t) = &tls {
        let (store, interval, metrics, tasks) = (
            t.store.clone(),
            config.tls_poll_interval,
            metrics.clone(),
            tasks.clone(),
        );
        background.push(supervised(
            "tls_watcher",
            Box::new(move || store.spawn_watch(interval, metrics.clone(), tasks.clone())),
        ));
    }

    if let Some(pool) = notifications {
        let (engine, tasks) = (engine.clone(), tasks.clone());
        background.push(supervised(
            "change_notifications",
            Box::new(move || {
                crate::sources::pg::changes::spawn(pool.clone(), engine.clone(), tasks.clone())
            }),
        ));
    }
    if let Some(upstream) = upstream {
        let (engine, tasks) = (engine.clone(), tasks.clone());
        background.push(supervised(
            "change_stream",
            Box::new(move || {
                crate::sources::follow::spawn(upstream.clone(), engine.clone(), tasks.clone())
            }),
        ));
    }
    if let Some(tokens) = admin.as_ref().and_then(|a| a.tokens.clone()) {
        let (interval, tasks) = (config.tls_poll_interval, tasks.clone());
        background.push(supervised(
            "admin_token_watcher",
            Box::new(move || {
                let tokens = tokens.clone();
                crate::reload::files::FileWatch {
                    paths: vec![tokens.path().to_owned()],
                    poll_interval: interval,
                    debounce: Duration::from_millis(250),
                    fs_events: true,
                    sighup: false,
                }
                .spawn(
                    move |_| {
                        tokens.check();
                    },
                    tasks.clone(),
                )
            }),
        ));
    }
    if let Some(file) = &database_file {
        let (file, interval, tasks) = (file.clone(), config.tls_poll_interval, tasks.clone());
        background.push(supervised(
            "database_file_watcher",
            Box::new(move || follow_database_file(file.clone(), interval, tasks.clone())),
        ));
    }

    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mode = match &config.mode {
        Mode::Root => "root".to_owned(),
        Mode::Proxy(url) => format!("proxy of {url}"),
    };
    readiness.set(true);
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    let transport = if tls.is_some() { "TLS" } else { "cleartext" };
    tracing::info!(%addr, %mode, transport, worker_threads = config.worker_threads, "serving gRPC, gRPC-Web and Connect");

    let on_shutdown = {
        let (shutdown, readiness, health) = (shutdown.clone(), readiness.clone(), health.clone());
        let delay = config.shutdown_delay;
        async move {
            shutdown.cancelled().await;
            readiness.set(false);
            set_health(&health, tonic_health::ServingStatus::NotServing).await;
            if !delay.is_zero() {
                // Kubernetes removes a terminating pod from its Service's endpoints while it is
                // signalled, not before: connections keep arriving for a moment. Keep accepting and
                // serving them, not ready, until the endpoints have caught up.
                tracing::info!(
                    ?delay,
                    "shutting down: not ready, serving on until the delay ends"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: draining in-flight requests");
        }
    };
    let server_token = CancellationToken::new();
    let drained = {
        let server_token = server_token.clone();
        let app = server::router(parts);
        let tls_config = tls.map(|t| t.config);
        let admin_serve = admin.map(|a| {
            let addr = a
                .listener
                .local_addr()
                .map(|x| x.to_string())
                .unwrap_or_default();
            let auth = if a.tokens.is_some() {
                "bearer tokens"
            } else {
                "no tokens (loopback)"
            };
            tracing::info!(%addr, auth, "serving the admin API (FlagAdminService) and web UI");
            let app = server::admin::router(
                a.service,
                server::rpc::RpcLimits {
                    max_request_bytes: config.max_request_bytes,
                },
                a.banner,
                tls_config.is_some(),
            );
            server::serve(
                a.listener,
                app,
                tls_config.clone(),
                &config.connections,
                metrics.clone(),
                server_token.clone(),
                config.shutdown_timeout,
            )
        });
        let main_token = server_token.clone();
        let serve = async {
            let main = server::serve(
                listener,
                app,
                tls_config.clone(),
                &config.connections,
                metrics.clone(),
                main_token,
                config.shutdown_timeout,
            );
            match admin_serve {
                Some(admin) => {
                    let (main, admin) = tokio::join!(main, admin);
                    main && admin
                }
                None => main.await,
            }
        };
        let hub_engine = engine.clone();
        let signal = async move {
            on_shutdown.await;
            // Change streams end cleanly, so draining does not wait on them.
            hub_engine.hub().close();
            server_token.cancel();
        };
        let (drained, ()) = tokio::join!(serve, signal);
        drained
    };
    tasks.cancel();
    for task in background {
        let _ = task.await;
    }
    tracing::info!(drained, "stopped");
}
