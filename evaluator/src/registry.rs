//! The flag registry: an immutable snapshot of definitions behind an atomic pointer.
//!
//! Readers take one snapshot per evaluation ([`Registry::load`]); a reload builds a new [`Snapshot`]
//! and swaps it in whole, so a reader never sees half of an update. Pure: no file access.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::descriptor::{self, FlagDef, ParseError, Warning};
use crate::engine::cache::Slot;

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
        Self {
            flags,
            slots,
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
}

impl Registry {
    /// A registry serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
        }
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
        self.current.swap(Arc::new(next))
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
        let caches = crate::engine::cache::Caches::new(
            Default::default(),
            crate::engine::clock::Clock::real(),
        );
        let old = example();
        caches.put_slot(old.slot(0), None);
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
