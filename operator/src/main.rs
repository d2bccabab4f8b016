//! `pbflags-operator`: parse configuration, start the controller and the health/metrics server,
//! stop on SIGTERM.

use std::sync::Arc;

use clap::Parser;
use pbflags_operator::build::Defaults;
use pbflags_operator::controller;
use pbflags_operator::health::{self, Readiness};
use pbflags_operator::lease::{self, LeaseConfig};
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::Context;
use std::time::Duration;
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
    /// Elect a leader through a Lease, so several replicas are safe (only the holder reconciles).
    #[arg(long, env = "PBFLAGS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own; set from the pod's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Watch only these namespaces (comma-separated); empty means the whole cluster.
    #[arg(long, env = "PBFLAGS_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// This replica's identity in the Lease (set from the pod's metadata.name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level)?)
        .init();
    tracing::info!(
        version = pbflags_runtime::VERSION,
        git_sha = pbflags_runtime::GIT_SHA,
        "pbflags-operator starting"
    );
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Defaults {
            image: args.evaluator_image,
        },
        metrics.clone(),
    ));
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
    let readiness = Arc::new(Readiness::default());
    readiness.spawn_api_check(
        client.clone(),
        Duration::from_secs(10),
        Duration::from_secs(5),
        shutdown.clone(),
    );
    let app = health::router(readiness, metrics);
    let listener = tokio::net::TcpListener::bind(&args.metrics_addr).await?;
    let server_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await;
    });
    if args.leader_election {
        let identity = args
            .identity
            .unwrap_or_else(|| format!("pbflags-operator-{}", std::process::id()));
        let cfg = LeaseConfig {
            name: "pbflags-operator".to_owned(),
            namespace: args.lease_namespace,
            identity,
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        let Some(lost) = lease::acquire(client, cfg, shutdown.clone()).await else {
            return Ok(());
        };
        // Losing the lease stops reconciling: the process exits and the pod restarts as a follower.
        let stop = shutdown.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
            std::process::exit(1);
        });
    }
    let namespaces: Vec<String> = args
        .watch_namespaces
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    controller::run_namespaces(ctx, &namespaces, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}
