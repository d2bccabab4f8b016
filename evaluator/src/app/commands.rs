//! The database subcommands (`migrate`, `sync`, `flags`): run them and render their results as text
//! or JSON. Errors carry the exit code they map to: 64 for bad configuration, 65 for a descriptor
//! set that is refused (unreadable as descriptors, no flags, breaking changes), 1 otherwise.

use serde_json::json;

use crate::app::cli::{FlagsAction, FlagsArgs, MigrateArgs, OverrideAction, SyncArgs};
use crate::app::descriptors::display_value;
use crate::sources::pg::admin::{self, StateChange};
use crate::sources::pg::db::{self, DatabaseArgs, DbError};
use crate::sources::pg::{sync, values};
use pbflags_proto::v1::{FlagValue, State};

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// 64 for bad configuration, 65 for a refused descriptor set, 1 for everything else.
    pub code: u8,
    /// The message.
    pub message: String,
}

/// Exit code of a refused descriptor set (`EX_DATAERR`): retrying cannot help.
pub const REFUSED: u8 = 65;

impl Failure {
    /// A refused descriptor set.
    pub fn refused(message: impl std::fmt::Display) -> Self {
        Self {
            code: REFUSED,
            message: message.to_string(),
        }
    }
}

/// The outcome of checking a descriptor set, as `--report` writes it.
pub fn report(outcome: Result<&crate::core::registry::Snapshot, &Failure>) -> String {
    // A termination message holds 4 KiB; keep the reason well inside it.
    const MAX_REASON: usize = 3000;
    let line = match outcome {
        Ok(s) => json!({ "accepted": true, "sha256": s.hash().to_string(), "flags": s.len() }),
        Err(f) => {
            let mut reason = f.message.clone();
            if reason.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push_str(" …");
            }
            json!({ "accepted": false, "refused": f.code == REFUSED, "reason": reason })
        }
    };
    format!("{line}\n")
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn pool(args: &DatabaseArgs) -> Result<sqlx::PgPool, Failure> {
    args.pool().map_err(|e| Failure {
        code: if matches!(
            e,
            DbError::Missing | DbError::InvalidUrl(_) | DbError::File { .. } | DbError::Ca { .. }
        ) {
            64
        } else {
            1
        },
        message: e.to_string(),
    })
}

/// `migrate`.
pub async fn migrate(args: &MigrateArgs) -> Result<String, Failure> {
    let pool = pool(&args.db)?;
    let applied = db::migrate(&pool).await?;
    Ok(format!(
        "migrations applied: {applied} (database {})\n",
        args.db.url()?.redacted()
    ))
}

/// `sync`.
pub async fn sync(args: &SyncArgs) -> Result<String, Failure> {
    let snapshot = load(&args.descriptors)?;
    for w in snapshot.warnings() {
        eprintln!("warning: {w}");
    }
    let flags: Vec<_> = snapshot.flags().iter().map(|f| (**f).clone()).collect();
    let pool = pool(&args.db)?;
    let report = sync::sync(&pool, &flags, args.allow_breaking)
        .await
        .map_err(|e| match e {
            sync::SyncError::Db(_) => Failure::from(e),
            refused => Failure::refused(refused),
        })?;
    if args.json {
        return Ok(format!(
            "{}\n",
            json!({
                "changes": report.changes(),
                "features_written": report.features_written,
                "flags_added": report.flags_added,
                "flags_updated": report.flags_updated,
                "flags_archived": report.flags_archived,
            })
        ));
    }
    Ok(format!(
        "sync complete: {} changes ({} features written, {} flags added, {} updated, {} archived)\n",
        report.changes(),
        report.features_written,
        report.flags_added.len(),
        report.flags_updated.len(),
        report.flags_archived.len()
    ))
}

/// Reads a descriptor set; one that is not a descriptor set is refused (65), an unreadable file is
/// a usage error (64).
pub fn load(path: &std::path::Path) -> Result<crate::core::registry::Snapshot, Failure> {
    crate::reload::descriptors::load_file(path).map_err(|e| match e {
        crate::reload::descriptors::ReloadError::Read { .. } => Failure {
            code: 64,
            message: e.to_string(),
        },
        other => Failure::refused(other),
    })
}

fn value_json(v: Option<&FlagValue>) -> serde_json::Value {
    use pbflags_proto::v1::flag_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => serde_json::Value::Null,
        Some(V::BoolValue(b)) => json!(b),
        Some(V::StringValue(s)) => json!(s),
        Some(V::Int64Value(i)) => json!(i.to_string()),
        Some(V::DoubleValue(d)) => json!(d),
    }
}

fn state_str(s: Option<State>) -> &'static str {
    s.map_or("UNKNOWN", values::state_name)
}

fn actor(args: &FlagsArgs) -> String {
    args.actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn remote_failure(f: crate::app::remote::Failure) -> Failure {
    Failure {
        code: f.code,
        message: f.message,
    }
}

/// Where `flags` reads and changes flags: the database, or a root's admin API (`--server`).
enum Store {
    Db(sqlx::PgPool),
    Remote(Box<crate::app::remote::Remote>),
}

impl Store {
    fn of(args: &FlagsArgs) -> Result<Self, Failure> {
        let database = args.db.database.is_some() || args.db.database_file.is_some();
        match &args.server {
            Some(_) if database => Err(Failure {
                code: 64,
                message: "--server and a database (--database, PBFLAGS_DATABASE, --database-file) \
                          are both set; use one"
                    .to_owned(),
            }),
            None if args.token_file.is_some() || args.server_ca.is_some() => Err(Failure {
                code: 64,
                message: "--token-file and --server-ca go with --server".to_owned(),
            }),
            Some(url) => Ok(Store::Remote(Box::new(
                crate::app::remote::Remote::new(
                    url,
                    args.token_file.as_deref(),
                    args.server_ca.as_deref(),
                )
                .map_err(remote_failure)?,
            ))),
            None => Ok(Store::Db(pool(&args.db)?)),
        }
    }

    async fn list(&self) -> Result<Vec<admin::FlagRow>, Failure> {
        match self {
            Store::Db(p) => Ok(admin::list(p).await?),
            Store::Remote(r) => r.list().await.map_err(remote_failure),
        }
    }

    async fn get(
        &self,
        flag_id: &str,
    ) -> Result<(admin::FlagRow, Vec<admin::OverrideRow>), Failure> {
        match self {
            Store::Db(p) => Ok(admin::get(p, flag_id).await?),
            Store::Remote(r) => r.get(flag_id).await.map_err(remote_failure),
        }
    }

    async fn set_state(
        &self,
        flag_id: &str,
        change: StateChange,
        who: &str,
    ) -> Result<State, Failure> {
        match self {
            Store::Db(p) => Ok(admin::set_state(p, flag_id, change, who).await?),
            Store::Remote(r) => r
                .set_state(flag_id, change, who)
                .await
                .map_err(remote_failure),
        }
    }

    async fn set_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        state: State,
        value: Option<&str>,
        who: &str,
    ) -> Result<bool, Failure> {
        match self {
            Store::Db(p) => {
                Ok(admin::set_override(p, flag_id, entity_id, state, value, who).await?)
            }
            Store::Remote(r) => r
                .set_override(flag_id, entity_id, state, value, who)
                .await
                .map_err(remote_failure),
        }
    }

    async fn remove_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        who: &str,
    ) -> Result<bool, Failure> {
        match self {
            Store::Db(p) => Ok(admin::remove_override(p, flag_id, entity_id, who).await?),
            Store::Remote(r) => r
                .remove_override(flag_id, entity_id, who)
                .await
                .map_err(remote_failure),
        }
    }

    async fn audit_log(
        &self,
        flag_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<admin::AuditRow>, Failure> {
        match self {
            Store::Db(p) => Ok(admin::audit_log(p, flag_id, limit).await?),
            Store::Remote(r) => r.audit_log(flag_id, limit).await.map_err(remote_failure),
        }
    }
}

/// `flags ...`.
pub async fn flags(args: &FlagsArgs) -> Result<String, Failure> {
    let store = Store::of(args)?;
    // Through the admin API the token's name is the actor unless one is given explicitly.
    let who = match (&store, &args.actor) {
        (Store::Remote(_), None) => String::new(),
        _ => actor(args),
    };
    let changed = |flag_id: &str, what: String| {
        if args.json {
            format!("{}\n", json!({ "flag_id": flag_id, "result": what }))
        } else {
            format!("{flag_id}: {what}\n")
        }
    };
    Ok(match &args.action {
        FlagsAction::List => {
            let rows = store.list().await?;
            if args.json {
                rows.iter()
                    .map(|r| {
                        json!({
                            "flag_id": r.flag_id, "type": crate::core::descriptor::type_name(r.flag_type), "layer": r.layer,
                            "state": state_str(r.state), "value": value_json(r.value.as_ref()),
                            "default": value_json(r.default_value.as_ref()), "archived": r.archived, "overrides": r.overrides,
                        })
                        .to_string()
                            + "\n"
                    })
                    .collect()
            } else {
                let mut out = format!(
                    "{:<32} {:<7} {:<8} {:<8} {:<16} {:<16} OVERRIDES\n",
                    "FLAG", "TYPE", "LAYER", "STATE", "VALUE", "DEFAULT"
                );
                for r in rows {
                    let state = if r.archived {
                        "ARCHIVED"
                    } else {
                        state_str(r.state)
                    };
                    out.push_str(&format!(
                        "{:<32} {:<7} {:<8} {:<8} {:<16} {:<16} {}\n",
                        r.flag_id,
                        crate::core::descriptor::type_name(r.flag_type),
                        r.layer,
                        state,
                        display_value(r.value.as_ref()),
                        display_value(r.default_value.as_ref()),
                        r.overrides
                    ));
                }
                out
            }
        }
        FlagsAction::Get { flag_id } => {
            let (r, overrides) = store.get(flag_id).await?;
            if args.json {
                let o: Vec<_> = overrides
                    .iter()
                    .map(|o| json!({ "entity_id": o.entity_id, "state": state_str(o.state), "value": value_json(o.value.as_ref()) }))
                    .collect();
                format!(
                    "{}\n",
                    json!({
                        "flag_id": r.flag_id, "type": crate::core::descriptor::type_name(r.flag_type), "layer": r.layer,
                        "state": state_str(r.state), "value": value_json(r.value.as_ref()),
                        "default": value_json(r.default_value.as_ref()), "archived": r.archived,
                        "description": r.description, "overrides": o,
                    })
                )
            } else {
                let mut out = format!(
                    "flag:        {}\ntype:        {}\nlayer:       {}\nstate:       {}{}\nvalue:       {}\ndefault:     {}\ndescription: {}\n",
                    r.flag_id,
                    crate::core::descriptor::type_name(r.flag_type),
                    r.layer,
                    state_str(r.state),
                    if r.archived { " (archived)" } else { "" },
                    display_value(r.value.as_ref()),
                    display_value(r.default_value.as_ref()),
                    r.description
                );
                out.push_str(&format!("overrides:   {}\n", overrides.len()));
                for o in overrides {
                    out.push_str(&format!(
                        "  {:<24} {:<8} {}\n",
                        o.entity_id,
                        state_str(o.state),
                        display_value(o.value.as_ref())
                    ));
                }
                out
            }
        }
        FlagsAction::Set { flag_id, value } => {
            let s = store
                .set_state(flag_id, StateChange::Set(value.clone()), &who)
                .await?;
            changed(flag_id, format!("{} {value}", values::state_name(s)))
        }
        FlagsAction::Default { flag_id } => {
            let s = store.set_state(flag_id, StateChange::Default, &who).await?;
            changed(flag_id, values::state_name(s).to_owned())
        }
        FlagsAction::Kill { flag_id } => {
            let s = store.set_state(flag_id, StateChange::Kill, &who).await?;
            changed(flag_id, values::state_name(s).to_owned())
        }
        FlagsAction::Unkill { flag_id } => {
            let s = store.set_state(flag_id, StateChange::Unkill, &who).await?;
            changed(flag_id, values::state_name(s).to_owned())
        }
        FlagsAction::Override(OverrideAction::Set {
            flag_id,
            entity_id,
            value,
            default,
        }) => {
            let state = if *default {
                State::Default
            } else {
                State::Enabled
            };
            let replaced = store
                .set_override(flag_id, entity_id, state, value.as_deref(), &who)
                .await?;
            let what = if replaced {
                "override updated"
            } else {
                "override created"
            };
            changed(flag_id, format!("{what} for {entity_id}"))
        }
        FlagsAction::Override(OverrideAction::Rm { flag_id, entity_id }) => {
            let existed = store.remove_override(flag_id, entity_id, &who).await?;
            let what = if existed {
                "override removed"
            } else {
                "no override to remove"
            };
            changed(flag_id, format!("{what} for {entity_id}"))
        }
        FlagsAction::Audit { flag_id, limit } => {
            let rows = store.audit_log(flag_id.as_deref(), *limit).await?;
            rows.iter()
                .map(|a| {
                    if args.json {
                        json!({
                            "id": a.id, "flag_id": a.flag_id, "action": a.action, "actor": a.actor, "created_at": a.created_at,
                            "old_value": value_json(a.old_value.as_ref()), "new_value": value_json(a.new_value.as_ref()),
                        })
                        .to_string()
                            + "\n"
                    } else {
                        format!(
                            "{} {:<16} {:<28} {:<12} {} -> {}\n",
                            a.created_at,
                            a.action,
                            a.flag_id,
                            a.actor,
                            display_value(a.old_value.as_ref()),
                            display_value(a.new_value.as_ref())
                        )
                    }
                })
                .collect()
        }
    })
}
