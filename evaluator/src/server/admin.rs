//! `FlagAdminService` (pbflags v0.6.1's admin API) on a root evaluator's admin listener: Connect,
//! gRPC and gRPC-Web through the same unary serving layer as the evaluator service ([`super::rpc`]).
//!
//! The rules are the CLI's ([`crate::sources::pg::admin`]): values checked against the flag's
//! type, overrides refused on global-layer flags, per-entity kills refused, every change one
//! transaction with its audit row. Callers present a bearer token ([`super::tokens`]): viewers
//! read, editors change; the token's name is the audit actor unless an editor names another. A
//! listener without a token file (loopback only, see the configuration) treats every caller as an
//! editor named `admin-api`.

use std::sync::Arc;
use std::time::Duration;

use pbflags_proto::pbflags::SupportedValues;
use pbflags_proto::v1::{
    AuditLogEntry, FeatureDetail, FlagDetail, FlagOverrideDetail, GetAuditLogRequest,
    GetAuditLogResponse, GetFlagRequest, GetFlagResponse, ListFeaturesRequest,
    ListFeaturesResponse, RemoveFlagOverrideRequest, RemoveFlagOverrideResponse,
    SetFlagOverrideRequest, SetFlagOverrideResponse, State, UpdateFlagStateRequest,
    UpdateFlagStateResponse,
};
use sqlx::PgPool;
use tonic::Status;

use super::rpc::{Answer, Call, UnaryService};
use super::tokens::{Principal, Role, Tokens};
use crate::core::registry::Registry;
use crate::metrics::Metrics;
use crate::protocol::connect::{decode, encode};
use crate::protocol::status::connect_name;
use crate::sources::pg::admin::{self, AdminError, FlagRow, Input, OverrideRow, StateChange};

/// The actor of changes made without a token file (loopback only).
pub const ANONYMOUS: &str = "admin-api";

/// Longest ids the database stores (its column sizes), in characters.
const MAX_FLAG_ID: usize = 512;
const MAX_ENTITY_ID: usize = 255;
const MAX_ACTOR: usize = 255;

/// The service.
#[derive(Clone)]
pub struct AdminService {
    pool: PgPool,
    registry: Arc<Registry>,
    tokens: Option<Arc<Tokens>>,
    metrics: Metrics,
}

impl AdminService {
    /// Administers the flags in `pool`, describing them with `registry`'s definitions; callers
    /// need a token of `tokens` (none: everyone is an editor).
    pub fn new(
        pool: PgPool,
        registry: Arc<Registry>,
        tokens: Option<Arc<Tokens>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            pool,
            registry,
            tokens,
            metrics,
        }
    }
}

/// The service's methods; the first two only read.
const METHODS: [&str; 6] = [
    "ListFeatures",
    "GetFlag",
    "GetAuditLog",
    "UpdateFlagState",
    "SetFlagOverride",
    "RemoveFlagOverride",
];

fn writes(method: &str) -> bool {
    !matches!(method, "ListFeatures" | "GetFlag" | "GetAuditLog")
}

fn status_of(e: AdminError) -> Status {
    match e {
        AdminError::NotFound(_) => Status::not_found(e.to_string()),
        AdminError::BadValue { .. } | AdminError::WrongType { .. } | AdminError::EntityKill(_) => {
            Status::invalid_argument(e.to_string())
        }
        AdminError::GlobalLayer(_) => Status::failed_precondition(e.to_string()),
        AdminError::Db(_) => Status::unavailable(e.to_string()),
    }
}

fn required(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    let n = value.chars().count();
    if n > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {n} characters; at most {max}"
        )));
    }
    Ok(())
}

fn state_of(field: &str, raw: i32) -> Result<State, Status> {
    match State::try_from(raw) {
        Ok(State::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "{field} is required: STATE_ENABLED, STATE_DEFAULT or STATE_KILLED"
        ))),
        Ok(s) => Ok(s),
    }
}

impl AdminService {
    /// Who is calling, or why they may not call `method`.
    fn principal(&self, method: &str, headers: &http::HeaderMap) -> Result<Principal, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Principal {
                name: ANONYMOUS.to_owned(),
                role: Role::Editor,
            });
        };
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            tracing::warn!(method, "admin call refused: no bearer token");
            return Err(Status::unauthenticated(
                "an admin token is required (Authorization: Bearer <token>)",
            ));
        };
        let Some(principal) = tokens.authenticate(token) else {
            tracing::warn!(method, "admin call refused: unknown token");
            return Err(Status::unauthenticated("the admin token is not valid"));
        };
        if writes(method) && principal.role != Role::Editor {
            tracing::warn!(method, token = %principal.name, "admin call refused: a viewer token cannot change flags");
            return Err(Status::permission_denied(format!(
                "token {} is a viewer; {method} needs an editor",
                principal.name
            )));
        }
        Ok(principal)
    }

    /// The audit actor: the one an editor names, else the token's name.
    fn actor(principal: &Principal, given: &str) -> Result<String, Status> {
        if given.is_empty() {
            return Ok(principal.name.clone());
        }
        if given.chars().count() > MAX_ACTOR {
            return Err(Status::invalid_argument(format!(
                "actor: at most {MAX_ACTOR} characters"
            )));
        }
        Ok(given.to_owned())
    }

    fn detail(&self, row: FlagRow, overrides: Vec<OverrideRow>) -> FlagDetail {
        let snapshot = self.registry.load();
        let def = snapshot.get(&row.flag_id);
        FlagDetail {
            flag_type: def.map_or(row.flag_type, |d| d.flag_type) as i32,
            default_value: def.map_or(row.default_value.clone(), |d| d.default.clone()),
            supported_values: def.and_then(|d| d.supported_values.as_ref()).map(|s| {
                SupportedValues {
                    string_values: s.string_values.clone(),
                    int64_values: s.int64_values.clone(),
                    double_values: s.double_values.clone(),
                }
            }),
            state: row.state.unwrap_or(State::Unspecified) as i32,
            current_value: row.value,
            overrides: overrides
                .into_iter()
                .map(|o| FlagOverrideDetail {
                    entity_id: o.entity_id,
                    state: o.state.unwrap_or(State::Unspecified) as i32,
                    value: o.value,
                })
                .collect(),
            archived: row.archived,
            flag_id: row.flag_id,
            display_name: row.display_name,
            description: row.description,
            layer: row.layer,
        }
    }

    async fn list_features(&self, _: ListFeaturesRequest) -> Result<ListFeaturesResponse, Status> {
        let features = admin::list_features(&self.pool).await.map_err(status_of)?;
        Ok(ListFeaturesResponse {
            features: features
                .into_iter()
                .map(|(f, flags)| FeatureDetail {
                    feature_id: f.feature_id,
                    description: f.description,
                    owner: f.owner,
                    flags: flags.into_iter().map(|r| self.detail(r, vec![])).collect(),
                })
                .collect(),
        })
    }

    async fn get_flag(&self, req: GetFlagRequest) -> Result<GetFlagResponse, Status> {
        required("flag_id", &req.flag_id, MAX_FLAG_ID)?;
        let (row, overrides) = admin::get(&self.pool, &req.flag_id)
            .await
            .map_err(status_of)?;
        Ok(GetFlagResponse {
            flag: Some(self.detail(row, overrides)),
        })
    }

    async fn update_flag_state(
        &self,
        p: &Principal,
        req: UpdateFlagStateRequest,
    ) -> Result<UpdateFlagStateResponse, Status> {
        required("flag_id", &req.flag_id, MAX_FLAG_ID)?;
        let change = match state_of("state", req.state)? {
            State::Enabled => StateChange::SetTyped(req.value.ok_or_else(|| {
                Status::invalid_argument("value is required to enable a flag (STATE_ENABLED)")
            })?),
            State::Default => StateChange::Default,
            // The stored value is kept, so the flag can be revived with it.
            _ => StateChange::Kill,
        };
        let actor = Self::actor(p, &req.actor)?;
        admin::set_state(&self.pool, &req.flag_id, change, &actor)
            .await
            .map_err(status_of)?;
        Ok(UpdateFlagStateResponse {})
    }

    async fn set_flag_override(
        &self,
        p: &Principal,
        req: SetFlagOverrideRequest,
    ) -> Result<SetFlagOverrideResponse, Status> {
        required("flag_id", &req.flag_id, MAX_FLAG_ID)?;
        required("entity_id", &req.entity_id, MAX_ENTITY_ID)?;
        let state = state_of("state", req.state)?;
        if state == State::Enabled && req.value.is_none() {
            return Err(Status::invalid_argument(
                "value is required for an enabled override (STATE_ENABLED)",
            ));
        }
        let value = match state {
            State::Enabled => req.value.map(Input::Typed),
            _ => None,
        };
        let actor = Self::actor(p, &req.actor)?;
        admin::set_override_input(
            &self.pool,
            &req.flag_id,
            &req.entity_id,
            state,
            value,
            &actor,
        )
        .await
        .map_err(status_of)?;
        Ok(SetFlagOverrideResponse {})
    }

    async fn remove_flag_override(
        &self,
        p: &Principal,
        req: RemoveFlagOverrideRequest,
    ) -> Result<RemoveFlagOverrideResponse, Status> {
        required("flag_id", &req.flag_id, MAX_FLAG_ID)?;
        required("entity_id", &req.entity_id, MAX_ENTITY_ID)?;
        let actor = Self::actor(p, &req.actor)?;
        admin::remove_override(&self.pool, &req.flag_id, &req.entity_id, &actor)
            .await
            .map_err(status_of)?;
        Ok(RemoveFlagOverrideResponse {})
    }

    async fn get_audit_log(&self, req: GetAuditLogRequest) -> Result<GetAuditLogResponse, Status> {
        let flag = req.flag_id.as_deref().filter(|f| !f.is_empty());
        if let Some(f) = flag {
            required("flag_id", f, MAX_FLAG_ID)?;
        }
        let limit = if req.limit <= 0 { 50 } else { req.limit };
        let rows = admin::audit_log(&self.pool, flag, i64::from(limit))
            .await
            .map_err(status_of)?;
        Ok(GetAuditLogResponse {
            entries: rows
                .into_iter()
                .map(|r| AuditLogEntry {
                    created_at: humantime::parse_rfc3339(&r.created_at)
                        .ok()
                        .map(prost_types::Timestamp::from),
                    id: r.id,
                    flag_id: r.flag_id,
                    action: r.action,
                    old_value: r.old_value,
                    new_value: r.new_value,
                    actor: r.actor,
                })
                .collect(),
        })
    }

    async fn dispatch(&self, call: Call) -> Result<Vec<u8>, Status> {
        let p = self.principal(call.method, &call.headers)?;
        let (codec, body) = (call.codec, &call.body[..]);
        match call.method {
            "ListFeatures" => {
                let req = decode(codec, body, "ListFeaturesRequest")?;
                encode(
                    codec,
                    &self.list_features(req).await?,
                    "ListFeaturesResponse",
                )
            }
            "GetFlag" => {
                let req = decode(codec, body, "GetFlagRequest")?;
                encode(codec, &self.get_flag(req).await?, "GetFlagResponse")
            }
            "GetAuditLog" => {
                let req = decode(codec, body, "GetAuditLogRequest")?;
                encode(
                    codec,
                    &self.get_audit_log(req).await?,
                    "GetAuditLogResponse",
                )
            }
            "UpdateFlagState" => {
                let req = decode(codec, body, "UpdateFlagStateRequest")?;
                let resp = self.update_flag_state(&p, req).await?;
                encode(codec, &resp, "UpdateFlagStateResponse")
            }
            "SetFlagOverride" => {
                let req = decode(codec, body, "SetFlagOverrideRequest")?;
                let resp = self.set_flag_override(&p, req).await?;
                encode(codec, &resp, "SetFlagOverrideResponse")
            }
            "RemoveFlagOverride" => {
                let req = decode(codec, body, "RemoveFlagOverrideRequest")?;
                let resp = self.remove_flag_override(&p, req).await?;
                encode(codec, &resp, "RemoveFlagOverrideResponse")
            }
            other => Err(Status::unimplemented(format!("no method {other}"))),
        }
    }
}

impl UnaryService for AdminService {
    const NAME: &'static str = "pbflags.v1.FlagAdminService";

    fn method(&self, method: &str) -> Option<&'static str> {
        METHODS.iter().find(|m| **m == method).copied()
    }

    fn call(&self, call: Call) -> impl Future<Output = Answer> + Send + 'static {
        let this = self.clone();
        async move { Answer::from(this.dispatch(call).await) }
    }

    fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        // The admin methods' names differ from the evaluator's: one family serves both.
        self.metrics
            .rpc(method, connect_name(code), elapsed.as_secs_f64());
    }
}

/// The admin listener's routes: the service, the web UI ([`super::ui`]) and `/healthz` (a
/// database ping: 200 `ok`, or 503 naming the failure, as v0.6's admin port). `secure`: served
/// over TLS (the UI's cookies are `Secure`).
pub fn router(
    service: AdminService,
    limits: super::rpc::RpcLimits,
    banner: Option<super::ui::Banner>,
    secure: bool,
) -> axum::Router {
    let pool = service.pool.clone();
    let ui = super::ui::router(
        pool.clone(),
        service.registry.clone(),
        service.tokens.clone(),
        banner,
        secure,
    );
    let rpc = super::rpc::router(service, limits);
    let web = ui.route(
        "/healthz",
        axum::routing::get(move || {
            let pool = pool.clone();
            async move {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    sqlx::query("SELECT 1").execute(&pool),
                )
                .await
                {
                    Ok(Ok(_)) => (http::StatusCode::OK, "ok\n".to_owned()),
                    Ok(Err(e)) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("unhealthy: {e}\n"),
                    ),
                    Err(_) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "unhealthy: no answer within 2s\n".to_owned(),
                    ),
                }
            }
        }),
    );
    let prefix = format!("/{}/", AdminService::NAME);
    axum::Router::new().fallback_service(tower::service_fn(
        move |req: http::Request<axum::body::Body>| {
            use tower::ServiceExt as _;
            let target = if req.uri().path().starts_with(&prefix) {
                rpc.clone()
            } else {
                web.clone()
            };
            async move {
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(
                    target.oneshot(req).await,
                ))
            }
        },
    ))
}
