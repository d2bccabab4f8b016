//! Request coalescing: concurrent misses for one key share one source call.
//!
//! Runtime-agnostic (no tokio): the first caller's future is wrapped in `Shared`; later callers for
//! the same key await the same future. The entry is removed when the call completes, or when the
//! last waiter gives up, so a cancelled call does not linger.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

type Flight<V> = Shared<BoxFuture<'static, V>>;

/// In-flight calls by key.
pub struct Coalescer<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `make()` for `key` unless a call for `key` is already in flight, in which case its result
    /// is shared and `on_join` is called at once. Returns the value and whether this caller joined.
    pub async fn run(
        &self,
        key: K,
        make: impl FnOnce() -> BoxFuture<'static, V>,
        on_join: impl FnOnce(),
    ) -> (V, bool) {
        let (flight, joined) = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(f) => {
                    on_join();
                    (f.clone(), true)
                }
                None => {
                    let f = make().shared();
                    map.insert(key.clone(), f.clone());
                    (f, false)
                }
            }
        };
        let guard = Guard {
            map: &self.inflight,
            key: Some(key),
            flight: flight.clone(),
        };
        let value = flight.await;
        drop(guard);
        (value, joined)
    }

    /// Calls in flight now.
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True when no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the map entry when its call is done, or when this was the last waiter.
struct Guard<'a, K: Hash + Eq, V: Clone> {
    map: &'a Mutex<HashMap<K, Flight<V>>>,
    key: Option<K>,
    flight: Flight<V>,
}

impl<K: Hash + Eq, V: Clone> Drop for Guard<'_, K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = map.get(&key) else { return };
        // Only touch the entry if it is still ours (a later flight may have replaced it).
        if !current.ptr_eq(&self.flight) {
            return;
        }
        // Done (peek has a value), or only the map and this guard still hold it: nobody else waits.
        let done = self.flight.peek().is_some();
        let abandoned = self.flight.strong_count().is_some_and(|n| n <= 2);
        if done || abandoned {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Poll};

    /// A future that stays pending until `gate` opens, then yields 7; counts how often it is made.
    fn gated(
        calls: &Arc<AtomicUsize>,
        gate: &Arc<AtomicBool>,
    ) -> impl FnOnce() -> BoxFuture<'static, u32> {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(futures_util::future::poll_fn(move |_| {
                if gate.load(Ordering::SeqCst) {
                    Poll::Ready(7)
                } else {
                    Poll::Pending
                }
            }))
        }
    }

    #[test]
    fn concurrent_calls_for_one_key_run_once() {
        let c: Coalescer<&str, u32> = Coalescer::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(AtomicBool::new(false));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(c.run("k", gated(&calls, &gate), || ()));
        let mut b = Box::pin(c.run("k", gated(&calls, &gate), || ()));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        gate.store(true, Ordering::SeqCst);
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready((7, false)));
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Ready((7, true)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one source call for two callers"
        );
        assert!(c.is_empty(), "completed flights are removed");
    }

    #[test]
    fn different_keys_do_not_share_a_call() {
        let c: Coalescer<&str, u32> = Coalescer::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(AtomicBool::new(true));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(c.run("a", gated(&calls, &gate), || ()));
        let mut b = Box::pin(c.run("b", gated(&calls, &gate), || ()));
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(b.as_mut().poll(&mut cx).is_ready());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_abandoned_flight_is_removed() {
        let c: Coalescer<&str, u32> = Coalescer::default();
        {
            let mut f = Box::pin(c.run("k", || Box::pin(std::future::pending()), || ()));
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert_eq!(c.len(), 1);
        }
        assert!(c.is_empty(), "the last waiter gave up; the entry must go");
    }

    use std::future::Future as _;
}
