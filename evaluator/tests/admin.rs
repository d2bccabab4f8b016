//! `FlagAdminService` on a root's admin listener, against a real PostgreSQL: every RPC, the rules
//! (types, global layers, per-entity kills), the token matrix, a change through the API equal to
//! the same change through the CLI's code, and twenty concurrent editors.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "support/pg.rs"]
mod pg;
#[path = "support/server.rs"]
mod server;

use pbflags_evaluator::sources::pg::admin::{self, StateChange};
use pbflags_proto::v1::flag_admin_service_client::FlagAdminServiceClient;
use pbflags_proto::v1::{
    EvaluateRequest, EvaluationSource, FlagType, FlagValue, GetAuditLogRequest, GetFlagRequest,
    ListFeaturesRequest, RemoveFlagOverrideRequest, SetFlagOverrideRequest, State,
    UpdateFlagStateRequest,
};
use server::{Running, wait_until};
use tonic::Code;
use tonic::transport::Channel;

const EDITOR: &str = "editor-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

struct Admin {
    root: Running,
    db: pg::TestDb,
    _dir: tempfile::TempDir,
}

async fn admin_root() -> Admin {
    let db = pg::TestDb::create().await;
    server::migrate_and_sync_example(&db.pool().await).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# name role token\nalice editor {EDITOR}\nbob viewer {VIEWER}\n"),
    )
    .unwrap();
    let root = Running::start(&[
        "--database",
        &db.url,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        tokens.to_str().unwrap(),
    ])
    .await;
    Admin {
        root,
        db,
        _dir: dir,
    }
}

async fn client(root: &Running) -> FlagAdminServiceClient<Channel> {
    let url = format!("http://{}", root.admin_addr.expect("admin listener"));
    FlagAdminServiceClient::new(
        tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn with_token<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// `message` with the editor's token.
fn ed<T>(message: T) -> tonic::Request<T> {
    with_token(Some(EDITOR), message)
}

fn string(s: &str) -> Option<FlagValue> {
    Some(FlagValue::string(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_and_follows_the_clis_rules() {
    let Admin { root, db, _dir } = admin_root().await;
    let mut c = client(&root).await;

    let features = c
        .list_features(ed(ListFeaturesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .features;
    assert_eq!(features.len(), 1);
    let f = &features[0];
    assert_eq!(
        (f.feature_id.as_str(), f.owner.as_str(), f.flags.len()),
        ("notifications", "platform-team", 4)
    );
    let digest = &f.flags[1];
    assert_eq!(digest.flag_id, "notifications/2");
    assert_eq!(digest.flag_type, FlagType::String as i32);
    assert_eq!(digest.default_value, string("daily"));
    assert_eq!(
        digest.supported_values.as_ref().unwrap().string_values,
        ["hourly", "daily", "weekly"]
    );

    // A state, through the API; the evaluators answer with it (pushed, not after a TTL).
    c.update_flag_state(ed(UpdateFlagStateRequest {
        flag_id: "notifications/2".into(),
        state: State::Enabled as i32,
        value: string("weekly"),
        actor: String::new(),
    }))
    .await
    .unwrap();
    let mut evaluator = root.client().await;
    wait_until("the evaluator to answer weekly", async || {
        let r = evaluator
            .evaluate(EvaluateRequest {
                flag_id: "notifications/2".into(),
                entity_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        r.source == EvaluationSource::Global as i32 && r.value == string("weekly")
    })
    .await;

    // The rules, with the code and a message naming what is wrong.
    for (req, code, says) in [
        (
            UpdateFlagStateRequest {
                flag_id: "notifications/2".into(),
                state: State::Enabled as i32,
                value: Some(FlagValue::int64(3)),
                actor: String::new(),
            },
            Code::InvalidArgument,
            "notifications/2 is STRING",
        ),
        (
            UpdateFlagStateRequest {
                flag_id: "notifications/2".into(),
                state: State::Enabled as i32,
                value: None,
                actor: String::new(),
            },
            Code::InvalidArgument,
            "value is required",
        ),
        (
            UpdateFlagStateRequest {
                flag_id: "notifications/2".into(),
                state: State::Unspecified as i32,
                value: None,
                actor: String::new(),
            },
            Code::InvalidArgument,
            "state is required",
        ),
        (
            UpdateFlagStateRequest {
                flag_id: "nope/1".into(),
                state: State::Default as i32,
                value: None,
                actor: String::new(),
            },
            Code::NotFound,
            "nope/1 not found",
        ),
        (
            UpdateFlagStateRequest {
                flag_id: String::new(),
                state: State::Default as i32,
                value: None,
                actor: String::new(),
            },
            Code::InvalidArgument,
            "flag_id is required",
        ),
    ] {
        let e = c.update_flag_state(ed(req)).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(says), "{}", e.message());
    }
    let global_override = SetFlagOverrideRequest {
        flag_id: "notifications/2".into(),
        entity_id: "user-7".into(),
        state: State::Enabled as i32,
        value: string("hourly"),
        actor: String::new(),
    };
    let e = c.set_flag_override(ed(global_override)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("global-layer"), "{}", e.message());
    let entity_kill = SetFlagOverrideRequest {
        flag_id: "notifications/1".into(),
        entity_id: "user-7".into(),
        state: State::Killed as i32,
        value: None,
        actor: String::new(),
    };
    let e = c.set_flag_override(ed(entity_kill)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("per-entity kill"), "{}", e.message());

    // An override and its removal; an editor may name the actor.
    c.set_flag_override(ed(SetFlagOverrideRequest {
        flag_id: "notifications/1".into(),
        entity_id: "user-7".into(),
        state: State::Enabled as i32,
        value: Some(FlagValue::bool(false)),
        actor: "incident-bot".into(),
    }))
    .await
    .unwrap();
    let flag = c
        .get_flag(ed(GetFlagRequest {
            flag_id: "notifications/1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .flag
        .unwrap();
    assert_eq!(flag.overrides.len(), 1);
    assert_eq!(flag.overrides[0].entity_id, "user-7");
    assert_eq!(flag.overrides[0].value, Some(FlagValue::bool(false)));
    c.remove_flag_override(ed(RemoveFlagOverrideRequest {
        flag_id: "notifications/1".into(),
        entity_id: "user-7".into(),
        actor: String::new(),
    }))
    .await
    .unwrap();
    let e = c
        .get_flag(ed(GetFlagRequest {
            flag_id: "nope/1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The audit log: newest first, the token's name as actor unless one was given.
    let log = c
        .get_audit_log(ed(GetAuditLogRequest {
            flag_id: None,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let seen: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| (e.flag_id.as_str(), e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("notifications/1", "REMOVE_OVERRIDE", "alice"),
            ("notifications/1", "CREATE_OVERRIDE", "incident-bot"),
            ("notifications/2", "UPDATE_STATE", "alice"),
        ]
    );
    assert!(log[0].created_at.as_ref().unwrap().seconds > 1_700_000_000);
    assert_eq!(log[2].new_value, string("weekly"));
    let one = c
        .get_audit_log(ed(GetAuditLogRequest {
            flag_id: Some("notifications/2".into()),
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(one.len(), 1);

    // Nothing refused left a trace.
    let (row, overrides) = admin::get(&db.pool().await, "notifications/2")
        .await
        .unwrap();
    assert_eq!(
        (row.state, row.value),
        (Some(State::Enabled), string("weekly"))
    );
    assert!(overrides.is_empty());
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_reads_and_who_changes() {
    let Admin {
        root,
        db: _db,
        _dir,
    } = admin_root().await;
    let mut c = client(&root).await;
    let read = |token: Option<&str>| with_token(token, ListFeaturesRequest {});
    let write = |token: Option<&str>| {
        with_token(
            token,
            UpdateFlagStateRequest {
                flag_id: "notifications/3".into(),
                state: State::Killed as i32,
                value: None,
                actor: String::new(),
            },
        )
    };
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
    for (token, reads, writes) in [
        (
            None,
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
        ),
        (
            Some("not-a-token-0123456789"),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
        ),
        (Some(VIEWER), None, Some(Code::PermissionDenied)),
        (Some(EDITOR), None, None),
    ] {
        let r = c.list_features(read(token)).await.map(|_| ());
        assert_eq!(code(r), reads, "read with {token:?}");
        let w = c.update_flag_state(write(token)).await.map(|_| ());
        assert_eq!(code(w), writes, "write with {token:?}");
    }
    let e = c.update_flag_state(write(Some(VIEWER))).await.unwrap_err();
    assert!(e.message().contains("bob is a viewer"), "{}", e.message());
    // Over Connect JSON too: the protocol's error, with its HTTP status.
    let url = format!(
        "http://{}/pbflags.v1.FlagAdminService/ListFeatures",
        root.admin_addr.unwrap()
    );
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // The evaluation listener does not serve the admin API.
    let main = format!("{}/pbflags.v1.FlagAdminService/ListFeatures", root.url());
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("authorization: Bearer {EDITOR}"),
            "-d",
            "{}",
            &main,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    root.stop().await;
}

/// What a database says after a run: every flag's state and value, and the audit log without ids
/// and times.
async fn state_of(pool: &sqlx::PgPool) -> (Vec<String>, Vec<String>) {
    let flags = admin::list(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|f| format!("{} {:?} {:?}", f.flag_id, f.state, f.value))
        .collect();
    let mut audit: Vec<String> = admin::audit_log(pool, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            format!(
                "{} {} {:?} {:?} {}",
                a.flag_id, a.action, a.old_value, a.new_value, a.actor
            )
        })
        .collect();
    audit.reverse();
    (flags, audit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sequence_of_changes_through_the_api_equals_the_same_through_the_cli() {
    let Admin { root, db, _dir } = admin_root().await;
    let twin = pg::TestDb::create().await;
    let twin_pool = twin.pool().await;
    server::migrate_and_sync_example(&twin_pool).await;
    let mut c = client(&root).await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for step in 0..40 {
        let actor = format!("actor-{}", step % 3);
        match rng.u8(0..5) {
            0 => {
                let v = ["hourly", "daily", "weekly"][rng.usize(0..3)];
                c.update_flag_state(with_token(
                    Some(EDITOR),
                    UpdateFlagStateRequest {
                        flag_id: "notifications/2".into(),
                        state: State::Enabled as i32,
                        value: string(v),
                        actor: actor.clone(),
                    },
                ))
                .await
                .unwrap();
                admin::set_state(
                    &twin_pool,
                    "notifications/2",
                    StateChange::Set(v.into()),
                    &actor,
                )
                .await
                .unwrap();
            }
            1 => {
                let (state, change) = if rng.bool() {
                    (State::Killed, StateChange::Kill)
                } else {
                    (State::Default, StateChange::Default)
                };
                let flag = format!("notifications/{}", rng.u8(1..5));
                c.update_flag_state(with_token(
                    Some(EDITOR),
                    UpdateFlagStateRequest {
                        flag_id: flag.clone(),
                        state: state as i32,
                        value: None,
                        actor: actor.clone(),
                    },
                ))
                .await
                .unwrap();
                admin::set_state(&twin_pool, &flag, change, &actor)
                    .await
                    .unwrap();
            }
            2 => {
                let n = rng.i64(0..10);
                c.update_flag_state(with_token(
                    Some(EDITOR),
                    UpdateFlagStateRequest {
                        flag_id: "notifications/3".into(),
                        state: State::Enabled as i32,
                        value: Some(FlagValue::int64(n)),
                        actor: actor.clone(),
                    },
                ))
                .await
                .unwrap();
                admin::set_state(
                    &twin_pool,
                    "notifications/3",
                    StateChange::Set(n.to_string()),
                    &actor,
                )
                .await
                .unwrap();
            }
            3 => {
                let (entity, on) = (format!("user-{}", rng.u8(0..4)), rng.bool());
                c.set_flag_override(with_token(
                    Some(EDITOR),
                    SetFlagOverrideRequest {
                        flag_id: "notifications/1".into(),
                        entity_id: entity.clone(),
                        state: State::Enabled as i32,
                        value: Some(FlagValue::bool(on)),
                        actor: actor.clone(),
                    },
                ))
                .await
                .unwrap();
                admin::set_override(
                    &twin_pool,
                    "notifications/1",
                    &entity,
                    State::Enabled,
                    Some(if on { "true" } else { "false" }),
                    &actor,
                )
                .await
                .unwrap();
            }
            _ => {
                let entity = format!("user-{}", rng.u8(0..4));
                c.remove_flag_override(with_token(
                    Some(EDITOR),
                    RemoveFlagOverrideRequest {
                        flag_id: "notifications/1".into(),
                        entity_id: entity.clone(),
                        actor: actor.clone(),
                    },
                ))
                .await
                .unwrap();
                admin::remove_override(&twin_pool, "notifications/1", &entity, &actor)
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(state_of(&db.pool().await).await, state_of(&twin_pool).await);
    root.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_editors_leave_the_state_of_the_last_audit_row() {
    let Admin { root, db, _dir } = admin_root().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = client(&root).await;
        tasks.push(tokio::spawn(async move {
            c.update_flag_state(with_token(
                Some(EDITOR),
                UpdateFlagStateRequest {
                    flag_id: "notifications/2".into(),
                    state: State::Enabled as i32,
                    value: string(&format!("v{i}")),
                    actor: format!("editor-{i}"),
                },
            ))
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pool = db.pool().await;
    let log = admin::audit_log(&pool, Some("notifications/2"), 100)
        .await
        .unwrap();
    assert_eq!(log.len(), 20);
    let (row, _) = admin::get(&pool, "notifications/2").await.unwrap();
    assert_eq!(
        row.value, log[0].new_value,
        "the newest audit row is the state"
    );
    // Each change saw the one before it: the old values chain.
    for pair in log.windows(2) {
        assert_eq!(pair[0].old_value, pair[1].new_value);
    }
    root.stop().await;
}

#[test]
fn the_admin_listener_needs_a_root_and_tokens_off_loopback() {
    let e = server::resolve(&[
        "--database",
        "postgres://u@db/flags",
        "--admin-listen",
        "0.0.0.0:9200",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("admin_listen") && e.contains("--admin-token-file"),
        "{e}"
    );
    let e = server::resolve(&[
        "--server",
        "http://root:9201",
        "--admin-listen",
        "127.0.0.1:9200",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("never by a proxy"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokens");
    std::fs::write(&bad, "alice owner secret-secret-secret\n").unwrap();
    let e = server::resolve(&[
        "--database",
        "postgres://u@db/flags",
        "--admin-listen",
        "0.0.0.0:9200",
        "--admin-token-file",
        bad.to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("admin_token_file") && e.contains("line 1"),
        "{e}"
    );
    assert!(!e.contains("secret-secret"), "{e}");
    // Loopback without tokens is allowed.
    let ok = server::resolve(&[
        "--database",
        "postgres://u@db/flags",
        "--admin-listen",
        "127.0.0.1:9200",
    ])
    .unwrap();
    assert!(ok.admin.unwrap().token_file.is_none());
}

/// Runs `pbflags-evaluator flags ARGS` against `target`: `--server URL` (with the token file) or a
/// database URL.
fn cli(target: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbflags-evaluator"))
        .arg("flags")
        .args(target)
        .args(args)
        .env_remove("PBFLAGS_DATABASE")
        .env("USER", "cli-test")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_through_the_admin_api_as_through_the_database() {
    let Admin { root, db, _dir } = admin_root().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{EDITOR}\n")).unwrap();
    let viewer = dir.path().join("viewer");
    std::fs::write(&viewer, format!("{VIEWER}\n")).unwrap();
    let server = format!("http://{}", root.admin_addr.unwrap());
    let remote = ["--server", &server, "--token-file", token.to_str().unwrap()];
    let direct = ["--database", &db.url];
    for args in [
        &["set", "notifications/3", "--value", "5"][..],
        &["kill", "notifications/3"],
        &["unkill", "notifications/3"],
        &["set", "notifications/2", "--value", "weekly"],
        &[
            "override",
            "set",
            "notifications/1",
            "user-9",
            "--value",
            "false",
        ],
        &[
            "override",
            "set",
            "notifications/1",
            "user-9",
            "--value",
            "true",
        ],
        &["override", "rm", "notifications/1", "user-9"],
        &["default", "notifications/2"],
    ] {
        let (ok, out, err) = cli(&remote, args);
        assert!(ok, "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?}");
    }
    // What the remote commands did is what the database shows, through either path.
    for args in [
        &["get", "notifications/3"][..],
        &["get", "notifications/1"],
        &["list"],
        &["get", "notifications/2", "--json"],
    ] {
        let (_, remote_out, err) = cli(&remote, args);
        let (_, direct_out, _) = cli(&direct, args);
        assert_eq!(remote_out, direct_out, "{args:?}: {err}");
    }
    let (_, audit, _) = cli(&remote, &["audit", "--limit", "3"]);
    let (_, direct_audit, _) = cli(&direct, &["audit", "--limit", "3"]);
    assert_eq!(audit, direct_audit);
    assert!(
        audit.contains("alice"),
        "the token's name is the actor: {audit}"
    );
    let (_, get3, _) = cli(&remote, &["get", "notifications/3"]);
    assert!(
        get3.contains("ENABLED") && get3.contains('5'),
        "unkill revived the value: {get3}"
    );

    // Refusals come through with the server's reason; a viewer cannot change anything.
    let (ok, _, err) = cli(&remote, &["set", "notifications/3", "--value", "many"]);
    assert!(!ok && err.contains("INT64"), "{err}");
    let as_viewer = [
        "--server",
        &server,
        "--token-file",
        viewer.to_str().unwrap(),
    ];
    let (ok, _, err) = cli(&as_viewer, &["kill", "notifications/2"]);
    assert!(
        !ok && err.contains("viewer") && err.contains("permission_denied"),
        "{err}"
    );
    let (ok, _, _) = cli(&as_viewer, &["list"]);
    assert!(ok);
    let (ok, _, err) = cli(&["--server", &server], &["list"]);
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    root.stop().await;
}
