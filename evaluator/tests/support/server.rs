//! An evaluator served in-process on a loopback port, as `pbflags-evaluator serve` runs it, with
//! the example descriptors.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use pbflags_evaluator::app::config::{Config, ConfigError, ServeArgs};
use pbflags_evaluator::app::serve;
use pbflags_evaluator::metrics::Metrics;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Resolves `serve` arguments: `--descriptors` (the example set) followed by `extra`.
pub fn resolve(extra: &[&str]) -> Result<Config, ConfigError> {
    let descriptors = format!(
        "{}/../proto/example/descriptors.pb",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    );
    let mut argv = vec!["t", "--descriptors", &descriptors];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("args").serve.resolve()
}

/// A serving evaluator.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The admin listener's address, if it is on.
    pub admin_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: Metrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves on a free loopback port with `extra` arguments.
    pub async fn start(extra: &[&str]) -> Running {
        let listen = ["--listen", "127.0.0.1:0"];
        Self::with_config(resolve(&[&listen[..], extra].concat()).expect("config")).await
    }

    /// Serves `config`.
    pub async fn with_config(config: Config) -> Running {
        let prepared = serve::prepare(config).await.expect("prepare");
        let addr = prepared.local_addr().expect("addr");
        let admin_addr = prepared.admin_addr();
        let metrics = prepared.engine().metrics().clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve::run(prepared, stop.clone()));
        Running {
            addr,
            admin_addr,
            metrics,
            stop,
            task,
        }
    }

    /// `http://` and the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC client of this server.
    pub async fn client(&self) -> FlagEvaluatorServiceClient<tonic::transport::Channel> {
        FlagEvaluatorServiceClient::new(
            tonic::transport::Endpoint::from_shared(self.url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    /// Shuts down and waits (bounded) for the drain to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("stops in time")
            .expect("no panic");
    }
}

/// Waits (bounded) until `f` holds; the bound is a hang guard, not a performance claim.
pub async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies the migrations and syncs the example descriptors into the database of `pool`.
pub async fn migrate_and_sync_example(pool: &sqlx::PgPool) {
    pbflags_evaluator::sources::pg::db::migrate(pool)
        .await
        .expect("migrate");
    let snapshot =
        pbflags_evaluator::core::registry::Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS)
            .expect("example descriptors");
    let flags: Vec<_> = snapshot.flags().iter().map(|f| (**f).clone()).collect();
    pbflags_evaluator::sources::pg::sync::sync(pool, &flags, false)
        .await
        .expect("sync");
}
