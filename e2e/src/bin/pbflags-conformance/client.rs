//! Client mode: each `ClientCompatRequest` is made with the proxy's upstream client (Connect,
//! binary protobuf, HTTP/1.1, optionally over TLS trusting the given certificate), and answered
//! with a `ClientCompatResponse`.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pbflags_evaluator::protocol::connect::{self, CallError};
use pbflags_evaluator::sources::upstream::{UpstreamCa, https_connector};
use prost::Message;
use prost_types::Any;

use super::{ConformancePayload, Header, ProtoError, UnaryResponse, headers_of};

const PROTOCOL_CONNECT: i32 = 1;
const CODEC_PROTO: i32 = 1;
const COMPRESSION_IDENTITY: i32 = 1;
const STREAM_TYPE_UNARY: i32 = 1;
const HTTP_VERSION_1: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct ClientCompatRequest {
    #[prost(string, tag = "1")]
    test_name: String,
    #[prost(int32, tag = "2")]
    http_version: i32,
    #[prost(int32, tag = "3")]
    protocol: i32,
    #[prost(int32, tag = "4")]
    codec: i32,
    #[prost(int32, tag = "5")]
    compression: i32,
    #[prost(string, tag = "6")]
    host: String,
    #[prost(uint32, tag = "7")]
    port: u32,
    #[prost(bytes = "vec", tag = "8")]
    server_tls_cert: Vec<u8>,
    #[prost(uint32, tag = "10")]
    message_receive_limit: u32,
    #[prost(string, optional, tag = "11")]
    service: Option<String>,
    #[prost(string, optional, tag = "12")]
    method: Option<String>,
    #[prost(int32, tag = "13")]
    stream_type: i32,
    #[prost(bool, tag = "14")]
    use_get_http_method: bool,
    #[prost(message, repeated, tag = "15")]
    request_headers: Vec<Header>,
    #[prost(message, repeated, tag = "16")]
    request_messages: Vec<Any>,
    #[prost(uint32, optional, tag = "17")]
    timeout_ms: Option<u32>,
    #[prost(message, optional, tag = "19")]
    cancel: Option<Cancel>,
}

#[derive(Clone, PartialEq, Message)]
struct Empty {}

/// When the call is cancelled (one of these is set).
#[derive(Clone, PartialEq, Message)]
struct Cancel {
    #[prost(message, optional, tag = "1")]
    before_close_send: Option<Empty>,
    #[prost(uint32, optional, tag = "2")]
    after_close_send_ms: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct ClientCompatResponse {
    #[prost(string, tag = "1")]
    test_name: String,
    #[prost(message, optional, tag = "2")]
    response: Option<ClientResponseResult>,
    #[prost(message, optional, tag = "3")]
    error: Option<ClientErrorResult>,
}

#[derive(Clone, PartialEq, Message)]
struct ClientResponseResult {
    #[prost(message, repeated, tag = "1")]
    response_headers: Vec<Header>,
    #[prost(message, repeated, tag = "2")]
    payloads: Vec<ConformancePayload>,
    #[prost(message, optional, tag = "3")]
    error: Option<ProtoError>,
    #[prost(message, repeated, tag = "4")]
    response_trailers: Vec<Header>,
}

#[derive(Clone, PartialEq, Message)]
struct ClientErrorResult {
    #[prost(string, tag = "1")]
    message: String,
}

/// Largest response accepted unless the case sets a limit (the proxy's own limit).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Reads requests until EOF, makes them concurrently, writes each result as it completes.
pub async fn run() -> anyhow::Result<()> {
    // stdin is read on a thread of its own; results are written whole, one at a time.
    let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        while let Ok(req) = super::read_message::<ClientCompatRequest>(&mut stdin) {
            if requests_tx.send(req).is_err() {
                break;
            }
        }
    });
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut calls = tokio::task::JoinSet::new();
    while let Some(req) = requests.recv().await {
        let stdout = stdout.clone();
        calls.spawn(async move {
            let test_name = req.test_name.clone();
            let resp = match one(req).await {
                Ok(result) => ClientCompatResponse {
                    test_name,
                    response: Some(result),
                    error: None,
                },
                Err(e) => ClientCompatResponse {
                    test_name,
                    response: None,
                    error: Some(ClientErrorResult {
                        message: format!("{e:#}"),
                    }),
                },
            };
            let mut out = stdout
                .lock()
                .map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
            super::write_message(&mut *out, &resp)
        });
    }
    while let Some(r) = calls.join_next().await {
        r??;
    }
    Ok(())
}

/// One call, as the proxy makes its upstream calls.
async fn one(req: ClientCompatRequest) -> anyhow::Result<ClientResponseResult> {
    let supported = req.protocol == PROTOCOL_CONNECT
        && req.codec == CODEC_PROTO
        && matches!(req.compression, 0 | COMPRESSION_IDENTITY)
        && req.stream_type == STREAM_TYPE_UNARY
        && matches!(req.http_version, 0 | HTTP_VERSION_1)
        && !req.use_get_http_method;
    anyhow::ensure!(
        supported,
        "the upstream client makes unary Connect calls with binary protobuf over HTTP/1.1"
    );
    let dir = tempfile::tempdir()?;
    let (scheme, ca) = if req.server_tls_cert.is_empty() {
        ("http", None)
    } else {
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, &req.server_tls_cert)?;
        ("https", Some(UpstreamCa::File(path)))
    };
    let connector =
        https_connector(ca.as_ref(), Duration::from_secs(10), false).map_err(anyhow::Error::msg)?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let url = format!(
        "{scheme}://{}:{}/{}/{}",
        req.host,
        req.port,
        req.service.as_deref().context("no service")?,
        req.method.as_deref().context("no method")?
    );
    let message = req
        .request_messages
        .first()
        .context("no request message")?
        .value
        .clone();
    let mut options = connect::CallOptions {
        timeout: req
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms))),
        headers: http::HeaderMap::new(),
        max_response_bytes: match req.message_receive_limit {
            0 => MAX_RESPONSE_BYTES,
            n => n as usize,
        },
    };
    for h in &req.request_headers {
        let name = http::HeaderName::try_from(h.name.as_str())?;
        for v in &h.value {
            options
                .headers
                .append(&name, http::HeaderValue::try_from(v.as_str())?);
        }
    }
    let call = connect::call(&client, &url, message, &options);
    // Cancelling is dropping the call, as the proxy does when its caller gives up.
    let result = match req.cancel.as_ref() {
        Some(c) if c.before_close_send.is_some() => Err(canceled()),
        Some(Cancel {
            after_close_send_ms: Some(ms),
            ..
        }) => tokio::select! {
            r = call => r,
            () = tokio::time::sleep(Duration::from_millis(u64::from(*ms))) => Err(canceled()),
        },
        _ => call.await,
    };
    Ok(match result {
        Ok(reply) => {
            let resp = UnaryResponse::decode(reply.body)?;
            ClientResponseResult {
                response_headers: headers_of(&reply.headers),
                // One response message, whatever it holds.
                payloads: vec![resp.payload.unwrap_or_default()],
                error: None,
                response_trailers: headers_of(&reply.trailers),
            }
        }
        Err(e) => {
            let e = *e;
            ClientResponseResult {
                response_headers: headers_of(&e.headers),
                payloads: Vec::new(),
                response_trailers: headers_of(&e.trailers),
                error: Some(ProtoError {
                    code: e.code as i32,
                    message: Some(e.message),
                    details: e.details,
                }),
            }
        }
    })
}

fn canceled() -> Box<CallError> {
    CallError::new(tonic::Code::Cancelled, "cancelled by the caller")
}
