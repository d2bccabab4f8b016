//! The state source of proxy mode: an upstream evaluator's state RPCs over the Connect protocol
//! (binary protobuf, HTTP/1.1), as pbflags v0.6 proxies call them, so a proxy can front a v0.6
//! server or another proxy. Upstream error codes are kept; an upstream NotFound on GetFlagState is
//! "no row", not a failure.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use pbflags_proto::v1::{
    GetFlagStateRequest, GetFlagStateResponse, GetKilledFlagsRequest, GetKilledFlagsResponse,
    GetOverridesRequest, GetOverridesResponse, State,
};
use prost::Message;

use crate::engine::source::{
    ErrorKind, FlagState, Override, SourceError, SourceResult, StateSource,
};
use crate::server::status::{from_connect_name, kind_of};

/// Concurrent GetFlagState calls when a batch is fetched (the protocol has no batch call).
const BATCH_CONCURRENCY: usize = 16;
/// Largest upstream response accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// How a proxy talks to its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// Connect, binary protobuf over HTTP/1.1 (as pbflags v0.6 proxies call).
    #[default]
    Connect,
    /// gRPC over HTTP/2 cleartext.
    Grpc,
}

enum Transport {
    Connect(Client<HttpConnector, Full<Bytes>>),
    Grpc(FlagEvaluatorServiceClient<tonic::transport::Channel>),
}

/// An upstream evaluator.
pub struct UpstreamSource {
    transport: Transport,
    base: String,
    timeout: Duration,
}

impl UpstreamSource {
    /// A client for the evaluator at `base` (e.g. `http://pbflags-root:9201`); each call gives up
    /// after `timeout`.
    /// A client speaking `protocol`. The gRPC channel connects lazily, so a proxy starts while its
    /// upstream is down.
    pub fn new(base: &str, timeout: Duration, protocol: UpstreamProtocol) -> Self {
        let base = base.trim_end_matches('/').to_owned();
        let connect = || {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(timeout));
            Transport::Connect(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector),
            )
        };
        let transport = match protocol {
            UpstreamProtocol::Connect => connect(),
            UpstreamProtocol::Grpc => match tonic::transport::Endpoint::from_shared(base.clone()) {
                Ok(e) => Transport::Grpc(FlagEvaluatorServiceClient::new(
                    e.connect_timeout(timeout).tcp_nodelay(true).connect_lazy(),
                )),
                // The URL was validated with the configuration; fall back rather than fail.
                Err(_) => connect(),
            },
        };
        Self {
            transport,
            base,
            timeout,
        }
    }

    /// Runs one upstream call under `fetch_timeout`.
    async fn within_timeout<T>(
        &self,
        method: &str,
        call: impl Future<Output = SourceResult<T>>,
    ) -> SourceResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(SourceError::new(
                ErrorKind::Timeout,
                format!("upstream {method} exceeded {:?}", self.timeout),
            )),
        }
    }

    /// One Connect unary call (binary protobuf, HTTP/1.1).
    async fn connect_call<Req: Message, Resp: Message + Default>(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        method: &str,
        req: &Req,
    ) -> SourceResult<Resp> {
        let uri = format!("{}/pbflags.v1.FlagEvaluatorService/{method}", self.base);
        let request = http::Request::post(&uri)
            .header(http::header::CONTENT_TYPE, "application/proto")
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", self.timeout.as_millis().to_string())
            .body(Full::new(Bytes::from(req.encode_to_vec())))
            .map_err(|e| SourceError::new(ErrorKind::Internal, format!("build request: {e}")))?;
        let resp = client
            .request(request)
            .await
            .map_err(|e| SourceError::unavailable(format!("upstream {method}: {e}")))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| SourceError::unavailable(format!("upstream {method} body: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Resp::decode(body).map_err(|e| {
                SourceError::new(ErrorKind::Internal, format!("upstream {method}: {e}"))
            });
        }
        // A Connect error: {"code": "...", "message": "..."}; anything else is judged by HTTP status.
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let code = parsed
            .as_ref()
            .and_then(|v| v["code"].as_str())
            .map(from_connect_name);
        let message = parsed
            .as_ref()
            .and_then(|v| v["message"].as_str())
            .unwrap_or("")
            .to_owned();
        let kind = match code {
            Some(c) => kind_of(c),
            None if status == http::StatusCode::NOT_FOUND => ErrorKind::Unimplemented,
            None => ErrorKind::Unavailable,
        };
        Err(SourceError::new(
            kind,
            format!("upstream {method}: {status} {message}"),
        ))
    }
}

fn grpc_result<T>(method: &str, r: Result<tonic::Response<T>, tonic::Status>) -> SourceResult<T> {
    r.map(tonic::Response::into_inner).map_err(|s| {
        SourceError::new(
            kind_of(s.code()),
            format!("upstream {method}: {} {}", s.code(), s.message()),
        )
    })
}

impl UpstreamSource {
    async fn get_flag_state(&self, req: GetFlagStateRequest) -> SourceResult<GetFlagStateResponse> {
        let m = "GetFlagState";
        self.within_timeout(m, async {
            match &self.transport {
                Transport::Connect(c) => self.connect_call(c, m, &req).await,
                Transport::Grpc(c) => grpc_result(m, c.clone().get_flag_state(req).await),
            }
        })
        .await
    }

    async fn get_overrides(&self, req: GetOverridesRequest) -> SourceResult<GetOverridesResponse> {
        let m = "GetOverrides";
        self.within_timeout(m, async {
            match &self.transport {
                Transport::Connect(c) => self.connect_call(c, m, &req).await,
                Transport::Grpc(c) => grpc_result(m, c.clone().get_overrides(req).await),
            }
        })
        .await
    }

    async fn get_killed_flags(&self) -> SourceResult<GetKilledFlagsResponse> {
        let (m, req) = ("GetKilledFlags", GetKilledFlagsRequest {});
        self.within_timeout(m, async {
            match &self.transport {
                Transport::Connect(c) => self.connect_call(c, m, &req).await,
                Transport::Grpc(c) => grpc_result(m, c.clone().get_killed_flags(req).await),
            }
        })
        .await
    }
}

fn state_of(raw: i32) -> State {
    State::try_from(raw).unwrap_or(State::Unspecified)
}

impl StateSource for UpstreamSource {
    fn flag_state(&self, flag_id: &str) -> BoxFuture<'_, SourceResult<Option<FlagState>>> {
        let req = GetFlagStateRequest {
            flag_id: flag_id.to_owned(),
        };
        Box::pin(async move {
            match self.get_flag_state(req).await {
                Ok(resp) => Ok(resp.flag.map(|f| FlagState {
                    state: state_of(f.state),
                    value: f.value.filter(|v| v.value.is_some()),
                    archived: resp.archived,
                })),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn flag_states<'a>(
        &'a self,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<HashMap<String, FlagState>>> {
        Box::pin(async move {
            let results: Vec<(String, SourceResult<Option<FlagState>>)> =
                futures_util::stream::iter(flag_ids.iter().cloned())
                    .map(|id| async move {
                        let r = self.flag_state(&id).await;
                        (id, r)
                    })
                    .buffer_unordered(BATCH_CONCURRENCY)
                    .collect()
                    .await;
            let mut out = HashMap::with_capacity(results.len());
            for (id, r) in results {
                if let Some(s) = r? {
                    out.insert(id, s);
                }
            }
            Ok(out)
        })
    }

    fn overrides<'a>(
        &'a self,
        entity_id: &'a str,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<Vec<Override>>> {
        let req = GetOverridesRequest {
            entity_id: entity_id.to_owned(),
            flag_ids: flag_ids.to_vec(),
        };
        Box::pin(async move {
            let resp = self.get_overrides(req).await?;
            Ok(resp
                .overrides
                .into_iter()
                .map(|o| Override {
                    flag_id: o.flag_id,
                    entity_id: o.entity_id,
                    state: state_of(o.state),
                    value: o.value.filter(|v| v.value.is_some()),
                })
                .collect())
        })
    }

    fn killed_flags(&self) -> BoxFuture<'_, SourceResult<Vec<String>>> {
        Box::pin(async move {
            let resp = self.get_killed_flags().await?;
            Ok(resp.flag_ids)
        })
    }
}
