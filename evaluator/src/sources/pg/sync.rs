//! `sync`: writes flag definitions from descriptors into the database, in one transaction.
//!
//! Upserts features and flags (descriptions included), archives flags that left the descriptors —
//! also those of features that disappeared entirely — and never touches runtime state (`state`,
//! `value`, overrides). Breaking changes (a type change; a layered flag becoming global; a move
//! between layers) are refused, naming the flag, unless explicitly allowed. Rows are only written
//! when they differ, so a second run reports zero changes.

use std::collections::{HashMap, HashSet};

use sqlx::Row as _;
use sqlx::postgres::PgPool;

use super::values::{encode_value, layer_name, type_from_name};
use crate::core::descriptor::{FlagDef, type_name};

/// What a sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Features inserted or whose name, description or owner changed.
    pub features_written: usize,
    /// Flags inserted.
    pub flags_added: Vec<String>,
    /// Flags whose definition changed (or that were archived and came back).
    pub flags_updated: Vec<String>,
    /// Flags archived because they left the descriptors.
    pub flags_archived: Vec<String>,
}

impl SyncReport {
    /// Total rows changed.
    pub fn changes(&self) -> usize {
        self.features_written
            + self.flags_added.len()
            + self.flags_updated.len()
            + self.flags_archived.len()
    }
}

/// A change that would break clients or stored values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    /// The flag.
    pub flag_id: String,
    /// What changes, in words.
    pub reason: String,
}

/// Why a sync did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The descriptors declare no flags: syncing them would archive every flag.
    #[error("the descriptors declare no flags; refusing to archive every flag in the database")]
    NoFlags,
    /// Breaking changes were found and not allowed.
    #[error("breaking changes refused (use --allow-breaking to apply them):\n{}", .0.iter().map(|b| format!("  {}: {}", b.flag_id, b.reason)).collect::<Vec<_>>().join("\n"))]
    Breaking(Vec<Breaking>),
    /// The database failed; nothing was written.
    #[error("database error, nothing written: {0}")]
    Db(#[from] sqlx::Error),
}

struct Existing {
    feature_id: String,
    field_number: i32,
    display_name: String,
    flag_type: String,
    layer: String,
    description: String,
    default_value: Option<Vec<u8>>,
    archived: bool,
}

/// The breaking changes between a stored flag and its new definition.
fn breaking(old: &Existing, new: &FlagDef) -> Option<String> {
    let new_type = type_name(new.flag_type);
    if type_from_name(&old.flag_type) != new.flag_type {
        return Some(format!("type changes from {} to {new_type}", old.flag_type));
    }
    let (old_layer, new_layer) = (old.layer.to_uppercase(), layer_name(&new.layer));
    if old_layer != new_layer && old_layer != "GLOBAL" {
        let what = if new_layer == "GLOBAL" {
            "becomes global"
        } else {
            "moves to another layer"
        };
        return Some(format!(
            "layer {old_layer} {what} ({new_layer}); its overrides would be lost"
        ));
    }
    None
}

/// Writes `flags` into the database. `allow_breaking` applies breaking changes anyway.
pub async fn sync(
    pool: &PgPool,
    flags: &[FlagDef],
    allow_breaking: bool,
) -> Result<SyncReport, SyncError> {
    if flags.is_empty() {
        return Err(SyncError::NoFlags);
    }
    let mut tx = pool.begin().await?;
    // One sync at a time: two deploys syncing at once would otherwise race on archiving.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pbflags-sync'))")
        .execute(&mut *tx)
        .await?;

    let rows = sqlx::query(
        "SELECT flag_id, feature_id, field_number, display_name, flag_type, layer, description, default_value, \
         archived_at IS NOT NULL AS archived FROM feature_flags.flags",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut existing: HashMap<String, Existing> = HashMap::with_capacity(rows.len());
    for r in rows {
        existing.insert(
            r.try_get("flag_id")?,
            Existing {
                feature_id: r.try_get("feature_id")?,
                field_number: r.try_get("field_number")?,
                display_name: r.try_get("display_name")?,
                flag_type: r.try_get("flag_type")?,
                layer: r.try_get("layer")?,
                description: r.try_get("description")?,
                default_value: r.try_get("default_value")?,
                archived: r.try_get("archived")?,
            },
        );
    }

    let violations: Vec<Breaking> = flags
        .iter()
        .filter_map(|f| {
            let old = existing.get(&f.flag_id)?;
            breaking(old, f).map(|reason| Breaking {
                flag_id: f.flag_id.clone(),
                reason,
            })
        })
        .collect();
    if !violations.is_empty() && !allow_breaking {
        return Err(SyncError::Breaking(violations));
    }

    let mut report = SyncReport {
        features_written: sync_features(&mut tx, flags).await?,
        ..SyncReport::default()
    };

    for f in flags {
        let layer = layer_name(&f.layer);
        let default = encode_value(f.default.as_ref());
        let field_number = i32::try_from(f.field_number).unwrap_or(i32::MAX);
        let unchanged = existing.get(&f.flag_id).is_some_and(|o| {
            !o.archived
                && o.feature_id == f.feature_id
                && o.field_number == field_number
                && o.display_name == f.name
                && o.flag_type == type_name(f.flag_type)
                && o.layer == layer
                && o.description == f.description
                && o.default_value == default
        });
        if unchanged {
            continue;
        }
        sqlx::query(
            "INSERT INTO feature_flags.flags \
               (flag_id, feature_id, field_number, display_name, flag_type, layer, description, default_value) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (flag_id) DO UPDATE SET display_name = EXCLUDED.display_name, \
               flag_type = EXCLUDED.flag_type, layer = EXCLUDED.layer, description = EXCLUDED.description, \
               default_value = EXCLUDED.default_value, archived_at = NULL, updated_at = now()",
        )
        .bind(&f.flag_id)
        .bind(&f.feature_id)
        .bind(field_number)
        .bind(&f.name)
        .bind(type_name(f.flag_type))
        .bind(&layer)
        .bind(&f.description)
        .bind(&default)
        .execute(&mut *tx)
        .await?;
        if existing.contains_key(&f.flag_id) {
            report.flags_updated.push(f.flag_id.clone());
        } else {
            report.flags_added.push(f.flag_id.clone());
        }
    }

    let declared: HashSet<&str> = flags.iter().map(|f| f.flag_id.as_str()).collect();
    let mut to_archive: Vec<String> = existing
        .iter()
        .filter(|(id, o)| !o.archived && !declared.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    to_archive.sort();
    if !to_archive.is_empty() {
        sqlx::query("UPDATE feature_flags.flags SET archived_at = now(), updated_at = now() WHERE flag_id = ANY($1)")
            .bind(&to_archive)
            .execute(&mut *tx)
            .await?;
    }
    report.flags_archived = to_archive;
    tx.commit().await?;
    Ok(report)
}

async fn sync_features(
    tx: &mut sqlx::PgConnection,
    flags: &[FlagDef],
) -> Result<usize, sqlx::Error> {
    let mut written = 0;
    let mut seen = HashSet::new();
    for f in flags {
        if !seen.insert(f.feature_id.as_str()) {
            continue;
        }
        let changed = sqlx::query(
            "INSERT INTO feature_flags.features (feature_id, display_name, description, owner) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (feature_id) DO UPDATE SET display_name = EXCLUDED.display_name, \
               description = EXCLUDED.description, owner = EXCLUDED.owner, updated_at = now() \
             WHERE (features.display_name, features.description, features.owner) \
               IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.description, EXCLUDED.owner)",
        )
        .bind(&f.feature_id)
        .bind(&f.feature_display_name)
        .bind(&f.feature_description)
        .bind(&f.feature_owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        written += usize::try_from(changed).unwrap_or(0);
    }
    Ok(written)
}
