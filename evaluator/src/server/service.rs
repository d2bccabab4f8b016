//! `FlagEvaluatorService`: the six RPCs over the engine (evaluations) and the state source (state
//! RPCs, uncached, as in v0.6). Every protocol — gRPC, gRPC-Web, Connect — reaches these methods.

use std::sync::Arc;
use std::time::Duration;

use pbflags_proto::v1::flag_evaluator_service_server::FlagEvaluatorService;
use pbflags_proto::v1::{
    BulkEvaluateRequest, BulkEvaluateResponse, EvaluateRequest, EvaluateResponse, FlagState,
    GetFlagStateRequest, GetFlagStateResponse, GetKilledFlagsRequest, GetKilledFlagsResponse,
    GetOverridesRequest, GetOverridesResponse, HealthRequest, HealthResponse, OverrideState,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::rpc::{Answer, Call, UnaryService};
use crate::core::engine::{Engine, Evaluation};
use crate::protocol::connect::{Codec, decode, encode};
use crate::protocol::json;
use crate::protocol::status::{connect_name, from_source};

/// The longest ids a request may carry, in bytes. Longer ids are refused with `invalid_argument`
/// naming the field, before they reach a cache or the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdLimits {
    /// Flag ids.
    pub flag_id: usize,
    /// Entity ids.
    pub entity_id: usize,
}

impl Default for IdLimits {
    fn default() -> Self {
        Self {
            flag_id: 256,
            entity_id: 1024,
        }
    }
}

impl IdLimits {
    fn check(field: &str, id: &str, limit: usize, setting: &str) -> Result<(), Status> {
        if id.len() > limit {
            return Err(Status::invalid_argument(format!(
                "{field}: {} bytes; at most {limit} (--{setting})",
                id.len()
            )));
        }
        Ok(())
    }

    fn flag(&self, field: &str, id: &str) -> Result<(), Status> {
        Self::check(field, id, self.flag_id, "max-flag-id-bytes")
    }

    fn flags(&self, ids: &[String]) -> Result<(), Status> {
        match ids.iter().position(|id| id.len() > self.flag_id) {
            Some(i) => self.flag(&format!("flag_ids[{i}]"), &ids[i]),
            None => Ok(()),
        }
    }

    fn entity(&self, id: &str) -> Result<(), Status> {
        Self::check("entity_id", id, self.entity_id, "max-entity-id-bytes")
    }
}

/// The service state shared by every protocol.
#[derive(Clone)]
pub struct Evaluator {
    engine: Arc<Engine>,
    max_bulk_flags: usize,
    ids: IdLimits,
}

impl Evaluator {
    /// A service over `engine`, refusing BulkEvaluate requests of more than `max_bulk_flags` ids
    /// and ids longer than `ids` allows.
    pub fn new(engine: Arc<Engine>, max_bulk_flags: usize, ids: IdLimits) -> Self {
        Self {
            engine,
            max_bulk_flags,
            ids,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Runs one RPC inside its span (a child of the caller's trace when `metadata` carries
    /// `traceparent`) when spans are exported or debug logs are on. Its method, code and duration
    /// are recorded by the serving layer ([`UnaryService::observe`]), which also sees the requests
    /// refused before they get here.
    async fn rpc<T>(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        if !crate::protocol::trace_context::rpc_spans() {
            return call.await.map(Response::new);
        }
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("pbflags.v1.FlagEvaluatorService/{method}"),
            rpc.method = method
        );
        crate::protocol::trace_context::adopt_parent(&span, metadata.as_ref());
        call.instrument(span).await.map(Response::new)
    }
}

/// The service's methods, as metric labels.
const METHODS: [&str; 6] = [
    "Evaluate",
    "BulkEvaluate",
    "Health",
    "GetFlagState",
    "GetKilledFlags",
    "GetOverrides",
];

/// Decodes a `$req` from the call, runs the typed method, encodes the answer (as JSON with
/// `$json` when given: the hot responses' direct encoding).
macro_rules! typed {
    ($this:expr, $call:expr, $method:ident, $req:literal, $resp:literal) => {{
        let resp = typed!(@call $this, $call, $method, $req);
        encode($call.codec, &resp, $resp)
    }};
    ($this:expr, $call:expr, $method:ident, $req:literal, $resp:literal, $json:path) => {{
        let codec = $call.codec;
        let resp = typed!(@call $this, $call, $method, $req);
        match codec {
            Codec::Json => Ok($json(&resp)),
            Codec::Proto => encode(codec, &resp, $resp),
        }
    }};
    (@call $this:expr, $call:expr, $method:ident, $req:literal) => {{
        let req = decode($call.codec, &$call.body, $req)?;
        let request = Request::from_parts(
            tonic::metadata::MetadataMap::from_headers($call.headers),
            tonic::Extensions::default(),
            req,
        );
        $this.$method(request).await?.into_inner()
    }};
}

impl Evaluator {
    async fn dispatch(&self, call: Call) -> Result<Vec<u8>, Status> {
        match call.method {
            "Evaluate" => typed!(
                self,
                call,
                evaluate,
                "EvaluateRequest",
                "EvaluateResponse",
                json::evaluate_response
            ),
            "BulkEvaluate" => typed!(
                self,
                call,
                bulk_evaluate,
                "BulkEvaluateRequest",
                "BulkEvaluateResponse",
                json::bulk_evaluate_response
            ),
            "Health" => typed!(self, call, health, "HealthRequest", "HealthResponse"),
            "GetFlagState" => typed!(
                self,
                call,
                get_flag_state,
                "GetFlagStateRequest",
                "GetFlagStateResponse"
            ),
            "GetKilledFlags" => typed!(
                self,
                call,
                get_killed_flags,
                "GetKilledFlagsRequest",
                "GetKilledFlagsResponse"
            ),
            "GetOverrides" => typed!(
                self,
                call,
                get_overrides,
                "GetOverridesRequest",
                "GetOverridesResponse"
            ),
            other => Err(Status::unimplemented(format!("no method {other}"))),
        }
    }
}

impl UnaryService for Evaluator {
    const NAME: &'static str = "pbflags.v1.FlagEvaluatorService";

    fn method(&self, method: &str) -> Option<&'static str> {
        METHODS.iter().find(|m| **m == method).copied()
    }

    fn call(&self, call: Call) -> impl Future<Output = Answer> + Send + 'static {
        let this = self.clone();
        async move { Answer::from(this.dispatch(call).await) }
    }

    fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.engine
            .metrics()
            .rpc(method, connect_name(code), elapsed.as_secs_f64());
    }
}

fn response(flag_id: String, ev: Evaluation) -> EvaluateResponse {
    EvaluateResponse {
        flag_id,
        source: ev.source as i32,
        value: ev.into_value(),
    }
}

#[tonic::async_trait]
impl FlagEvaluatorService for Evaluator {
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.rpc("Evaluate", &metadata, async move {
            self.ids.flag("flag_id", &req.flag_id)?;
            self.ids.entity(&req.entity_id)?;
            let ev = self.engine.evaluate(&req.flag_id, &req.entity_id).await;
            Ok(response(req.flag_id, ev))
        })
        .await
    }

    async fn bulk_evaluate(
        &self,
        request: Request<BulkEvaluateRequest>,
    ) -> Result<Response<BulkEvaluateResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.rpc("BulkEvaluate", &metadata, async move {
            if req.flag_ids.len() > self.max_bulk_flags {
                return Err(Status::invalid_argument(format!(
                    "flag_ids: {} ids requested; at most {} per BulkEvaluate",
                    req.flag_ids.len(),
                    self.max_bulk_flags
                )));
            }
            self.ids.flags(&req.flag_ids)?;
            self.ids.entity(&req.entity_id)?;
            let out = self
                .engine
                .bulk_evaluate(req.flag_ids, &req.entity_id)
                .await;
            Ok(BulkEvaluateResponse {
                evaluations: out.into_iter().map(|(id, ev)| response(id, ev)).collect(),
            })
        })
        .await
    }

    async fn health(
        &self,
        request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        self.rpc("Health", request.metadata(), async {
            let h = self.engine.health_report();
            Ok(HealthResponse {
                status: h.status as i32,
                seconds_since_server_contact: i64::try_from(h.seconds_since_contact)
                    .unwrap_or(i64::MAX),
                cached_flag_count: i32::try_from(h.cached_flags).unwrap_or(i32::MAX),
                consecutive_failures: i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX),
            })
        })
        .await
    }

    async fn get_flag_state(
        &self,
        request: Request<GetFlagStateRequest>,
    ) -> Result<Response<GetFlagStateResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.rpc("GetFlagState", &metadata, async {
            if req.flag_id.is_empty() {
                return Err(Status::invalid_argument("flag_id is required"));
            }
            self.ids.flag("flag_id", &req.flag_id)?;
            match self.engine.source().flag_state(&req.flag_id).await {
                Ok(Some(s)) => Ok(GetFlagStateResponse {
                    flag: Some(FlagState {
                        flag_id: req.flag_id.clone(),
                        state: s.state as i32,
                        value: s.value,
                    }),
                    archived: s.archived,
                }),
                Ok(None) => Err(Status::not_found(format!("flag {} not found", req.flag_id))),
                Err(e) => Err(from_source(&e)),
            }
        })
        .await
    }

    async fn get_killed_flags(
        &self,
        request: Request<GetKilledFlagsRequest>,
    ) -> Result<Response<GetKilledFlagsResponse>, Status> {
        self.rpc("GetKilledFlags", request.metadata(), async {
            let flag_ids = self
                .engine
                .source()
                .killed_flags()
                .await
                .map_err(|e| from_source(&e))?;
            Ok(GetKilledFlagsResponse {
                flag_ids,
                killed_overrides: vec![],
            })
        })
        .await
    }

    async fn get_overrides(
        &self,
        request: Request<GetOverridesRequest>,
    ) -> Result<Response<GetOverridesResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.rpc("GetOverrides", &metadata, async {
            if req.entity_id.is_empty() {
                return Err(Status::invalid_argument("entity_id is required"));
            }
            self.ids.entity(&req.entity_id)?;
            self.ids.flags(&req.flag_ids)?;
            let rows = self
                .engine
                .source()
                .overrides(&req.entity_id, &req.flag_ids)
                .await
                .map_err(|e| from_source(&e))?;
            let overrides = rows
                .into_iter()
                .map(|o| OverrideState {
                    flag_id: o.flag_id,
                    entity_id: o.entity_id,
                    state: o.state as i32,
                    value: o.value,
                })
                .collect();
            Ok(GetOverridesResponse { overrides })
        })
        .await
    }
}
