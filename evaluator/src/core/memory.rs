//! An in-memory [`StateSource`] for tests, benchmarks and local experiments: state set by hand,
//! failures injected, calls counted, and answers held back on demand (to test coalescing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use futures_util::future::BoxFuture;
use pbflags_proto::v1::{FlagValue, State};

use super::source::{FlagState, Override, SourceError, SourceResult, StateSource};

/// Counts of calls made to a [`MemorySource`], by method.
#[derive(Debug, Default)]
pub struct Calls {
    /// `flag_state`.
    pub flag_state: AtomicUsize,
    /// `flag_states`.
    pub flag_states: AtomicUsize,
    /// `overrides`.
    pub overrides: AtomicUsize,
    /// `killed_flags`.
    pub killed_flags: AtomicUsize,
}

impl Calls {
    /// Calls that fetch flag state (single or batched) or overrides.
    pub fn fetches(&self) -> usize {
        self.flag_state.load(Ordering::SeqCst)
            + self.flag_states.load(Ordering::SeqCst)
            + self.overrides.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Data {
    flags: HashMap<String, FlagState>,
    overrides: HashMap<(String, String), Override>,
}

/// State held in memory.
#[derive(Default)]
pub struct MemorySource {
    data: Mutex<Data>,
    failing: AtomicBool,
    held: Mutex<Option<Vec<Waker>>>,
    /// Calls so far.
    pub calls: Calls,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the global state of a flag.
    pub fn set_flag(&self, flag_id: &str, state: State, value: Option<FlagValue>) {
        self.data().flags.insert(
            flag_id.to_owned(),
            FlagState {
                state,
                value,
                archived: false,
            },
        );
    }

    /// Sets a flag's full row (e.g. archived).
    pub fn set_flag_state(&self, flag_id: &str, state: FlagState) {
        self.data().flags.insert(flag_id.to_owned(), state);
    }

    /// Removes a flag row.
    pub fn remove_flag(&self, flag_id: &str) {
        self.data().flags.remove(flag_id);
    }

    /// Sets an override.
    pub fn set_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        state: State,
        value: Option<FlagValue>,
    ) {
        let o = Override {
            flag_id: flag_id.to_owned(),
            entity_id: entity_id.to_owned(),
            state,
            value,
        };
        self.data()
            .overrides
            .insert((flag_id.to_owned(), entity_id.to_owned()), o);
    }

    /// Removes an override.
    pub fn remove_override(&self, flag_id: &str, entity_id: &str) {
        self.data()
            .overrides
            .remove(&(flag_id.to_owned(), entity_id.to_owned()));
    }

    /// Makes every call fail (true) or succeed (false).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Holds every answer back until [`release`](Self::release).
    pub fn hold(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get_or_insert_with(Vec::new);
    }

    /// Lets held answers through.
    pub fn release(&self) {
        let wakers = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    async fn gate(&self) -> SourceResult<()> {
        futures_util::future::poll_fn(|cx| {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match held.as_mut() {
                Some(wakers) => {
                    wakers.push(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            }
        })
        .await;
        if self.failing.load(Ordering::SeqCst) {
            Err(SourceError::unavailable("memory source set to fail"))
        } else {
            Ok(())
        }
    }
}

impl StateSource for MemorySource {
    fn flag_state(&self, flag_id: &str) -> BoxFuture<'_, SourceResult<Option<FlagState>>> {
        self.calls.flag_state.fetch_add(1, Ordering::SeqCst);
        let flag_id = flag_id.to_owned();
        Box::pin(async move {
            self.gate().await?;
            Ok(self.data().flags.get(&flag_id).cloned())
        })
    }

    fn flag_states<'a>(
        &'a self,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<HashMap<String, FlagState>>> {
        self.calls.flag_states.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate().await?;
            let data = self.data();
            Ok(flag_ids
                .iter()
                .filter_map(|id| data.flags.get(id).map(|s| (id.clone(), s.clone())))
                .collect())
        })
    }

    fn overrides<'a>(
        &'a self,
        entity_id: &'a str,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<Vec<Override>>> {
        self.calls.overrides.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate().await?;
            let data = self.data();
            Ok(data
                .overrides
                .values()
                .filter(|o| {
                    o.entity_id == entity_id
                        && (flag_ids.is_empty() || flag_ids.contains(&o.flag_id))
                })
                .cloned()
                .collect())
        })
    }

    fn killed_flags(&self) -> BoxFuture<'_, SourceResult<Vec<String>>> {
        self.calls.killed_flags.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate().await?;
            let data = self.data();
            let mut ids: Vec<String> = data
                .flags
                .iter()
                .filter(|(_, s)| s.state == State::Killed)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            Ok(ids)
        })
    }
}
