//! An engine over an in-memory source, with flags defined in code.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_evaluator::core::clock::Clock;
use pbflags_evaluator::core::descriptor::FlagDef;
use pbflags_evaluator::core::engine::{Engine, Evaluation};
use pbflags_evaluator::core::memory::MemorySource;
use pbflags_evaluator::core::registry::{ContentHash, Registry, Snapshot};
use pbflags_evaluator::metrics::{Backend, Metrics};
use pbflags_proto::v1::{FlagType, FlagValue};

/// A flag definition with the given id, layer and default.
pub fn def(flag_id: &str, layer: &str, default: Option<FlagValue>) -> FlagDef {
    let (feature, number) = flag_id.split_once('/').unwrap_or((flag_id, "1"));
    FlagDef {
        flag_id: flag_id.to_owned(),
        feature_id: feature.to_owned(),
        field_number: number.parse().unwrap_or(1),
        name: format!("f{number}"),
        flag_type: default
            .as_ref()
            .and_then(pbflags_evaluator::core::descriptor::value_type)
            .unwrap_or(FlagType::Bool),
        layer: layer.to_owned(),
        default,
        supported_values: None,
        description: String::new(),
        feature_display_name: "F".into(),
        feature_description: String::new(),
        feature_owner: String::new(),
    }
}

/// An engine, its source and its metrics.
pub struct Harness {
    pub engine: Arc<Engine>,
    pub source: Arc<MemorySource>,
    pub metrics: Metrics,
    /// The engine's clock: manual unless given, so only [`Harness::expire`] moves it.
    pub clock: Clock,
}

/// Cache settings for tests: TTL 60 s, no jitter (time moves only by [`Harness::expire`]).
pub fn exact_ttl() -> CacheConfig {
    CacheConfig {
        flag_ttl: TTL,
        override_ttl: TTL,
        jitter_percent: 0,
        ..CacheConfig::default()
    }
}

/// The TTL of [`exact_ttl`].
pub const TTL: Duration = Duration::from_secs(60);

impl Harness {
    pub fn new(flags: Vec<FlagDef>) -> Self {
        Self::with_config(flags, exact_ttl())
    }

    pub fn with_config(flags: Vec<FlagDef>, config: CacheConfig) -> Self {
        Self::with_clock(flags, config, Clock::manual())
    }

    pub fn with_clock(flags: Vec<FlagDef>, config: CacheConfig, clock: Clock) -> Self {
        let registry = Arc::new(Registry::new(Snapshot::new(
            flags,
            ContentHash::default(),
            vec![],
        )));
        let source = Arc::new(MemorySource::new());
        let metrics = Metrics::new();
        let engine = Arc::new(Engine::with_clock(
            registry,
            source.clone(),
            Backend::Memory,
            config,
            metrics.clone(),
            clock.clone(),
        ));
        Self {
            engine,
            source,
            metrics,
            clock,
        }
    }

    /// Moves the manual clock past every cache TTL, so each cached entry is stale.
    #[allow(dead_code)] // not every test binary that includes the harness expires entries
    pub fn expire(&self) {
        let c = self.engine.caches().config();
        self.clock
            .advance(c.flag_ttl.max(c.override_ttl) + Duration::from_millis(1));
    }

    /// Evaluates without a runtime: the memory source answers immediately unless held.
    pub fn eval(&self, flag_id: &str, entity_id: &str) -> Evaluation {
        self.engine
            .evaluate(flag_id, entity_id)
            .now_or_never()
            .expect("memory source answers at once")
    }

    /// Bulk-evaluates without a runtime.
    pub fn bulk(&self, flag_ids: &[&str], entity_id: &str) -> Vec<(String, Evaluation)> {
        let ids: Vec<String> = flag_ids.iter().map(|s| (*s).to_owned()).collect();
        self.engine
            .bulk_evaluate(ids.clone(), entity_id)
            .now_or_never()
            .expect("memory source answers at once")
    }

    /// Polls the kill set once without a runtime.
    pub fn poll_kills(&self) -> bool {
        self.engine
            .poll_kill_set()
            .now_or_never()
            .expect("answers at once")
            .is_ok()
    }
}
