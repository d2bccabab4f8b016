//! The state source of root mode: the v0.6 queries against `feature_flags`, with a timeout on every
//! call. Undecodable values and unknown states are treated as absent and counted, never a panic.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};

use super::values::{decode_state, decode_value};
use crate::core::source::{ErrorKind, FlagState, Override, SourceError, SourceResult, StateSource};
use crate::metrics::Metrics;
use pbflags_proto::v1::State;

/// Reads flag state from PostgreSQL.
pub struct PgSource {
    pool: PgPool,
    timeout: Duration,
    metrics: Metrics,
}

impl PgSource {
    /// A source over `pool`; each call gives up after `timeout`.
    pub fn new(pool: PgPool, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            pool,
            timeout,
            metrics,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn timed<T>(&self, f: impl Future<Output = Result<T, sqlx::Error>>) -> SourceResult<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&e)),
            Err(_) => Err(SourceError::new(
                ErrorKind::Timeout,
                format!("database query exceeded {:?}", self.timeout),
            )),
        }
    }

    fn state_of(&self, raw: &str, flag_id: &str) -> State {
        decode_state(raw).unwrap_or_else(|e| {
            self.metrics.invalid_values.inc();
            tracing::warn!(flag_id, error = %e, "treating unreadable state as unspecified");
            State::Unspecified
        })
    }

    fn value_of(&self, raw: Option<&[u8]>, flag_id: &str) -> Option<pbflags_proto::v1::FlagValue> {
        decode_value(raw).unwrap_or_else(|e| {
            self.metrics.invalid_values.inc();
            tracing::warn!(flag_id, error = %e, "treating unreadable value as absent");
            None
        })
    }

    fn flag_row(&self, row: &PgRow) -> Result<(String, FlagState), sqlx::Error> {
        let flag_id: String = row.try_get("flag_id")?;
        let state: String = row.try_get("state")?;
        let value: Option<Vec<u8>> = row.try_get("value")?;
        let archived: bool = row.try_get("archived")?;
        let state = FlagState {
            state: self.state_of(&state, &flag_id),
            value: self.value_of(value.as_deref(), &flag_id),
            archived,
        };
        Ok((flag_id, state))
    }

    fn override_row(&self, row: &PgRow) -> Result<Override, sqlx::Error> {
        let flag_id: String = row.try_get("flag_id")?;
        let state: String = row.try_get("state")?;
        let value: Option<Vec<u8>> = row.try_get("value")?;
        Ok(Override {
            state: self.state_of(&state, &flag_id),
            value: self.value_of(value.as_deref(), &flag_id),
            entity_id: row.try_get("entity_id")?,
            flag_id,
        })
    }
}

/// Maps a driver error to a source error; the message never carries connection details.
fn map_error(e: &sqlx::Error) -> SourceError {
    let kind = match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => ErrorKind::Unavailable,
        sqlx::Error::Database(d) if d.code().as_deref() == Some("57014") => ErrorKind::Timeout, // query_canceled
        sqlx::Error::Database(_) => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    SourceError::new(kind, super::db::redact(&e.to_string()))
}

/// The flag state query of v0.6, followed by `$tail`.
macro_rules! flag_columns {
    ($tail:literal) => {
        concat!("SELECT flag_id, state, value, archived_at IS NOT NULL AS archived FROM feature_flags.flags ", $tail)
    };
}
const OVERRIDES: &str = "SELECT flag_id, entity_id, state, value FROM feature_flags.flag_overrides WHERE entity_id = $1";
const OVERRIDES_FOR_FLAGS: &str = "SELECT flag_id, entity_id, state, value FROM feature_flags.flag_overrides WHERE entity_id = $1 AND flag_id = ANY($2)";

/// PostgreSQL text cannot hold a NUL character, so no stored id has one: an id with one is answered
/// as absent without a query (which would fail, and count against health, while the database is
/// fine).
fn storable(id: &str) -> bool {
    !id.contains('\0')
}

/// The ids of `ids` that can be stored.
fn storable_ids(ids: &[String]) -> Vec<String> {
    ids.iter().filter(|id| storable(id)).cloned().collect()
}

impl StateSource for PgSource {
    fn flag_state(&self, flag_id: &str) -> BoxFuture<'_, SourceResult<Option<FlagState>>> {
        let flag_id = flag_id.to_owned();
        Box::pin(async move {
            if !storable(&flag_id) {
                return Ok(None);
            }
            let sql = flag_columns!("WHERE flag_id = $1");
            let row = self
                .timed(sqlx::query(sql).bind(&flag_id).fetch_optional(&self.pool))
                .await?;
            row.map(|r| self.flag_row(&r).map(|(_, s)| s))
                .transpose()
                .map_err(|e| map_error(&e))
        })
    }

    fn flag_states<'a>(
        &'a self,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<HashMap<String, FlagState>>> {
        Box::pin(async move {
            let flag_ids = storable_ids(flag_ids);
            if flag_ids.is_empty() {
                return Ok(HashMap::new());
            }
            let sql = flag_columns!("WHERE flag_id = ANY($1)");
            let rows = self
                .timed(sqlx::query(sql).bind(&flag_ids).fetch_all(&self.pool))
                .await?;
            rows.iter()
                .map(|r| self.flag_row(r))
                .collect::<Result<_, _>>()
                .map_err(|e| map_error(&e))
        })
    }

    fn overrides<'a>(
        &'a self,
        entity_id: &'a str,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<Vec<Override>>> {
        Box::pin(async move {
            // An empty `flag_ids` asks for every flag; ids that cannot be stored are dropped first.
            let wanted = storable_ids(flag_ids);
            if !storable(entity_id) || (!flag_ids.is_empty() && wanted.is_empty()) {
                return Ok(Vec::new());
            }
            let query = if flag_ids.is_empty() {
                sqlx::query(OVERRIDES).bind(entity_id)
            } else {
                sqlx::query(OVERRIDES_FOR_FLAGS)
                    .bind(entity_id)
                    .bind(wanted)
            };
            let rows = self.timed(query.fetch_all(&self.pool)).await?;
            rows.iter()
                .map(|r| self.override_row(r))
                .collect::<Result<_, _>>()
                .map_err(|e| map_error(&e))
        })
    }

    fn killed_flags(&self) -> BoxFuture<'_, SourceResult<Vec<String>>> {
        Box::pin(async move {
            let q = sqlx::query_scalar(
                "SELECT flag_id FROM feature_flags.flags WHERE state = 'KILLED'",
            );
            self.timed(q.fetch_all(&self.pool)).await
        })
    }
}
