//! Prometheus metrics. Names and labels of the families pbflags v0.6 has are kept, so existing
//! dashboards work; new families follow `pbflags_<subsystem>_<name>_<unit>`.
//!
//! Hot-path counters (evaluations, cache hits and misses) are per-thread cells moved into their
//! Prometheus families at each scrape (see [`local`]): an evaluation does a plain store, never a
//! label lookup or an atomic read-modify-write.

pub mod local;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use pbflags_proto::v1::EvaluationSource;

/// Buckets of `pbflags_fetch_duration_seconds`, as in v0.6.
const FETCH_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Which backend a fetch went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (root mode).
    Db,
    /// An upstream evaluator (proxy mode).
    Upstream,
    /// An in-memory source (tests, benchmarks).
    #[cfg(any(test, feature = "test-support"))]
    Memory,
}

/// What a fetch asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Global flag state.
    FlagState,
    /// Per-entity overrides.
    Overrides,
    /// The kill set.
    KilledFlags,
}

/// One hot-path counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event(usize);

impl Event {
    /// `pbflags_cache_hits_total{tier="kill_set"}`.
    pub const KILL_SET_HIT: Event = Event(7);
    /// `pbflags_cache_hits_total{tier="flags"}`.
    pub const FLAG_HIT: Event = Event(8);
    /// `pbflags_cache_misses_total{tier="flags"}`.
    pub const FLAG_MISS: Event = Event(9);
    /// `pbflags_cache_hits_total{tier="overrides"}`.
    pub const OVERRIDE_HIT: Event = Event(10);
    /// `pbflags_cache_misses_total{tier="overrides"}`.
    pub const OVERRIDE_MISS: Event = Event(11);
    const COUNT: usize = 12;

    /// `pbflags_evaluations_total{source=…, status="ok"}`.
    #[inline]
    pub fn evaluation(source: EvaluationSource) -> Event {
        Event((source as usize).min(6))
    }
}

/// The hit and miss events of one cache tier.
#[derive(Clone, Copy, Debug)]
pub struct Tier {
    /// Counted on a hit.
    pub hit: Event,
    /// Counted on a miss.
    pub miss: Event,
}

impl Tier {
    /// The flag-state tier.
    pub const FLAGS: Tier = Tier {
        hit: Event::FLAG_HIT,
        miss: Event::FLAG_MISS,
    };
    /// The override tier.
    pub const OVERRIDES: Tier = Tier {
        hit: Event::OVERRIDE_HIT,
        miss: Event::OVERRIDE_MISS,
    };
}

/// Every metric the evaluator exports, on a registry of its own.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    hot: local::LocalCounters,
    fetch_duration: HistogramVec,
    /// `pbflags_kill_set_size`.
    pub kill_set_size: IntGauge,
    /// `pbflags_health_consecutive_failures`.
    pub consecutive_failures: IntGauge,
    /// `pbflags_poller_last_success_timestamp` (unix seconds).
    pub poller_last_success: Gauge,
    /// `pbflags_override_cache_size` (real entry count, unlike v0.6).
    pub override_cache_size: IntGauge,
    /// `pbflags_flag_cache_size`.
    pub flag_cache_size: IntGauge,
    /// `pbflags_last_known_entries`: entries in the last-known-value store.
    pub last_known_entries: IntGauge,
    /// `pbflags_cache_bytes`: estimated bytes held by the caches, against `cache.max_bytes`.
    pub cache_bytes: IntGauge,
    /// `pbflags_coalesced_fetches_total`: evaluations that joined a fetch already in flight.
    pub coalesced_fetches: IntCounter,
    /// `pbflags_source_invalid_values_total`: values from the source that could not be decoded.
    pub invalid_values: IntCounter,
    /// `pbflags_source_fast_failures_total`: misses answered without calling a source known down.
    pub source_fast_failures: IntCounter,
    reloads: IntCounterVec,
    tls_reloads: IntCounterVec,
    change_events: IntCounterVec,
    /// `pbflags_change_stream_connected`: 1 while change notifications are received (the root's
    /// PostgreSQL LISTEN), else 0.
    pub change_stream_connected: IntGauge,
    /// `pbflags_watchers`: subscribers of this evaluator's change stream.
    pub watchers: IntGauge,
    /// `pbflags_change_propagation_seconds`: from a change's origin (the root reading it from
    /// PostgreSQL) to its being applied here.
    pub change_propagation: Histogram,
    task_restarts: IntCounterVec,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    /// `pbflags_descriptor_flags`: flags in the serving snapshot.
    pub descriptor_flags: IntGauge,
    /// `pbflags_connections_open`: client connections being served.
    pub connections_open: IntGauge,
    /// `pbflags_connections_rejected_total`: connections closed at accept (connection cap).
    pub connections_rejected: IntCounter,
    /// `pbflags_connections_idle_closed_total`: connections closed after the idle timeout.
    pub connections_idle_closed: IntCounter,
    descriptor_info: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every family.
    #[allow(clippy::expect_used)] // fixed, valid names and labels: registration cannot fail
    pub fn new() -> Self {
        let registry = Registry::new();
        pbflags_runtime::register_build_info(&registry, "pbflags_build_info");
        let reg =
            |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … as v0.6.
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        let evaluations = IntCounterVec::new(
            Opts::new(
                "pbflags_evaluations_total",
                "Total flag evaluations by source and status.",
            ),
            &["source", "status"],
        )
        .expect("valid");
        reg(Box::new(evaluations.clone()));
        let eval = |s: EvaluationSource| evaluations.with_label_values(&[source_label(s), "ok"]);

        let hits = IntCounterVec::new(
            Opts::new("pbflags_cache_hits_total", "Cache hits by tier."),
            &["tier"],
        )
        .expect("valid");
        let misses = IntCounterVec::new(
            Opts::new("pbflags_cache_misses_total", "Cache misses by tier."),
            &["tier"],
        )
        .expect("valid");
        reg(Box::new(hits.clone()));
        reg(Box::new(misses.clone()));
        // Cell i of the hot counters feeds hot[i]; the order is that of `Event`.
        let hot = vec![
            eval(EvaluationSource::Unspecified),
            eval(EvaluationSource::Default),
            eval(EvaluationSource::Global),
            eval(EvaluationSource::Override),
            eval(EvaluationSource::Killed),
            eval(EvaluationSource::Cached),
            eval(EvaluationSource::Archived),
            hits.with_label_values(&["kill_set"]),
            hits.with_label_values(&["flags"]),
            misses.with_label_values(&["flags"]),
            hits.with_label_values(&["overrides"]),
            misses.with_label_values(&["overrides"]),
        ];
        debug_assert_eq!(hot.len(), Event::COUNT);

        let fetch_duration = HistogramVec::new(
            HistogramOpts::new(
                "pbflags_fetch_duration_seconds",
                "Fetch latency for DB and upstream calls.",
            )
            .buckets(FETCH_BUCKETS.to_vec()),
            &["backend", "operation"],
        )
        .expect("valid");
        reg(Box::new(fetch_duration.clone()));

        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid");
            reg(Box::new(g.clone()));
            g
        };
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid");
            reg(Box::new(c.clone()));
            c
        };
        let poller_last_success = Gauge::new(
            "pbflags_poller_last_success_timestamp",
            "Unix timestamp of the last successful kill-set poll.",
        )
        .expect("valid");
        reg(Box::new(poller_last_success.clone()));

        let reloads = IntCounterVec::new(
            Opts::new(
                "pbflags_descriptor_reloads_total",
                "Descriptor reload attempts by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid");
        reg(Box::new(reloads.clone()));
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "pbflags_tls_reloads_total",
                "TLS certificate reloads after the files changed, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid");
        reg(Box::new(tls_reloads.clone()));
        let change_events = IntCounterVec::new(
            Opts::new(
                "pbflags_change_events_total",
                "Change notifications applied to the caches, by kind (flag, override; resync: every entry, after the stream was (re)connected).",
            ),
            &["kind"],
        )
        .expect("valid");
        reg(Box::new(change_events.clone()));
        let task_restarts = IntCounterVec::new(
            Opts::new(
                "pbflags_task_restarts_total",
                "Background tasks that failed (panicked or ended early) and were restarted, by task.",
            ),
            &["task"],
        )
        .expect("valid");
        reg(Box::new(task_restarts.clone()));
        let descriptor_info = IntGaugeVec::new(
            Opts::new(
                "pbflags_descriptor_info",
                "The serving descriptor set, by SHA-256 of its bytes (value 1).",
            ),
            &["sha256"],
        )
        .expect("valid");
        reg(Box::new(descriptor_info.clone()));

        let rpc_requests = IntCounterVec::new(
            Opts::new(
                "pbflags_rpc_requests_total",
                "RPCs served, by method and status code.",
            ),
            &["method", "code"],
        )
        .expect("valid");
        reg(Box::new(rpc_requests.clone()));
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "pbflags_rpc_duration_seconds",
                "RPC handling time, by method and status code.",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
            ]),
            &["method", "code"],
        )
        .expect("valid");
        reg(Box::new(rpc_duration.clone()));

        Self {
            rpc_requests,
            rpc_duration,
            hot: local::LocalCounters::new(hot),
            fetch_duration,
            kill_set_size: int_gauge("pbflags_kill_set_size", "Number of currently killed flags."),
            consecutive_failures: int_gauge(
                "pbflags_health_consecutive_failures",
                "Consecutive upstream fetch failures.",
            ),
            poller_last_success,
            override_cache_size: int_gauge(
                "pbflags_override_cache_size",
                "Approximate entries in the override LRU cache.",
            ),
            flag_cache_size: int_gauge(
                "pbflags_flag_cache_size",
                "Entries in the flag state cache.",
            ),
            last_known_entries: int_gauge(
                "pbflags_last_known_entries",
                "Entries in the last-known-value store used when the source fails.",
            ),
            cache_bytes: int_gauge(
                "pbflags_cache_bytes",
                "Estimated bytes held by the flag, override and last-known caches (bounded by --cache-max-bytes).",
            ),
            coalesced_fetches: int_counter(
                "pbflags_coalesced_fetches_total",
                "Evaluations that waited for a fetch already in flight instead of starting one.",
            ),
            invalid_values: int_counter(
                "pbflags_source_invalid_values_total",
                "Values or states from the source that could not be decoded (treated as absent).",
            ),
            source_fast_failures: int_counter(
                "pbflags_source_fast_failures_total",
                "Cache misses answered at once, without calling the source, while it is known down (one probe call per 500ms goes through).",
            ),
            reloads,
            tls_reloads,
            change_events,
            watchers: int_gauge(
                "pbflags_watchers",
                "Subscribers of this evaluator's change stream (WatchChanges).",
            ),
            change_propagation: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "pbflags_change_propagation_seconds",
                        "Time from a change's origin (the root reading it from PostgreSQL) to its being applied here.",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                )
                .expect("valid");
                reg(Box::new(h.clone()));
                h
            },
            change_stream_connected: int_gauge(
                "pbflags_change_stream_connected",
                "1 while change notifications are received (root: PostgreSQL LISTEN), else 0.",
            ),
            task_restarts,
            descriptor_flags: int_gauge(
                "pbflags_descriptor_flags",
                "Flags in the serving descriptor set.",
            ),
            connections_open: int_gauge(
                "pbflags_connections_open",
                "Client connections being served.",
            ),
            connections_rejected: int_counter(
                "pbflags_connections_rejected_total",
                "Connections closed as soon as accepted because --max-connections were open.",
            ),
            connections_idle_closed: int_counter(
                "pbflags_connections_idle_closed_total",
                "Connections closed after --idle-timeout without a request in flight.",
            ),
            descriptor_info,
            registry,
        }
    }

    /// Counts one hot-path event.
    #[inline]
    pub fn count(&self, e: Event) {
        self.hot.add(&[e.0]);
    }

    /// Counts two hot-path events (one thread-local lookup for both).
    #[inline]
    pub fn count2(&self, a: Event, b: Event) {
        self.hot.add(&[a.0, b.0]);
    }

    /// The total of a hot-path counter so far.
    pub fn total(&self, e: Event) -> u64 {
        self.hot.get(e.0)
    }

    /// Observes the duration of one fetch.
    pub fn fetch(&self, backend: Backend, op: Operation) -> Histogram {
        let backend = match backend {
            Backend::Db => "db",
            Backend::Upstream => "upstream",
            #[cfg(any(test, feature = "test-support"))]
            Backend::Memory => "memory",
        };
        let op = match op {
            Operation::FlagState => "flag_state",
            Operation::Overrides => "overrides",
            Operation::KilledFlags => "killed_flags",
        };
        self.fetch_duration.with_label_values(&[backend, op])
    }

    /// Records a descriptor reload.
    pub fn reload(&self, success: bool) {
        self.reloads.with_label_values(&[result(success)]).inc();
    }

    /// Records a TLS certificate reload.
    pub fn tls_reload(&self, success: bool) {
        self.tls_reloads.with_label_values(&[result(success)]).inc();
    }

    /// Records an applied change notification of `kind` (`flag`, `override`, `resync`).
    pub fn change_event(&self, kind: &str) {
        self.change_events.with_label_values(&[kind]).inc();
    }

    /// Change notifications of `kind` applied so far.
    pub fn change_events(&self, kind: &str) -> u64 {
        self.change_events.with_label_values(&[kind]).get()
    }

    /// Records a failed background task that will be restarted.
    pub fn task_restart(&self, task: &str) {
        self.task_restarts.with_label_values(&[task]).inc();
    }

    /// Restarts of `task` so far.
    pub fn task_restarts(&self, task: &str) -> u64 {
        self.task_restarts.with_label_values(&[task]).get()
    }

    /// TLS reloads with the given result so far.
    pub fn tls_reloads(&self, success: bool) -> u64 {
        self.tls_reloads.with_label_values(&[result(success)]).get()
    }

    /// Records the serving descriptor set.
    pub fn descriptors(&self, hash: &str, flags: usize) {
        self.descriptor_info.reset();
        self.descriptor_info.with_label_values(&[hash]).set(1);
        self.descriptor_flags
            .set(i64::try_from(flags).unwrap_or(i64::MAX));
    }

    /// Records one RPC: its method, status code name and duration.
    pub fn rpc(&self, method: &str, code: &str, seconds: f64) {
        self.rpc_requests.with_label_values(&[method, code]).inc();
        self.rpc_duration
            .with_label_values(&[method, code])
            .observe(seconds);
    }

    /// Reload attempts with the given result so far.
    pub fn reloads(&self, success: bool) -> u64 {
        self.reloads.with_label_values(&[result(success)]).get()
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        self.hot.flush();
        pbflags_runtime::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `source` label for an evaluation source, as v0.6 spells it.
pub fn source_label(s: EvaluationSource) -> &'static str {
    match s {
        EvaluationSource::Default => "default",
        EvaluationSource::Global => "global",
        EvaluationSource::Override => "override",
        EvaluationSource::Killed => "killed",
        EvaluationSource::Cached => "cached",
        EvaluationSource::Archived => "archived",
        EvaluationSource::Unspecified => "unknown",
    }
}

fn result(success: bool) -> &'static str {
    if success { "success" } else { "failure" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v0_6_families_keep_their_names_and_labels() {
        let m = Metrics::new();
        m.count(Event::evaluation(EvaluationSource::Global));
        m.count2(Event::KILL_SET_HIT, Event::FLAG_MISS);
        m.fetch(Backend::Db, Operation::FlagState).observe(0.002);
        let text = m.render();
        for line in [
            "pbflags_evaluations_total{source=\"global\",status=\"ok\"} 1",
            "pbflags_cache_hits_total{tier=\"kill_set\"} 1",
            "pbflags_cache_misses_total{tier=\"flags\"} 1",
            "pbflags_fetch_duration_seconds_bucket{backend=\"db\",operation=\"flag_state\",le=\"0.005\"} 1",
            "pbflags_kill_set_size 0",
            "pbflags_health_consecutive_failures 0",
            "pbflags_poller_last_success_timestamp 0",
            "pbflags_override_cache_size 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn process_families_are_exported_as_v0_6_did() {
        let text = Metrics::new().render();
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{family} ")))
                .unwrap_or_else(|| panic!("no {family} in\n{text}"));
            let v: f64 = value.parse().expect("a number");
            if family != "process_cpu_seconds_total" {
                assert!(v > 0.0, "{family} = {v}");
            }
        }
    }

    #[test]
    fn unspecified_source_is_labelled_unknown() {
        assert_eq!(source_label(EvaluationSource::Unspecified), "unknown");
        let m = Metrics::new();
        m.count(Event::evaluation(EvaluationSource::Unspecified));
        assert!(m.render().contains("source=\"unknown\""));
    }

    #[test]
    fn descriptor_info_holds_only_the_serving_hash() {
        let m = Metrics::new();
        m.descriptors("aaa", 3);
        m.descriptors("bbb", 4);
        let text = m.render();
        assert!(text.contains("pbflags_descriptor_info{sha256=\"bbb\"} 1"));
        assert!(!text.contains("sha256=\"aaa\""));
        assert!(text.contains("pbflags_descriptor_flags 4"));
    }
}
