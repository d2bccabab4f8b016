//! `pbflags-operator`: parse configuration, start the controller and the health/metrics server,
//! stop on SIGTERM.

use std::sync::Arc;

use clap::Parser;
use pbflags_operator::build::Defaults;
use pbflags_operator::controller::{self, Context};
use pbflags_operator::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Runs pbflags evaluators for FlagEvaluator resources.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Evaluator image used when a FlagEvaluator does not set spec.image.
    #[arg(
        long,
        env = "PBFLAGS_EVALUATOR_IMAGE",
        default_value = "pbflags-evaluator:latest"
    )]
    evaluator_image: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PBFLAGS_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: String,
    /// Log filter.
    #[arg(long, env = "PBFLAGS_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .init();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "pbflags-operator starting"
    );
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let ctx = Arc::new(Context {
        client,
        defaults: Defaults {
            image: args.evaluator_image,
        },
        metrics: metrics.clone(),
    });
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    let term = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            term.cancel();
        }
    });
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        );
    let listener = tokio::net::TcpListener::bind(&args.metrics_addr).await?;
    let server_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await;
    });
    controller::run(ctx, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}
