//! `pbflags-operator`: parse configuration, start the controller and the health/metrics server,
//! stop on SIGTERM.

use std::sync::Arc;

use clap::Parser;
use pbflags_operator::build::Defaults;
use pbflags_operator::controller;
use pbflags_operator::health;
use pbflags_operator::lease::{self, Elector, LeaseConfig};
use pbflags_operator::metrics::Metrics;
use pbflags_operator::reconcile::Context;
use pbflags_operator::startup;
use std::process::ExitCode;
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

/// Exit status for an invalid setting (EX_USAGE), as the evaluator.
const EXIT_USAGE: u8 = 64;
/// Exit status when the cluster lacks what the operator needs: the CRD, or the right to list
/// FlagEvaluators (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// A setting that cannot work: exits 64 naming it.
fn usage(setting: &str, problem: impl std::fmt::Display) -> ExitCode {
    eprintln!("pbflags-operator: {setting}: {problem}");
    ExitCode::from(EXIT_USAGE)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => return usage("--log-level (PBFLAGS_LOG_LEVEL)", e),
    };
    let metrics_addr: std::net::SocketAddr = match args.metrics_addr.parse() {
        Ok(a) => a,
        Err(e) => {
            return usage(
                "--metrics-addr (PBFLAGS_OPERATOR_METRICS_ADDR)",
                format!("{:?} is not an address:port ({e})", args.metrics_addr),
            );
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .init();
    tracing::info!(
        version = pbflags_runtime::VERSION,
        git_sha = pbflags_runtime::GIT_SHA,
        "pbflags-operator starting"
    );
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            return usage(
                "Kubernetes configuration (in-cluster service account, or KUBECONFIG)",
                e,
            );
        }
    };
    let namespaces: Vec<String> = args
        .watch_namespaces
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    if let Err(e) = startup::check_api(&client, &namespaces).await {
        tracing::error!(error = %e, "cannot run");
        eprintln!("pbflags-operator: {e}");
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
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
    let readiness = ctx.readiness.clone();
    readiness.spawn_api_check(
        client.clone(),
        Duration::from_secs(10),
        Duration::from_secs(5),
        shutdown.clone(),
    );
    let app = health::router(readiness, metrics);
    let listener = match tokio::net::TcpListener::bind(metrics_addr).await {
        Ok(l) => l,
        Err(e) => {
            return usage(
                "--metrics-addr (PBFLAGS_OPERATOR_METRICS_ADDR)",
                format!("cannot listen on {metrics_addr}: {e}"),
            );
        }
    };
    let server_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await;
    });
    let leadership = if args.leader_election {
        let identity = args
            .identity
            .unwrap_or_else(|| format!("pbflags-operator-{}", std::process::id()));
        let cfg = LeaseConfig {
            name: "pbflags-operator".to_owned(),
            namespace: args.lease_namespace,
            identity,
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(2),
        };
        let Some(leadership) = lease::acquire(Elector::new(client, cfg), shutdown.clone()).await
        else {
            return ExitCode::SUCCESS;
        };
        // Losing the lease stops reconciling at once: the process exits and the pod restarts
        // as a follower.
        let lost = leadership.lost.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            tracing::error!("lease lost; exiting");
            std::process::exit(1);
        });
        Some(leadership)
    } else {
        None
    };
    controller::run_namespaces(ctx, &namespaces, shutdown).await;
    // Reconciling has stopped: only now may another replica take over.
    if let Some(leadership) = leadership {
        leadership.resign(Duration::from_secs(5)).await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
