//! Change announcements: what the engine invalidated, for the subscribers of the change stream
//! (`pbflags.v1.FlagChangeService/WatchChanges`): a root's come from PostgreSQL, a proxy's from its
//! upstream's stream, so chains of proxies follow.
//!
//! One bounded ring ([`CAPACITY`] events) is shared by every subscriber, so memory does not grow
//! with subscribers or with a slow one: a subscriber that falls more than the ring behind is told
//! so ([`Next::Behind`]) and dropped. Events carry consecutive sequence numbers; a subscription
//! starts after the number it is given.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events kept for subscribers that have not read them yet.
pub const CAPACITY: usize = 1024;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A flag's global state.
    Flag {
        /// The flag.
        flag_id: Arc<str>,
    },
    /// An entity's override of a flag.
    Override {
        /// The flag.
        flag_id: Arc<str>,
        /// The entity.
        entity_id: Arc<str>,
    },
    /// Anything may have changed.
    Resync,
}

/// A change and when its origin first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changed.
    pub kind: ChangeKind,
    /// Unix milliseconds at the origin (the root that read it from PostgreSQL).
    pub origin_unix_ms: i64,
}

impl Change {
    /// A change seen first here, now.
    pub fn now(kind: ChangeKind) -> Self {
        Self {
            kind,
            origin_unix_ms: unix_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A published change with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Consecutive from 1.
    pub sequence: u64,
    /// The change.
    pub change: Change,
}

/// Where changes are announced.
pub struct Hub {
    sender: broadcast::Sender<Arc<Event>>,
    /// The last sequence number given out; held while sending, so numbers go out in order.
    last: Mutex<u64>,
    watchers: Arc<AtomicUsize>,
    max_watchers: usize,
    /// Follows `watchers` (`pbflags_watchers`).
    gauge: Option<prometheus::IntGauge>,
    closing: CancellationToken,
}

impl Hub {
    /// A hub accepting at most `max_watchers` subscribers at a time, counting them in `gauge`.
    pub fn new(max_watchers: usize, gauge: Option<prometheus::IntGauge>) -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
            last: Mutex::new(0),
            watchers: Arc::default(),
            max_watchers,
            gauge,
            closing: CancellationToken::new(),
        }
    }

    /// Announces `change` to every subscriber (nothing is kept when there are none).
    pub fn publish(&self, change: Change) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        // An error means no subscriber: nobody to tell.
        let _ = self.sender.send(Arc::new(Event {
            sequence: *last,
            change,
        }));
    }

    /// A new subscription, or `None` at the cap on subscribers.
    pub fn subscribe(&self) -> Option<Subscription> {
        let admitted = self
            .watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_watchers).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(Subscription {
            receiver: self.sender.subscribe(),
            start: *last,
            closing: self.closing.clone(),
            _slot: Slot(self.watchers.clone(), self.gauge.clone()),
        })
    }

    /// Current subscribers.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// Ends every subscription (the server is shutting down).
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// Frees a subscriber's place when dropped.
struct Slot(Arc<AtomicUsize>, Option<prometheus::IntGauge>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.1 {
            g.dec();
        }
    }
}

/// What a subscription receives next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell more than [`CAPACITY`] events behind: events were lost to it.
    Behind,
    /// The hub is closing.
    Closed,
}

/// One subscriber's view of the hub.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    /// The sequence number the subscription starts after.
    pub start: u64,
    closing: CancellationToken,
    _slot: Slot,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn next(&mut self) -> Next {
        tokio::select! {
            () = self.closing.cancelled() => Next::Closed,
            r = self.receiver.recv() => match r {
                Ok(e) => Next::Event(e),
                Err(broadcast::error::RecvError::Lagged(_)) => Next::Behind,
                Err(broadcast::error::RecvError::Closed) => Next::Closed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(id: &str) -> Change {
        Change::now(ChangeKind::Flag { flag_id: id.into() })
    }

    #[tokio::test]
    async fn subscribers_get_consecutive_events_after_their_start() {
        let hub = Hub::new(4, None);
        hub.publish(flag("a"));
        let mut s = hub.subscribe().unwrap();
        assert_eq!(s.start, 1);
        hub.publish(flag("b"));
        hub.publish(Change::now(ChangeKind::Resync));
        let Next::Event(e) = s.next().await else {
            panic!()
        };
        assert_eq!(
            (e.sequence, &e.change.kind),
            (
                2,
                &ChangeKind::Flag {
                    flag_id: "b".into()
                }
            )
        );
        let Next::Event(e) = s.next().await else {
            panic!()
        };
        assert_eq!((e.sequence, &e.change.kind), (3, &ChangeKind::Resync));
        hub.close();
        assert_eq!(s.next().await, Next::Closed);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_memory_stays_bounded() {
        let hub = Hub::new(4, None);
        let mut slow = hub.subscribe().unwrap();
        for i in 0..(CAPACITY + 10) {
            hub.publish(flag(&format!("f/{i}")));
        }
        assert_eq!(slow.next().await, Next::Behind);
    }

    #[test]
    fn subscribers_are_capped_and_a_dropped_one_frees_its_place() {
        let hub = Hub::new(2, None);
        let a = hub.subscribe().unwrap();
        let _b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_none());
        assert_eq!(hub.watchers(), 2);
        drop(a);
        assert_eq!(hub.watchers(), 1);
        assert!(hub.subscribe().is_some());
    }
}
