//! Request decoding on every protocol the one port serves: the first input byte picks the content
//! type (Connect proto or JSON, gRPC, gRPC-Web binary or text), the second the method, the rest is
//! the body, sent through the complete router. Never a panic; a Connect request is never answered
//! 500 (a decoding failure is the client's error, not the server's).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use http_body_util::BodyExt as _;
use pbflags_evaluator::core::clock::Clock;
use pbflags_evaluator::core::engine::Engine;
use pbflags_evaluator::core::memory::MemorySource;
use pbflags_evaluator::core::registry::{Registry, Snapshot};
use pbflags_evaluator::metrics::{Backend, Metrics};
use pbflags_evaluator::server::service::{Evaluator, IdLimits};
use pbflags_evaluator::server::{AppParts, Readiness, router};
use tower::ServiceExt as _;

const CONTENT_TYPES: [&str; 6] = [
    "application/proto",
    "application/json",
    "application/grpc",
    "application/grpc+proto",
    "application/grpc-web+proto",
    "application/grpc-web-text",
];
const METHODS: [&str; 7] = [
    "Evaluate",
    "BulkEvaluate",
    "Health",
    "GetFlagState",
    "GetKilledFlags",
    "GetOverrides",
    "NoSuchMethod",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let snapshot =
            Snapshot::from_bytes(pbflags_proto::EXAMPLE_DESCRIPTORS).expect("example descriptors");
        let source = Arc::new(MemorySource::new());
        let engine = Arc::new(Engine::with_clock(
            Arc::new(Registry::new(snapshot)),
            source,
            Backend::Memory,
            Default::default(),
            Metrics::new(),
            Clock::real(),
        ));
        let app = runtime.block_on(async {
            router(AppParts {
                evaluator: Evaluator::new(engine, 100, IdLimits::default()),
                readiness: Readiness::default(),
                grpc_routes: tonic::service::Routes::default(),
                max_request_bytes: 64 << 10,
            })
        });
        Fixture { runtime, app }
    })
}

libfuzzer_sys::fuzz_target!(
    // libFuzzer's hook aborts on every panic, even one the code under test contains on purpose
    // (descriptor parsing does); with the default hook, only a panic escaping the target crashes.
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| {
    let [ct, method, body @ ..] = data else {
        return;
    };
    let ct = CONTENT_TYPES[usize::from(*ct) % CONTENT_TYPES.len()];
    let method = METHODS[usize::from(*method) % METHODS.len()];
    let f = fixture();
    let req = http::Request::post(format!("/pbflags.v1.FlagEvaluatorService/{method}"))
        .header("content-type", ct)
        .header("te", "trailers")
        .body(axum::body::Body::from(body.to_vec()))
        .expect("request");
    let (status, bytes) = f.runtime.block_on(async {
        let resp = f.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes());
        (status, bytes)
    });
    assert!(bytes.is_ok(), "response body failed");
    if !ct.starts_with("application/grpc") {
        assert_ne!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
    }
});
