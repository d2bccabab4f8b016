//! `pbflags-evaluator`: parse arguments, run the subcommand, map errors to exit codes
//! (64 for bad arguments or configuration, 1 for other failures).

use std::process::ExitCode;

use clap::Parser as _;
use pbflags_evaluator::app::cli::{Cli, Command};
use pbflags_evaluator::app::commands::{self, Failure};
use pbflags_evaluator::app::{descriptors, logging, serve};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a bad argument or value (from a
            // flag or its PBFLAGS_* variable) is a usage error, 64 like every invalid setting.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => return run_serve(&args),
        Command::Descriptors(args) => {
            let loaded = commands::load(&args.descriptors);
            if let Some(path) = &args.report {
                write_report(path, loaded.as_ref());
            }
            loaded.map(|s| descriptors::render(&s, args.json))
        }
        command => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                match &command {
                    Command::Migrate(a) => commands::migrate(a).await,
                    Command::Sync(a) => {
                        let result = commands::sync(a).await;
                        if let Some(path) = &a.report {
                            let outcome = match &result {
                                Ok(_) => commands::load(&a.descriptors),
                                Err(f) => Err(Failure {
                                    code: f.code,
                                    message: f.message.clone(),
                                }),
                            };
                            write_report(path, outcome.as_ref());
                        }
                        result
                    }
                    Command::Flags(a) => commands::flags(a).await,
                    Command::Serve(_) | Command::Descriptors(_) => unreachable!("handled above"),
                }
            }),
            Err(e) => Err(Failure::from(e)),
        },
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Writes the `--report` line; a report that cannot be written is logged, not fatal.
fn write_report(
    path: &std::path::Path,
    outcome: Result<&pbflags_evaluator::core::registry::Snapshot, &Failure>,
) {
    if let Err(e) = std::fs::write(path, commands::report(outcome)) {
        eprintln!(
            "warning: could not write the report to {}: {e}",
            path.display()
        );
    }
}

fn run_serve(args: &pbflags_evaluator::app::config::ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    // One worker: the current-thread scheduler, which spends about a third less CPU per request
    // than a one-worker multi-thread scheduler (docs/benchmarks.md).
    let mut builder = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let telemetry =
        rt.block_on(async { logging::init(config.log_format, &config.log_level, &config.tracing) });
    let code = rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match serve::prepare(config).await {
            Ok(prepared) => {
                serve::run(prepared, shutdown).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    });
    // Flush traces; the exporter's connection needs the runtime.
    rt.block_on(async {
        tokio::task::spawn_blocking(move || telemetry.shutdown())
            .await
            .ok()
    });
    code
}

/// First SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the process with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received; shutting down (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
