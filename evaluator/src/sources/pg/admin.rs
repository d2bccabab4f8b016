//! Flag administration without SQL: read flags and the audit log, change state and overrides.
//!
//! Every change is one transaction that also writes an audit row, with the action names of
//! pbflags v0.6 (`UPDATE_STATE`, `CREATE_OVERRIDE`, `UPDATE_OVERRIDE`, `REMOVE_OVERRIDE`). Values are
//! parsed against the flag's type. Overrides on global-layer flags and per-entity kills are refused,
//! as in v0.6.

use pbflags_proto::v1::{FlagType, FlagValue, State};
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};

use super::values::{decode_state, decode_value, encode_value, state_name, type_from_name};
use crate::core::descriptor::type_name;

/// Why an administrative action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such flag.
    #[error("flag {0} not found (run `pbflags-evaluator sync` to create flags from descriptors)")]
    NotFound(String),
    /// The value does not parse as the flag's type.
    #[error("{flag_id} is {flag_type}; '{value}' is not {expected}")]
    BadValue {
        /// The flag.
        flag_id: String,
        /// Its type.
        flag_type: &'static str,
        /// The rejected input.
        value: String,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A typed value of another type than the flag's.
    #[error("{flag_id} is {flag_type}; the value given is of another type")]
    WrongType {
        /// The flag.
        flag_id: String,
        /// Its type.
        flag_type: &'static str,
    },
    /// Overrides need a non-global layer.
    #[error("{0} is a global-layer flag; it does not support per-entity overrides")]
    GlobalLayer(String),
    /// Per-entity kills do not exist.
    #[error("per-entity kill is not supported; kill {0} globally instead")]
    EntityKill(String),
    /// The database failed; nothing was written.
    #[error("database error, nothing written: {0}")]
    Db(#[from] sqlx::Error),
}

/// One flag as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagRow {
    /// Id.
    pub flag_id: String,
    /// Type.
    pub flag_type: FlagType,
    /// Stored layer (`GLOBAL`, `USER`, ...).
    pub layer: String,
    /// Runtime state.
    pub state: Option<State>,
    /// Runtime value.
    pub value: Option<FlagValue>,
    /// Compiled default, as synced.
    pub default_value: Option<FlagValue>,
    /// Archived.
    pub archived: bool,
    /// Description.
    pub description: String,
    /// Number of overrides.
    pub overrides: i64,
    /// Its feature.
    pub feature_id: String,
    /// Display name (the proto field name, as synced).
    pub display_name: String,
}

/// One feature as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRow {
    /// Id.
    pub feature_id: String,
    /// Description.
    pub description: String,
    /// Owner.
    pub owner: String,
}

/// One override as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideRow {
    /// Entity.
    pub entity_id: String,
    /// State.
    pub state: Option<State>,
    /// Value.
    pub value: Option<FlagValue>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Sequence number.
    pub id: i64,
    /// Flag.
    pub flag_id: String,
    /// Action.
    pub action: String,
    /// Value before.
    pub old_value: Option<FlagValue>,
    /// Value after.
    pub new_value: Option<FlagValue>,
    /// Who.
    pub actor: String,
    /// When (RFC 3339).
    pub created_at: String,
}

/// Parses `input` as a value of `flag_type`.
pub fn parse_value(
    flag_id: &str,
    flag_type: FlagType,
    input: &str,
) -> Result<FlagValue, AdminError> {
    let bad = |expected| AdminError::BadValue {
        flag_id: flag_id.to_owned(),
        flag_type: type_name(flag_type),
        value: input.to_owned(),
        expected,
    };
    match flag_type {
        FlagType::Bool => match input.to_ascii_lowercase().as_str() {
            "true" => Ok(FlagValue::bool(true)),
            "false" => Ok(FlagValue::bool(false)),
            _ => Err(bad("true or false")),
        },
        FlagType::String => Ok(FlagValue::string(input)),
        FlagType::Int64 => input
            .trim()
            .parse()
            .map(FlagValue::int64)
            .map_err(|_| bad("an integer")),
        FlagType::Double => input
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite())
            .map(FlagValue::double)
            .ok_or_else(|| bad("a finite number")),
        FlagType::Unspecified => Err(bad("a value of a known type")),
    }
}

fn flag_row(r: &PgRow) -> Result<FlagRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(FlagRow {
        flag_id: r.try_get("flag_id")?,
        flag_type: type_from_name(&r.try_get::<String, _>("flag_type")?),
        layer: r.try_get("layer")?,
        state: decode_state(&state).ok(),
        value: decode_value(r.try_get::<Option<Vec<u8>>, _>("value")?.as_deref())
            .ok()
            .flatten(),
        default_value: decode_value(r.try_get::<Option<Vec<u8>>, _>("default_value")?.as_deref())
            .ok()
            .flatten(),
        archived: r.try_get("archived")?,
        description: r.try_get("description")?,
        overrides: r.try_get("overrides")?,
        feature_id: r.try_get("feature_id")?,
        display_name: r.try_get("display_name")?,
    })
}

/// The flag columns of `list` and `get`, followed by `$tail`.
macro_rules! flag_select {
    ($tail:literal) => {
        concat!(
            "SELECT f.flag_id, f.flag_type, f.layer, f.state, f.value, f.default_value, ",
            "f.archived_at IS NOT NULL AS archived, f.description, f.feature_id, f.display_name, ",
            "(SELECT count(*) FROM feature_flags.flag_overrides o WHERE o.flag_id = f.flag_id) AS overrides ",
            "FROM feature_flags.flags f ",
            $tail
        )
    };
}

/// Every flag, ordered by feature and field number.
pub async fn list(pool: &PgPool) -> Result<Vec<FlagRow>, AdminError> {
    let rows = sqlx::query(flag_select!("ORDER BY f.feature_id, f.field_number"))
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(flag_row).collect::<Result<_, _>>()?)
}

/// Every feature, ordered by id.
pub async fn features(pool: &PgPool) -> Result<Vec<FeatureRow>, AdminError> {
    Ok(sqlx::query(
        "SELECT feature_id, description, owner FROM feature_flags.features ORDER BY feature_id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(FeatureRow {
            feature_id: r.try_get("feature_id")?,
            description: r.try_get("description")?,
            owner: r.try_get("owner")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// Every feature with its flags that are not archived (features without any left out), ordered
/// by feature and field number, as v0.6's `ListFeatures`.
pub async fn list_features(pool: &PgPool) -> Result<Vec<(FeatureRow, Vec<FlagRow>)>, AdminError> {
    let features = features(pool).await?;
    let flags = sqlx::query(flag_select!(
        "WHERE f.archived_at IS NULL ORDER BY f.feature_id, f.field_number"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(flag_row)
    .collect::<Result<Vec<_>, _>>()?;
    let mut by_feature: std::collections::BTreeMap<String, Vec<FlagRow>> = Default::default();
    for f in flags {
        by_feature.entry(f.feature_id.clone()).or_default().push(f);
    }
    Ok(features
        .into_iter()
        .filter_map(|feature| {
            let flags = by_feature.remove(&feature.feature_id)?;
            Some((feature, flags))
        })
        .collect())
}

/// One flag and its overrides.
pub async fn get(pool: &PgPool, flag_id: &str) -> Result<(FlagRow, Vec<OverrideRow>), AdminError> {
    let row = sqlx::query(flag_select!("WHERE f.flag_id = $1"))
        .bind(flag_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| AdminError::NotFound(flag_id.to_owned()))?;
    let overrides = sqlx::query(
        "SELECT entity_id, state, value FROM feature_flags.flag_overrides WHERE flag_id = $1 ORDER BY entity_id",
    )
    .bind(flag_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(OverrideRow {
            entity_id: r.try_get("entity_id")?,
            state: decode_state(&r.try_get::<String, _>("state")?).ok(),
            value: decode_value(r.try_get::<Option<Vec<u8>>, _>("value")?.as_deref()).ok().flatten(),
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok((flag_row(&row)?, overrides))
}

/// A value as given: text parsed against the flag's type (the CLI), or a typed value checked
/// against it (the admin API).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Text, e.g. `weekly`, `true`, `3`.
    Text(String),
    /// A typed value.
    Typed(FlagValue),
}

impl Input {
    /// The value, if it is one of `flag_type`.
    fn resolve(&self, flag_id: &str, flag_type: FlagType) -> Result<FlagValue, AdminError> {
        match self {
            Input::Text(text) => parse_value(flag_id, flag_type, text),
            Input::Typed(v) => {
                use pbflags_proto::v1::flag_value::Value;
                let fits = matches!(
                    (flag_type, &v.value),
                    (FlagType::Bool, Some(Value::BoolValue(_)))
                        | (FlagType::String, Some(Value::StringValue(_)))
                        | (FlagType::Int64, Some(Value::Int64Value(_)))
                        | (FlagType::Double, Some(Value::DoubleValue(_)))
                );
                if fits {
                    Ok(v.clone())
                } else {
                    Err(AdminError::WrongType {
                        flag_id: flag_id.to_owned(),
                        flag_type: type_name(flag_type),
                    })
                }
            }
        }
    }
}

/// The new global state of a flag.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// ENABLED with this value (text, parsed against the flag's type).
    Set(String),
    /// ENABLED with this typed value, checked against the flag's type.
    SetTyped(FlagValue),
    /// DEFAULT, value cleared: the compiled default applies.
    Default,
    /// KILLED; the stored value is kept so `unkill` can restore it.
    Kill,
    /// Back from KILLED: ENABLED if a value is stored, else DEFAULT.
    Unkill,
}

async fn lock_flag(
    tx: &mut sqlx::PgConnection,
    flag_id: &str,
) -> Result<(FlagType, String, String, Option<Vec<u8>>), AdminError> {
    let r = sqlx::query("SELECT flag_type, layer, state, value FROM feature_flags.flags WHERE flag_id = $1 FOR UPDATE")
        .bind(flag_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AdminError::NotFound(flag_id.to_owned()))?;
    Ok((
        type_from_name(&r.try_get::<String, _>("flag_type")?),
        r.try_get("layer")?,
        r.try_get("state")?,
        r.try_get("value")?,
    ))
}

async fn audit(
    tx: &mut sqlx::PgConnection,
    flag_id: &str,
    action: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        // clock_timestamp(), not the column's default now(): now() is when the transaction began,
        // so of two changes to one flag the one that waited for the row lock would be logged as
        // the earlier although it came second. This row is written under the flag's lock.
        "INSERT INTO feature_flags.flag_audit_log (flag_id, action, old_value, new_value, actor, created_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
    )
    .bind(flag_id)
    .bind(action)
    .bind(old)
    .bind(new)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Changes a flag's global state. Returns the new state.
pub async fn set_state(
    pool: &PgPool,
    flag_id: &str,
    change: StateChange,
    actor: &str,
) -> Result<State, AdminError> {
    let mut tx = pool.begin().await?;
    let (flag_type, _, _, old_value) = lock_flag(&mut tx, flag_id).await?;
    let (state, value) = match &change {
        StateChange::Set(input) => (
            State::Enabled,
            encode_value(Some(&parse_value(flag_id, flag_type, input)?)),
        ),
        StateChange::SetTyped(v) => (
            State::Enabled,
            encode_value(Some(&Input::Typed(v.clone()).resolve(flag_id, flag_type)?)),
        ),
        StateChange::Default => (State::Default, None),
        StateChange::Kill => (State::Killed, old_value.clone()),
        StateChange::Unkill => (
            if old_value.is_some() {
                State::Enabled
            } else {
                State::Default
            },
            old_value.clone(),
        ),
    };
    sqlx::query("UPDATE feature_flags.flags SET state = $2, value = $3, updated_at = now() WHERE flag_id = $1")
        .bind(flag_id)
        .bind(state_name(state))
        .bind(&value)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        flag_id,
        "UPDATE_STATE",
        old_value.as_deref(),
        value.as_deref(),
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(state)
}

/// Sets an override for (flag, entity): ENABLED with a value, or DEFAULT (the compiled default for
/// this entity). Returns true when it replaced an existing override.
pub async fn set_override(
    pool: &PgPool,
    flag_id: &str,
    entity_id: &str,
    state: State,
    value: Option<&str>,
    actor: &str,
) -> Result<bool, AdminError> {
    let value = value.map(|v| Input::Text(v.to_owned()));
    set_override_input(pool, flag_id, entity_id, state, value, actor).await
}

/// [`set_override`] with the value as an [`Input`].
pub async fn set_override_input(
    pool: &PgPool,
    flag_id: &str,
    entity_id: &str,
    state: State,
    value: Option<Input>,
    actor: &str,
) -> Result<bool, AdminError> {
    if state == State::Killed {
        return Err(AdminError::EntityKill(flag_id.to_owned()));
    }
    let mut tx = pool.begin().await?;
    let (flag_type, layer, _, _) = lock_flag(&mut tx, flag_id).await?;
    if crate::core::descriptor::is_global_layer(&layer) {
        return Err(AdminError::GlobalLayer(flag_id.to_owned()));
    }
    let value = match value {
        Some(v) => encode_value(Some(&v.resolve(flag_id, flag_type)?)),
        None => None,
    };
    let old: Option<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT value FROM feature_flags.flag_overrides WHERE flag_id = $1 AND entity_id = $2",
    )
    .bind(flag_id)
    .bind(entity_id)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO feature_flags.flag_overrides (flag_id, entity_id, state, value) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (flag_id, entity_id) DO UPDATE SET state = EXCLUDED.state, value = EXCLUDED.value, updated_at = now()",
    )
    .bind(flag_id)
    .bind(entity_id)
    .bind(state_name(state))
    .bind(&value)
    .execute(&mut *tx)
    .await?;
    let action = if old.is_some() {
        "UPDATE_OVERRIDE"
    } else {
        "CREATE_OVERRIDE"
    };
    let replaced = old.is_some();
    audit(
        &mut tx,
        flag_id,
        action,
        old.flatten().as_deref(),
        value.as_deref(),
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(replaced)
}

/// Removes an override (a no-op if there is none, still audited, as in v0.6). Returns whether one existed.
pub async fn remove_override(
    pool: &PgPool,
    flag_id: &str,
    entity_id: &str,
    actor: &str,
) -> Result<bool, AdminError> {
    let mut tx = pool.begin().await?;
    lock_flag(&mut tx, flag_id).await?;
    let old: Option<Option<Vec<u8>>> = sqlx::query_scalar(
        "DELETE FROM feature_flags.flag_overrides WHERE flag_id = $1 AND entity_id = $2 RETURNING value",
    )
    .bind(flag_id)
    .bind(entity_id)
    .fetch_optional(&mut *tx)
    .await?;
    audit(
        &mut tx,
        flag_id,
        "REMOVE_OVERRIDE",
        old.clone().flatten().as_deref(),
        None,
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(old.is_some())
}

/// The newest audit entries, optionally for one flag; `limit` is clamped to 1..=1000.
pub async fn audit_log(
    pool: &PgPool,
    flag_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditRow>, AdminError> {
    let query = AuditQuery {
        flag_id: flag_id.map(str::to_owned),
        limit,
        ..AuditQuery::default()
    };
    audit_search(pool, &query).await
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Of this flag only.
    pub flag_id: Option<String>,
    /// With this action only (`UPDATE_STATE`, ...).
    pub action: Option<String>,
    /// By actors whose name contains this, ignoring case.
    pub actor: Option<String>,
    /// Most entries, newest first; clamped to 1..=1000.
    pub limit: i64,
}

/// `text` as a literal inside an `ILIKE` pattern (its `%`, `_` and `\` match only themselves).
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The newest audit entries that match `q`.
pub async fn audit_search(pool: &PgPool, q: &AuditQuery) -> Result<Vec<AuditRow>, AdminError> {
    let rows = sqlx::query(
        "SELECT id, flag_id, action, old_value, new_value, actor, \
           to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at \
         FROM feature_flags.flag_audit_log WHERE ($1::text IS NULL OR flag_id = $1) \
           AND ($2::text IS NULL OR action = $2) \
           AND ($3::text IS NULL OR actor ILIKE '%' || $3 || '%') \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(q.flag_id.as_deref())
    .bind(q.action.as_deref())
    .bind(q.actor.as_deref().map(like_literal))
    .bind(q.limit.clamp(1, 1000))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                id: r.try_get("id")?,
                flag_id: r.try_get("flag_id")?,
                action: r.try_get("action")?,
                old_value: decode_value(r.try_get::<Option<Vec<u8>>, _>("old_value")?.as_deref())
                    .ok()
                    .flatten(),
                new_value: decode_value(r.try_get::<Option<Vec<u8>>, _>("new_value")?.as_deref())
                    .ok()
                    .flatten(),
                actor: r.try_get("actor")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(AdminError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_against_the_flag_type_with_a_clear_error() {
        assert_eq!(
            parse_value("n/1", FlagType::Bool, "TRUE").unwrap(),
            FlagValue::bool(true)
        );
        assert_eq!(
            parse_value("n/3", FlagType::Int64, " 42 ").unwrap(),
            FlagValue::int64(42)
        );
        assert_eq!(
            parse_value("n/4", FlagType::Double, "0.5").unwrap(),
            FlagValue::double(0.5)
        );
        assert_eq!(
            parse_value("n/2", FlagType::String, "weekly").unwrap(),
            FlagValue::string("weekly")
        );
        let e = parse_value("notifications/3", FlagType::Int64, "abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "notifications/3 is INT64; 'abc' is not an integer"
        );
        assert!(parse_value("n/1", FlagType::Bool, "yes").is_err());
        assert!(parse_value("n/4", FlagType::Double, "NaN").is_err());
    }
}
