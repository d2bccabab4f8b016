//! The programs under test for the Connect conformance suite.
//!
//! `pbflags-conformance server --protos <dir>` (`connectconformance --mode server`):
//! `connectrpc.conformance.v1.ConformanceService`'s unary methods served by the evaluator's own
//! serving stack — [`pbflags_evaluator::server::rpc`] for Connect, gRPC and gRPC-Web, the
//! connection handling and TLS of [`pbflags_evaluator::server`]. Reads one length-prefixed
//! `ServerCompatRequest` from stdin, starts the server on a free loopback port, writes a
//! length-prefixed `ServerCompatResponse` to stdout and serves until SIGTERM. `<dir>` holds the
//! suite's `connectrpc/conformance/v1/*.proto` (the Go module's `proto` directory); JSON bodies are
//! mapped through descriptors compiled from them.
//!
//! `pbflags-conformance client` (`connectconformance --mode client`): the proxy's upstream client —
//! [`pbflags_evaluator::protocol::connect::call`] over the connector of
//! [`pbflags_evaluator::sources::upstream`] — makes each call described by the length-prefixed
//! `ClientCompatRequest`s on stdin and writes a `ClientCompatResponse` for each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::HeaderMap;
use pbflags_evaluator::server::rpc::{self, Answer, Call, Codec, UnaryService};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use prost_types::Any;
use tonic::{Code, Status};

mod client;

const PACKAGE: &str = "connectrpc.conformance.v1";

/// The fields this server needs (every protocol and HTTP version is served on one port, so
/// `protocol` and `http_version` are not read).
#[derive(Clone, PartialEq, Message)]
struct ServerCompatRequest {
    #[prost(bool, tag = "4")]
    use_tls: bool,
    #[prost(bytes = "vec", tag = "5")]
    client_tls_cert: Vec<u8>,
    #[prost(uint32, tag = "6")]
    message_receive_limit: u32,
    #[prost(message, optional, tag = "7")]
    server_creds: Option<TlsCreds>,
}

#[derive(Clone, PartialEq, Message)]
struct TlsCreds {
    #[prost(bytes = "vec", tag = "1")]
    cert: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ServerCompatResponse {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(uint32, tag = "2")]
    port: u32,
    #[prost(bytes = "vec", tag = "3")]
    pem_cert: Vec<u8>,
}

/// `UnaryRequest` and `IdempotentUnaryRequest` (the same fields).
#[derive(Clone, PartialEq, Message)]
struct UnaryRequest {
    #[prost(message, optional, tag = "1")]
    response_definition: Option<UnaryResponseDefinition>,
    #[prost(bytes = "vec", tag = "2")]
    request_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct UnaryResponseDefinition {
    #[prost(message, repeated, tag = "1")]
    response_headers: Vec<Header>,
    #[prost(bytes = "vec", optional, tag = "2")]
    response_data: Option<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    error: Option<ProtoError>,
    #[prost(message, repeated, tag = "4")]
    response_trailers: Vec<Header>,
    #[prost(uint32, tag = "6")]
    response_delay_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoError {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, optional, tag = "2")]
    message: Option<String>,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    value: Vec<String>,
}

/// `UnaryResponse` and `IdempotentUnaryResponse`.
#[derive(Clone, PartialEq, Message)]
struct UnaryResponse {
    #[prost(message, optional, tag = "1")]
    payload: Option<ConformancePayload>,
}

#[derive(Clone, PartialEq, Message)]
struct ConformancePayload {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    request_info: Option<RequestInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct RequestInfo {
    #[prost(message, repeated, tag = "1")]
    request_headers: Vec<Header>,
    #[prost(int64, optional, tag = "2")]
    timeout_ms: Option<i64>,
    #[prost(message, repeated, tag = "3")]
    requests: Vec<Any>,
}

fn any(type_name: &str, msg: &impl Message) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{PACKAGE}.{type_name}"),
        value: msg.encode_to_vec(),
    }
}

fn headers_of(headers: &HeaderMap) -> Vec<Header> {
    let mut out: Vec<Header> = Vec::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.iter_mut().find(|h| h.name == name.as_str()) {
            Some(h) => h.value.push(value),
            None => out.push(Header {
                name: name.as_str().to_owned(),
                value: vec![value],
            }),
        }
    }
    out
}

fn add_headers(target: &mut HeaderMap, headers: &[Header]) -> Result<(), Status> {
    for h in headers {
        let name = http::HeaderName::try_from(h.name.as_str())
            .map_err(|e| Status::invalid_argument(format!("header {:?}: {e}", h.name)))?;
        for v in &h.value {
            let value = http::HeaderValue::try_from(v.as_str())
                .map_err(|e| Status::invalid_argument(format!("header {:?}: {e}", h.name)))?;
            target.append(name.clone(), value);
        }
    }
    Ok(())
}

/// `ConformanceService`: Unary and IdempotentUnary; Unimplemented is declared but not implemented.
#[derive(Clone)]
struct Conformance {
    pool: Arc<DescriptorPool>,
}

impl Conformance {
    fn decode<T: Message + Default>(&self, call: &Call, type_name: &str) -> Result<T, Status> {
        match call.codec {
            Codec::Proto => T::decode(call.body.as_ref())
                .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}"))),
            Codec::Json => {
                let desc = self.descriptor(type_name)?;
                let mut de = serde_json::Deserializer::from_slice(&call.body);
                let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
                let msg = DynamicMessage::deserialize_with_options(desc, &mut de, &options)
                    .and_then(|m| de.end().map(|()| m))
                    .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}")))?;
                T::decode(msg.encode_to_vec().as_slice())
                    .map_err(|e| Status::invalid_argument(format!("malformed {type_name}: {e}")))
            }
        }
    }

    fn encode(&self, codec: Codec, msg: &impl Message, type_name: &str) -> Result<Vec<u8>, Status> {
        match codec {
            Codec::Proto => Ok(msg.encode_to_vec()),
            Codec::Json => {
                let dynamic = DynamicMessage::decode(
                    self.descriptor(type_name)?,
                    msg.encode_to_vec().as_slice(),
                )
                .map_err(|e| Status::internal(format!("encode {type_name}: {e}")))?;
                serde_json::to_vec(&dynamic)
                    .map_err(|e| Status::internal(format!("encode {type_name}: {e}")))
            }
        }
    }

    fn descriptor(&self, type_name: &str) -> Result<prost_reflect::MessageDescriptor, Status> {
        self.pool
            .get_message_by_name(&format!("{PACKAGE}.{type_name}"))
            .ok_or_else(|| Status::internal(format!("no descriptor for {type_name}")))
    }

    async fn unary(&self, call: Call, names: (&str, &str)) -> Answer {
        let mut answer = Answer::from(Ok(Vec::new()));
        let req: UnaryRequest = match self.decode(&call, names.0) {
            Ok(r) => r,
            Err(status) => return Answer::from(Err(status)),
        };
        let info = RequestInfo {
            request_headers: headers_of(&call.headers),
            timeout_ms: call
                .timeout
                .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
            requests: vec![any(names.0, &req)],
        };
        let def = req.response_definition.unwrap_or_default();
        let set = add_headers(&mut answer.headers, &def.response_headers)
            .and_then(|()| add_headers(&mut answer.trailers, &def.response_trailers));
        if let Err(status) = set {
            return Answer::from(Err(status));
        }
        if def.response_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(def.response_delay_ms))).await;
        }
        answer.result = match def.error {
            Some(e) => {
                let mut details = e.details;
                details.push(any("ConformancePayload.RequestInfo", &info));
                Err(pbflags_evaluator::protocol::status::with_details(
                    Code::from(e.code),
                    e.message.unwrap_or_default(),
                    details,
                ))
            }
            None => {
                let resp = UnaryResponse {
                    payload: Some(ConformancePayload {
                        data: def.response_data.unwrap_or_default(),
                        request_info: Some(info),
                    }),
                };
                self.encode(call.codec, &resp, names.1)
            }
        };
        answer
    }
}

impl UnaryService for Conformance {
    const NAME: &'static str = "connectrpc.conformance.v1.ConformanceService";

    fn method(&self, method: &str) -> Option<&'static str> {
        ["Unary", "IdempotentUnary"]
            .into_iter()
            .find(|m| *m == method)
    }

    fn call(&self, call: Call) -> impl Future<Output = Answer> + Send + 'static {
        let this = self.clone();
        async move {
            match call.method {
                "Unary" => this.unary(call, ("UnaryRequest", "UnaryResponse")).await,
                _ => {
                    this.unary(call, ("IdempotentUnaryRequest", "IdempotentUnaryResponse"))
                        .await
                }
            }
        }
    }
}

fn read_message<T: Message + Default>(input: &mut impl std::io::Read) -> anyhow::Result<T> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).context("read length prefix")?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut buf).context("read message")?;
    Ok(T::decode(buf.as_slice())?)
}

fn write_message(out: &mut impl std::io::Write, msg: &impl Message) -> anyhow::Result<()> {
    let bytes = msg.encode_to_vec();
    out.write_all(&u32::try_from(bytes.len())?.to_be_bytes())?;
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

fn pool(protos: &str) -> anyhow::Result<DescriptorPool> {
    let set = protox::compile(["connectrpc/conformance/v1/service.proto"], [protos])
        .with_context(|| format!("compile the conformance protos in {protos}"))?;
    Ok(DescriptorPool::from_file_descriptor_set(set)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, mode, flag, dir] if mode == "server" && flag == "--protos" => server(dir).await,
        [_, mode] if mode == "client" => client::run().await,
        _ => bail!("usage: pbflags-conformance server --protos <dir> | pbflags-conformance client"),
    }
}

async fn server(protos: &str) -> anyhow::Result<()> {
    let pool = Arc::new(pool(protos)?);
    let req: ServerCompatRequest = read_message(&mut std::io::stdin().lock())?;
    if !req.client_tls_cert.is_empty() {
        bail!("client certificates are not configured for this server");
    }

    let limits = rpc::RpcLimits {
        max_request_bytes: match req.message_receive_limit {
            0 => 4 << 20,
            n => n as usize,
        },
    };
    let app = rpc::router(Conformance { pool }, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();

    let (tls, pem_cert, _dir) = if req.use_tls {
        let creds = req.server_creds.context("use_tls without server_creds")?;
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &creds.cert)?;
        std::fs::write(&key, &creds.key)?;
        let store = pbflags_evaluator::server::tls::CertStore::open(
            pbflags_evaluator::server::tls::TlsFiles { cert, key },
        )?;
        (Some(store.server_config()?), creds.cert, Some(dir))
    } else {
        (None, Vec::new(), None)
    };

    write_message(
        &mut std::io::stdout().lock(),
        &ServerCompatResponse {
            host: "127.0.0.1".into(),
            port: u32::from(port),
            pem_cert,
        },
    )?;

    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            shutdown.cancel();
        });
    }
    pbflags_evaluator::server::serve(
        listener,
        app,
        tls,
        &pbflags_evaluator::server::conn::Limits::default(),
        pbflags_evaluator::metrics::Metrics::new(),
        shutdown,
        Duration::from_secs(1),
    )
    .await;
    Ok(())
}
