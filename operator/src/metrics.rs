//! Operator metrics: reconciles, failures by category, duration, status writes, watch errors,
//! build info.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The operator's metrics, on a registry of their own.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounter,
    failures: IntCounterVec,
    duration: Histogram,
    watch_errors: IntCounterVec,
    /// Status subresource writes (a no-op reconcile makes none).
    pub status_writes: IntCounter,
}

impl Metrics {
    /// Creates and registers the families.
    #[allow(clippy::expect_used)] // fixed, valid names: registration cannot fail
    pub fn new() -> Self {
        let registry = Registry::new();
        pbflags_runtime::register_build_info(&registry, "pbflags_operator_build_info");
        let reconciles = IntCounter::new(
            "pbflags_operator_reconciles_total",
            "Successful reconciles.",
        )
        .expect("valid");
        let failures = IntCounterVec::new(
            Opts::new(
                "pbflags_operator_reconcile_failures_total",
                "Failed reconciles by category.",
            ),
            &["category"],
        )
        .expect("valid");
        let duration = Histogram::with_opts(HistogramOpts::new(
            "pbflags_operator_reconcile_duration_seconds",
            "Duration of successful reconciles.",
        ))
        .expect("valid");
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "pbflags_operator_watch_errors_total",
                "Failed watches and lists of the resources the operator follows, by resource.",
            ),
            &["resource"],
        )
        .expect("valid");
        let status_writes = IntCounter::new(
            "pbflags_operator_status_writes_total",
            "Writes of FlagEvaluator status.",
        )
        .expect("valid");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(status_writes.clone()),
            Box::new(watch_errors.clone()),
        ] {
            registry.register(c).expect("unique");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            watch_errors,
            status_writes,
        }
    }

    /// A reconcile succeeded after `seconds`.
    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.duration.observe(seconds);
    }

    /// Successful reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// A reconcile failed.
    pub fn failed(&self, category: &str) {
        self.failures.with_label_values(&[category]).inc();
    }

    /// A watch of `resource` failed.
    pub fn watch_failed(&self, resource: &str) {
        self.watch_errors.with_label_values(&[resource]).inc();
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        pbflags_runtime::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
