//! Root mode: changes pushed from PostgreSQL. The triggers of `migrations/0002_change_notifications.sql`
//! notify the channel [`CHANNEL`] on every change to a flag or an override row, whoever makes it;
//! the root keeps one `LISTEN` connection and, per notification, makes exactly the cached entry
//! concerned stale, re-reading the kill set (one query) after changes to flags. The TTLs stay as
//! the safety net.
//!
//! Notifications sent while the connection is down are lost, so every (re)connection is followed
//! by a resync: every hot entry turns stale (last-known values stay for outages) and the kill set
//! is re-read. Reconnects back off from 250 ms to 30 s.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification, PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::core::engine::Engine;

/// The channel the triggers notify.
pub const CHANNEL: &str = "feature_flags.changes";

/// What one notification says changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Change {
    /// The flag.
    pub flag_id: String,
    /// The entity, for a change to an override.
    #[serde(default)]
    pub entity_id: Option<String>,
}

impl Change {
    /// Parses a notification's payload.
    pub fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }

    /// Makes the entry concerned stale; returns whether the change was to a flag row (which may
    /// kill or revive it, so the kill set must be re-read).
    pub fn apply(&self, engine: &Engine) -> bool {
        match &self.entity_id {
            Some(entity) => {
                engine.invalidate_override(&self.flag_id, entity);
                false
            }
            None => {
                engine.invalidate_flag(&self.flag_id);
                true
            }
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows [`CHANNEL`] on `pool` for `engine` until `stop`.
pub fn spawn(
    pool: PgPool,
    engine: Arc<Engine>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                outcome = follow(&pool, &engine) => {
                    engine.metrics().change_stream_connected.set(0);
                    match outcome {
                        Ok(()) => backoff = BACKOFF_MIN,
                        Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "change notifications from PostgreSQL interrupted; caches fall back to their TTLs meanwhile"),
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// One connection's life: LISTEN, resync, then apply notifications until the connection is lost
/// (`Ok`) or fails (`Err`).
async fn follow(pool: &PgPool, engine: &Engine) -> Result<(), sqlx::Error> {
    // A connection of its own, not one of the pool's (a pool of one would have none left for
    // queries), opened with the pool's current settings (a rotated URL included).
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Anything changed while nobody listened: resync.
    engine.invalidate_all();
    engine.refresh_kills().await;
    engine.metrics().change_stream_connected.set(1);
    tracing::info!(
        channel = CHANNEL,
        "following change notifications from PostgreSQL"
    );
    loop {
        let Some(first) = listener.try_recv().await? else {
            tracing::warn!("change notification connection lost; reconnecting");
            return Ok(());
        };
        // Everything already received is applied before the kill set is read once.
        let mut flags_changed = apply(&first, engine);
        while let Some(n) = listener.next_buffered() {
            flags_changed |= apply(&n, engine);
        }
        if flags_changed {
            engine.refresh_kills().await;
        }
    }
}

fn apply(n: &PgNotification, engine: &Engine) -> bool {
    match Change::parse(n.payload()) {
        Some(change) => change.apply(engine),
        None => {
            // Not ours to interpret: be safe and drop everything.
            tracing::warn!(
                payload = n.payload(),
                "unreadable change notification; every cached entry turns stale"
            );
            engine.invalidate_all();
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn payloads_name_a_flag_or_an_override() {
        assert_eq!(
            Change::parse(r#"{"flag_id":"notif/1"}"#),
            Some(Change {
                flag_id: "notif/1".into(),
                entity_id: None
            })
        );
        assert_eq!(
            Change::parse(r#"{"flag_id":"notif/1","entity_id":"user-7"}"#),
            Some(Change {
                flag_id: "notif/1".into(),
                entity_id: Some("user-7".into())
            })
        );
        assert_eq!(Change::parse("notif/1"), None);
        assert_eq!(Change::parse(r#"{"entity_id":"x"}"#), None);
    }
}
