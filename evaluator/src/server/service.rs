//! `FlagEvaluatorService`: the six RPCs over the engine (evaluations) and the state source (state
//! RPCs, uncached, as in v0.6). Every protocol — gRPC, gRPC-Web, Connect — reaches these methods.

use std::sync::Arc;
use std::time::Instant;

use pbflags_proto::v1::flag_evaluator_service_server::FlagEvaluatorService;
use pbflags_proto::v1::{
    BulkEvaluateRequest, BulkEvaluateResponse, EvaluateRequest, EvaluateResponse, FlagState,
    GetFlagStateRequest, GetFlagStateResponse, GetKilledFlagsRequest, GetKilledFlagsResponse,
    GetOverridesRequest, GetOverridesResponse, HealthRequest, HealthResponse, OverrideState,
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::status::{connect_name, from_source};
use crate::engine::{Engine, Evaluation};

/// The service state shared by every protocol.
#[derive(Clone)]
pub struct Evaluator {
    engine: Arc<Engine>,
    max_bulk_flags: usize,
}

impl Evaluator {
    /// A service over `engine`, refusing BulkEvaluate requests of more than `max_bulk_flags` ids.
    pub fn new(engine: Arc<Engine>, max_bulk_flags: usize) -> Self {
        Self {
            engine,
            max_bulk_flags,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn record<T>(&self, method: &str, started: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "ok",
            Err(s) => connect_name(s.code()),
        };
        self.engine
            .metrics()
            .rpc(method, code, started.elapsed().as_secs_f64());
    }
}

fn response(flag_id: String, ev: &Evaluation) -> EvaluateResponse {
    EvaluateResponse {
        flag_id,
        value: ev.value().cloned(),
        source: ev.source as i32,
    }
}

#[tonic::async_trait]
impl FlagEvaluatorService for Evaluator {
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/Evaluate",
            rpc.system = "grpc",
            rpc.method = "Evaluate"
        );
        async move {
            let started = Instant::now();
            let req = request.into_inner();
            let ev = self.engine.evaluate(&req.flag_id, &req.entity_id).await;
            let r = Ok(Response::new(response(req.flag_id, &ev)));
            self.record("Evaluate", started, &r);
            r
        }
        .instrument(span)
        .await
    }

    async fn bulk_evaluate(
        &self,
        request: Request<BulkEvaluateRequest>,
    ) -> Result<Response<BulkEvaluateResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/BulkEvaluate",
            rpc.system = "grpc",
            rpc.method = "BulkEvaluate"
        );
        async move {
            let started = Instant::now();
            let req = request.into_inner();
            let r = if req.flag_ids.len() > self.max_bulk_flags {
                Err(Status::invalid_argument(format!(
                    "flag_ids: {} ids requested; at most {} per BulkEvaluate",
                    req.flag_ids.len(),
                    self.max_bulk_flags
                )))
            } else {
                let out = self
                    .engine
                    .bulk_evaluate(&req.flag_ids, &req.entity_id)
                    .await;
                let evaluations = out.into_iter().map(|(id, ev)| response(id, &ev)).collect();
                Ok(Response::new(BulkEvaluateResponse { evaluations }))
            };
            self.record("BulkEvaluate", started, &r);
            r
        }
        .instrument(span)
        .await
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/Health",
            rpc.system = "grpc",
            rpc.method = "Health"
        );
        async move {
            let started = Instant::now();
            let h = self.engine.health_report();
            let r = Ok(Response::new(HealthResponse {
                status: h.status as i32,
                seconds_since_server_contact: i64::try_from(h.seconds_since_contact)
                    .unwrap_or(i64::MAX),
                cached_flag_count: i32::try_from(h.cached_flags).unwrap_or(i32::MAX),
                consecutive_failures: i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX),
            }));
            self.record("Health", started, &r);
            r
        }
        .instrument(span)
        .await
    }

    async fn get_flag_state(
        &self,
        request: Request<GetFlagStateRequest>,
    ) -> Result<Response<GetFlagStateResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/GetFlagState",
            rpc.system = "grpc",
            rpc.method = "GetFlagState"
        );
        async move {
            let started = Instant::now();
            let req = request.into_inner();
            let r = if req.flag_id.is_empty() {
                Err(Status::invalid_argument("flag_id is required"))
            } else {
                match self.engine.source().flag_state(&req.flag_id).await {
                    Ok(Some(s)) => Ok(Response::new(GetFlagStateResponse {
                        flag: Some(FlagState {
                            flag_id: req.flag_id,
                            state: s.state as i32,
                            value: s.value,
                        }),
                        archived: s.archived,
                    })),
                    Ok(None) => Err(Status::not_found(format!("flag {} not found", req.flag_id))),
                    Err(e) => Err(from_source(&e)),
                }
            };
            self.record("GetFlagState", started, &r);
            r
        }
        .instrument(span)
        .await
    }

    async fn get_killed_flags(
        &self,
        _: Request<GetKilledFlagsRequest>,
    ) -> Result<Response<GetKilledFlagsResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/GetKilledFlags",
            rpc.system = "grpc",
            rpc.method = "GetKilledFlags"
        );
        async move {
            let started = Instant::now();
            let r = match self.engine.source().killed_flags().await {
                Ok(flag_ids) => Ok(Response::new(GetKilledFlagsResponse {
                    flag_ids,
                    killed_overrides: vec![],
                })),
                Err(e) => Err(from_source(&e)),
            };
            self.record("GetKilledFlags", started, &r);
            r
        }
        .instrument(span)
        .await
    }

    async fn get_overrides(
        &self,
        request: Request<GetOverridesRequest>,
    ) -> Result<Response<GetOverridesResponse>, Status> {
        let span = tracing::info_span!(
            "pbflags.v1.FlagEvaluatorService/GetOverrides",
            rpc.system = "grpc",
            rpc.method = "GetOverrides"
        );
        async move {
            let started = Instant::now();
            let req = request.into_inner();
            let r = if req.entity_id.is_empty() {
                Err(Status::invalid_argument("entity_id is required"))
            } else {
                match self
                    .engine
                    .source()
                    .overrides(&req.entity_id, &req.flag_ids)
                    .await
                {
                    Ok(rows) => Ok(Response::new(GetOverridesResponse {
                        overrides: rows
                            .into_iter()
                            .map(|o| OverrideState {
                                flag_id: o.flag_id,
                                entity_id: o.entity_id,
                                state: o.state as i32,
                                value: o.value,
                            })
                            .collect(),
                    })),
                    Err(e) => Err(from_source(&e)),
                }
            };
            self.record("GetOverrides", started, &r);
            r
        }
        .instrument(span)
        .await
    }
}
