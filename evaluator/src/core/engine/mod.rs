//! The evaluation engine: gathers what [`decide`] needs from the caches or the source, and keeps the
//! caches, coalescing and health around it. Never fails an evaluation.
//!
//! The precedence rules themselves are the pure functions of [`decide`]. The engine reads time only
//! through its [`Clock`]; it makes no network or database calls of its own: sources plug in
//! through [`StateSource`] and bring their own timeouts.
//!
//! Where v0.6 is weak, this engine differs (each is tested):
//! - "no row" and "no override" are cached like values, so they do not hit the source every time;
//! - concurrent misses for one key make one source call;
//! - the last-known store is bounded (LRU);
//! - a stale value is judged by the same state rules as a fresh one (a last-known DEFAULT state yields
//!   the compiled default, not a stale value);
//! - BulkEvaluate fetches what it misses in two batched calls, not one call per flag.

pub mod coalesce;
pub mod health;
pub mod killset;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use pbflags_proto::v1::{EvaluationSource, FlagValue};
use tracing::Instrument as _;

use crate::core::cache::{CacheConfig, Caches, FlagEntry, OverrideEntry};
use crate::core::changes::{Change, ChangeKind, Hub};
use crate::core::clock::Clock;
use crate::core::decide::{self, Decided};
use crate::core::registry::{Registry, Snapshot, View};
use crate::core::source::{self, SourceError, SourceResult, StateSource};
use crate::metrics::{Backend, Event, Metrics, Operation, Tier};
use coalesce::Coalescer;
use health::{Admission, Health};
use killset::KillSet;

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Where the value came from.
    pub source: EvaluationSource,
    value: Option<FlagValue>,
}

impl Evaluation {
    /// The value; `None` when the flag has no compiled default and nothing else applied.
    pub fn value(&self) -> Option<&FlagValue> {
        self.value.as_ref()
    }

    /// The value, moved out.
    pub fn into_value(self) -> Option<FlagValue> {
        self.value
    }
}

/// The compiled-default-less answer: source DEFAULT, no value.
impl Default for Evaluation {
    fn default() -> Self {
        Self {
            source: EvaluationSource::Default,
            value: None,
        }
    }
}

impl From<Decided<'_>> for Evaluation {
    fn from((source, value): Decided<'_>) -> Self {
        Self {
            source,
            value: value.cloned(),
        }
    }
}

/// Outcome of looking something up: fresh (cache or source), last-known after a failed fetch, or
/// nothing at all.
enum Lookup<T> {
    Fresh(Arc<T>),
    Stale(Arc<T>),
    Unavailable,
}

impl<T> Lookup<T> {
    /// The row `of` reads from the entry (`None`: no row, or nothing known) and whether it is stale.
    fn row<'s, R>(&'s self, of: impl FnOnce(&'s T) -> Option<&'s R>) -> (Option<&'s R>, bool) {
        match self {
            Lookup::Fresh(e) => (of(e), false),
            Lookup::Stale(e) => (of(e), true),
            Lookup::Unavailable => (None, false),
        }
    }
}

/// Health as reported by the Health RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// CONNECTING, SERVING or DEGRADED.
    pub status: pbflags_proto::v1::EvaluatorStatus,
    /// Seconds since the last successful source call (0 if none yet).
    pub seconds_since_contact: u64,
    /// Entries in the flag state cache.
    pub cached_flags: u64,
    /// Consecutive failed source calls.
    pub consecutive_failures: u32,
}

struct Shared {
    registry: Arc<Registry>,
    source: Arc<dyn StateSource>,
    backend: Backend,
    caches: Caches,
    health: Health,
    metrics: Metrics,
}

/// Why a miss was answered without calling the source.
const SOURCE_DOWN: &str = "source known down; answered without calling it";

/// Runs `fetch` as a background probe (its result lands in the caches); the caller answers at
/// once. Without a Tokio runtime to run it on, it runs here and its result is returned.
async fn probe<F>(fetch: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(fetch);
            None
        }
        Err(_) => Some(fetch.await),
    }
}

impl Shared {
    /// What a miss may do about the source now (see [`Health::admit`]); counts the misses
    /// answered at once because the source is known down (probes included).
    fn admit(&self) -> Admission {
        let admission = self.health.admit();
        if admission != Admission::Call {
            self.metrics.source_fast_failures.inc();
        }
        admission
    }

    /// Counts a fetched value whose type is not the flag's declared type (it is served as absent,
    /// see [`decide::mistyped`]).
    fn check_type(&self, flag_id: &str, value: Option<&FlagValue>) {
        if let Some(v) = value
            && decide::mistyped(v, self.registry.load().get(flag_id).map(|d| &**d))
        {
            self.metrics.invalid_values.inc();
            tracing::warn!(
                flag_id,
                "stored value does not have the flag's declared type; serving the compiled default"
            );
        }
    }

    fn observe<T>(&self, op: Operation, result: &SourceResult<T>, started: std::time::Instant) {
        self.metrics
            .fetch(self.backend, op)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self.health.record_success(),
            Err(e) => {
                self.health.record_failure();
                tracing::debug!(operation = ?op, error = %e, "state fetch failed");
            }
        }
    }
}

/// (flag id, entity id) of an override fetch in flight.
type OverrideKey = (Arc<str>, Arc<str>);

/// The global states one batch fetch found, by flag id.
type FlagBatch = Vec<(String, Arc<FlagEntry>)>;

/// Evaluates flags against a registry and a state source.
pub struct Engine {
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    kills: KillSet,
    flag_flights: Coalescer<Arc<str>, SourceResult<Arc<FlagEntry>>>,
    /// Batch fetches of global state by their (sorted) flag ids: concurrent BulkEvaluates missing
    /// the same flags (a cold start under load) share one source call.
    flag_batch_flights: Coalescer<Arc<[String]>, SourceResult<FlagBatch>>,
    override_flights: Coalescer<OverrideKey, SourceResult<Arc<OverrideEntry>>>,
    hub: Hub,
}

/// Subscribers of the change stream an engine accepts unless told otherwise.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;

/// Where a flag's global state is cached: its registry slot, or (undeclared flags) the moka cache.
#[derive(Clone)]
enum Home {
    Slot(Arc<Snapshot>, usize),
    Map,
}

impl Engine {
    /// An engine evaluating `registry`'s flags with state from `source`, timing entries with a real
    /// clock. Servers use [`with_clock`](Self::with_clock) and a ticked coarse clock.
    pub fn new(
        registry: Arc<Registry>,
        source: Arc<dyn StateSource>,
        backend: Backend,
        config: CacheConfig,
        metrics: Metrics,
    ) -> Self {
        Self::with_clock(registry, source, backend, config, metrics, Clock::real())
    }

    /// As [`new`](Self::new), with the given clock.
    pub fn with_clock(
        registry: Arc<Registry>,
        source: Arc<dyn StateSource>,
        backend: Backend,
        config: CacheConfig,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        let hub = Hub::new(DEFAULT_MAX_WATCHERS, Some(metrics.watchers.clone()));
        let shared = Shared {
            registry: registry.clone(),
            source,
            backend,
            health: Health::new(clock.clone(), Some(metrics.clone())),
            caches: Caches::new(config, clock),
            metrics,
        };
        Self {
            registry,
            shared: Arc::new(shared),
            kills: KillSet::default(),
            flag_flights: Coalescer::default(),
            flag_batch_flights: Coalescer::default(),
            override_flights: Coalescer::default(),
            hub,
        }
    }

    /// Accepts at most `n` subscribers of the change stream at a time.
    #[must_use]
    pub fn max_watchers(mut self, n: usize) -> Self {
        self.hub = Hub::new(n, Some(self.shared.metrics.watchers.clone()));
        self
    }

    /// Where the changes this engine applies are announced.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The registry this engine evaluates.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The kill set (the poller replaces it).
    pub fn kills(&self) -> &KillSet {
        &self.kills
    }

    /// The health tracker.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The caches.
    pub fn caches(&self) -> &Caches {
        &self.shared.caches
    }

    /// The state source.
    pub fn source(&self) -> &Arc<dyn StateSource> {
        &self.shared.source
    }

    /// Health for the Health RPC, with real cache counts.
    pub fn health_report(&self) -> HealthReport {
        let (unknown, overrides, last) = self.shared.caches.sizes();
        let snapshot = self.registry.load();
        let flags = unknown + self.shared.caches.fresh_slots(snapshot.slots().iter());
        let m = &self.shared.metrics;
        m.flag_cache_size
            .set(i64::try_from(flags).unwrap_or(i64::MAX));
        m.override_cache_size
            .set(i64::try_from(overrides).unwrap_or(i64::MAX));
        m.last_known_entries
            .set(i64::try_from(last).unwrap_or(i64::MAX));
        m.cache_bytes
            .set(i64::try_from(self.shared.caches.weighted_bytes()).unwrap_or(i64::MAX));
        let h = &self.shared.health;
        HealthReport {
            status: h.status(),
            seconds_since_contact: h.seconds_since_contact(),
            cached_flags: flags,
            consecutive_failures: h.consecutive_failures(),
        }
    }

    /// Evaluates one flag for one entity (`""` for a global evaluation). Never fails. The value
    /// is cloned out of the caches; [`evaluate_cached_with`](Self::evaluate_cached_with) borrows it.
    pub async fn evaluate(&self, flag_id: &str, entity_id: &str) -> Evaluation {
        match self.evaluate_cached_with(flag_id, entity_id, |d| Evaluation::from(d)) {
            Some(ev) => ev,
            None => {
                let ev = self.evaluate_fetching(flag_id, entity_id).await;
                self.shared.metrics.count(Event::evaluation(ev.source));
                ev
            }
        }
    }

    /// The answer from caches alone, handed to `f` with the value borrowed: no await, no
    /// allocation, no reference-count traffic. `None` (and `f` not called) when something must be
    /// fetched; [`evaluate`](Self::evaluate) does that.
    #[inline]
    pub fn evaluate_cached_with<R>(
        &self,
        flag_id: &str,
        entity_id: &str,
        f: impl FnOnce(Decided<'_>) -> R,
    ) -> Option<R> {
        self.registry
            .with_snapshot(|view| self.decide_cached(view, flag_id, entity_id, f))
    }

    /// The cached path over one snapshot; counts its hits and the evaluation when it answers.
    fn decide_cached<R>(
        &self,
        view: &mut View<'_>,
        flag_id: &str,
        entity_id: &str,
        f: impl FnOnce(Decided<'_>) -> R,
    ) -> Option<R> {
        let snapshot: &Snapshot = view.snapshot();
        let index = snapshot.index_of(flag_id);
        let def = index.map(|i| &*snapshot.flags()[i]);
        let m = &self.shared.metrics;
        if self.is_killed(snapshot, index, flag_id) {
            m.count2(
                Event::KILL_SET_HIT,
                Event::evaluation(EvaluationSource::Killed),
            );
            return Some(f(decide::killed(def)));
        }
        let caches = &self.shared.caches;
        let mut override_hit = false;
        if decide::overridable(def, entity_id) {
            let entry = caches.override_entry(flag_id, entity_id)?;
            override_hit = true;
            if let Some(d) = decide::by_override(entry.value.as_ref(), false, def) {
                m.count2(Event::OVERRIDE_HIT, Event::evaluation(d.0));
                return Some(f(d));
            }
        }
        let decided = |entry: &FlagEntry| {
            let d = decide::by_global(entry.state.as_ref(), false, def);
            if override_hit {
                m.count(Event::OVERRIDE_HIT);
            }
            m.count2(Event::FLAG_HIT, Event::evaluation(d.0));
            f(d)
        };
        match index {
            Some(i) => view
                .slot_entry(i)
                .filter(|e| caches.is_fresh(e))
                .map(decided),
            None => caches.flag(flag_id).map(|e| decided(&e)),
        }
    }

    /// Whether `flag_id` is killed: a declared flag reads its bit on the snapshot (re-synced from the
    /// kill set when its generation moved), an undeclared one asks the kill set.
    #[inline]
    fn is_killed(&self, snapshot: &Snapshot, index: Option<usize>, flag_id: &str) -> bool {
        let Some(i) = index else {
            return self.kills.contains(flag_id);
        };
        let generation = self.kills.generation();
        if snapshot.kill_generation() != generation {
            snapshot.sync_kill_bits(generation, |id| self.kills.contains(id));
        }
        snapshot.killed(i)
    }

    async fn evaluate_fetching(&self, flag_id: &str, entity_id: &str) -> Evaluation {
        let snapshot = self.registry.load_full();
        let index = snapshot.index_of(flag_id);
        let def = index.map(|i| snapshot.flags()[i].clone());
        let def = def.as_deref();
        if self.is_killed(&snapshot, index, flag_id) {
            self.shared.metrics.count(Event::KILL_SET_HIT);
            return decide::killed(def).into();
        }
        if decide::overridable(def, entity_id) {
            let lookup = self.override_lookup(flag_id, entity_id).await;
            let (row, stale) = lookup.row(|e| e.value.as_ref());
            if let Some(d) = decide::by_override(row, stale, def) {
                return d.into();
            }
        }
        let home = index.map_or(Home::Map, |i| Home::Slot(snapshot.clone(), i));
        let lookup = self.flag_lookup(flag_id, home).await;
        let (row, stale) = lookup.row(|e| e.state.as_ref());
        decide::by_global(row, stale, def).into()
    }

    fn cached_flag(&self, flag_id: &str, home: &Home) -> Option<Arc<FlagEntry>> {
        match home {
            Home::Slot(s, i) => self.shared.caches.slot_fresh(s.slot(*i)),
            Home::Map => self.shared.caches.flag(flag_id),
        }
    }

    fn last_known_flag(&self, flag_id: &str, home: &Home) -> Option<Arc<FlagEntry>> {
        match home {
            Home::Slot(s, i) => self.shared.caches.slot_last(s.slot(*i)),
            Home::Map => self.shared.caches.last_known_flag(flag_id),
        }
    }

    async fn flag_lookup(&self, flag_id: &str, home: Home) -> Lookup<FlagEntry> {
        if let Some(e) = self.cached_flag(flag_id, &home) {
            self.shared.metrics.count(Event::FLAG_HIT);
            return Lookup::Fresh(e);
        }
        self.shared.metrics.count(Event::FLAG_MISS);
        let stale = |e: Option<Arc<FlagEntry>>| e.map_or(Lookup::Unavailable, Lookup::Stale);
        let admission = self.shared.admit();
        if admission == Admission::Refuse {
            return stale(self.last_known_flag(flag_id, &home));
        }
        let key: Arc<str> = flag_id.into();
        let shared = self.shared.clone();
        let flight_home = home.clone();
        let flight_key = key.clone();
        let fetch: BoxFuture<'static, SourceResult<Arc<FlagEntry>>> = Box::pin(async move {
            // A caller that missed the cache just before an earlier flight filled it (and left)
            // finds the entry here instead of querying again.
            let filled = match &flight_home {
                Home::Slot(s, i) => shared.caches.slot_fresh(s.slot(*i)),
                Home::Map => shared.caches.flag(&key),
            };
            if let Some(e) = filled {
                return Ok(e);
            }
            let since = shared.caches.changes();
            let started = std::time::Instant::now();
            let span = tracing::info_span!("source.flag_state", flag_id = %key);
            let r = shared.source.flag_state(&key).instrument(span).await;
            shared.observe(Operation::FlagState, &r, started);
            if let Ok(Some(state)) = &r {
                shared.check_type(&key, state.value.as_ref());
            }
            r.map(|state| match flight_home {
                Home::Slot(s, i) => shared.caches.put_slot(s.slot(i), state, since),
                Home::Map => shared.caches.admit_flag(key, state, since),
            })
        });
        let result = if admission == Admission::Probe {
            match probe(fetch).await {
                Some(r) => r,
                None => return stale(self.last_known_flag(flag_id, &home)),
            }
        } else {
            self.flag_flights
                .run(
                    flight_key,
                    move || fetch,
                    || self.shared.metrics.coalesced_fetches.inc(),
                )
                .await
                .0
        };
        match result {
            Ok(e) => Lookup::Fresh(e),
            Err(_) => stale(self.last_known_flag(flag_id, &home)),
        }
    }

    async fn override_lookup(&self, flag_id: &str, entity_id: &str) -> Lookup<OverrideEntry> {
        let caches = &self.shared.caches;
        if let Some(e) = caches.override_entry(flag_id, entity_id) {
            self.shared.metrics.count(Event::OVERRIDE_HIT);
            return Lookup::Fresh(e);
        }
        self.shared.metrics.count(Event::OVERRIDE_MISS);
        let stale = || {
            caches
                .last_known_override(flag_id, entity_id)
                .map_or(Lookup::Unavailable, Lookup::Stale)
        };
        let admission = self.shared.admit();
        if admission == Admission::Refuse {
            return stale();
        }
        let key: OverrideKey = (flag_id.into(), entity_id.into());
        let shared = self.shared.clone();
        let flight_key = key.clone();
        let fetch: BoxFuture<'static, SourceResult<Arc<OverrideEntry>>> = Box::pin(async move {
            let (flag, entity) = key;
            // As for flags: an entry an earlier flight stored after this caller missed.
            if let Some(e) = shared.caches.override_entry(&flag, &entity) {
                return Ok(e);
            }
            let ids = [flag.to_string()];
            let since = shared.caches.changes();
            let started = std::time::Instant::now();
            let span = tracing::info_span!("source.overrides", entity_id = %entity);
            let r = shared
                .source
                .overrides(&entity, &ids)
                .instrument(span)
                .await;
            shared.observe(Operation::Overrides, &r, started);
            r.map(|rows| store_overrides(&shared, &entity, &ids, rows, since).remove(0))
        });
        let result = if admission == Admission::Probe {
            match probe(fetch).await {
                Some(r) => r,
                None => return stale(),
            }
        } else {
            self.override_flights
                .run(
                    flight_key,
                    move || fetch,
                    || self.shared.metrics.coalesced_fetches.inc(),
                )
                .await
                .0
        };
        match result {
            Ok(e) => Lookup::Fresh(e),
            Err(_) => stale(),
        }
    }

    /// Evaluates `flag_ids` (all flags of the registry, in declaration order, when empty) for one
    /// entity, in request order, duplicates and unknown ids included. What is not cached is fetched
    /// in at most two source calls: the entity's overrides, then the flags' global state.
    pub async fn bulk_evaluate(
        &self,
        flag_ids: Vec<String>,
        entity_id: &str,
    ) -> Vec<(String, Evaluation)> {
        // The cached pass, and the snapshot the fetches for its misses use.
        let (snapshot, ids, mut results) = self.registry.with_snapshot(|view| {
            let snapshot = view.snapshot().clone();
            let ids: Vec<String> = if flag_ids.is_empty() {
                snapshot.flags().iter().map(|f| f.flag_id.clone()).collect()
            } else {
                flag_ids
            };
            let results: Vec<Option<Evaluation>> = ids
                .iter()
                .map(|id| self.decide_cached(view, id, entity_id, |d| Evaluation::from(d)))
                .collect();
            (snapshot, ids, results)
        });
        let fetched: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if !fetched.is_empty() {
            self.bulk_fetch(&snapshot, &ids, entity_id, &mut results)
                .await;
            for i in fetched {
                let source = results[i].get_or_insert_with(Evaluation::default).source;
                self.shared.metrics.count(Event::evaluation(source));
            }
        }
        ids.into_iter()
            .zip(results)
            .map(|(id, ev)| (id, ev.unwrap_or_default()))
            .collect()
    }

    /// Fills the `None`s of `results`: kills, then overrides in one call, then global state in one call.
    async fn bulk_fetch(
        &self,
        snapshot: &Arc<Snapshot>,
        ids: &[String],
        entity_id: &str,
        results: &mut [Option<Evaluation>],
    ) {
        let indexes: Vec<Option<usize>> = ids.iter().map(|id| snapshot.index_of(id)).collect();
        let def = |i: usize| indexes[i].map(|x| &*snapshot.flags()[x]);
        for (i, id) in ids.iter().enumerate() {
            if results[i].is_none() && self.is_killed(snapshot, indexes[i], id) {
                self.shared.metrics.count(Event::KILL_SET_HIT);
                results[i] = Some(decide::killed(def(i)).into());
            }
        }

        let wants_override: Vec<usize> = (0..ids.len())
            .filter(|&i| results[i].is_none() && decide::overridable(def(i), entity_id))
            .collect();
        let overrides = self
            .bulk_overrides(entity_id, wants_override.iter().map(|&i| ids[i].as_str()))
            .await;
        for &i in &wants_override {
            let lookup = overrides.lookup(&ids[i], |id| {
                self.shared.caches.last_known_override(id, entity_id)
            });
            let (row, stale) = lookup.row(|e| e.value.as_ref());
            results[i] = decide::by_override(row, stale, def(i)).map(Evaluation::from);
        }

        let wants_global: Vec<usize> = (0..ids.len()).filter(|&i| results[i].is_none()).collect();
        let homes: Vec<(&str, Home)> = wants_global
            .iter()
            .map(|&i| {
                (
                    ids[i].as_str(),
                    indexes[i].map_or(Home::Map, |x| Home::Slot(snapshot.clone(), x)),
                )
            })
            .collect();
        let states = self.bulk_flags(&homes).await;
        for (&i, (id, home)) in wants_global.iter().zip(&homes) {
            let lookup = states.lookup(id, |id| self.last_known_flag(id, home));
            let (row, stale) = lookup.row(|e| e.state.as_ref());
            results[i] = Some(decide::by_global(row, stale, def(i)).into());
        }
    }

    async fn bulk_overrides<'a>(
        &self,
        entity_id: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> Batch<OverrideEntry> {
        let caches = &self.shared.caches;
        let (mut batch, missing) = Batch::partition(
            ids.map(|id| (id, ())),
            &self.shared.metrics,
            Tier::OVERRIDES,
            |id, ()| caches.override_entry(id, entity_id),
        );
        let missing: Vec<String> = missing.into_iter().map(|(id, ())| id).collect();
        if missing.is_empty() {
            return batch;
        }
        let admission = self.shared.admit();
        if admission == Admission::Refuse {
            batch.failed = Some(SourceError::unavailable(SOURCE_DOWN));
            return batch;
        }
        let shared = self.shared.clone();
        let entity = entity_id.to_owned();
        let fetch = async move {
            let since = shared.caches.changes();
            let started = std::time::Instant::now();
            let span =
                tracing::info_span!("source.overrides", entity_id = %entity, flags = missing.len());
            let r = shared
                .source
                .overrides(&entity, &missing)
                .instrument(span)
                .await;
            shared.observe(Operation::Overrides, &r, started);
            r.map(|rows| {
                let entries = store_overrides(&shared, &entity, &missing, rows, since);
                missing.into_iter().zip(entries).collect::<Vec<_>>()
            })
        };
        batch.run(admission, fetch).await
    }

    async fn bulk_flags(&self, wanted: &[(&str, Home)]) -> Batch<FlagEntry> {
        let (mut batch, missing) = Batch::partition(
            wanted.iter().map(|(id, home)| (*id, home.clone())),
            &self.shared.metrics,
            Tier::FLAGS,
            |id, home| self.cached_flag(id, home),
        );
        if missing.is_empty() {
            return batch;
        }
        let admission = self.shared.admit();
        if admission == Admission::Refuse {
            batch.failed = Some(SourceError::unavailable(SOURCE_DOWN));
            return batch;
        }
        // The ids asked for, sorted: also the key that concurrent identical batches share.
        let mut ids: Vec<String> = missing.iter().map(|(id, _)| id.clone()).collect();
        ids.sort_unstable();
        let key: Arc<[String]> = ids.into();
        let ids = key.clone();
        let shared = self.shared.clone();
        let fetch = async move {
            let since = shared.caches.changes();
            let started = std::time::Instant::now();
            let span = tracing::info_span!("source.flag_states", flags = ids.len());
            let r = shared.source.flag_states(&ids).instrument(span).await;
            shared.observe(Operation::FlagState, &r, started);
            r.map(|mut rows| {
                missing
                    .into_iter()
                    .map(|(id, home)| {
                        let state = rows.remove(&id);
                        if let Some(state) = &state {
                            shared.check_type(&id, state.value.as_ref());
                        }
                        let entry = match home {
                            Home::Slot(s, i) => shared.caches.put_slot(s.slot(i), state, since),
                            Home::Map => shared.caches.admit_flag(id.as_str().into(), state, since),
                        };
                        (id, entry)
                    })
                    .collect::<Vec<_>>()
            })
        };
        if admission == Admission::Probe {
            return batch.run(admission, fetch).await;
        }
        let fetch: BoxFuture<'static, _> = Box::pin(fetch);
        let (result, _) = self
            .flag_batch_flights
            .run(
                key,
                move || fetch,
                || self.shared.metrics.coalesced_fetches.inc(),
            )
            .await;
        match result {
            Ok(found) => batch.found.extend(found),
            Err(e) => batch.failed = Some(e),
        }
        batch
    }

    /// A change to `flag_id`'s global state was announced: its cached state turns stale (kept as
    /// the last-known value for outages), so the next evaluation reads the source.
    pub fn invalidate_flag(&self, flag_id: &str) {
        self.apply_change(Change::now(ChangeKind::Flag {
            flag_id: flag_id.into(),
        }));
    }

    /// A change to `entity_id`'s override of `flag_id` was announced (see
    /// [`invalidate_flag`](Self::invalidate_flag)).
    pub fn invalidate_override(&self, flag_id: &str, entity_id: &str) {
        self.apply_change(Change::now(ChangeKind::Override {
            flag_id: flag_id.into(),
            entity_id: entity_id.into(),
        }));
    }

    /// Changes may have been missed: every cached state and override turns stale (last-known
    /// values stay).
    pub fn invalidate_all(&self) {
        self.apply_change(Change::now(ChangeKind::Resync));
    }

    /// Makes what `change` names stale, then announces it to the change stream's subscribers
    /// (in that order: a subscriber that asks again at once gets the new state).
    pub fn apply_change(&self, change: Change) {
        let caches = &self.shared.caches;
        let kind = match &change.kind {
            ChangeKind::Flag { flag_id } => {
                let snapshot = self.registry.load();
                match snapshot.index_of(flag_id) {
                    Some(i) => caches.expire_slot(snapshot.slot(i)),
                    None => caches.invalidate_flag(flag_id),
                }
                "flag"
            }
            ChangeKind::Override { flag_id, entity_id } => {
                caches.invalidate_override(flag_id, entity_id);
                "override"
            }
            ChangeKind::Resync => {
                caches.flush();
                "resync"
            }
        };
        let m = &self.shared.metrics;
        m.change_event(kind);
        let lag_ms = crate::core::changes::unix_ms().saturating_sub(change.origin_unix_ms);
        #[allow(clippy::cast_precision_loss)]
        m.change_propagation.observe(lag_ms.max(0) as f64 / 1000.0);
        self.hub.publish(change);
    }

    /// Polls the kill set once: replaces it on success, keeps the last one on failure.
    /// Counts towards health either way.
    pub async fn poll_kill_set(&self) -> SourceResult<usize> {
        let ticket = self.kills.ticket();
        let started = std::time::Instant::now();
        let r = self
            .shared
            .source
            .killed_flags()
            .instrument(tracing::info_span!("source.killed_flags"))
            .await;
        self.shared.observe(Operation::KilledFlags, &r, started);
        let ids = r?;
        if !self.kills.replace_read(ticket, ids) {
            // A read that started later already landed; this one may predate a change.
            return Ok(self.kills.len());
        }
        let n = self.kills.len();
        let m = &self.shared.metrics;
        m.kill_set_size.set(i64::try_from(n).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.poller_last_success.set(now);
        Ok(n)
    }

    /// Records a failed kill poll that never reached the source (e.g. the poller's timeout fired).
    pub fn kill_poll_timed_out(&self) {
        self.shared.health.record_failure();
    }

    /// Re-reads the kill set once within the fetch timeout, after a change to a flag was
    /// announced; on failure the last set stays and the kill poll retries.
    pub async fn refresh_kills(&self) {
        let timeout = self.shared.caches.config().fetch_timeout;
        match tokio::time::timeout(timeout, self.poll_kill_set()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "kill set re-read after a change failed"),
            Err(_) => self.kill_poll_timed_out(),
        }
    }
}

/// Cached and fetched entries of one bulk evaluation, and whether the fetch failed.
struct Batch<T> {
    found: HashMap<String, Arc<T>>,
    failed: Option<SourceError>,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self {
            found: HashMap::new(),
            failed: None,
        }
    }
}

impl<T: Send + Sync + 'static> Batch<T> {
    /// Runs the fetch of the misses and adds what it found: awaited, or, as this interval's probe
    /// of a source known down, in the background (the misses then answer at once).
    async fn run<F>(mut self, admission: Admission, fetch: F) -> Self
    where
        F: Future<Output = SourceResult<Vec<(String, Arc<T>)>>> + Send + 'static,
    {
        let result = if admission == Admission::Probe {
            probe(fetch)
                .await
                .unwrap_or_else(|| Err(SourceError::unavailable(SOURCE_DOWN)))
        } else {
            fetch.await
        };
        match result {
            Ok(found) => self.found.extend(found),
            Err(e) => self.failed = Some(e),
        }
        self
    }
}

impl<T> Batch<T> {
    /// Splits `items` into cached entries (kept in `found`) and the distinct ids that missed,
    /// counting one hit or miss per distinct id on `tier`.
    fn partition<'a, H>(
        items: impl Iterator<Item = (&'a str, H)>,
        metrics: &Metrics,
        tier: Tier,
        cached: impl Fn(&str, &H) -> Option<Arc<T>>,
    ) -> (Self, Vec<(String, H)>) {
        let mut batch = Self::default();
        let mut missed = std::collections::HashSet::new();
        let mut missing = Vec::new();
        for (id, home) in items {
            if batch.found.contains_key(id) || missed.contains(id) {
                continue;
            }
            match cached(id, &home) {
                Some(e) => {
                    metrics.count(tier.hit);
                    batch.found.insert(id.to_owned(), e);
                }
                None => {
                    metrics.count(tier.miss);
                    missed.insert(id);
                    missing.push((id.to_owned(), home));
                }
            }
        }
        (batch, missing)
    }

    fn lookup(&self, id: &str, last_known: impl FnOnce(&str) -> Option<Arc<T>>) -> Lookup<T> {
        match self.found.get(id) {
            Some(e) => Lookup::Fresh(e.clone()),
            None if self.failed.is_some() => {
                last_known(id).map_or(Lookup::Unavailable, Lookup::Stale)
            }
            None => Lookup::Unavailable,
        }
    }
}

/// Caches the rows of an override fetch for `ids`: each id gets its row, or a negative entry
/// (stale at once if a change was announced since `since`, see [`Caches::changes`]).
/// Returns the entries in the order of `ids`.
fn store_overrides(
    shared: &Shared,
    entity_id: &str,
    ids: &[String],
    rows: Vec<source::Override>,
    since: u64,
) -> Vec<Arc<OverrideEntry>> {
    let mut by_flag: HashMap<String, source::Override> = HashMap::with_capacity(rows.len());
    for row in rows {
        // A source answering for another entity is ignored rather than trusted.
        if row.entity_id == entity_id {
            shared.check_type(&row.flag_id, row.value.as_ref());
            by_flag.insert(row.flag_id.clone(), row);
        }
    }
    ids.iter()
        .map(|id| {
            shared
                .caches
                .put_override(id, entity_id, by_flag.remove(id), since)
        })
        .collect()
}
