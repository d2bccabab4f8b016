//! Traces leave over OTLP/gRPC when an endpoint is configured: a collector (the OTLP trace service,
//! served here) receives one span per RPC and one per source fetch.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use pbflags_evaluator::config::{LogFormat, ServeArgs};
use pbflags_evaluator::logging::{self, Tracing};
use pbflags_proto::v1::EvaluateRequest;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut names = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                names.extend(ss.spans.into_iter().map(|s| s.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_fetch_spans_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let app =
        tonic::service::Routes::new(TraceServiceServer::new(collector.clone())).into_axum_router();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let telemetry = logging::init(
        LogFormat::Text,
        "info",
        &Tracing {
            otlp_endpoint: Some(otlp),
            sample_ratio: 1.0,
        },
    );
    let descriptors = format!(
        "{}/../proto/example/descriptors.pb",
        env!("CARGO_MANIFEST_DIR")
    );
    // A proxy whose upstream refuses connections: evaluations still answer, and fetches are traced.
    let argv = [
        "t",
        "--descriptors",
        &descriptors,
        "--listen",
        "127.0.0.1:0",
        "--server",
        "http://127.0.0.1:9",
    ];
    let config = Args::try_parse_from(argv).unwrap().serve.resolve().unwrap();
    let prepared = pbflags_evaluator::serve::prepare(config).await.unwrap();
    let url = format!("http://{}", prepared.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(pbflags_evaluator::serve::run(prepared, stop.clone()));

    let channel = tonic::transport::Endpoint::from_shared(url)
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
    stop.cancel();
    server.await.unwrap();
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = collector.0.lock().unwrap().clone();
        let rpc = names
            .iter()
            .filter(|n| *n == "pbflags.v1.FlagEvaluatorService/Evaluate")
            .count();
        let fetch = names.iter().any(|n| n == "source.flag_state");
        if rpc == 3 && fetch {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans received: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
