//! Proxy mode: changes pushed from the upstream. A proxy subscribes to its upstream's
//! `FlagChangeService/WatchChanges`, applies each invalidation to its own caches and, through its
//! engine's hub, passes it on to its own subscribers, so chains of proxies follow.
//!
//! Correctness before speed: a (re)opened stream starts with a resync (every hot entry stale, the
//! kill set re-read), since changes made while it was down are not replayed; a sequence number out
//! of order, a stream silent for three heartbeats, or one the upstream ends (the subscriber fell
//! behind) resync the same way; the TTLs stay as the safety net. Against an upstream that has no
//! change stream (a pbflags v0.6 server answers `Unimplemented`) the proxy says so once and keeps
//! to the TTLs, asking again every [`RETRY_UNSUPPORTED`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use pbflags_proto::v1::{ChangeKind as WireKind, WatchChangesResponse};
use tokio_util::sync::CancellationToken;

use crate::core::changes::{Change, ChangeKind};
use crate::core::engine::Engine;
use crate::core::source::ErrorKind;
use crate::sources::upstream::{ChangeStream, UpstreamSource};

/// How long a stream may stay silent (three heartbeats) before it counts as lost.
pub const SILENCE: Duration = Duration::from_secs(15);
/// How often an upstream without a change stream is asked again.
pub const RETRY_UNSUPPORTED: Duration = Duration::from_secs(300);

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows `upstream`'s changes for `engine` until `stop`.
pub fn spawn(
    upstream: Arc<UpstreamSource>,
    engine: Arc<Engine>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut told_unsupported = false;
        loop {
            let wait = match upstream.watch().await {
                Ok(stream) => {
                    told_unsupported = false;
                    let outcome = tokio::select! {
                        () = stop.cancelled() => return,
                        outcome = follow(stream, &engine) => outcome,
                    };
                    engine.metrics().change_stream_connected.set(0);
                    match outcome {
                        Ok(()) => backoff = BACKOFF_MIN,
                        Err(why) => {
                            tracing::warn!(%why, retry_in = ?backoff, "upstream change stream lost; caches fall back to their TTLs meanwhile")
                        }
                    }
                    backoff
                }
                Err(e) if e.kind == ErrorKind::Unimplemented => {
                    if !told_unsupported {
                        tracing::info!(error = %e, "the upstream offers no change stream (a pbflags v0.6 server?); changes arrive through the TTLs");
                        told_unsupported = true;
                    }
                    RETRY_UNSUPPORTED
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the upstream change stream; caches fall back to their TTLs meanwhile");
                    backoff
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if wait == backoff {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    })
}

/// What one message asks of the follower.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Apply this change.
    Apply(Change),
    /// Nothing to do (a heartbeat in order).
    Nothing,
    /// Something was missed: resync.
    Gap,
}

/// Reads `m` after sequence number `last` (pure): updates `last`.
fn step(m: &WatchChangesResponse, last: &mut u64) -> Step {
    let kind = WireKind::try_from(m.kind).unwrap_or(WireKind::Unspecified);
    if kind == WireKind::Heartbeat {
        let in_order = m.sequence == *last;
        *last = m.sequence;
        return if in_order { Step::Nothing } else { Step::Gap };
    }
    let in_order = m.sequence == *last + 1;
    *last = m.sequence;
    let change = |kind| Change {
        kind,
        origin_unix_ms: m.origin_unix_ms,
    };
    let applied = match kind {
        WireKind::Flag if !m.flag_id.is_empty() => change(ChangeKind::Flag {
            flag_id: m.flag_id.as_str().into(),
        }),
        WireKind::Override if !m.flag_id.is_empty() => change(ChangeKind::Override {
            flag_id: m.flag_id.as_str().into(),
            entity_id: m.entity_id.as_str().into(),
        }),
        // A resync, or anything this version does not know: every entry turns stale.
        _ => change(ChangeKind::Resync),
    };
    if in_order {
        Step::Apply(applied)
    } else {
        Step::Gap
    }
}

/// One stream's life: the opening heartbeat and a resync, then every message until the stream
/// ends (`Ok`: the upstream closed it cleanly) or fails.
async fn follow(mut stream: ChangeStream, engine: &Engine) -> Result<(), String> {
    let mut last = match next(&mut stream).await? {
        Some(m) if m.kind == WireKind::Heartbeat as i32 => m.sequence,
        Some(m) => return Err(format!("the stream opened with {m:?}, not a heartbeat")),
        None => return Ok(()),
    };
    engine.invalidate_all();
    engine.refresh_kills().await;
    engine.metrics().change_stream_connected.set(1);
    tracing::info!("following the upstream's change stream");
    loop {
        let Some(first) = next(&mut stream).await? else {
            return Ok(());
        };
        // Everything already received is applied before the kill set is read once.
        let mut pending = vec![first];
        while let Some(Some(Ok(m))) = stream.next().now_or_never() {
            pending.push(m);
        }
        let mut kills = false;
        for m in &pending {
            match step(m, &mut last) {
                Step::Nothing => {}
                Step::Apply(change) => {
                    kills |= !matches!(change.kind, ChangeKind::Override { .. });
                    engine.apply_change(change);
                }
                Step::Gap => {
                    tracing::warn!(
                        sequence = m.sequence,
                        "change stream out of order; every cached entry turns stale"
                    );
                    engine.invalidate_all();
                    kills = true;
                }
            }
        }
        if kills {
            engine.refresh_kills().await;
        }
    }
}

/// The next message within [`SILENCE`].
async fn next(stream: &mut ChangeStream) -> Result<Option<WatchChangesResponse>, String> {
    match tokio::time::timeout(SILENCE, stream.next()).await {
        Err(_) => Err(format!("no message for {SILENCE:?}")),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(m))) => Ok(Some(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sequence: u64, kind: WireKind, flag_id: &str, entity_id: &str) -> WatchChangesResponse {
        WatchChangesResponse {
            sequence,
            kind: kind as i32,
            flag_id: flag_id.into(),
            entity_id: entity_id.into(),
            origin_unix_ms: 42,
        }
    }

    #[test]
    fn events_in_order_apply_and_anything_out_of_order_is_a_gap() {
        let mut last = 7;
        assert_eq!(
            step(&msg(7, WireKind::Heartbeat, "", ""), &mut last),
            Step::Nothing
        );
        assert_eq!(
            step(&msg(8, WireKind::Flag, "f/1", ""), &mut last),
            Step::Apply(Change {
                kind: ChangeKind::Flag {
                    flag_id: "f/1".into()
                },
                origin_unix_ms: 42
            })
        );
        assert_eq!(
            step(&msg(9, WireKind::Override, "f/1", "u"), &mut last),
            Step::Apply(Change {
                kind: ChangeKind::Override {
                    flag_id: "f/1".into(),
                    entity_id: "u".into()
                },
                origin_unix_ms: 42
            })
        );
        // Event 10 was lost.
        assert_eq!(
            step(&msg(11, WireKind::Flag, "f/2", ""), &mut last),
            Step::Gap
        );
        assert_eq!(last, 11);
        // A heartbeat naming a later number than the last event seen: the tail was lost.
        assert_eq!(
            step(&msg(12, WireKind::Heartbeat, "", ""), &mut last),
            Step::Gap
        );
        // Unknown kinds resync rather than being ignored.
        assert_eq!(
            step(&msg(13, WireKind::Unspecified, "", ""), &mut last),
            Step::Apply(Change {
                kind: ChangeKind::Resync,
                origin_unix_ms: 42
            })
        );
    }
}
