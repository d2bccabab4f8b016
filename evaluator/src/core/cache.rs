//! Caches of runtime state: hot caches with TTL + jitter per entry, and bounded last-known-value
//! stores consulted only when a fetch fails.
//!
//! Absent rows are cached like values ("negative caching"): an entry holds `None` when the source
//! said there is no flag row, or no override for (flag, entity). Override entries are keyed by a
//! 64-bit hash of (flag, entity) so a lookup allocates nothing; the entry carries both ids and a
//! mismatch (a hash collision) is treated as a miss.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use moka::Expiry;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use pbflags_proto::v1::FlagValue;
use pbflags_proto::v1::flag_value::Value;

use super::clock::Clock;
use super::source::{FlagState, Override};

/// The cache cell of one descriptor-known flag, kept beside its definition in the registry snapshot
/// so a hit needs no second hash lookup. After expiry the entry stays as the flag's last-known value.
pub type Slot = ArcSwapOption<FlagEntry>;

/// Cache settings; keys and defaults of v0.6's `cache:` block, plus bounds of our own.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Base interval of the kill-set poll.
    pub kill_ttl: Duration,
    /// TTL of global flag state entries.
    pub flag_ttl: Duration,
    /// TTL of override entries.
    pub override_ttl: Duration,
    /// Capacity of the override cache.
    pub override_max_entries: u64,
    /// Capacity of the flag state cache.
    pub flag_max_entries: u64,
    /// ± random jitter on flag and override TTLs, in percent (0 = exact).
    pub jitter_percent: u32,
    /// Timeout of one source call (applied by the sources and the kill poller).
    pub fetch_timeout: Duration,
    /// Capacity of each last-known-value store (flags, overrides); least recently used goes first.
    pub last_known_max_entries: u64,
    /// Bytes all four caches together may hold (ids, values and per-entry overhead, estimated);
    /// see [`Budget`].
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            kill_ttl: Duration::from_secs(30),
            flag_ttl: Duration::from_secs(300),
            override_ttl: Duration::from_secs(300),
            override_max_entries: 10_000,
            flag_max_entries: 100_000,
            jitter_percent: 20,
            fetch_timeout: Duration::from_millis(500),
            last_known_max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// `base` with a random ±`jitter_percent` applied.
pub fn jittered(base: Duration, jitter_percent: u32) -> Duration {
    if jitter_percent == 0 || base.is_zero() {
        return base;
    }
    let j = f64::from(jitter_percent.min(100)) / 100.0;
    let factor = 1.0 + (fastrand::f64() * 2.0 - 1.0) * j;
    base.mul_f64(factor)
}

/// A cached flag state; `state` is `None` when the source has no row for the flag.
#[derive(Debug)]
pub struct FlagEntry {
    /// The state, or `None` for "no row".
    pub state: Option<FlagState>,
    ttl: Duration,
    /// Engine-clock millisecond after which the entry is stale.
    expires_at: u64,
    /// The flush epoch it was written in; a flush makes older entries stale.
    epoch: u64,
}

/// A cached override lookup; `value` is `None` when the entity has no override for the flag.
#[derive(Debug)]
pub struct OverrideEntry {
    flag_id: Box<str>,
    entity_id: Box<str>,
    /// The override, or `None` for "no override".
    pub value: Option<Override>,
    ttl: Duration,
    /// Engine-clock millisecond after which the entry is stale.
    expires_at: u64,
}

trait Ttl {
    fn ttl(&self) -> Duration;
}
impl Ttl for FlagEntry {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}
impl Ttl for OverrideEntry {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Each entry is dropped after its own (jittered) TTL, counted from its latest write. This bounds
/// how long the hot maps hold memory; whether an entry is fresh is judged on the engine clock
/// (`expires_at`), so a manual clock in tests decides every expiry.
struct PerEntryTtl;

impl<K, V: Ttl> Expiry<K, Arc<V>> for PerEntryTtl {
    fn expire_after_create(&self, _: &K, value: &Arc<V>, _: Instant) -> Option<Duration> {
        Some(value.ttl())
    }
    fn expire_after_update(
        &self,
        _: &K,
        value: &Arc<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

type Hash = foldhash::fast::RandomState;

/// Estimated bytes of one entry besides its ids and value: the `Arc` and entry struct, the key, and
/// moka's node, deque and timer bookkeeping.
pub const ENTRY_OVERHEAD: usize = 256;

/// The bytes a value holds beyond its struct.
fn value_bytes(v: Option<&FlagValue>) -> usize {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.len(),
        _ => 0,
    }
}

/// One cache's bounds, enforced by a single moka weighted capacity: its share of
/// [`CacheConfig::max_bytes`] and its entry-count limit. Each entry weighs its estimated bytes,
/// but never less than `share / max_entries`; so the entries' bytes stay within the share (each
/// entry's bytes are at most its weight) and their number within `max_entries` (each weighs at
/// least share / max_entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes this cache may hold.
    pub share: u64,
    /// Entries this cache may hold.
    pub max_entries: u64,
}

impl Budget {
    fn new(max_bytes: u64, parts_of_8: u64, max_entries: u64) -> Self {
        Self {
            share: (max_bytes / 8 * parts_of_8).max(1),
            max_entries: max_entries.max(1),
        }
    }

    /// The weight of an entry of `bytes` (estimated, overhead included).
    pub fn weight(&self, bytes: usize) -> u32 {
        let floor = (self.share / self.max_entries).max(1);
        u32::try_from((bytes as u64).max(floor)).unwrap_or(u32::MAX)
    }
}

/// How many bytes a cached entry holds, for [`Budget`].
trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for FlagEntry {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD + value_bytes(self.state.as_ref().and_then(|s| s.value.as_ref()))
    }
}

impl Weigh for OverrideEntry {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + self.flag_id.len()
            + self.entity_id.len()
            + value_bytes(self.value.as_ref().and_then(|o| o.value.as_ref()))
    }
}

/// Keys that hold bytes of their own (a flag id; an override key is a hash).
trait KeyBytes {
    fn key_bytes(&self) -> usize;
}

impl KeyBytes for Arc<str> {
    fn key_bytes(&self) -> usize {
        self.len()
    }
}

impl KeyBytes for u64 {
    fn key_bytes(&self) -> usize {
        0
    }
}

fn weigher<K: KeyBytes, V: Weigh>(budget: Budget) -> impl Fn(&K, &Arc<V>) -> u32 {
    move |k, v| budget.weight(k.key_bytes() + v.bytes())
}

fn hot<K, V>(budget: Budget) -> Cache<K, Arc<V>, Hash>
where
    K: KeyBytes + std::hash::Hash + Eq + Send + Sync + 'static,
    V: Ttl + Weigh + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(budget.share)
        .weigher(weigher(budget))
        .expire_after(PerEntryTtl)
        .build_with_hasher(Hash::default())
}

fn last<K, V>(budget: Budget) -> Cache<K, Arc<V>, Hash>
where
    K: KeyBytes + std::hash::Hash + Eq + Send + Sync + 'static,
    V: Weigh + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(budget.share)
        .weigher(weigher(budget))
        .eviction_policy(EvictionPolicy::lru())
        .build_with_hasher(Hash::default())
}

/// All caches of one engine.
pub struct Caches {
    config: CacheConfig,
    clock: Clock,
    epoch: AtomicU64,
    /// Counts announced changes (invalidations); see [`Caches::changes`].
    changes: AtomicU64,
    flags: Cache<Arc<str>, Arc<FlagEntry>, Hash>,
    overrides: Cache<u64, Arc<OverrideEntry>, Hash>,
    last_flags: Cache<Arc<str>, Arc<FlagEntry>, Hash>,
    last_overrides: Cache<u64, Arc<OverrideEntry>, Hash>,
    key_hasher: Hash,
    /// Admission of undeclared flags: hashes of ids fetched recently, direct-mapped. An id is
    /// cached from its second fetch on, so a stream of ids each seen once (typos, probes, an
    /// attack) costs its fetches and no cache inserts, and cannot push out the ids in use.
    seen: Box<[AtomicU64]>,
}

/// Slots of the undeclared-flag admission table (8 bytes each).
const SEEN_SLOTS: usize = 4096;

impl Caches {
    /// The bounds of the four caches: `max_bytes` shared 1:3 between flag states (of undeclared
    /// flags; declared flags live in their registry slots) and overrides, in each half hot and
    /// last-known.
    pub fn budgets(config: &CacheConfig) -> [Budget; 4] {
        let b = config.max_bytes;
        [
            Budget::new(b, 1, config.flag_max_entries),
            Budget::new(b, 3, config.override_max_entries),
            Budget::new(b, 1, config.last_known_max_entries),
            Budget::new(b, 3, config.last_known_max_entries),
        ]
    }

    /// Empty caches sized by `config`, timing slot entries with `clock`.
    pub fn new(config: CacheConfig, clock: Clock) -> Self {
        let [flags, overrides, last_flags, last_overrides] = Self::budgets(&config);
        Self {
            clock,
            epoch: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            flags: hot(flags),
            overrides: hot(overrides),
            last_flags: last(last_flags),
            last_overrides: last(last_overrides),
            key_hasher: Hash::default(),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn override_key(&self, flag_id: &str, entity_id: &str) -> u64 {
        let mut h = self.key_hasher.build_hasher();
        h.write(flag_id.as_bytes());
        h.write_u8(0xff); // not valid UTF-8: separates ("ab","c") from ("a","bc")
        h.write(entity_id.as_bytes());
        h.finish()
    }

    /// The engine clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// How many changes have been announced so far. A fetch reads it before asking the source and
    /// hands it to `put_*`: if a change was announced meanwhile, what the fetch read may predate
    /// it, so the entry is stored already stale (still the last-known value) instead of fresh for
    /// a whole TTL.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    fn announce(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// A jittered TTL and the clock millisecond it ends at: now if a change was announced since
    /// `since`.
    fn expiry(&self, base: Duration, since: u64) -> (Duration, u64) {
        let ttl = jittered(base, self.config.jitter_percent);
        if self.changes() != since {
            return (ttl, 0);
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        (ttl, self.clock.now_ms().saturating_add(ttl_ms))
    }

    fn flag_entry(&self, state: Option<FlagState>, since: u64) -> Arc<FlagEntry> {
        let (ttl, expires_at) = self.expiry(self.config.flag_ttl, since);
        Arc::new(FlagEntry {
            state,
            ttl,
            expires_at,
            epoch: self.epoch.load(Ordering::Relaxed),
        })
    }

    /// The slot's entry if it is fresh.
    #[inline]
    pub fn slot_fresh(&self, slot: &Slot) -> Option<Arc<FlagEntry>> {
        slot.load().as_ref().filter(|e| self.is_fresh(e)).cloned()
    }

    /// Whether a slot's entry is still fresh: within its TTL and written since the last flush.
    #[inline]
    pub fn is_fresh(&self, e: &FlagEntry) -> bool {
        self.clock.now_ms() < e.expires_at && e.epoch == self.epoch.load(Ordering::Relaxed)
    }

    /// The slot's entry, fresh or not: the flag's last-known value.
    pub fn slot_last(&self, slot: &Slot) -> Option<Arc<FlagEntry>> {
        slot.load_full()
    }

    /// Stores a fetched state (or "no row") in a slot.
    pub fn put_slot(&self, slot: &Slot, state: Option<FlagState>, since: u64) -> Arc<FlagEntry> {
        let entry = self.flag_entry(state, since);
        slot.store(Some(entry.clone()));
        entry
    }

    /// Fresh slots among `slots`.
    pub fn fresh_slots<'a>(&self, slots: impl Iterator<Item = &'a Slot>) -> u64 {
        slots
            .filter(|s| s.load().as_ref().is_some_and(|e| self.is_fresh(e)))
            .count() as u64
    }

    /// The hot entry for `flag_id` (flags the descriptors do not declare).
    #[inline]
    pub fn flag(&self, flag_id: &str) -> Option<Arc<FlagEntry>> {
        self.flags.get(flag_id).filter(|e| self.is_fresh(e))
    }

    /// A fetched state (or "no row") of an undeclared flag, cached as [`put_flag`](Self::put_flag)
    /// does if the id was fetched recently (see `seen`); the first fetch of an id only remembers
    /// its hash.
    pub fn admit_flag(
        &self,
        flag_id: Arc<str>,
        state: Option<FlagState>,
        since: u64,
    ) -> Arc<FlagEntry> {
        if self.admit(&flag_id) {
            self.put_flag(flag_id, state, since)
        } else {
            self.flag_entry(state, since)
        }
    }

    /// Caches a fetched state (or "no row") of an undeclared flag in the hot cache and the
    /// last-known store.
    pub fn put_flag(
        &self,
        flag_id: Arc<str>,
        state: Option<FlagState>,
        since: u64,
    ) -> Arc<FlagEntry> {
        let entry = self.flag_entry(state, since);
        self.flags.insert(flag_id.clone(), entry.clone());
        self.last_flags.insert(flag_id, entry.clone());
        entry
    }

    /// Whether `flag_id` was fetched recently; remembers it either way. Two ids sharing a slot
    /// push each other out: both are then fetched each time, which costs no more than a miss.
    fn admit(&self, flag_id: &str) -> bool {
        let h = self.key_hasher.hash_one(flag_id.as_bytes()) | 1; // never 0, the empty slot
        let slot = &self.seen[(h >> 52) as usize % SEEN_SLOTS];
        slot.swap(h, Ordering::Relaxed) == h
    }

    /// The last fetched entry for `flag_id`, whatever its age.
    pub fn last_known_flag(&self, flag_id: &str) -> Option<Arc<FlagEntry>> {
        self.last_flags.get(flag_id)
    }

    /// The hot override entry for (flag, entity).
    #[inline]
    pub fn override_entry(&self, flag_id: &str, entity_id: &str) -> Option<Arc<OverrideEntry>> {
        let e = self.overrides.get(&self.override_key(flag_id, entity_id))?;
        (*e.flag_id == *flag_id && *e.entity_id == *entity_id && self.clock.now_ms() < e.expires_at)
            .then_some(e)
    }

    /// Caches a fetched override (or "no override") for (flag, entity).
    pub fn put_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        value: Option<Override>,
        since: u64,
    ) -> Arc<OverrideEntry> {
        let (ttl, expires_at) = self.expiry(self.config.override_ttl, since);
        let entry = Arc::new(OverrideEntry {
            flag_id: flag_id.into(),
            entity_id: entity_id.into(),
            value,
            ttl,
            expires_at,
        });
        let key = self.override_key(flag_id, entity_id);
        self.overrides.insert(key, entry.clone());
        self.last_overrides.insert(key, entry.clone());
        entry
    }

    /// The last fetched override entry for (flag, entity), whatever its age.
    pub fn last_known_override(
        &self,
        flag_id: &str,
        entity_id: &str,
    ) -> Option<Arc<OverrideEntry>> {
        let e = self
            .last_overrides
            .get(&self.override_key(flag_id, entity_id))?;
        (*e.flag_id == *flag_id && *e.entity_id == *entity_id).then_some(e)
    }

    /// Makes a declared flag's slot stale; its state stays as the last-known value.
    pub fn expire_slot(&self, slot: &Slot) {
        self.announce();
        if let Some(e) = slot.load_full() {
            slot.store(Some(Arc::new(FlagEntry {
                state: e.state.clone(),
                ttl: e.ttl,
                expires_at: 0,
                epoch: e.epoch,
            })));
        }
    }

    /// Drops an undeclared flag's hot entry; the last-known one stays.
    pub fn invalidate_flag(&self, flag_id: &str) {
        self.announce();
        self.flags.invalidate(flag_id);
    }

    /// Drops the hot entry for (flag, entity); the last-known one stays.
    pub fn invalidate_override(&self, flag_id: &str, entity_id: &str) {
        self.announce();
        self.overrides
            .invalidate(&self.override_key(flag_id, entity_id));
    }

    /// Empties the hot caches; last-known values are kept.
    pub fn flush(&self) {
        self.announce();
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.flags.invalidate_all();
        self.overrides.invalidate_all();
        self.flags.run_pending_tasks();
        self.overrides.run_pending_tasks();
    }

    /// Entry counts after pending maintenance: (flags, overrides, last-known flags + overrides).
    pub fn sizes(&self) -> (u64, u64, u64) {
        for c in [&self.flags, &self.last_flags] {
            c.run_pending_tasks();
        }
        for c in [&self.overrides, &self.last_overrides] {
            c.run_pending_tasks();
        }
        (
            self.flags.entry_count(),
            self.overrides.entry_count(),
            self.last_flags.entry_count() + self.last_overrides.entry_count(),
        )
    }

    /// The estimated bytes the four caches hold (as weighed against their budgets; call after
    /// [`Caches::sizes`], which runs pending maintenance).
    pub fn weighted_bytes(&self) -> u64 {
        self.flags.weighted_size()
            + self.overrides.weighted_size()
            + self.last_flags.weighted_size()
            + self.last_overrides.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbflags_proto::v1::State;

    fn state() -> FlagState {
        FlagState {
            state: State::Enabled,
            value: None,
            archived: false,
        }
    }

    #[test]
    fn undeclared_flags_are_cached_from_their_second_fetch() {
        let caches = Caches::new(CacheConfig::default(), Clock::manual());
        let first = caches.admit_flag("f/1".into(), Some(state()), caches.changes());
        assert!(caches.is_fresh(&first), "the answer itself is fresh");
        assert!(
            caches.flag("f/1").is_none(),
            "not cached on the first fetch"
        );
        assert!(caches.last_known_flag("f/1").is_none());
        caches.admit_flag("f/1".into(), Some(state()), caches.changes());
        assert!(caches.flag("f/1").is_some(), "cached on the second");
        assert!(caches.last_known_flag("f/1").is_some());
        // A stream of ids seen once inserts nothing.
        for i in 0..10_000 {
            caches.admit_flag(format!("probe/{i}").into(), None, caches.changes());
        }
        caches.flags.run_pending_tasks();
        assert_eq!(caches.flags.entry_count(), 1);
    }

    #[test]
    fn zero_jitter_gives_the_exact_ttl() {
        let base = Duration::from_secs(60);
        assert!((0..100).all(|_| jittered(base, 0) == base));
    }

    #[test]
    fn twenty_percent_jitter_stays_within_bounds_and_varies() {
        let base = Duration::from_secs(100);
        let samples: Vec<_> = (0..100).map(|_| jittered(base, 20)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120))
        );
        assert!(samples.iter().any(|d| *d != samples[0]), "jitter must vary");
    }

    #[test]
    fn entries_expire_after_their_ttl_but_last_known_survives() {
        let clock = Clock::manual();
        let caches = Caches::new(
            CacheConfig {
                flag_ttl: Duration::from_secs(60),
                override_ttl: Duration::from_secs(30),
                jitter_percent: 0,
                ..Default::default()
            },
            clock.clone(),
        );
        caches.put_flag("f/1".into(), Some(state()), caches.changes());
        caches.put_override("f/1", "u", None, caches.changes());
        clock.advance(Duration::from_millis(29_999));
        assert!(caches.flag("f/1").is_some() && caches.override_entry("f/1", "u").is_some());
        clock.advance(Duration::from_millis(1));
        assert!(
            caches.override_entry("f/1", "u").is_none(),
            "override expired"
        );
        assert!(caches.flag("f/1").is_some(), "flag TTL is longer");
        clock.advance(Duration::from_secs(30));
        assert!(caches.flag("f/1").is_none(), "flag expired");
        assert!(
            caches.last_known_flag("f/1").is_some()
                && caches.last_known_override("f/1", "u").is_some(),
            "last known values survive the TTL"
        );
    }

    #[test]
    fn absent_rows_are_cached_as_negative_entries() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        caches.put_flag("f/1".into(), None, caches.changes());
        let e = caches.flag("f/1").expect("negative entry is cached");
        assert!(e.state.is_none());
        caches.put_override("f/1", "u", None, caches.changes());
        assert!(
            caches
                .override_entry("f/1", "u")
                .expect("negative")
                .value
                .is_none()
        );
    }

    #[test]
    fn override_keys_do_not_mix_flag_and_entity_boundaries() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        caches.put_override("ab", "c", None, caches.changes());
        assert!(caches.override_entry("a", "bc").is_none());
        assert!(caches.override_entry("ab", "c").is_some());
    }

    #[test]
    fn flush_empties_hot_caches_and_keeps_last_known() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        caches.put_flag("f/1".into(), Some(state()), caches.changes());
        caches.put_override("f/1", "u", None, caches.changes());
        caches.flush();
        assert!(caches.flag("f/1").is_none() && caches.override_entry("f/1", "u").is_none());
        assert!(
            caches.last_known_flag("f/1").is_some()
                && caches.last_known_override("f/1", "u").is_some()
        );
    }

    #[test]
    fn last_known_store_is_bounded() {
        let caches = Caches::new(
            CacheConfig {
                last_known_max_entries: 100,
                ..Default::default()
            },
            Clock::real(),
        );
        for i in 0..5_000 {
            caches.put_override("f/1", &format!("entity-{i}"), None, caches.changes());
        }
        let (_, _, last) = caches.sizes();
        assert!(
            last <= 100,
            "last-known store holds {last} entries, bound is 100"
        );
    }

    #[test]
    fn large_entries_are_bounded_by_bytes_and_small_ones_by_count() {
        let config = CacheConfig {
            max_bytes: 8 << 20,
            ..Default::default()
        };
        let [_, overrides, _, last_overrides] = Caches::budgets(&config);
        let caches = Caches::new(config.clone(), Clock::real());
        // 10,000 overrides with 4 KiB entity ids: 40 MiB offered, 3 MiB + 3 MiB allowed.
        let pad = "e".repeat(4096);
        for i in 0..10_000 {
            caches.put_override("f/1", &format!("{i}{pad}"), None, caches.changes());
        }
        let (_, hot, last) = caches.sizes();
        let entry = (ENTRY_OVERHEAD + 3 + 4096 + 4) as u64;
        assert!(hot * entry <= overrides.share, "{hot} hot entries");
        assert!(last * entry <= last_overrides.share, "{last} last-known");
        assert!(caches.weighted_bytes() <= overrides.share + last_overrides.share);
        // The budget is used, not just respected.
        assert!(hot * entry > overrides.share / 2, "{hot} hot entries");

        // Small entries: the count limit binds first.
        let small = Caches::new(
            CacheConfig {
                override_max_entries: 50,
                last_known_max_entries: 70,
                ..config
            },
            Clock::real(),
        );
        for i in 0..5_000 {
            small.put_override("f/1", &format!("u{i}"), None, small.changes());
        }
        let (_, hot, last) = small.sizes();
        assert!(hot <= 50 && last <= 70, "{hot} / {last}");
    }

    #[test]
    fn an_entry_weighs_its_bytes_but_at_least_its_share_of_the_count_limit() {
        let b = Budget {
            share: 1_000_000,
            max_entries: 1_000,
        };
        assert_eq!(b.weight(10), 1_000);
        assert_eq!(b.weight(5_000), 5_000);
        assert_eq!(b.weight(usize::MAX), u32::MAX);
    }

    #[test]
    fn sizes_are_real_counts() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        for i in 0..10 {
            caches.put_flag(format!("f/{i}").into(), None, caches.changes());
        }
        caches.put_override("f/1", "u", None, caches.changes());
        assert_eq!(caches.sizes(), (10, 1, 11));
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn a_slot_entry_expires_but_stays_as_last_known() {
        let clock = Clock::manual();
        let caches = Caches::new(
            CacheConfig {
                flag_ttl: Duration::from_secs(30),
                jitter_percent: 0,
                ..Default::default()
            },
            clock.clone(),
        );
        let slot = Slot::empty();
        caches.put_slot(&slot, None, caches.changes());
        clock.advance(Duration::from_millis(29_999));
        assert!(caches.slot_fresh(&slot).is_some());
        clock.advance(Duration::from_millis(1));
        assert!(caches.slot_fresh(&slot).is_none());
        assert!(caches.slot_last(&slot).is_some());
    }

    #[test]
    fn an_announced_change_makes_exactly_its_entry_stale_and_keeps_it_as_last_known() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        let (slot, other) = (Slot::empty(), Slot::empty());
        caches.put_slot(&slot, None, caches.changes());
        caches.put_slot(&other, None, caches.changes());
        caches.put_flag("f/1".into(), None, caches.changes());
        caches.put_flag("f/2".into(), None, caches.changes());
        caches.put_override("f/1", "u", None, caches.changes());
        caches.put_override("f/1", "v", None, caches.changes());

        caches.expire_slot(&slot);
        caches.invalidate_flag("f/1");
        caches.invalidate_override("f/1", "u");
        assert!(caches.slot_fresh(&slot).is_none() && caches.slot_last(&slot).is_some());
        assert!(caches.flag("f/1").is_none() && caches.last_known_flag("f/1").is_some());
        assert!(
            caches.override_entry("f/1", "u").is_none()
                && caches.last_known_override("f/1", "u").is_some()
        );
        // The others stay fresh.
        assert!(caches.slot_fresh(&other).is_some());
        assert!(caches.flag("f/2").is_some());
        assert!(caches.override_entry("f/1", "v").is_some());
    }

    #[test]
    fn a_fetch_that_overlaps_an_announced_change_is_stored_stale() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        let slot = Slot::empty();
        // A fetch starts, a change is announced while it waits on the source, then it stores what
        // it read (which may predate the change): it must not be served as fresh for a TTL.
        let since = caches.changes();
        caches.invalidate_override("f/9", "x");
        caches.put_slot(&slot, None, since);
        caches.put_flag("f/1".into(), None, since);
        caches.put_override("f/1", "u", None, since);
        assert!(caches.slot_fresh(&slot).is_none() && caches.slot_last(&slot).is_some());
        assert!(caches.flag("f/1").is_none() && caches.last_known_flag("f/1").is_some());
        assert!(caches.override_entry("f/1", "u").is_none());
        // The next fetch, with nothing announced during it, is fresh again.
        caches.put_slot(&slot, None, caches.changes());
        assert!(caches.slot_fresh(&slot).is_some());
    }

    #[test]
    fn flush_makes_slots_stale_but_keeps_them() {
        let caches = Caches::new(CacheConfig::default(), Clock::real());
        let slot = Slot::empty();
        caches.put_slot(&slot, None, caches.changes());
        caches.flush();
        assert!(caches.slot_fresh(&slot).is_none());
        assert!(caches.slot_last(&slot).is_some());
    }
}
