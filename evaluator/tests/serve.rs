//! The server over real loopback sockets: every RPC over gRPC, gRPC-Web and Connect (proto and
//! JSON), health endpoints, bad input, and a root → proxy chain through an outage of the root.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;
#[path = "support/tls.rs"]
mod tls;

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pbflags_evaluator::sources::pg::admin::{self, StateChange};
use pbflags_evaluator::sources::upstream::UpstreamCa;
use pbflags_proto::v1::flag_evaluator_service_client::FlagEvaluatorServiceClient;
use pbflags_proto::v1::{
    BulkEvaluateRequest, EvaluateRequest, EvaluateResponse, EvaluationSource, EvaluatorStatus,
    FlagValue, GetFlagStateRequest, GetKilledFlagsRequest, GetOverridesRequest, HealthRequest,
    State,
};
use prost::Message as _;
use server::{Running, wait_until};

/// Serves with a 200 ms kill poll, so kill-set changes show within the tests' waits.
async fn start(extra: &[&str]) -> Running {
    Running::start(&[&["--kill-ttl", "200ms"][..], extra].concat()).await
}

async fn root_db() -> pg::TestDb {
    let db = pg::TestDb::create().await;
    let pool = db.pool().await;
    server::migrate_and_sync_example(&pool).await;
    admin::set_state(
        &pool,
        "notifications/2",
        StateChange::Set("weekly".into()),
        "t",
    )
    .await
    .unwrap();
    admin::set_state(&pool, "notifications/3", StateChange::Kill, "t")
        .await
        .unwrap();
    admin::set_override(
        &pool,
        "notifications/1",
        "user-100",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    db
}

async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(url)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn get(url: &str) -> (http::StatusCode, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.get(url.parse().unwrap()).await.expect("request");
    let status = resp.status();
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
    )
}

fn method(base: &str, m: &str) -> String {
    format!("{base}/pbflags.v1.FlagEvaluatorService/{m}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_serves_every_rpc_over_grpc_connect_and_grpc_web() {
    let db = root_db().await;
    let root = start(&["--database", &db.url]).await;
    let base = root.url();
    // The kill poller runs at start; wait for it to see notifications/3.
    let mut grpc = FlagEvaluatorServiceClient::new(
        tonic::transport::Endpoint::from_shared(base.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    wait_until("kill set", async || {
        let r = grpc
            .evaluate(EvaluateRequest {
                flag_id: "notifications/3".into(),
                entity_id: String::new(),
            })
            .await
            .unwrap();
        r.into_inner().source == EvaluationSource::Killed as i32
    })
    .await;

    // gRPC (HTTP/2 cleartext), as the Java client calls it.
    let r = grpc
        .evaluate(EvaluateRequest {
            flag_id: "notifications/2".into(),
            entity_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.flag_id.as_str(), r.value, r.source),
        (
            "notifications/2",
            Some(FlagValue::string("weekly")),
            EvaluationSource::Global as i32
        )
    );
    let bulk = grpc
        .bulk_evaluate(BulkEvaluateRequest {
            flag_ids: vec![],
            entity_id: "user-100".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = bulk
        .evaluations
        .iter()
        .map(|e| (e.flag_id.as_str(), e.source))
        .collect();
    assert_eq!(
        got,
        [
            ("notifications/1", EvaluationSource::Override as i32),
            ("notifications/2", EvaluationSource::Global as i32),
            ("notifications/3", EvaluationSource::Killed as i32),
            ("notifications/4", EvaluationSource::Default as i32)
        ]
    );
    let h = grpc.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(h.status, EvaluatorStatus::Serving as i32);
    let st = grpc
        .get_flag_state(GetFlagStateRequest {
            flag_id: "notifications/2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.flag.unwrap().state, State::Enabled as i32);
    assert_eq!(
        grpc.get_killed_flags(GetKilledFlagsRequest {})
            .await
            .unwrap()
            .into_inner()
            .flag_ids,
        ["notifications/3"]
    );
    let ov = grpc
        .get_overrides(GetOverridesRequest {
            entity_id: "user-100".into(),
            flag_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ov.overrides.len(), 1);
    let nf = grpc
        .get_flag_state(GetFlagStateRequest {
            flag_id: "nope/1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);
    let ia = grpc
        .get_overrides(GetOverridesRequest {
            entity_id: String::new(),
            flag_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (ia.code(), ia.message()),
        (tonic::Code::InvalidArgument, "entity_id is required")
    );

    // grpc.health.v1, for Kubernetes gRPC probes.
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let s = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pbflags.v1.FlagEvaluatorService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        s.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Connect, binary proto over HTTP/1.1, as v0.6's Go proxies call it.
    let req = EvaluateRequest {
        flag_id: "notifications/1".into(),
        entity_id: "user-100".into(),
    }
    .encode_to_vec();
    let (status, headers, body) = post(&method(&base, "Evaluate"), "application/proto", req).await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (http::StatusCode::OK, "application/proto")
    );
    let r = EvaluateResponse::decode(body).unwrap();
    assert_eq!(
        (r.value, r.source),
        (
            Some(FlagValue::bool(false)),
            EvaluationSource::Override as i32
        )
    );

    // Connect JSON, as curl sends it.
    let (status, _, body) = post(
        &method(&base, "Evaluate"),
        "application/json",
        br#"{"flagId":"notifications/4"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"flagId": "notifications/4", "value": {"doubleValue": 0.75}, "source": "EVALUATION_SOURCE_DEFAULT"})
    );
    let (status, _, body) = post(
        &method(&base, "GetFlagState"),
        "application/json",
        br#"{"flagId":"x/1"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"],
        "not_found"
    );

    // gRPC-Web over HTTP/1.1: a length-prefixed frame in, data and trailer frames out.
    let msg = EvaluateRequest {
        flag_id: "notifications/2".into(),
        entity_id: String::new(),
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&msg);
    let (status, _, body) = post(
        &method(&base, "Evaluate"),
        "application/grpc-web+proto",
        framed,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body[0], 0, "first frame is data");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let r = EvaluateResponse::decode(&body[5..5 + len]).unwrap();
    assert_eq!(r.value, Some(FlagValue::string("weekly")));
    let trailer = String::from_utf8_lossy(&body[5 + len + 5..]).to_lowercase();
    assert!(trailer.contains("grpc-status:0"), "{trailer}");

    // Probes and metrics.
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (
            http::StatusCode::OK,
            "status=EVALUATOR_STATUS_SERVING\n".into()
        )
    );
    assert_eq!(get(&format!("{base}/readyz")).await.0, http::StatusCode::OK);
    // The served set, as the operator reads it: the SHA-256 of the file and its flag count.
    let file = std::fs::read(format!(
        "{}/../proto/example/descriptors.pb",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (status, body) = get(&format!("{base}/descriptors")).await;
    assert_eq!(status, http::StatusCode::OK);
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        served["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&file))
    );
    assert_eq!(served["flags"], 4);
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("pbflags_evaluations_total{source=\"override\",status=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pbflags_rpc_requests_total{code=\"not_found\",method=\"GetFlagState\"}"),
        "{metrics}"
    );
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocols_error_and_harms_nothing() {
    let db = root_db().await;
    let root = start(&[
        "--database",
        &db.url,
        "--max-request-bytes",
        "1024",
        "--max-bulk-flags",
        "3",
        "--max-flag-id-bytes",
        "20",
        "--max-entity-id-bytes",
        "8",
    ])
    .await;
    let base = root.url();
    let cases: Vec<(&str, &str, Vec<u8>, http::StatusCode, &str)> = vec![
        (
            "Evaluate",
            "application/proto",
            vec![0xff, 0xff, 0xff],
            http::StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "Evaluate",
            "application/json",
            b"{not json".to_vec(),
            http::StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "Evaluate",
            "application/json",
            br#"{"flagId": 7}"#.to_vec(),
            http::StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "Evaluate",
            "application/json",
            vec![b' '; 5000],
            http::StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
        ),
        (
            "BulkEvaluate",
            "application/json",
            br#"{"flagIds":["a","b","c","d"]}"#.to_vec(),
            http::StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "GetFlagState",
            "application/json",
            b"{}".to_vec(),
            http::StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "NoSuchMethod",
            "application/json",
            b"{}".to_vec(),
            http::StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
        ),
    ];
    for (m, ct, body, want_status, want_code) in cases {
        let (status, _, resp) = post(&method(&base, m), ct, body).await;
        assert_eq!(status, want_status, "{m} {ct}");
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(v["code"], want_code, "{m} {ct}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    // Ids over the limits, named in the message, over Connect and gRPC.
    let long_ids = [
        (
            "Evaluate",
            r#"{"flagId":"notifications/2","entityId":"123456789"}"#,
            "entity_id: 9 bytes; at most 8 (--max-entity-id-bytes)",
        ),
        (
            "Evaluate",
            r#"{"flagId":"notifications/2222222222"}"#,
            "flag_id: 24 bytes; at most 20 (--max-flag-id-bytes)",
        ),
        (
            "BulkEvaluate",
            r#"{"flagIds":["notifications/1","notifications/2222222222"]}"#,
            "flag_ids[1]: 24 bytes",
        ),
        (
            "GetOverrides",
            r#"{"entityId":"123456789"}"#,
            "entity_id: 9 bytes",
        ),
    ];
    for (m, body, message) in long_ids {
        let (status, _, resp) = post(&method(&base, m), "application/json", body.into()).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{m} {body}");
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(v["code"], "invalid_argument", "{m}: {v}");
        assert!(v["message"].as_str().unwrap().contains(message), "{m}: {v}");
    }
    let err = root
        .client()
        .await
        .evaluate(EvaluateRequest {
            flag_id: "notifications/2".into(),
            entity_id: "x".repeat(9),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("entity_id: 9 bytes"), "{err:?}");
    let (status, headers, _) = post(&method(&base, "Evaluate"), "text/plain", b"x".to_vec()).await;
    assert_eq!(status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(headers.contains_key("accept-post"));
    // The server still answers normally.
    let (status, _, _) = post(
        &method(&base, "Evaluate"),
        "application/json",
        br#"{"flagId":"notifications/2"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_follows_the_root_and_survives_its_outage() {
    let db = root_db().await;
    let root = start(&["--database", &db.url]).await;
    let root_addr = root.addr;
    let proxy = start(&[
        "--server",
        &root.url(),
        "--flag-ttl",
        "300ms",
        "--override-ttl",
        "300ms",
    ])
    .await;
    let mut client = proxy.client().await;
    let eval = |flag: &str, entity: &str| EvaluateRequest {
        flag_id: flag.into(),
        entity_id: entity.into(),
    };

    let r = client
        .evaluate(eval("notifications/2", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.value, r.source),
        (
            Some(FlagValue::string("weekly")),
            EvaluationSource::Global as i32
        )
    );
    let r = client
        .evaluate(eval("notifications/1", "user-100"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.source, EvaluationSource::Override as i32);
    // State RPCs pass through, codes intact.
    let nf = client
        .get_flag_state(GetFlagStateRequest {
            flag_id: "nope/1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);
    // An unsynced flag is "no row", not a health failure.
    client.evaluate(eval("unsynced/1", "")).await.unwrap();
    assert_eq!(
        client
            .health(HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .consecutive_failures,
        0
    );

    // A change in the database reaches the proxy after the TTLs.
    admin::set_state(
        &db.pool().await,
        "notifications/2",
        StateChange::Set("hourly".into()),
        "t",
    )
    .await
    .unwrap();
    wait_until("new value through the proxy", async || {
        client
            .evaluate(eval("notifications/2", ""))
            .await
            .unwrap()
            .into_inner()
            .value
            == Some(FlagValue::string("hourly"))
    })
    .await;

    // The root goes away: the proxy keeps answering and says it is degraded.
    root.stop().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        let r = client
            .evaluate(eval("notifications/2", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.value, r.source),
            (
                Some(FlagValue::string("hourly")),
                EvaluationSource::Cached as i32
            )
        );
        let r = client
            .evaluate(eval("notifications/4", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.value, Some(FlagValue::double(0.75)));
    }
    wait_until("DEGRADED", async || {
        client
            .health(HealthRequest {})
            .await
            .unwrap()
            .into_inner()
            .status
            == EvaluatorStatus::Degraded as i32
    })
    .await;

    // The root comes back on the same address: SERVING again, fresh values.
    let listen = root_addr.to_string();
    let root = Running::with_config(
        server::resolve(&["--listen", &listen, "--database", &db.url]).unwrap(),
    )
    .await;
    wait_until("SERVING again", async || {
        client
            .evaluate(eval("notifications/2", ""))
            .await
            .unwrap()
            .into_inner()
            .source
            == EvaluationSource::Global as i32
            && client
                .health(HealthRequest {})
                .await
                .unwrap()
                .into_inner()
                .status
                == EvaluatorStatus::Serving as i32
    })
    .await;
    root.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_can_call_its_upstream_over_grpc() {
    let db = root_db().await;
    let root = start(&["--database", &db.url]).await;
    let proxy = start(&["--server", &root.url(), "--upstream-protocol", "grpc"]).await;
    let mut client = proxy.client().await;
    let r = client
        .evaluate(EvaluateRequest {
            flag_id: "notifications/1".into(),
            entity_id: "user-100".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().source, EvaluationSource::Override as i32);
    let r = client
        .evaluate(EvaluateRequest {
            flag_id: "notifications/2".into(),
            entity_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().value, Some(FlagValue::string("weekly")));
    let nf = client
        .get_flag_state(GetFlagStateRequest {
            flag_id: "nope/1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        nf.code(),
        tonic::Code::NotFound,
        "upstream codes survive the gRPC hop"
    );
    client
        .evaluate(EvaluateRequest {
            flag_id: "unsynced/1".into(),
            entity_id: String::new(),
        })
        .await
        .unwrap();
    let h = client.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (h.status, h.consecutive_failures),
        (EvaluatorStatus::Serving as i32, 0)
    );
    wait_until("the kill set over gRPC", async || {
        client
            .get_killed_flags(GetKilledFlagsRequest {})
            .await
            .unwrap()
            .into_inner()
            .flag_ids
            == ["notifications/3"]
            && client
                .evaluate(EvaluateRequest {
                    flag_id: "notifications/3".into(),
                    entity_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .source
                == EvaluationSource::Killed as i32
    })
    .await;
    proxy.stop().await;
    root.stop().await;
}

/// notifications/1 for user-100 (the root has an override for it) and the health, over gRPC.
async fn user_100_and_health(
    server: &Running,
) -> (EvaluateResponse, pbflags_proto::v1::HealthResponse) {
    let mut client = server.client().await;
    let r = client
        .evaluate(EvaluateRequest {
            flag_id: "notifications/1".into(),
            entity_id: "user-100".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let h = client.health(HealthRequest {}).await.unwrap().into_inner();
    (r, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_reaches_a_tls_root_over_https_and_refuses_an_untrusted_one() {
    let db = root_db().await;
    let ca = tls::Ca::new();
    let (cert, key, _) = ca.leaf();
    let pair = tls::files(&cert, &key);
    let ca_file = pair.cert.with_file_name("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let root = start(&[
        "--database",
        &db.url,
        "--tls-cert",
        pair.cert.to_str().unwrap(),
        "--tls-key",
        pair.key.to_str().unwrap(),
    ])
    .await;
    let upstream = format!("https://localhost:{}", root.addr.port());

    for protocol in ["connect", "grpc"] {
        let proxy = start(&[
            "--server",
            &upstream,
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--upstream-protocol",
            protocol,
        ])
        .await;
        let (r, h) = user_100_and_health(&proxy).await;
        assert_eq!(r.source, EvaluationSource::Override as i32, "{protocol}");
        assert_eq!(
            (h.status, h.consecutive_failures),
            (EvaluatorStatus::Serving as i32, 0),
            "{protocol}"
        );
        proxy.stop().await;
    }

    // A CA that did not issue the root's certificate: the handshake fails, so the proxy serves
    // compiled defaults and reports the failures.
    let stranger = tls::Ca::new();
    let stranger_file = pair.cert.with_file_name("stranger.crt");
    std::fs::write(&stranger_file, stranger.pem()).unwrap();
    let proxy = start(&[
        "--server",
        &upstream,
        "--upstream-ca",
        stranger_file.to_str().unwrap(),
    ])
    .await;
    let (r, h) = user_100_and_health(&proxy).await;
    assert_eq!(r.source, EvaluationSource::Default as i32);
    assert!(h.consecutive_failures > 0, "{h:?}");
    assert_ne!(h.status, EvaluatorStatus::Serving as i32);
    proxy.stop().await;
    root.stop().await;
}

#[test]
fn an_upstream_ca_needs_an_https_server_and_a_readable_bundle() {
    let resolve = server::resolve;
    let e = resolve(&["--server", "http://h:1", "--upstream-ca", "/etc/hostname"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream_ca") && e.contains("https://"), "{e}");
    let e = resolve(&[
        "--server",
        "https://h:1",
        "--upstream-ca",
        "/nonexistent.pem",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("upstream_ca /nonexistent.pem"), "{e}");
    // Optional (a mounted TLS Secret without ca.crt): a missing file means the system trust
    // store; a file that is there must still be a CA bundle.
    let optional = |path: &str| {
        resolve(&[
            "--server",
            "https://h:1",
            "--upstream-ca",
            path,
            "--upstream-ca-optional",
        ])
    };
    assert_eq!(
        optional("/nonexistent.pem").unwrap().upstream_ca,
        UpstreamCa::System
    );
    let e = optional("/etc/hostname").unwrap_err().to_string();
    assert!(e.contains("upstream_ca /etc/hostname"), "{e}");
    let e = resolve(&["--server", "ftp://h:1"]).unwrap_err().to_string();
    assert!(e.contains("http:// or https://"), "{e}");
}
