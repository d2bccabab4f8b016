//! The kill set: ids of globally killed flags, replaced whole on each successful poll.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

/// Killed flag ids, swappable atomically; initially empty.
pub struct KillSet {
    ids: ArcSwap<HashSet<Box<str>, foldhash::fast::RandomState>>,
    /// Size of `ids`, so the common case (nothing killed) costs one relaxed load.
    len: AtomicUsize,
    /// Bumped after every replacement (starts at 1, so snapshots at 0 sync once).
    generation: AtomicU64,
    /// The last read ticket handed out, and the newest ticket whose set was applied: a read that
    /// started before another one that already landed is stale and dropped.
    tickets: AtomicU64,
    applied: std::sync::Mutex<u64>,
}

impl Default for KillSet {
    fn default() -> Self {
        Self {
            ids: ArcSwap::default(),
            len: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            tickets: AtomicU64::new(0),
            applied: std::sync::Mutex::new(0),
        }
    }
}

impl KillSet {
    /// The generation of the current set.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True when `flag_id` is killed.
    #[inline]
    pub fn contains(&self, flag_id: &str) -> bool {
        self.len.load(Ordering::Relaxed) != 0 && self.ids.load().contains(flag_id)
    }

    /// A ticket for a read of the set that starts now (see [`KillSet::replace_read`]).
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Replaces the set with what the read holding `ticket` found, unless a read that started
    /// later has already been applied (two reads overlapping a change — the periodic poll and
    /// the re-read after a notification — must not leave the older answer in place). Returns
    /// whether it was applied.
    pub fn replace_read(&self, ticket: u64, ids: impl IntoIterator<Item = String>) -> bool {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ticket < *applied {
            return false;
        }
        *applied = ticket;
        self.replace(ids);
        true
    }

    /// Replaces the whole set.
    pub fn replace(&self, ids: impl IntoIterator<Item = String>) {
        let set: HashSet<Box<str>, foldhash::fast::RandomState> =
            ids.into_iter().map(String::into_boxed_str).collect();
        let n = set.len();
        self.ids.store(Arc::new(set));
        self.len.store(n, Ordering::Relaxed);
        // After the store: whoever sees the new generation reads the new set.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Number of killed flags.
    pub fn len(&self) -> usize {
        self.ids.load().len()
    }

    /// True when nothing is killed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The killed ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ids.load().iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty() {
        let k = KillSet::default();
        assert!(k.is_empty());
        assert!(!k.contains("f/1"));
    }

    #[test]
    fn a_read_that_started_earlier_never_replaces_a_later_one() {
        let k = KillSet::default();
        let (poll, reread) = (k.ticket(), k.ticket());
        // The re-read after a kill notification lands first; the periodic poll, which started
        // before the kill, lands after it and is dropped.
        assert!(k.replace_read(reread, ["a/1".to_owned()]));
        assert!(!k.replace_read(poll, Vec::<String>::new()));
        assert!(k.contains("a/1"));
        let next = k.ticket();
        assert!(k.replace_read(next, Vec::<String>::new()));
        assert!(k.is_empty());
    }

    #[test]
    fn replacement_is_whole() {
        let k = KillSet::default();
        k.replace(["a/1".to_owned(), "b/2".to_owned()]);
        assert!(k.contains("a/1") && k.contains("b/2"));
        k.replace(["c/3".to_owned()]);
        assert!(!k.contains("a/1"), "old ids are no longer killed");
        assert_eq!(k.ids(), ["c/3"]);
    }
}
