//! The state source of proxy mode: an upstream evaluator's state RPCs over the Connect protocol
//! (binary protobuf, HTTP/1.1), as pbflags v0.6 proxies call them, so a proxy can front a v0.6
//! server or another proxy. Upstream error codes are kept; an upstream NotFound on GetFlagState is
//! "no row", not a failure.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pbflags_proto::v1::flag_change_service_client::FlagChangeServiceClient;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use pbflags_proto::v1::{
    GetFlagStateRequest, GetFlagStateResponse, GetKilledFlagsRequest, GetKilledFlagsResponse,
    GetOverridesRequest, GetOverridesResponse, State, WatchChangesRequest, WatchChangesResponse,
};
use prost::Message;

use crate::core::source::{ErrorKind, FlagState, Override, SourceError, SourceResult, StateSource};
use crate::protocol::connect;
use crate::protocol::status::{connect_name, kind_of};

/// Concurrent GetFlagState calls when a batch is fetched (the protocol has no batch call).
const BATCH_CONCURRENCY: usize = 16;
/// Largest upstream response accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// How a proxy talks to its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamProtocol {
    /// Connect, binary protobuf over HTTP/1.1 (as pbflags v0.6 proxies call).
    #[default]
    Connect,
    /// gRPC over HTTP/2 cleartext.
    Grpc,
}

enum Transport {
    Connect(Client<Connector, Full<Bytes>>),
    Grpc(
        FlagEvaluatorServiceClient<tonic::transport::Channel>,
        FlagChangeServiceClient<tonic::transport::Channel>,
    ),
}

/// The upstream's change stream: each message, or the error that ended it.
pub type ChangeStream =
    futures_util::stream::BoxStream<'static, Result<WatchChangesResponse, SourceError>>;

/// The connector of both transports: TCP, plus TLS for `https://` upstreams.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Certificate authorities an `https://` upstream's certificate is checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UpstreamCa {
    /// The system's trust store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    #[default]
    System,
    /// A PEM bundle, e.g. the CA that issued the root evaluator's certificate.
    File(std::path::PathBuf),
}

/// The trust roots for `ca`; the error names the setting and the file.
pub fn roots(ca: &UpstreamCa) -> Result<tokio_rustls::rustls::RootCertStore, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    match ca {
        UpstreamCa::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "upstream_ca {}: no usable CA certificate",
                    path.display()
                ));
            }
        }
        UpstreamCa::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "upstream_ca: the system trust store has no certificates ({:?}); set --upstream-ca",
                    found.errors
                ));
            }
        }
    }
    Ok(roots)
}

fn client_tls(
    roots: tokio_rustls::rustls::RootCertStore,
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .map_err(|e| format!("upstream TLS: {e}"))
}

/// A connector for `http://` URLs and (with `ca`) `https://` ones checked against it, for HTTP/2
/// (ALPN `h2`) or HTTP/1.1; connecting gives up after `timeout`.
pub fn https_connector(
    ca: Option<&UpstreamCa>,
    timeout: Duration,
    http2: bool,
) -> Result<Connector, String> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => tokio_rustls::rustls::RootCertStore::empty(),
    };
    Ok(connector(timeout, client_tls(roots)?, http2))
}

fn connector(timeout: Duration, tls: tokio_rustls::rustls::ClientConfig, http2: bool) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    }
}

/// A tonic request carrying the current trace context.
fn traced<T>(message: T) -> tonic::Request<T> {
    let mut headers = http::HeaderMap::new();
    crate::protocol::trace_context::inject_current(&mut headers);
    tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        message,
    )
}

/// An upstream evaluator.
pub struct UpstreamSource {
    transport: Transport,
    base: String,
    timeout: Duration,
}

impl UpstreamSource {
    /// A client for the evaluator at `base` (e.g. `http://pbflags-root:9201`, or `https://…` with
    /// `ca`) speaking `protocol`; each call gives up after `timeout`. The gRPC channel connects
    /// lazily, so a proxy starts while its upstream is down.
    pub fn new(
        base: &str,
        timeout: Duration,
        protocol: UpstreamProtocol,
        ca: &UpstreamCa,
    ) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        // Trust roots are only read for an https:// upstream.
        let roots = if base.starts_with("https://") {
            roots(ca)?
        } else {
            tokio_rustls::rustls::RootCertStore::empty()
        };
        let tls = client_tls(roots)?;
        let transport = match protocol {
            UpstreamProtocol::Connect => Transport::Connect(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector(timeout, tls, false)),
            ),
            UpstreamProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(base.clone())
                    .map_err(|e| format!("server {base:?}: {e}"))?;
                let channel = endpoint
                    .connect_timeout(timeout)
                    .connect_with_connector_lazy(connector(timeout, tls, true));
                Transport::Grpc(
                    FlagEvaluatorServiceClient::new(channel.clone()),
                    FlagChangeServiceClient::new(channel),
                )
            }
        };
        Ok(Self {
            transport,
            base,
            timeout,
        })
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
        client: &Client<Connector, Full<Bytes>>,
        method: &str,
        req: &Req,
    ) -> SourceResult<Resp> {
        let url = format!("{}/pbflags.v1.FlagEvaluatorService/{method}", self.base);
        let options = connect::CallOptions {
            timeout: Some(self.timeout),
            headers: http::HeaderMap::new(),
            max_response_bytes: MAX_RESPONSE_BYTES,
        };
        match connect::call(client, &url, req.encode_to_vec(), &options).await {
            Ok(reply) => Resp::decode(reply.body).map_err(|e| {
                SourceError::new(ErrorKind::Internal, format!("upstream {method}: {e}"))
            }),
            Err(e) => Err(SourceError::new(
                kind_of(e.code),
                format!("upstream {method}: {} {}", connect_name(e.code), e.message),
            )),
        }
    }
}

impl UpstreamSource {
    /// Opens the upstream's change stream (`FlagChangeService/WatchChanges`). An upstream without
    /// it (a pbflags v0.6 server) refuses with `Unimplemented`.
    pub async fn watch(&self) -> SourceResult<ChangeStream> {
        use futures_util::StreamExt as _;
        let m: &'static str = "WatchChanges";
        let failed = move |code: tonic::Code, message: &str| {
            SourceError::new(
                kind_of(code),
                format!("upstream {m}: {} {message}", connect_name(code)),
            )
        };
        match &self.transport {
            Transport::Connect(client) => {
                let url = format!("{}/pbflags.v1.FlagChangeService/{m}", self.base);
                let request = WatchChangesRequest {}.encode_to_vec();
                let stream = connect::open_stream(client, &url, &request, self.timeout)
                    .await
                    .map_err(|e| failed(e.code, &e.message))?;
                Ok(stream
                    .map(move |item| match item {
                        Ok(bytes) => WatchChangesResponse::decode(bytes).map_err(|e| {
                            SourceError::new(ErrorKind::Internal, format!("upstream {m}: {e}"))
                        }),
                        Err(e) => Err(failed(e.code, &e.message)),
                    })
                    .boxed())
            }
            Transport::Grpc(_, client) => {
                let opened = tokio::time::timeout(
                    self.timeout,
                    client.clone().watch_changes(traced(WatchChangesRequest {})),
                )
                .await
                .map_err(|_| {
                    SourceError::new(
                        ErrorKind::Timeout,
                        format!("upstream {m} exceeded {:?}", self.timeout),
                    )
                })?;
                let stream = opened
                    .map_err(|s| failed(s.code(), s.message()))?
                    .into_inner();
                Ok(stream
                    .map(move |item| item.map_err(|s| failed(s.code(), s.message())))
                    .boxed())
            }
        }
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
                Transport::Grpc(c, _) => {
                    grpc_result(m, c.clone().get_flag_state(traced(req)).await)
                }
            }
        })
        .await
    }

    async fn get_overrides(&self, req: GetOverridesRequest) -> SourceResult<GetOverridesResponse> {
        let m = "GetOverrides";
        self.within_timeout(m, async {
            match &self.transport {
                Transport::Connect(c) => self.connect_call(c, m, &req).await,
                Transport::Grpc(c, _) => grpc_result(m, c.clone().get_overrides(traced(req)).await),
            }
        })
        .await
    }

    async fn get_killed_flags(&self) -> SourceResult<GetKilledFlagsResponse> {
        let (m, req) = ("GetKilledFlags", GetKilledFlagsRequest {});
        self.within_timeout(m, async {
            match &self.transport {
                Transport::Connect(c) => self.connect_call(c, m, &req).await,
                Transport::Grpc(c, _) => {
                    grpc_result(m, c.clone().get_killed_flags(traced(req)).await)
                }
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
