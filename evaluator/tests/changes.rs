//! Changes pushed through the tiers: PostgreSQL → root (LISTEN) → proxy → proxy (the change
//! stream, over Connect and gRPC), with TTLs of an hour so only the push can bring a change; the
//! stream's own contract (opening heartbeat, consecutive numbers, the cap on subscribers); and a
//! proxy in front of an upstream without the stream.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use pbflags_evaluator::protocol::connect;
use pbflags_evaluator::sources::pg::admin::{self, StateChange};
use pbflags_proto::v1::flag_change_service_client::FlagChangeServiceClient;
use pbflags_proto::v1::{
    ChangeKind, EvaluateRequest, EvaluationSource, State, WatchChangesRequest, WatchChangesResponse,
};
use prost::Message as _;
use server::{Running, wait_until};

/// TTLs no test outlives: a change seen within the test came through the push.
const LONG_TTLS: [&str; 6] = [
    "--kill-ttl",
    "1h",
    "--flag-ttl",
    "1h",
    "--override-ttl",
    "1h",
];

async fn evaluate(server: &Running, flag: &str, entity: &str) -> (i32, String) {
    let r = server
        .client()
        .await
        .evaluate(EvaluateRequest {
            flag_id: flag.into(),
            entity_id: entity.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.source, format!("{:?}", r.value))
}

/// Waits until every server in `tiers` answers `flag` for `entity` with `source`.
async fn all_answer(tiers: &[&Running], flag: &str, entity: &str, source: EvaluationSource) {
    for t in tiers {
        wait_until(
            &format!("{flag} from {} is {source:?}", t.addr),
            async || evaluate(t, flag, entity).await.0 == source as i32,
        )
        .await;
    }
}

fn metric(server: &Running, line_start: &str) -> f64 {
    server
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_states_and_overrides_reach_a_chain_of_proxies_without_waiting_for_a_ttl() {
    let db = pg::TestDb::create().await;
    let pool = db.pool().await;
    server::migrate_and_sync_example(&pool).await;
    let root = Running::start(&[&["--database", &db.url][..], &LONG_TTLS].concat()).await;
    let root_url = root.url();
    let proxy = Running::start(&[&["--server", &root_url][..], &LONG_TTLS].concat()).await;
    let proxy_url = proxy.url();
    let edge = Running::start(
        &[
            &["--server", &proxy_url, "--upstream-protocol", "grpc"][..],
            &LONG_TTLS,
        ]
        .concat(),
    )
    .await;
    let tiers = [&root, &proxy, &edge];
    for t in &tiers[1..] {
        wait_until("the proxy to follow its upstream", async || {
            metric(t, "pbflags_change_stream_connected ") == 1.0
        })
        .await;
    }
    // Every tier caches the compiled default first.
    all_answer(&tiers, "notifications/2", "", EvaluationSource::Default).await;
    all_answer(
        &tiers,
        "notifications/1",
        "user-7",
        EvaluationSource::Default,
    )
    .await;

    admin::set_state(
        &pool,
        "notifications/2",
        StateChange::Set("weekly".into()),
        "t",
    )
    .await
    .unwrap();
    all_answer(&tiers, "notifications/2", "", EvaluationSource::Global).await;
    admin::set_state(&pool, "notifications/2", StateChange::Kill, "t")
        .await
        .unwrap();
    all_answer(&tiers, "notifications/2", "", EvaluationSource::Killed).await;
    admin::set_override(
        &pool,
        "notifications/1",
        "user-7",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    all_answer(
        &tiers,
        "notifications/1",
        "user-7",
        EvaluationSource::Override,
    )
    .await;
    // An unrelated entity's cached answer is untouched (it never needed another fetch).
    assert_eq!(
        evaluate(&edge, "notifications/1", "user-8").await.0,
        EvaluationSource::Default as i32
    );

    // Each upstream has one subscriber; each proxy measured how long changes took to reach it.
    assert_eq!(metric(&root, "pbflags_watchers "), 1.0);
    assert_eq!(metric(&proxy, "pbflags_watchers "), 1.0);
    assert!(metric(&edge, "pbflags_change_propagation_seconds_count ") >= 3.0);
    assert!(metric(&edge, "pbflags_change_events_total{kind=\"override\"} ") >= 1.0);

    // The root's notifications stop (the database restarts its connections): the chain resyncs.
    edge.stop().await;
    proxy.stop().await;
    root.stop().await;
}

/// A Connect stream of `server`'s changes, opened with the evaluator's own client.
async fn connect_stream(
    server: &Running,
) -> Result<connect::MessageStream, Box<connect::CallError>> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let url = format!("{}/pbflags.v1.FlagChangeService/WatchChanges", server.url());
    connect::open_stream(
        &client,
        &url,
        &WatchChangesRequest {}.encode_to_vec(),
        Duration::from_secs(5),
    )
    .await
}

async fn next_message(stream: &mut connect::MessageStream) -> WatchChangesResponse {
    let bytes = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a message, not an error");
    WatchChangesResponse::decode(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_opens_with_a_heartbeat_numbers_events_and_caps_its_subscribers() {
    let db = pg::TestDb::create().await;
    let pool = db.pool().await;
    server::migrate_and_sync_example(&pool).await;
    let root = Running::start(&["--database", &db.url, "--max-watchers", "1"]).await;
    wait_until("the root to listen", async || {
        metric(&root, "pbflags_change_stream_connected ") == 1.0
    })
    .await;

    let mut stream = connect_stream(&root).await.unwrap();
    let hello = next_message(&mut stream).await;
    assert_eq!(hello.kind, ChangeKind::Heartbeat as i32);

    // At the cap, a second subscriber is refused at once, over Connect and over gRPC.
    let refused = connect_stream(&root).await;
    let e = match refused {
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.code, tonic::Code::ResourceExhausted, "{}", e.message);
    assert!(e.message.contains("--max-watchers"), "{}", e.message);
    let mut grpc = FlagChangeServiceClient::new(
        tonic::transport::Endpoint::from_shared(root.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let refused = match grpc.watch_changes(WatchChangesRequest {}).await {
        Ok(r) => r.into_inner().message().await.unwrap_err(),
        Err(s) => s,
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    admin::set_state(
        &pool,
        "notifications/2",
        StateChange::Set("weekly".into()),
        "t",
    )
    .await
    .unwrap();
    admin::set_override(
        &pool,
        "notifications/1",
        "user-7",
        State::Enabled,
        Some("false"),
        "t",
    )
    .await
    .unwrap();
    let flag = next_message(&mut stream).await;
    assert_eq!(
        (flag.kind, flag.flag_id.as_str(), flag.sequence),
        (
            ChangeKind::Flag as i32,
            "notifications/2",
            hello.sequence + 1
        )
    );
    assert!(flag.origin_unix_ms > 0);
    let over = next_message(&mut stream).await;
    assert_eq!(
        (over.kind, over.flag_id.as_str(), over.entity_id.as_str()),
        (ChangeKind::Override as i32, "notifications/1", "user-7")
    );
    assert_eq!(over.sequence, flag.sequence + 1);

    // The subscriber leaves: its place is free again.
    drop(stream);
    wait_until("the place to be freed", async || {
        grpc.watch_changes(WatchChangesRequest {}).await.is_ok()
    })
    .await;
    root.stop().await;
}

/// An upstream as pbflags v0.6 serves it: the state RPCs, and 404 for an unknown procedure.
async fn upstream_without_the_stream() -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let app = axum::Router::new()
        .route(
            "/pbflags.v1.FlagEvaluatorService/GetKilledFlags",
            axum::routing::post(async || {
                (
                    [(http::header::CONTENT_TYPE, "application/proto")],
                    Vec::<u8>::new(),
                )
            }),
        )
        .route(
            "/pbflags.v1.FlagEvaluatorService/GetFlagState",
            axum::routing::post(async || {
                (
                    http::StatusCode::NOT_FOUND,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"code":"not_found","message":"no such flag"}"#,
                )
            }),
        )
        .fallback(async move || {
            counted.fetch_add(1, Ordering::SeqCst);
            (http::StatusCode::NOT_FOUND, "404 page not found")
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_of_an_upstream_without_the_stream_asks_once_and_serves_on_ttls() {
    let (url, asked) = upstream_without_the_stream().await;
    let proxy = Running::start(&["--server", &url]).await;
    wait_until("the proxy to ask for the stream", async || {
        asked.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        evaluate(&proxy, "notifications/2", "").await.0,
        EvaluationSource::Default as i32
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "asked once, not in a loop of errors"
    );
    assert_eq!(metric(&proxy, "pbflags_change_stream_connected "), 0.0);
    proxy.stop().await;
}
