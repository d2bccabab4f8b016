//! Traces leave over OTLP/gRPC when an endpoint is configured: a collector (the OTLP trace service,
//! served here) receives one span per RPC and one per source fetch. A caller's `traceparent` makes
//! the RPC span its child (gRPC and Connect), and a proxy's upstream calls carry the trace on, so
//! the upstream's spans join it.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "support/server.rs"]
mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use pbflags_evaluator::app::logging::LogFormat;
use pbflags_evaluator::app::logging::{self, Tracing};
use pbflags_proto::v1::EvaluateRequest;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use server::Running;

/// What the test needs of an exported span.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

impl Collector {
    /// A collector serving OTLP/gRPC on a loopback port, and its URL.
    async fn serve() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = format!("http://{}", listener.local_addr().unwrap());
        let app = tonic::service::Routes::new(TraceServiceServer::new(collector.clone()))
            .into_axum_router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, otlp)
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| Span {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_fetch_spans_reach_an_otlp_collector() {
    let (collector, otlp) = Collector::serve().await;

    let telemetry = logging::init(
        LogFormat::Text,
        "info",
        &Tracing {
            otlp_endpoint: Some(otlp),
            sample_ratio: 1.0,
        },
    );
    // A proxy whose upstream refuses connections: evaluations still answer, and fetches are traced.
    let edge = Running::start(&["--server", "http://127.0.0.1:9"]).await;
    let edge_url = edge.url();
    // A second proxy in front of it, calling it over Connect: its fetches become RPCs there.
    let front = Running::start(&["--server", &edge_url]).await;
    let front_url = front.url();

    let channel = tonic::transport::Endpoint::from_shared(edge_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlagEvaluatorServiceClient::new(channel);
    for _ in 0..3 {
        let r = client
            .evaluate(EvaluateRequest {
                flag_id: "notifications/2".into(),
                entity_id: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(r.into_inner().flag_id, "notifications/2");
    }

    // A traced caller over gRPC.
    let (grpc_trace, grpc_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut req = tonic::Request::new(EvaluateRequest {
        flag_id: "notifications/1".into(),
        entity_id: String::new(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-{grpc_parent}-01").parse().unwrap(),
    );
    client.evaluate(req).await.unwrap();

    // A traced caller over Connect JSON, to the front proxy (whose fetch goes to the edge).
    let (connect_trace, connect_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>()
        .request(
            http::Request::post(format!(
                "{front_url}/pbflags.v1.FlagEvaluatorService/GetFlagState"
            ))
            .header("content-type", "application/json")
            .header(
                "traceparent",
                format!("00-{connect_trace}-{connect_parent}-01"),
            )
            .body(r#"{"flagId":"notifications/2"}"#.into())
            .unwrap(),
        )
        .await
        .unwrap();
    // The edge has no source, so the answer is an error; the trace is what matters here.
    assert!(!resp.status().is_success());

    front.stop().await;
    edge.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collector.0.lock().unwrap().clone();
        let named = |n: &str| {
            spans
                .iter()
                .filter(|s| s.name == n)
                .cloned()
                .collect::<Vec<_>>()
        };
        let evaluates = named("pbflags.v1.FlagEvaluatorService/Evaluate");
        let fetch = !named("source.flag_state").is_empty();
        let grpc_child = evaluates
            .iter()
            .any(|s| s.trace_id == grpc_trace && s.parent_span_id == grpc_parent);
        let states = named("pbflags.v1.FlagEvaluatorService/GetFlagState");
        // The front's RPC span is the caller's child; the edge's RPC span, reached through the
        // front's upstream call, is in the same trace with a parent inside the front.
        let front_rpc = states
            .iter()
            .find(|s| s.trace_id == connect_trace && s.parent_span_id == connect_parent);
        let edge_rpc = states
            .iter()
            .find(|s| s.trace_id == connect_trace && s.parent_span_id != connect_parent);
        if evaluates.len() == 4
            && fetch
            && grpc_child
            && let (Some(front_rpc), Some(edge_rpc)) = (front_rpc, edge_rpc)
        {
            let front_ids: Vec<&str> = spans
                .iter()
                .filter(|s| s.trace_id == connect_trace)
                .map(|s| s.span_id.as_str())
                .collect();
            assert!(
                front_ids.contains(&edge_rpc.parent_span_id.as_str()),
                "edge span's parent is not in the trace: {spans:#?}"
            );
            assert_ne!(front_rpc.span_id, edge_rpc.span_id);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The binary on a single-threaded runtime (`--worker-threads 1`): spans still reach the collector,
/// and the ones still buffered are flushed when SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_threaded_evaluator_exports_and_flushes_its_spans() {
    let (collector, otlp) = Collector::serve().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let descriptors = format!(
        "{}/../proto/example/descriptors.pb",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"))
        .args([
            "serve",
            "--descriptors",
            &descriptors,
            "--server",
            "http://127.0.0.1:9",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--worker-threads",
            "1",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env_remove("PBFLAGS_DATABASE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut client = loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            break FlagEvaluatorServiceClient::new(ch);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "evaluator did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..5 {
        client
            .evaluate(EvaluateRequest {
                flag_id: "notifications/2".into(),
                entity_id: String::new(),
            })
            .await
            .unwrap();
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let evaluates = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.name == "pbflags.v1.FlagEvaluatorService/Evaluate")
        .count();
    assert_eq!(
        evaluates, 5,
        "every RPC span is exported by the time the process exits"
    );
}
