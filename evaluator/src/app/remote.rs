//! `flags … --server URL`: the flag commands through a root's admin API (`FlagAdminService`, Connect
//! with binary protobuf) instead of a database URL, so that in Kubernetes a `kubectl port-forward`
//! to the admin Service and a token replace a pod holding the database password.
//!
//! The admin API takes typed values; the CLI's text values are parsed against the flag's type,
//! which one `GetFlag` call tells first. `unkill` (which the API has no call for) revives the flag
//! with the value it holds, as the database path does, in two calls.

use std::path::Path;
use std::time::Duration;

use http_body_util::Full;
use hyper_util::client::legacy::Client;
use pbflags_proto::v1::{
    FlagDetail, GetAuditLogRequest, GetAuditLogResponse, GetFlagRequest, GetFlagResponse,
    ListFeaturesRequest, ListFeaturesResponse, RemoveFlagOverrideRequest,
    RemoveFlagOverrideResponse, SetFlagOverrideRequest, SetFlagOverrideResponse, State,
    UpdateFlagStateRequest, UpdateFlagStateResponse,
};
use prost::Message;

use crate::protocol::connect;
use crate::protocol::status::connect_name;
use crate::sources::pg::admin::{AuditRow, FlagRow, OverrideRow, StateChange, parse_value};
use crate::sources::upstream::{Connector, UpstreamCa, https_connector};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a remote command failed, and the exit code it maps to (64: a setting; 1: the call).
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The message.
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn config_error(message: String) -> Failure {
    Failure { code: 64, message }
}

/// A root's admin API.
pub struct Remote {
    client: Client<Connector, Full<bytes::Bytes>>,
    base: String,
    headers: http::HeaderMap,
}

impl Remote {
    /// The admin API at `url`, with the token in `token_file` (its first non-empty line) if given,
    /// checking an https:// server against `ca` (default: the system trust store).
    pub fn new(url: &str, token_file: Option<&Path>, ca: Option<&Path>) -> Result<Self, Failure> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(config_error(format!(
                "--server {url:?}: use http:// or https:// and the admin listener's address"
            )));
        }
        let mut headers = http::HeaderMap::new();
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config_error(format!("--token-file {}: {e}", path.display())))?;
            let token = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .ok_or_else(|| {
                    config_error(format!("--token-file {}: no token in it", path.display()))
                })?;
            let value = format!("Bearer {token}").parse().map_err(|_| {
                config_error(format!(
                    "--token-file {}: the token has characters a header cannot carry",
                    path.display()
                ))
            })?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let ca = ca.map_or(UpstreamCa::System, |p| UpstreamCa::File(p.to_owned()));
        let connector =
            https_connector(base.starts_with("https://").then_some(&ca), TIMEOUT, false)
                .map_err(config_error)?;
        Ok(Self {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            base,
            headers,
        })
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Failure> {
        let url = format!("{}/pbflags.v1.FlagAdminService/{method}", self.base);
        let options = connect::CallOptions {
            timeout: Some(TIMEOUT),
            headers: self.headers.clone(),
            max_response_bytes: 64 << 20,
        };
        match connect::call(&self.client, &url, req.encode_to_vec(), &options).await {
            Ok(reply) => {
                Resp::decode(reply.body).map_err(|e| Failure::from(format!("{method}: {e}")))
            }
            Err(e) => Err(Failure::from(format!(
                "{}: {} ({})",
                self.base,
                e.message,
                connect_name(e.code)
            ))),
        }
    }

    async fn detail(&self, flag_id: &str) -> Result<FlagDetail, Failure> {
        let r: GetFlagResponse = self
            .call(
                "GetFlag",
                &GetFlagRequest {
                    flag_id: flag_id.to_owned(),
                },
            )
            .await?;
        r.flag
            .ok_or_else(|| Failure::from(format!("GetFlag {flag_id}: empty answer")))
    }

    /// Every flag that is not archived, with its overrides counted.
    pub async fn list(&self) -> Result<Vec<FlagRow>, Failure> {
        let r: ListFeaturesResponse = self.call("ListFeatures", &ListFeaturesRequest {}).await?;
        let mut rows = Vec::new();
        for feature in r.features {
            for f in feature.flags {
                // ListFeatures leaves overrides out; GetFlag counts them.
                let (row, overrides) = self.get(&f.flag_id).await?;
                rows.push(FlagRow {
                    overrides: i64::try_from(overrides.len()).unwrap_or(i64::MAX),
                    ..row
                });
            }
        }
        Ok(rows)
    }

    /// One flag and its overrides.
    pub async fn get(&self, flag_id: &str) -> Result<(FlagRow, Vec<OverrideRow>), Failure> {
        let f = self.detail(flag_id).await?;
        Ok(row_of(f))
    }

    /// Changes the global state; returns the new state.
    pub async fn set_state(
        &self,
        flag_id: &str,
        change: StateChange,
        actor: &str,
    ) -> Result<State, Failure> {
        let (state, value) = match change {
            StateChange::Set(text) => {
                let f = self.detail(flag_id).await?;
                let t = pbflags_proto::v1::FlagType::try_from(f.flag_type).unwrap_or_default();
                (State::Enabled, Some(parse_value(flag_id, t, &text)?))
            }
            StateChange::SetTyped(v) => (State::Enabled, Some(v)),
            StateChange::Default => (State::Default, None),
            StateChange::Kill => (State::Killed, None),
            StateChange::Unkill => {
                let f = self.detail(flag_id).await?;
                match f.current_value {
                    Some(v) => (State::Enabled, Some(v)),
                    None => (State::Default, None),
                }
            }
        };
        let _: UpdateFlagStateResponse = self
            .call(
                "UpdateFlagState",
                &UpdateFlagStateRequest {
                    flag_id: flag_id.to_owned(),
                    state: state as i32,
                    value,
                    actor: actor.to_owned(),
                },
            )
            .await?;
        Ok(state)
    }

    /// Sets an override; returns whether it replaced one.
    pub async fn set_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        state: State,
        value: Option<&str>,
        actor: &str,
    ) -> Result<bool, Failure> {
        let f = self.detail(flag_id).await?;
        let existed = f.overrides.iter().any(|o| o.entity_id == entity_id);
        let t = pbflags_proto::v1::FlagType::try_from(f.flag_type).unwrap_or_default();
        let value = value.map(|v| parse_value(flag_id, t, v)).transpose()?;
        let _: SetFlagOverrideResponse = self
            .call(
                "SetFlagOverride",
                &SetFlagOverrideRequest {
                    flag_id: flag_id.to_owned(),
                    entity_id: entity_id.to_owned(),
                    state: state as i32,
                    value,
                    actor: actor.to_owned(),
                },
            )
            .await?;
        Ok(existed)
    }

    /// Removes an override; returns whether there was one.
    pub async fn remove_override(
        &self,
        flag_id: &str,
        entity_id: &str,
        actor: &str,
    ) -> Result<bool, Failure> {
        let f = self.detail(flag_id).await?;
        let existed = f.overrides.iter().any(|o| o.entity_id == entity_id);
        let _: RemoveFlagOverrideResponse = self
            .call(
                "RemoveFlagOverride",
                &RemoveFlagOverrideRequest {
                    flag_id: flag_id.to_owned(),
                    entity_id: entity_id.to_owned(),
                    actor: actor.to_owned(),
                },
            )
            .await?;
        Ok(existed)
    }

    /// The newest audit entries.
    pub async fn audit_log(
        &self,
        flag_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRow>, Failure> {
        let r: GetAuditLogResponse = self
            .call(
                "GetAuditLog",
                &GetAuditLogRequest {
                    flag_id: flag_id.map(str::to_owned),
                    limit: i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000),
                },
            )
            .await?;
        Ok(r.entries
            .into_iter()
            .map(|e| AuditRow {
                created_at: e
                    .created_at
                    .and_then(|t| std::time::SystemTime::try_from(t).ok())
                    .map(|t| humantime::format_rfc3339_millis(t).to_string())
                    .unwrap_or_default(),
                id: e.id,
                flag_id: e.flag_id,
                action: e.action,
                old_value: e.old_value,
                new_value: e.new_value,
                actor: e.actor,
            })
            .collect())
    }
}

fn row_of(f: FlagDetail) -> (FlagRow, Vec<OverrideRow>) {
    let state = |raw: i32| {
        State::try_from(raw)
            .ok()
            .filter(|s| *s != State::Unspecified)
    };
    let overrides: Vec<OverrideRow> = f
        .overrides
        .into_iter()
        .map(|o| OverrideRow {
            entity_id: o.entity_id,
            state: state(o.state),
            value: o.value,
        })
        .collect();
    let row = FlagRow {
        flag_type: pbflags_proto::v1::FlagType::try_from(f.flag_type).unwrap_or_default(),
        state: state(f.state),
        value: f.current_value,
        default_value: f.default_value,
        overrides: i64::try_from(overrides.len()).unwrap_or(i64::MAX),
        feature_id: f.flag_id.split('/').next().unwrap_or_default().to_owned(),
        flag_id: f.flag_id,
        layer: f.layer,
        archived: f.archived,
        description: f.description,
        display_name: f.display_name,
    };
    (row, overrides)
}
