//! Logging: tracing to stderr, text or JSON, filtered by level; one build-info line at start.

use crate::config::LogFormat;

/// Installs the global subscriber. `filter` was validated with the configuration.
pub fn init(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git_sha = option_env!("PBFLAGS_GIT_SHA").unwrap_or("unknown"),
        "pbflags-evaluator starting"
    );
}
