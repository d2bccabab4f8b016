//! The flag registry: an immutable snapshot of definitions behind an atomic pointer.
//!
//! Readers take one snapshot per evaluation ([`Registry::load`]); a reload builds a new [`Snapshot`]
//! and swaps it in whole, so a reader never sees half of an update. Pure: no file access.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::core::cache::{FlagEntry, Slot};
use crate::core::descriptor::{self, FlagDef, ParseError, Warning};

/// SHA-256 of a descriptor file's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// One immutable generation of flag definitions, each with the engine's cache slot beside it.
#[derive(Debug, Default)]
pub struct Snapshot {
    flags: Vec<Arc<FlagDef>>,
    slots: Vec<Slot>,
    /// Per-flag "killed" bits, synced from the engine's kill set (see `kill_generation`).
    killed: Vec<AtomicBool>,
    /// The kill-set generation `killed` reflects (0: never synced).
    kill_generation: AtomicU64,
    index: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    hash: ContentHash,
    warnings: Vec<Warning>,
}

impl Snapshot {
    /// Parses descriptor bytes into a snapshot.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        let parsed = descriptor::parse(bytes)?;
        Ok(Self::new(
            parsed.flags,
            ContentHash::of(bytes),
            parsed.warnings,
        ))
    }

    /// A snapshot of `flags` (ids are unique: the parser guarantees it; a later duplicate wins here).
    pub fn new(flags: Vec<FlagDef>, hash: ContentHash, warnings: Vec<Warning>) -> Self {
        let flags: Vec<Arc<FlagDef>> = flags.into_iter().map(Arc::new).collect();
        let index = flags
            .iter()
            .enumerate()
            .map(|(i, f)| (f.flag_id.as_str().into(), i))
            .collect();
        let slots = flags.iter().map(|_| Slot::empty()).collect();
        let killed = flags.iter().map(|_| AtomicBool::new(false)).collect();
        Self {
            flags,
            slots,
            killed,
            kill_generation: AtomicU64::new(0),
            index,
            hash,
            warnings,
        }
    }

    /// The definition of `flag_id`, if the descriptors declare it.
    #[inline]
    pub fn get(&self, flag_id: &str) -> Option<&Arc<FlagDef>> {
        self.index.get(flag_id).map(|&i| &self.flags[i])
    }

    /// The position of `flag_id` in [`flags`](Self::flags) and [`slot`](Self::slot).
    #[inline]
    pub fn index_of(&self, flag_id: &str) -> Option<usize> {
        self.index.get(flag_id).copied()
    }

    /// The cache slot of the flag at `index`.
    #[inline]
    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// Every slot.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Whether the flag at `index` was killed when the bits were last synced.
    #[inline]
    pub fn killed(&self, index: usize) -> bool {
        self.killed[index].load(Ordering::Relaxed)
    }

    /// The kill-set generation the bits reflect.
    #[inline]
    pub fn kill_generation(&self) -> u64 {
        self.kill_generation.load(Ordering::Acquire)
    }

    /// Sets every flag's kill bit with `is_killed` and records `generation`.
    pub fn sync_kill_bits(&self, generation: u64, is_killed: impl Fn(&str) -> bool) {
        for (f, bit) in self.flags.iter().zip(&self.killed) {
            bit.store(is_killed(&f.flag_id), Ordering::Relaxed);
        }
        self.kill_generation.store(generation, Ordering::Release);
    }

    /// Carries cached state over from `old` for flags both declare, so a reload does not cold-start
    /// the cache.
    pub fn inherit_slots(&self, old: &Snapshot) {
        for (i, f) in self.flags.iter().enumerate() {
            if let Some(j) = old.index_of(&f.flag_id) {
                self.slots[i].store(old.slots[j].load_full());
            }
        }
    }

    /// Every flag, in declaration order.
    pub fn flags(&self) -> &[Arc<FlagDef>] {
        &self.flags
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// True when there are no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// SHA-256 of the bytes this snapshot was parsed from.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// Parser warnings for these descriptors.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// What changed from `old` to `self`.
    pub fn diff(&self, old: &Snapshot) -> Diff {
        let mut diff = Diff::default();
        for f in &self.flags {
            match old.get(&f.flag_id) {
                None => diff.added.push(f.flag_id.clone()),
                Some(o) if **o != **f => diff.changed.push(f.flag_id.clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .flags
            .iter()
            .filter(|f| self.get(&f.flag_id).is_none())
            .map(|f| f.flag_id.clone())
            .collect();
        diff
    }
}

/// Flag ids added, removed and changed (type, default, layer, or any other attribute) by a reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Ids new in this generation.
    pub added: Vec<String>,
    /// Ids gone from this generation.
    pub removed: Vec<String>,
    /// Ids whose definition differs.
    pub changed: Vec<String>,
}

/// The current snapshot, swappable atomically.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// Bumped after every swap; readers' thread-local copies compare it.
    generation: AtomicU64,
    id: u64,
}

/// Registries a thread keeps a snapshot of; more are served by plain loads.
const LOCAL_REGISTRIES: usize = 4;

/// One flag's slot, reachable from a thread-local cache.
struct SlotRef(Arc<Snapshot>, usize);

impl std::ops::Deref for SlotRef {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        &self.0.slots[self.1]
    }
}

/// A thread's copy of a slot's pointer: arc-swap's `Cache` re-reads the shared pointer with one
/// relaxed load and takes a new reference only when it changed, so an unchanged slot costs no
/// read-modify-write.
type SlotCache = arc_swap::cache::Cache<SlotRef, Option<Arc<FlagEntry>>>;

/// What a thread keeps of one registry.
struct Local {
    id: u64,
    generation: u64,
    snapshot: Arc<Snapshot>,
    slots: Vec<Option<SlotCache>>,
}

impl Local {
    fn new(id: u64, generation: u64, snapshot: Arc<Snapshot>) -> Self {
        Self {
            id,
            generation,
            snapshot,
            slots: Vec::new(),
        }
    }
}

thread_local! {
    /// The registries this thread read last.
    static LOCAL: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// The current snapshot as one thread sees it, with its own copies of the slots' pointers.
pub struct View<'a> {
    snapshot: &'a Arc<Snapshot>,
    slots: &'a mut Vec<Option<SlotCache>>,
}

impl<'a> View<'a> {
    /// The snapshot.
    #[inline]
    pub fn snapshot(&self) -> &'a Arc<Snapshot> {
        self.snapshot
    }

    /// The entry in the slot of the flag at `index`, fresh or not.
    #[inline]
    pub fn slot_entry(&mut self, index: usize) -> Option<&FlagEntry> {
        let n = self.snapshot.slots.len();
        if index >= n {
            return None;
        }
        if self.slots.len() < n {
            self.slots.resize_with(n, || None);
        }
        let snapshot = self.snapshot;
        self.slots[index]
            .get_or_insert_with(|| SlotCache::new(SlotRef(snapshot.clone(), index)))
            .load()
            .as_deref()
    }
}

impl Registry {
    /// A registry serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Calls `f` with this thread's view of the current snapshot. The hot path: a thread keeps its
    /// own pointer to the snapshot (and to each slot's entry) and re-reads the shared one only when
    /// the generation changed, so a read costs a thread-local access and one atomic load. A nested
    /// call gets a view of its own, without the thread's slot copies.
    #[inline]
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&mut View<'_>) -> R) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        LOCAL.with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return f(&mut View {
                    snapshot: &self.current.load_full(),
                    slots: &mut Vec::new(),
                });
            };
            let pos = match local.iter().position(|e| e.id == self.id) {
                Some(p) => p,
                None => {
                    if local.len() >= LOCAL_REGISTRIES {
                        local.remove(0);
                    }
                    local.push(Local::new(self.id, generation, self.current.load_full()));
                    local.len() - 1
                }
            };
            let entry = &mut local[pos];
            if entry.generation != generation {
                *entry = Local::new(self.id, generation, self.current.load_full());
            }
            f(&mut View {
                snapshot: &entry.snapshot,
                slots: &mut entry.slots,
            })
        })
    }

    /// The current snapshot. Cheap; take it once per evaluation and use it throughout.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned pointer (for holding across awaits).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot and returns the previous one.
    pub fn swap(&self, next: Snapshot) -> Arc<Snapshot> {
        let old = self.current.swap(Arc::new(next));
        // After the store: a reader that sees the new generation loads the new snapshot.
        self.generation.fetch_add(1, Ordering::Release);
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Snapshot {
        Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example parses")
    }

    #[test]
    fn snapshot_finds_flags_by_id_and_keeps_declaration_order() {
        let s = example();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.get("notifications/3").map(|f| f.name.as_str()),
            Some("max_retries")
        );
        assert!(s.get("notifications/9").is_none());
        assert_eq!(s.flags()[0].flag_id, "notifications/1");
    }

    #[test]
    fn hash_is_the_sha256_of_the_input_bytes() {
        let s = example();
        assert_eq!(
            s.hash(),
            ContentHash::of(pbflags_proto::EXAMPLE_DESCRIPTORS)
        );
        assert_eq!(s.hash().to_string().len(), 64);
        assert_ne!(s.hash(), ContentHash::of(b"other"));
    }

    #[test]
    fn diff_reports_added_removed_and_changed_ids() {
        let old = example();
        let mut flags: Vec<FlagDef> = old.flags().iter().map(|f| (**f).clone()).collect();
        flags.remove(0);
        flags[0].default = None;
        let mut extra = flags[0].clone();
        extra.flag_id = "notifications/99".into();
        flags.push(extra);
        let new = Snapshot::new(flags, ContentHash::default(), vec![]);
        let diff = new.diff(&old);
        assert_eq!(diff.added, ["notifications/99"]);
        assert_eq!(diff.removed, ["notifications/1"]);
        assert_eq!(diff.changed, ["notifications/2"]);
    }

    #[test]
    fn a_new_snapshot_inherits_cached_state_of_flags_it_still_declares() {
        let caches =
            crate::core::cache::Caches::new(Default::default(), crate::core::clock::Clock::real());
        let old = example();
        caches.put_slot(old.slot(0), None, caches.changes());
        let new = example();
        new.inherit_slots(&old);
        assert!(caches.slot_fresh(new.slot(0)).is_some());
        assert!(new.slot(1).load().is_none());
    }

    #[test]
    fn swap_replaces_the_whole_snapshot_and_returns_the_old_one() {
        let reg = Registry::new(Snapshot::default());
        let held = reg.load_full();
        let old = reg.swap(example());
        assert!(old.is_empty());
        assert!(held.is_empty(), "a reader keeps the snapshot it took");
        assert_eq!(reg.load().len(), 4);
    }

    #[test]
    fn thread_local_readers_see_a_swap_at_once() {
        let reg = Registry::new(example());
        assert_eq!(reg.with_snapshot(|v| v.snapshot().len()), 4);
        reg.swap(Snapshot::default());
        assert_eq!(reg.with_snapshot(|v| v.snapshot().len()), 0);
        let other = Registry::new(example());
        assert_eq!(
            (
                reg.with_snapshot(|v| v.snapshot().len()),
                other.with_snapshot(|v| v.snapshot().len())
            ),
            (0, 4)
        );
    }

    #[test]
    fn kill_bits_record_their_generation() {
        let s = example();
        assert_eq!(s.kill_generation(), 0);
        s.sync_kill_bits(3, |id| id == "notifications/2");
        assert!(s.killed(1) && !s.killed(0));
        assert_eq!(s.kill_generation(), 3);
    }

    #[test]
    fn concurrent_readers_always_see_a_whole_snapshot() {
        let reg = Arc::new(Registry::new(example()));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let s = reg.load();
                        assert!(s.is_empty() || s.len() == 4);
                    }
                })
            })
            .collect();
        for i in 0..1_000 {
            if i % 2 == 0 {
                reg.swap(Snapshot::default())
            } else {
                reg.swap(example())
            };
        }
        for r in readers {
            r.join().expect("reader");
        }
    }
}
